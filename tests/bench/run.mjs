// The edgeway benchmark harness (scripts/bench runs it; method in
// shared/notes/peers.md and docs/benchmarks.md).
//
// In one run it measures six targets against one fast mock upstream:
//   direct      the mock itself (the baseline every "added" figure subtracts)
//   null-js     a null JS relay on workerd                  (the runtime's floor)
//   null-js-do  the same plus a per-key Durable Object admission and release
//               (diagnostic: the platform cost of edgeway's admission design)
//   null-rs     a null workers-rs relay on workerd          (the wasm floor)
//   edgeway     the built worker on workerd, with the bindings of wrangler.toml,
//               called with a key without limits (the fast path: no per-request
//               Durable Object admission, usage events batched per isolate)
//   edgeway-limits  the same workerd, called with a second key whose limits
//               never bind (max_concurrency, rpm, quota_micros): admitted from
//               its isolate's slice of the key's account (docs/key-accounts.md);
//               the difference prices exact limits
//   edgeway-translated  the same workerd and the first key, a model served by
//               the mock's Anthropic dialect: the request is translated to
//               Anthropic Messages and the answer back (the translated path)
// plus edgeway's GET /health and GET /v1/models at concurrency 1 (no upstream,
// no Durable Object), to split its added latency.
// Each workerd is loaded through the Miniflare API by its own host process
// pinned to core 1; this process, the mock and the load generator are pinned
// to core 0. Rounds are interleaved (the target order rotates every round).
// After the rounds: a soak of edgeway's fast path (100,000 requests at 16
// concurrent; RSS and added p50 before and after) and cold starts (a fresh
// workerd per try: process start to the first 200, and the first request alone).
//
//   node tests/bench/run.mjs [--quick] [--out DIR] [--doc FILE] [--rounds N] [--state-dir DIR] [--node-load]
// Writes DIR/latest.json and DIR/latest.md (DIR defaults to bench-out/), and
// the whole results page to FILE when --doc is given.
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { Client, Pool } from 'undici';
import { cpuMs, descendants, memKiB } from './procstat.mjs';

const HERE = import.meta.dirname;
const ROOT = path.resolve(HERE, '../..');

// ---------------------------------------------------------------- options
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const option = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : fallback;
};
const QUICK = flag('--quick');
const OUT = path.resolve(ROOT, option('--out', 'bench-out'));
const DOC = option('--doc', null);
const P = QUICK
  ? { rounds: 3, latencyN: 50, streamN: 3, tputSecs: 1, settleMs: 300, warmN: 40, warmLoad: false, budgetMs: 240_000, soakN: 5_000, coldTries: 1 }
  : { rounds: 7, latencyN: 300, streamN: 15, tputSecs: 4, settleMs: 1200, warmN: 300, warmLoad: true, budgetMs: 1_500_000, soakN: 100_000, coldTries: 3 };
P.rounds = Math.max(3, Number(option('--rounds', P.rounds)));
const CONCURRENCY = 16;
const PACED_MODEL = 'paced-10'; // the mock sends one content delta every 10 ms
const TARGETS = ['direct', 'null-js', 'null-js-do', 'null-rs', 'edgeway', 'edgeway-limits', 'edgeway-translated'];
const GATEWAYS = TARGETS.slice(1);
// edgeway-limits and edgeway-translated are not processes of their own: the
// edgeway workerd, another key or another model.
const hostOf = (t) => (t.startsWith('edgeway') ? 'edgeway' : t);
const HOSTS = GATEWAYS.filter((t) => hostOf(t) === t);

const log = (...a) => console.error('[bench]', ...a);
const started = Date.now();
const deadline = started + P.budgetMs;
const checkBudget = () => {
  if (Date.now() > deadline) throw new Error(`time budget of ${P.budgetMs / 1000} s exceeded`);
};

