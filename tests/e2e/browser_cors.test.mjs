// End-to-end: the official JS SDKs in headless Chromium (Debian `chromium`,
// driven by playwright-core) calling the real worker from another origin, so
// every call goes through CORS: preflights with the SDKs' own headers,
// streams, Retry-After and the request id readable by the page, and no
// browser access to /internal/*. A second stack restricts the origins.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import { startStack, freePort } from './stack.mjs';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let stack;
let restricted;
let page;
let context;
let site;
let siteOrigin;
let otherOrigin;
let workDir;

/** Serves the page and the SDK bundle (built from node_modules) on `port`. */
function serveSite(dir, port) {
  const server = http.createServer((req, res) => {
    const file = req.url.startsWith('/bundle.js') ? 'bundle.js' : 'index.html';
    res.writeHead(200, { 'content-type': file.endsWith('.js') ? 'text/javascript' : 'text/html' });
    res.end(readFileSync(path.join(dir, file)));
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

before(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'edgeway-browser-'));
  const entry = path.join(workDir, 'entry.mjs');
  const { writeFileSync } = await import('node:fs');
  writeFileSync(entry, [
    "import OpenAI from 'openai';",
    "import Anthropic from '@anthropic-ai/sdk';",
    "import { GoogleGenAI } from '@google/genai';",
    'window.SDK = { OpenAI, Anthropic, GoogleGenAI };',
  ].join('\n'));
  await build({
    entryPoints: [entry], bundle: true, format: 'iife', platform: 'browser', outfile: path.join(workDir, 'bundle.js'),
    nodePaths: [path.resolve(import.meta.dirname, '../../node_modules')], logLevel: 'error',
  });
  writeFileSync(path.join(workDir, 'index.html'), '<!doctype html><title>sdk</title><script src="/bundle.js"></script>');
  const sitePort = await freePort();
  site = await serveSite(workDir, sitePort);
  siteOrigin = `http://127.0.0.1:${sitePort}`;
  otherOrigin = `http://localhost:${sitePort}`;

  stack = await startStack();
  stack.keys.limited = (await stack.adminApi('POST', '/api/keys', { name: 'browser rpm', rpm: 1 })).key;
  restricted = await startStack({ vars: { CORS_ALLOW_ORIGINS: siteOrigin } });

  context = await chromium.launchPersistentContext(path.join(workDir, 'profile'), {
    executablePath: CHROMIUM, headless: true, args: FLAGS,
  });
  page = await context.newPage();
  await page.goto(`${siteOrigin}/`);
  await page.waitForFunction(() => window.SDK !== undefined);
});

after(async () => {
  await context?.close();
  await stack?.stop();
  await restricted?.stop();
  await new Promise((r) => (site ? site.close(r) : r()));
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

test('the OpenAI SDK from a browser: chat, stream, the request id and Retry-After readable', async () => {
  const out = await page.evaluate(async ({ gateway, key, limited }) => {
    const client = new window.SDK.OpenAI({ baseURL: `${gateway}/v1`, apiKey: key, dangerouslyAllowBrowser: true, maxRetries: 0 });
    const { data, response } = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    let streamed = '';
    for await (const chunk of await client.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], stream: true })) {
      streamed += chunk.choices[0]?.delta?.content ?? '';
    }
    const slow = new window.SDK.OpenAI({ baseURL: `${gateway}/v1`, apiKey: limited, dangerouslyAllowBrowser: true, maxRetries: 0 });
    await slow.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'one' }] });
    let limitedError = null;
    try {
      await slow.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'two' }] });
    } catch (e) {
      limitedError = { status: e.status, retryAfter: e.headers?.get?.('retry-after') ?? null, requestId: e.headers?.get?.('x-request-id') ?? null };
    }
    return { text: data.choices[0].message.content, requestId: response.headers.get('x-request-id'), streamed, limitedError };
  }, { gateway: stack.gatewayUrl, key: stack.keys.main, limited: stack.keys.limited });
  assert.match(out.text, /edgeway mock provider/);
  assert.match(out.requestId ?? '', /^req_[0-9a-f]{32}$/, 'x-request-id is exposed');
  assert.equal(out.streamed, 'Hello from the mock upstream over SSE.');
  assert.equal(out.limitedError?.status, 429, JSON.stringify(out.limitedError));
  assert.match(out.limitedError.retryAfter ?? '', /^\d+$/, 'Retry-After is exposed');
});

