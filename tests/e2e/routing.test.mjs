// End-to-end routing: pinning a request to one channel (admin-signed, or a
// test key's unsigned pin), the `x-edgeway-channel` header on every answer,
// and the public model name in every answer and stream chunk of every client
// dialect, whatever the upstream calls the model. Real worker under
// `wrangler dev`, official SDKs, mock upstreams.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let openai;
const price = { input: 1_000_000, output: 2_000_000 };

async function waitForModel(name) {
  for (let i = 0; i < 80; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes(`"${name}"`)) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`model ${name} never reached the edge`);
}

before(async () => {
  stack = await startStack();
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  const dialectUrl = `http://127.0.0.1:${port}`;
  // Two channels serve `pinned`: pin-a first (priority 5), pin-b second.
  await stack.adminApi('POST', '/api/channels', {
    id: 'pin-a', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-pin-a-000000000000',
    models: [{ name: 'pinned', upstream_model: 'gpt-test', priority: 5, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'pin-b', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-pin-b-000000000000',
    models: [{ name: 'pinned', upstream_model: 'no-usage', priority: 1, price }, { name: 'only-b', upstream_model: 'gpt-test', price }],
  });
  // One public name per upstream dialect, each called something else upstream.
  const channel = (id, provider, base, model) => stack.adminApi('POST', '/api/channels', {
    id, provider, base_url: base, api_key: `sk-${id}-secret-0000000000`,
    models: [{ name: model, upstream_model: 'upstream-model', price }],
  });
  await channel('names-openai', 'openai-compatible', `${dialectUrl}/openai/v1`, 'public-openai');
  await channel('names-anthropic', 'anthropic', `${dialectUrl}/anthropic/v1`, 'public-anthropic');
  await channel('names-gemini', 'gemini', `${dialectUrl}/gemini/v1beta`, 'public-gemini');
  stack.keys.tester = (await stack.adminApi('POST', '/api/keys', { name: 'channel tests', pin_allowed: true })).key;
  await waitForModel('public-gemini');
  openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 20_000 });
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const user = (content) => [{ role: 'user', content }];

/** Pin headers as the admin signs them (CONTRACT-pinning.md). */
function signedPin(channel, body, { timestamp = Math.floor(Date.now() / 1000), secret = stack.secret } = {}) {
  const digest = createHash('sha256').update(body).digest('hex');
  const signature = createHmac('sha256', secret).update(`pin\n${channel}\n${timestamp}\n${digest}`).digest('hex');
  return {
    'x-edgeway-pin-channel': channel,
    'x-edgeway-pin-timestamp': String(timestamp),
    'x-edgeway-pin-signature': signature,
  };
}

async function chat(body, headers = {}, key = stack.keys.main) {
  const text = JSON.stringify(body);
  const r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: text,
  });
  return { status: r.status, channel: r.headers.get('x-edgeway-channel'), json: await r.json().catch(() => null) };
}

