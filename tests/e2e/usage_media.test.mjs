// End-to-end: usage the client sees is the usage it is billed, and inline
// media reaches each upstream in the form it requires. Official SDKs against
// the real worker; upstreams are the mocks (an OpenAI-format one that never
// reports usage, as llama.cpp does in streams, and the dialect mock).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startStack, freePort, keyDigest } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let mockUrl;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  stack = await startStack({ adminIngest: true, maxBodyBytes: 10 * 1024 * 1024 });
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  const channel = (id, provider, base, models) => stack.adminApi('POST', '/api/channels', {
    id, provider, base_url: base, api_key: `sk-${id}-secret-0000000000`, models,
  });
  await channel('media-openai', 'openai-compatible', `${mockUrl}/openai/v1`, [{ name: 'media-openai', upstream_model: 'upstream-model', price }]);
  await channel('media-anthropic', 'anthropic', `${mockUrl}/anthropic/v1`, [
    { name: 'media-claude', upstream_model: 'upstream-model', price },
    { name: 'claude-folded', upstream_model: 'case:thinking_usage', price, options: { fold_thinking: true } },
  ]);
  for (let i = 0; i < 40; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes('claude-folded')) break;
    await sleep(250);
  }
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

/** The usage rows D1 holds for a key, once `n` have arrived. */
async function d1Rows(digest, n) {
  for (let i = 0; i < 80; i++) {
    const out = execFileSync('wrangler', ['d1', 'execute', 'USAGE_DB', '--local', '--persist-to', stack.state, '--json',
      '--command', `SELECT request_id, input_uncached_tokens, output_tokens, cost_micros, usage_source FROM usage_events WHERE key_digest = '${digest}'`],
    { env: { ...process.env, CI: 'true' }, encoding: 'utf8' });
    const rows = JSON.parse(out)[0].results;
    if (rows.length >= n) return rows;
    await sleep(250);
  }
  throw new Error(`D1 never held ${n} row(s) for ${digest.slice(0, 8)}`);
}

/** The admin ledger's rows for a key, once `n` have arrived. */
async function ledgerRows(digest, n) {
  for (let i = 0; i < 80; i++) {
    const { data } = await stack.adminApi('GET', '/api/usage?limit=1000');
    const rows = data.filter((r) => r.key_digest === digest);
    if (rows.length >= n) return rows;
    await sleep(250);
  }
  throw new Error(`the ledger never held ${n} row(s) for ${digest.slice(0, 8)}`);
}

const PROMPT = 'Say hello to the gateway, please.';

// Each case asks the no-usage upstream in one client dialect and returns what
// the client was shown: { input, output, marked, header }.
const CASES = {
  async 'openai chat'(key) {
    const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
    const { data, response } = await openai.chat.completions
      .create({ model: 'up-no-usage', messages: [{ role: 'user', content: PROMPT }] })
      .withResponse();
    assert.equal(data.choices[0].message.content, 'Hello from the mock upstream over SSE.');
    return { input: data.usage.prompt_tokens, output: data.usage.completion_tokens, marked: data.usage.estimated, header: response.headers.get('x-edgeway-usage') };
  },
  async 'openai chat, stream'(key) {
    const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
    let usage = null;
    let text = '';
    const stream = await openai.chat.completions.create({ model: 'up-no-usage', messages: [{ role: 'user', content: PROMPT }], stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, 'Hello from the mock upstream over SSE.');
    assert.ok(usage, 'the client that asked for usage gets a usage chunk');
    return { input: usage.prompt_tokens, output: usage.completion_tokens, marked: usage.estimated };
  },
  async 'openai responses'(key) {
    const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
    const { data, response } = await openai.responses.create({ model: 'up-no-usage', input: PROMPT }).withResponse();
    assert.equal(data.output_text, 'Hello from the mock upstream over SSE.');
    return { input: data.usage.input_tokens, output: data.usage.output_tokens, marked: data.usage.estimated, header: response.headers.get('x-edgeway-usage') };
  },
  async 'openai responses, stream'(key) {
    const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
    let done = null;
    for await (const event of await openai.responses.create({ model: 'up-no-usage', input: PROMPT, stream: true })) {
      if (event.type === 'response.completed') done = event.response;
    }
    return { input: done.usage.input_tokens, output: done.usage.output_tokens, marked: done.usage.estimated };
  },
  async anthropic(key) {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: key, maxRetries: 0 });
    const { data, response } = await anthropic.messages
      .create({ model: 'up-no-usage', max_tokens: 100, messages: [{ role: 'user', content: PROMPT }] })
      .withResponse();
    return { input: data.usage.input_tokens, output: data.usage.output_tokens, marked: data.usage.estimated, header: response.headers.get('x-edgeway-usage') };
  },
  async 'anthropic, stream'(key) {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: key, maxRetries: 0 });
    const stream = anthropic.messages.stream({ model: 'up-no-usage', max_tokens: 100, messages: [{ role: 'user', content: PROMPT }] });
    let marked;
    for await (const event of stream) if (event.type === 'message_delta') marked = event.usage.estimated;
    const final = await stream.finalMessage();
    // What the SDK accumulates is what the client reads: not 0 and 0.
    return { input: final.usage.input_tokens, output: final.usage.output_tokens, marked };
  },
  async gemini(key) {
    const ai = new GoogleGenAI({ apiKey: key, httpOptions: { baseUrl: stack.gatewayUrl } });
    const res = await ai.models.generateContent({ model: 'up-no-usage', contents: PROMPT });
    const u = res.usageMetadata;
    return { input: u.promptTokenCount, output: u.candidatesTokenCount, marked: u.estimated, header: res.sdkHttpResponse?.headers?.['x-edgeway-usage'] };
  },
  async 'gemini, stream'(key) {
    const ai = new GoogleGenAI({ apiKey: key, httpOptions: { baseUrl: stack.gatewayUrl } });
    let u = null;
    for await (const chunk of await ai.models.generateContentStream({ model: 'up-no-usage', contents: PROMPT })) {
      if (chunk.usageMetadata) u = chunk.usageMetadata;
    }
    return { input: u.promptTokenCount, output: u.candidatesTokenCount, marked: u.estimated };
  },
};

