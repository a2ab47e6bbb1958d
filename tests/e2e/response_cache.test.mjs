// End-to-end: the exact-match response cache. Official SDKs against the real
// worker (the Cache API of `wrangler dev`); the upstream is the dialect mock,
// whose requests are counted. A model opted in by the operator answers a
// deterministic request from the cache the second time (whole and streamed,
// in the client's dialect), marked in a header and in the usage row, billed
// as configured; another key, a non-deterministic request and a model
// without the option go upstream.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startStack, freePort, keyDigest } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let mockUrl;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  stack = await startStack({ adminIngest: true });
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  await stack.adminApi('POST', '/api/channels', {
    id: 'cache-openai', provider: 'openai-compatible', base_url: `${mockUrl}/openai/v1`, api_key: 'sk-cache-openai-0000000000',
    models: [
      { name: 'cached-gpt', upstream_model: 'upstream-model', price, options: { cache: { ttl_secs: 300 } } },
      { name: 'cached-gpt-full', upstream_model: 'upstream-model', price, options: { cache: { ttl_secs: 300, billing: 'full' } } },
      { name: 'uncached-gpt', upstream_model: 'upstream-model', price },
    ],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'cache-anthropic', provider: 'anthropic', base_url: `${mockUrl}/anthropic/v1`, api_key: 'sk-cache-anthropic-0000000000',
    models: [{ name: 'cached-claude', upstream_model: 'upstream-model', price, options: { cache: { ttl_secs: 300 } } }],
  });
  for (let i = 0; i < 40; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes('cached-claude')) break;
    await sleep(250);
  }
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const upstreamCalls = async () => (await (await fetch(`${mockUrl}/__requests`)).json()).length;
const openai = (key) => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
let n = 0;
/** A prompt no other test sends (the cache outlives a test). */
const fresh = () => `Say hello #${++n} at ${Date.now()}`;

/** The admin ledger's rows for a key, once `count` have arrived. */
async function ledgerRows(digest, count) {
  for (let i = 0; i < 80; i++) {
    const { data } = await stack.adminApi('GET', '/api/usage?limit=1000');
    const rows = data.filter((r) => r.key_digest === digest);
    if (rows.length >= count) return rows;
    await sleep(250);
  }
  throw new Error(`the ledger never held ${count} row(s) for ${digest.slice(0, 8)}`);
}

