// End-to-end failover matrix under the real worker: every model has two
// targets, a failing one first (the mock upstream told how to fail, or a
// port nobody listens on) and a good one second. For each failure, stream
// and not: what the client saw, which channel served, what was billed, the
// attempts in the usage row, and the time to serve from the next channel.
// Also: SSE keepalives while a stream waits for its first content, read
// unchanged by each official SDK.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startStack, freePort, keyDigest } from './stack.mjs';

const LIMIT_MS = 1500; // every time limit of the failing channel
const KEEPALIVE_MS = 400;
const price = { input: 1_000_000, output: 2_000_000 };
const TEXT = 'Hello from the mock upstream over SSE.';
const FALLBACK_PRICE = { input: 3_000_000, output: 5_000_000 };

// Public model → how its first target fails (the mock's upstream model).
const FAILING = {
  'fo-500': 'fail-500',
  'fo-429': 'retry-after-1',
  'fo-quota': 'quota-429',
  'fo-401': 'fail-401-echo',
  'fo-stall-head': 'hang',
  'fo-stall-role': 'stall-after-role',
  'fo-die-early': 'die-before-content',
  'fo-stall-content': 'stall-after-content',
  'fo-die-mid': 'die-mid-stream',
  'fo-400': 'fail-400',
};

let stack;
let key;
let openai;
const figures = [];