describe('pinning', () => {
  test('unpinned requests go to the higher priority, and say which channel served', async () => {
    const { data, response } = await openai.chat.completions.create({ model: 'pinned', messages: user('x') }).withResponse();
    assert.equal(response.headers.get('x-edgeway-channel'), 'pin-a');
    assert.equal(data.model, 'pinned');
  });

  test('an admin-signed pin reaches the lower-priority channel', async () => {
    const body = { model: 'pinned', messages: user('console test'), max_tokens: 1 };
    const r = await chat(body, signedPin('pin-b', JSON.stringify(body)));
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.channel, 'pin-b');
    assert.equal(r.json.model, 'pinned', 'the public name, not no-usage');
    // The SDK with the same headers (its body serialisation is what is signed).
    const sdkBody = { model: 'pinned', messages: user('sdk'), max_tokens: 1 };
    const pinned = new OpenAI({
      baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0,
      defaultHeaders: signedPin('pin-b', JSON.stringify(sdkBody)),
    });
    const { response } = await pinned.chat.completions.create(sdkBody).withResponse();
    assert.equal(response.headers.get('x-edgeway-channel'), 'pin-b');
  });

  test('ordinary keys cannot pin; bad and stale signatures are refused with 401', async () => {
    const body = { model: 'pinned', messages: user('x') };
    const text = JSON.stringify(body);
    const cases = {
      unsigned: { 'x-edgeway-pin-channel': 'pin-b' },
      'wrong secret': signedPin('pin-b', text, { secret: 'not-the-edge-secret-000000' }),
      stale: signedPin('pin-b', text, { timestamp: Math.floor(Date.now() / 1000) - 400 }),
      'other channel': { ...signedPin('pin-a', text), 'x-edgeway-pin-channel': 'pin-b' },
      'other body': signedPin('pin-b', JSON.stringify({ ...body, max_tokens: 9 })),
    };
    for (const [what, headers] of Object.entries(cases)) {
      const r = await chat(body, headers);
      assert.equal(r.status, 401, `${what}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error.code, 'pin_refused', what);
    }
    // In the caller's dialect: Anthropic clients get an Anthropic error.
    const anthropic = new Anthropic({
      baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0,
      defaultHeaders: { 'x-edgeway-pin-channel': 'pin-b' },
    });
    await assert.rejects(anthropic.messages.create({ model: 'pinned', max_tokens: 5, messages: user('x') }), (e) => {
      assert.equal(e.status, 401);
      assert.equal(e.error?.type, 'error');
      return true;
    });
  });

  test('a test key may pin unsigned; a channel that does not serve the model is a 400', async () => {
    const r = await chat({ model: 'pinned', messages: user('x') }, { 'x-edgeway-pin-channel': 'pin-b' }, stack.keys.tester);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.channel, 'pin-b');
    const wrong = await chat({ model: 'only-b', messages: user('x') }, { 'x-edgeway-pin-channel': 'pin-a' }, stack.keys.tester);
    assert.equal(wrong.status, 400, JSON.stringify(wrong.json));
    const failing = await chat({ model: 'up-fail-500', messages: user('x') }, { 'x-edgeway-pin-channel': 'mock-upstream' }, stack.keys.tester);
    assert.equal(failing.status, 502);
    assert.equal(failing.channel, 'mock-upstream', 'errors name the channel that failed');
  });
});

describe('the client sees the public model name', () => {
  const publicNames = ['public-openai', 'public-anthropic', 'public-gemini'];

  test('OpenAI chat: whole answers and every chunk', async () => {
    for (const model of ['up-no-usage', ...publicNames]) {
      const data = await openai.chat.completions.create({ model, messages: user('hi') });
      assert.equal(data.model, model);
      const stream = await openai.chat.completions.create({ model, messages: user('hi'), stream: true, stream_options: { include_usage: true } });
      let chunks = 0;
      for await (const chunk of stream) {
        assert.equal(chunk.model, model, JSON.stringify(chunk));
        chunks += 1;
      }
      assert.ok(chunks > 1, model);
    }
  });

  test('Anthropic messages', async () => {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
    for (const model of ['up-no-usage', ...publicNames]) {
      const message = await anthropic.messages.create({ model, max_tokens: 50, messages: user('hi') });
      assert.equal(message.model, model);
      const stream = anthropic.messages.stream({ model, max_tokens: 50, messages: user('hi') });
      let started = 0;
      for await (const event of stream) {
        if (event.type === 'message_start') {
          started += 1;
          assert.equal(event.message.model, model);
        }
      }
      assert.equal(started, 1);
      assert.equal((await stream.finalMessage()).model, model);
    }
  });

  test('Gemini generateContent', async () => {
    const genai = new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
    for (const model of ['up-no-usage', ...publicNames]) {
      const r = await genai.models.generateContent({ model, contents: 'hi' });
      assert.equal(r.modelVersion, model);
      let chunks = 0;
      for await (const chunk of await genai.models.generateContentStream({ model, contents: 'hi' })) {
        assert.equal(chunk.modelVersion, model, JSON.stringify(chunk));
        chunks += 1;
      }
      assert.ok(chunks >= 1);
    }
  });

  test('OpenAI Responses', async () => {
    for (const model of ['up-no-usage', ...publicNames]) {
      const r = await openai.responses.create({ model, input: 'hi' });
      assert.equal(r.model, model);
      const stream = await openai.responses.create({ model, input: 'hi', stream: true });
      let seen = 0;
      for await (const event of stream) {
        if (event.response) {
          assert.equal(event.response.model, model, event.type);
          seen += 1;
        }
      }
      assert.ok(seen >= 2, `${model}: created and completed`);
    }
  });
});
