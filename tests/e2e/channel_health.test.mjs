// End-to-end: channel health shared across isolates, and health checks on the
// cron, under the real worker (`wrangler dev`), driven with the official
// `openai` SDK and configured through the admin API.
//
// What it shows (figures printed as diagnostics):
//   - a second worker process (another isolate, on the same Durable Objects)
//     and the first each see two failures of a channel: neither opens the
//     circuit alone, the channel's shared record counts all four and opens it
//     for both; after the cool-down, of 10 concurrent requests spread over
//     both processes exactly one probes the channel
//   - the cron's handler (GET /__scheduled) checks every credential of every
//     channel with a models list: a refused credential leaves the rotation
//     (once the worker's copy of the record is refreshed, no request meets
//     it); a channel whose every credential
//     is refused is disabled (traffic goes to the next channel without trying
//     it) and the admin says why; once the provider takes the keys again, the
//     next round re-enables the channel
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack } from './stack.mjs';

const price = { input: 1_000_000, output: 2_000_000 };
const OPEN_MS = 3000;
let stack;
let replica;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const client = (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 30_000 });
const calls = async (model) => (await stack.mockStats()).byModel[model] ?? 0;

async function ask(openai, model) {
  const { response } = await openai.chat.completions
    .create({ model, messages: [{ role: 'user', content: 'hi' }] })
    .withResponse();
  return response.headers.get('x-edgeway-channel');
}

