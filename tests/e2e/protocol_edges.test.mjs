// End-to-end: numbers at the edge of 64 bits through the real worker,
// settings that would silently do nothing, and protocol slips (issue #13,
// points 4, 6 and 7).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack, keyDigest } from './stack.mjs';

let stack;

before(async () => {
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
});

const I64_MAX = '9223372036854775807';
const U64_MAX = '18446744073709551615';
const user = (content) => [{ role: 'user', content }];

/** A signed internal PUT of raw JSON text (JSON.stringify cannot write 2^63 - 1 exactly). */
async function putRaw(route, text) {
  const r = await stack.internalFetch('PUT', route, { text, headers: stack.signInternal('PUT', route, text) });
  assert.ok(r.status >= 200 && r.status < 300, `${route} → ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

async function rawText(route) {
  const r = await fetch(`${stack.gatewayUrl}${route}`, { headers: stack.signInternal('GET', route, '') });
  assert.equal(r.status, 200);
  return r.text();
}

test('extreme integers pushed straight to the edge: read exactly, no 500', async () => {
  // A model whose prices are near i64::MAX, next to the existing routing.
  const current = await stack.internal('GET', '/internal/routing');
  const config = { ...current, version: current.version + 1, models: [...current.models, { name: 'pricey', price: { input: 1, output: 1, per_request: 7 }, targets: [{ channel: 'builtin-mock' }] }] };
  const text = JSON.stringify(config).replace('"per_request":7', `"per_request":${I64_MAX},"cache_read":${I64_MAX}`).replace('{"input":1,"output":1,', '{"input":9223372036854775000,"output":9223372036854775000,');
  await putRaw('/internal/routing', text);
  assert.match(await rawText('/internal/routing'), /"input":9223372036854775000,"output":9223372036854775000/, 'stored and read back digit for digit');

  // Keys whose quota is 2^63 - 1 (and tpm u64::MAX), pushed as the admin would.
  const key = `sk-ew-e2e-extreme-${Math.random().toString(36).slice(2)}-0000000000`;
  const digest = keyDigest(key);
  await putRaw(`/internal/keys/${digest}`, `{"digest":"${digest}","version":1,"quota_micros":${I64_MAX},"tpm":${U64_MAX}}`);
  const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
  const cheap = await client.chat.completions.create({ model: 'mock-1', messages: user('hi'), max_tokens: 8 });
  assert.ok(cheap.choices[0].message.content.length > 0);
  const account = await rawText(`/internal/keys/${digest}/account`);
  assert.ok(account.includes(`"quota_micros":${I64_MAX}`), `quota kept exactly: ${account.slice(0, 400)}`);

  // The near-i64::MAX price: the quota-limited key is refused cleanly or
  // served; never a 500. A key without quota is served (the cost saturates).
  const statuses = [];
  try {
    await client.chat.completions.create({ model: 'pricey', messages: user('hi'), max_tokens: 8 });
    statuses.push(200);
  } catch (e) {
    statuses.push(e.status);
    assert.equal(e.status, 429, `clean refusal, not ${e.status}: ${e.message}`);
    assert.equal(e.code, 'insufficient_quota');
  }
  const free = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });
  const served = await free.chat.completions.create({ model: 'pricey', messages: user('hi'), max_tokens: 8 });
  assert.ok(served.choices[0].message.content.length > 0);
  console.log(`extreme figures: quota 2^63-1 key on mock-1 → 200, on pricey → ${statuses[0]}; unlimited key on pricey → 200`);
});

test('the admin refuses what the edge could not hold', async () => {
  await assert.rejects(stack.adminApi('POST', '/api/keys', { name: 'too big', quota_micros: 2 ** 53 }), /400/);
  const ok = await stack.adminApi('POST', '/api/keys', { name: 'largest', quota_micros: 2 ** 53 - 1 });
  assert.equal(ok.edge_synced, true);
  const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: ok.key, maxRetries: 0 });
  const r = await client.chat.completions.create({ model: 'mock-1', messages: user('hi'), max_tokens: 8 });
  assert.ok(r.choices[0].message.content.length > 0, 'a 2^53 - 1 quota works end to end');
});

test('weight 0 is standby: a model whose only target has weight 0 is served, not a 404', async () => {
  await stack.adminApi('POST', '/api/channels', { id: 'standby-only', provider: 'mock', models: [{ name: 'standby-model', weight: 0, price: { input: 1, output: 1 } }] });
  const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });
  let reply;
  for (let i = 0; i < 20; i++) {
    try { reply = await client.chat.completions.create({ model: 'standby-model', messages: user('hi') }); break; } catch (e) {
      if (e.status !== 404) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.ok(reply?.choices[0].message.content.length > 0);
});

test('settings that would do nothing are a 400 in the admin and at the edge', async () => {
  await assert.rejects(stack.adminApi('POST', '/api/channels', { id: 'no-models', provider: 'mock', models: [] }), /400.*at least one model/);
  await assert.rejects(stack.adminApi('POST', '/api/channels', { id: 'meta', provider: 'openai-compatible', base_url: 'http://169.254.169.254/v1', models: [{ name: 'm' }] }), /400.*metadata/);
  const current = await stack.internal('GET', '/internal/routing');
  for (const [what, config] of [
    ['metadata base_url', { ...current, version: current.version + 1, channels: [...current.channels, { id: 'meta', provider: 'openai-compatible', base_url: 'http://[fe80::1]/v1' }] }],
    ['model without targets', { ...current, version: current.version + 1, models: [...current.models, { name: 'empty', targets: [] }] }],
  ]) {
    const text = JSON.stringify(config);
    const r = await stack.internalFetch('PUT', '/internal/routing', { text, headers: stack.signInternal('PUT', '/internal/routing', text) });
    assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.json)}`);
  }
});

