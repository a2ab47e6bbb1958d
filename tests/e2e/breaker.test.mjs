// End-to-end: the circuit breaker under the real worker (`wrangler dev`),
// configured through the admin API, driven with the official `openai` SDK.
// A model has two targets: `br-bad` first (a mock upstream model whose
// answer the test switches between 500 and 200) and `br-good` second.
//
// What it shows (figures printed as diagnostics):
//   - three failures within the window open br-bad's circuit: requests go on
//     being served by br-good, and once open br-bad is not tried at all
//   - after the cool-down, under 20 concurrent requests exactly one is let
//     through to br-bad as the probe; its failure opens the circuit again for
//     twice as long; everyone was served
//   - once br-bad recovers, the next probe closes the circuit and br-bad serves again
//   - a channel with three keys: they take turns, a refused one leaves the
//     rotation (the admin's health view and /metrics show it)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack } from './stack.mjs';

const price = { input: 1_000_000, output: 2_000_000 };
const OPEN_MS = 2000;
let stack;
let openai;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const switchTo = (status) => fetch(`${stack.mockUrl}/__switch?model=switch-br&status=${status}`, { method: 'POST' });
const probes = async () => (await stack.mockStats()).byModel['switch-br'] ?? 0;
const circuits = async () => (await stack.internal('GET', '/internal/health')).circuits;

