// End-to-end: the endpoint families beyond chat (embeddings, legacy text
// completions, moderations; rerank, which the openai SDK lacks, in the request
// shape Cohere's and Jina's clients send) with the official `openai` SDK against the real worker, served
// by the built-in mock and relayed to an OpenAI-compatible upstream; each one
// metered into D1 with its endpoint family.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { GoogleGenAI } from '@google/genai';
import { startStack } from './stack.mjs';

let stack;
let client;
const ids = {};

before(async () => {
  stack = await startStack();
  client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0, timeout: 20_000 });
});

after(async () => {
  await stack?.stop();
});

const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

function d1(sql) {
  const out = execFileSync('wrangler', ['d1', 'execute', 'USAGE_DB', '--local', '--persist-to', stack.state, '--json', '--command', sql],
    { env: { ...process.env, CI: 'true' }, encoding: 'utf8' });
  return JSON.parse(out)[0].results;
}

async function usageRow(rid) {
  for (let i = 0; i < 40; i++) {
    const rows = d1(`SELECT endpoint, unit, unit_count, input_uncached_tokens, output_tokens, cost_micros, outcome FROM usage_events WHERE request_id = '${rid}'`);
    if (rows.length) return rows[0];
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`no usage row for ${rid}`);
}

test('embeddings from the built-in mock: the SDK default (base64, decoded by the SDK) and floats agree', async () => {
  const { data, response } = await client.embeddings
    .create({ model: 'mock-1', input: ['hello', 'world'], dimensions: 8 })
    .withResponse();
  ids.mockEmbeddings = response.headers.get('x-request-id');
  assert.equal(data.object, 'list');
  assert.equal(data.data.length, 2);
  const [a, b] = data.data.map((d) => d.embedding);
  assert.equal(a.length, 8);
  assert.ok(Math.abs(norm(a) - 1) < 1e-5, 'unit length');
  assert.notDeepEqual(a, b);
  assert.ok(data.usage.prompt_tokens > 0 && data.usage.total_tokens === data.usage.prompt_tokens);
  const floats = await client.embeddings.create({ model: 'mock-1', input: 'hello', dimensions: 8, encoding_format: 'float' });
  assert.deepEqual(floats.data[0].embedding.map((x) => Math.fround(x)), a.map((x) => Math.fround(x)), 'deterministic, same vector either way');
  const dflt = await client.embeddings.create({ model: 'mock-1', input: [[1, 2, 3]] });
  assert.equal(dflt.data[0].embedding.length, 1536, 'the mock\'s default dimensions');
});

test('@google/genai embedContent through the gateway: the same vectors the openai SDK gets, its errors in Gemini\'s shape', async () => {
  const ai = new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
  const res = await ai.models.embedContent({ model: 'mock-1', contents: ['hello', 'world'], config: { outputDimensionality: 8, taskType: 'RETRIEVAL_QUERY' } });
  assert.equal(res.embeddings.length, 2);
  const viaOpenAi = await client.embeddings.create({ model: 'mock-1', input: ['hello', 'world'], dimensions: 8, encoding_format: 'float' });
  assert.deepEqual(res.embeddings.map((e) => e.values.map(Math.fround)), viaOpenAi.data.map((d) => d.embedding.map(Math.fround)),
    'one request, read in either dialect');
  const headers = res.sdkHttpResponse?.headers ?? {};
  assert.equal(headers['x-edgeway-dropped-params'], 'taskType', 'the OpenAI-format mock has no taskType');
  ids.geminiEmbeddings = headers['x-request-id'];
  assert.ok(ids.geminiEmbeddings, JSON.stringify(headers));
  await assert.rejects(
    ai.models.embedContent({ model: 'mock-1', contents: ['a', 'b'], config: { outputDimensionality: 0 } }),
    (e) => e.status === 400 && /outputDimensionality/.test(e.message),
  );
  const row = await usageRow(ids.geminiEmbeddings);
  assert.equal(row.endpoint, 'embeddings');
  assert.ok(row.input_uncached_tokens > 0 && row.output_tokens === 0, JSON.stringify(row));
});

