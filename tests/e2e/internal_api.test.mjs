// End-to-end: the signed internal API through the real worker. A captured
// request sent again is refused (nonce memory), an older routing config or
// key record does not overwrite a newer one (version rule), the query is
// signed, every signature failure is the same 401, and an unsigned body is
// refused before it is read.
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

const REFUSED = { error: { message: 'invalid or missing request signature', type: 'authentication_error' } };
const user = (content) => [{ role: 'user', content }];

async function modelIds(key = stack.keys.main) {
  const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
  return (await r.json()).data.map((m) => m.id);
}

/** Sends a signed request and returns what an attacker would capture. */
async function sendCaptured(method, route, body) {
  const text = JSON.stringify(body);
  const headers = stack.signInternal(method, route, text);
  const first = await stack.internalFetch(method, route, { text, headers });
  return { first, replay: () => stack.internalFetch(method, route, { text, headers }), text, headers };
}

test('a captured routing push sent again is refused, and an older config never overwrites a newer one', async () => {
  const current = await stack.internal('GET', '/internal/routing');
  const stale = {
    ...current,
    version: current.version + 1,
    models: [...current.models, { name: 'rollback-model', price: { input: 0, output: 0 }, targets: [{ channel: 'builtin-mock' }] }],
  };
  const captured = await sendCaptured('PUT', '/internal/routing', stale);
  assert.equal(captured.first.status, 200, JSON.stringify(captured.first.json));
  assert.ok((await modelIds()).includes('rollback-model'));

  // The admin changes the routing (a newer version without that model).
  await stack.adminApi('POST', '/api/channels', { id: 'rb-extra', provider: 'mock', models: [{ name: 'rb-extra-model', price: { input: 1, output: 1 } }] });
  for (let i = 0; i < 20 && (await modelIds()).includes('rollback-model'); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(!(await modelIds()).includes('rollback-model'), 'the newer push replaced it');

  // Replayed as captured: the nonce was used.
  const replay = await captured.replay();
  assert.equal(replay.status, 401);
  assert.deepEqual(replay.json, REFUSED);
  // Signed afresh (a late or duplicated push): not newer, 409.
  const resent = await stack.internalFetch('PUT', '/internal/routing', { text: captured.text, headers: stack.signInternal('PUT', '/internal/routing', captured.text) });
  assert.equal(resent.status, 409, JSON.stringify(resent.json));
  assert.equal(resent.json.error.type, 'version_conflict');
  assert.ok(resent.json.stored_version > stale.version);
  const models = await modelIds();
  assert.ok(!models.includes('rollback-model') && models.includes('rb-extra-model'), `deleted model stays deleted: ${models}`);
  console.log(`rollback figures: replay → ${replay.status}, older version re-signed → ${resent.status}, stored ${resent.json.stored_version} > pushed ${stale.version}`);

  // The same version with the same body again (a full sync) is accepted.
  const sync = await stack.adminApi('POST', '/api/sync');
  assert.equal(sync.edge_synced, true, JSON.stringify(sync));
  const again = await stack.adminApi('POST', '/api/sync');
  assert.equal(again.edge_synced, true, 'repeated full syncs are idempotent');
});

test('an older key record never overwrites a newer one; a deleted key stays deleted', async () => {
  const created = await stack.adminApi('POST', '/api/keys', { name: 'rollback key' });
  const digest = keyDigest(created.key);
  const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: created.key, maxRetries: 0 });
  await client.chat.completions.create({ model: 'mock-1', messages: user('x') });
  const v1 = { digest, status: 'active', version: 1 };
  // The admin disables it (version 2).
  await stack.adminApi('PATCH', `/api/keys/${created.id}`, { status: 'disabled' });
  await assert.rejects(client.chat.completions.create({ model: 'mock-1', messages: user('x') }), (e) => e.status === 401);
  // Version 1 pushed again, freshly signed: refused, and the key stays disabled.
  const old = await stack.internalFetch('PUT', `/internal/keys/${digest}`, { text: JSON.stringify(v1), headers: stack.signInternal('PUT', `/internal/keys/${digest}`, JSON.stringify(v1)) });
  assert.equal(old.status, 409, JSON.stringify(old.json));
  assert.equal(old.json.stored_version, 2);
  await new Promise((r) => setTimeout(r, 200));
  await assert.rejects(client.chat.completions.create({ model: 'mock-1', messages: user('x') }), (e) => e.status === 401);

  // Deleted at the edge: no later record brings it back, whatever its version.
  await stack.internal('DELETE', `/internal/keys/${digest}`);
  const revived = { digest, status: 'active', version: 1_000_000 };
  const r = await stack.internalFetch('PUT', `/internal/keys/${digest}`, { text: JSON.stringify(revived), headers: stack.signInternal('PUT', `/internal/keys/${digest}`, JSON.stringify(revived)) });
  assert.equal(r.status, 409, JSON.stringify(r.json));
  await assert.rejects(client.chat.completions.create({ model: 'mock-1', messages: user('x') }), (e) => e.status === 401);
});

