// A mock model provider speaking OpenAI's Chat Completions format (and the
// legacy completions and embeddings endpoints), for the end-to-end tests and
// the benchmarks. It stands where the outside world is.
//
// Behaviour is chosen by the *upstream* model name the gateway sends, so a
// test selects it through channel configuration, exactly as an operator would:
//   <any>               normal completion (deterministic), streaming with 8 deltas
//   fail-500            HTTP 500 with a JSON error body
//   fail-429            HTTP 429
//   fail-401-echo       HTTP 401 whose message echoes the Authorization header (a leaky provider)
//   fail-400            HTTP 400 invalid_request_error
//   hang                never answers (until the client gives up)
//   cut-stream          streams two deltas, then closes without finish_reason or [DONE]
//   no-usage            never reports usage
//   zero-usage          reports usage of exactly zero tokens
//   paced-<ms>          streams deltas every <ms> milliseconds
//   slow-<ms>           waits <ms> before answering
//   pause-usage-<ms>    streams deltas 40 ms apart, then waits <ms> between the finish chunk and the
//                       usage chunk (to disconnect a client exactly before the usage arrives)
//   retry-after-<s>     HTTP 429 (a rate limit) with `Retry-After: <s>`
//   quota-429           HTTP 429 insufficient_quota (an exhausted account)
//   stall-after-role    streams: headers and the role chunk, then silence
//   stall-after-content streams: headers, the role chunk and one delta, then silence
//   die-before-content  streams: headers and the role chunk, then the connection is reset
//   die-mid-stream      streams: headers and two deltas, then the connection is reset
//   think-<ms>          streams: headers at once, the first delta after <ms> (a long thinking phase)
// Control endpoints: GET /__stats (requests, in-flight, max in-flight), GET /__last (last
// request body and headers minus credentials), POST /__reset, POST /__switch?model=switch-x&status=500
// (a `switch-*` model answers that status from then on; status=200 heals it). A key containing
// `revoked` is refused with 401, and so is a key whose last 8 characters were revoked with
// POST /__revoke?suffix=XXXXXXXX&revoked=1 (revoked=0 takes it back); stats.byKey counts
// calls by the key's last 8 characters, stats.modelLists the GET /models calls by the same.
import http from 'node:http';