// ---------------------------------------------------------------- pinning
const twoCores = cpus().length >= 2 && hasCommand('taskset');
function hasCommand(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
function affinity(pid) {
  try {
    return execFileSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' }).trim().split(':').pop().trim();
  } catch {
    return '?';
  }
}
if (twoCores) execFileSync('taskset', ['-a', '-cp', '0', String(process.pid)], { stdio: 'ignore' });
else log('fewer than 2 cores or no taskset: nothing is pinned, figures are indicative only');
const onCore = (core, cmd, args) => (twoCores ? ['taskset', ['-c', String(core), cmd, ...args]] : [cmd, args]);

// ---------------------------------------------------------------- processes
const children = [];
function startChild(name, core, cmd, args) {
  const [c, a] = onCore(core, cmd, args);
  const proc = spawn(c, a, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, CI: 'true', WRANGLER_SEND_METRICS: 'false' } });
  proc.name = name;
  proc.setMaxListeners(100);
  proc.errLog = '';
  proc.stderr.on('data', (d) => { proc.errLog = (proc.errLog + d).slice(-8000); });
  proc.lines = [];
  proc.waiters = [];
  let buf = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{') && !line.startsWith('fast-mock')) continue; // chatter (wrangler's notices)
      const w = proc.waiters.shift();
      if (w) w(line);
      else proc.lines.push(line);
    }
  });
  children.push(proc);
  return proc;
}
function nextLine(proc, timeoutMs) {
  if (proc.lines.length) return Promise.resolve(proc.lines.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${proc.name}: no answer in ${timeoutMs} ms\n${proc.errLog}`)), timeoutMs);
    proc.once('exit', (code) => reject(new Error(`${proc.name} exited with ${code}\n${proc.errLog}`)));
    proc.waiters.push((line) => { clearTimeout(timer); resolve(line); });
  });
}
async function stopChildren() {
  for (const p of children) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    try { p.stdin.end(); } catch {}
  }
  const gone = children.map((p) => (p.exitCode !== null || p.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => { p.once('exit', r); setTimeout(() => { try { p.kill('SIGKILL'); } catch {} r(); }, 5000); })));
  await Promise.all(gone);
}
process.on('SIGINT', () => { stopChildren().finally(() => process.exit(130)); });
process.on('SIGTERM', () => { stopChildren().finally(() => process.exit(143)); });

// ---------------------------------------------------------------- statistics
const sorted = (xs) => [...xs].sort((a, b) => a - b);
function quantile(xs, q) {
  const s = sorted(xs);
  if (!s.length) return NaN;
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i];
}
const median = (xs) => {
  const s = sorted(xs);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------- requests
const API_KEY = `sk-bench-${randomBytes(12).toString('hex')}`; // no limits: edgeway's fast path
const LIMITED_KEY = `sk-bench-lim-${randomBytes(12).toString('hex')}`; // limits that never bind
const keyFor = (target) => (target === 'edgeway-limits' ? LIMITED_KEY : API_KEY);
const MESSAGES = [
  { role: 'system', content: 'You are a terse assistant.' },
  { role: 'user', content: 'Say hello in five words.' },
];
const BODY = JSON.stringify({ model: 'gpt-bench', messages: MESSAGES, max_tokens: 32 });
const STREAM_BODY = JSON.stringify({ model: PACED_MODEL, messages: MESSAGES, max_tokens: 32, stream: true });
// The translated path: public models whose channel speaks Anthropic (host.mjs TRANSLATED_MODELS).
const TRANSLATED_BODY = JSON.stringify({ model: 'claude-bench', messages: MESSAGES, max_tokens: 32 });
const TRANSLATED_STREAM_BODY = JSON.stringify({ model: `claude-${PACED_MODEL}`, messages: MESSAGES, max_tokens: 32, stream: true });
const bodyFor = (target) => (target === 'edgeway-translated' ? TRANSLATED_BODY : BODY);
const streamBodyFor = (target) => (target === 'edgeway-translated' ? TRANSLATED_STREAM_BODY : STREAM_BODY);
const headersFor = (target) => ({ 'content-type': 'application/json', authorization: `Bearer ${keyFor(target)}` });
const CHAT_PATH = '/v1/chat/completions';
const sent = Object.fromEntries(TARGETS.map((t) => [t, 0]));

async function timedRequest(client, target) {
  const t0 = performance.now();
  const { statusCode, body } = await client.request({ method: 'POST', path: CHAT_PATH, headers: headersFor(target), body: bodyFor(target) });
  const text = await body.text();
  const ms = performance.now() - t0;
  sent[target] += 1;
  if (statusCode !== 200 || !text.includes('"chat.completion"')) throw new Error(`${target}: HTTP ${statusCode}: ${text.slice(0, 300)}`);
  return ms;
}

async function timedGet(client, pathName) {
  const t0 = performance.now();
  const { statusCode, body } = await client.request({ method: 'GET', path: pathName, headers: { authorization: `Bearer ${API_KEY}` } });
  const text = await body.text();
  const ms = performance.now() - t0;
  if (statusCode !== 200) throw new Error(`GET ${pathName}: HTTP ${statusCode}: ${text.slice(0, 300)}`);
  return ms;
}
// Requests that split edgeway's added latency: no upstream, no Durable Object.
// The last one repeats edgeway's chat request with 5 ms of idle time before
// each, so that the work it defers to waitUntil (lease release, usage event)
// is done before the next request arrives instead of delaying it.
const PROBES = [
  { name: 'mock GET /v1/models', target: 'direct', path: '/v1/models' },
  { name: 'edgeway GET /health', target: 'edgeway', path: '/health' },
  { name: 'edgeway GET /v1/models', target: 'edgeway', path: '/v1/models' },
  { name: 'edgeway chat, 5 ms idle before each', target: 'edgeway', chat: true, pauseMs: 5 },
  { name: 'edgeway chat, key with limits, 5 ms idle before each', target: 'edgeway-limits', chat: true, pauseMs: 5 },
];

/** One streamed request: ms to the first non-empty content delta, mean gap between deltas, total ms. */
async function timedStream(client, target) {
  const t0 = performance.now();
  const { statusCode, body } = await client.request({ method: 'POST', path: CHAT_PATH, headers: headersFor(target), body: streamBodyFor(target) });
  sent[target] += 1;
  if (statusCode !== 200) throw new Error(`${target}: stream HTTP ${statusCode}: ${(await body.text()).slice(0, 300)}`);
  const arrivals = [];
  let pending = '';
  let done = false;
  body.setEncoding('utf8');
  for await (const piece of body) {
    const now = performance.now();
    pending += piece;
    let end;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const event = pending.slice(0, end);
      pending = pending.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') { done = true; continue; }
        const content = JSON.parse(data).choices?.[0]?.delta?.content;
        if (content) arrivals.push(now);
      }
    }
  }
  const total = performance.now() - t0;
  if (!done || arrivals.length !== 8) throw new Error(`${target}: stream ended after ${arrivals.length} deltas, [DONE]=${done}`);
  return { ttft: arrivals[0] - t0, gap: (arrivals.at(-1) - arrivals[0]) / (arrivals.length - 1), total };
}

// ---------------------------------------------------------------- throughput
function coreTimes() {
  const out = {};
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].split(/\s+/).map(Number);
    const idle = v[3] + (v[4] || 0);
    out[m[1]] = { idle, total: sum(v.slice(0, 8)) };
  }
  return out;
}
const busyShare = (a, b, core) => {
  if (!a[core] || !b[core]) return NaN;
  const total = b[core].total - a[core].total;
  return total > 0 ? 1 - (b[core].idle - a[core].idle) / total : NaN;
};

const useWrk = hasCommand('wrk') && !flag('--node-load');
async function loadWithWrk(url, secs, key, body) {
  const [c, a] = onCore(0, 'wrk', ['-t1', `-c${CONCURRENCY}`, `-d${secs}s`, '--timeout', '5s', '-s', path.join(HERE, 'wrk-post.lua'), url + CHAT_PATH]);
  const out = await new Promise((resolve, reject) => {
    const p = spawn(c, a, { env: { ...process.env, BENCH_BODY: body, BENCH_AUTH: key }, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    p.stdout.on('data', (d) => { text += d; });
    p.stderr.on('data', (d) => { text += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), (secs + 15) * 1000);
    p.on('exit', (code) => { clearTimeout(timer); code === 0 ? resolve(text) : reject(new Error(`wrk exited ${code}: ${text}`)); });
  });
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const seconds = Number(/requests in ([\d.]+)s/.exec(out)?.[1] ?? NaN);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const socketErrors = /Socket errors: (.*)/.exec(out)?.[1] ?? null;
  if (!Number.isFinite(requests)) throw new Error(`unreadable wrk output: ${out}`);
  return { requests, seconds, rps: requests / seconds, errors: non2xx, socketErrors };
}
async function loadWithNode(url, secs, key, body) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` };
  const pool = new Pool(url, { connections: CONCURRENCY, pipelining: 1, keepAliveTimeout: 60_000 });
  const stopAt = performance.now() + secs * 1000;
  let requests = 0;
  let errors = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < stopAt) {
      const res = await pool.request({ method: 'POST', path: CHAT_PATH, headers, body });
      await res.body.dump({ limit: 1 << 20 });
      requests += 1;
      if (res.statusCode !== 200) errors += 1;
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  await pool.close();
  return { requests, seconds, rps: requests / seconds, errors, socketErrors: null };
}
const load = useWrk ? loadWithWrk : loadWithNode;

