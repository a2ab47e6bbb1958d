// End-to-end: the official `openai` SDK against the real worker under
// `wrangler dev`, configured through the admin service, relaying to a mock
// OpenAI-format upstream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { startStack, CANARY_PROVIDER_KEY } from './stack.mjs';

let stack;
let client;
const requestIds = [];

before(async () => {
  stack = await startStack({ maxBodyBytes: 1024 * 1024, upstreamTimeoutMs: 1500 });
  client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 20_000 });
});

after(async () => {
  await stack?.stop();
});

const user = (content) => [{ role: 'user', content }];

test('non-stream completion through an OpenAI-compatible upstream', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-test', messages: user('hello') })
    .withResponse();
  assert.equal(data.choices[0].message.content, 'Hello from the mock upstream over SSE.');
  assert.equal(data.usage.prompt_tokens, 11);
  const rid = response.headers.get('x-request-id');
  assert.match(rid, /^req_[0-9a-f]{32}$/);
  requestIds.push(rid);
  const last = await stack.mockLast();
  assert.equal(last.body.model, 'gpt-test');
  assert.equal(last.hadAuthorization, true, 'channel credential sent upstream');
  assert.equal(last.body.stream_options, undefined, 'non-stream requests get no stream_options');
});

test('stream: usage forced upstream, stripped when the client did not ask', async () => {
  const stream = await client.chat.completions.create({ model: 'gpt-test', messages: user('hi'), stream: true });
  let text = '';
  let finish = null;
  let usageChunks = 0;
  for await (const chunk of stream) {
    if (chunk.usage) usageChunks += 1;
    if (chunk.choices.length === 0) assert.fail('usage-only chunk reached a client that did not ask for it');
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, 'Hello from the mock upstream over SSE.');
  assert.equal(finish, 'stop');
  assert.equal(usageChunks, 0);
  const last = await stack.mockLast();
  assert.equal(last.body.stream_options?.include_usage, true, 'gateway always asks the upstream for usage');
});

test('stream: usage present when asked', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-test', messages: user('hi'), stream: true, stream_options: { include_usage: true },
  });
  let usage = null;
  for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
  assert.ok(usage, 'usage chunk delivered');
  assert.equal(usage.prompt_tokens, 11);
  assert.equal(usage.completion_tokens, 8);
  assert.equal(usage.prompt_tokens_details.cached_tokens, 3);
});

test('stream: chunks arrive incrementally, not buffered', async () => {
  const started = Date.now();
  const stream = await client.chat.completions.create({ model: 'up-paced-100', messages: user('pace'), stream: true });
  const arrivals = [];
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) arrivals.push(Date.now() - started);
  }
  assert.equal(arrivals.length, 8);
  // The upstream paces 8 deltas 100 ms apart: a buffering relay would deliver
  // them all at once after ~800 ms.
  const spread = arrivals.at(-1) - arrivals[0];
  assert.ok(spread >= 500, `deltas spread over ${spread} ms (arrivals ${arrivals})`);
  assert.ok(arrivals[0] < arrivals.at(-1) - 400, `first delta at ${arrivals[0]} ms, last at ${arrivals.at(-1)} ms`);
});

test('built-in mock provider: text, stream and tool calls', async () => {
  const plain = await client.chat.completions.create({ model: 'mock-1', messages: user('What is edgeway?') });
  assert.equal(plain.choices[0].message.content, 'Hello from the edgeway mock provider. You said: "What is edgeway?"');
  assert.ok(plain.usage.total_tokens > 0);

  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const call = await client.chat.completions.create({ model: 'mock-1', messages: user('weather in Paris?'), tools });
  assert.equal(call.choices[0].finish_reason, 'tool_calls');
  const tc = call.choices[0].message.tool_calls[0];
  assert.equal(tc.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(tc.function.arguments), { city: 'mock' });

  const stream = await client.chat.completions.create({ model: 'mock-1', messages: user('weather in Paris?'), tools, stream: true });
  let args = '';
  let id = null;
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta?.tool_calls?.[0];
    if (d?.id) id = d.id;
    args += d?.function?.arguments ?? '';
  }
  assert.equal(id, tc.id, 'same request, same deterministic call id');
  assert.deepEqual(JSON.parse(args), { city: 'mock' });

  const answer = await client.chat.completions.create({
    model: 'mock-1', tools,
    messages: [...user('weather?'), { role: 'assistant', content: null, tool_calls: [tc] }, { role: 'tool', tool_call_id: tc.id, content: 'sunny' }],
  });
  assert.equal(answer.choices[0].message.content, 'The tool returned: sunny');
});

test('GET /v1/models lists what the key may use', async () => {
  const all = [];
  for await (const m of client.models.list()) all.push(m.id);
  assert.ok(all.includes('gpt-test') && all.includes('mock-1'));
  const restricted = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.restricted, maxRetries: 0 });
  const some = [];
  for await (const m of restricted.models.list()) some.push(m.id);
  assert.deepEqual(some, ['mock-1']);
});

test('wrong or missing key → 401 in OpenAI error shape', async () => {
  const bad = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: 'sk-ew-not-a-real-key', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: 'gpt-test', messages: user('x') }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError);
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    assert.ok(!e.message.includes('sk-ew-not-a-real-key'), 'key not echoed');
    return true;
  });
  const r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, { method: 'POST', body: '{}' });
  assert.equal(r.status, 401);
  assert.equal((await r.json()).error.code, 'invalid_api_key');
});

