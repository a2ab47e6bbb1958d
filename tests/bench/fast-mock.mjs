// A fast mock OpenAI upstream for the benchmark: HTTP/1.1 spoken directly on
// `node:net` sockets with precomputed replies, so that it is never the
// bottleneck (peers.md: direct throughput must be >= 10x any gateway's). The
// richer mock in tests/mock-upstream/ serves the end-to-end tests; this one
// speaks only what the benchmark needs, in the same shapes:
//
//   POST .../chat/completions, non-stream   one chat.completion (Content-Length)
//   POST .../chat/completions, stream       role chunk, 8 content deltas, finish chunk,
//                                           usage chunk when stream_options.include_usage,
//                                           [DONE]; chunked transfer encoding
//   POST .../messages (Anthropic Messages)  the same answer in Anthropic's shape, stream and not
//                                           (message_start, content block, 8 text deltas,
//                                           message_delta with usage, message_stop): the
//                                           upstream of the benchmark's translated path
//   model `paced-<ms>`                      the deltas are sent <ms> apart (each its own write)
//   GET .../models                          a one-model list
//   GET /__stats                            {"requests": n}
// Every socket has TCP_NODELAY. Keep-alive unless the client says close.
//
// Run: node tests/bench/fast-mock.mjs [port]   (prints "fast-mock listening on <port>")
import net from 'node:net';

const WORDS = ['Hello', ' from', ' the', ' mock', ' upstream', ' over', ' SSE', '.'];
const USAGE = {
  prompt_tokens: 11, completion_tokens: 8, total_tokens: 19,
  prompt_tokens_details: { cached_tokens: 3 }, completion_tokens_details: { reasoning_tokens: 0 },
};
const MAX_HEAD = 16 * 1024;
const MAX_BODY = 8 * 1024 * 1024;

const completion = (model) => JSON.stringify({
  id: 'chatcmpl-upstream-1', object: 'chat.completion', created: 1700000000, model,
  choices: [{ index: 0, message: { role: 'assistant', content: WORDS.join('') }, logprobs: null, finish_reason: 'stop' }],
  usage: USAGE,
});
const chunk = (model, delta, finish, usageNull) => JSON.stringify({
  id: 'chatcmpl-upstream-1', object: 'chat.completion.chunk', created: 1700000000, model,
  choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  ...(usageNull ? { usage: null } : {}),
});
const sseEvent = (data) => `data: ${data}\n\n`;
const httpChunk = (text) => {
  const b = Buffer.from(text);
  return Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')]);
};

function jsonReply(status, body, close) {
  const b = Buffer.from(body);
  return Buffer.concat([
    Buffer.from(`HTTP/1.1 ${status} ${status === 200 ? 'OK' : 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${b.length}\r\n${close ? 'connection: close\r\n' : ''}\r\n`),
    b,
  ]);
}

