// The worker's entry: a thin effect interpreter around the Rust request
// machine (edge/core/src/pipeline/generation.rs, exposed by
// edge/worker/src/driver.rs). For a generation request the machine decides
// everything and this file only performs what it asks, with the runtime's own
// promises and streams: KV reads, calls to the key's account object, the
// upstream fetch, the client response, the usage queue. Bytes the gateway does
// not change are never copied back out of wasm: an unchanged stream chunk or
// non-stream body is answered with the buffer this file already holds.
// Every other route (model lists, token counts, the internal API), the
// Durable Object and the queue consumer are Rust over workers-rs.
import * as glue from './index.js';
import wasmModule from './index_bg.wasm';

glue.initSync({ module: wasmModule });

// A trap (a Rust panic aborts) leaves the instance unusable: start afresh.
let broken = false;
function noteFailure(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    console.error('wasm trapped; reinitializing', e);
    broken = true;
  }
}
function checkInstance() {
  if (!broken) return;
  broken = false;
  configured = false;
  glue.__wbg_reset_state();
}

let configured = false;
function configure(env) {
  if (configured) return;
  configured = true;
  glue.configure(Number(env.MAX_BODY_BYTES ?? 0), Number(env.UPSTREAM_TIMEOUT_MS ?? 0), Number(env.SSE_KEEPALIVE_MS ?? 0),
    env.CHANNEL_HEALTH !== undefined);
}

// A call to a channel's shared health record (edgeway_core::channel_health::shared);
// [status, text], status 0 when the call itself failed.
async function healthCall(env, channel, body) {
  try {
    const ns = env.CHANNEL_HEALTH;
    const r = await ns.get(ns.idFromName(channel)).fetch(
      `https://channel-health/sync?channel=${encodeURIComponent(channel)}`,
      { method: 'POST', headers: { 'content-type': 'application/json' }, body },
    );
    return [r.status, await r.text()];
  } catch (e) {
    return [0, String(e)];
  }
}

// Sends the outcomes this isolate owes the channels' health records and
// refreshes its copies, off the request's path (at most every 2 s per
// channel; nothing while nothing is due).
function syncHealth(env, ctx) {
  if (env.CHANNEL_HEALTH === undefined) return;
  const due = glue.health_syncs(Date.now());
  for (let i = 0; i + 1 < due.length; i += 2) {
    const channel = due[i], sent = due[i + 1];
    ctx.waitUntil(healthCall(env, channel, sent).then(([status, text]) => {
      glue.health_answered(channel, sent, status, text, Date.now());
      // Outcomes noted while this sync was out go now, not with the next request.
      syncHealth(env, ctx);
    }).catch(noteFailure));
  }
}

// Effect codes of driver.rs (EffectCode).
const KV_GET = 1, READ_SECRET = 2, ACCOUNT_CALL = 3, READ_REQUEST_BODY = 4, FETCH = 5,
  READ_UPSTREAM_BODY = 6, SLEEP = 7, RESPOND = 8, READ_CHUNK = 9, EMIT = 10, CLOSE_STREAM = 11,
  PUBLISH_USAGE = 12, FINISHED = 13, WAIT = 14, CANCEL_UPSTREAM = 15, STORE_CALL = 16,
  CACHE_GET = 17, CACHE_PUT = 18, HEALTH_CALL = 19;
const IDLE = Symbol('idle');

const EMPTY = new Uint8Array(0);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function headerPairs(flat) {
  const headers = new Headers();
  for (let i = 0; i + 1 < flat.length; i += 2) headers.append(flat[i], flat[i + 1]);
  return headers;
}

