// Reliability at scale, measured (issue #13, point 9). Not part of
// scripts/test: `scripts/load` runs it (a few minutes on 2 cores).
//
// 1. 1,000 concurrent streaming requests on one quota-limited key, a third
//    aborted at random points, the admin service down for part of the run:
//    spend <= quota, every lease and reservation released, every settled
//    request billed exactly once, D1 = admin ledger = the key's account.
// 2. workerd's resident memory (RSS of the workerd processes under wrangler
//    dev) before, after 10,000 requests, after 2 minutes idle, and after
//    another 10,000: a leak keeps growing with each batch, a cache or heap
//    high-water mark does not.
// Prints one JSON line of figures per part (FIGURES ...).
import { readFileSync, readdirSync } from 'node:fs';
import OpenAI from 'openai';
import { startStack, keyDigest } from '../e2e/stack.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const PRICE = { input: 1_000_000, output: 2_000_000 };
const MOCK_COST = 11 * 1 + 8 * 2; // the mock reports 11 prompt and 8 completion tokens
const PROMPT = 'Tell me, briefly, what an edge gateway does for a client. '.repeat(4);
const N = Number(process.env.LOAD_REQUESTS ?? 1000);
const RSS_REQUESTS = Number(process.env.RSS_REQUESTS ?? 10_000);
const IDLE_MS = Number(process.env.RSS_IDLE_MS ?? 120_000);

function check(ok, what, value) {
  if (!ok) throw new Error(`INVARIANT FAILED: ${what}: ${JSON.stringify(value)}`);
}