before(async () => {
  stack = await startStack({ upstreamTimeoutMs: LIMIT_MS, vars: { SSE_KEEPALIVE_MS: String(KEEPALIVE_MS) } });
  const mockV1 = `${stack.mockUrl}/v1`;
  const limits = { timeout_ms: LIMIT_MS, first_content_timeout_ms: LIMIT_MS, idle_timeout_ms: LIMIT_MS };
  await stack.adminApi('POST', '/api/channels', {
    // The matrix measures failover itself: the breaker is off for the failing
    // channels (tests/e2e/breaker.test.mjs measures the breaker).
    id: 'fo-bad', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-fo-bad-0000000000', ...limits, breaker: { failures: 0 },
    models: Object.entries(FAILING).map(([name, upstream]) => ({ name, upstream_model: upstream, priority: 10, price })),
  });
  const refusedPort = await freePort(); // nobody listens there
  await stack.adminApi('POST', '/api/channels', {
    id: 'fo-refused', provider: 'openai-compatible', base_url: `http://127.0.0.1:${refusedPort}/v1`, ...limits, breaker: { failures: 0 },
    models: [{ name: 'fo-refused', upstream_model: 'gpt-test', priority: 10, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'fo-good', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-fo-good-0000000000',
    models: [...Object.keys(FAILING), 'fo-refused', 'fo-direct'].map((name) => ({ name, upstream_model: 'gpt-test', priority: 0, price }))
      .concat([{ name: 'fo-think', upstream_model: 'think-1500', price }, { name: 'fo-think-long', upstream_model: 'think-2500', price }])
      .concat([{ name: 'fo-fallback-to', upstream_model: 'gpt-test', price: FALLBACK_PRICE }]),
  });
  // A model whose only channel fails, falling back to another model.
  await stack.adminApi('POST', '/api/channels', {
    id: 'fo-bad-only', provider: 'openai-compatible', base_url: mockV1, api_key: 'sk-fo-bad-only-00000', ...limits, breaker: { failures: 0 },
    models: [{ name: 'fo-fb', upstream_model: 'fail-500', price, options: { fallbacks: ['fo-fallback-to'] } }],
  });
  key = (await stack.adminApi('POST', '/api/keys', { name: 'failover matrix' })).key;
  openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
  for (let i = 0; i < 80; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    if ((await r.text()).includes('"fo-fb"')) break;
    await new Promise((r) => setTimeout(r, 250));
  }
});

after(async () => {
  if (figures.length) {
    console.log('failover figures (ms; serve = client-observed total, overhead = serve minus a direct request):');
    for (const f of figures) console.log(`  ${f}`);
  }
  await stack?.stop();
});

const user = (content) => [{ role: 'user', content }];

/** The D1 usage row of `requestId`, once the queue consumer wrote it. */
async function usageRow(requestId) {
  for (let i = 0; i < 120; i++) {
    const stats = await stack.internal('GET', `/internal/usage/stats?key_digest=${keyDigest(key)}&limit=200`);
    const row = stats.events.find((e) => e.request_id === requestId);
    if (row) return { ...row, attempts: row.attempts ? JSON.parse(row.attempts) : [] };
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`no usage row for ${requestId}`);
}

async function direct(stream) {
  const t0 = performance.now();
  if (stream) {
    const s = await openai.chat.completions.create({ model: 'fo-direct', messages: user('x'), stream: true });
    for await (const _ of s);
  } else {
    await openai.chat.completions.create({ model: 'fo-direct', messages: user('x') });
  }
  return performance.now() - t0;
}

const CASES = [
  { model: 'fo-500', kind: 'server_error', status: 500 },
  { model: 'fo-429', kind: 'rate_limited', status: 429 },
  { model: 'fo-quota', kind: 'quota_exhausted', status: 429 },
  { model: 'fo-401', kind: 'credential_refused', status: 401 },
  { model: 'fo-refused', kind: 'connect', status: 0, channel: 'fo-refused' },
  { model: 'fo-stall-head', kind: 'timeout_headers', status: 0, slow: true },
  { model: 'fo-stall-role', kind: 'timeout_first_content', status: 200, streamOnly: true, slow: true },
  { model: 'fo-die-early', kind: 'stream_broken', status: 200, streamOnly: true },
];

describe('failure before the first content byte: the next channel serves', () => {
  for (const c of CASES) {
    for (const stream of c.streamOnly ? [true] : [false, true]) {
      test(`${c.model} (${stream ? 'stream' : 'whole'})`, { timeout: 60_000 }, async () => {
        const base = await direct(stream);
        const t0 = performance.now();
        let text = '';
        let requestId;
        let channel;
        if (stream) {
          const { data, response } = await openai.chat.completions
            .create({ model: c.model, messages: user('x'), stream: true, stream_options: { include_usage: true } })
            .withResponse();
          requestId = response.headers.get('x-request-id');
          channel = response.headers.get('x-edgeway-channel');
          let roles = 0;
          for await (const chunk of data) {
            if (chunk.choices[0]?.delta?.role) roles += 1;
            text += chunk.choices[0]?.delta?.content ?? '';
          }
          assert.equal(roles, 1, 'one stream start: the failed attempt left no trace');
        } else {
          const { data, response } = await openai.chat.completions.create({ model: c.model, messages: user('x') }).withResponse();
          requestId = response.headers.get('x-request-id');
          channel = response.headers.get('x-edgeway-channel');
          text = data.choices[0].message.content;
        }
        const serve = performance.now() - t0;
        assert.equal(text, TEXT);
        // A stream's head that went out with a keepalive could not name the
        // channel yet: a slow failure always, a quick one when the machine is
        // slow enough that it took longer than the keepalive interval. It
        // never names the failed channel.
        if (!stream) assert.equal(channel, 'fo-good');
        else assert.ok(channel === null || channel === 'fo-good', `stream head names ${channel}`);
        const row = await usageRow(requestId);
        assert.equal(row.channel, 'fo-good');
        assert.equal(row.cost_micros, 27, 'only the serving attempt is billed');
        assert.deepEqual(row.attempts.map((a) => [a.channel, a.failure ?? null, a.status]),
          [[c.channel ?? 'fo-bad', c.kind, c.status], ['fo-good', null, 200]]);
        figures.push(`${c.kind.padEnd(22)} ${stream ? 'stream' : 'whole '} serve ${serve.toFixed(0).padStart(5)}  overhead ${(serve - base).toFixed(0).padStart(5)}  failed attempt ${row.attempts[0].latency_ms} ms`);
        if (c.slow) assert.ok(serve >= LIMIT_MS - 50, `waited for the limit: ${serve}`);
        else assert.ok(serve - base < LIMIT_MS - 50, `quick failover did not wait for the time limit: ${serve - base} ms`);
      });
    }
  }

  test('a 400 is the caller\'s: no failover, nothing billed', async () => {
    await assert.rejects(openai.chat.completions.create({ model: 'fo-400', messages: user('x') }), (e) => e.status === 400);
    const stats = await stack.mockStats();
    assert.equal(stats.byModel['fail-400'], 1);
  });
});

describe('fallback models: every channel of the model failed, the next model serves', () => {
  for (const stream of [false, true]) {
    test(`fo-fb → fo-fallback-to (${stream ? 'stream' : 'whole'})`, { timeout: 60_000 }, async () => {
      const t0 = performance.now();
      let text = '';
      let shown;
      const { data, response } = await openai.chat.completions
        .create({ model: 'fo-fb', messages: user('x'), stream, ...(stream ? { stream_options: { include_usage: true } } : {}) })
        .withResponse();
      if (stream) {
        for await (const chunk of data) {
          text += chunk.choices[0]?.delta?.content ?? '';
          shown = chunk.model;
        }
      } else {
        text = data.choices[0].message.content;
        shown = data.model;
      }
      const serve = performance.now() - t0;
      assert.equal(text, TEXT);
      assert.equal(shown, 'fo-fallback-to', 'the response names the model that served');
      if (!stream) assert.equal(response.headers.get('x-edgeway-model'), 'fo-fallback-to');
      const row = await usageRow(response.headers.get('x-request-id'));
      assert.equal(row.model, 'fo-fb');
      assert.equal(row.served_model, 'fo-fallback-to');
      assert.deepEqual(row.attempts.map((a) => [a.channel, a.model, a.failure ?? null]),
        [['fo-bad-only', 'fo-fb', 'server_error'], ['fo-good', 'fo-fallback-to', null]]);
      // Billed at the price of the model that served (the mock reports 11 + 8 tokens).
      assert.equal(row.cost_micros, 11 * 3 + 8 * 5);
      figures.push(`fallback after a 500 (${stream ? 'stream' : 'whole'}): serve ${serve.toFixed(1)} ms`);
    });
  }
});

describe('failure after the first content byte: an in-stream error, billed for what was received', () => {
  for (const [model, kind, seen] of [['fo-stall-content', 'stall', 'Hello'], ['fo-die-mid', 'death', 'Hello from']]) {
    test(`${kind} mid-stream`, { timeout: 60_000 }, async () => {
      const t0 = performance.now();
      const { data, response } = await openai.chat.completions.create({ model, messages: user('x'), stream: true }).withResponse();
      let text = '';
      await assert.rejects(async () => {
        for await (const chunk of data) text += chunk.choices[0]?.delta?.content ?? '';
      }, (e) => {
        assert.match(String(e.message), kind === 'stall' ? /did not respond in time/ : /ended before the response was complete|could not be reached/);
        return true;
      });
      const elapsed = performance.now() - t0;
      assert.equal(text, seen, 'no failover once content flowed');
      const row = await usageRow(response.headers.get('x-request-id'));
      assert.equal(row.channel, 'fo-bad');
      assert.equal(row.outcome, 'failed');
      assert.equal(row.usage_source, 'estimated');
      assert.ok(row.cost_micros > 0, 'what was received is billed');
      assert.deepEqual(row.attempts.map((a) => [a.channel, a.failure ?? null]), [['fo-bad', null]]);
      if (kind === 'stall') assert.ok(elapsed >= LIMIT_MS - 50, `ended by the idle limit: ${elapsed}`);
      figures.push(`${kind} after content: client saw ${JSON.stringify(text)}, then an error after ${elapsed.toFixed(0)} ms; billed ${row.cost_micros} micros (estimated)`);
    });
  }
});

describe('keepalives while a stream waits for its first content', () => {
  test('raw: the head at the first interval, comments, then the content', async () => {
    const t0 = performance.now();
    const r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fo-think', messages: user('think'), stream: true }),
    });
    const headAt = performance.now() - t0;
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /text\/event-stream/);
    assert.ok(headAt >= KEEPALIVE_MS - 50 && headAt < 1400, `head with the first keepalive, not the content: ${headAt}`);
    const text = await r.text();
    const keepalives = text.split(': keepalive\n\n').length - 1;
    assert.ok(keepalives >= 2, `${keepalives} keepalives: ${text.slice(0, 200)}`);
    assert.ok(text.startsWith(': keepalive\n\n'), text.slice(0, 80));
    assert.ok(text.endsWith('data: [DONE]\n\n'));
  });

  test('openai: chat and responses streams read unchanged', { timeout: 30_000 }, async () => {
    let text = '';
    for await (const chunk of await openai.chat.completions.create({ model: 'fo-think', messages: user('x'), stream: true })) {
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    assert.equal(text, TEXT);
    let out = '';
    for await (const event of await openai.responses.create({ model: 'fo-think', input: 'x', stream: true })) {
      if (event.type === 'response.output_text.delta') out += event.delta;
    }
    assert.equal(out, TEXT);
  });

  test('@anthropic-ai/sdk: ping events (which it skips), then the message', { timeout: 30_000 }, async () => {
    const r = await fetch(`${stack.gatewayUrl}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fo-think', max_tokens: 50, messages: user('x'), stream: true }),
    });
    const raw = await r.text();
    assert.ok(raw.startsWith('event: ping\ndata: {"type": "ping"}\n\n'), raw.slice(0, 80));
    assert.ok(raw.split('event: ping\n').length - 1 >= 2, raw.slice(0, 300));
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: key, maxRetries: 0 });
    const stream = anthropic.messages.stream({ model: 'fo-think', max_tokens: 50, messages: user('x') });
    const types = [];
    for await (const event of stream) types.push(event.type);
    assert.equal(types[0], 'message_start', types.join(','));
    assert.equal(types.at(-1), 'message_stop');
    const message = await stream.finalMessage();
    assert.equal(message.content[0].text, TEXT);
  });

  test('@google/genai: comments skipped, chunks read', { timeout: 30_000 }, async () => {
    const genai = new GoogleGenAI({ apiKey: key, httpOptions: { baseUrl: stack.gatewayUrl } });
    let text = '';
    for await (const chunk of await genai.models.generateContentStream({ model: 'fo-think', contents: 'x' })) {
      text += chunk.text ?? '';
    }
    assert.equal(text, TEXT);
  });

  test('a long first-content wait keeps the stream open past the headers limit of a proxy', { timeout: 30_000 }, async () => {
    // 2.5 s of thinking, keepalives every 0.4 s: the client gets a byte
    // every interval. Asserted as functions, not timings (this machine is
    // shared): several keepalive comments arrive before the content, and no
    // silence comes near the 2.5 s the upstream was silent (without
    // keepalives the client would wait all of it at once).
    const r = await fetch(`${stack.gatewayUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fo-think-long', messages: user('think'), stream: true }),
    });
    const reader = r.body.getReader();
    let last = performance.now();
    let longestGap = 0;
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const keepalives = text.split(': keepalive').length - 1;
    assert.ok(keepalives >= 3, `${keepalives} keepalive comments before the content`);
    assert.ok(text.indexOf(': keepalive') < text.indexOf('mock'), 'keepalives come before the content');
    assert.ok(longestGap < 1500, `longest silence ${longestGap.toFixed(0)} ms (the upstream was silent for 2500 ms)`);
    assert.ok(text.includes('mock'), text.slice(-200));
    figures.push(`keepalive: 2.5 s first-content wait, longest silence the client saw ${longestGap.toFixed(0)} ms`);
  });
});
