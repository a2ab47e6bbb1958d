// A mock provider speaking three wire formats, answering from the shared
// translation fixtures (tests/fixtures/translation/cases): the same bytes the
// Rust golden tests feed the translators.
//
//   POST /openai/v1/chat/completions                      OpenAI chat
//   POST /anthropic/v1/messages                           Anthropic Messages
//   POST /gemini/v1beta/models/{model}:generateContent    Gemini
//   POST /gemini/v1beta/models/{model}:streamGenerateContent?alt=sse
//
// The upstream model name picks the fixture: `case:<name>` serves that case;
// anything else plays a tool-using assistant: it calls tools (case
// `tool_calls`) when tools are offered and the conversation does not end with
// tool results, and answers with text (case `text_basic`) otherwise.
//   POST /azure/openai/deployments/{deployment}/chat/completions?api-version=…
//                                                         Azure OpenAI (OpenAI chat)
//   POST /mistral/v1/chat/completions                     OpenAI chat with Mistral's
//        strict schema: any other top-level field is a 422 `extra_forbidden`
//   POST /notools/v1/chat/completions                     OpenAI chat from a model without
//        native tools: a body with `tools` is a 400; offered tools in the system prompt
//        are answered with a tool-call object as text, a tool result with a sentence
// GET /__requests returns every request received (body, path, credential
// header names), POST /__reset clears them.
import http from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const CASES = path.resolve(import.meta.dirname, '../fixtures/translation/cases');

function fixture(caseName, file) {
  const p = path.join(CASES, caseName, file);
  return existsSync(p) ? readFileSync(p) : null;
}

function endsWithToolResults(dialect, body) {
  if (dialect === 'openai_chat') return body.messages?.at(-1)?.role === 'tool';
  if (dialect === 'anthropic') {
    const last = body.messages?.at(-1);
    return last?.role === 'user' && Array.isArray(last.content) && last.content.some((b) => b.type === 'tool_result');
  }
  const last = body.contents?.at(-1);
  return (last?.parts ?? []).some((p) => p.functionResponse);
}

// The top-level fields Mistral's chat schema takes (its API reference).
const MISTRAL_FIELDS = new Set(['model', 'messages', 'temperature', 'top_p', 'max_tokens', 'stream', 'stop',
  'random_seed', 'response_format', 'tools', 'tool_choice', 'presence_penalty', 'frequency_penalty', 'n',
  'prediction', 'parallel_tool_calls', 'prompt_mode', 'safe_prompt']);

function hasTools(dialect, body) {
  if (dialect === 'gemini') return (body.tools ?? []).some((t) => (t.functionDeclarations ?? []).length > 0);
  return (body.tools ?? []).length > 0;
}

/// A model without native tools that follows the gateway's emulation prompt.
async function answerWithoutTools(body, res) {
  if (body.tools) {
    res.writeHead(400, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ error: { message: 'this model does not support tools', type: 'invalid_request_error' } }));
  }
  const system = (body.messages ?? []).filter((m) => m.role === 'system').map((m) => m.content).join('\n');
  const last = body.messages?.at(-1);
  const lastText = typeof last?.content === 'string' ? last.content : (last?.content ?? []).map((p) => p.text ?? '').join('');
  let text;
  if (lastText.startsWith('Tool result')) text = `Done: ${lastText.split('\n').slice(1).join(' ')}`;
  else if (system.includes('To call tools')) text = JSON.stringify({ tool_calls: [{ name: 'get_weather', arguments: { location: 'Paris' } }] });
  else text = 'No tools were offered.';
  const usage = { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 };
  const base = { id: 'chatcmpl-notools', created: 1700000000, model: body.model };
  if (!body.stream) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }], usage }));
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const chunk = (delta, finish = null) => `data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  res.write(chunk({ role: 'assistant', content: '' }));
  for (let i = 0; i < text.length; i += 7) {
    res.write(chunk({ content: text.slice(i, i + 7) }));
    await new Promise((r) => setTimeout(r, 1));
  }
  res.write(chunk({}, 'stop'));
  res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage })}\n\n`);
  res.end('data: [DONE]\n\n');
}