/** Exactly `count` requests at CONCURRENCY (the soak: a count, not a duration). */
async function loadCount(url, count, key, body) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` };
  const pool = new Pool(url, { connections: CONCURRENCY, pipelining: 1, keepAliveTimeout: 60_000 });
  let issued = 0;
  let errors = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (issued < count) {
      issued += 1;
      const res = await pool.request({ method: 'POST', path: CHAT_PATH, headers, body });
      await res.body.dump({ limit: 1 << 20 });
      if (res.statusCode !== 200) errors += 1;
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  await pool.close();
  return { requests: count, seconds, rps: count / seconds, errors };
}

/** Median added latency of `n` sequential requests (target minus direct, interleaved pairwise). */
async function addedP50(clients, target, n) {
  const diffs = [];
  for (let i = 0; i < n; i += 1) {
    const d = await timedRequest(clients.direct, 'direct');
    diffs.push((await timedRequest(clients[target], target)) - d);
  }
  return median(diffs);
}

// ---------------------------------------------------------------- cold start
/** Starts a fresh host for `target` and times process start → first 200 of a chat
 * request, less the host's own seeding of KV and D1 (edgeway), and the first
 * request alone (isolate start, script or wasm instantiation, the request). */
async function coldStart(target, mockUrl, stateDir) {
  const args = [path.join(HERE, 'host.mjs'), '--target', target, '--mock', mockUrl, '--state', stateDir];
  if (target === 'edgeway') args.push('--key', API_KEY);
  const t0 = performance.now();
  const proc = startChild(`cold ${target}`, 1, process.execPath, args);
  const info = JSON.parse(await nextLine(proc, 180_000));
  const client = new Client(info.url, { pipelining: 1 });
  const t1 = performance.now();
  const firstRequestMs = await timedRequest(client, target === 'edgeway' ? 'edgeway' : target);
  const t2 = performance.now();
  await client.close();
  proc.stdin.end();
  await new Promise((r) => { proc.once('exit', r); setTimeout(() => { try { proc.kill('SIGKILL'); } catch {} r(); }, 5000); });
  return { toFirst200Ms: t2 - t0 - (info.seedMs ?? 0), firstRequestMs, readyMs: t1 - t0 };
}

// ---------------------------------------------------------------- main
async function main() {
  mkdirSync(OUT, { recursive: true });
  // Durable Object, D1, KV and Queue state goes to disk, as under `wrangler dev`
  // (--state-dir /dev/shm takes the disk's fsync latency out of the figures).
  const state = mkdtempSync(path.join(path.resolve(option('--state-dir', tmpdir())), 'edgeway-bench-'));
  const node = process.execPath;
  let fsType = '?';
  try { fsType = execFileSync('stat', ['-f', '-c', '%T', state], { encoding: 'utf8' }).trim(); } catch {}
  const result = {
    quick: QUICK,
    params: {
      ...P, concurrency: CONCURRENCY, pacedModel: PACED_MODEL, stateDir: fsType === 'tmpfs' ? 'tmpfs' : `disk (${fsType})`,
      loadGenerator: useWrk ? 'wrk -t1 -c16' : 'node (undici Pool, 16 connections)',
    },
  };
  try {
    // Mock upstream on core 0.
    const mock = startChild('fast-mock', 0, node, [path.join(HERE, 'fast-mock.mjs'), '0']);
    const mockPort = Number(/listening on (\d+)/.exec(await nextLine(mock, 10_000))?.[1]);
    const mockUrl = `http://127.0.0.1:${mockPort}`;
    const mockPid = descendants(process.pid).find((p) => {
      try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('fast-mock.mjs'); } catch { return false; }
    });

    // One workerd host per gateway on core 1, started together.
    const hosts = {};
    for (const target of HOSTS) {
      const args = [path.join(HERE, 'host.mjs'), '--target', target, '--mock', mockUrl, '--state', path.join(state, target)];
      if (target === 'edgeway') args.push('--key', API_KEY, '--limited-key', LIMITED_KEY);
      hosts[target] = startChild(`host ${target}`, 1, node, args);
    }
    const urls = { direct: mockUrl };
    const trees = {};
    for (const target of HOSTS) {
      const info = JSON.parse(await nextLine(hosts[target], 180_000));
      urls[target] = info.url;
      trees[target] = { host: info.pid, workerd: info.workerdPids.length ? info.workerdPids : descendants(info.pid) };
    }
    for (const target of GATEWAYS) {
      urls[target] = urls[hostOf(target)];
      trees[target] = trees[hostOf(target)];
    }
    result.pinning = {
      harness: affinity(process.pid),
      mock: mockPid ? affinity(mockPid) : '?',
      workerd: Object.fromEntries(HOSTS.map((t) => [t, trees[t].workerd.map(affinity).join(',')])),
    };
    log(`up in ${((Date.now() - started) / 1000).toFixed(1)} s; pinning ${JSON.stringify(result.pinning)}`);
    const idleRss = Object.fromEntries(GATEWAYS.map((t) => [t, memKiB(trees[t].workerd, 'VmRSS')]));

    // Keep-alive clients, one connection each (concurrency 1).
    const clients = Object.fromEntries(TARGETS.map((t) => [t, new Client(urls[t], { keepAliveTimeout: 60_000, pipelining: 1 })]));

    // Warm up: JIT, isolate caches, the keys' Durable Objects, pooled upstream connections.
    for (const t of TARGETS) {
      for (let i = 0; i < P.warmN; i += 1) await timedRequest(clients[t], t);
      for (let i = 0; i < 3; i += 1) await timedStream(clients[t], t);
      if (P.warmLoad) sent[t] += (await load(urls[t], 1, keyFor(t), bodyFor(t))).requests;
    }
    checkBudget();

    const lat = Object.fromEntries(TARGETS.map((t) => [t, []])); // per round: samples
    const probes = Object.fromEntries(PROBES.map((p) => [p.name, []])); // per round: samples
    const streams = Object.fromEntries(TARGETS.map((t) => [t, []])); // per round: [{ttft, gap, total}]
    const tput = Object.fromEntries(TARGETS.map((t) => [t, []])); // per round: {rps, ...}
    const cpu = Object.fromEntries(GATEWAYS.map((t) => [t, { workerdMs: 0, hostMs: 0, requests: 0 }]));
    const mockCpu = { ms: 0, requests: 0 };
    const busy = Object.fromEntries(TARGETS.map((t) => [t, { core0: [], core1: [] }]));

    for (let r = 0; r < P.rounds; r += 1) {
      const order = TARGETS.map((_, i) => TARGETS[(i + r) % TARGETS.length]);
      log(`round ${r + 1}/${P.rounds} at ${((Date.now() - started) / 1000).toFixed(0)} s: ${order.join(' → ')}`);
      // Added latency, non-stream, concurrency 1.
      for (const t of order) {
        const xs = [];
        for (let i = 0; i < P.latencyN; i += 1) xs.push(await timedRequest(clients[t], t));
        lat[t].push(xs);
      }
      for (const probe of PROBES) {
        const xs = [];
        for (let i = 0; i < Math.ceil(P.latencyN / 3); i += 1) {
          if (probe.pauseMs) await new Promise((s) => setTimeout(s, probe.pauseMs));
          xs.push(probe.chat ? await timedRequest(clients[probe.target], probe.target) : await timedGet(clients[probe.target], probe.path));
        }
        probes[probe.name].push(xs);
      }
      // SSE: time to first content delta and gap between deltas, concurrency 1.
      for (const t of order) {
        const xs = [];
        for (let i = 0; i < P.streamN; i += 1) xs.push(await timedStream(clients[t], t));
        streams[t].push(xs);
      }
      // Throughput at 16 concurrent, with CPU time of the target's process tree.
      for (const t of order) {
        checkBudget();
        const gateway = t !== 'direct';
        const pids = gateway ? trees[t].workerd : [];
        const c0 = gateway ? cpuMs(pids) : 0;
        const h0 = gateway ? cpuMs([trees[t].host]) : 0;
        const m0 = mockPid ? cpuMs([mockPid]) : 0;
        const k0 = coreTimes();
        const res = await load(urls[t], P.tputSecs, keyFor(t), bodyFor(t));
        const k1 = coreTimes();
        const m1 = mockPid ? cpuMs([mockPid]) : 0;
        if (res.errors) throw new Error(`${t}: ${res.errors} non-200 answers under load`);
        sent[t] += res.requests;
        tput[t].push(res);
        busy[t].core0.push(busyShare(k0, k1, '0'));
        busy[t].core1.push(busyShare(k0, k1, '1'));
        if (gateway) {
          mockCpu.ms += m1 - m0;
          mockCpu.requests += res.requests;
          // Let deferred work (waitUntil, queue consumer batches) finish inside the window.
          await new Promise((s) => setTimeout(s, P.settleMs));
          cpu[t].workerdMs += cpuMs(pids) - c0;
          cpu[t].hostMs += cpuMs([trees[t].host]) - h0;
          cpu[t].requests += res.requests;
        }
      }
    }

    // Soak: edgeway's fast path under a long run; RSS and added p50 before and after
    // (after 2 s of idle, so deferred work is done). The null JS relay takes the same
    // soak as the control: what workerd itself (under Miniflare) grows by.
    const soakOne = async (t) => {
      checkBudget();
      const pids = trees[t].workerd;
      const before = { addedP50Ms: await addedP50(clients, t, P.latencyN), rssMiB: memKiB(pids, 'VmRSS') / 1024 };
      log(`soak ${t}: ${P.soakN} requests at ${CONCURRENCY} concurrent`);
      const res = await loadCount(urls[t], P.soakN, keyFor(t), bodyFor(t));
      if (res.errors) throw new Error(`soak ${t}: ${res.errors} non-200 answers`);
      sent[t] += res.requests;
      await new Promise((s) => setTimeout(s, 2000));
      const after = { addedP50Ms: await addedP50(clients, t, P.latencyN), rssMiB: memKiB(pids, 'VmRSS') / 1024 };
      return { requests: P.soakN, rps: res.rps, seconds: res.seconds, before, after };
    };
    result.soak = await soakOne('edgeway');
    result.soakControl = await soakOne('null-js');

    // Did the usage pipeline keep up? Every edgeway request (all keys and models) should be one D1 row.
    const edgewaySent = sent.edgeway + sent['edgeway-limits'] + sent['edgeway-translated'];
    let d1Rows = null;
    let queue = null;
    for (let i = 0; i < 20; i += 1) {
      hosts.edgeway.stdin.write('d1count\n');
      ({ d1Rows, queue } = JSON.parse(await nextLine(hosts.edgeway, 15_000)));
      if (d1Rows === null || d1Rows >= edgewaySent) break;
      await new Promise((s) => setTimeout(s, 500));
    }
    const peakRss = Object.fromEntries(GATEWAYS.map((t) => [t, memKiB(trees[t].workerd, 'VmHWM')]));
    for (const c of Object.values(clients)) await c.close();

    // Cold start: a fresh workerd per try, on core 1 like the others.
    result.coldStart = {};
    for (const target of ['null-js', 'null-rs', 'edgeway']) {
      const tries = [];
      for (let i = 0; i < P.coldTries; i += 1) {
        checkBudget();
        tries.push(await coldStart(target, mockUrl, path.join(state, `cold-${target}-${i}`)));
      }
      result.coldStart[target] = {
        toFirst200Ms: median(tries.map((x) => x.toFirst200Ms)),
        firstRequestMs: median(tries.map((x) => x.firstRequestMs)),
        tries: tries.length,
      };
    }

    // ------------------------------------------------------------ figures
    const direct = {
      p50: lat.direct.map((xs) => median(xs)),
      p99: quantile(lat.direct.flat(), 0.99),
      ttft: streams.direct.map((xs) => median(xs.map((s) => s.ttft))),
      gap: streams.direct.map((xs) => median(xs.map((s) => s.gap))),
    };
    const fig = {};
    for (const t of TARGETS) {
      const p50Rounds = lat[t].map((xs) => median(xs));
      const ttftRounds = streams[t].map((xs) => median(xs.map((s) => s.ttft)));
      const gapRounds = streams[t].map((xs) => median(xs.map((s) => s.gap)));
      fig[t] = {
        p50Ms: median(p50Rounds),
        p99Ms: quantile(lat[t].flat(), 0.99),
        addedP50Ms: median(p50Rounds.map((v, i) => v - direct.p50[i])),
        addedP99Ms: quantile(lat[t].flat(), 0.99) - direct.p99,
        ttftMs: median(ttftRounds),
        addedTtftMs: median(ttftRounds.map((v, i) => v - direct.ttft[i])),
        addedGapMs: median(gapRounds.map((v, i) => v - direct.gap[i])),
        rps: median(tput[t].map((x) => x.rps)),
        rpsMin: Math.min(...tput[t].map((x) => x.rps)),
        rpsMax: Math.max(...tput[t].map((x) => x.rps)),
        core0Busy: median(busy[t].core0),
        core1Busy: median(busy[t].core1),
        addedP50ByRound: p50Rounds.map((v, i) => v - direct.p50[i]),
        rpsByRound: tput[t].map((x) => x.rps),
        latencySamples: lat[t].flat().length,
        streamSamples: streams[t].flat().length,
      };
      if (t !== 'direct') {
        fig[t].cpuMsPerReq = cpu[t].workerdMs / cpu[t].requests;
        fig[t].hostCpuMsPerReq = cpu[t].hostMs / cpu[t].requests;
        fig[t].rssIdleMiB = idleRss[t] / 1024;
        fig[t].rssPeakMiB = peakRss[t] / 1024;
      }
    }
    // Per-round throughput ratios (compare within a round: the machine drifts).
    const ratioRounds = (a, b) => median(tput[a].map((x, i) => x.rps / tput[b][i].rps));
    const wasm = (file) => {
      if (!existsSync(file)) return null;
      const raw = readFileSync(file);
      return { raw: raw.length, gzip: gzipSync(raw, { level: 9 }).length };
    };
    result.figures = fig;
    const probeBase = probes[PROBES[0].name].map((xs) => median(xs));
    result.probes = PROBES.slice(1).map((p) => ({
      name: p.name,
      p50Ms: median(probes[p.name].map((xs) => median(xs))),
      addedP50Ms: median(probes[p.name].map((xs, i) => median(xs) - (p.chat ? direct.p50[i] : probeBase[i]))),
    }));
    result.ratios = {
      edgewayVsNullJs: {
        addedP50: fig.edgeway.addedP50Ms / fig['null-js'].addedP50Ms,
        addedTtft: fig.edgeway.addedTtftMs / fig['null-js'].addedTtftMs,
        rps: ratioRounds('edgeway', 'null-js'),
        cpu: fig.edgeway.cpuMsPerReq / fig['null-js'].cpuMsPerReq,
      },
      edgewayVsNullRs: {
        addedP50: fig.edgeway.addedP50Ms / fig['null-rs'].addedP50Ms,
        addedTtft: fig.edgeway.addedTtftMs / fig['null-rs'].addedTtftMs,
        rps: ratioRounds('edgeway', 'null-rs'),
        cpu: fig.edgeway.cpuMsPerReq / fig['null-rs'].cpuMsPerReq,
      },
      // What per-request admission + settle add: the key with limits minus the
      // key without, on the same workerd, per round, median over rounds.
      admission: {
        addedP50Ms: median(lat['edgeway-limits'].map((xs, i) => median(xs) - median(lat.edgeway[i]))),
        addedP99Ms: fig['edgeway-limits'].p99Ms - fig.edgeway.p99Ms,
        addedTtftMs: median(streams['edgeway-limits'].map((xs, i) => median(xs.map((s) => s.ttft)) - median(streams.edgeway[i].map((s) => s.ttft)))),
        rps: ratioRounds('edgeway-limits', 'edgeway'),
        cpuMsPerReq: fig['edgeway-limits'].cpuMsPerReq - fig.edgeway.cpuMsPerReq,
      },
      // The translated path (OpenAI client, Anthropic-dialect upstream) against the null JS relay.
      translatedVsNullJs: {
        addedP50: fig['edgeway-translated'].addedP50Ms / fig['null-js'].addedP50Ms,
        addedTtftOverMs: fig['edgeway-translated'].addedTtftMs - fig['null-js'].addedTtftMs,
        rps: ratioRounds('edgeway-translated', 'null-js'),
      },
      directVsBestGateway: median(tput.direct.map((x, i) => x.rps / Math.max(...GATEWAYS.map((g) => tput[g][i].rps)))),
    };
    result.wasm = {
      edgeway: wasm(path.join(ROOT, 'edge/worker/build/index_bg.wasm')),
      'null-rs': wasm(path.join(HERE, 'null-relay-rs/build/index_bg.wasm')),
    };
    result.usagePipeline = { edgewayRequests: edgewaySent, d1Rows, queue };
    result.mockCpuMsPerReq = mockCpu.requests ? mockCpu.ms / mockCpu.requests : null;
    result.sent = sent;
    result.elapsedSecs = (Date.now() - started) / 1000;
    result.machine = machine();
    result.date = new Date().toISOString();
    result.commit = gitCommit();
    result.targets = verdicts(result);
  } finally {
    await stopChildren();
    rmSync(state, { recursive: true, force: true });
  }
  return result;
}