test('the query is signed: a tampered query is refused', async () => {
  const route = `/internal/usage/stats?key_digest=${keyDigest(stack.keys.main)}&limit=1`;
  const headers = stack.signInternal('GET', route, '');
  const tampered = await stack.internalFetch('GET', route.replace('limit=1', 'limit=1000'), { headers });
  assert.equal(tampered.status, 401);
  assert.deepEqual(tampered.json, REFUSED);
  const dropped = await stack.internalFetch('GET', route.split('?')[0], { headers });
  assert.equal(dropped.status, 401);
  const ok = await stack.internalFetch('GET', route, { headers });
  assert.equal(ok.status, 200, JSON.stringify(ok.json));
  const replay = await stack.internalFetch('GET', route, { headers });
  assert.equal(replay.status, 401, 'reads are one-shot too');
});

test('every signature failure is the same 401', async () => {
  const route = '/internal/routing';
  const good = stack.signInternal('GET', route, '');
  const variants = {
    'no headers': {},
    'legacy signature only': { 'x-edgeway-timestamp': good['x-edgeway-timestamp'], 'x-edgeway-signature': good['x-edgeway-signature'] },
    'wrong signature': { ...good, 'x-edgeway-signature-v2': 'f'.repeat(64) },
    'malformed signature': { ...good, 'x-edgeway-signature-v2': 'xyz' },
    'no nonce': { ...good, 'x-edgeway-nonce': undefined },
    'short nonce': stack.signInternal('GET', route, '', { nonce: 'abc' }),
    'stale': stack.signInternal('GET', route, '', { timestamp: Math.floor(Date.now() / 1000) - 3600 }),
    'future': stack.signInternal('GET', route, '', { timestamp: Math.floor(Date.now() / 1000) + 3600 }),
    'other method': stack.signInternal('PUT', route, ''),
  };
  const seen = {};
  for (const [name, headers] of Object.entries(variants)) {
    const clean = Object.fromEntries(Object.entries(headers).filter(([, v]) => v !== undefined));
    const r = await stack.internalFetch('GET', route, { headers: clean });
    seen[name] = r.status;
    assert.equal(r.status, 401, name);
    assert.deepEqual(r.json, REFUSED, name);
  }
  assert.equal((await stack.internalFetch('GET', route, { headers: good })).status, 200);
  assert.equal((await stack.internalFetch('GET', route, { headers: good })).status, 401, 'replayed');
});

test('an unsigned body is refused before it is read', async () => {
  // 5 MB, over the 1 MiB internal body limit: before, the body was read first
  // (413); now the missing signature answers first.
  const big = 'x'.repeat(5 * 1024 * 1024);
  const r = await stack.internalFetch('PUT', '/internal/routing', { text: big });
  assert.equal(r.status, 401);
  assert.deepEqual(r.json, REFUSED);
  // Signed but oversized: 413 (the signature headers were fine, the body too big).
  const signed = await stack.internalFetch('PUT', '/internal/routing', { text: big, headers: stack.signInternal('PUT', '/internal/routing', big) });
  assert.equal(signed.status, 413);
});