export function createDialectMock() {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://mock');
    if (req.method === 'GET' && url.pathname === '/__requests') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(requests));
    }
    if (req.method === 'POST' && url.pathname === '/__reset') {
      requests.length = 0;
      res.writeHead(204);
      return res.end();
    }
    const chunks = [];
    for await (const c of req) chunks.push(c);
    let body = {};
    try { body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'); } catch {}
    let dialect;
    let model;
    let stream = false;
    let m;
    if (url.pathname === '/openai/v1/chat/completions') {
      dialect = 'openai_chat'; model = body.model; stream = Boolean(body.stream);
    } else if ((m = /^\/azure\/openai\/deployments\/([^/]+)\/chat\/completions$/.exec(url.pathname))) {
      dialect = 'openai_chat'; model = decodeURIComponent(m[1]); stream = Boolean(body.stream);
    } else if (url.pathname === '/notools/v1/chat/completions') {
      requests.push({ dialect: 'notools', path: url.pathname, model: body.model, stream: Boolean(body.stream), body, credentialHeaders: [] });
      return answerWithoutTools(body, res);
    } else if (url.pathname === '/mistral/v1/chat/completions') {
      const extra = Object.keys(body).filter((k) => !MISTRAL_FIELDS.has(k));
      if (extra.length) {
        res.writeHead(422, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ object: 'error', message: { detail: extra.map((k) => ({ type: 'extra_forbidden', loc: ['body', k], msg: 'Extra inputs are not permitted' })) }, type: 'invalid_request_error' }));
      }
      dialect = 'openai_chat'; model = body.model; stream = Boolean(body.stream);
    } else if (url.pathname === '/anthropic/v1/messages') {
      dialect = 'anthropic'; model = body.model; stream = Boolean(body.stream);
    } else if ((m = /^\/gemini\/v1beta\/models\/(.+):(generateContent|streamGenerateContent)$/.exec(url.pathname))) {
      dialect = 'gemini'; model = decodeURIComponent(m[1]); stream = m[2] === 'streamGenerateContent';
    } else {
      res.writeHead(404, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: `no route ${url.pathname}` } }));
    }
    requests.push({
      dialect, path: url.pathname + url.search, model, stream, body,
      credentialHeaders: ['authorization', 'x-api-key', 'x-goog-api-key', 'api-key'].filter((h) => req.headers[h]),
      anthropicVersion: req.headers['anthropic-version'] ?? null,
    });
    let caseName = String(model ?? '').startsWith('case:') ? String(model).slice(5) : null;
    if (!caseName) caseName = hasTools(dialect, body) && !endsWithToolResults(dialect, body) ? 'tool_calls' : 'text_basic';
    const error = fixture(caseName, `error.${dialect}.json`);
    if (error) {
      const { status, body: errBody } = JSON.parse(error);
      res.writeHead(status, { 'content-type': 'application/json' });
      return res.end(typeof errBody === 'string' ? errBody : JSON.stringify(errBody));
    }
    const file = stream ? `stream.${dialect}.sse` : `response.${dialect}.json`;
    const data = fixture(caseName, file);
    if (!data) {
      res.writeHead(500, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: `fixture ${caseName}/${file} missing` } }));
    }
    res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json' });
    if (!stream) return res.end(data);
    // Send the SSE in a few pieces, split mid-event, as networks do.
    const text = data;
    const step = Math.max(1, Math.ceil(text.length / 5));
    for (let i = 0; i < text.length; i += step) {
      res.write(text.subarray(i, i + step));
      await new Promise((r) => setTimeout(r, 2));
    }
    res.end();
  });
  server.on('connection', (s) => s.setNoDelay(true));
  return { server, requests };
}