function machine() {
  let model = '?';
  try { model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '?'; } catch {}
  let workerd = '?';
  try { workerd = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/workerd/package.json'), 'utf8')).version; } catch {}
  let miniflare = '?';
  try { miniflare = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/miniflare/package.json'), 'utf8')).version; } catch {}
  let kernel = '?';
  try { kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(); } catch {}
  return { cpu: model, cores: cpus().length, memGiB: Math.round(totalmem() / 2 ** 30), kernel, node: process.version, workerd, miniflare };
}
function gitCommit() {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'edge'], { cwd: ROOT, encoding: 'utf8' }).trim() ? ' (edge/ modified)' : '';
    return head + dirty;
  } catch {
    return '?';
  }
}

// The bars of the hot-path issue (#7), judged on this run: ratios within the run.
function verdicts(r) {
  const f = r.figures;
  const js = f['null-js'];
  const gz = r.wasm.edgeway?.gzip ?? Infinity;
  const rj = r.ratios.edgewayVsNullJs;
  const a = r.ratios.admission;
  const tr = r.ratios.translatedVsNullJs;
  const soak = r.soak;
  const within10 = (x, y) => Math.abs(y - x) <= 0.1 * Math.abs(x);
  return [
    { target: 'key without limits: added p50 ≤ 1.25× the null JS relay', value: `+${fmt(f.edgeway.addedP50Ms)} ms vs +${fmt(js.addedP50Ms)} ms (×${fmt(rj.addedP50)})`, met: rj.addedP50 <= 1.25 },
    { target: 'key without limits: req/s @16 ≥ 0.9× the null JS relay', value: `${fmt(f.edgeway.rps, 0)} vs ${fmt(js.rps, 0)} (×${fmt(rj.rps)})`, met: rj.rps >= 0.9 },
    { target: 'key without limits: CPU per request ≤ 1.25× the null JS relay', value: `${fmt(f.edgeway.cpuMsPerReq)} vs ${fmt(js.cpuMsPerReq)} ms (×${fmt(rj.cpu)})`, met: rj.cpu <= 1.25 },
    { target: 'key without limits: SSE added first delta ≤ the null JS relay + 0.3 ms', value: `+${fmt(f.edgeway.addedTtftMs)} vs +${fmt(js.addedTtftMs)} ms`, met: f.edgeway.addedTtftMs <= js.addedTtftMs + 0.3 },
    { target: 'key with limits: added p50 ≤ the fast path + 1.0 ms', value: `${a.addedP50Ms >= 0 ? '+' : ''}${fmt(a.addedP50Ms)} ms`, met: a.addedP50Ms <= 1.0 },
    { target: 'key with limits: req/s ≥ 0.6× the fast path', value: `×${fmt(a.rps)}`, met: a.rps >= 0.6 },
    { target: 'translated path: added p50 ≤ 1.6× the null JS relay', value: `+${fmt(f['edgeway-translated'].addedP50Ms)} ms (×${fmt(tr.addedP50)})`, met: tr.addedP50 <= 1.6 },
    { target: 'translated path: SSE added first delta ≤ the null JS relay + 0.5 ms', value: `+${fmt(f['edgeway-translated'].addedTtftMs)} ms (${tr.addedTtftOverMs >= 0 ? '+' : ''}${fmt(tr.addedTtftOverMs)} ms over)`, met: tr.addedTtftOverMs <= 0.5 },
    { target: 'wasm ≤ 350 KB gzipped', value: `${fmt(gz / 1000, 0)} KB gzipped`, met: gz <= 350_000 },
    {
      target: `soak (${soak.requests} requests): RSS and added p50 at the end within 10% of the start`,
      value: `RSS ${fmt(soak.before.rssMiB, 0)} → ${fmt(soak.after.rssMiB, 0)} MiB, added p50 +${fmt(soak.before.addedP50Ms)} → +${fmt(soak.after.addedP50Ms)} ms`,
      met: within10(soak.before.rssMiB, soak.after.rssMiB) && within10(soak.before.addedP50Ms, soak.after.addedP50Ms),
    },
  ];
}