/** The body of a Request or Response read whole, at most `limit` bytes; null when over it. */
async function readLimited(message, limit) {
  const body = message?.body;
  if (!body) return EMPTY;
  const declared = message.headers.get('content-length');
  if (declared !== null && Number(declared) <= limit) {
    const buf = new Uint8Array(await message.arrayBuffer());
    return buf.byteLength > limit ? null : buf;
  }
  const reader = body.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      reader.cancel().catch(() => {});
      return null;
    }
    parts.push(value);
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** Drives one generation request to its end; `respond` gets the client's response. */
async function drive(d, request, env, respond) {
  let upstream = null; // the upstream Response
  let reader = null; // its body reader, once streaming
  let heldBody = null; // the upstream body last handed to the machine
  let heldChunk = null; // the chunk last handed to the machine
  let writer = null; // the client stream
  // The upstream operation in progress (a fetch or a chunk read): its
  // promise resolves to a function that feeds the machine its result.
  let pending = null;
  // Waits for the pending operation, at most `wake` ms (-1: no limit);
  // past that the machine is told (`idle`) and the operation is kept.
  const waitPending = async (wake) => {
    let result;
    if (wake < 0) {
      result = await pending.promise;
    } else {
      let timer;
      const woke = new Promise((resolve) => { timer = setTimeout(() => resolve(IDLE), wake); });
      result = await Promise.race([pending.promise, woke]);
      clearTimeout(timer);
    }
    if (result === IDLE) return d.idle(Date.now());
    pending = null;
    return result();
  };
  let effect = d.begin(Date.now());
  for (;;) {
    switch (effect) {
      case KV_GET: {
        let value;
        try {
          value = await env.EDGEWAY_KV.get(d.target(), 'text');
        } catch (e) {
          effect = d.kv_failed(String(e), Date.now());
          break;
        }
        effect = d.kv_value(value ?? undefined, Date.now());
        break;
      }
      case READ_SECRET: {
        const value = env[d.target()];
        effect = d.secret(typeof value === 'string' ? value : undefined, Date.now());
        break;
      }
      case ACCOUNT_CALL:
      case STORE_CALL: {
        // The key's account, or its conversation store (vault, Responses state).
        const store = effect === STORE_CALL;
        const [method, path] = d.call().split(' ');
        const body = d.text();
        let status = 0, text = '';
        try {
          const ns = store ? env.CONVERSATION_STORE : env.KEY_ACCOUNT;
          const stub = ns.get(ns.idFromName(d.target()));
          const r = await stub.fetch(`https://${store ? 'conversation-store' : 'key-account'}${path}`, {
            method, headers: body === undefined ? undefined : { 'content-type': 'application/json' }, body,
          });
          status = r.status;
          text = await r.text();
        } catch (e) {
          text = String(e);
        }
        effect = store ? d.store_reply(status, text, Date.now()) : d.account_reply(status, text, Date.now());
        break;
      }
      case HEALTH_CALL: {
        // This request would probe a half-open circuit: the channel's record decides.
        const [status, text] = await healthCall(env, d.target(), d.text());
        effect = d.health_reply(status, text, Date.now());
        break;
      }
      case CACHE_GET: {
        // The response cache (edgeway_core::response_cache): this location's Cache API.
        let text;
        try {
          const hit = await caches.default.match(d.target());
          text = hit ? await hit.text() : undefined;
        } catch (e) {
          console.error(`response cache read failed: ${e}`);
        }
        effect = d.cache_value(text, Date.now());
        break;
      }
      case CACHE_PUT: {
        try {
          const headers = { 'content-type': 'application/json', 'cache-control': `max-age=${d.number()}` };
          await caches.default.put(d.target(), new Response(d.text(), { headers }));
        } catch (e) {
          console.error(`response cache write failed: ${e}`);
        }
        effect = d.done(Date.now());
        break;
      }
      case READ_REQUEST_BODY: {
        let body;
        try {
          body = await readLimited(request, d.number());
        } catch {
          effect = d.request_body_unreadable(Date.now());
          break;
        }
        effect = body === null ? d.request_body_too_large(Date.now()) : d.request_body(body, Date.now());
        break;
      }
      case FETCH: {
        const url = d.target();
        const headers = headerPairs(d.headers());
        const wake = d.number();
        const body = d.take_bytes();
        const controller = new AbortController();
        const promise = fetch(url, { method: 'POST', headers, body, signal: controller.signal }).then(
          (r) => () => {
            upstream = r;
            reader = null;
            return d.upstream_head(r.status, r.headers.get('retry-after') ?? undefined, Date.now());
          },
          (e) => () => {
            console.warn(`upstream fetch failed: ${e}`);
            return d.upstream_failed(Date.now());
          },
        );
        pending = { promise, cancel: () => controller.abort() };
        effect = await waitPending(wake);
        break;
      }
      case WAIT:
        effect = await waitPending(d.number());
        break;
      case CANCEL_UPSTREAM:
        if (pending) pending.cancel();
        pending = null;
        if (reader) reader.cancel().catch(() => {});
        reader = null;
        upstream = null;
        effect = d.done(Date.now());
        break;
      case READ_UPSTREAM_BODY: {
        let body = null;
        try {
          body = await readLimited(upstream, d.number());
        } catch {
          body = null;
        }
        upstream = null;
        if (body === null) {
          effect = d.upstream_body_failed(Date.now());
        } else {
          heldBody = body;
          effect = d.upstream_body(body, Date.now());
        }
        break;
      }
      case SLEEP:
        await sleep(d.number());
        // A client that disconnected while this request waited (for a
        // concurrency slot, say) is told to the machine, which stops.
        effect = request.signal?.aborted ? d.client_gone(Date.now()) : d.done(Date.now());
        break;
      case RESPOND: {
        const status = d.number();
        const headers = headerPairs(d.headers());
        const kind = d.body_kind();
        if (kind === 2) {
          const stream = new TransformStream();
          writer = stream.writable.getWriter();
          respond(new Response(stream.readable, { status, headers }));
        } else {
          respond(new Response(kind === 1 ? heldBody : d.take_bytes(), { status, headers }));
          heldBody = null;
        }
        effect = d.done(Date.now());
        break;
      }
      case READ_CHUNK: {
        if (!reader) reader = upstream?.body ? upstream.body.getReader() : null;
        if (!reader) {
          effect = d.upstream_end(Date.now());
          break;
        }
        const wake = d.number();
        const current = reader;
        const promise = current.read().then(
          (result) => () => {
            if (result.done) return d.upstream_end(Date.now());
            heldChunk = result.value;
            return d.chunk(result.value, Date.now());
          },
          (e) => () => d.upstream_broken(String(e), Date.now()),
        );
        pending = { promise, cancel: () => current.cancel().catch(() => {}) };
        effect = await waitPending(wake);
        break;
      }
      case EMIT: {
        const bytes = d.body_kind() === 1 ? heldChunk : d.take_bytes();
        try {
          await writer.write(bytes);
          effect = d.done(Date.now());
        } catch {
          effect = d.client_gone(Date.now());
        }
        break;
      }
      case CLOSE_STREAM:
        if (reader) reader.cancel().catch(() => {});
        reader = null;
        upstream = null;
        if (writer) writer.close().catch(() => {});
        writer = null;
        effect = d.done(Date.now());
        break;
      case PUBLISH_USAGE: {
        let ok = true;
        try {
          const events = JSON.parse(d.text());
          await env.USAGE_QUEUE.sendBatch(events.map((body) => ({ body, contentType: 'json' })));
        } catch (e) {
          console.error(`usage queue refused ${d.number()} event(s): ${e}`);
          ok = false;
        }
        effect = d.published(ok, Date.now());
        break;
      }
      case FINISHED:
        if (pending) pending.cancel();
        return;
      default:
        throw new Error(`unknown effect ${effect}`);
    }
  }
}