test('unknown model → 404; model outside the allowlist → 403', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages: user('x') }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError);
    assert.equal(e.code, 'model_not_found');
    return true;
  });
  const restricted = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.restricted, maxRetries: 0 });
  await assert.rejects(restricted.chat.completions.create({ model: 'gpt-test', messages: user('x') }), (e) => {
    assert.ok(e instanceof OpenAI.PermissionDeniedError);
    assert.equal(e.status, 403);
    return true;
  });
});

test('IP allow-list: a key bound to other networks gets 403 in the caller\'s dialect', async () => {
  const { key: elsewhere } = await stack.adminApi('POST', '/api/keys', { name: 'e2e ip', allowed_ips: ['203.0.113.0/24'] });
  const { key: local } = await stack.adminApi('POST', '/api/keys', { name: 'e2e ip local', allowed_ips: ['127.0.0.0/8', '::1/128'] });
  const blocked = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: elsewhere, maxRetries: 0 });
  await assert.rejects(blocked.chat.completions.create({ model: 'mock-1', messages: user('x') }), (e) => {
    assert.equal(e.status, 403);
    assert.equal(e.code, 'ip_not_allowed');
    return true;
  });
  const allowed = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: local, maxRetries: 0 });
  const ok = await allowed.chat.completions.create({ model: 'mock-1', messages: user('x') });
  assert.ok(ok.choices[0].message.content.length > 0);
});

test('oversized body → 413; malformed JSON and missing fields → 400', async () => {
  const huge = 'x'.repeat(1024 * 1024 + 10);
  await assert.rejects(client.chat.completions.create({ model: 'gpt-test', messages: user(huge) }), (e) => {
    assert.equal(e.status, 413);
    assert.equal(e.code, 'request_too_large');
    return true;
  });
  const post = (body) => fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${stack.keys.main}`, 'content-type': 'application/json' }, body,
  });
  let r = await post('{"model": "gpt-test", "messages": [');
  assert.equal(r.status, 400);
  let err = (await r.json()).error;
  assert.equal(err.code, 'invalid_json');
  assert.equal(err.type, 'invalid_request_error');
  r = await post('{"model": "gpt-test"}');
  assert.equal(r.status, 400);
  err = (await r.json()).error;
  assert.equal(err.param, 'messages');
  r = await post(JSON.stringify({ model: 'gpt-test', messages: user('x'), api_base: 'http://169.254.169.254' }));
  assert.equal(r.status, 400, 'clients cannot choose the upstream');
  const stats = await stack.mockStats();
  assert.equal(stats.byModel['gpt-test'] > 0, true);
});

test('upstream 500 → 502; 429 stays 429; upstream 400 stays 400', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'up-fail-500', messages: user('x') }), (e) => {
    assert.equal(e.status, 502);
    assert.equal(e.code, 'upstream_error');
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model: 'up-fail-429', messages: user('x') }), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError);
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model: 'up-fail-400', messages: user('x') }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    return true;
  });
});

test('upstream that echoes the provider key: 502 and the key never reaches the client', async () => {
  const r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${stack.keys.main}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'up-fail-401-echo', messages: user('x') }),
  });
  assert.equal(r.status, 502, 'our channel credential failing is not the caller\'s 401');
  const text = await r.text();
  assert.ok(!text.includes(CANARY_PROVIDER_KEY), text);
  assert.ok(!text.includes('canary-provider'), text);
});

test('upstream timeout → 504 within the configured limit', async () => {
  const started = Date.now();
  await assert.rejects(client.chat.completions.create({ model: 'up-hang', messages: user('x') }), (e) => {
    assert.equal(e.status, 504);
    assert.equal(e.code, 'upstream_timeout');
    return true;
  });
  assert.ok(Date.now() - started < 10_000);
});

test('upstream stream cut short → the client gets an in-stream error, not a silent end', async () => {
  const stream = await client.chat.completions.create({ model: 'up-cut-stream', messages: user('x'), stream: true });
  let text = '';
  await assert.rejects(
    (async () => { for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ''; })(),
    (e) => { assert.match(e.message, /ended before the response was complete/); return true; },
  );
  assert.equal(text, 'Hello from');
});

test('usage events land in D1, once per request id', async () => {
  const rid = requestIds[0];
  let rows = [];
  for (let i = 0; i < 40 && rows.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const out = execFileSync('wrangler', ['d1', 'execute', 'USAGE_DB', '--local', '--persist-to', stack.state, '--json',
      '--command', `SELECT request_id, model, channel, input_uncached_tokens, cache_read_tokens, output_tokens, cost_micros, status, outcome, usage_source FROM usage_events WHERE request_id = '${rid}'`],
    { env: { ...process.env, CI: 'true' }, encoding: 'utf8' });
    rows = JSON.parse(out)[0].results;
  }
  assert.equal(rows.length, 1, 'exactly one row');
  const row = rows[0];
  assert.equal(row.model, 'gpt-test');
  assert.equal(row.channel, 'mock-upstream');
  assert.equal(row.input_uncached_tokens, 8, 'prompt 11 minus 3 cached');
  assert.equal(row.cache_read_tokens, 3);
  assert.equal(row.output_tokens, 8);
  // 11 prompt tokens at 1.0/M + 8 output at 2.0/M = 27 micro-units
  assert.equal(row.cost_micros, 27);
  assert.equal(row.usage_source, 'provider');
  assert.equal(row.outcome, 'completed');
  const dump = execFileSync('wrangler', ['d1', 'execute', 'USAGE_DB', '--local', '--persist-to', stack.state, '--json', '--command', 'SELECT * FROM usage_events'],
    { env: { ...process.env, CI: 'true' }, encoding: 'utf8' });
  assert.ok(!dump.includes(stack.keys.main), 'no plaintext key in D1');
  assert.ok(!dump.includes(CANARY_PROVIDER_KEY), 'no provider key in D1');
});