test('protocol slips: HEAD /health, errors in the route\'s dialect, long model names truncated, admin 413', async () => {
  const head = await fetch(`${stack.gatewayUrl}/health`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal((await head.text()).length, 0);

  let r = await fetch(`${stack.gatewayUrl}/v1/messages`);
  assert.equal(r.status, 405);
  let body = await r.json();
  assert.equal(body.type, 'error', JSON.stringify(body));
  assert.equal(body.error.type, 'invalid_request_error');
  r = await fetch(`${stack.gatewayUrl}/v1beta/models/mock-1:generateContent`);
  assert.equal(r.status, 405);
  body = await r.json();
  assert.equal(body.error.status, 'UNIMPLEMENTED', JSON.stringify(body));
  assert.equal(body.error.code, 405);
  r = await fetch(`${stack.gatewayUrl}/v1beta/models/mock-1:embedText`, { method: 'POST' });
  assert.equal(r.status, 404);
  assert.equal((await r.json()).error.status, 'NOT_FOUND');

  const model = 'm'.repeat(100_000);
  r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${stack.keys.main}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: user('x') }),
  });
  assert.equal(r.status, 404);
  const text = await r.text();
  assert.ok(text.length < 1000, `404 body is ${text.length} bytes`);

  // The admin answers 413 before the 5 MB body is sent whole, so the client
  // may see the connection close while writing (EPIPE) before it reads the
  // answer: try a few times, the answer must be a 413 whenever one is read.
  let big = null;
  for (let attempt = 0; attempt < 8 && !big; attempt++) {
    try {
      const r = await fetch(`${stack.adminUrl}/api/keys`, {
        method: 'POST', headers: { authorization: `Bearer ${stack.adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'x'.repeat(5 * 1024 * 1024) }),
      });
      big = { status: r.status, text: await r.text() };
    } catch (e) {
      if (!/EPIPE|ECONNRESET|fetch failed/.test(`${e.message} ${e.cause?.code ?? ''}`)) throw e;
    }
  }
  assert.ok(big, 'the admin answered one of the attempts');
  assert.equal(big.status, 413);
  assert.equal(JSON.parse(big.text).error.type, 'request_too_large');
});
