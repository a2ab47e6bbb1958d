// End-to-end: the edge's own counters (edgeway_core::pipeline::counters),
// served by the real worker under `wrangler dev` over the signed internal
// API (`GET /internal/counters`) and exported by the admin's /metrics. Every
// scrape is parsed with a Prometheus text-format parser; traffic from the
// official openai and Anthropic SDKs moves exactly the counters it should:
// requests by family, client and status class; upstream attempts and
// failovers by channel (a refused connection, a 500, then the built-in
// mock); an RPM refusal; response-cache verdicts; a stream the client left.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { startStack } from './stack.mjs';

const price = { input: 1_000_000, output: 2_000_000 };
let stack;
let openai;

/** One scrape of the admin's /metrics, parsed. */
async function scrape() {
  const r = await fetch(`${stack.adminUrl}/metrics`);
  assert.equal(r.status, 200);
  const families = parsePrometheusTextFormat(await r.text());
  const up = families.find((f) => f.name === 'edgeway_edge_up');
  assert.equal(up?.metrics[0].value, '1', 'the edge answered the scrape');
  return families;
}

/** The value of `name`'s series whose labels include `labels` (0 when absent). */
function value(families, name, labels) {
  const family = families.find((f) => f.name === name);
  assert.ok(family, `${name} is exported`);
  const series = family.metrics.filter((m) => Object.entries(labels).every(([k, v]) => m.labels[k] === v));
  assert.ok(series.length <= 1, `${name} ${JSON.stringify(labels)}: one series`);
  return Number(series[0]?.value ?? 0);
}

/** How each named counter moved between two scrapes of the same isolate. */
function moved(before, after, name, labels) {
  return value(after, name, labels) - value(before, name, labels);
}

const isolateOf = (families) => families.find((f) => f.name === 'edgeway_edge_isolate_start_time_seconds').metrics[0].labels.isolate;

before(async () => {
  stack = await startStack();
  // ctr-m: a channel whose connection is refused, then one answering 500,
  // then the built-in mock.
  await stack.adminApi('POST', '/api/channels', {
    id: 'ctr-down', provider: 'openai-compatible', base_url: 'http://127.0.0.1:9/v1', api_key: 'sk-ctr-down-0000000000',
    models: [{ name: 'ctr-m', upstream_model: 'gpt-test', priority: 20, price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'ctr-500', provider: 'openai-compatible', base_url: `${stack.mockUrl}/v1`, api_key: 'sk-ctr-500-00000000000',
    models: [{ name: 'ctr-m', upstream_model: 'fail-500', priority: 10 }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'ctr-mock', provider: 'mock', mock: { chunk_delay_ms: 150 },
    models: [
      { name: 'ctr-m', priority: 0 },
      { name: 'ctr-cached', price, options: { cache: { ttl_secs: 300 } } },
      { name: 'ctr-paced', price },
    ],
  });
  openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });
  await stack.waitForModel('ctr-paced');
});

after(async () => {
  await stack?.stop();
});

test('the signed counters route names its isolate and refuses unsigned reads', async () => {
  const counters = await stack.internal('GET', '/internal/counters');
  assert.match(counters.isolate_id, /^[0-9a-f]{32}$/);
  assert.ok(counters.started_at_ms > 0 && counters.started_at_ms <= counters.now_ms);
  const unsigned = await stack.internalFetch('GET', '/internal/counters');
  assert.equal(unsigned.status, 401);
  assert.equal(JSON.stringify(unsigned.json).includes('requests'), false, 'no counts without a signature');
});

test('requests, attempts and failovers move with traffic', async () => {
  const before = await scrape();
  const answer = await openai.chat.completions.create({ model: 'ctr-m', messages: [{ role: 'user', content: 'count me' }] }).withResponse();
  assert.equal(answer.response.headers.get('x-edgeway-channel'), 'ctr-mock', 'served after two failovers');
  const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
  await anthropic.messages.create({ model: 'mock-1', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] });
  await openai.embeddings.create({ model: 'mock-1', input: 'count me' });
  await assert.rejects(openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }), (e) => e.status === 404);
  const after = await scrape();
  assert.equal(isolateOf(after), isolateOf(before), 'wrangler dev runs one isolate');
  const requests = (family, client, status) => moved(before, after, 'edgeway_edge_requests_total', { family, client, status });
  assert.equal(requests('chat', 'openai_chat', '2xx'), 1);
  assert.equal(requests('chat', 'anthropic', '2xx'), 1);
  assert.equal(requests('embeddings', 'openai_chat', '2xx'), 1);
  assert.equal(requests('chat', 'openai_chat', '4xx'), 1);
  const attempts = (channel, outcome) => moved(before, after, 'edgeway_edge_upstream_attempts_total', { channel, outcome });
  assert.equal(attempts('ctr-down', 'connect'), 1);
  assert.equal(attempts('ctr-500', 'server_error'), 1);
  assert.equal(attempts('ctr-mock', 'served'), 1);
  assert.equal(attempts('builtin-mock', 'served'), 2);
  const failovers = (channel) => moved(before, after, 'edgeway_edge_failovers_total', { channel });
  assert.deepEqual([failovers('ctr-down'), failovers('ctr-500'), failovers('ctr-mock')], [1, 1, 0]);
  const help = (await (await fetch(`${stack.adminUrl}/metrics`)).text()).match(/^# HELP edgeway_edge_requests_total (.*)$/m)[1];
  assert.match(help, /Per isolate/);
});

