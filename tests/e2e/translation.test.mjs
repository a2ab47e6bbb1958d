// End-to-end protocol translation: each official SDK against the real worker,
// with upstreams speaking the *other* dialects (a mock serving the shared
// translation fixtures). Multi-turn tool use over each pair, stream and not.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startStack, freePort } from './stack.mjs';
import { createDialectMock } from '../mock-upstream/dialects.mjs';

let stack;
let dialectMock;
let mockUrl;

// Public model name → upstream dialect channel.
const MODELS = { openai: 'up-openai', anthropic: 'up-claude', gemini: 'up-gemini' };

before(async () => {
  stack = await startStack();
  dialectMock = createDialectMock();
  const port = await freePort();
  await new Promise((r) => dialectMock.server.listen(port, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${port}`;
  const price = { input: 1_000_000, output: 2_000_000 };
  const channel = (id, provider, base, model, extra = []) => stack.adminApi('POST', '/api/channels', {
    id, provider, base_url: base, api_key: `sk-${id}-secret-0000000000`,
    models: [{ name: model, upstream_model: 'upstream-model', price }, ...extra],
  });
  await channel('ch-openai', 'openai-compatible', `${mockUrl}/openai/v1`, MODELS.openai);
  await channel('ch-anthropic', 'anthropic', `${mockUrl}/anthropic/v1`, MODELS.anthropic, [
    { name: 'claude-thinking-fixture', upstream_model: 'case:thinking_usage', price },
    { name: 'claude-overloaded', upstream_model: 'case:upstream_errors', price },
  ]);
  await channel('ch-gemini', 'gemini', `${mockUrl}/gemini/v1beta`, MODELS.gemini, [
    { name: 'gemini-safety', upstream_model: 'case:finish_safety', price },
  ]);
  // The routing push reaches KV at once; wait until the worker sees it.
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

const lastUpstream = async () => {
  const all = await (await fetch(`${mockUrl}/__requests`)).json();
  return all.at(-1);
};

const WEATHER = { name: 'get_weather', description: 'Weather for a place', schema: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] } };
const TIME = { name: 'get_time', description: 'Time in a zone', schema: { type: 'object', properties: { timezone: { type: 'string' } }, required: ['timezone'] } };

describe('openai SDK → Anthropic and Gemini upstreams', () => {
  const client = () => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: stack.keys.main, maxRetries: 0 });
  const tools = [WEATHER, TIME].map((t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.schema } }));

  for (const upstream of ['anthropic', 'gemini']) {
    test(`text, stream with usage, and multi-turn tools via ${upstream}`, async () => {
      const openai = client();
      const plain = await openai.chat.completions.create({ model: MODELS[upstream], messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }] });
      assert.equal(plain.choices[0].message.content, 'Hello! How can I help?');
      assert.equal(plain.choices[0].finish_reason, 'stop');
      assert.equal(plain.usage.prompt_tokens, 19);
      assert.equal(plain.usage.completion_tokens, 7);
      const sent = await lastUpstream();
      assert.equal(sent.dialect, upstream);
      if (upstream === 'anthropic') {
        assert.equal(sent.body.system, 'Be brief.');
        assert.ok(sent.body.max_tokens > 0, 'Anthropic requires max_tokens: the gateway injects one');
        assert.deepEqual(sent.credentialHeaders, ['x-api-key']);
        assert.equal(sent.anthropicVersion, '2023-06-01');
      } else {
        assert.equal(sent.body.systemInstruction.parts[0].text, 'Be brief.');
        assert.deepEqual(sent.credentialHeaders, ['x-goog-api-key']);
      }

      let text = '';
      let usage = null;
      const stream = await openai.chat.completions.create({ model: MODELS[upstream], messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } });
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? '';
        if (chunk.usage) usage = chunk.usage;
      }
      assert.equal(text, 'Hello! How can I help?');
      assert.ok(usage && usage.prompt_tokens > 0 && usage.completion_tokens > 0, JSON.stringify(usage));

      for (const streaming of [false, true]) {
        const messages = [{ role: 'user', content: 'Weather in Paris and time in Tokyo?' }];
        let calls = [];
        if (!streaming) {
          const first = await openai.chat.completions.create({ model: MODELS[upstream], messages, tools });
          assert.equal(first.choices[0].finish_reason, 'tool_calls');
          calls = first.choices[0].message.tool_calls;
          messages.push(first.choices[0].message);
        } else {
          const acc = [];
          let finish = null;
          for await (const chunk of await openai.chat.completions.create({ model: MODELS[upstream], messages, tools, stream: true })) {
            const choice = chunk.choices[0];
            if (!choice) continue;
            finish = choice.finish_reason ?? finish;
            for (const d of choice.delta?.tool_calls ?? []) {
              acc[d.index] ??= { id: '', type: 'function', function: { name: '', arguments: '' } };
              if (d.id) acc[d.index].id = d.id;
              if (d.function?.name) acc[d.index].function.name += d.function.name;
              if (d.function?.arguments) acc[d.index].function.arguments += d.function.arguments;
            }
          }
          assert.equal(finish, 'tool_calls', `finish reason tool_calls via ${upstream}, streaming`);
          calls = acc;
          messages.push({ role: 'assistant', content: null, tool_calls: calls });
        }
        assert.deepEqual(calls.map((c) => c.function.name), ['get_weather', 'get_time']);
        assert.deepEqual(JSON.parse(calls[0].function.arguments), { location: 'Paris' });
        assert.deepEqual(JSON.parse(calls[1].function.arguments), { timezone: 'Asia/Tokyo' });
        assert.ok(calls.every((c) => c.id), 'every call has an id (synthesized for Gemini)');
        assert.notEqual(calls[0].id, calls[1].id);
        messages.push({ role: 'tool', tool_call_id: calls[0].id, content: '21C, sunny' });
        messages.push({ role: 'tool', tool_call_id: calls[1].id, content: '09:00' });
        const final = await openai.chat.completions.create({ model: MODELS[upstream], messages, tools });
        assert.equal(final.choices[0].message.content, 'Hello! How can I help?');
        const turn2 = await lastUpstream();
        if (upstream === 'anthropic') {
          const results = turn2.body.messages.at(-1).content.filter((b) => b.type === 'tool_result');
          assert.deepEqual(results.map((r) => r.tool_use_id), calls.map((c) => c.id), 'every tool call answered, in one user turn');
        } else {
          const responses = turn2.body.contents.at(-1).parts.map((p) => p.functionResponse?.name);
          assert.deepEqual(responses, ['get_weather', 'get_time'], 'functionResponse carries the function name');
        }
      }
    });
  }

  test('Responses API client → Anthropic upstream', async () => {
    const openai = client();
    const resp = await openai.responses.create({ model: MODELS.anthropic, input: 'Hi', instructions: 'Be brief.' });
    assert.equal(resp.output_text, 'Hello! How can I help?');
    assert.equal(resp.status, 'completed');
    const events = [];
    let text = '';
    for await (const ev of await openai.responses.create({ model: MODELS.gemini, input: 'Hi', stream: true })) {
      events.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
    }
    assert.equal(text, 'Hello! How can I help?');
    assert.equal(events[0], 'response.created');
    assert.equal(events.at(-1), 'response.completed');
    assert.ok(events.indexOf('response.output_item.added') < events.indexOf('response.output_text.delta'));
  });

  test('safety stop from Gemini is content_filter, never an empty stop', async () => {
    const r = await client().chat.completions.create({ model: 'gemini-safety', messages: [{ role: 'user', content: 'x' }] });
    assert.equal(r.choices[0].finish_reason, 'content_filter');
  });
});

describe('@anthropic-ai/sdk → OpenAI and Gemini upstreams', () => {
  const client = () => new Anthropic({ baseURL: stack.gatewayUrl, apiKey: stack.keys.main, maxRetries: 0 });
  const tools = [WEATHER, TIME].map((t) => ({ name: t.name, description: t.description, input_schema: t.schema }));

  for (const upstream of ['openai', 'gemini']) {
    test(`messages, stream and multi-turn tools via ${upstream}`, async () => {
      const anthropic = client();
      const msg = await anthropic.messages.create({ model: MODELS[upstream], max_tokens: 256, system: 'Be brief.', messages: [{ role: 'user', content: 'Hi' }] });
      assert.equal(msg.type, 'message');
      assert.equal(msg.content[0].text, 'Hello! How can I help?');
      assert.equal(msg.stop_reason, 'end_turn');
      assert.equal(msg.usage.input_tokens, 19);
      assert.equal(msg.usage.output_tokens, 7);

      const stream = anthropic.messages.stream({ model: MODELS[upstream], max_tokens: 256, messages: [{ role: 'user', content: 'Hi' }] });
      let text = '';
      stream.on('text', (t) => { text += t; });
      const final = await stream.finalMessage();
      assert.equal(text, 'Hello! How can I help?');
      assert.equal(final.stop_reason, 'end_turn');
      assert.ok(final.usage.output_tokens > 0);

      for (const streaming of [false, true]) {
        const messages = [{ role: 'user', content: 'Weather in Paris and time in Tokyo?' }];
        const first = streaming
          ? await anthropic.messages.stream({ model: MODELS[upstream], max_tokens: 256, messages, tools }).finalMessage()
          : await anthropic.messages.create({ model: MODELS[upstream], max_tokens: 256, messages, tools });
        assert.equal(first.stop_reason, 'tool_use', `tool_use stop via ${upstream} (stream: ${streaming})`);
        const uses = first.content.filter((b) => b.type === 'tool_use');
        assert.deepEqual(uses.map((u) => u.name), ['get_weather', 'get_time']);
        assert.deepEqual(uses[0].input, { location: 'Paris' });
        assert.deepEqual(uses[1].input, { timezone: 'Asia/Tokyo' });
        messages.push({ role: 'assistant', content: first.content });
        messages.push({ role: 'user', content: uses.map((u, i) => ({ type: 'tool_result', tool_use_id: u.id, content: i ? '09:00' : '21C' })) });
        const answer = await anthropic.messages.create({ model: MODELS[upstream], max_tokens: 256, messages, tools });
        assert.equal(answer.content[0].text, 'Hello! How can I help?');
        const sent = await lastUpstream();
        if (upstream === 'openai') {
          const toolMsgs = sent.body.messages.filter((m) => m.role === 'tool');
          assert.deepEqual(toolMsgs.map((m) => m.tool_call_id), uses.map((u) => u.id));
        } else {
          assert.deepEqual(sent.body.contents.at(-1).parts.map((p) => p.functionResponse?.name), ['get_weather', 'get_time']);
        }
      }
    });
  }

  test('the built-in mock serves Anthropic clients too (translated from its OpenAI form)', async () => {
    const anthropic = client();
    const msg = await anthropic.messages.create({ model: 'mock-1', max_tokens: 64, messages: [{ role: 'user', content: 'Hello!' }] });
    assert.equal(msg.content[0].text, 'Hello from the edgeway mock provider. You said: "Hello!"');
    const ai = new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
    let text = '';
    for await (const chunk of await ai.models.generateContentStream({ model: 'mock-1', contents: 'Hello!' })) text += chunk.text ?? '';
    assert.equal(text, 'Hello from the edgeway mock provider. You said: "Hello!"');
  });

  test('count_tokens is answered by estimate; errors come in Anthropic shape', async () => {
    const anthropic = client();
    const count = await anthropic.messages.countTokens({ model: MODELS.openai, messages: [{ role: 'user', content: 'Hello there, how are you?' }] });
    assert.ok(count.input_tokens > 0);
    await assert.rejects(anthropic.messages.create({ model: 'no-such-model', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }), (e) => {
      assert.ok(e instanceof Anthropic.NotFoundError);
      assert.equal(e.error?.type, 'error');
      assert.equal(e.error?.error?.type, 'not_found_error');
      return true;
    });
    const bad = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: 'sk-ew-wrong', maxRetries: 0 });
    await assert.rejects(bad.messages.create({ model: MODELS.openai, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }), Anthropic.AuthenticationError);
  });
});

describe('@google/genai → OpenAI and Anthropic upstreams', () => {
  const client = () => new GoogleGenAI({ apiKey: stack.keys.main, httpOptions: { baseUrl: stack.gatewayUrl } });
  const functionDeclarations = [WEATHER, TIME].map((t) => ({ name: t.name, description: t.description, parameters: t.schema }));

  for (const upstream of ['openai', 'anthropic']) {
    test(`generateContent, stream and multi-turn function calls via ${upstream}`, async () => {
      const ai = client();
      const res = await ai.models.generateContent({ model: MODELS[upstream], contents: 'Hi', config: { systemInstruction: 'Be brief.' } });
      assert.equal(res.text, 'Hello! How can I help?');
      assert.equal(res.candidates[0].finishReason, 'STOP');
      assert.equal(res.usageMetadata.promptTokenCount, 19);
      assert.equal(res.usageMetadata.candidatesTokenCount, 7);

      let text = '';
      let lastUsage = null;
      for await (const chunk of await ai.models.generateContentStream({ model: MODELS[upstream], contents: 'Hi' })) {
        text += chunk.text ?? '';
        if (chunk.usageMetadata) lastUsage = chunk.usageMetadata;
      }
      assert.equal(text, 'Hello! How can I help?');
      assert.ok(lastUsage?.totalTokenCount > 0);

      for (const streaming of [false, true]) {
        const contents = [{ role: 'user', parts: [{ text: 'Weather in Paris and time in Tokyo?' }] }];
        const config = { tools: [{ functionDeclarations }] };
        let calls = [];
        let modelParts = [];
        if (streaming) {
          for await (const chunk of await ai.models.generateContentStream({ model: MODELS[upstream], contents, config })) {
            calls.push(...(chunk.functionCalls ?? []));
            modelParts.push(...(chunk.candidates?.[0]?.content?.parts ?? []));
          }
        } else {
          const first = await ai.models.generateContent({ model: MODELS[upstream], contents, config });
          calls = first.functionCalls ?? [];
          modelParts = first.candidates[0].content.parts;
        }
        assert.deepEqual(calls.map((c) => c.name), ['get_weather', 'get_time'], `function calls via ${upstream} (stream: ${streaming})`);
        assert.deepEqual(calls[0].args, { location: 'Paris' });
        assert.deepEqual(calls[1].args, { timezone: 'Asia/Tokyo' });
        contents.push({ role: 'model', parts: modelParts });
        contents.push({ role: 'user', parts: calls.map((c, i) => ({ functionResponse: { id: c.id, name: c.name, response: { result: i ? '09:00' : '21C' } } })) });
        const answer = await ai.models.generateContent({ model: MODELS[upstream], contents, config });
        assert.equal(answer.text, 'Hello! How can I help?');
        const sent = await lastUpstream();
        if (upstream === 'openai') {
          const assistant = sent.body.messages.find((m) => m.role === 'assistant');
          const toolMsgs = sent.body.messages.filter((m) => m.role === 'tool');
          assert.equal(toolMsgs.length, 2);
          assert.deepEqual(toolMsgs.map((m) => m.tool_call_id), assistant.tool_calls.map((c) => c.id), 'results paired with calls');
        } else {
          const blocks = sent.body.messages.at(-1).content;
          const uses = sent.body.messages.at(-2).content.filter((b) => b.type === 'tool_use');
          assert.deepEqual(blocks.map((b) => b.tool_use_id), uses.map((u) => u.id));
        }
      }
    });
  }

  test('Gemini errors keep Google shape and status; countTokens works', async () => {
    const ai = client();
    const count = await ai.models.countTokens({ model: MODELS.openai, contents: 'Hello there' });
    assert.ok(count.totalTokens > 0);
    const r = await fetch(`${stack.gatewayUrl}/v1beta/models/no-such-model:generateContent`, {
      method: 'POST', headers: { 'x-goog-api-key': stack.keys.main, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'x' }] }] }),
    });
    assert.equal(r.status, 404);
    const body = await r.json();
    assert.equal(body.error.status, 'NOT_FOUND');
    assert.equal(body.error.code, 404);
  });
});
