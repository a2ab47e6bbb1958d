// Provider quirks as typed rows, end to end: the official SDKs against the
// real worker, with channels of the `azure` and `mistral` rows pointed at a
// mock that checks what each provider checks (Azure's deployment URL,
// `api-version` and `api-key` header; Mistral's strict schema, which answers
// any field outside it with a 422). What the rows declare is what is sent.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

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
  await stack.adminApi('POST', '/api/channels', {
    id: 'ch-azure', provider: 'azure', base_url: `${mockUrl}/azure`, api_key: 'az-key-0000000000000000',
    api_version: '2025-04-01-preview',
    models: [{ name: 'gpt-4o-azure', upstream_model: 'gpt4o-prod', price }],
  });
  await stack.adminApi('POST', '/api/channels', {
    id: 'ch-mistral', provider: 'mistral', base_url: `${mockUrl}/mistral/v1`, api_key: 'mi-key-0000000000000000',
    models: [{ name: 'mistral-large', upstream_model: 'mistral-large-latest', price }],
  });
  await stack.waitForModel('gpt-4o-azure');
  await stack.waitForModel('mistral-large');
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const lastUpstream = async () => (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
const openai = () => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });

describe('azure row', () => {
  test('deployment URL, api-version, api-key header and max_completion_tokens, stream and not', async () => {
    const reply = await openai().chat.completions.create({
      model: 'gpt-4o-azure', max_tokens: 40, messages: [{ role: 'user', content: 'Hi' }],
    });
    assert.equal(reply.choices[0].message.content, 'Hello! How can I help?');
    const sent = await lastUpstream();
    assert.equal(sent.path, '/azure/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-04-01-preview');
    assert.deepEqual(sent.credentialHeaders, ['api-key'], 'the key in `api-key`, no bearer');
    assert.equal(sent.body.max_completion_tokens, 40, 'the field the row takes');
    assert.equal(sent.body.max_tokens, undefined);

    let text = '';
    let usage;
    const stream = await openai().chat.completions.create({
      model: 'gpt-4o-azure', messages: [{ role: 'user', content: 'Hi' }], stream: true,
    });
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      usage ??= chunk.usage;
    }
    assert.equal(text, 'Hello! How can I help?');
    assert.equal(usage ?? null, null, 'the client did not ask for the usage chunk');
    const streamed = await lastUpstream();
    assert.match(streamed.path, /\/deployments\/gpt4o-prod\/chat\/completions\?api-version=2025-04-01-preview$/);
    assert.deepEqual(streamed.body.stream_options, { include_usage: true }, 'usage asked for, for billing');
  });

  test('a deployment name that is not one is refused when the route is configured', async () => {
    await assert.rejects(
      stack.adminApi('POST', '/api/channels', {
        id: 'ch-azure-bad', provider: 'azure', base_url: `${mockUrl}/azure`, api_key: 'k',
        models: [{ name: 'bad-deployment', upstream_model: '../../admin', price: { input: 0, output: 0 } }],
      }),
      /→ 400: .*not a deployment name/,
    );
  });
});

describe('mistral row', () => {
  test('the openai SDK\'s fields Mistral refuses are dropped and named; the seed is renamed', async () => {
    const { data, response } = await openai().chat.completions.create({
      model: 'mistral-large', messages: [{ role: 'user', content: 'Hi' }],
      max_completion_tokens: 30, seed: 7, user: 'end-user-1', logprobs: true, top_logprobs: 2,
    }).withResponse();
    assert.equal(response.status, 200);
    assert.equal(data.choices[0].message.content, 'Hello! How can I help?');
    assert.equal(response.headers.get('x-edgeway-dropped-params'), 'logprobs,top_logprobs,user');
    const sent = await lastUpstream();
    assert.equal(sent.body.random_seed, 7);
    assert.equal(sent.body.max_tokens, 30);
    for (const gone of ['seed', 'user', 'logprobs', 'top_logprobs', 'max_completion_tokens']) {
      assert.equal(sent.body[gone], undefined, gone);
    }
  });

  test('a stream that asks for usage gets it without stream_options reaching Mistral', async () => {
    let text = '';
    let usage;
    const stream = await openai().chat.completions.create({
      model: 'mistral-large', messages: [{ role: 'user', content: 'Hi' }], stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, 'Hello! How can I help?');
    assert.equal(usage?.completion_tokens, 7);
    const sent = await lastUpstream();
    assert.equal(sent.body.stream_options, undefined);
  });

  test('the Anthropic SDK through the mistral row: translated, then the row applied', async () => {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
    const msg = await anthropic.messages.create({
      model: 'mistral-large', max_tokens: 50, metadata: { user_id: 'u-9' },
      messages: [{ role: 'user', content: 'Hi' }],
    });
    assert.equal(msg.content[0].text, 'Hello! How can I help?');
    const sent = await lastUpstream();
    assert.equal(sent.body.max_tokens, 50);
    assert.equal(sent.body.user, undefined, 'the metadata user is refused by Mistral: dropped');
  });
});
