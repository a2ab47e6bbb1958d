// End-to-end: the one URL policy on every endpoint and every upstream
// dialect, through the real worker. Every URL of the shared bypass list
// (tests/fixtures/url_bypasses.json) is sent as a media part on the OpenAI
// Chat (relay and translated), Anthropic, Gemini and Responses endpoints to an
// OpenAI-compatible, an Anthropic and a Gemini upstream: each must be a 400 in
// the route's dialect, and no upstream may see the request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

const BYPASSES = JSON.parse(readFileSync(path.resolve(import.meta.dirname, '../fixtures/url_bypasses.json'), 'utf8')).urls;
const MODELS = { openai: 'url-openai', anthropic: 'url-claude', gemini: 'url-gemini' };

let stack;
let dialectMock;
let mockUrl;

before(async () => {
  stack = await startStack();
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  const channel = (id, provider, base, model) => stack.adminApi('POST', '/api/channels', {
    id, provider, base_url: base, api_key: `sk-${id}-secret-0000000000`,
    models: [{ name: model, upstream_model: 'upstream-model', price }],
  });
  await channel('url-ch-openai', 'openai-compatible', `${mockUrl}/openai/v1`, MODELS.openai);
  await channel('url-ch-anthropic', 'anthropic', `${mockUrl}/anthropic/v1`, MODELS.anthropic);
  await channel('url-ch-gemini', 'gemini', `${mockUrl}/gemini/v1beta`, MODELS.gemini);
  for (let i = 0; i < 40; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes(MODELS.gemini)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const upstreamRequests = async () => (await (await fetch(`${mockUrl}/__requests`)).json()).length;

// endpoint → (model, url) → [path, body, dialect of the error]
const ENDPOINTS = {
  chat_image_url: (model, url) => ['/v1/chat/completions', { model, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }] }] }, 'openai'],
  messages_image: (model, url) => ['/v1/messages', { model, max_tokens: 16, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url } }] }] }, 'anthropic'],
  gemini_file_data: (model, url) => [`/v1beta/models/${model}:generateContent`, { contents: [{ role: 'user', parts: [{ fileData: { mimeType: 'image/png', fileUri: url } }] }] }, 'gemini'],
  responses_input_image: (model, url) => ['/v1/responses', { model, input: [{ role: 'user', content: [{ type: 'input_image', image_url: url }] }] }, 'openai'],
};
// Relay-only part types (OpenAI-compatible servers such as vLLM fetch these).
const RELAY_PARTS = {
  chat_file: (url) => ({ type: 'file', file: { file_data: url, filename: 'a.pdf' } }),
  chat_input_audio: (url) => ({ type: 'input_audio', input_audio: { data: url, format: 'wav' } }),
  chat_audio_url: (url) => ({ type: 'audio_url', audio_url: { url } }),
};

