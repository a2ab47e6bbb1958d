// Hosts one benchmark target in workerd through the Miniflare API (no
// `wrangler dev`, so no Node proxy on the data path). The harness starts one
// host per target under `taskset -c 1`, so workerd (a child of this process)
// runs on that core. Prints one JSON line {url, pid, workerdPids, seedMs} when the
// target answers, then waits until its stdin closes (or SIGTERM) and disposes.
//
//   node host.mjs --target edgeway --mock http://127.0.0.1:P --key K [--limited-key L] --state DIR
//   node host.mjs --target null-js|null-js-do|null-rs --mock http://127.0.0.1:P --state DIR
//
// edgeway gets the bindings of the root wrangler.toml (KV, the SQLite-backed
// Durable Object, D1 with d1-migrations/ applied, the Queue producer and
// consumer, vars), read by wrangler's own config loader, and is seeded
// through Miniflare's KV binding with a routing table that points at the mock
// (its OpenAI dialect, and its Anthropic dialect for the translated path) and
// two key records: K without limits (edgeway's fast path, no per-request
// Durable Object admission) and, if given, L with limits that never bind (its
// Durable Object admits and settles every request).
import { Log, LogLevel, Miniflare, convertV4MiniflareOptions } from 'miniflare';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { descendants } from './procstat.mjs';

const ROOT = path.resolve(import.meta.dirname, '../..');

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

/** The modules of a build directory (edgeway's or worker-build's), entry first (Miniflare 5
 * takes an explicit module list rather than v4's modulesRules). */
function buildModules(entry) {
  const dir = path.dirname(entry);
  const modules = [{ type: 'ESModule', path: entry }];
  for (const f of readdirSync(dir, { recursive: true }).map(String).sort()) {
    const full = path.join(dir, f);
    if (full === entry) continue;
    if (f.endsWith('.wasm')) modules.push({ type: 'CompiledWasm', path: full });
    else if (/\.m?js$/.test(f) && !f.startsWith('worker/')) modules.push({ type: 'ESModule', path: full });
  }
  return { modules, modulesRoot: dir };
}

export const BENCH_MODELS = ['gpt-bench', 'paced-10', 'paced-20'];
/** Public models served by the mock's Anthropic Messages dialect: an OpenAI client's
 * request is translated to Anthropic and the answer back (the translated path). */
export const TRANSLATED_MODELS = [
  { name: 'claude-bench', upstream_model: 'gpt-bench' },
  { name: 'claude-paced-10', upstream_model: 'paced-10' },
];

export async function edgewayOptions(opts) {
  const { unstable_getMiniflareWorkerOptions: getOptions } = await import('wrangler');
  const { workerOptions, main } = getOptions(path.join(ROOT, 'wrangler.toml'));
  delete workerOptions.modulesRules;
  return {
    ...workerOptions,
    name: 'edgeway',
    rootPath: ROOT,
    ...buildModules(path.resolve(ROOT, main ?? 'edge/worker/build/entry.mjs')),
    bindings: { ...workerOptions.bindings, EDGE_ADMIN_SECRET: `bench-secret-${process.pid}-0123456789abcdef` },
  };
}

export async function seedEdgeway(mf, opts) {
  // D1: apply every migration in order, as `wrangler d1 migrations apply` would.
  const { unstable_splitSqlQuery: split } = await import('wrangler');
  const db = await mf.getD1Database('USAGE_DB');
  const dir = path.join(ROOT, 'd1-migrations');
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.sql')).sort()) {
    const statements = split(readFileSync(path.join(dir, file), 'utf8')).filter((s) => s.trim());
    if (statements.length) await db.batch(statements.map((s) => db.prepare(s)));
  }
  // KV: the key records and the routing table.
  const kv = await mf.getKVNamespace('EDGEWAY_KV');
  const digest = createHash('sha256').update(opts.key).digest('hex');
  await kv.put(`key:${digest}`, JSON.stringify({ digest, owner: 'bench' }));
  if (opts['limited-key']) {
    // Any limit sends every request through the key's account (edge/core/src/key_record.rs);
    // these never bind at bench rates (quota: 9e9 units of the billing currency).
    const limited = createHash('sha256').update(opts['limited-key']).digest('hex');
    await kv.put(`key:${limited}`, JSON.stringify({
      digest: limited, owner: 'bench-limits', max_concurrency: 100_000, rpm: 100_000_000, quota_micros: 9_000_000_000_000_000,
    }));
  }
  await kv.put('config:routing', JSON.stringify({
    version: 1,
    channels: [
      { id: 'up', provider: 'openai-compatible', base_url: `${opts.mock}/v1`, api_key: 'sk-bench' },
      { id: 'up-anthropic', provider: 'anthropic', base_url: `${opts.mock}/v1`, api_key: 'sk-bench' },
    ],
    models: [
      ...BENCH_MODELS.map((name) => ({ name, price: { input: 1_000_000, output: 2_000_000 }, targets: [{ channel: 'up' }] })),
      ...TRANSLATED_MODELS.map(({ name, upstream_model }) => ({
        name, price: { input: 1_000_000, output: 2_000_000 }, targets: [{ channel: 'up-anthropic', upstream_model }],
      })),
    ],
  }));
}

