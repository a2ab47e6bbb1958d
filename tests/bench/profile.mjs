// CPU profile of one benchmark target under load, from V8's sampling profiler
// through workerd's inspector: where a request's CPU time goes, by function
// (wasm functions keep their Rust names when the build keeps the name
// section) and by kind (wasm, JS glue, runtime, GC, idle).
//
//   node tests/bench/profile.mjs [--target edgeway|null-js|null-rs] [--key with|without]
//        [--stream] [--requests N] [--concurrency C] [--top K] [--out FILE.cpuprofile]
//
// The target runs in workerd through the Miniflare API with the same bindings
// and seeding as the benchmark (tests/bench/host.mjs), against the fast mock.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Miniflare, convertV4MiniflareOptions, Log, LogLevel } from 'miniflare';
import { Pool } from 'undici';
import { edgewayOptions, seedEdgeway } from './host.mjs';

const HERE = import.meta.dirname;
const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : fallback;
};
const target = opt('--target', 'edgeway');
const keyKind = opt('--key', 'without');
const stream = argv.includes('--stream');
const requests = Number(opt('--requests', '3000'));
const concurrency = Number(opt('--concurrency', '4'));
const top = Number(opt('--top', '45'));
const out = opt('--out', null);

async function startMock() {
  const proc = spawn(process.execPath, [path.join(HERE, 'fast-mock.mjs'), '0'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      const m = /listening on (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (c) => reject(new Error(`mock exited ${c}`)));
  });
  return { proc, url: `http://127.0.0.1:${port}` };
}

async function inspect(port, name) {
  const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const entry = list.find((e) => e.id?.includes(name) || e.title?.includes(name)) ?? list[0];
  const ws = new WebSocket(entry.webSocketDebuggerUrl ?? `ws://127.0.0.1:${port}/${entry.id}`);
  await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
  let id = 0;
  const waiting = new Map();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id && waiting.has(msg.id)) {
      waiting.get(msg.id)(msg);
      waiting.delete(msg.id);
    }
  };
  const call = (method, params = {}) => new Promise((resolve) => {
    id += 1;
    waiting.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
  return { call, close: () => ws.close() };
}

function summarize(profile, n) {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  const deltas = profile.timeDeltas;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    const dt = deltas[i] ?? 0;
    self.set(node, (self.get(node) ?? 0) + dt);
  }
  const byName = new Map();
  const kinds = new Map();
  let total = 0;
  for (const [node, us] of self) {
    const f = node.callFrame;
    const name = f.functionName || '(anonymous)';
    const url = f.url || '';
    const kind = name.startsWith('(') ? name
      : url.includes('wasm') || /^\$?[a-z_]+::|wasm-function|^\$/.test(name) ? 'wasm'
      : url ? `js:${path.basename(url)}` : 'js:runtime';
    kinds.set(kind, (kinds.get(kind) ?? 0) + us);
    const key = `${name}  [${kind}]`;
    byName.set(key, (byName.get(key) ?? 0) + us);
    if (name !== '(idle)') total += us;
  }
  const perReq = (us) => (us / n / 1000).toFixed(4);
  console.log(`\nbusy CPU (not idle) per request: ${perReq(total)} ms over ${n} requests`);
  console.log('\nby kind (ms per request):');
  for (const [k, us] of [...kinds].sort((a, b) => b[1] - a[1])) console.log(`  ${perReq(us).padStart(8)}  ${k}`);
  console.log(`\ntop ${top} functions by self time (ms per request):`);
  for (const [k, us] of [...byName].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`  ${perReq(us).padStart(8)}  ${k}`);
  }
}

async function main() {
  const mock = await startMock();
  const state = mkdtempSync(path.join(tmpdir(), 'edgeway-profile-'));
  const inspectorPort = 9300 + Math.floor(Math.random() * 500);
  const seed = { mock: mock.url, key: 'sk-profile-without-0000000000', 'limited-key': 'sk-profile-with-00000000000' };
  let workerOptions;
  if (target === 'edgeway') workerOptions = await edgewayOptions(seed);
  else if (target === 'null-js') workerOptions = { name: 'null-js', scriptPath: path.join(HERE, 'null-relay.js'), modules: true, bindings: { UPSTREAM_URL: mock.url } };
  else throw new Error(`unknown target ${target}`);
  const mf = new Miniflare(convertV4MiniflareOptions({
    host: '127.0.0.1', port: 0, inspectorPort, resourcePersistencePath: state, log: new Log(LogLevel.WARN), logRequests: false,
    workers: [{ compatibilityDate: '2025-09-01', ...workerOptions }],
  }));
  const url = await mf.ready;
  if (target === 'edgeway') await seedEdgeway(mf, seed);
  const key = keyKind === 'with' ? seed['limited-key'] : seed.key;
  const pool = new Pool(url.origin, { connections: concurrency, pipelining: 1 });
  const body = JSON.stringify({ model: 'gpt-bench', messages: [{ role: 'user', content: 'Hello, how are you?' }], ...(stream ? { stream: true } : {}) });
  const one = async () => {
    const r = await pool.request({ path: '/v1/chat/completions', method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body });
    const text = await r.body.text();
    if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}: ${text.slice(0, 300)}`);
  };
  const run = async (n) => {
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => { while (next++ < n) await one(); }));
  };
  await run(300); // warm up: JIT, caches, account checks
  const inspector = await inspect(inspectorPort, workerOptions.name);
  await inspector.call('Profiler.enable');
  await inspector.call('Profiler.setSamplingInterval', { interval: 25 });
  await inspector.call('Profiler.start');
  await run(requests);
  await new Promise((r) => setTimeout(r, 1500)); // deferred work (waitUntil, queue batches)
  const { result } = await inspector.call('Profiler.stop');
  if (out) writeFileSync(out, JSON.stringify(result.profile));
  summarize(result.profile, requests);
  inspector.close();
  await pool.close();
  await mf.dispose();
  mock.proc.kill();
}

main().catch((e) => { console.error(e); process.exit(1); });