describe('an upstream that reports no usage', () => {
  for (const [name, run] of Object.entries(CASES)) {
    test(`${name}: the client receives the figures D1 and the ledger record, marked estimated`, async () => {
      const key = (await stack.adminApi('POST', '/api/keys', { name: `usage ${name}` })).key;
      const digest = keyDigest(key);
      const shown = await run(key);
      const [row] = await d1Rows(digest, 1);
      assert.equal(row.usage_source, 'estimated');
      assert.ok(row.input_uncached_tokens > 0 && row.output_tokens > 0, JSON.stringify(row));
      assert.deepEqual({ input: shown.input, output: shown.output }, { input: row.input_uncached_tokens, output: row.output_tokens }, `${name}: shown ${JSON.stringify(shown)}, billed ${JSON.stringify(row)}`);
      assert.equal(row.cost_micros, row.input_uncached_tokens * 1 + row.output_tokens * 2);
      const [entry] = await ledgerRows(digest, 1);
      assert.equal(entry.request_id, row.request_id);
      assert.deepEqual([entry.usage.input_uncached, entry.usage.output, entry.cost_micros], [row.input_uncached_tokens, row.output_tokens, row.cost_micros]);
      // Marked: a field in the usage object (every SDK here passes it on, the
      // Anthropic SDK's raw events included), and the header on whole answers.
      assert.equal(shown.marked, true, `${name}: usage marked estimated`);
      if ('header' in shown) assert.equal(shown.header, 'estimated');
    });
  }
});

/** Standard base64 of bytes whose encoding has `+`, `/` and padding. */
const IMAGE = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.from([0xfb, 0xff, 0xbf, 0xfe, 0x3e, 0x0f])]);

describe('inline media', () => {
  test('Gemini SDK image parts in URL-safe base64 → OpenAI and Anthropic upstreams carry standard base64 of the same bytes', async () => {
    const standard = IMAGE.toString('base64');
    assert.match(standard, /[+/].*=$/);
    // What the Python SDK sends for bytes, and a mislabelled type: the bytes say PNG.
    const urlSafe = IMAGE.toString('base64url');
    const ai = new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
    const contents = [{ role: 'user', parts: [{ text: 'What is in this image?' }, { inlineData: { mimeType: 'image/jpeg', data: urlSafe } }] }];
    for (const model of ['media-openai', 'media-claude']) {
      const res = await ai.models.generateContent({ model, contents });
      assert.equal(res.text, 'Hello! How can I help?');
      const all = await (await fetch(`${mockUrl}/__requests`)).json();
      const sent = all.at(-1).body;
      if (model === 'media-openai') {
        const url = sent.messages[0].content.find((p) => p.type === 'image_url').image_url.url;
        assert.equal(url, `data:image/png;base64,${standard}`);
        assert.deepEqual(Buffer.from(url.split(',')[1], 'base64'), IMAGE);
      } else {
        const image = sent.messages[0].content.find((b) => b.type === 'image');
        assert.deepEqual(image.source, { type: 'base64', media_type: 'image/png', data: standard });
      }
    }
  });

  test('media an upstream refuses is a clear 400, too large a 413, in the client dialect', async () => {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
    const ai = new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
    // audio to an Anthropic upstream; a GIF to a Gemini upstream is the same rule (host tests)
    await assert.rejects(
      ai.models.generateContent({ model: 'media-claude', contents: [{ role: 'user', parts: [{ inlineData: { mimeType: 'audio/wav', data: 'UklGRiQAAABXQVZF' } }] }] }),
      (e) => { assert.equal(e.status, 400); assert.match(e.message, /Audio input is not supported by Anthropic upstreams/); return true; },
    );
    // a 6 MB image: over Anthropic's 5 MB per image
    const big = Buffer.alloc(6 * 1024 * 1024);
    IMAGE.copy(big);
    await assert.rejects(
      anthropic.messages.create({ model: 'media-claude', max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: big.toString('base64') } }] }] }),
      (e) => { assert.equal(e.status, 413); assert.equal(e.error?.error?.type, 'request_too_large'); assert.match(e.message, /5242880 bytes per image/); return true; },
    );
  });
});

test('fold_thinking: an OpenAI client gets the reasoning in its content', async () => {
  const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });
  const res = await openai.chat.completions.create({ model: 'claude-folded', messages: [{ role: 'user', content: 'Weather?' }] });
  assert.equal(res.choices[0].message.content, '<think>\nThe user wants weather; call the tool.\n</think>\n\nChecking.');
  assert.equal(res.choices[0].message.reasoning_content, undefined);
  let text = '';
  for await (const chunk of await openai.chat.completions.create({ model: 'claude-folded', messages: [{ role: 'user', content: 'Weather?' }], stream: true })) {
    text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(chunk.choices[0]?.delta?.reasoning_content, undefined);
  }
  assert.match(text, /^<think>\n[^]*\n<\/think>\n\n/);
});