/** Polls `read` until `ok(value)` holds; the last value. */
async function until(read, ok, what, timeoutMs = 10_000) {
  const started = Date.now();
  for (;;) {
    const value = await read();
    if (ok(value)) return value;
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: still ${JSON.stringify(value)}`);
    await sleep(100);
  }
}

const health = (channel) => stack.adminApi('GET', `/api/channels/${channel}/health`);

/**
 * Lets the worker's copy of the channels' records catch up: it refreshes a
 * channel's copy after a request to it once the copy is 2 s old (the request
 * itself still routes by the old copy).
 */
async function refreshCopy(openai, model) {
  await sleep(2_100);
  await ask(openai, model);
  await sleep(300);
}

before(async () => {
  stack = await startStack();
  const mockV1 = `${stack.mockUrl}/v1`;
  await stack.adminApi('POST', '/api/channels', {
    id: 'sh-bad', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-sh-bad-0000000000000',
    breaker: { failures: 4, window_ms: 30_000, open_ms: OPEN_MS },
    models: [{ name: 'sh-m', upstream_model: 'switch-sh', priority: 10, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'sh-good', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-sh-good-000000000000',
    models: [{ name: 'sh-m', upstream_model: 'gpt-test', priority: 0, price }],
  });
  await stack.waitForModel('sh-m');
  replica = await stack.startReplica();
});

after(async () => {
  await stack?.stop();
});

test('two worker processes share a channel\'s circuit: failures add up, one probe in all', { timeout: 120_000 }, async (t) => {
  const primary = client(stack.gatewayUrl);
  const second = client(replica.url);
  assert.equal(await ask(second, 'sh-m'), 'sh-bad', 'the replica serves from the same KV and objects');
  await fetch(`${stack.mockUrl}/__switch?model=switch-sh&status=500`, { method: 'POST' });
  const before = await calls('switch-sh');
  // Two failures in each process: below the threshold of 4 in each.
  for (const openai of [primary, second, primary, second]) {
    assert.equal(await ask(openai, 'sh-m'), 'sh-good', 'a failure fails over invisibly');
  }
  assert.equal(await calls('switch-sh') - before, 4);
  const open = await until(
    async () => (await health('sh-bad')).circuits.find((c) => c.model === 'switch-sh'),
    (c) => c?.state === 'open',
    'the shared record opens the circuit',
  );
  // Each process learns it within its refresh interval (2 s) once it routes there.
  const learnedAt = Date.now();
  const skipsBy = {};
  for (const [name, openai] of [['primary', primary], ['replica', second]]) {
    await until(async () => {
      const atBad = await calls('switch-sh');
      await ask(openai, 'sh-m');
      return (await calls('switch-sh')) === atBad;
    }, (skipped) => skipped, `${name} skips the open channel`, 6_000);
    skipsBy[name] = Date.now() - learnedAt;
  }
  const tried = await calls('switch-sh') - before;
  assert.ok(tried <= 6, `at most one more try per process before it learned: ${tried}`);

  // After the cool-down: 10 concurrent requests, 5 per process, one probe in all.
  await sleep(Math.max(0, open.until_ms - Date.now()) + 300);
  const atBurst = await calls('switch-sh');
  const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => ask(i % 2 ? second : primary, 'sh-m')));
  assert.deepEqual([...new Set(burst)], ['sh-good'], 'every request served');
  const probes = await calls('switch-sh') - atBurst;
  assert.equal(probes, 1, 'exactly one probe across both processes');
  const reopened = await until(
    async () => (await health('sh-bad')).circuits.find((c) => c.model === 'switch-sh'),
    (c) => c?.state === 'open' && c.until_ms > open.until_ms,
    'the failed probe opens it again',
  );

  // Recovered: the next probe (from either process) closes it for both.
  await fetch(`${stack.mockUrl}/__switch?model=switch-sh&status=200`, { method: 'POST' });
  await sleep(Math.max(0, reopened.until_ms - Date.now()) + 300);
  // The replica's copy is refreshed by its next request (it was idle): at
  // most one more request is served by sh-good before one probes sh-bad.
  await until(() => ask(second, 'sh-m'), (c) => c === 'sh-bad', 'the replica probes and is served', 6_000);
  await until(async () => (await health('sh-bad')).circuits, (cs) => cs.length === 0, 'the record closes');
  await sleep(2_100);
  assert.equal(await until(() => ask(primary, 'sh-m'), (c) => c === 'sh-bad', 'the primary routes there again'), 'sh-bad');
  const figures = { failures_to_open: 4, learned_ms: skipsBy, probes_in_burst_of_10_over_2_processes: probes };
  t.diagnostic(`shared breaker ${JSON.stringify(figures)}`);
  console.log('FIGURES shared_breaker', JSON.stringify(figures));
});

test('health checks on the cron take refused credentials out, disable and re-enable a channel', { timeout: 90_000 }, async (t) => {
  const revoke = (suffix, revoked) => fetch(`${stack.mockUrl}/__revoke?suffix=${suffix}&revoked=${revoked ? 1 : 0}`, { method: 'POST' });
  await stack.adminApi('POST', '/api/channels', {
    id: 'hc', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`,
    api_key: 'sk-hc-first-key-000-hcgood01', api_keys: ['sk-hc-second-key-00-hcbad002'],
    models: [{ name: 'hc-m', upstream_model: 'gpt-test', priority: 10, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'hc-backup', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-hc-backup-key-00-hcback03',
    models: [{ name: 'hc-m', upstream_model: 'gpt-test', priority: 0, price }],
  });
  await stack.waitForModel('hc-m');
  const openai = client(stack.gatewayUrl);

  // Round 1: the provider refuses the second key.
  await revoke('hcbad002', true);
  await stack.scheduled();
  const round1 = await until(() => health('hc'), (h) => h.checks.length === 2, 'the round is recorded');
  assert.deepEqual(round1.checks.map((c) => [c.credential, c.status, c.outcome]), [[0, 200, 'ok'], [1, 401, 'credential_refused']]);
  assert.equal(round1.usable_credentials, 1);
  assert.equal(round1.disabled, null);
  assert.ok(round1.checks.every((c) => Number.isInteger(c.latency_ms) && c.at_ms > 0));
  const lists = (await stack.mockStats()).modelLists;
  assert.ok(lists.hcgood01 >= 1 && lists.hcbad002 >= 1 && lists.hcback03 >= 1, `one models list per credential: ${JSON.stringify(lists)}`);
  await refreshCopy(openai, 'hc-m');
  const byKeyBefore = { ...(await stack.mockStats()).byKey };
  for (let i = 0; i < 6; i++) assert.equal(await ask(openai, 'hc-m'), 'hc');
  const byKey = (await stack.mockStats()).byKey;
  const used = (s) => (byKey[s] ?? 0) - (byKeyBefore[s] ?? 0);
  assert.equal(used('hcbad002'), 0, 'the refused key is out of rotation');
  assert.equal(used('hcgood01'), 6);

  // Round 2: every key of hc refused: the channel is disabled, traffic goes to hc-backup untried.
  await revoke('hcgood01', true);
  await stack.scheduled();
  const round2 = await until(() => health('hc'), (h) => h.disabled !== null, 'the channel is disabled');
  assert.match(round2.disabled, /every credential was refused by the provider \(401, 401\)/);
  assert.equal(round2.usable_credentials, 0);
  // The admin's /metrics exports the checks, read over the edge's signed internal API.
  const metrics = await (await fetch(`${stack.adminUrl}/metrics`)).text();
  assert.match(metrics, /^edgeway_edge_channel_disabled\{channel="hc"\} 1$/m);
  assert.match(metrics, /^edgeway_edge_channel_disabled\{channel="hc-backup"\} 0$/m);
  assert.match(metrics, /^edgeway_edge_channel_check_ok\{channel="hc",credential="0",outcome="credential_refused"\} 0$/m);
  assert.match(metrics, /^edgeway_edge_channel_check_latency_ms\{channel="hc-backup",credential="0",outcome="ok"\} \d+$/m);
  await refreshCopy(openai, 'hc-m');
  const atDisabled = { ...(await stack.mockStats()).byKey };
  for (let i = 0; i < 4; i++) assert.equal(await ask(openai, 'hc-m'), 'hc-backup');
  const after2 = (await stack.mockStats()).byKey;
  assert.equal((after2.hcgood01 ?? 0) - (atDisabled.hcgood01 ?? 0), 0, 'a disabled channel is not tried');

  // Round 3: the provider takes the keys again: the channel is back.
  await revoke('hcgood01', false);
  await revoke('hcbad002', false);
  await stack.scheduled();
  const round3 = await until(() => health('hc'), (h) => h.disabled === null && h.usable_credentials === 2, 'the channel is re-enabled');
  assert.deepEqual(round3.checks.map((c) => c.outcome), ['ok', 'ok']);
  await refreshCopy(openai, 'hc-m');
  assert.equal(await until(() => ask(openai, 'hc-m'), (c) => c === 'hc', 'traffic returns to hc'), 'hc');
  const figures = { check_latency_ms: round3.checks.map((c) => c.latency_ms), rounds: 3 };
  t.diagnostic(`health checks ${JSON.stringify(figures)}`);
  console.log('FIGURES health_checks', JSON.stringify(figures));
});