export function createMockUpstream() {
  const stats = { requests: 0, inFlight: 0, maxInFlight: 0, byModel: {}, byKey: {}, modelLists: {} };
  let last = null;
  const revokedSuffixes = new Set();
  const refused = (authorization) => {
    const key = String(authorization ?? '');
    return key.includes('revoked') || revokedSuffixes.has(key.slice(-8));
  };

  const completion = (model, text, usage) => ({
    id: 'chatcmpl-upstream-1', object: 'chat.completion', created: 1700000000, model,
    choices: [{ index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: 'stop' }],
    ...(usage === undefined ? {} : { usage }),
  });
  const chunk = (model, delta, finish = null, withUsageNull = false) => ({
    id: 'chatcmpl-upstream-1', object: 'chat.completion.chunk', created: 1700000000, model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(withUsageNull ? { usage: null } : {}),
  });
  const WORDS = ['Hello', ' from', ' the', ' mock', ' upstream', ' over', ' SSE', '.'];
  const usageFor = (model) =>
    model === 'zero-usage'
      ? { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }
      : { prompt_tokens: 11, completion_tokens: 8, total_tokens: 19, prompt_tokens_details: { cached_tokens: 3 }, completion_tokens_details: { reasoning_tokens: 0 } };

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Embeddings: vector i of input n is [n + 1, i / 10, …] of `dimensions` (default 3),
  // as floats or base64 little-endian float32; usage 4 tokens per input.
  const embeddings = (res, body, model) => {
    const inputs = Array.isArray(body.input) && typeof body.input[0] !== 'number' ? body.input : [body.input];
    const dims = body.dimensions ?? 3;
    const data = inputs.map((_, n) => {
      const vector = Array.from({ length: dims }, (_, i) => (i === 0 ? n + 1 : i / 10));
      const embedding = body.encoding_format === 'base64'
        ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector;
      return { object: 'embedding', index: n, embedding };
    });
    const tokens = 4 * inputs.length;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ object: 'list', data, model, usage: { prompt_tokens: tokens, total_tokens: tokens } }));
  };

  // Moderations (no usage, as OpenAI's answer has none): "bad" inputs are flagged.
  const moderations = (res, body, model) => {
    const inputs = Array.isArray(body.input) ? body.input : [body.input];
    const results = inputs.map((text) => {
      const flagged = String(typeof text === 'string' ? text : text?.text ?? '').includes('bad');
      return { flagged, categories: { violence: flagged }, category_scores: { violence: flagged ? 0.9 : 0.01 } };
    });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'modr-upstream-1', model, results }));
  };

  // Rerank in Jina's shape: documents scored by their index, usage 6 tokens.
  const rerank = (res, body, model) => {
    const results = body.documents.map((_, index) => ({ index, relevance_score: 1 / (index + 1) }));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ model, results: results.slice(0, body.top_n ?? results.length), usage: { total_tokens: 6, prompt_tokens: 6 } }));
  };

  // Legacy text completions: the same words as chat, whole or streamed; usage 5 prompt + 8 completion.
  const textCompletion = (res, body, model) => {
    const usage = { prompt_tokens: 5, completion_tokens: 8, total_tokens: 13 };
    const choice = (text, finish) => ({ text, index: 0, logprobs: null, finish_reason: finish });
    const base = { id: 'cmpl-upstream-1', object: 'text_completion', created: 1700000000, model };
    if (!body.stream) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ ...base, choices: [choice(WORDS.join(''), 'stop')], usage }));
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (const w of WORDS) res.write(`data: ${JSON.stringify({ ...base, choices: [choice(w, null)] })}\n\n`);
    res.write(`data: ${JSON.stringify({ ...base, choices: [choice('', 'stop')] })}\n\n`);
    if (body.stream_options?.include_usage === true) res.write(`data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`);
    res.end('data: [DONE]\n\n');
  };

  const switches = {};
  const server = http.createServer(async (req, res) => {
    if (req.method === 'GET' && req.url === '/__stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(stats));
    }
    if (req.method === 'GET' && req.url === '/__last') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(last));
    }
    if (req.method === 'POST' && req.url.startsWith('/__switch?')) {
      const q = new URL(req.url, 'http://mock').searchParams;
      switches[q.get('model')] = Number(q.get('status'));
      res.writeHead(204);
      return res.end();
    }
    if (req.method === 'POST' && req.url === '/__reset') {
      Object.assign(stats, { requests: 0, inFlight: 0, maxInFlight: 0, byModel: {}, byKey: {}, modelLists: {} });
      last = null;
      res.writeHead(204);
      return res.end();
    }
    if (req.method === 'POST' && req.url.startsWith('/__revoke?')) {
      const q = new URL(req.url, 'http://mock').searchParams;
      if (q.get('revoked') === '0') revokedSuffixes.delete(q.get('suffix'));
      else revokedSuffixes.add(q.get('suffix'));
      res.writeHead(204);
      return res.end();
    }
    if (req.method === 'GET' && req.url.endsWith('/models')) {
      const suffix = String(req.headers.authorization ?? '').slice(-8);
      stats.modelLists[suffix] = (stats.modelLists[suffix] ?? 0) + 1;
      if (refused(req.headers.authorization)) {
        res.writeHead(401, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' } }));
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ object: 'list', data: [{ id: 'mock-upstream', object: 'model', owned_by: 'mock' }] }));
    }
    const family = req.url.endsWith('/chat/completions') ? 'chat'
      : req.url.endsWith('/completions') ? 'completions'
        : req.url.endsWith('/embeddings') ? 'embeddings'
          : req.url.endsWith('/moderations') ? 'moderations'
            : req.url.endsWith('/rerank') ? 'rerank' : null;
    if (req.method !== 'POST' || !family) {
      res.writeHead(404, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: 'not found' } }));
    }
    const chunks = [];
    for await (const c of req) chunks.push(c);
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: 'bad json', type: 'invalid_request_error' } }));
    }
    const model = String(body.model ?? '');
    const headers = { ...req.headers };
    const authorization = headers.authorization;
    delete headers.authorization;
    last = { body, headers, hadAuthorization: Boolean(authorization), path: req.url };
    stats.requests += 1;
    stats.byModel[model] = (stats.byModel[model] ?? 0) + 1;
    stats.inFlight += 1;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    let released = false;
    const release = () => { if (!released) { released = true; stats.inFlight -= 1; } };
    res.on('close', release);

    stats.byKey[(authorization ?? '').slice(-8)] = (stats.byKey[(authorization ?? '').slice(-8)] ?? 0) + 1;
    if (model === 'hang') return; // never answer
    if (refused(authorization)) {
      res.writeHead(401, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', code: 'invalid_api_key' } }));
    }
    if (model.startsWith('switch-') && (switches[model] ?? 200) !== 200) {
      res.writeHead(switches[model], { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: `switched to ${switches[model]}`, type: 'server_error' } }));
    }
    const retryAfter = /^retry-after-(\d+)$/.exec(model);
    if (retryAfter) {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': retryAfter[1] });
      return res.end(JSON.stringify({ error: { message: 'Rate limit reached, retry later', type: 'rate_limit_error' } }));
    }
    if (model === 'quota-429') {
      res.writeHead(429, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message: 'You exceeded your current quota, please check your plan and billing details.', type: 'insufficient_quota', code: 'insufficient_quota' } }));
    }
    const slow = /^slow-(\d+)$/.exec(model);
    if (slow) await sleep(Number(slow[1]));
    const fail = /^fail-(\d+)/.exec(model);
    if (fail) {
      const status = Number(fail[1]);
      const message = model === 'fail-401-echo'
        ? `Incorrect API key provided: ${String(authorization ?? '').replace(/^Bearer /, '')}`
        : `mock upstream failure ${status}`;
      res.writeHead(status, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { message, type: status === 400 ? 'invalid_request_error' : 'server_error' } }));
    }
    if (family === 'embeddings') return embeddings(res, body, model);
    if (family === 'moderations') return moderations(res, body, model);
    if (family === 'rerank') return rerank(res, body, model);
    if (family === 'completions') return textCompletion(res, body, model);
    const usage = model === 'no-usage' ? undefined : usageFor(model);
    if (!body.stream) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(completion(model, WORDS.join(''), usage)));
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const wantsUsage = body.stream_options?.include_usage === true;
    const send = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
    const paced = /^paced-(\d+)$/.exec(model);
    const pauseUsage = /^pause-usage-(\d+)$/.exec(model);
    const gap = paced ? Number(paced[1]) : pauseUsage ? 40 : 0;
    send(chunk(model, { role: 'assistant', content: '' }, null, wantsUsage));
    if (model === 'stall-after-role') return; // silence, until the client gives up
    // Let what was written reach the gateway, then reset the connection.
    if (model === 'die-before-content') return sleep(50).then(() => res.destroy());
    const think = /^think-(\d+)$/.exec(model);
    if (think) await sleep(Number(think[1]));
    const words = model === 'cut-stream' || model === 'die-mid-stream' ? WORDS.slice(0, 2) : model === 'stall-after-content' ? WORDS.slice(0, 1) : WORDS;
    for (const w of words) {
      if (gap) await sleep(gap);
      if (res.destroyed) return;
      send(chunk(model, { content: w }, null, wantsUsage));
    }
    if (model === 'stall-after-content') return;
    if (model === 'die-mid-stream') return sleep(50).then(() => res.destroy());
    if (model === 'cut-stream') return res.end();
    send(chunk(model, {}, 'stop', wantsUsage));
    if (pauseUsage) {
      await sleep(Number(pauseUsage[1]));
      if (res.destroyed) return;
    }
    if (wantsUsage && usage) send({ id: 'chatcmpl-upstream-1', object: 'chat.completion.chunk', created: 1700000000, model, choices: [], usage });
    res.end('data: [DONE]\n\n');
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (socket) => socket.setNoDelay(true));
  return { server, stats };
}

// Run standalone: node tests/mock-upstream/server.mjs [port]
if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Number(process.argv[2] ?? 9901);
  const { server } = createMockUpstream();
  server.listen(port, '127.0.0.1', () => console.log(`mock upstream on http://127.0.0.1:${port}/v1`));
}