const fmt = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '—');

function table(r) {
  const f = r.figures;
  const L = [];
  L.push('| target | p50 | added p50 | added p99 | SSE added TTFT | SSE added gap | req/s @16 (min–max) | CPU ms/req | RSS idle/peak MiB |');
  L.push('|---|---|---|---|---|---|---|---|---|');
  const names = {
    direct: 'direct to mock',
    'null-js': 'null JS relay (workerd)',
    'null-js-do': '↳ + Durable Object admission (diagnostic)',
    'null-rs': 'null Rust relay (workers-rs)',
    edgeway: '**edgeway**, key without limits (fast path)',
    'edgeway-limits': '**edgeway**, key with limits (admitted from its isolate slice)',
    'edgeway-translated': '**edgeway**, translated (OpenAI client → Anthropic upstream), key without limits',
  };
  for (const t of TARGETS) {
    const x = f[t];
    const gw = t !== 'direct';
    L.push(`| ${names[t]} | ${fmt(x.p50Ms)} ms | ${gw ? `+${fmt(x.addedP50Ms)} ms` : '—'} | ${gw ? `+${fmt(x.addedP99Ms)} ms` : '—'} | ${gw ? `+${fmt(x.addedTtftMs)} ms` : `(${fmt(x.ttftMs)} ms)`} | ${gw ? `${x.addedGapMs >= 0 ? '+' : ''}${fmt(x.addedGapMs)} ms` : '—'} | ${fmt(x.rps, 0)} (${fmt(x.rpsMin, 0)}–${fmt(x.rpsMax, 0)}) | ${gw ? fmt(x.cpuMsPerReq) : '—'} | ${gw ? `${fmt(x.rssIdleMiB, 0)}/${fmt(x.rssPeakMiB, 0)}` : '—'} |`);
  }
  L.push('');
  L.push('The edgeway rows are the same workerd (hence the same RSS); only the API key or the model differs.');
  const a = r.ratios.admission;
  const sign = (x, d = 2) => `${x >= 0 ? '+' : ''}${fmt(x, d)}`;
  L.push('');
  L.push('Cost of exact limits (edgeway, key with limits − key without, same run; p50 and TTFT per round then median over rounds, p99 over all samples):');
  L.push('');
  L.push('| added p50 | added p99 | SSE added TTFT | req/s @16 ratio (with ÷ without) | CPU ms/req |');
  L.push('|---|---|---|---|---|');
  L.push(`| ${sign(a.addedP50Ms)} ms | ${sign(a.addedP99Ms)} ms | ${sign(a.addedTtftMs)} ms | ×${fmt(a.rps)} | ${sign(a.cpuMsPerReq)} |`);
  const rj = r.ratios.edgewayVsNullJs;
  const rr = r.ratios.edgewayVsNullRs;
  L.push('');
  L.push('| edgeway (key without limits) ÷ | added p50 | SSE added TTFT | req/s | CPU ms/req |');
  L.push('|---|---|---|---|---|');
  L.push(`| null JS relay | ×${fmt(rj.addedP50)} | ×${fmt(rj.addedTtft)} | ×${fmt(rj.rps)} | ×${fmt(rj.cpu)} |`);
  L.push(`| null Rust relay | ×${fmt(rr.addedP50)} | ×${fmt(rr.addedTtft)} | ×${fmt(rr.rps)} | ×${fmt(rr.cpu)} |`);
  L.push('');
  const so = r.soak;
  const sc = r.soakControl;
  L.push(`Soak (edgeway, key without limits): ${so.requests} requests at ${CONCURRENCY} concurrent in ${fmt(so.seconds, 0)} s (${fmt(so.rps, 0)} req/s); workerd RSS ${fmt(so.before.rssMiB, 0)} → ${fmt(so.after.rssMiB, 0)} MiB, added p50 +${fmt(so.before.addedP50Ms)} → +${fmt(so.after.addedP50Ms)} ms (before, and after 2 s idle). The same soak of the null JS relay (control): RSS ${fmt(sc.before.rssMiB, 0)} → ${fmt(sc.after.rssMiB, 0)} MiB, added p50 +${fmt(sc.before.addedP50Ms)} → +${fmt(sc.after.addedP50Ms)} ms.`);
  L.push('');
  L.push('Cold start (a fresh workerd per try, median of tries; process start to the first 200 of a chat request, less edgeway\'s KV/D1 seeding; and the first request alone):');
  L.push('');
  L.push('| target | process start → first 200 | first request |');
  L.push('|---|---|---|');
  for (const [t, c] of Object.entries(r.coldStart)) L.push(`| ${t} | ${fmt(c.toFirst200Ms, 0)} ms | ${fmt(c.firstRequestMs, 1)} ms |`);
  L.push('');
  const w = (x) => (x ? `${fmt(x.raw / 1024, 0)} KiB raw, ${fmt(x.gzip / 1024, 0)} KiB gzipped` : 'not built');
  L.push(`wasm: edgeway ${w(r.wasm.edgeway)}; null Rust relay ${w(r.wasm['null-rs'])}.`);
  L.push('');
  L.push('Where edgeway\'s added latency goes (p50 at concurrency 1, added over the same request to the mock):');
  L.push('');
  L.push('| request | what it exercises | added p50 |');
  L.push('|---|---|---|');
  const pr = Object.fromEntries(r.probes.map((p) => [p.name, p]));
  L.push(`| edgeway GET /health | into the worker (Miniflare entry, JS glue, wasm) and out; no I/O | +${fmt(pr['edgeway GET /health'].addedP50Ms)} ms |`);
  L.push(`| edgeway GET /v1/models | + key digest, key record and routing table from the isolate cache, JSON | +${fmt(pr['edgeway GET /v1/models'].addedP50Ms)} ms |`);
  L.push(`| null JS relay, chat | one upstream fetch relayed, in JS | +${fmt(f['null-js'].addedP50Ms)} ms |`);
  L.push(`| null JS relay + DO admission, chat | + one Durable Object round trip with a storage write (release in waitUntil) | +${fmt(f['null-js-do'].addedP50Ms)} ms |`);
  L.push(`| null Rust relay, chat | one upstream fetch relayed through workers-rs | +${fmt(f['null-rs'].addedP50Ms)} ms |`);
  L.push(`| edgeway, chat, key without limits | + body parse, routing, upstream fetch, relay, usage event batched per isolate (no per-request DO) | +${fmt(f.edgeway.addedP50Ms)} ms |`);
  L.push(`| edgeway, chat, key without limits, 5 ms idle before each | the same, with the previous request's waitUntil work (usage batch) out of the way | +${fmt(pr['edgeway chat, 5 ms idle before each'].addedP50Ms)} ms |`);
  L.push(`| edgeway, chat, key with limits | + admission from the isolate's slice of the key's account and local settle (renewals and reports to the Durable Object off the request path) | +${fmt(f['edgeway-limits'].addedP50Ms)} ms |`);
  L.push(`| edgeway, chat, key with limits, 5 ms idle before each | the same, with the previous request's deferred work out of the way | +${fmt(pr['edgeway chat, key with limits, 5 ms idle before each'].addedP50Ms)} ms |`);
  L.push(`| edgeway, chat, translated | + the request translated to Anthropic Messages and the answer back | +${fmt(f['edgeway-translated'].addedP50Ms)} ms |`);
  L.push('');
  L.push('| target (DEVELOPERS.md) | this run | met |');
  L.push('|---|---|---|');
  for (const v of r.targets) L.push(`| ${v.target} | ${v.value} | ${v.met ? 'yes' : '**no**'} |`);
  return L.join('\n');
}