/** Miniflare's log, with its per-batch queue lines ("QUEUE edgeway-usage 100/100 (39ms)")
 * turned into totals; everything else goes to stderr. */
class BenchLog extends Log {
  constructor() {
    super(LogLevel.INFO);
    this.queue = { batches: 0, messages: 0, wallMs: 0 };
  }

  log(message) {
    const plain = String(message).replace(/\x1b\[[0-9;]*m/g, '');
    const m = /QUEUE\s+\S+\s+(\d+)\/(\d+)\s+\((\d+(?:\.\d+)?)ms\)/.exec(plain);
    if (m) {
      this.queue.batches += 1;
      this.queue.messages += Number(m[2]);
      this.queue.wallMs += Number(m[3]);
      return;
    }
    process.stderr.write(`${plain}\n`);
  }
}

async function main() {
  const opts = args();
  const log = new BenchLog();
  // logRequests: false, or Miniflare's entry worker posts a log line per request
  // to this Node process (a loopback HTTP call on the data path).
  const shared = { host: '127.0.0.1', port: 0, resourcePersistencePath: opts.state, log, logRequests: false };
  let workerOptions;
  switch (opts.target) {
    case 'edgeway':
      workerOptions = await edgewayOptions(opts);
      break;
    case 'null-js':
      workerOptions = { name: 'null-js', scriptPath: path.join(import.meta.dirname, 'null-relay.js'), modules: true, bindings: { UPSTREAM_URL: opts.mock } };
      break;
    case 'null-js-do':
      workerOptions = {
        name: 'null-js-do',
        scriptPath: path.join(import.meta.dirname, 'null-relay-do.js'),
        modules: true,
        bindings: { UPSTREAM_URL: opts.mock },
        durableObjects: { LEASE: { className: 'Lease', useSQLite: true } },
      };
      break;
    case 'null-rs':
      workerOptions = {
        name: 'null-rs',
        ...buildModules(path.join(import.meta.dirname, 'null-relay-rs/build/index.js')),
        bindings: { UPSTREAM_URL: opts.mock },
      };
      break;
    default:
      throw new Error(`unknown target ${opts.target}`);
  }
  // wrangler's loader speaks Miniflare's v4 option shape; Miniflare 5 converts it.
  const mf = new Miniflare(convertV4MiniflareOptions({ ...shared, workers: [{ compatibilityDate: '2025-09-01', ...workerOptions }] }));
  const url = await mf.ready;
  const seedStart = performance.now();
  if (opts.target === 'edgeway') await seedEdgeway(mf, opts);
  const seedMs = performance.now() - seedStart;
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try { await mf.dispose(); } catch {}
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  // One command on stdin: `d1count`, answered with {"d1Rows": n, "queue": {...}}
  // (edgeway's usage rows, to check that the usage pipeline kept up with the
  // load, and the queue consumer's batches as Miniflare logged them).
  let pending = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', async (d) => {
    pending += d;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const cmd = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (cmd === 'd1count') {
        let d1Rows = null;
        try {
          const db = await mf.getD1Database('USAGE_DB');
          d1Rows = (await db.prepare('SELECT COUNT(*) AS n FROM usage_events').first()).n;
        } catch {}
        process.stdout.write(`${JSON.stringify({ d1Rows, queue: log.queue })}\n`);
      }
    }
  });
  const workerdPids = descendants(process.pid);
  process.stdout.write(`${JSON.stringify({ url: url.href.replace(/\/$/, ''), pid: process.pid, workerdPids, seedMs })}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === import.meta.filename) {
  main().catch((e) => {
    process.stderr.write(`host failed: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