test('embeddings relayed to an OpenAI-compatible upstream, model rewritten, body passed through', async () => {
  const { data, response } = await client.embeddings
    .create({ model: 'gpt-test', input: ['a', 'b'], dimensions: 2 })
    .withResponse();
  ids.upstreamEmbeddings = response.headers.get('x-request-id');
  assert.deepEqual(data.data.map((d) => d.embedding), [[1, 0.1], [2, 0.1]].map((v) => v.map(Math.fround)));
  assert.deepEqual(data.usage, { prompt_tokens: 8, total_tokens: 8 });
  const last = await stack.mockLast();
  assert.equal(last.path, '/v1/embeddings');
  assert.deepEqual(last.body, { model: 'gpt-test', input: ['a', 'b'], dimensions: 2, encoding_format: 'base64' });
  assert.equal(last.hadAuthorization, true);
});

test('embeddings requests are checked at the edge', async () => {
  await assert.rejects(client.embeddings.create({ model: 'mock-1', input: '' }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.param, 'input');
    return true;
  });
  await assert.rejects(client.embeddings.create({ model: 'mock-1', input: 'x', dimensions: 0 }), (e) => e.status === 400 && e.param === 'dimensions');
  await assert.rejects(client.embeddings.create({ model: 'nope', input: 'x' }), (e) => e.status === 404);
});

