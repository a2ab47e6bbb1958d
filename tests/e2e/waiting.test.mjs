// End-to-end: waiting instead of refusing. A key with `max_concurrency` 1
// and `max_wait_ms` lets requests over the limit wait for the slot, in
// arrival order, under the real worker with the official `openai` SDK.
//
// What it shows (figures printed as diagnostics):
//   - 4 streams sent 40 ms apart on one slot: all served, in arrival order
//     (the same 4 on a key without max_wait_ms: 3 refused with 429)
//   - a waiting client that disconnects does not hold up the one behind it
//     (that it leaves the queue unserved is a host test: wrangler dev's local
//     proxy does not pass a client's disconnect on to the worker)
//   - a wait longer than max_wait_ms ends in the usual 429
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack } from './stack.mjs';

const price = { input: 1_000_000, output: 2_000_000 };
let stack;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const client = (key) => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });

async function stream(key, { signal } = {}) {
  const s = await client(key).chat.completions.create(
    { model: 'wait-paced', messages: [{ role: 'user', content: 'hi' }], stream: true, max_tokens: 8 }, { signal });
  for await (const _ of s) { /* drain */ }
}

/** Starts `n` streams `gapMs` apart; resolves to each one's outcome and end time, in start order. */
async function staggered(key, n, gapMs) {
  return Promise.all(Array.from({ length: n }, async (_, i) => {
    await sleep(i * gapMs);
    try {
      await stream(key);
      return { i, ok: true, at: performance.now() };
    } catch (e) {
      return { i, ok: false, status: e.status, at: performance.now() };
    }
  }));
}

before(async () => {
  stack = await startStack();
  await stack.adminApi('POST', '/api/channels', {
    id: 'wait-upstream', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-wait-upstream-0000',
    models: [{ name: 'wait-paced', upstream_model: 'paced-40', price }],
  });
  await stack.waitForModel('wait-paced');
});

after(async () => {
  await stack?.stop();
});

test('requests over the limit wait for the slot in arrival order; without max_wait_ms they are refused', { timeout: 60_000 }, async (t) => {
  const waiting = (await stack.adminApi('POST', '/api/keys', { name: 'waits', max_concurrency: 1, max_wait_ms: 10_000 })).key;
  const t0 = performance.now();
  const served = await staggered(waiting, 4, 40);
  const elapsed = performance.now() - t0;
  assert.deepEqual(served.map((r) => r.ok), [true, true, true, true], JSON.stringify(served));
  const order = [...served].sort((a, b) => a.at - b.at).map((r) => r.i);
  assert.deepEqual(order, [0, 1, 2, 3], 'served in arrival order');
  assert.equal((await stack.mockStats()).maxInFlight, 1, 'one at a time upstream');

  const refusing = (await stack.adminApi('POST', '/api/keys', { name: 'refuses', max_concurrency: 1 })).key;
  const refused = await staggered(refusing, 4, 40);
  assert.deepEqual(refused.map((r) => r.ok ? 200 : r.status), [200, 429, 429, 429]);
  t.diagnostic(`4 streams on one slot: all served in ${Math.round(elapsed)} ms, in order ${order}`);
  console.log('FIGURES waiting', JSON.stringify({ served_in_order: order, elapsed_ms: Math.round(elapsed) }));
});

test('a waiting client that disconnects holds no one up; a wait past max_wait_ms is a 429', { timeout: 60_000 }, async () => {
  const key = (await stack.adminApi('POST', '/api/keys', { name: 'leaves', max_concurrency: 1, max_wait_ms: 10_000 })).key;
  const before = (await stack.mockStats()).byModel['paced-40'] ?? 0;
  const first = stream(key);
  await sleep(40);
  const controller = new AbortController();
  const leaving = stream(key, { signal: controller.signal }).then(() => 'served', () => 'aborted');
  await sleep(40);
  const third = stream(key).then(() => performance.now());
  await sleep(60);
  controller.abort();
  await first;
  const firstDone = performance.now();
  const thirdDone = await third;
  assert.equal(await leaving, 'aborted');
  assert.ok(thirdDone - firstDone < 1_500, `the one behind the leaver was served soon after (${Math.round(thirdDone - firstDone)} ms later)`);
  // On Cloudflare the disconnect reaches the waiting request (request.signal)
  // and it leaves the queue unserved; wrangler dev's local proxy does not
  // pass a client's disconnect on, so there it is served and its answer
  // dropped. Either way nobody waits behind it for long.
  const upstreamCalls = ((await stack.mockStats()).byModel['paced-40'] ?? 0) - before;
  assert.ok(upstreamCalls === 2 || upstreamCalls === 3, `upstream calls: ${upstreamCalls}`);

  const short = (await stack.adminApi('POST', '/api/keys', { name: 'short wait', max_concurrency: 1, max_wait_ms: 150 })).key;
  const holding = stream(short);
  await sleep(30);
  const started = performance.now();
  await assert.rejects(stream(short), (e) => e.status === 429);
  const waited = performance.now() - started;
  assert.ok(waited >= 100, `waited before the 429 (${Math.round(waited)} ms)`);
  await holding;
});