function checks(r) {
  const f = r.figures;
  const L = [];
  L.push(`- Mock headroom: direct throughput is ×${fmt(r.ratios.directVsBestGateway, 1)} the fastest gateway's in the same round (peers.md asks ≥ ×10); the mock spent ${fmt(r.mockCpuMsPerReq, 3)} ms CPU per gateway request.`);
  L.push(`- Core use during the gateway throughput windows (anything else running on the machine counts too): core 0 (load generator + mock) busy ${GATEWAYS.map((t) => `${t} ${fmt(100 * f[t].core0Busy, 0)}%`).join(', ')}; core 1 (workerd) busy ${GATEWAYS.map((t) => `${t} ${fmt(100 * f[t].core1Busy, 0)}%`).join(', ')}.`);
  const drift = (t) => {
    const a = f[t].addedP50ByRound;
    const b = f[t].rpsByRound;
    return `${t} +${fmt(a[0])} → +${fmt(a.at(-1))} ms, ${fmt(b[0], 0)} → ${fmt(b.at(-1), 0)} req/s`;
  };
  L.push(`- Drift from the first round to the last (added p50; req/s): ${GATEWAYS.map(drift).join('; ')}.`);
  const hostMax = Math.max(...GATEWAYS.map((t) => f[t].hostCpuMsPerReq));
  L.push(`- ${hostMax < 0.05 ? 'The Miniflare host (Node) stayed off the data path' : '**The Miniflare host (Node) did work per request: check host.mjs options**'}: its CPU per request was ${GATEWAYS.map((t) => `${t} ${fmt(f[t].hostCpuMsPerReq, 3)} ms`).join(', ')}.`);
  const u = r.usagePipeline;
  L.push(`- edgeway usage pipeline: ${u.d1Rows ?? '?'} D1 rows for ${u.edgewayRequests} requests sent with both keys (Queue → consumer → D1${u.d1Rows !== null && u.d1Rows >= u.edgewayRequests ? ', all written' : ', **not all written**'}; wrk's requests still in flight when it stops are served but not counted, hence a few more rows).${u.queue?.batches ? ` The queue consumer ran ${u.queue.batches} batches, ${fmt(u.queue.messages / u.queue.batches, 0)} messages each on average, ${fmt(u.queue.wallMs / u.queue.messages, 3)} ms of wall time per message.` : ''}`);
  L.push(`- Pinning: harness ${r.pinning.harness}, mock ${r.pinning.mock}, workerd ${Object.entries(r.pinning.workerd).map(([t, c]) => `${t} ${c}`).join(', ')}.`);
  return L.join('\n');
}