async function send(route, body) {
  const r = await fetch(`${stack.gatewayUrl}${route}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${stack.keys.main}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: await r.json().catch(() => null) };
}

function inDialect(json, dialect) {
  if (dialect === 'anthropic') return json?.type === 'error' && json.error?.type === 'invalid_request_error';
  if (dialect === 'gemini') return json?.error?.status === 'INVALID_ARGUMENT' && json.error.code === 400;
  return json?.error?.type === 'invalid_request_error';
}

async function pool(jobs, width) {
  const results = [];
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  }));
  return results;
}

test('every bypass URL is a 400 in the route\'s dialect on every endpoint and upstream dialect; no upstream sees it', async () => {
  const before = await upstreamRequests();
  const jobs = [];
  for (const [upstream, model] of Object.entries(MODELS)) {
    for (const [endpoint, make] of Object.entries(ENDPOINTS)) {
      for (const url of BYPASSES) {
        jobs.push(async () => {
          const [route, body, dialect] = make(model, url);
          const r = await send(route, body);
          return { key: `${endpoint} → ${upstream}`, url, ok: r.status === 400 && inDialect(r.json, dialect), got: r };
        });
      }
    }
  }
  for (const [part, make] of Object.entries(RELAY_PARTS)) {
    for (const url of BYPASSES) {
      // Data fields hold inline data; only URL-shaped values are URLs there.
      if (part !== 'chat_audio_url' && !url.includes(':') && !url.startsWith('//')) continue;
      jobs.push(async () => {
        const r = await send('/v1/chat/completions', { model: MODELS.openai, messages: [{ role: 'user', content: [make(url)] }] });
        return { key: `${part} → openai`, url, ok: r.status === 400 && inDialect(r.json, 'openai'), got: r };
      });
    }
  }
  const results = await pool(jobs, 8);
  const failed = results.filter((r) => !r.ok);
  const perPath = {};
  for (const r of results) perPath[r.key] = (perPath[r.key] ?? 0) + (r.ok ? 1 : 0);
  console.log(`url policy: ${results.length - failed.length}/${results.length} refused; per path: ${JSON.stringify(perPath)}`);
  assert.deepEqual(failed.map((f) => `${f.key}: ${JSON.stringify(f.url)} → ${f.got.status} ${JSON.stringify(f.got.json)}`), []);
  assert.equal(await upstreamRequests(), before, 'no refused request reached an upstream');
});

test('a public URL passes, normalized, on the relay and to Anthropic', async () => {
  const url = 'HTTPS://Example.COM/img/../cat.png';
  let r = await send('/v1/chat/completions', { model: MODELS.openai, messages: [{ role: 'user', content: [{ type: 'text', text: 'see http://127.0.0.1/ (text is not a URL part)' }, { type: 'image_url', image_url: { url } }] }] });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  let sent = (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
  assert.equal(sent.body.messages[0].content[1].image_url.url, 'https://example.com/cat.png');
  r = await send('/v1/messages', { model: MODELS.anthropic, max_tokens: 16, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url } }] }] });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  sent = (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
  assert.equal(sent.body.messages[0].content[0].source.url, 'https://example.com/cat.png');
});

test('a channel that lists a private media host gets its URLs; every other channel refuses them', async () => {
  const price = { input: 1_000_000, output: 2_000_000 };
  // Higher priority, no allowance: it must be skipped for the private URL.
  await stack.adminApi('POST', '/api/channels', {
    id: 'url-ch-plain', provider: 'openai-compatible', base_url: `${mockUrl}/openai/v1`, api_key: 'sk-plain-secret-0000000000',
    models: [{ name: 'url-lan', upstream_model: 'plain-model', priority: 10, price }],
  });
  const created = await stack.adminApi('POST', '/api/channels', {
    id: 'url-ch-lan', provider: 'openai-compatible', base_url: `${mockUrl}/openai/v1`, api_key: 'sk-lan-secret-0000000000',
    media_hosts: ['MinIO.LAN', '10.0.0.9'],
    models: [{ name: 'url-lan', upstream_model: 'lan-model', priority: 1, price }],
  });
  assert.deepEqual(created.channel.media_hosts, ['minio.lan', '10.0.0.9'], 'stored normalized');
  await assert.rejects(stack.adminApi('POST', '/api/channels', {
    id: 'url-ch-bad', provider: 'openai-compatible', base_url: `${mockUrl}/openai/v1`, media_hosts: ['http://minio.lan:9000/'],
    models: [{ name: 'url-lan', price }],
  }), /→ 400: .*media_hosts\[0\]/);
  for (let i = 0; i < 40; i++) {
    const m = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await m.text()).includes('url-lan')) break;
    await new Promise((res) => setTimeout(res, 250));
  }
  const image = (url) => ({ model: 'url-lan', messages: [{ role: 'user', content: [{ type: 'text', text: 'what is it?' }, { type: 'image_url', image_url: { url } }] }] });

  let r = await send('/v1/chat/completions', image('http://MINIO.lan:9000/bucket/../cat.png'));
  assert.equal(r.status, 200, JSON.stringify(r.json));
  let sent = (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
  assert.equal(sent.body.model, 'lan-model', 'only the channel that lists the host');
  assert.equal(sent.body.messages[0].content[1].image_url.url, 'http://minio.lan:9000/cat.png');

  r = await send('/v1/chat/completions', image('https://example.com/cat.png'));
  sent = (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
  assert.equal(sent.body.model, 'plain-model', 'public URLs keep the usual priority');

  const before = await upstreamRequests();
  for (const url of ['http://10.0.0.10/cat.png', 'http://169.254.169.254/latest', 'file:///etc/passwd', 'http://u:p@minio.lan/x.png']) {
    r = await send('/v1/chat/completions', image(url));
    assert.equal(r.status, 400, `${url}: ${JSON.stringify(r.json)}`);
    assert.equal(r.json.error.param, 'messages[0].content[1].image_url.url');
  }
  // Translated dialects never carry it, whatever the channel lists.
  r = await send('/v1/messages', { model: 'url-lan', max_tokens: 16, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: 'http://minio.lan/cat.png' } }] }] });
  assert.equal(r.status, 400, JSON.stringify(r.json));
  assert.equal(await upstreamRequests(), before, 'no refused request reached an upstream');
});