async function until(what, probe, timeoutMs = 180_000, everyMs = 500) {
  const started = Date.now();
  for (;;) {
    const r = await probe();
    if (r.done) return r.value;
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not reached in ${timeoutMs} ms: ${JSON.stringify(r.value)}`);
    await sleep(everyMs);
  }
}

/** RSS (kB) of every workerd process descending from `pid`. */
function workerdRss(pid) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch {}
  }
  const out = [];
  const walk = (p) => {
    for (const c of children.get(p) ?? []) {
      try {
        const status = readFileSync(`/proc/${c}/status`, 'utf8');
        const name = /Name:\s+(\S+)/.exec(status)?.[1];
        const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
        if (name === 'workerd') out.push({ pid: c, rss_kb: rss });
      } catch {}
      walk(c);
    }
  };
  walk(pid);
  return out;
}

const stack = await startStack({ adminIngest: true, upstreamTimeoutMs: 10_000, vars: { USAGE_RETRY_DELAY_SECS: '1' } });
try {
  await stack.adminApi('POST', '/api/channels', {
    id: 'load-upstream', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-load-upstream-000000000',
    timeout_ms: 10_000, models: [{ name: 'load-paced', upstream_model: 'paced-20', price: PRICE }],
  });
  await until('routing', async () => {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    return { done: (await r.text()).includes('load-paced'), value: null };
  });

  // ---- 1. 1,000 concurrent streams, random aborts, admin outage ----------
  const quota = 300 * MOCK_COST;
  const created = await stack.adminApi('POST', '/api/keys', { name: 'load quota', quota_micros: quota });
  const digest = keyDigest(created.key);
  const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: created.key, maxRetries: 0, timeout: 60_000 });
  const started = Date.now();
  const outage = (async () => {
    await sleep(1500);
    await stack.stopAdmin();
    const down = Date.now();
    await sleep(8000);
    await stack.startAdmin();
    return Date.now() - down;
  })();
  const outcomes = await Promise.all(Array.from({ length: N }, async (_, i) => {
    await sleep(Math.random() * 2000);
    const controller = new AbortController();
    const aborts = Math.random() < 1 / 3;
    if (aborts) setTimeout(() => controller.abort(), Math.random() * 600);
    const gaveUp = new Promise((r) => controller.signal.addEventListener('abort', () => setTimeout(() => r('aborted'), 5000), { once: true }));
    try {
      return await Promise.race([gaveUp, (async () => {
        const stream = await client.chat.completions.create({ model: 'load-paced', messages: [{ role: 'user', content: PROMPT }], stream: true, max_tokens: 8 }, { signal: controller.signal });
        for await (const _ of stream);
        return 'completed';
      })()]);
    } catch (e) {
      if (controller.signal.aborted) return 'aborted';
      if (e.status === 429) return `refused_${e.code}`;
      return `other_${e.status ?? e.constructor.name}`;
    }
  }));
  const outageMs = await outage;
  const elapsed = Date.now() - started;
  const count = (k) => outcomes.filter((o) => o === k).length;
  const other = outcomes.filter((o) => o.startsWith('other'));

  const a = await until('account quiet', async () => {
    const a = await stack.internal('GET', `/internal/keys/${digest}/account`);
    return { done: a.in_flight === 0 && a.reserved_micros === 0 && a.outbox_pending === 0, value: a };
  });
  const settled = a.counters.settled;
  // The ledger of one key, at most 1,000 rows a page (N <= 1,000 settles here).
  const ledgerRows = async () => (await stack.adminApi('GET', `/api/usage?key_id=${created.id}&limit=1000`)).data;
  const { stored, ledger } = await until('D1 and the admin ledger hold every settled request', async () => {
    const stored = await stack.internal('GET', `/internal/usage/stats?key_digest=${digest}&limit=1`);
    const ledger = await ledgerRows();
    return { done: stored.rows >= settled && ledger.length >= settled, value: { stored, ledger, d1: stored.rows, ledger_rows: ledger.length, settled } };
  }, 300_000, 1000);
  const ids = new Set(ledger.map((r) => r.request_id));
  const ledgerSpend = ledger.reduce((s, r) => s + r.cost_micros, 0);
  const figures = {
    requests: N, completed: count('completed'), aborted: count('aborted'),
    refused_quota: count('refused_insufficient_quota'), other: other.length, elapsed_ms: elapsed, admin_down_ms: outageMs,
    admitted: a.counters.admitted, settled, quota, spent: a.spent_micros, available: a.available_micros,
    overrun_micros: a.counters.overrun_micros, leases_expired: a.counters.leases_expired,
    d1_rows: stored.rows, d1_spend: stored.cost_micros, ledger_rows: ledger.length, ledger_unique_ids: ids.size, ledger_spend: ledgerSpend,
    in_flight_after: a.in_flight, reserved_after: a.reserved_micros,
  };
  console.log('FIGURES concurrency', JSON.stringify(figures));
  check(other.length === 0, 'only completions, aborts and quota refusals', other.slice(0, 5));
  check(a.spent_micros <= quota, 'spend <= quota', figures);
  check(a.available_micros >= 0, 'no negative balance', figures);
  check(a.in_flight === 0 && a.reserved_micros === 0, 'every lease and reservation released', figures);
  check(stored.rows === settled && ledger.length === settled && ids.size === settled, 'every settled request billed exactly once', figures);
  check(stored.cost_micros === a.spent_micros && ledgerSpend === a.spent_micros, 'D1 = admin ledger = account', figures);

  // ---- 2. workerd RSS after 10,000 requests and 2 minutes idle ------------
  const fast = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 30_000 });
  const rss = () => workerdRss(stack.worker.pid).reduce((s, p) => s + p.rss_kb, 0);
  const batch = async (n) => {
    let next = 0;
    let failed = 0;
    const t0 = Date.now();
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < n) {
        const i = next++;
        try {
          if (i % 2 === 0) await fast.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: `hi ${i}` }] });
          else for await (const _ of await fast.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: `hi ${i}` }], stream: true }));
        } catch {
          failed++;
        }
      }
    }));
    return { n, failed, ms: Date.now() - t0 };
  };
  const memory = { processes: workerdRss(stack.worker.pid).length, start_kb: rss() };
  memory.batch1 = await batch(RSS_REQUESTS);
  memory.after_first_kb = rss();
  await sleep(IDLE_MS);
  memory.after_idle_kb = rss();
  memory.growth_first_kb = memory.after_first_kb - memory.start_kb;
  if (process.env.RSS_SECOND !== '0') {
    memory.batch2 = await batch(RSS_REQUESTS);
    memory.after_second_kb = rss();
    await sleep(IDLE_MS);
    memory.after_second_idle_kb = rss();
    memory.growth_second_kb = memory.after_second_kb - memory.after_idle_kb;
  }
  console.log('FIGURES memory', JSON.stringify(memory));
} finally {
  await stack.stop();
}