test('refusals, cache verdicts and an aborted stream are counted', async () => {
  const before = await scrape();
  const limited = (await stack.adminApi('POST', '/api/keys', { name: 'ctr rpm', rpm: 1 })).key;
  const once = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: limited, maxRetries: 0 });
  await once.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'one' }] });
  await assert.rejects(once.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'two' }] }), (e) => e.status === 429);

  const deterministic = { model: 'ctr-cached', temperature: 0, messages: [{ role: 'user', content: `cache ${Date.now()}` }] };
  const miss = await openai.chat.completions.create(deterministic).withResponse();
  assert.equal(miss.response.headers.get('x-edgeway-cache'), 'miss');
  const hit = await openai.chat.completions.create(deterministic).withResponse();
  assert.equal(hit.response.headers.get('x-edgeway-cache'), 'hit');

  const completed = await openai.chat.completions.create({ model: 'ctr-paced', stream: true, messages: [{ role: 'user', content: 'short' }] });
  for await (const _ of completed) { /* read to the end */ }
  const controller = new AbortController();
  const aborted = await openai.chat.completions.create(
    { model: 'ctr-paced', stream: true, messages: [{ role: 'user', content: 'a long answer, please, with many words in it' }] },
    { signal: controller.signal },
  );
  try {
    for await (const _ of aborted) { controller.abort(); }
  } catch (e) {
    if (!controller.signal.aborted) throw e;
  }

  let after;
  const streams = (ending) => moved(before, after, 'edgeway_edge_streams_total', { ending });
  // The aborted stream ends once the worker notices (its next write) and has
  // drained the upstream for its usage.
  for (let i = 0; i < 40; i++) {
    after = await scrape();
    if (streams('completed') + streams('client_aborted') >= 2) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(moved(before, after, 'edgeway_edge_admission_refusals_total', { reason: 'rpm' }), 1);
  assert.equal(moved(before, after, 'edgeway_edge_admission_refusals_total', { reason: 'quota' }), 0);
  const cache = (verdict) => moved(before, after, 'edgeway_edge_response_cache_total', { verdict });
  assert.deepEqual([cache('miss'), cache('hit'), cache('bypass')], [1, 1, 0]);
  assert.equal(streams('completed'), 1);
  assert.equal(streams('client_aborted'), 1);
  assert.equal(streams('failed'), 0);
  assert.equal(moved(before, after, 'edgeway_edge_requests_total', { family: 'chat', client: 'openai_chat', status: '4xx' }), 1, 'the refusal');
});
