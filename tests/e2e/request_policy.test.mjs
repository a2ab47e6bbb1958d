// The operator's request policy, end to end: rules set through the admin API
// reach the real worker in the routing config, and the official SDKs see a
// block rule's refusal in their own error shape (naming the rule, nothing
// billed) and a replace rule's rewrite in what the upstream received (the
// built-in mock echoes the prompt back).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startStack, keyDigest } from './stack.mjs';

let stack;
let key;

const RULES = [
  { name: 'card-number', pattern: String.raw`\b\d{4}(?:[ -]?\d{4}){3}\b`, action: 'replace', replacement: '[card]' },
  { name: 'no-secrets', pattern: 'top secret', action: 'block', case_insensitive: true },
  { name: 'zh-confidential', pattern: '机密', action: 'block' },
];

before(async () => {
  stack = await startStack();
  key = (await stack.adminApi('POST', '/api/keys', { name: 'policy e2e' })).key;
  const put = await stack.adminApi('PUT', '/api/policy', { rules: RULES });
  assert.equal(put.edge_synced, true);
  // The push reaches KV at once; wait until the worker applies the rules.
  const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
  let served = 0;
  for (let i = 0; i < 80; i++) {
    const r = await openai.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'top secret' }] }).catch((e) => e);
    if (r?.status === 400) break;
    served += 1;
    await new Promise((r) => setTimeout(r, 250));
  }
  // Probes served before the rules arrived are billed: wait for their rows.
  for (let i = 0; i < 120 && (await usageRows()).length < served; i++) await new Promise((r) => setTimeout(r, 250));
});

after(async () => {
  await stack?.stop();
});

const usageRows = async () =>
  (await stack.internal('GET', `/internal/usage/stats?key_digest=${keyDigest(key)}&limit=200`)).events;

test('a block rule refuses with a 400 naming it, in each SDK\'s error shape, and bills nothing', async () => {
  const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
  const before = (await usageRows()).length;
  const refused = await openai.chat.completions.create({
    model: 'mock-1', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'This is TOP SECRET.' }],
  }).catch((e) => e);
  assert.ok(refused instanceof OpenAI.BadRequestError, String(refused));
  assert.equal(refused.code, 'request_policy');
  assert.match(refused.message, /request policy \(rule `no-secrets`\)/);

  const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: key, maxRetries: 0 });
  const blocked = await anthropic.messages.create({
    model: 'mock-1', max_tokens: 20, system: 'top secret instructions', messages: [{ role: 'user', content: 'hi' }],
  }).catch((e) => e);
  assert.ok(blocked instanceof Anthropic.BadRequestError, String(blocked));
  assert.equal(blocked.error?.error?.type, 'invalid_request_error');
  assert.match(blocked.message, /no-secrets/);

  const gemini = new GoogleGenAI({ apiKey: key, httpOptions: { baseUrl: stack.gatewayUrl } });
  const zh = await gemini.models.generateContent({ model: 'mock-1', contents: '这是机密文件' }).catch((e) => e);
  assert.equal(zh.status, 400, String(zh));
  assert.match(zh.message, /zh-confidential/);

  // The stream too is refused before anything is sent.
  const stream = await openai.chat.completions.create({
    model: 'mock-1', stream: true, messages: [{ role: 'user', content: 'top secret' }],
  }).catch((e) => e);
  assert.equal(stream.status, 400);

  // An allowed request afterwards is the only new usage row.
  const ok = await openai.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'hello' }] });
  assert.match(ok.choices[0].message.content, /You said: "hello"/);
  let rows = [];
  for (let i = 0; i < 120 && rows.length < before + 1; i++) {
    rows = await usageRows();
    if (rows.length < before + 1) await new Promise((r) => setTimeout(r, 250));
  }
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await usageRows()).length, before + 1, 'the refused requests left no usage row');
});

test('a replace rule rewrites the prompt before it goes anywhere, stream and not, any dialect', async () => {
  const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
  const reply = await openai.chat.completions.create({
    model: 'mock-1', messages: [{ role: 'user', content: 'charge 4111 1111 1111 1111 today' }],
  });
  assert.match(reply.choices[0].message.content, /You said: "charge \[card\] today"/);
  assert.doesNotMatch(reply.choices[0].message.content, /4111/);

  let text = '';
  const stream = await openai.chat.completions.create({
    model: 'mock-1', stream: true, messages: [{ role: 'user', content: 'card 4111-1111-1111-1111' }],
  });
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.match(text, /card \[card\]/);

  const anthropic = new Anthropic({ baseURL: stack.gatewayUrl, apiKey: key, maxRetries: 0 });
  const msg = await anthropic.messages.create({
    model: 'mock-1', max_tokens: 64, messages: [{ role: 'user', content: 'my card is 4111111111111111' }],
  });
  assert.match(msg.content[0].text, /my card is \[card\]/);
});

test('rules that do not compile are refused by the admin and change nothing at the edge', async () => {
  await assert.rejects(
    stack.adminApi('PUT', '/api/policy', { rules: [{ name: 'broken', pattern: '(unclosed', action: 'block' }] }),
    /→ 400: .*rule `broken`/,
  );
  const openai = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0 });
  const still = await openai.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'top secret' }] }).catch((e) => e);
  assert.equal(still.status, 400, 'the stored rules still apply');
});