// One round of health checks: the checks Rust plans from the routing table,
// sent at once, each with its time limit; what came back is read by Rust and
// each channel's results go to its health record.
async function healthRound(env) {
  if (env.CHANNEL_HEALTH === undefined) return;
  const routing = await env.EDGEWAY_KV.get(glue.routing_kv_key(), 'text');
  const checks = JSON.parse(glue.health_check_plan(routing ?? undefined, env));
  const answers = await Promise.all(checks.map(async (c) => {
    const started = Date.now();
    const answer = { channel: c.channel, credential: c.credential, status: 0, timed_out: false };
    try {
      const r = await fetch(c.url, { method: c.method, headers: c.headers, body: c.body ?? undefined, signal: AbortSignal.timeout(c.timeout_ms) });
      answer.latency_ms = Date.now() - started;
      answer.status = r.status;
      answer.retry_after = r.headers.get('retry-after') ?? undefined;
      if (r.ok) await r.body?.cancel();
      else answer.body = (await r.text()).slice(0, 4096);
    } catch (e) {
      answer.timed_out = e?.name === 'TimeoutError';
    }
    answer.latency_ms ??= Date.now() - started;
    return answer;
  }));
  const results = glue.health_check_results(JSON.stringify(answers), Date.now());
  const posts = [];
  for (let i = 0; i + 1 < results.length; i += 2) {
    const channel = results[i];
    const ns = env.CHANNEL_HEALTH;
    posts.push(ns.get(ns.idFromName(channel)).fetch(`https://channel-health/checks?channel=${encodeURIComponent(channel)}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: results[i + 1],
    }).then(async (r) => {
      if (!r.ok) console.error(`health check results of channel ${channel} not recorded: ${r.status} ${await r.text()}`);
    }, (e) => console.error(`health check results of channel ${channel} not recorded: ${e}`)));
  }
  await Promise.all(posts);
}

// CORS headers of a generation response, by the configured origins
// (edgeway_core::cors, CORS_ALLOW_ORIGINS); none when the origin is refused.
function applyCors(response, request, env) {
  const pairs = glue.cors_response_headers(env.CORS_ALLOW_ORIGINS ?? undefined, request.headers.get('origin') ?? undefined);
  if (pairs.length === 0) {
    response.headers.delete('access-control-allow-origin');
    response.headers.delete('access-control-expose-headers');
  }
  for (let i = 0; i + 1 < pairs.length; i += 2) response.headers.set(pairs[i], pairs[i + 1]);
}

export default {
  async fetch(request, env, ctx) {
    checkInstance();
    configure(env);
    const url = new URL(request.url);
    let d;
    try {
      const h = request.headers;
      d = glue.start_generation(
        request.method, url.pathname,
        h.get('authorization') ?? undefined, h.get('x-api-key') ?? undefined, h.get('x-goog-api-key') ?? undefined,
        url.searchParams.get('key') ?? undefined, h.get('cf-connecting-ip') ?? undefined,
        h.get('content-length') ?? undefined,
        h.get('x-edgeway-pin-channel') ?? undefined, h.get('x-edgeway-pin-timestamp') ?? undefined,
        h.get('x-edgeway-pin-signature') ?? undefined, Date.now(),
      );
    } catch (e) {
      noteFailure(e);
      throw e;
    }
    if (!d) return glue.fetch(request, env, ctx);
    return new Promise((resolve) => {
      let responded = false;
      const respond = (response) => {
        if (!responded) {
          responded = true;
          applyCors(response, request, env);
          resolve(response);
          syncHealth(env, ctx);
        }
      };
      ctx.waitUntil(
        drive(d, request, env, respond)
          .catch((e) => {
            noteFailure(e);
            console.error(`generation request failed in the shell: ${e?.stack ?? e}`);
            if (!responded) {
              let body = '{"error":{"message":"The gateway hit an internal error. The request was not completed.","type":"server_error","param":null,"code":"internal_error"}}';
              try { body = d.internal_error_body(); } catch {}
              respond(new Response(body, { status: 500, headers: { 'content-type': 'application/json' } }));
            }
          })
          .finally(() => {
            try { d.free(); } catch {}
            try { syncHealth(env, ctx); } catch (e) { noteFailure(e); }
            // Finished without an answer: its client left before it was
            // admitted (nobody reads this).
            if (!responded) respond(new Response(null, { status: 499 }));
          }),
      );
    });
  },

  // The cron trigger: a round of health checks (edge/worker/src/health_round.rs).
  async scheduled(event, env, ctx) {
    checkInstance();
    configure(env);
    ctx.waitUntil(healthRound(env).catch((e) => {
      noteFailure(e);
      console.error(`health checks failed: ${e?.stack ?? e}`);
    }));
  },

  async queue(batch, env, ctx) {
    checkInstance();
    try {
      return await glue.queue(batch, env, ctx);
    } catch (e) {
      noteFailure(e);
      throw e;
    }
  },
};

export const KeyAccount = glue.KeyAccount;
export const InternalGuard = glue.InternalGuard;
export const ConversationStore = glue.ConversationStore;
export const UserAccount = glue.UserAccount;
export const ChannelHealth = glue.ChannelHealth;