test('the Anthropic SDK from a browser (dangerouslyAllowBrowser): message and stream', async () => {
  const out = await page.evaluate(async ({ gateway, key }) => {
    const client = new window.SDK.Anthropic({ baseURL: gateway, apiKey: key, dangerouslyAllowBrowser: true, maxRetries: 0 });
    const msg = await client.messages.create({ model: 'mock-1', max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    let streamed = '';
    const stream = client.messages.stream({ model: 'mock-1', max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    for await (const event of stream) if (event.type === 'content_block_delta') streamed += event.delta.text ?? '';
    return { text: msg.content[0].text, streamed };
  }, { gateway: stack.gatewayUrl, key: stack.keys.main });
  assert.match(out.text, /edgeway mock provider/);
  assert.match(out.streamed, /edgeway mock provider/);
});

test('the Google GenAI SDK from a browser: generateContent and stream', async () => {
  const out = await page.evaluate(async ({ gateway, key }) => {
    const ai = new window.SDK.GoogleGenAI({ apiKey: key, httpOptions: { baseUrl: gateway } });
    const r = await ai.models.generateContent({ model: 'mock-1', contents: 'hi' });
    let streamed = '';
    for await (const chunk of await ai.models.generateContentStream({ model: 'mock-1', contents: 'hi' })) streamed += chunk.text ?? '';
    return { text: r.text, streamed };
  }, { gateway: stack.gatewayUrl, key: stack.keys.main });
  assert.match(out.text, /edgeway mock provider/);
  assert.match(out.streamed, /edgeway mock provider/);
});

test('no browser access to /internal/*: no preflight, no CORS headers', async () => {
  const blocked = await page.evaluate(async (gateway) => {
    try {
      await fetch(`${gateway}/internal/routing`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{}' });
      return 'reached';
    } catch (e) {
      return `blocked: ${e.name}`;
    }
  }, stack.gatewayUrl);
  assert.equal(blocked, 'blocked: TypeError');
  const preflight = await fetch(`${stack.gatewayUrl}/internal/routing`, { method: 'OPTIONS', headers: { origin: siteOrigin, 'access-control-request-method': 'PUT' } });
  assert.equal(preflight.status, 404);
  assert.equal(preflight.headers.get('access-control-allow-origin'), null);
  const unknown = await fetch(`${stack.gatewayUrl}/nope`, { method: 'OPTIONS', headers: { origin: siteOrigin, 'access-control-request-method': 'POST' } });
  assert.equal(unknown.status, 404);
  const plain = await fetch(`${stack.gatewayUrl}/internal/routing`, { headers: { origin: siteOrigin } });
  assert.equal(plain.headers.get('access-control-allow-origin'), null, 'internal answers carry no CORS headers');
});

test('CORS_ALLOW_ORIGINS: the listed origin is allowed, another is refused', async () => {
  const call = (p) => p.evaluate(async ({ gateway, key }) => {
    const client = new window.SDK.OpenAI({ baseURL: `${gateway}/v1`, apiKey: key, dangerouslyAllowBrowser: true, maxRetries: 0 });
    try {
      const r = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'hi' }] });
      return r.choices[0].message.content.length > 0 ? 'ok' : 'empty';
    } catch (e) {
      return `refused: ${e.constructor.name}`;
    }
  }, { gateway: restricted.gatewayUrl, key: restricted.keys.main });
  assert.equal(await call(page), 'ok');
  const other = await context.newPage();
  await other.goto(`${otherOrigin}/`);
  await other.waitForFunction(() => window.SDK !== undefined);
  assert.match(await call(other), /^refused: APIConnectionError/);
  await other.close();
  const preflight = await fetch(`${restricted.gatewayUrl}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: otherOrigin, 'access-control-request-method': 'POST' } });
  assert.equal(preflight.status, 403);
  assert.equal(preflight.headers.get('access-control-allow-origin'), null);
});
