// End-to-end: conversation state the protocols need, kept at the edge.
// The openai SDK (which cannot carry provider signatures) in a multi-turn
// tool conversation with thinking, against Anthropic- and Gemini-dialect
// upstreams (the dialect mock serving the shared `thinking_usage` fixture):
// the second turn's upstream request carries the exact signature the
// upstream issued on the first; state that is not there takes the fallback;
// another key cannot reach it.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let mockUrl;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// What the fixture's upstreams issue.
const ANTHROPIC_THINKING = { type: 'thinking', thinking: 'The user wants weather; call the tool.', signature: 'EqQBCkYIBxgCKkBanthropic-sig==' };
const ANTHROPIC_REDACTED = { type: 'redacted_thinking', data: 'EmwKAhgBEgy3redacted==' };
const GEMINI_SIGNATURE = 'CiQBgemini-sig==';

before(async () => {
  stack = await startStack();
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  const channel = (id, provider, base, models) => stack.adminApi('POST', '/api/channels', {
    id, provider, base_url: base, api_key: `sk-${id}-secret-0000000000`, models,
  });
  await channel('state-anthropic', 'anthropic', `${mockUrl}/anthropic/v1`, [{ name: 'vault-claude', upstream_model: 'case:thinking_usage', price }]);
  await channel('state-gemini', 'gemini', `${mockUrl}/gemini/v1beta`, [{ name: 'vault-gemini', upstream_model: 'case:thinking_usage', price }]);
  for (let i = 0; i < 40; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes('vault-gemini')) break;
    await sleep(250);
  }
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const lastUpstream = async () => (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { location: { type: 'string' } } } } }];
const openai = (key) => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });

/** The first turn, as the openai SDK gives it back: the assistant message the app appends. */
async function firstTurn(client, model, stream) {
  const request = { model, reasoning_effort: 'low', max_tokens: 4000, tools, messages: [{ role: 'user', content: 'Weather in Paris?' }] };
  if (!stream) {
    const r = await client.chat.completions.create(request);
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    return r.choices[0].message;
  }
  const message = { role: 'assistant', content: '', tool_calls: [] };
  for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
    const delta = chunk.choices[0]?.delta ?? {};
    message.content += delta.content ?? '';
    for (const d of delta.tool_calls ?? []) {
      message.tool_calls[d.index] ??= { id: '', type: 'function', function: { name: '', arguments: '' } };
      if (d.id) message.tool_calls[d.index].id = d.id;
      if (d.function?.name) message.tool_calls[d.index].function.name += d.function.name;
      if (d.function?.arguments) message.tool_calls[d.index].function.arguments += d.function.arguments;
    }
  }
  return message;
}

/** The second turn: the app sends the history back with the tool's result. */
async function secondTurn(client, model, assistant) {
  const messages = [
    { role: 'user', content: 'Weather in Paris?' },
    assistant,
    { role: 'tool', tool_call_id: assistant.tool_calls[0].id, content: '21C' },
  ];
  const { response } = await client.chat.completions
    .create({ model, reasoning_effort: 'low', max_tokens: 4000, tools, messages })
    .withResponse();
  return { state: response.headers.get('x-edgeway-reasoning-state'), sent: (await lastUpstream()).body };
}

describe('signature vault: the openai SDK over thinking upstreams', () => {
  for (const stream of [false, true]) {
    test(`Anthropic: the next turn carries the signed thinking exactly as issued (stream: ${stream})`, async () => {
      const client = openai(stack.keys.main);
      const assistant = await firstTurn(client, 'vault-claude', stream);
      assert.ok(!JSON.stringify(assistant).includes('sig=='), 'the client never sees a signature');
      const { state, sent } = await secondTurn(client, 'vault-claude', assistant);
      assert.equal(state, 'restored');
      assert.equal(sent.thinking?.type, 'enabled', 'thinking stays on');
      const turn = sent.messages[1].content;
      assert.deepEqual(turn[0], ANTHROPIC_THINKING);
      assert.deepEqual(turn[1], ANTHROPIC_REDACTED);
      assert.equal(turn.find((b) => b.type === 'tool_use').id, assistant.tool_calls[0].id);
    });

    test(`Gemini: the next turn's function call carries its thoughtSignature (stream: ${stream})`, async () => {
      const client = openai(stack.keys.main);
      const assistant = await firstTurn(client, 'vault-gemini', stream);
      const { state, sent } = await secondTurn(client, 'vault-gemini', assistant);
      assert.equal(state, 'restored');
      const call = sent.contents[1].parts.find((p) => p.functionCall);
      assert.equal(call.thoughtSignature, GEMINI_SIGNATURE);
    });
  }

  test('state that is not there (another key, or never kept) takes the documented fallback, and says so', async () => {
    const owner = openai(stack.keys.main);
    const assistant = await firstTurn(owner, 'vault-claude', false);
    const other = (await stack.adminApi('POST', '/api/keys', { name: 'vault other key' })).key;
    const stranger = openai(other);
    const { state, sent } = await secondTurn(stranger, 'vault-claude', assistant);
    assert.equal(state, 'fallback');
    assert.equal(sent.thinking, undefined, 'Anthropic: the turn goes without thinking, which Anthropic accepts');
    assert.ok(!JSON.stringify(sent).includes('anthropic-sig'), 'nothing of the first key reached the second');
    const forged = { ...assistant, tool_calls: [{ ...assistant.tool_calls[0], id: 'toolu_never_issued' }] };
    const gemini = await secondTurn(owner, 'vault-gemini', forged);
    assert.equal(gemini.state, 'fallback');
    assert.equal(gemini.sent.contents[1].parts.find((p) => p.functionCall).thoughtSignature, 'skip_thought_signature_validator');
  });

  test('added latency of a vault lookup (figures in the test log)', async (t) => {
    const client = openai(stack.keys.main);
    const assistant = await firstTurn(client, 'vault-claude', false);
    const history = [{ role: 'user', content: 'Weather in Paris?' }, assistant, { role: 'tool', tool_call_id: assistant.tool_calls[0].id, content: '21C' }];
    const time = async (body) => {
      const started = performance.now();
      await client.chat.completions.create(body);
      return performance.now() - started;
    };
    const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const withLookup = [];
    const without = [];
    for (let i = 0; i < 30; i++) {
      // Thinking on: the vault is asked. Thinking off: Anthropic needs no state, no call is made.
      withLookup.push(await time({ model: 'vault-claude', reasoning_effort: 'low', max_tokens: 4000, tools, messages: history }));
      without.push(await time({ model: 'vault-claude', max_tokens: 4000, tools, messages: history }));
    }
    const figures = { with_lookup_ms: median(withLookup).toFixed(1), without_ms: median(without).toFixed(1), added_ms: (median(withLookup) - median(without)).toFixed(1) };
    t.diagnostic(`vault lookup, median of 30 under wrangler dev: ${JSON.stringify(figures)}`);
    assert.ok(median(withLookup) - median(without) < 100, JSON.stringify(figures));
  });
});