const NOTES_BEGIN = '<!-- notes:begin (kept across runs) -->';
const NOTES_END = '<!-- notes:end -->';
/** The hand-written notes of an existing results page, carried into the new one. */
function keptNotes(file) {
  try {
    const old = readFileSync(file, 'utf8');
    const a = old.indexOf(NOTES_BEGIN);
    const b = old.indexOf(NOTES_END);
    if (a >= 0 && b > a) return old.slice(a, b + NOTES_END.length);
  } catch {}
  return `${NOTES_BEGIN}\n${NOTES_END}`;
}

function page(r, notes) {
  const m = r.machine;
  return `# Benchmarks

${r.quick ? 'A quick smoke run of `scripts/bench --quick`: too short for conclusions.' : 'Latest full run of `scripts/bench`: the page is rewritten by it, except the notes between the markers under "Notes".'}

- **Date:** ${r.date.slice(0, 16).replace('T', ' ')} UTC, commit ${r.commit}, ${fmt(r.elapsedSecs, 0)} s.
- **Machine:** ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}; Node ${m.node}, workerd ${m.workerd} via Miniflare ${m.miniflare}.
- **Load:** ${r.params.rounds} interleaved rounds; per round and target ${r.params.latencyN} non-stream requests at concurrency 1, ${r.params.streamN} streams (\`${r.params.pacedModel}\`: 8 content deltas 10 ms apart), and ${r.params.tputSecs} s of ${r.params.loadGenerator} against the non-stream request.

## Results

${table(r)}

## Method

- **Targets**, all in one run against one mock upstream: *direct* (the mock itself: the baseline), a *null JS relay* (\`tests/bench/null-relay.js\`: forwards the body, streams the answer back) and a *null Rust relay* (\`tests/bench/null-relay-rs\`: workers-rs 0.8.7, bytes in, response streamed back through Rust; same toolchain and release profile as edgeway) — the floors — and *edgeway* (\`edge/worker/build\`), called with two keys (below). A diagnostic fifth, the null JS relay plus a per-key Durable Object admission before the upstream call and a release in \`waitUntil\` (\`tests/bench/null-relay-do.js\`, the same storage work as edgeway's \`KeyAccount\`), prices the platform round trip that edgeway makes for a key with limits; edgeway's \`GET /health\` and \`GET /v1/models\` (no upstream, no Durable Object) split the rest.
- **Runtime:** each workerd target is loaded in its own workerd through the Miniflare API (\`tests/bench/host.mjs\`), not \`wrangler dev\` (whose Node proxy adds milliseconds). edgeway gets the bindings of \`wrangler.toml\` through wrangler's own config loader: KV, the SQLite-backed Durable Object, D1 (with \`d1-migrations/\` applied), the Queue producer and consumer, vars; state is persisted to a temporary directory on ${r.params.stateDir === 'tmpfs' ? 'tmpfs' : 'disk (as under `wrangler dev`)'}. The routing table and two key records are seeded in KV. One key has no limits, so edgeway takes its fast path: no per-request Durable Object admission (the key's account is consulted at most every 2 s per isolate) and usage events batched per isolate into one Queue \`sendBatch\`; the edgeway row and the verdicts below use it. The other key has limits that never bind (\`max_concurrency\` 100000, \`rpm\` 100000000, \`quota_micros\` 9·10¹⁵): each request is admitted exactly against its isolate's slice of the key's account and settled locally, and the isolate renews and reports to the account's Durable Object in batches off the request path (docs/key-accounts.md); both keys are measured the same way on the same workerd, and their difference is the cost of exact limits. The *translated* row is the first key with a model whose channel speaks Anthropic Messages (the fast mock answers in that dialect): the request is translated and the answer, stream and not, translated back.
- **Soak:** after the rounds, ${r.soak.requests} requests at 16 concurrent against edgeway's fast path; added p50 (${r.params.latencyN} requests, each paired with one to the mock) and the workerd's RSS before, and after 2 s of idle.
- **Cold start:** after the soak, a fresh host per try (new workerd, new state) for the null JS relay, the null Rust relay and edgeway: time from spawning the host process to the first 200 of a chat request, less the time edgeway's host spends seeding KV and D1, and the time of that first request alone (isolate start, script or wasm compile and instantiation, the request).
- **Pinning:** the workerd processes are pinned to core 1 (\`taskset -c 1\` on the Node process that hosts them); the harness, the mock (\`tests/bench/fast-mock.mjs\`, raw HTTP/1.1 on \`node:net\` with TCP_NODELAY and precomputed replies) and the load generator to core 0.
- **Added latency:** keep-alive undici client, one connection, non-stream chat completion; per round the median of each target minus the direct median of the same round, then the median over rounds. p99 is over all rounds' samples, minus direct's p99.
- **SSE:** time from sending the request to the first chunk carrying non-empty \`delta.content\`, and the mean gap between content deltas; added = target − direct, per round, median over rounds. A gateway that buffers shows up in both.
- **Throughput:** ${r.params.loadGenerator}, ${r.params.tputSecs} s per target per round; median over rounds, with min–max. Ratios between targets are taken within each round, then the median.
- **CPU per request:** utime+stime of the target's workerd process (from /proc) over its throughput windows (each followed by ${r.params.settleMs} ms so deferred work — \`waitUntil\`, queue batches, D1 writes — is counted), divided by the requests served.
- **wasm size:** the built \`index_bg.wasm\`, raw and gzip -9.
- Throughput on 2 cores swings about 35% between runs (peers.md): compare figures within one run.

## Checks on this run

${checks(r)}

## Notes

${notes}

## Reference: peers measured on the same class of machine (peers.md)

| target | added p50 | SSE added TTFT | req/s @16 | CPU ms/req |
|---|---|---|---|---|
| null JS relay on workerd | +0.8–1.0 ms | +0.8 ms | 1.5–2.0k | 0.5–0.7 |
| null Rust relay on workerd | +1.3 ms | +1.3 ms | 1.2k | 0.86 |
| Portkey gateway on workerd | +2.4 ms | +27 ms | 1.3k | 0.80 |
| Portkey gateway on Node | +3.6–4.1 ms | +29 ms | 550 | 2.2 |
| LiteLLM proxy, 1 worker | +18 ms | +18 ms | 58 | 17.5 |

These were not rerun here; only figures from the same run above are compared with each other.

## Run it

\`\`\`
scripts/bench            # builds what is stale, full run (~6 min), rewrites this page
scripts/bench --quick    # smoke run (< 1 min), writes bench-out/ only
\`\`\`
Raw figures of the latest run: \`bench-out/latest.json\`.
`;
}

main()
  .then((r) => {
    const md = table(r);
    writeFileSync(path.join(OUT, QUICK ? 'quick.json' : 'latest.json'), `${JSON.stringify(r, null, 2)}\n`);
    const notes = keptNotes(DOC ? path.resolve(ROOT, DOC) : path.join(ROOT, 'docs/benchmarks.md'));
    writeFileSync(path.join(OUT, QUICK ? 'quick.md' : 'latest.md'), page(r, notes));
    if (DOC) writeFileSync(path.resolve(ROOT, DOC), page(r, notes));
    console.log(md);
    console.log('');
    console.log(checks(r));
    process.exit(0);
  })
  .catch(async (e) => {
    console.error(`[bench] failed: ${e?.stack ?? e}`);
    await stopChildren();
    process.exit(1);
  });