async function ask() {
  const started = performance.now();
  const { response } = await openai.chat.completions
    .create({ model: 'br-m', messages: [{ role: 'user', content: 'hi' }] })
    .withResponse();
  return { channel: response.headers.get('x-edgeway-channel'), ms: performance.now() - started };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

before(async () => {
  stack = await startStack();
  const mockV1 = `${stack.mockUrl}/v1`;
  await stack.adminApi('POST', '/api/channels', {
    id: 'br-bad', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-br-bad-000000000000',
    breaker: { failures: 3, window_ms: 10_000, open_ms: OPEN_MS },
    models: [{ name: 'br-m', upstream_model: 'switch-br', priority: 10, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'br-good', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-br-good-00000000000',
    models: [{ name: 'br-m', upstream_model: 'gpt-test', priority: 0, price }],
  });
  const channels = await stack.adminApi('GET', '/api/channels');
  assert.deepEqual(channels.data.find((c) => c.id === 'br-bad').breaker, { failures: 3, window_ms: 10_000, open_ms: OPEN_MS });
  openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 30_000 });
  await stack.waitForModel('br-m');
});

after(async () => {
  await stack?.stop();
});

test('failures open the circuit, one probe at a time under concurrency, a recovered channel closes it', { timeout: 90_000 }, async (t) => {
  await switchTo(200);
  assert.equal((await ask()).channel, 'br-bad', 'healthy: the first target serves');
  await switchTo(500);
  const failingOver = [];
  for (let i = 0; i < 3; i++) {
    const r = await ask();
    assert.equal(r.channel, 'br-good', 'a failure fails over invisibly');
    failingOver.push(r.ms);
  }
  assert.equal(await probes(), 4);
  const open = (await circuits()).find((c) => c.channel === 'br-bad');
  assert.equal(open?.state, 'open', JSON.stringify(await circuits()));
  assert.equal(open.model, 'switch-br');
  assert.equal(open.last_failure, 'server_error');

  // Open: br-bad is skipped, nothing reaches it.
  const skipping = [];
  for (let i = 0; i < 10; i++) {
    const r = await ask();
    assert.equal(r.channel, 'br-good');
    skipping.push(r.ms);
  }
  assert.equal(await probes(), 4, 'an open circuit is not tried');

  // Half-open: of 20 concurrent requests exactly one probes br-bad.
  await sleep(Math.max(0, open.until_ms - Date.now()) + 200);
  const burst = await Promise.all(Array.from({ length: 20 }, () => ask()));
  assert.deepEqual([...new Set(burst.map((r) => r.channel))], ['br-good'], 'every request served');
  assert.equal(await probes(), 5, 'exactly one probe');
  const reopened = (await circuits()).find((c) => c.channel === 'br-bad');
  assert.equal(reopened.state, 'open', 'the failed probe opens it again');
  const reopenedFor = reopened.until_ms - reopened.since_ms;
  assert.ok(reopenedFor >= 2 * OPEN_MS - 50, `open again for twice as long: ${reopenedFor} ms`);

  // Recovered: the next probe closes the circuit and br-bad serves again.
  await switchTo(200);
  await sleep(Math.max(0, reopened.until_ms - Date.now()) + 200);
  assert.equal((await ask()).channel, 'br-bad', 'the probe is served by the recovered channel');
  assert.equal((await ask()).channel, 'br-bad', 'closed');
  assert.equal((await circuits()).find((c) => c.channel === 'br-bad'), undefined, 'nothing left to show');

  const figures = {
    failover_ms_p50: Math.round(median(failingOver)), skip_ms_p50: Math.round(median(skipping)),
    probes_in_burst_of_20: 1, reopened_for_ms: reopenedFor,
  };
  t.diagnostic(`breaker figures ${JSON.stringify(figures)}`);
  console.log('FIGURES breaker', JSON.stringify(figures));
});

test('a channel with three keys: they take turns, a refused one leaves the rotation, the admin shows it', { timeout: 60_000 }, async (t) => {
  await stack.adminApi('POST', '/api/channels', {
    id: 'br-keys', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`,
    api_key: 'sk-br-first-key-0000-aaaaaaaa',
    api_keys: ['sk-br-revoked-key-1-bbbbbbbb', 'sk-br-third-key-2-cccccccc'],
    models: [{ name: 'br-k', upstream_model: 'gpt-test', price }],
  });
  const view = (await stack.adminApi('GET', '/api/channels')).data.find((c) => c.id === 'br-keys');
  assert.equal(view.credentials, 3);
  assert.ok(!JSON.stringify(view).includes('sk-br-'), 'no key is ever returned');
  await stack.waitForModel('br-k');
  const before = { ...(await stack.mockStats()).byKey };
  for (let i = 0; i < 9; i++) {
    const { response } = await openai.chat.completions.create({ model: 'br-k', messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    assert.equal(response.headers.get('x-edgeway-channel'), 'br-keys', 'a refused key is retried on the same channel');
  }
  const after = (await stack.mockStats()).byKey;
  const calls = (suffix) => (after[suffix] ?? 0) - (before[suffix] ?? 0);
  const perKey = { k0: calls('aaaaaaaa'), k1: calls('bbbbbbbb'), k2: calls('cccccccc') };
  assert.equal(perKey.k1, 1, `the refused key was tried once: ${JSON.stringify(perKey)}`);
  assert.equal(perKey.k0 + perKey.k2, 9, 'every request served by a good key');
  assert.ok(perKey.k0 >= 3 && perKey.k2 >= 3, `the good keys take turns: ${JSON.stringify(perKey)}`);
  const health = await stack.adminApi('GET', '/api/channels/br-keys/health');
  assert.equal(health.credentials, 3);
  assert.equal(health.usable_credentials, 2);
  const refused = health.circuits.find((c) => c.credential === 1);
  assert.equal(refused?.state, 'open', JSON.stringify(health));
  assert.equal(refused.last_failure, 'credential_refused');
  // The admin's /metrics exports the edge's figures, read over its signed internal API.
  const metrics = await (await fetch(`${stack.adminUrl}/metrics`)).text();
  assert.match(metrics, /^edgeway_edge_up 1$/m);
  assert.match(metrics, /^edgeway_edge_circuit_open\{channel="br-keys",model="",credential="1",state="open"\} 1$/m);
  assert.match(metrics, /^edgeway_edge_dead_letters\{state="pending"\} 0$/m);
  assert.match(metrics, /^edgeway_edge_usage_rows \d+$/m);
  t.diagnostic(`key rotation ${JSON.stringify(perKey)}`);
  console.log('FIGURES key_rotation', JSON.stringify(perKey));
});