describe('response cache', () => {
  test('a deterministic request: miss, then a hit served without the upstream, marked and billed as configured', async () => {
    const key = (await stack.adminApi('POST', '/api/keys', { name: 'cache billing key' })).key;
    const client = openai(key);
    const body = { model: 'cached-gpt', temperature: 0, messages: [{ role: 'user', content: fresh() }] };
    const before = await upstreamCalls();
    const miss = await client.chat.completions.create(body).withResponse();
    assert.equal(miss.response.headers.get('x-edgeway-cache'), 'miss');
    const hit = await client.chat.completions.create(body).withResponse();
    assert.equal(hit.response.headers.get('x-edgeway-cache'), 'hit');
    assert.equal(await upstreamCalls(), before + 1, 'one upstream call for both');
    assert.deepEqual(hit.data, miss.data, 'the same answer');
    const full = { ...body, model: 'cached-gpt-full' };
    await client.chat.completions.create(full);
    await client.chat.completions.create(full);
    const rows = await ledgerRows(keyDigest(key), 4);
    const byModel = (model, source) => rows.filter((r) => r.model === model && r.usage_source === source);
    const [first] = byModel('cached-gpt', 'provider');
    const [cached] = byModel('cached-gpt', 'cache');
    assert.ok(first && cached, JSON.stringify(rows.map((r) => [r.model, r.usage_source])));
    assert.equal(cached.cost_micros, 0, 'free: the default');
    assert.equal(cached.output_tokens, first.output_tokens, 'the tokens are recorded');
    assert.ok(first.cost_micros > 0);
    const [fullMiss] = byModel('cached-gpt-full', 'provider');
    const [fullHit] = byModel('cached-gpt-full', 'cache');
    assert.equal(fullHit.cost_micros, fullMiss.cost_micros, 'billing: full');
  });

  test('a stream hit is replayed as a stream; an Anthropic client gets its own dialect', async () => {
    const client = openai(stack.keys.main);
    const body = { model: 'cached-gpt', seed: 7, stream: true, messages: [{ role: 'user', content: fresh() }] };
    const read = async () => {
      const { data, response } = await client.chat.completions.create(body).withResponse();
      let text = '';
      let chunks = 0;
      for await (const chunk of data) { text += chunk.choices[0]?.delta?.content ?? ''; chunks++; }
      return { text, chunks, cache: response.headers.get('x-edgeway-cache') };
    };
    const before = await upstreamCalls();
    const miss = await read();
    const hit = await read();
    assert.equal(miss.cache, 'miss');
    assert.equal(hit.cache, 'hit');
    assert.equal(hit.text, miss.text);
    assert.equal(hit.chunks, miss.chunks, 'the same events');
    assert.ok(hit.text.length > 0);
    assert.equal(await upstreamCalls(), before + 1);

    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
    const ask = { model: 'cached-claude', max_tokens: 50, temperature: 0, messages: [{ role: 'user', content: fresh() }] };
    const a1 = await anthropic.messages.create(ask).withResponse();
    const a2 = await anthropic.messages.create(ask).withResponse();
    assert.equal(a2.response.headers.get('x-edgeway-cache'), 'hit');
    assert.equal(a2.data.type, 'message');
    assert.deepEqual(a2.data.content, a1.data.content);
    const stream = anthropic.messages.stream(ask);
    const text1 = (await stream.finalMessage()).content[0].text;
    const again = anthropic.messages.stream(ask);
    const finalAgain = await again.finalMessage();
    assert.equal(finalAgain.content[0].text, text1, 'a streamed hit in the Anthropic dialect');
  });

  test('tenants never share; non-deterministic requests and models without the option bypass', async () => {
    const body = { model: 'cached-gpt', temperature: 0, messages: [{ role: 'user', content: fresh() }] };
    await openai(stack.keys.main).chat.completions.create(body);
    const other = openai((await stack.adminApi('POST', '/api/keys', { name: 'cache other tenant' })).key);
    const before = await upstreamCalls();
    const foreign = await other.chat.completions.create(body).withResponse();
    assert.equal(foreign.response.headers.get('x-edgeway-cache'), 'miss', 'another key: its own cache');
    assert.equal(await upstreamCalls(), before + 1);

    const client = openai(stack.keys.main);
    const sampled = { model: 'cached-gpt', messages: [{ role: 'user', content: fresh() }] };
    for (let i = 0; i < 2; i++) {
      const r = await client.chat.completions.create(sampled).withResponse();
      assert.equal(r.response.headers.get('x-edgeway-cache'), 'bypass');
    }
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    const withTools = await client.chat.completions.create({ ...sampled, temperature: 0, tools }).withResponse();
    assert.equal(withTools.response.headers.get('x-edgeway-cache'), 'bypass');
    const plain = { model: 'uncached-gpt', temperature: 0, messages: [{ role: 'user', content: fresh() }] };
    await client.chat.completions.create(plain);
    const r = await client.chat.completions.create(plain).withResponse();
    assert.equal(r.response.headers.get('x-edgeway-cache'), null, 'no option: no cache');
    assert.equal(await upstreamCalls(), before + 1 + 2 + 1 + 2);
  });

  test('hit latency (figures in the test log)', async (t) => {
    const client = openai(stack.keys.main);
    const time = async (body) => {
      const started = performance.now();
      await client.chat.completions.create(body);
      return performance.now() - started;
    };
    const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const cachedBody = { model: 'cached-gpt', temperature: 0, messages: [{ role: 'user', content: fresh() }] };
    await time(cachedBody);
    const hits = [];
    const misses = [];
    for (let i = 0; i < 30; i++) {
      hits.push(await time(cachedBody));
      misses.push(await time({ model: 'uncached-gpt', temperature: 0, messages: [{ role: 'user', content: 'latency' }] }));
    }
    const figures = { hit_ms: median(hits).toFixed(1), upstream_ms: median(misses).toFixed(1) };
    t.diagnostic(`response cache, median of 30 under wrangler dev: ${JSON.stringify(figures)}`);
    assert.ok(median(hits) < median(misses) + 20, JSON.stringify(figures));
  });
});