test('legacy completions from the mock, whole and streamed', async () => {
  const { data, response } = await client.completions
    .create({ model: 'mock-1', prompt: 'What is edgeway?', max_tokens: 50 })
    .withResponse();
  ids.mockCompletion = response.headers.get('x-request-id');
  assert.equal(data.object, 'text_completion');
  assert.equal(data.choices[0].text, 'Hello from the edgeway mock provider. You said: "What is edgeway?"');
  assert.equal(data.choices[0].finish_reason, 'stop');
  assert.equal(data.usage.completion_tokens, 11);
  const short = await client.completions.create({ model: 'mock-1', prompt: 'What is edgeway?', max_tokens: 3 });
  assert.equal(short.choices[0].text, 'Hello from the');
  assert.equal(short.choices[0].finish_reason, 'length');

  const stream = await client.completions.create({
    model: 'mock-1', prompt: 'What is edgeway?', max_tokens: 50, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, data.choices[0].text);
  assert.equal(usage?.completion_tokens, 11);
});

test('legacy completions through an upstream: usage forced on streams and stripped when not asked', async () => {
  const whole = await client.completions.create({ model: 'gpt-test', prompt: 'hi' });
  assert.equal(whole.choices[0].text, 'Hello from the mock upstream over SSE.');
  let last = await stack.mockLast();
  assert.equal(last.path, '/v1/completions');
  assert.equal(last.body.max_tokens, 16, 'the API default made explicit');

  const { data: stream, response } = await client.completions.create({ model: 'gpt-test', prompt: 'hi', stream: true }).withResponse();
  ids.upstreamCompletionStream = response.headers.get('x-request-id');
  let text = '';
  for await (const chunk of stream) {
    if (chunk.choices.length === 0) assert.fail('usage-only chunk reached a client that did not ask for it');
    text += chunk.choices[0].text;
  }
  assert.equal(text, 'Hello from the mock upstream over SSE.');
  last = await stack.mockLast();
  assert.equal(last.body.stream_options?.include_usage, true);
});

test('moderations from the mock and relayed to an upstream, checked at the edge', async () => {
  const { data, response } = await client.moderations
    .create({ model: 'mock-1', input: ['a quiet afternoon', 'I will kill the lights'] })
    .withResponse();
  ids.mockModeration = response.headers.get('x-request-id');
  assert.equal(data.model, 'mock-1', 'the public model name');
  assert.deepEqual(data.results.map((r) => r.flagged), [false, true]);
  assert.equal(data.results[1].categories.violence, true);
  assert.ok(data.results[0].category_scores.violence < 0.01);
  const parts = await client.moderations.create({
    model: 'mock-1', input: [{ type: 'text', text: 'a bomb' }, { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }],
  });
  assert.equal(parts.results[0].categories['illicit/violent'], true);

  const relayed = await client.moderations.create({ model: 'gpt-test', input: ['fine', 'bad'] }).withResponse();
  ids.upstreamModeration = relayed.response.headers.get('x-request-id');
  assert.deepEqual(relayed.data.results.map((r) => r.flagged), [false, true]);
  const last = await stack.mockLast();
  assert.equal(last.path, '/v1/moderations');
  assert.deepEqual(last.body, { model: 'gpt-test', input: ['fine', 'bad'] });
  await assert.rejects(client.moderations.create({ model: 'mock-1', input: [{ type: 'audio' }] }), (e) => e.status === 400 && e.param === 'input[0]');
});

test('rerank (Cohere /v2 and Jina /v1 paths) from the mock and relayed to an upstream, checked at the edge', async () => {
  const rerank = (path, body) => fetch(`${stack.gatewayUrl}${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${stack.keys.main}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const documents = ['Berlin is the capital of Germany', 'Paris is the capital of France', 'France exports wine'];
  const r = await rerank('/v2/rerank', { model: 'mock-1', query: 'capital of France', documents, top_n: 2, return_documents: true });
  assert.equal(r.status, 200);
  ids.mockRerank = r.headers.get('x-request-id');
  const ranked = await r.json();
  assert.deepEqual(ranked.results.map((x) => x.index), [1, 0]);
  assert.equal(ranked.results[0].document.text, documents[1]);
  assert.ok(ranked.results[0].relevance_score > ranked.results[1].relevance_score);
  assert.ok(ranked.usage.total_tokens > 0);

  const up = await rerank('/v1/rerank', { model: 'gpt-test', query: 'q', documents: ['a', { text: 'b' }], top_n: 1 });
  assert.equal(up.status, 200);
  ids.upstreamRerank = up.headers.get('x-request-id');
  const upBody = await up.json();
  assert.equal(upBody.model, 'gpt-test');
  assert.deepEqual(upBody.results, [{ index: 0, relevance_score: 1 }]);
  const last = await stack.mockLast();
  assert.equal(last.path, '/v1/rerank');
  assert.deepEqual(last.body, { model: 'gpt-test', query: 'q', documents: ['a', { text: 'b' }], top_n: 1 });

  const bad = await rerank('/v1/rerank', { model: 'mock-1', query: 'q', documents: [] });
  assert.equal(bad.status, 400);
  assert.equal((await bad.json()).error.param, 'documents');
});

test('every family is metered with its endpoint, at the model\'s token price', async () => {
  // Prices in the stack: 1.0 per M input, 2.0 per M output (micro-units per token: 1 and 2).
  const emb = await usageRow(ids.upstreamEmbeddings);
  assert.deepEqual(emb, { endpoint: 'embeddings', unit: null, unit_count: 0, input_uncached_tokens: 8, output_tokens: 0, cost_micros: 8, outcome: 'completed' });
  const mockEmb = await usageRow(ids.mockEmbeddings);
  assert.equal(mockEmb.endpoint, 'embeddings');
  assert.ok(mockEmb.cost_micros > 0);
  const cmpl = await usageRow(ids.upstreamCompletionStream);
  assert.deepEqual(cmpl, { endpoint: 'completions', unit: null, unit_count: 0, input_uncached_tokens: 5, output_tokens: 8, cost_micros: 5 + 16, outcome: 'completed' });
  assert.equal((await usageRow(ids.mockCompletion)).output_tokens, 11);
  // Rerank: the upstream's 6 tokens, input price only.
  const rr = await usageRow(ids.upstreamRerank);
  assert.deepEqual(rr, { endpoint: 'rerank', unit: null, unit_count: 0, input_uncached_tokens: 6, output_tokens: 0, cost_micros: 6, outcome: 'completed' });
  assert.equal((await usageRow(ids.mockRerank)).endpoint, 'rerank');
  // Moderations: the upstream reports no usage; the gateway's estimate of the input is billed.
  const mod = await usageRow(ids.upstreamModeration);
  assert.equal(mod.endpoint, 'moderations');
  assert.equal(mod.output_tokens, 0);
  assert.ok(mod.input_uncached_tokens > 0 && mod.cost_micros === mod.input_uncached_tokens, JSON.stringify(mod));
  assert.equal((await usageRow(ids.mockModeration)).endpoint, 'moderations');
});
