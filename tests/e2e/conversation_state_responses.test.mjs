// End-to-end: Responses API state over an upstream of another dialect. The
// openai SDK's `responses` API with `store: true` and `previous_response_id`
// against an Anthropic-dialect upstream (the dialect mock): each turn's
// upstream request carries the whole conversation (signed reasoning exactly
// as issued); stored responses can be retrieved and deleted; another key
// cannot reach them; without `store` nothing is kept.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let mockUrl;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  stack = await startStack();
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  await stack.adminApi('POST', '/api/channels', {
    id: 'responses-anthropic', provider: 'anthropic', base_url: `${mockUrl}/anthropic/v1`, api_key: 'sk-responses-anthropic-0000000000',
    models: [
      { name: 'resp-claude', upstream_model: 'claude-mock', price },
      { name: 'resp-claude-thinking', upstream_model: 'case:thinking_usage', price },
    ],
  });
  for (let i = 0; i < 40; i++) {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    if ((await r.text()).includes('resp-claude-thinking')) break;
    await sleep(250);
  }
});

after(async () => {
  await stack?.stop();
  await new Promise((r) => dialectMock?.server.close(r));
});

const lastUpstream = async () => (await (await fetch(`${mockUrl}/__requests`)).json()).at(-1);
const openai = (key) => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
const tools = [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: { location: { type: 'string' } } } }];

/** The text of a response's message items. */
const textOf = (r) => r.output.filter((i) => i.type === 'message').flatMap((i) => i.content).map((c) => c.text ?? '').join('');

/** A streamed Responses turn, read with the SDK: the final response. */
async function streamed(client, request) {
  let completed;
  for await (const event of await client.responses.create({ ...request, stream: true })) {
    if (event.type === 'response.completed') completed = event.response;
  }
  assert.ok(completed, 'the stream completed');
  return completed;
}

describe('Responses state over an Anthropic upstream', () => {
  for (const stream of [false, true]) {
    test(`a three-turn conversation with previous_response_id (stream: ${stream})`, async () => {
      const client = openai(stack.keys.main);
      const turn = (request) => (stream ? streamed(client, request) : client.responses.create(request));
      const first = await turn({ model: 'resp-claude', store: true, tools, input: 'Weather in Paris and the time in Tokyo?' });
      const calls = first.output.filter((i) => i.type === 'function_call');
      assert.equal(calls.length, 2, JSON.stringify(first.output));
      assert.match(first.id, /^resp_/);
      const second = await turn({
        model: 'resp-claude', store: true, tools, previous_response_id: first.id,
        input: calls.map((c) => ({ type: 'function_call_output', call_id: c.call_id, output: c.name === 'get_weather' ? '21C' : '09:00' })),
      });
      assert.equal(textOf(second), 'Hello! How can I help?');
      let sent = (await lastUpstream()).body;
      assert.deepEqual(sent.messages.map((m) => m.role), ['user', 'assistant', 'user'], JSON.stringify(sent.messages));
      assert.equal(sent.messages[0].content[0]?.text ?? sent.messages[0].content, 'Weather in Paris and the time in Tokyo?');
      assert.deepEqual(sent.messages[1].content.filter((b) => b.type === 'tool_use').map((b) => b.id), calls.map((c) => c.call_id));
      assert.deepEqual(sent.messages[2].content.map((b) => b.tool_use_id), calls.map((c) => c.call_id));

      const third = await turn({ model: 'resp-claude', store: true, previous_response_id: second.id, input: 'Thanks! And in Rome?' });
      assert.ok(textOf(third).length > 0);
      sent = (await lastUpstream()).body;
      assert.deepEqual(sent.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user']);
      assert.equal(sent.messages[3].content.find((b) => b.type === 'text').text, 'Hello! How can I help?');
      const last = sent.messages[4].content;
      assert.equal(typeof last === 'string' ? last : last.at(-1).text, 'Thanks! And in Rome?');

      // Retrieve: the response as it was returned, marked stored, linked to its predecessor.
      const got = await client.responses.retrieve(third.id);
      assert.equal(got.id, third.id);
      assert.equal(textOf(got), textOf(third));
      assert.equal(got.previous_response_id, second.id);
      assert.equal(got.store, true);
      // Delete: gone for GET and for previous_response_id.
      const gone = await fetch(`${stack.gatewayUrl}/v1/responses/${second.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${stack.keys.main}` } });
      assert.deepEqual(await gone.json(), { id: second.id, object: 'response', deleted: true });
      await assert.rejects(client.responses.retrieve(second.id), (e) => e.status === 404);
      await assert.rejects(
        client.responses.create({ model: 'resp-claude', previous_response_id: second.id, input: 'again' }),
        (e) => e.status === 400 && e.param === 'previous_response_id',
      );
      await assert.rejects(client.responses.delete(second.id), (e) => e.status === 404);
    });
  }

  test('signed reasoning reaches the next turn exactly as issued', async () => {
    const client = openai(stack.keys.main);
    const first = await client.responses.create({ model: 'resp-claude-thinking', store: true, tools, reasoning: { effort: 'low' }, max_output_tokens: 4000, input: 'Weather in Paris?' });
    const call = first.output.find((i) => i.type === 'function_call');
    await client.responses.create({
      model: 'resp-claude-thinking', tools, reasoning: { effort: 'low' }, max_output_tokens: 4000, previous_response_id: first.id,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: '21C' }],
    });
    const sent = (await lastUpstream()).body;
    assert.equal(sent.thinking?.type, 'enabled');
    assert.deepEqual(sent.messages[1].content[0], { type: 'thinking', thinking: 'The user wants weather; call the tool.', signature: 'EqQBCkYIBxgCKkBanthropic-sig==' });
    assert.deepEqual(sent.messages[1].content[1], { type: 'redacted_thinking', data: 'EmwKAhgBEgy3redacted==' });
  });

  test('another key cannot reach a stored response; without store nothing is kept', async () => {
    const owner = openai(stack.keys.main);
    const kept = await owner.responses.create({ model: 'resp-claude', store: true, input: 'Hello' });
    const other = openai((await stack.adminApi('POST', '/api/keys', { name: 'responses other key' })).key);
    await assert.rejects(other.responses.retrieve(kept.id), (e) => e.status === 404);
    await assert.rejects(other.responses.delete(kept.id), (e) => e.status === 404);
    await assert.rejects(
      other.responses.create({ model: 'resp-claude', previous_response_id: kept.id, input: 'Hi' }),
      (e) => e.status === 400 && /not found/.test(e.message),
    );
    assert.equal((await owner.responses.retrieve(kept.id)).id, kept.id, 'still there for its owner');

    const unstored = await owner.responses.create({ model: 'resp-claude', input: 'Hello' });
    await assert.rejects(owner.responses.retrieve(unstored.id), (e) => e.status === 404);
    const unstoredStream = await streamed(owner, { model: 'resp-claude', input: 'Hello' });
    await assert.rejects(owner.responses.retrieve(unstoredStream.id), (e) => e.status === 404);
  });
});