// Anthropic Messages shapes of the same answer.
const ANTHROPIC_USAGE = { input_tokens: 11, output_tokens: 8, cache_read_input_tokens: 3, cache_creation_input_tokens: 0 };
const message = (model) => JSON.stringify({
  id: 'msg_upstream_1', type: 'message', role: 'assistant', model,
  content: [{ type: 'text', text: WORDS.join('') }], stop_reason: 'end_turn', stop_sequence: null, usage: ANTHROPIC_USAGE,
});
const namedEvent = (name, data) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
function anthropicReplies(model) {
  const head = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n');
  const first = httpChunk(
    namedEvent('message_start', { type: 'message_start', message: { id: 'msg_upstream_1', type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...ANTHROPIC_USAGE, output_tokens: 1 } } })
    + namedEvent('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
  );
  const deltas = WORDS.map((w) => httpChunk(namedEvent('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w } })));
  const tailText = namedEvent('content_block_stop', { type: 'content_block_stop', index: 0 })
    + namedEvent('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 8 } })
    + namedEvent('message_stop', { type: 'message_stop' });
  const tail = Buffer.concat([httpChunk(tailText), Buffer.from('0\r\n\r\n')]);
  return { json: jsonReply(200, message(model), false), head, first, deltas, tail, whole: Buffer.concat([head, first, ...deltas, tail]) };
}

// Precomputed replies, per (dialect, model, stream, usage).
const cache = new Map();
function replies(model, wantsUsage, anthropic) {
  const k = `${anthropic}\u0000${model}\u0000${wantsUsage}`;
  let r = cache.get(k);
  if (r) return r;
  if (anthropic) {
    r = anthropicReplies(model);
    if (cache.size > 1000) cache.clear();
    cache.set(k, r);
    return r;
  }
  const head = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n');
  const first = httpChunk(sseEvent(chunk(model, { role: 'assistant', content: '' }, null, wantsUsage)));
  const deltas = WORDS.map((w) => httpChunk(sseEvent(chunk(model, { content: w }, null, wantsUsage))));
  let tailText = sseEvent(chunk(model, {}, 'stop', wantsUsage));
  if (wantsUsage) {
    tailText += sseEvent(JSON.stringify({ id: 'chatcmpl-upstream-1', object: 'chat.completion.chunk', created: 1700000000, model, choices: [], usage: USAGE }));
  }
  tailText += 'data: [DONE]\n\n';
  const tail = Buffer.concat([httpChunk(tailText), Buffer.from('0\r\n\r\n')]);
  r = {
    json: jsonReply(200, completion(model), false),
    head, first, deltas, tail,
    whole: Buffer.concat([head, first, ...deltas, tail]),
  };
  if (cache.size > 1000) cache.clear();
  cache.set(k, r);
  return r;
}

export function createFastMock() {
  const stats = { requests: 0 };
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let busy = false; // a paced stream is being written: hold later requests
    const timers = new Set();
    socket.on('close', () => { for (const t of timers) clearTimeout(t); timers.clear(); });
    socket.on('error', () => {});

    const pump = () => {
      while (!busy) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > MAX_HEAD) socket.destroy();
          return;
        }
        const head = buf.subarray(0, end).toString('latin1');
        const lenMatch = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        const length = lenMatch ? Number(lenMatch[1]) : 0;
        if (/\r\ntransfer-encoding:\s*chunked/i.test(head) || length > MAX_BODY) {
          socket.end(jsonReply(400, '{"error":{"message":"unsupported request framing"}}', true));
          return;
        }
        if (buf.length < end + 4 + length) return;
        const body = buf.subarray(end + 4, end + 4 + length).toString('utf8');
        buf = buf.subarray(end + 4 + length);
        const close = /\r\nconnection:\s*close/i.test(head);
        const nl = head.indexOf('\r\n');
        handle(nl < 0 ? head : head.slice(0, nl), body, close);
      }
    };

    const handle = (requestLine, body, close) => {
      const [method, target = '/'] = requestLine.split(' ');
      const path = target.split('?')[0];
      const finish = () => { if (close) socket.end(); };
      if (method === 'GET' && path === '/__stats') {
        socket.write(jsonReply(200, JSON.stringify(stats), close));
        return finish();
      }
      if (method === 'GET' && path.endsWith('/models')) {
        socket.write(jsonReply(200, '{"object":"list","data":[{"id":"mock-upstream","object":"model","owned_by":"mock"}]}', close));
        return finish();
      }
      const anthropic = path.endsWith('/messages');
      if (method !== 'POST' || !(anthropic || path.endsWith('/chat/completions'))) {
        socket.write(jsonReply(404, '{"error":{"message":"not found"}}', close));
        return finish();
      }
      stats.requests += 1;
      const model = /"model"\s*:\s*"([^"\\]{0,200})"/.exec(body)?.[1] ?? '';
      const stream = /"stream"\s*:\s*true/.test(body);
      const wantsUsage = /"include_usage"\s*:\s*true/.test(body);
      const r = replies(model, wantsUsage, anthropic);
      if (!stream) {
        socket.write(r.json);
        return finish();
      }
      const paced = /^paced-(\d+)$/.exec(model);
      if (!paced) {
        socket.write(r.whole);
        return finish();
      }
      const gap = Math.min(Number(paced[1]), 10_000);
      busy = true;
      socket.write(Buffer.concat([r.head, r.first]));
      let i = 0;
      const next = () => {
        const t = setTimeout(() => {
          timers.delete(t);
          if (socket.destroyed) return;
          if (i < r.deltas.length) {
            socket.write(r.deltas[i]);
            i += 1;
            return next();
          }
          socket.write(r.tail);
          busy = false;
          if (close) return socket.end();
          pump();
        }, i < r.deltas.length ? gap : 0);
        timers.add(t);
      };
      next();
    };

    socket.on('data', (d) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      pump();
    });
  });
  server.keepAliveTimeout = 60_000;
  return { server, stats };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Number(process.argv[2] ?? 0);
  const { server } = createFastMock();
  server.listen(port, '127.0.0.1', () => {
    console.log(`fast-mock listening on ${server.address().port}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop); // the harness closes our stdin when it is done
  process.stdin.resume();
}
