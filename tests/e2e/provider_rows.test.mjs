// Provider quirks as typed rows, end to end: the official SDKs against the
// real worker, with channels of the `azure` and `mistral` rows pointed at a
// mock that checks what each provider checks (Azure's deployment URL,
// `api-version` and `api-key` header; Mistral's strict schema, which answers
// any field outside it with a 422). What the rows declare is what is sent.
// And a channel that emulates tool calls for a model without them.
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
  await stack.adminApi('POST', '/api/channels', {
    id: 'ch-notools', provider: 'openai-compatible', base_url: `${mockUrl}/notools/v1`, api_key: 'nt-key-0000000000000000',
    emulate_tools: true,
    models: [{ name: 'plain-model', upstream_model: 'plain-7b', price }],
  });
  await stack.waitForModel('plain-model');
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

describe('tool-call emulation (a channel whose model has no native tools)', () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a place', parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] } } }];

  test('openai SDK: the reply comes back as tool_calls, and the result turn as text', async () => {
    const messages = [{ role: 'user', content: 'Weather in Paris?' }];
    const first = await openai().chat.completions.create({ model: 'plain-model', messages, tools });
    const call = first.choices[0].message.tool_calls?.[0];
    assert.equal(first.choices[0].finish_reason, 'tool_calls');
    assert.equal(call?.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { location: 'Paris' });
    assert.equal(first.choices[0].message.content ?? null, null);
    const sent = await lastUpstream();
    assert.equal(sent.body.tools, undefined, 'no tools reach the model');
    assert.match(sent.body.messages[0].content, /To call tools/);

    const second = await openai().chat.completions.create({
      model: 'plain-model', tools,
      messages: [...messages, first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: '18°C and sunny' }],
    });
    assert.equal(second.choices[0].finish_reason, 'stop');
    assert.equal(second.choices[0].message.content, 'Done: 18°C and sunny');
    const history = (await lastUpstream()).body.messages;
    assert.deepEqual(JSON.parse(history.at(-2).content), { tool_calls: [{ name: 'get_weather', arguments: { location: 'Paris' } }] },
      'the past call written as the model would');
    assert.match(history.at(-1).content, /^Tool result of `get_weather`|^Tool result for call/);
  });

  test('openai SDK stream: tool call deltas, finish_reason tool_calls', async () => {
    const stream = await openai().chat.completions.create({
      model: 'plain-model', stream: true, tools, messages: [{ role: 'user', content: 'Weather?' }],
    });
    let name = '';
    let args = '';
    let finish;
    let text = '';
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      for (const t of choice.delta?.tool_calls ?? []) {
        name += t.function?.name ?? '';
        args += t.function?.arguments ?? '';
      }
      text += choice.delta?.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
    assert.equal(name, 'get_weather');
    assert.deepEqual(JSON.parse(args), { location: 'Paris' });
    assert.equal(text, '', 'the call is not also shown as text');
    assert.equal(finish, 'tool_calls');
  });

  test('Anthropic SDK: tool_use blocks; tool_choice none drops the tools without describing them', async () => {
    const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
    const anthropicTools = [{ name: 'get_weather', description: 'Weather', input_schema: tools[0].function.parameters }];
    const msg = await anthropic.messages.create({
      model: 'plain-model', max_tokens: 100, tools: anthropicTools, messages: [{ role: 'user', content: 'Weather?' }],
    });
    assert.equal(msg.stop_reason, 'tool_use');
    const use = msg.content.find((b) => b.type === 'tool_use');
    assert.deepEqual([use?.name, use?.input], ['get_weather', { location: 'Paris' }]);
    const none = await anthropic.messages.create({
      model: 'plain-model', max_tokens: 100, tools: anthropicTools, tool_choice: { type: 'none' },
      messages: [{ role: 'user', content: 'Weather?' }],
    });
    assert.equal(none.content[0].text, 'No tools were offered.');
    const sent = await lastUpstream();
    assert.equal(sent.body.tools, undefined);
  });
});
