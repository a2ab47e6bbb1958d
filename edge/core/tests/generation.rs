//! The generation state machine end to end on the host: every effect is
//! performed by a simulated world (KV, the key's account as the real
//! `KeyAccountState`, scripted upstreams, the client, the usage queue), so
//! failover, disconnects, settlement order and billing are checked without a
//! runtime.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::api_key::key_digest;
use edgeway_core::channel_health::shared::{ChannelBoard, SyncRequest, HEALTH_SYNC_MS};
use edgeway_core::conversation_store::{GetReply, GetRequest, PutRequest, StoreIndex};
use edgeway_core::family::Family;
use edgeway_core::key_account::{KeyAccountState, SliceRenewal};
use edgeway_core::pin::{sign_pin, PinRequest};
use edgeway_core::pipeline::generation::{
    keepalive_bytes, Credentials, Effect, Emitted, FetchFailure, Generation, Input, ResponseBody, Start,
};
use edgeway_core::pipeline::isolate::IsolateState;
use edgeway_core::translate::ClientDialect;
use edgeway_core::usage::{RequestOutcome, UsageEvent, UsageSource};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};

const KEY: &str = "sk-ew-test-key-000000000000000000";

/// How an upstream answers one call.
#[derive(Clone, Debug)]
enum Reply {
    Status {
        status: u16,
        chunks: Vec<Vec<u8>>,
        broken: bool,
    },
    Unreachable,
    /// Never sends its headers.
    Timeout,
    /// Headers after `head_ms` with `retry_after`, then each chunk after
    /// its delay, then the end (or nothing: `stall`).
    Scripted {
        head_ms: u64,
        status: u16,
        retry_after: Option<String>,
        chunks: Vec<(u64, Vec<u8>)>,
        end: End,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Clean,
    Broken,
    /// The upstream goes quiet and never ends.
    Stall,
}

/// An upstream call in progress: what it answers, and when (`None`: never).
#[derive(Debug)]
struct PendingOp {
    ready_at: Option<i64>,
    input: Input,
}

/// The rest of the upstream's answer after its headers.
#[derive(Debug, Default)]
struct Body {
    chunks: VecDeque<(u64, Vec<u8>)>,
    end: Option<End>,
}

impl Body {
    fn whole(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|(_, c)| c.clone()).collect()
    }
}

fn ok_json(body: Value) -> Reply {
    Reply::Status { status: 200, chunks: vec![body.to_string().into_bytes()], broken: false }
}

fn status(status: u16, body: &str) -> Reply {
    Reply::Status { status, chunks: vec![body.as_bytes().to_vec()], broken: false }
}

fn sse(events: &[Value]) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = events.iter().map(|e| format!("data: {e}\n\n").into_bytes()).collect();
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

fn chat_stream(with_usage: bool) -> Vec<Vec<u8>> {
    let mut events = vec![
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}),
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}),
    ];
    if with_usage {
        events.push(json!({"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":8,"total_tokens":19}}));
    }
    sse(&events)
}

fn completion() -> Value {
    json!({"id":"chatcmpl-up","object":"chat.completion","created":1,"model":"up-model",
           "choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],
           "usage":{"prompt_tokens":11,"completion_tokens":8,"total_tokens":19}})
}

struct World {
    isolate: IsolateState,
    kv: HashMap<String, String>,
    account: KeyAccountState,
    /// Replies per upstream base URL, in call order.
    upstreams: HashMap<String, VecDeque<Reply>>,
    secrets: HashMap<String, String>,
    now: i64,
    /// The client disconnects after receiving this many stream writes.
    client_gone_after: Option<usize>,
    queue_refuses: bool,
    /// The pin headers the next requests carry.
    pin: Option<PinRequest>,
    /// The endpoint family of the next run.
    family: Family,
    /// Conversation stores by key digest: the object's index and its data.
    stores: HashMap<String, (StoreIndex, HashMap<String, String>)>,
    /// Store calls made, by path.
    store_calls: Vec<String>,
    /// The key the next requests present.
    key: String,
    /// The response cache: URL → (value, expiry ms).
    cache: HashMap<String, (String, i64)>,
    /// Cache calls made: `get` / `put`.
    cache_calls: Vec<&'static str>,
    /// A slot held outside the request under test, freed when the clock
    /// passes this time (a concurrent request that ends).
    release_at: Option<(i64, edgeway_core::pipeline::account_slice::Ticket)>,
    /// The client disconnects during the next sleep (the shell reads it off
    /// `request.signal`).
    gone_on_sleep: bool,
    /// The channels' shared health records (`ChannelHealth` objects).
    boards: HashMap<String, ChannelBoard>,
    /// Probe claims made, by channel.
    claims: Vec<String>,
    /// The shared records cannot be reached.
    health_unreachable: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Stream writes the client received, in order.
    writes: Vec<Vec<u8>>,
    /// Upstream calls made, by URL.
    fetched: Vec<String>,
    /// Upstream request bodies.
    fetched_bodies: Vec<Value>,
    /// The `authorization` header of each upstream call.
    auths: Vec<String>,
    published: Vec<UsageEvent>,
    /// Events reported to the account (settled against a slice).
    settled: Vec<UsageEvent>,
    /// Renewals sent to the account.
    renewals: usize,
    /// Stream writes that were the upstream chunk itself, unchanged.
    passed_through: usize,
    /// Effects in order, by name (for ordering assertions).
    trace: Vec<String>,
    /// `wake_ms` of every Fetch and ReadChunk.
    wakes: Vec<Option<u64>>,
    /// Upstream operations given up.
    cancelled: usize,
    /// Keepalive writes (and when, relative to the start).
    keepalives: Vec<i64>,
    /// When the response head was handed over, relative to the start.
    head_at: Option<i64>,
    logs: Vec<String>,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.writes.concat()).into_owned()
    }

    /// Every usage event recorded, settled or published.
    fn events(&self) -> Vec<UsageEvent> {
        let mut all: Vec<UsageEvent> = self.settled.clone();
        all.extend(self.published.iter().cloned());
        all
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn routing(targets: &[(&str, &str)]) -> Value {
    // targets: (channel id, base url); priorities descend in the given order
    let channels: Vec<Value> = targets
        .iter()
        .map(|(id, url)| match *url {
            "mock" => json!({"id": id, "provider": "mock"}),
            url if url.contains("anthropic") => json!({"id": id, "provider": "anthropic", "base_url": url, "api_key": "sk-up-secret-anthropic"}),
            url if url.contains("gemini") => json!({"id": id, "provider": "gemini", "base_url": url, "api_key": "sk-up-secret-gemini"}),
            url => json!({"id": id, "provider": "openai-compatible", "base_url": url, "api_key": format!("sk-up-secret-{id}")}),
        })
        .collect();
    let n = targets.len() as i32;
    let model_targets: Vec<Value> = targets
        .iter()
        .enumerate()
        .map(|(i, (id, _))| json!({"channel": id, "upstream_model": "up-model", "priority": n - i as i32}))
        .collect();
    json!({"version": 1, "channels": channels,
           "models": [{"name": "m", "price": {"input": 1_000_000, "output": 2_000_000}, "targets": model_targets}]})
}

impl World {
    fn new(record: Value, routing: Value) -> Self {
        let digest = key_digest(KEY);
        let mut record = record;
        record["digest"] = json!(digest);
        let mut kv = HashMap::new();
        kv.insert(format!("key:{digest}"), record.to_string());
        kv.insert("config:routing".into(), routing.to_string());
        Self {
            isolate: IsolateState::default(),
            kv,
            account: KeyAccountState::new(60_000),
            upstreams: HashMap::new(),
            secrets: HashMap::new(),
            now: 1_700_000_000_000,
            client_gone_after: None,
            queue_refuses: false,
            pin: None,
            family: Family::Chat,
            stores: HashMap::new(),
            store_calls: Vec::new(),
            key: KEY.to_string(),
            cache: HashMap::new(),
            cache_calls: Vec::new(),
            release_at: None,
            gone_on_sleep: false,
            boards: HashMap::new(),
            claims: Vec::new(),
            health_unreachable: false,
        }
    }

    /// Performs the syncs the isolate owes the channels' shared records (as
    /// the shell does after each request); how many.
    fn sync_health(&mut self) -> usize {
        let due = self.isolate.health_sync.due(self.now);
        for (channel, sent) in &due {
            let request: SyncRequest = serde_json::from_str(sent).unwrap();
            let reply = self.boards.entry(channel.clone()).or_default().sync(channel, &request, self.now);
            let reply = serde_json::to_string(&reply).unwrap();
            let isolate = &mut self.isolate;
            isolate.health_sync.answered(&mut isolate.breakers, channel, sent, 200, &reply, self.now);
        }
        due.len()
    }

    /// Answers a wait on `pending`: its result when it is ready within
    /// `wake_ms` (the clock moves to then), else `Idle` after `wake_ms`.
    fn settle_wait(
        &mut self,
        pending: &mut Option<PendingOp>,
        wake_ms: Option<u64>,
        out: &mut Outcome,
    ) -> Input {
        let Some(op) = pending.as_ref() else { panic!("a wait with nothing pending: {:?}", out.trace) };
        let wake_at = wake_ms.map(|w| self.now + w as i64);
        match (op.ready_at, wake_at) {
            (Some(ready), Some(wake)) if ready > wake => {
                self.now = wake;
                Input::Idle
            }
            (Some(ready), _) => {
                self.now = self.now.max(ready);
                pending.take().map(|op| op.input).unwrap_or(Input::Done)
            }
            (None, Some(wake)) => {
                self.now = wake;
                Input::Idle
            }
            (None, None) => panic!("waiting forever on an upstream that never answers: {:?}", out.trace),
        }
    }

    fn upstream(&mut self, base: &str, replies: Vec<Reply>) -> &mut Self {
        self.upstreams.insert(base.to_string(), replies.into());
        self
    }

    fn run(&mut self, body: Value) -> Outcome {
        self.run_as(ClientDialect::OpenAiChat, body)
    }

    fn run_as(&mut self, client: ClientDialect, body: Value) -> Outcome {
        self.run_with(client, None, body)
    }

    /// A Gemini `streamGenerateContent` call for model `m`.
    fn run_gemini_stream(&mut self, body: Value) -> Outcome {
        self.run_with(ClientDialect::Gemini, Some("m"), body)
    }

    fn run_with(&mut self, client: ClientDialect, path_model: Option<&str>, body: Value) -> Outcome {
        let start = Start {
            client,
            family: self.family,
            path_model: path_model.map(str::to_string),
            path_stream: path_model.is_some(),
            credentials: Credentials {
                authorization: Some(format!("Bearer {}", self.key)),
                ..Default::default()
            },
            client_ip: Some("127.0.0.1".into()),
            declared_body_len: None,
            request_id: format!("req_{:x}", self.now),
            routing_seed: 7,
            pin: self.pin.clone(),
        };
        let body = body.to_string().into_bytes();
        let mut g = Generation::new(start, self.now);
        let t0 = self.now;
        let mut out = Outcome::default();
        let mut input = Input::Begin;
        let mut body_left: Option<Body> = None;
        let mut pending: Option<PendingOp> = None;
        let mut last_upstream_body: Vec<u8> = Vec::new();
        let mut last_chunk: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            let effect = g.next(&mut self.isolate, input, self.now);
            out.logs.extend(g.take_logs().into_iter().map(|l| l.message));
            self.now += 1;
            out.trace.push(format!("{effect:?}").split([' ', '(', '{']).next().unwrap_or("").to_string());
            input = match effect {
                Effect::KvGet { key } => Input::KvValue(self.kv.get(&key).cloned()),
                Effect::ReadSecret { name } => Input::Secret(self.secrets.get(&name).cloned()),
                Effect::AccountCall { path, body, .. } => {
                    let body = body.unwrap_or_default();
                    let reply = match path {
                        "/state" => {
                            serde_json::to_string(&self.account.snapshot(self.now)).unwrap_or_default()
                        }
                        "/slice" => {
                            let renewal: SliceRenewal =
                                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
                            out.renewals += 1;
                            out.settled.extend(renewal.settled.iter().map(|s| s.event.clone()));
                            let (grant, _) = self.account.renew_slice(&renewal, self.now);
                            serde_json::to_string(&grant).unwrap_or_default()
                        }
                        other => panic!("unexpected account path {other}"),
                    };
                    Input::AccountReply { status: 200, body: reply }
                }
                Effect::ReadRequestBody { limit } => {
                    if body.len() > limit {
                        Input::RequestBodyTooLarge
                    } else {
                        Input::RequestBody(body.clone())
                    }
                }
                Effect::Fetch(req) => {
                    out.fetched.push(req.url.clone());
                    out.fetched_bodies.push(serde_json::from_slice(&req.body).unwrap_or(Value::Null));
                    out.auths.push(
                        req.headers
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                    );
                    out.wakes.push(req.wake_ms);
                    let base = self.upstreams.keys().find(|b| req.url.starts_with(b.as_str())).cloned();
                    let next = base.and_then(|b| self.upstreams.get_mut(&b).and_then(VecDeque::pop_front));
                    let (op, body) = match next.unwrap_or(Reply::Unreachable) {
                        Reply::Status { status, chunks, broken } => (
                            PendingOp {
                                ready_at: Some(self.now),
                                input: Input::UpstreamHead { status, retry_after: None },
                            },
                            Body {
                                chunks: chunks.into_iter().map(|c| (0, c)).collect(),
                                end: Some(if broken { End::Broken } else { End::Clean }),
                            },
                        ),
                        Reply::Unreachable => (
                            PendingOp {
                                ready_at: Some(self.now),
                                input: Input::UpstreamFailed(FetchFailure::Unreachable),
                            },
                            Body::default(),
                        ),
                        Reply::Timeout => (PendingOp { ready_at: None, input: Input::Done }, Body::default()),
                        Reply::Scripted { head_ms, status, retry_after, chunks, end } => (
                            PendingOp {
                                ready_at: Some(self.now + head_ms as i64),
                                input: Input::UpstreamHead { status, retry_after },
                            },
                            Body { chunks: chunks.into(), end: Some(end) },
                        ),
                    };
                    body_left = Some(body);
                    pending = Some(op);
                    self.settle_wait(&mut pending, req.wake_ms, &mut out)
                }
                Effect::Wait { wake_ms } => self.settle_wait(&mut pending, wake_ms, &mut out),
                Effect::CancelUpstream => {
                    out.cancelled += 1;
                    pending = None;
                    body_left = None;
                    Input::Done
                }
                Effect::ReadUpstreamBody { limit } => {
                    let whole = body_left.take().map(|b| b.whole()).unwrap_or_default();
                    if whole.len() > limit {
                        Input::UpstreamBodyFailed
                    } else {
                        last_upstream_body = whole.clone();
                        Input::UpstreamBody(whole)
                    }
                }
                Effect::Sleep { ms } => {
                    self.now += ms as i64;
                    if self.release_at.as_ref().is_some_and(|(at, _)| self.now >= *at) {
                        if let Some((_, ticket)) = self.release_at.take() {
                            self.isolate.slices.release(&ticket);
                        }
                    }
                    if std::mem::take(&mut self.gone_on_sleep) {
                        Input::ClientGone
                    } else {
                        Input::Done
                    }
                }
                Effect::Respond(head, body) => {
                    out.head_at = Some(self.now - t0);
                    out.status = head.status;
                    out.headers = head.headers.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
                    out.body = match body {
                        ResponseBody::Bytes(b) => b,
                        ResponseBody::UpstreamBody => last_upstream_body.clone(),
                        ResponseBody::Stream => Vec::new(),
                    };
                    Input::Done
                }
                Effect::ReadChunk { wake_ms } => {
                    out.wakes.push(wake_ms);
                    let body = body_left.get_or_insert_with(Body::default);
                    let op = match body.chunks.pop_front() {
                        Some((delay, chunk)) => {
                            last_chunk = chunk.clone();
                            PendingOp { ready_at: Some(self.now + delay as i64), input: Input::Chunk(chunk) }
                        }
                        None => match body.end {
                            Some(End::Broken) => PendingOp {
                                ready_at: Some(self.now),
                                input: Input::UpstreamBroken("reset".into()),
                            },
                            Some(End::Stall) => PendingOp { ready_at: None, input: Input::Done },
                            _ => PendingOp { ready_at: Some(self.now), input: Input::UpstreamEnd },
                        },
                    };
                    pending = Some(op);
                    self.settle_wait(&mut pending, wake_ms, &mut out)
                }
                Effect::Emit(emitted) => {
                    if self.client_gone_after.is_some_and(|n| out.writes.len() >= n) {
                        Input::ClientGone
                    } else {
                        out.writes.push(match emitted {
                            Emitted::Bytes(b) if b.as_slice() == keepalive_bytes(client) => {
                                out.keepalives.push(self.now - t0);
                                b
                            }
                            Emitted::Bytes(b) => b,
                            Emitted::Chunk => {
                                out.passed_through += 1;
                                last_chunk.clone()
                            }
                        });
                        Input::Done
                    }
                }
                Effect::CloseStream => Input::Done,
                Effect::PublishUsage { events_json, count } => {
                    let events: Vec<UsageEvent> = serde_json::from_str(&events_json).unwrap_or_default();
                    assert_eq!(events.len(), count);
                    if self.queue_refuses {
                        Input::Published(false)
                    } else {
                        out.published.extend(events);
                        Input::Published(true)
                    }
                }
                Effect::HealthCall { channel, body } => {
                    self.claims.push(channel.clone());
                    if self.health_unreachable {
                        Input::HealthReply { status: 0, body: String::new() }
                    } else {
                        let request: SyncRequest = serde_json::from_str(&body).unwrap();
                        let board = self.boards.entry(channel.clone()).or_default();
                        let reply = board.sync(&channel, &request, self.now);
                        Input::HealthReply { status: 200, body: serde_json::to_string(&reply).unwrap() }
                    }
                }
                Effect::StoreCall { digest, path, body } => {
                    self.store_calls.push(path.to_string());
                    let (index, data) = self.stores.entry(digest).or_default();
                    let reply = match path {
                        "/get" => {
                            let req: GetRequest =
                                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
                            let found = index
                                .live(&req.names, req.now_ms)
                                .into_iter()
                                .filter_map(|n| data.get(n).map(|d| (n.to_string(), d.clone())))
                                .collect();
                            serde_json::to_string(&GetReply { found }).unwrap_or_default()
                        }
                        "/put" => {
                            let req: PutRequest =
                                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
                            let (reply, writes) = index.put(req.entries, req.now_ms);
                            for name in writes.delete {
                                data.remove(&name);
                            }
                            for (name, _, value) in writes.put {
                                data.insert(name, value);
                            }
                            serde_json::to_string(&reply).unwrap_or_default()
                        }
                        other => panic!("unexpected store path {other}"),
                    };
                    Input::StoreReply { status: 200, body: reply }
                }
                Effect::CacheGet { url } => {
                    self.cache_calls.push("get");
                    let now = self.now;
                    Input::CacheValue(
                        self.cache.get(&url).filter(|(_, exp)| *exp > now).map(|(v, _)| v.clone()),
                    )
                }
                Effect::CachePut { url, value, ttl_secs } => {
                    self.cache_calls.push("put");
                    self.cache.insert(url, (value, self.now + i64::from(ttl_secs) * 1000));
                    Input::Done
                }
                Effect::Finished => return out,
            };
        }
        panic!("the request never finished: {:?}", out.trace);
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn unlimited() -> Value {
    json!({})
}

fn limited() -> Value {
    json!({"max_concurrency": 10, "rpm": 1000, "quota_micros": 1_000_000_000})
}

const A: &str = "http://a.test/v1";
const B: &str = "http://b.test/v1";
const C: &str = "http://c.test/v1";

#[test]
fn relay_non_stream_answers_with_the_upstream_bytes_and_bills_its_usage() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "temperature": 0.25}));
    assert_eq!(out.status, 200);
    let mut shown = completion();
    shown["model"] = json!("m");
    assert_eq!(out.json(), shown, "the upstream body, only the model renamed to the public name");
    assert_eq!(out.header("x-edgeway-channel"), Some("a"));
    assert_eq!(out.fetched, vec![format!("{A}/chat/completions")]);
    assert_eq!(out.fetched_bodies[0]["model"], "up-model");
    assert_eq!(out.fetched_bodies[0]["temperature"], 0.25);
    assert!(out.header("x-request-id").is_some_and(|id| id.starts_with("req_")));
    let events = out.events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].usage.input_uncached, events[0].usage.output), (11, 8));
    assert_eq!(events[0].cost_micros, 11 + 16);
    assert_eq!(events[0].usage_source, UsageSource::Provider);
    assert!(out.settled.is_empty(), "a key without limits is not admitted per request");
    // The account was asked once (the isolate remembers its answer for 2 s).
    assert!(out.trace.iter().any(|t| t == "AccountCall"));
    let again = w.run(json!({"model": "m", "messages": user("again")}));
    assert!(!again.trace.iter().any(|t| t == "AccountCall" || t == "KvGet"), "{:?}", again.trace);
}

#[test]
fn relay_stream_passes_unchanged_chunks_and_strips_the_usage_chunk() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true), broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
    assert_eq!(out.status, 200);
    assert_eq!(out.header("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(out.fetched_bodies[0]["stream_options"]["include_usage"], true, "usage always asked for");
    let text = out.text();
    assert!(text.contains("Hel") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"usage\""), "the client did not ask for the usage chunk: {text}");
    // The role chunk is held until the first content (the attempt could still
    // be replaced), so it goes out with it; later chunks pass unchanged.
    assert_eq!(out.writes.len(), 3, "{:?}", out.writes);
    assert_eq!(out.passed_through, 1, "unchanged chunks are handed back, not copied out");
    let e = &out.events()[0];
    assert_eq!((e.usage.input_uncached, e.usage.output, e.outcome), (11, 8, RequestOutcome::Completed));

    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true), broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true, "stream_options": {"include_usage": true}}));
    assert!(out.text().contains("\"prompt_tokens\":11"), "asked for: kept");
}

#[test]
fn failover_before_the_first_byte_and_only_the_serving_attempt_is_billed() {
    for (first, second) in [
        (status(500, r#"{"error":{"message":"boom"}}"#), "500"),
        (status(429, r#"{"error":{"message":"slow down"}}"#), "429"),
        (Reply::Unreachable, "unreachable"),
        (Reply::Timeout, "timeout"),
        (status(401, r#"{"error":{"message":"bad key sk-up-secret-a"}}"#), "401"),
    ] {
        let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
        w.upstream(A, vec![first]);
        w.upstream(B, vec![ok_json(completion())]);
        let out = w.run(json!({"model": "m", "messages": user("hi")}));
        assert_eq!(out.status, 200, "{second}");
        assert_eq!(out.fetched.len(), 2, "{second}");
        let events = out.events();
        assert_eq!(events.len(), 1, "{second}");
        assert_eq!((events[0].channel.as_str(), events[0].cost_micros), ("b", 27), "{second}");
    }
}

#[test]
fn a_request_fault_stops_at_once_in_the_callers_dialect_and_redacts() {
    let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
    w.upstream(A, vec![status(400, r#"{"error":{"message":"bad param from sk-up-secret-a"}}"#)]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 400);
    assert_eq!(out.fetched.len(), 1, "no failover on a 400");
    let message = out.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("bad param") && !message.contains("sk-up-secret-a"), "{message}");
    let e = &out.events()[0];
    assert_eq!((e.cost_micros, e.usage_source, e.status), (0, UsageSource::None, 400));
}

#[test]
fn every_candidate_failing_gives_the_last_error_and_bills_nothing() {
    let mut w = World::new(limited(), routing(&[("a", A), ("b", B), ("c", C)]));
    w.upstream(A, vec![status(503, "{}")]);
    w.upstream(B, vec![Reply::Unreachable]);
    w.upstream(C, vec![Reply::Timeout]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 504);
    assert_eq!(out.fetched.len(), 3);
    assert_eq!(out.settled.len(), 1, "an admitted request is settled once, failed");
    assert_eq!(out.settled[0].cost_micros, 0);
    assert_eq!(w.account.in_flight(), 0);
    assert_eq!(w.account.reserved_micros(), 0);
}

#[test]
fn an_admitted_stream_is_settled_before_the_client_sees_its_end() {
    let mut w = World::new(limited(), routing(&[("a", A)]));
    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true), broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
    // The report that carries this request's settle comes right before the
    // end of the stream is written (the slice is given back after, when idle).
    let last_emit = out.trace.iter().rposition(|t| t == "Emit").unwrap_or(0);
    assert_eq!(out.trace.get(last_emit - 1).map(String::as_str), Some("AccountCall"), "{:?}", out.trace);
    assert_eq!(out.settled.len(), 1);
    assert!(out.writes.last().is_some_and(|w| w.ends_with(b"data: [DONE]\n\n")));
    assert_eq!(w.account.spent_micros(), 27);
    assert_eq!((w.account.in_flight(), w.account.reserved_micros()), (0, 0));
}

#[test]
fn a_client_that_disconnects_is_billed_what_the_provider_reported() {
    for gone_after in [0, 1] {
        let mut w = World::new(limited(), routing(&[("a", A)]));
        w.client_gone_after = Some(gone_after);
        w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true), broken: false }]);
        let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
        let e = &out.settled[0];
        assert_eq!(
            (e.outcome, e.usage_source, e.cost_micros),
            (RequestOutcome::ClientAborted, UsageSource::Provider, 27)
        );
        assert_eq!(w.account.in_flight(), 0);
    }
}

#[test]
fn a_stream_cut_short_ends_with_an_error_event_and_is_estimated() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    let mut chunks = chat_stream(false);
    chunks.truncate(2);
    w.upstream(A, vec![Reply::Status { status: 200, chunks, broken: true }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
    assert!(out.text().contains("\"error\""), "{}", out.text());
    let e = &out.events()[0];
    assert_eq!((e.outcome, e.usage_source), (RequestOutcome::Failed, UsageSource::Estimated));
}

#[test]
fn translation_to_anthropic_and_back() {
    const ANTHROPIC: &str = "http://anthropic.test/v1";
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    w.upstream(ANTHROPIC, vec![ok_json(json!({"id":"msg_1","type":"message","role":"assistant","model":"claude",
        "content":[{"type":"text","text":"Bonjour"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}))]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "max_tokens": 20}));
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched, vec![format!("{ANTHROPIC}/messages")]);
    assert_eq!(out.fetched_bodies[0]["max_tokens"], 20);
    let body = out.json();
    assert_eq!(body["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(body["model"], "m", "the public model name");
    assert_eq!(out.events()[0].cost_micros, 5 + 4);
    // OpenAI-only content is refused for a translating candidate, with no upstream call.
    let out = w.run(json!({"model": "m", "messages": user("hi"), "logit_bias": {"1": 2}}));
    assert_eq!(out.status, 400);
    assert!(out.fetched.is_empty());
}

#[test]
fn the_built_in_mock_serves_streams_and_whole_answers() {
    let mut w = World::new(limited(), routing(&[("m", "mock")]));
    let out = w.run(json!({"model": "m", "messages": user("What is edgeway?")}));
    assert_eq!(out.status, 200);
    assert!(out.json()["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|t| t.contains("What is edgeway?")));
    let out = w.run(json!({"model": "m", "messages": user("What is edgeway?"), "stream": true}));
    assert!(out.text().ends_with("data: [DONE]\n\n"), "{}", out.text());
    assert_eq!(out.settled.len(), 1);
    assert!(out.settled[0].usage_source == UsageSource::Provider && out.settled[0].cost_micros > 0);
    let out = w.run_as(
        ClientDialect::Anthropic,
        json!({"model": "m", "max_tokens": 50, "messages": user("Hi"), "stream": true}),
    );
    assert!(out.text().contains("event: message_stop"), "{}", out.text());
}

#[test]
fn refusals_before_any_upstream() {
    let mut w = World::new(json!({"rpm": 1}), routing(&[("a", A)]));
    w.upstream(A, vec![ok_json(completion()), ok_json(completion())]);
    assert_eq!(w.run(json!({"model": "m", "messages": user("1")})).status, 200);
    let out = w.run(json!({"model": "m", "messages": user("2")}));
    assert_eq!(out.status, 429);
    assert!(out.header("retry-after").is_some());
    assert_eq!(out.fetched.len(), 0);
    assert!(out.events().is_empty(), "a refusal at admission leaves no usage row");
    let out = w.run(json!({"model": "nope", "messages": user("x")}));
    assert_eq!(out.status, 404);
    let out = w.run(json!({"model": "m", "messages": user("x"), "temperature": "hot"}));
    assert_eq!(out.status, 400);
    assert!(out.events().is_empty(), "nothing metered for a refused body");
}

#[test]
fn unknown_keys_and_revocations_at_the_account() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.kv.clear();
    w.kv.insert("config:routing".into(), routing(&[("a", A)]).to_string());
    let out = w.run(json!({"model": "m", "messages": user("x")}));
    assert_eq!(out.status, 401);
    assert_eq!(out.header("www-authenticate"), Some("Bearer"));

    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    let digest = key_digest(KEY);
    let revoked: edgeway_core::key_record::KeyRecord =
        serde_json::from_value(json!({"digest": digest, "status": "disabled", "version": 5}))
            .unwrap_or_else(|e| panic!("{e}"));
    let _ = w.account.configure(&revoked);
    assert_eq!(
        w.run(json!({"model": "m", "messages": user("x")})).status,
        401,
        "the account knows before KV"
    );
}

#[test]
fn usage_of_unadmitted_requests_is_batched_and_survives_a_refusing_queue() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.queue_refuses = true;
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert!(out.logs.iter().any(|l| l.contains("not queued")), "{:?}", out.logs);
    assert_eq!(out.trace.iter().filter(|t| *t == "PublishUsage").count(), 2, "batch, then one by one");
}

const PIN_SECRET: &str = "e2e-pin-secret-000000000000";

fn signed_pin(w: &World, channel: &str, body: &Value) -> PinRequest {
    let ts = w.now / 1000;
    PinRequest {
        channel: channel.into(),
        timestamp: Some(ts.to_string()),
        signature: Some(sign_pin(PIN_SECRET, channel, ts, body.to_string().as_bytes())),
    }
}

#[test]
fn a_signed_pin_tries_only_that_channel_and_every_response_names_its_channel() {
    let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
    w.secrets.insert("EDGE_ADMIN_SECRET".into(), PIN_SECRET.into());
    let body = json!({"model": "m", "messages": user("hi"), "max_tokens": 1});
    w.pin = Some(signed_pin(&w, "b", &body));
    w.upstream(B, vec![ok_json(completion()), status(500, "{}")]);
    let out = w.run(body.clone());
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched, vec![format!("{B}/chat/completions")], "the lower-priority channel, pinned");
    assert_eq!(out.header("x-edgeway-channel"), Some("b"));
    assert_eq!(out.events()[0].channel, "b");
    // No failover from a pinned channel, and the error names it too.
    w.upstream(A, vec![ok_json(completion())]);
    w.pin = Some(signed_pin(&w, "b", &body));
    let out = w.run(body.clone());
    assert_eq!((out.status, out.fetched.len()), (502, 1));
    assert_eq!(out.header("x-edgeway-channel"), Some("b"));
    // A channel that does not serve the model is the caller's 400.
    w.pin = Some(signed_pin(&w, "zzz", &body));
    let out = w.run(body.clone());
    assert_eq!((out.status, out.fetched.len()), (400, 0), "{}", String::from_utf8_lossy(&out.body));
}

#[test]
fn pins_from_ordinary_keys_bad_signatures_and_stale_ones_are_refused() {
    let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
    w.secrets.insert("EDGE_ADMIN_SECRET".into(), PIN_SECRET.into());
    let body = json!({"model": "m", "messages": user("hi")});
    let unsigned = PinRequest { channel: "b".into(), ..Default::default() };
    let mut tampered = signed_pin(&w, "b", &body);
    tampered.channel = "a".into();
    let mut stale = signed_pin(&w, "b", &body);
    stale.timestamp = Some((w.now / 1000 - 301).to_string());
    stale.signature = Some(sign_pin(PIN_SECRET, "b", w.now / 1000 - 301, body.to_string().as_bytes()));
    let other_body = signed_pin(&w, "b", &json!({"model": "m"}));
    for (what, pin) in
        [("unsigned", unsigned.clone()), ("tampered", tampered), ("stale", stale), ("other body", other_body)]
    {
        w.pin = Some(pin);
        let out = w.run(body.clone());
        assert_eq!((out.status, out.fetched.len()), (401, 0), "{what}");
        assert_eq!(out.json()["error"]["code"], "pin_refused", "{what}");
        assert!(out.events().is_empty(), "{what}: nothing metered");
    }
    // Anthropic callers get the refusal in their dialect.
    w.pin = Some(unsigned.clone());
    let out =
        w.run_as(ClientDialect::Anthropic, json!({"model": "m", "max_tokens": 5, "messages": user("hi")}));
    assert_eq!((out.status, out.json()["type"].as_str()), (401, Some("error")));
    // A test key may pin unsigned.
    let mut w = World::new(json!({"pin_allowed": true}), routing(&[("a", A), ("b", B)]));
    w.upstream(B, vec![ok_json(completion())]);
    w.pin = Some(unsigned);
    let out = w.run(body);
    assert_eq!((out.status, out.header("x-edgeway-channel")), (200, Some("b")));
}

#[test]
fn streams_name_the_public_model_in_every_chunk() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    let chunks = sse(&[
        json!({"id":"c","model":"up-model","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
        json!({"id":"c","model":"up-model","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}),
        json!({"id":"c","model":"up-model","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}),
    ]);
    w.upstream(A, vec![Reply::Status { status: 200, chunks, broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true, "stream_options": {"include_usage": true}}));
    let text = out.text();
    assert!(!text.contains("up-model"), "{text}");
    assert_eq!(text.matches("\"model\":\"m\"").count(), 3, "{text}");
    assert_eq!(out.header("x-edgeway-channel"), Some("a"));
}

fn without_usage(mut body: Value) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("usage");
    }
    body
}

/// The usage in the last SSE data event that carries one.
fn last_stream_usage(text: &str) -> Value {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
        .next_back()
        .unwrap_or(Value::Null)
}

#[test]
fn an_upstream_that_reports_no_usage_shows_the_client_what_is_billed() {
    // Relay, whole answer: the estimate is put in the body and marked.
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![ok_json(without_usage(completion()))]);
    let out = w.run(json!({"model": "m", "messages": user("hi there")}));
    let e = &out.events()[0];
    assert_eq!(e.usage_source, UsageSource::Estimated);
    let usage = &out.json()["usage"];
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(e.usage.prompt_total()));
    assert_eq!(usage["completion_tokens"].as_u64(), Some(e.usage.output));
    assert_eq!(usage["estimated"], true);
    assert_eq!(out.header("x-edgeway-usage"), Some("estimated"));

    // Relay, stream with include_usage: an estimated usage chunk before [DONE].
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(false), broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi there"), "stream": true, "stream_options": {"include_usage": true}}));
    let e = &out.events()[0];
    let usage = last_stream_usage(&out.text());
    assert_eq!(e.usage_source, UsageSource::Estimated);
    assert_eq!(
        (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()),
        (Some(e.usage.prompt_total()), Some(e.usage.output))
    );
    assert_eq!(usage["estimated"], true);
    assert!(out.text().trim_end().ends_with("data: [DONE]"));

    // Translated (Anthropic client), stream: message_delta carries the same figures.
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(false), broken: false }]);
    let out = w.run_as(
        ClientDialect::Anthropic,
        json!({"model": "m", "max_tokens": 50, "messages": user("hi there"), "stream": true}),
    );
    let e = &out.events()[0];
    let usage = last_stream_usage(&out.text());
    assert_eq!(
        (usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()),
        (Some(e.usage.input_uncached), Some(e.usage.output))
    );
    assert!(e.usage.input_uncached > 0 && e.usage.output > 0);
    assert_eq!(usage["estimated"], true);
}

#[test]
fn empty_replies_cost_nothing_when_the_operator_says_so() {
    let empty = json!({"id":"x","object":"chat.completion","created":1,"model":"up",
        "choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":11,"completion_tokens":0,"total_tokens":11}});
    for (free, cost) in [(false, 11), (true, 0)] {
        let mut config = routing(&[("a", A)]);
        config["models"][0]["options"] = json!({"empty_reply_free": free});
        let mut w = World::new(unlimited(), config);
        w.upstream(A, vec![ok_json(empty.clone())]);
        let e = w.run(json!({"model": "m", "messages": user("hi")})).events()[0].clone();
        assert_eq!((e.usage.input_uncached, e.cost_micros), (11, cost), "free: {free}");
    }
}

impl World {
    fn run_family(&mut self, family: Family, body: Value) -> Outcome {
        self.family = family;
        let out = self.run(body);
        self.family = Family::Chat;
        out
    }
}

fn chunk_of(text: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":text}}]})
    )
    .into_bytes()
}

fn role_chunk() -> Vec<u8> {
    format!("data: {}\n\n", json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}))
        .into_bytes()
}

fn stream_ok() -> Reply {
    Reply::Status { status: 200, chunks: chat_stream(true), broken: false }
}

fn scripted(head_ms: u64, chunks: Vec<(u64, Vec<u8>)>, end: End) -> Reply {
    Reply::Scripted { head_ms, status: 200, retry_after: None, chunks, end }
}

fn kinds(e: &UsageEvent) -> Vec<(String, Option<String>)> {
    e.attempts.iter().map(|a| (a.channel.clone(), a.failure.clone())).collect()
}

#[test]
fn failover_matrix_before_the_first_content_byte_is_invisible() {
    let stream = json!({"model": "m", "messages": user("hi"), "stream": true});
    let cases: Vec<(&str, Reply, &str)> = vec![
        ("500", status(500, r#"{"error":{"message":"boom"}}"#), "server_error"),
        (
            "429 + Retry-After",
            Reply::Scripted {
                head_ms: 5,
                status: 429,
                retry_after: Some("30".into()),
                chunks: vec![(0, br#"{"error":{"message":"slow down"}}"#.to_vec())],
                end: End::Clean,
            },
            "rate_limited",
        ),
        ("refused", Reply::Unreachable, "connect"),
        ("stall before headers", Reply::Timeout, "timeout_headers"),
        (
            "stall after headers, before content",
            scripted(5, vec![(0, role_chunk())], End::Stall),
            "timeout_first_content",
        ),
        ("death before content", scripted(5, vec![(0, role_chunk())], End::Broken), "stream_broken"),
    ];
    for (what, first, kind) in cases {
        let mut w = World::new(limited(), routing(&[("a", A), ("b", B)]));
        w.upstream(A, vec![first]);
        w.upstream(B, vec![stream_ok()]);
        let out = w.run(stream.clone());
        assert_eq!(out.status, 200, "{what}");
        let text = out.text();
        assert_eq!(
            text.matches("\"role\":\"assistant\"").count(),
            1,
            "{what}: one start, the serving one: {text}"
        );
        assert!(
            text.contains("Hel") && text.ends_with("data: [DONE]\n\n") && !text.contains("error"),
            "{what}: {text}"
        );
        // A long wait sent the head with a keepalive, before the channel was known.
        let named = if out.keepalives.is_empty() { Some("b") } else { None };
        assert_eq!(out.header("x-edgeway-channel"), named, "{what}");
        let e = &out.settled[0];
        assert_eq!(
            (e.channel.as_str(), e.cost_micros, e.outcome),
            ("b", 27, RequestOutcome::Completed),
            "{what}"
        );
        assert_eq!(kinds(e), [("a".into(), Some(kind.into())), ("b".into(), None)], "{what}");
        assert_eq!(w.account.in_flight(), 0, "{what}");
    }
}

#[test]
fn embeddings_relay_to_an_openai_compatible_upstream_and_are_billed_by_tokens() {
    let mut w = World::new(limited(), routing(&[("a", A)]));
    let answer = json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPw=="}],
                        "model":"up-model","usage":{"prompt_tokens":6,"total_tokens":6}});
    w.upstream(A, vec![ok_json(answer.clone())]);
    let out = w.run_family(
        Family::Embeddings,
        json!({"model": "m", "input": "hello", "encoding_format": "base64", "dimensions": 1}),
    );
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched, vec![format!("{A}/embeddings")]);
    assert_eq!(
        out.fetched_bodies[0],
        json!({"model": "up-model", "input": "hello", "encoding_format": "base64", "dimensions": 1})
    );
    let mut renamed = answer.clone();
    renamed["model"] = json!("m");
    assert_eq!(out.json(), renamed, "the upstream body, with the public model name");
    let e = &out.settled[0];
    assert_eq!(
        (e.endpoint, e.usage.input_uncached, e.usage.output, e.cost_micros),
        (Family::Embeddings, 6, 0, 6)
    );
    assert_eq!(w.account.reserved_micros(), 0);
}

impl World {
    /// A Gemini client's embeddings call (`:batchEmbedContents` or
    /// `:embedContent`, by the body) for model `m`.
    fn run_gemini_embed(&mut self, body: Value) -> Outcome {
        self.family = Family::Embeddings;
        let out = self.run_with(ClientDialect::Gemini, Some("m"), body);
        self.family = Family::Chat;
        out
    }
}

#[test]
fn a_gemini_clients_embeddings_go_to_an_openai_compatible_upstream_and_back() {
    let mut w = World::new(limited(), routing(&[("a", A)]));
    let answer = json!({"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,-0.25]},
                                                {"object":"embedding","index":0,"embedding":[1.0,0.0]}],
                        "model":"up-model","usage":{"prompt_tokens":6,"total_tokens":6}});
    w.upstream(A, vec![ok_json(answer)]);
    let out = w.run_gemini_embed(json!({"requests": [
        {"model": "models/m", "content": {"parts": [{"text": "hello"}]}, "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 2},
        {"model": "models/m", "content": {"parts": [{"text": "bye"}]}}
    ]}));
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.fetched, vec![format!("{A}/embeddings")]);
    assert_eq!(
        out.fetched_bodies[0],
        json!({"model": "up-model", "input": ["hello", "bye"], "dimensions": 2})
    );
    assert_eq!(
        out.json(),
        json!({"embeddings": [{"values": [1.0, 0.0]}, {"values": [0.5, -0.25]}],
               "usageMetadata": {"promptTokenCount": 6, "totalTokenCount": 6}})
    );
    assert_eq!(out.header("x-edgeway-dropped-params"), Some("taskType"));
    let e = &out.settled[0];
    assert_eq!((e.endpoint, e.usage.input_uncached, e.cost_micros), (Family::Embeddings, 6, 6));
    assert_eq!(e.usage_source, UsageSource::Provider);
}

#[test]
fn openai_embeddings_through_a_gemini_channel_are_translated_and_estimated() {
    let mut w = World::new(limited(), routing(&[("g", GEMINI)]));
    w.upstream(
        GEMINI,
        vec![ok_json(json!({"embeddings": [{"values": [0.5, 0.25]}, {"values": [-1.0, 2.0]}]}))],
    );
    let out = w.run_family(
        Family::Embeddings,
        json!({"model": "m", "input": ["hello world", "bye"], "dimensions": 2, "encoding_format": "base64", "user": "u1"}),
    );
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.fetched, vec![format!("{GEMINI}/models/up-model:batchEmbedContents")]);
    assert_eq!(
        out.fetched_bodies[0],
        json!({"requests": [
            {"model": "models/up-model", "content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 2},
            {"model": "models/up-model", "content": {"parts": [{"text": "bye"}]}, "outputDimensionality": 2}
        ]})
    );
    let body = out.json();
    let floats = |i: usize| -> Vec<f32> {
        let bytes = edgeway_core::base64::decode(body["data"][i]["embedding"].as_str().unwrap_or(""))
            .unwrap_or_default();
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    assert_eq!((floats(0), floats(1)), (vec![0.5, 0.25], vec![-1.0, 2.0]));
    assert_eq!((body["object"].clone(), body["model"].clone()), (json!("list"), json!("m")));
    // Gemini reports no usage: the estimate is billed, and shown as such.
    let e = &out.settled[0];
    assert_eq!((e.usage_source, e.usage.input_uncached), (UsageSource::Estimated, 4));
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(out.header("x-edgeway-usage"), Some("estimated"));

    // What a Gemini channel cannot take is a 400 before any call.
    let mut w = World::new(limited(), routing(&[("g", GEMINI)]));
    let out = w.run_family(Family::Embeddings, json!({"model": "m", "input": [[1, 2, 3]]}));
    assert_eq!((out.status, out.fetched.len()), (400, 0));
    assert_eq!(out.json()["error"]["param"], "input");
}

#[test]
fn a_gemini_clients_embeddings_from_the_mock_and_their_errors_in_its_dialect() {
    let mut w = World::new(limited(), routing(&[("m", "mock")]));
    let out =
        w.run_gemini_embed(json!({"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 5}));
    assert_eq!(out.status, 200, "{}", out.text());
    let body = out.json();
    assert_eq!(body["embedding"]["values"].as_array().map(Vec::len), Some(5));
    assert!(body["usageMetadata"]["promptTokenCount"].as_u64().is_some_and(|t| t > 0));
    let out = w.run_gemini_embed(
        json!({"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}}),
    );
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["error"]["status"], "INVALID_ARGUMENT", "a Gemini-shaped error: {}", out.text());
}

#[test]
fn completions_stream_through_the_relay_with_usage_forced_and_stripped() {
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    let chunk = |text: &str, finish: Value| json!({"id":"cmpl-1","object":"text_completion","choices":[{"text":text,"index":0,"finish_reason":finish}]});
    let stream = sse(&[
        chunk("Hel", Value::Null),
        chunk("lo", json!("stop")),
        json!({"id":"cmpl-1","object":"text_completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}),
    ]);
    w.upstream(A, vec![Reply::Status { status: 200, chunks: stream, broken: false }]);
    let out = w.run_family(Family::Completions, json!({"model": "m", "prompt": "Say hello", "stream": true}));
    assert_eq!(out.fetched, vec![format!("{A}/completions")]);
    assert_eq!(out.fetched_bodies[0]["stream_options"]["include_usage"], true);
    assert_eq!(out.fetched_bodies[0]["max_tokens"], 16, "the API's default, explicit");
    let text = out.text();
    assert!(
        text.contains("\"Hel\"") && text.ends_with("data: [DONE]\n\n") && !text.contains("usage"),
        "{text}"
    );
    assert_eq!(out.passed_through, 2, "unchanged chunks are handed back");
    let e = &out.events()[0];
    assert_eq!(
        (e.endpoint, e.usage.input_uncached, e.usage.output, e.cost_micros),
        (Family::Completions, 3, 2, 7)
    );
    assert_eq!(e.usage_source, UsageSource::Provider);
}

#[test]
fn the_built_in_mock_serves_every_family() {
    let mut w = World::new(limited(), routing(&[("m", "mock")]));
    let out = w.run_family(Family::Embeddings, json!({"model": "m", "input": ["a", "b"], "dimensions": 3}));
    assert_eq!(out.status, 200);
    let body = out.json();
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["data"][1]["embedding"].as_array().map(Vec::len), Some(3));
    assert_eq!(out.settled[0].endpoint, Family::Embeddings);

    let out = w.run_family(Family::Completions, json!({"model": "m", "prompt": "What is edgeway?"}));
    assert_eq!(
        out.json()["choices"][0]["text"],
        "Hello from the edgeway mock provider. You said: \"What is edgeway?\""
    );
    let out = w.run_family(
        Family::Completions,
        json!({"model": "m", "prompt": "What is edgeway?", "stream": true, "stream_options": {"include_usage": true}}),
    );
    let text = out.text();
    assert!(text.contains("\"completion_tokens\":11") && text.ends_with("data: [DONE]\n\n"), "{text}");
    let e = &out.settled[0];
    assert_eq!(
        (e.endpoint, e.usage.output, e.usage_source),
        (Family::Completions, 11, UsageSource::Provider)
    );
    assert_eq!((w.account.in_flight(), w.account.reserved_micros()), (0, 0));
}

#[test]
fn only_providers_that_serve_a_family_are_candidates() {
    const ANTHROPIC: &str = "http://anthropic.test/v1";
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    let out = w.run_family(Family::Embeddings, json!({"model": "m", "input": "x"}));
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["error"]["param"], "model");
    assert!(out.fetched.is_empty() && out.events().is_empty());

    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC), ("a", A)]));
    w.upstream(
        A,
        vec![ok_json(json!({"object":"list","data":[],"usage":{"prompt_tokens":1,"total_tokens":1}}))],
    );
    let out = w.run_family(Family::Embeddings, json!({"model": "m", "input": "x"}));
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched, vec![format!("{A}/embeddings")], "the Anthropic channel is skipped");

    let out = w.run_family(Family::Embeddings, json!({"model": "m", "input": ""}));
    assert_eq!((out.status, out.fetched.len()), (400, 0), "checked at the edge");
}

#[test]
fn private_media_hosts_reach_only_the_channels_that_list_them() {
    let image = |url: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    // No channel lists the host: a 400 before any upstream, nothing billed.
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    let out = w.run(image("http://10.0.0.9/cat.png"));
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["error"]["param"], "messages[0].content[1].image_url.url");
    assert!(out.fetched.is_empty() && out.events().is_empty());

    // `b` lists it, the higher-priority `a` does not: only `b` is tried, and
    // it gets the URL normalized.
    let mut r = routing(&[("a", A), ("b", B)]);
    r["channels"][1]["media_hosts"] = json!(["10.0.0.9", "minio.lan"]);
    let mut w = World::new(unlimited(), r);
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(image("http://10.0.0.9:9000/a/../cat.png"));
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched, vec![format!("{B}/chat/completions")]);
    assert_eq!(
        out.fetched_bodies[0]["messages"][0]["content"][1]["image_url"]["url"],
        "http://10.0.0.9:9000/cat.png"
    );
    w.upstream(B, vec![ok_json(completion())]);
    assert_eq!(w.run(image("http://MINIO.lan./b/c.png")).status, 200, "names compare normalized");

    // A host it does not list, and what the policy refuses for other reasons.
    for url in
        ["http://10.0.0.10/cat.png", "http://127.0.0.1/x.png", "file:///etc/passwd", "http://u:p@10.0.0.9/x"]
    {
        let out = w.run(image(url));
        assert_eq!((out.status, out.fetched.len(), out.events().len()), (400, 0, 0), "{url}");
    }
    // Public URLs still take the usual order.
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(image("https://example.com/cat.png"));
    assert_eq!(out.fetched, vec![format!("{A}/chat/completions")]);
    // Translated dialects never carry a non-public URL, allowance or not.
    let out = w.run_as(
        ClientDialect::Anthropic,
        json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://10.0.0.9/cat.png"}}]}]}),
    );
    assert_eq!((out.status, out.fetched.len()), (400, 0));
}

#[test]
fn after_the_first_content_failures_are_in_stream_errors_billed_for_what_was_received() {
    for (what, end) in [("stall", End::Stall), ("death", End::Broken)] {
        let mut w = World::new(limited(), routing(&[("a", A), ("b", B)]));
        w.upstream(A, vec![scripted(5, vec![(0, role_chunk()), (0, chunk_of("Hello there"))], end)]);
        w.upstream(B, vec![stream_ok()]);
        let t0 = w.now;
        let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
        assert_eq!(out.fetched.len(), 1, "{what}: no failover after content");
        let text = out.text();
        assert!(text.contains("Hello there") && text.contains("\"error\""), "{what}: {text}");
        let e = &out.settled[0];
        assert_eq!(
            (e.outcome, e.usage_source, e.status),
            (RequestOutcome::Failed, UsageSource::Estimated, 502),
            "{what}"
        );
        assert!(e.cost_micros > 0, "{what}: what was received is billed");
        if end == End::Stall {
            assert!(text.contains("did not respond in time"), "{text}");
            let idle = edgeway_core::limits::DEFAULT_IDLE_TIMEOUT_MS as i64;
            assert!(w.now - t0 >= idle, "ended by the idle limit");
            assert_eq!(out.cancelled, 1, "the quiet upstream was given up");
        }
    }
}

#[test]
fn a_stream_waiting_for_its_first_content_gets_keepalives_then_the_content() {
    let keepalive = edgeway_core::limits::DEFAULT_KEEPALIVE_MS as i64;
    for client in [ClientDialect::OpenAiChat, ClientDialect::Anthropic] {
        let mut w = World::new(unlimited(), routing(&[("a", A)]));
        // Headers after 7 s, the first content 5.5 s later.
        let chunks = vec![(0, role_chunk()), (5_500, chunk_of("late")), (0, chat_stream(true).concat())];
        w.upstream(A, vec![scripted(7_000, chunks, End::Clean)]);
        let body = json!({"model": "m", "messages": user("think"), "max_tokens": 10, "stream": true});
        let out = w.run_as(client, body);
        assert_eq!(out.status, 200);
        assert_eq!(
            out.head_at.map(|t| t / 100),
            Some(keepalive / 100),
            "the head goes out with the first keepalive"
        );
        assert_eq!(out.header("content-type"), Some("text/event-stream; charset=utf-8"));
        assert_eq!(out.header("x-edgeway-channel"), None, "not known yet when the head went out");
        assert_eq!(out.keepalives.len(), 2, "at 5 s and 10 s: {:?}", out.keepalives);
        assert_eq!(out.writes[0], keepalive_bytes(client));
        let text = out.text();
        assert!(text.contains("late"), "{text}");
        if client == ClientDialect::Anthropic {
            assert!(text.starts_with("event: ping\n"), "{text}");
            assert!(text.contains("event: message_stop"), "{text}");
        }
    }
}

#[test]
fn a_quick_failure_keeps_its_status_and_a_late_one_is_an_in_stream_error() {
    let stream = json!({"model": "m", "messages": user("hi"), "stream": true});
    let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
    w.upstream(A, vec![status(503, "{}")]);
    w.upstream(B, vec![Reply::Unreachable]);
    let out = w.run(stream.clone());
    assert_eq!((out.status, out.writes.len()), (502, 0), "no keepalive was due: a plain error response");
    assert_eq!(out.header("x-edgeway-channel"), Some("b"));
    let e = &out.events()[0];
    assert_eq!(kinds(e), [("a".into(), Some("server_error".into())), ("b".into(), Some("connect".into()))]);
    assert_eq!(e.cost_micros, 0);

    // Both fail only after the first keepalive: the client, already
    // answered 200, gets an error event in its dialect.
    for client in [ClientDialect::OpenAiChat, ClientDialect::Anthropic, ClientDialect::Gemini] {
        let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
        w.upstream(
            A,
            vec![Reply::Scripted {
                head_ms: 6_000,
                status: 500,
                retry_after: None,
                chunks: vec![],
                end: End::Clean,
            }],
        );
        w.upstream(B, vec![Reply::Unreachable]);
        let body = match client {
            ClientDialect::Gemini => json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
            _ => json!({"model": "m", "messages": user("hi"), "max_tokens": 5, "stream": true}),
        };
        let out =
            if client == ClientDialect::Gemini { w.run_gemini_stream(body) } else { w.run_as(client, body) };
        assert_eq!(out.status, 200);
        let text = out.text();
        match client {
            ClientDialect::Anthropic => assert!(text.contains("event: error"), "{text}"),
            _ => assert!(text.contains("\"error\""), "{text}"),
        }
        assert!(out.events()[0].cost_micros == 0);
    }
}

#[test]
fn a_well_formed_empty_stream_is_served_not_failed_over() {
    let mut w = World::new(unlimited(), routing(&[("a", A), ("b", B)]));
    let empty = sse(&[
        json!({"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
        json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}),
    ]);
    w.upstream(A, vec![Reply::Status { status: 200, chunks: empty, broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true, "max_tokens": 1}));
    assert_eq!((out.status, out.fetched.len()), (200, 1));
    assert!(out.text().ends_with("data: [DONE]\n\n"), "{}", out.text());
}

const ANTHROPIC: &str = "http://anthropic.test/v1";
const GEMINI: &str = "http://gemini.test/v1beta";
const THINKING_CASE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/translation/cases/thinking_usage/");

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(format!("{THINKING_CASE}{file}")).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}])
}

/// An OpenAI client's first turn, then its second (the assistant turn as the
/// openai SDK sends it back: tool calls, reasoning text at most, no signature).
fn two_turns(w: &mut World, stream: bool) -> (Outcome, Outcome) {
    let first = w.run(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "stream": stream,
        "messages": user("Weather in Paris?"), "tools": weather_tools()}));
    assert_eq!(first.status, 200);
    let call_id = if stream {
        let text = first.text();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{text}"))
    } else {
        first.json()["choices"][0]["message"]["tool_calls"][0]["id"].as_str().unwrap_or_default().to_string()
    };
    assert!(!call_id.is_empty());
    assert!(!String::from_utf8_lossy(&first.body).contains("sig=="), "the client is not shown signatures");
    let second = w.run(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "tools": weather_tools(),
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "21C"}]}));
    (first, second)
}

#[test]
fn anthropic_signatures_come_back_in_the_next_turn_exactly_as_issued() {
    for stream in [false, true] {
        let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
        let first = if stream {
            Reply::Status { status: 200, chunks: vec![fixture("stream.anthropic.sse")], broken: false }
        } else {
            Reply::Status { status: 200, chunks: vec![fixture("response.anthropic.json")], broken: false }
        };
        w.upstream(ANTHROPIC, vec![first, ok_json(json!({"type": "message", "id": "m2", "role": "assistant",
            "content": [{"type": "text", "text": "21C in Paris."}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}}))]);
        let (first, second) = two_turns(&mut w, stream);
        assert_eq!(first.header("x-edgeway-reasoning-state"), None, "the first turn needed nothing");
        assert_eq!(w.store_calls, ["/put", "/get"], "stream: {stream}");
        let sent = &second.fetched_bodies[0];
        assert_eq!(sent["thinking"]["type"], "enabled", "thinking stays on: the turn is signed");
        assert_eq!(
            sent["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "The user wants weather; call the tool.", "signature": "EqQBCkYIBxgCKkBanthropic-sig=="})
        );
        assert_eq!(
            sent["messages"][1]["content"][1],
            json!({"type": "redacted_thinking", "data": "EmwKAhgBEgy3redacted=="})
        );
        assert_eq!(sent["messages"][1]["content"][3]["type"], "tool_use");
        assert_eq!(second.header("x-edgeway-reasoning-state"), Some("restored"));
    }
}

#[test]
fn gemini_signatures_come_back_on_their_calls() {
    for stream in [false, true] {
        let mut w = World::new(unlimited(), routing(&[("g", GEMINI)]));
        let first = if stream {
            Reply::Status { status: 200, chunks: vec![fixture("stream.gemini.sse")], broken: false }
        } else {
            Reply::Status { status: 200, chunks: vec![fixture("response.gemini.json")], broken: false }
        };
        w.upstream(GEMINI, vec![first, ok_json(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "21C."}]}, "finishReason": "STOP"}]}))]);
        let (_, second) = two_turns(&mut w, stream);
        let parts = &second.fetched_bodies[0]["contents"][1]["parts"];
        let call = parts.as_array().and_then(|p| p.iter().find(|p| p.get("functionCall").is_some())).cloned();
        assert_eq!(
            call.map(|c| c["thoughtSignature"].clone()),
            Some(json!("CiQBgemini-sig==")),
            "stream {stream}: {parts}"
        );
        assert_eq!(second.header("x-edgeway-reasoning-state"), Some("restored"));
    }
}

#[test]
fn expired_or_foreign_state_takes_the_fallback_and_says_so() {
    let answer = || {
        ok_json(json!({"type": "message", "id": "m2", "role": "assistant",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}}))
    };
    // expired: a day later
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    let day = edgeway_core::translate::signature_vault::VAULT_TTL_MS;
    w.upstream(
        ANTHROPIC,
        vec![Reply::Status { status: 200, chunks: vec![fixture("response.anthropic.json")], broken: false }],
    );
    let first = w.run(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "messages": user("Weather?"), "tools": weather_tools()}));
    let call_id =
        first.json()["choices"][0]["message"]["tool_calls"][0]["id"].as_str().unwrap_or_default().to_string();
    w.now += day;
    w.upstream(ANTHROPIC, vec![answer()]);
    let next = json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "21C"}]});
    let second = w.run(next.clone());
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-edgeway-reasoning-state"), Some("fallback"));
    assert!(
        second.fetched_bodies[0].get("thinking").is_none(),
        "the documented fallback: thinking off for the turn"
    );
    // another key: its own store holds nothing of the first key's
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    w.upstream(
        ANTHROPIC,
        vec![
            Reply::Status { status: 200, chunks: vec![fixture("response.anthropic.json")], broken: false },
            answer(),
        ],
    );
    let _ = w.run(json!({"model": "m", "reasoning_effort": "low", "max_tokens": 4000, "messages": user("Weather?"), "tools": weather_tools()}));
    let other = "sk-ew-test-key-111111111111111111";
    let mut record = unlimited();
    record["digest"] = json!(key_digest(other));
    w.kv.insert(format!("key:{}", key_digest(other)), record.to_string());
    w.key = other.to_string();
    let second = w.run(next);
    assert_eq!(second.header("x-edgeway-reasoning-state"), Some("fallback"));
    assert!(second.fetched_bodies[0].get("thinking").is_none());
    assert_eq!(w.stores.len(), 2, "one store per key");
}

#[test]
fn requests_that_need_no_state_make_no_store_call() {
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    w.upstream(ANTHROPIC, vec![ok_json(json!({"type": "message", "id": "m2", "role": "assistant",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}}))]);
    // tool history, but thinking off: Anthropic ignores past thinking
    let out = w.run(json!({"model": "m", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "21C"}]}));
    assert_eq!(out.status, 200);
    assert!(w.store_calls.is_empty());
    assert_eq!(out.header("x-edgeway-reasoning-state"), None);
}

/// The `response` object of a Responses answer (whole, or the stream's
/// `response.completed`).
fn responses_object(out: &Outcome, stream: bool) -> Value {
    if !stream {
        return out.json();
    }
    let text = out.text();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "response.completed")
        .map(|e| e["response"].clone())
        .unwrap_or_else(|| panic!("no response.completed: {text}"))
}

#[test]
fn responses_previous_response_id_expands_the_stored_conversation_for_any_upstream() {
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    for stream in [false, true] {
        let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
        let file = if stream { "stream.anthropic.sse" } else { "response.anthropic.json" };
        w.upstream(
            ANTHROPIC,
            vec![
                Reply::Status { status: 200, chunks: vec![fixture(file)], broken: false },
                ok_json(json!({"type": "message", "id": "m2", "role": "assistant",
                    "content": [{"type": "text", "text": "21C in Paris."}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}})),
            ],
        );
        let first = w.run_as(
            ClientDialect::OpenAiResponses,
            json!({"model": "m", "store": true, "stream": stream, "reasoning": {"effort": "low"},
                "max_output_tokens": 4000, "tools": tools, "input": "Weather in Paris?"}),
        );
        assert_eq!(first.status, 200);
        let response = responses_object(&first, stream);
        let id = response["id"].as_str().unwrap_or_default().to_string();
        assert!(id.starts_with("resp_"), "named by the gateway: {id}");
        assert_eq!(w.store_calls, ["/put"], "stored before the answer's end (stream: {stream})");
        let stored = &w.stores[&key_digest(KEY)].1[&format!("r:{id}")];
        assert!(stored.contains("Weather in Paris?") && stored.contains("toolu_x1"), "{stored}");
        let call_id = response["output"]
            .as_array()
            .and_then(|o| o.iter().find(|i| i["type"] == "function_call"))
            .map(|c| c["call_id"].clone())
            .unwrap_or_default();
        w.now += 1_000;
        let second = w.run_as(
            ClientDialect::OpenAiResponses,
            json!({"model": "m", "previous_response_id": id, "reasoning": {"effort": "low"}, "max_output_tokens": 4000,
                "tools": tools, "input": [{"type": "function_call_output", "call_id": call_id, "output": "21C"}]}),
        );
        assert_eq!(second.status, 200, "{}", String::from_utf8_lossy(&second.body));
        assert_eq!(w.store_calls, ["/put", "/get"], "no store: the second answer is not kept");
        let sent = &second.fetched_bodies[0];
        let roles: Vec<&str> =
            sent["messages"].as_array().into_iter().flatten().filter_map(|m| m["role"].as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(
            sent["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "The user wants weather; call the tool.", "signature": "EqQBCkYIBxgCKkBanthropic-sig=="}),
            "signed reasoning as issued (stream: {stream})"
        );
        assert_eq!(
            sent["messages"][1]["content"][1],
            json!({"type": "redacted_thinking", "data": "EmwKAhgBEgy3redacted=="})
        );
        assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], call_id);
    }
}

#[test]
fn an_unknown_previous_response_is_a_400_and_without_store_nothing_is_kept() {
    let mut w = World::new(unlimited(), routing(&[("c", ANTHROPIC)]));
    let out = w.run_as(
        ClientDialect::OpenAiResponses,
        json!({"model": "m", "previous_response_id": "resp_nothing", "input": "hi"}),
    );
    assert_eq!((out.status, out.fetched.len()), (400, 0));
    assert_eq!(out.json()["error"]["param"], "previous_response_id");
    assert_eq!(w.store_calls, ["/get"]);
    w.upstream(ANTHROPIC, vec![ok_json(json!({"type": "message", "id": "m2", "role": "assistant",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}}))]);
    let out = w.run_as(ClientDialect::OpenAiResponses, json!({"model": "m", "input": "hi"}));
    assert_eq!(out.status, 200);
    assert_eq!(w.store_calls, ["/get"], "no store: no call");
}

fn caching(billing: &str) -> Value {
    let mut r = routing(&[("a", A)]);
    r["models"][0]["options"] = json!({"cache": {"ttl_secs": 60, "billing": billing}});
    r
}

#[test]
fn deterministic_requests_are_answered_from_the_cache_of_their_own_key() {
    let mut w = World::new(unlimited(), caching("free"));
    w.upstream(A, vec![ok_json(completion())]);
    let body = json!({"model": "m", "messages": user("hi"), "temperature": 0});
    let miss = w.run(body.clone());
    assert_eq!((miss.status, miss.fetched.len()), (200, 1));
    assert_eq!(miss.header("x-edgeway-cache"), Some("miss"));
    assert_eq!(w.cache_calls, ["get", "put"], "stored after the answer");
    let hit = w.run(body.clone());
    assert_eq!((hit.status, hit.fetched.len()), (200, 0), "no upstream call");
    assert_eq!(hit.header("x-edgeway-cache"), Some("hit"));
    assert_eq!(hit.header("content-type"), Some("application/json"));
    assert_eq!(hit.body, miss.body, "the same answer, byte for byte");
    let (first, again) = (&miss.events()[0], &hit.events()[0]);
    assert_eq!((again.usage, again.usage_source, again.cost_micros), (first.usage, UsageSource::Cache, 0));
    assert_eq!(again.channel, "a");
    assert_eq!(w.cache_calls, ["get", "put", "get"]);

    // Another key: its own cache, so a miss.
    let other = "sk-ew-test-key-222222222222222222";
    let mut record = unlimited();
    record["digest"] = json!(key_digest(other));
    w.kv.insert(format!("key:{}", key_digest(other)), record.to_string());
    w.key = other.to_string();
    w.upstream(A, vec![ok_json(completion())]);
    let foreign = w.run(body.clone());
    assert_eq!((foreign.header("x-edgeway-cache"), foreign.fetched.len()), (Some("miss"), 1));

    // Expired: a miss again.
    w.key = KEY.to_string();
    w.now += 61_000;
    w.upstream(A, vec![ok_json(completion())]);
    assert_eq!(w.run(body).header("x-edgeway-cache"), Some("miss"));
}

#[test]
fn requests_that_are_not_deterministic_bypass_the_cache() {
    let mut w = World::new(unlimited(), caching("free"));
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for body in [
        json!({"model": "m", "messages": user("hi")}),
        json!({"model": "m", "messages": user("hi"), "temperature": 0.7}),
        json!({"model": "m", "messages": user("hi"), "temperature": 0, "tools": tools}),
        json!({"model": "m", "messages": user("hi"), "temperature": 0, "n": 2}),
    ] {
        w.upstream(A, vec![ok_json(completion())]);
        let out = w.run(body.clone());
        assert_eq!((out.status, out.header("x-edgeway-cache")), (200, Some("bypass")), "{body}");
    }
    assert!(w.cache_calls.is_empty());
    // A model without the option says nothing.
    let mut w = World::new(unlimited(), routing(&[("a", A)]));
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "temperature": 0}));
    assert_eq!(out.header("x-edgeway-cache"), None);
    assert!(w.cache_calls.is_empty());
}

#[test]
fn a_stream_hit_is_replayed_as_the_same_stream_and_billed_as_configured() {
    for (billing, cost) in [("free", 0), ("full", 11 + 16), ("cache_read", 11)] {
        let mut w = World::new(limited(), caching(billing));
        w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true), broken: false }]);
        let body = json!({"model": "m", "messages": user("hi"), "seed": 7, "stream": true});
        let miss = w.run(body.clone());
        assert_eq!(miss.header("x-edgeway-cache"), Some("miss"), "{:?} {:?}", w.cache_calls, miss.trace);
        let hit = w.run(body.clone());
        assert_eq!((hit.status, hit.fetched.len()), (200, 0), "{:?} {:?}", w.cache_calls, miss.trace);
        assert_eq!(hit.header("x-edgeway-cache"), Some("hit"));
        assert_eq!(hit.header("content-type"), Some("text/event-stream; charset=utf-8"));
        assert_eq!(hit.text(), miss.text(), "the same events");
        let e = &hit.events()[0];
        assert_eq!((e.usage_source, e.cost_micros, e.stream), (UsageSource::Cache, cost, true), "{billing}");
        assert_eq!(hit.settled.len(), 1, "an admitted hit is settled like any request");
        // A whole answer is another entry.
        w.upstream(A, vec![ok_json(completion())]);
        let whole = w.run(json!({"model": "m", "messages": user("hi"), "seed": 7}));
        assert_eq!(whole.header("x-edgeway-cache"), Some("miss"));
    }
}

#[test]
fn failed_answers_are_not_cached() {
    let mut w = World::new(unlimited(), caching("free"));
    w.upstream(A, vec![status(500, "{}")]);
    let body = json!({"model": "m", "messages": user("hi"), "temperature": 0});
    assert_eq!(w.run(body.clone()).status, 502);
    assert_eq!(w.cache_calls, ["get"]);
    w.upstream(A, vec![Reply::Status { status: 200, chunks: chat_stream(true)[..2].to_vec(), broken: true }]);
    let cut = w.run(json!({"model": "m", "messages": user("hi"), "temperature": 0, "stream": true}));
    assert_eq!(cut.status, 200);
    assert_eq!(w.cache_calls, ["get", "get"], "a stream cut short is not kept");
}

#[test]
fn a_request_its_slice_refuses_gives_the_idle_slice_back() {
    // Quota 100: the first request's worst case (well above 100) cannot fit.
    let mut w = World::new(json!({"quota_micros": 100}), routing(&[("a", A)]));
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hello there")}));
    assert_eq!(out.status, 429);
    assert_eq!(out.fetched.len(), 0);
    assert_eq!(out.renewals, 2, "the refused renewal, then the release 1 s later: {:?}", out.trace);
    let snapshot = w.account.snapshot(w.now);
    assert_eq!((snapshot.slices, snapshot.reserved_micros, snapshot.in_flight), (0, 0, 0), "nothing held");
}

/// Routing with a breaker policy on every channel.
fn routing_with_breaker(targets: &[(&str, &str)], failures: u32, open_ms: u64) -> Value {
    let mut r = routing(targets);
    for ch in r["channels"].as_array_mut().unwrap() {
        ch["breaker"] = json!({"failures": failures, "window_ms": 10_000, "open_ms": open_ms});
    }
    r
}

#[test]
fn an_open_circuit_is_skipped_then_probed_once_and_closed_by_the_probe() {
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 2, 5_000));
    // Two failures of a (each request failing over to b) open a's circuit.
    for _ in 0..2 {
        w.upstream(A, vec![status(500, r#"{"error":{"message":"boom"}}"#)]);
        w.upstream(B, vec![ok_json(completion())]);
        let out = w.run(json!({"model": "m", "messages": user("hi")}));
        assert_eq!((out.status, out.fetched.len()), (200, 2));
    }
    // Open: a is not tried at all.
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched.len(), 1, "a skipped");
    assert!(out.fetched[0].starts_with(B));
    let e = &out.events()[0];
    assert_eq!(e.attempts.len(), 1, "a skipped circuit is no attempt");
    assert!(out.logs.iter().any(|l| l.contains("channel a skipped: its circuit is open")), "{:?}", out.logs);
    // After the cool-down one request probes a; its success closes the circuit.
    w.now += 5_000;
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!((out.status, out.fetched.len()), (200, 1));
    assert!(out.fetched[0].starts_with(A), "the probe went to a");
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert!(out.fetched[0].starts_with(A), "closed again");
    assert!(w.isolate.breakers.view(w.now).is_empty());
}

#[test]
fn when_every_circuit_is_open_they_are_tried_anyway_and_a_clients_400_opens_none() {
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 1, 1_000));
    w.upstream(A, vec![status(503, "{}")]);
    w.upstream(B, vec![status(503, "{}")]);
    assert_eq!(w.run(json!({"model": "m", "messages": user("hi")})).status, 503);
    // Both open: rather than refuse unseen, both are tried in order.
    w.upstream(A, vec![status(503, "{}")]);
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!((out.status, out.fetched.len()), (200, 2), "{:?}", out.fetched);
    // A client's own 400 never opens a circuit.
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 1, 60_000));
    w.upstream(A, vec![status(400, r#"{"error":{"message":"bad"}}"#)]);
    assert_eq!(w.run(json!({"model": "m", "messages": user("hi")})).status, 400);
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert!(out.fetched[0].starts_with(A));
}

/// Model `m` (channel a, 1/2 µ per token) falls back to `m2` (channel b, 3/4 µ per token).
fn routing_with_fallback() -> Value {
    json!({"version": 1,
        "channels": [
            {"id": "a", "provider": "openai-compatible", "base_url": A, "api_key": "sk-up-secret-a", "breaker": {"failures": 0}},
            {"id": "b", "provider": "openai-compatible", "base_url": B, "api_key": "sk-up-secret-b"}],
        "models": [
            {"name": "m", "price": {"input": 1_000_000, "output": 2_000_000},
             "targets": [{"channel": "a", "upstream_model": "up-a"}], "options": {"fallbacks": ["m2"]}},
            {"name": "m2", "price": {"input": 3_000_000, "output": 4_000_000},
             "targets": [{"channel": "b", "upstream_model": "up-b"}]}]})
}

#[test]
fn a_model_whose_channels_all_fail_falls_back_and_bills_the_model_that_served() {
    let mut w = World::new(unlimited(), routing_with_fallback());
    w.upstream(A, vec![status(500, r#"{"error":{"message":"boom"}}"#)]);
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 200);
    assert_eq!(out.header("x-edgeway-model"), Some("m2"), "the response says which model served");
    assert_eq!(out.header("x-edgeway-channel"), Some("b"));
    let body: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(body["model"], "m2");
    assert_eq!(out.fetched_bodies[1]["model"], "up-b");
    let e = &out.events()[0];
    assert_eq!((e.model.as_str(), e.served_model.as_str()), ("m", "m2"));
    assert_eq!(e.cost_micros, 11 * 3 + 8 * 4, "billed at m2's price");
    let attempts: Vec<(&str, &str, bool)> =
        e.attempts.iter().map(|a| (a.channel.as_str(), a.model.as_str(), a.failure.is_none())).collect();
    assert_eq!(attempts, vec![("a", "m", false), ("b", "m2", true)]);
    assert!(out.logs.iter().any(|l| l.contains("falling back from `m` to `m2`")), "{:?}", out.logs);

    // Healthy: m serves itself, under its own name and price.
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.header("x-edgeway-model"), Some("m"));
    let e = &out.events()[0];
    assert_eq!((e.served_model.as_str(), e.cost_micros), ("", 11 + 16));

    // A client's own fault is not retried on a fallback.
    w.upstream(A, vec![status(400, r#"{"error":{"message":"bad"}}"#)]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!((out.status, out.fetched.len()), (400, 1));
}

#[test]
fn a_fallback_the_key_may_not_use_is_not_tried() {
    let mut w = World::new(json!({"allowed_models": ["m"]}), routing_with_fallback());
    w.upstream(A, vec![status(500, r#"{"error":{"message":"boom"}}"#)]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!((out.status, out.fetched.len()), (502, 1), "{:?}", out.fetched);
}

#[test]
fn a_stream_falls_back_invisibly_and_names_the_model_that_served() {
    let mut w = World::new(unlimited(), routing_with_fallback());
    w.upstream(A, vec![Reply::Unreachable]);
    let chunks = sse(&[
        json!({"id":"c","model":"up-b","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
        json!({"id":"c","model":"up-b","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}),
        json!({"id":"c","model":"up-b","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}),
    ]);
    w.upstream(B, vec![Reply::Status { status: 200, chunks, broken: false }]);
    let out = w.run(json!({"model": "m", "messages": user("hi"), "stream": true}));
    assert_eq!(out.status, 200);
    let text = out.text();
    assert_eq!(text.matches(r#""model":"m2""#).count(), 2, "every chunk names m2: {text}");
    assert!(!text.contains("up-b") && !text.contains(r#""model":"m""#), "{text}");
    assert_eq!(out.events()[0].served_model, "m2");
}

/// Channel a with three credentials (b as a second channel).
fn routing_with_keys(rotation: &str) -> Value {
    let mut r = routing(&[("a", A), ("b", B)]);
    r["channels"][0]["api_key"] = json!("sk-up-secret-k0");
    r["channels"][0]["api_keys"] = json!(["sk-up-secret-k1", "sk-up-secret-k2"]);
    r["channels"][0]["key_rotation"] = json!(rotation);
    r
}

#[test]
fn a_channels_credentials_take_turns_and_a_refused_one_leaves_the_rotation() {
    let mut w = World::new(unlimited(), routing_with_keys("round_robin"));
    let mut used = Vec::new();
    for _ in 0..6 {
        w.upstream(A, vec![ok_json(completion())]);
        let out = w.run(json!({"model": "m", "messages": user("hi")}));
        assert_eq!(out.status, 200);
        used.push(out.auths[0].clone());
    }
    let k = |i: usize| format!("Bearer sk-up-secret-k{i}");
    assert_eq!(used, vec![k(0), k(1), k(2), k(0), k(1), k(2)], "round robin");
    // k0 is refused: the same channel retries at once with its next credential.
    w.upstream(
        A,
        vec![status(401, r#"{"error":{"message":"invalid key sk-up-secret-k0"}}"#), ok_json(completion())],
    );
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 200);
    assert_eq!(out.auths, vec![k(0), k(1)]);
    assert!(out.fetched.iter().all(|u| u.starts_with(A)), "served by a, not failed over to b");
    let e = &out.events()[0];
    assert_eq!(
        e.attempts.iter().map(|a| a.failure.as_deref()).collect::<Vec<_>>(),
        vec![Some("credential_refused"), None]
    );
    // From then on k0 is out of rotation.
    for _ in 0..4 {
        w.upstream(A, vec![ok_json(completion())]);
        let out = w.run(json!({"model": "m", "messages": user("hi")}));
        assert_ne!(out.auths[0], k(0));
    }
    let view = w.isolate.breakers.view(w.now);
    assert!(
        view.iter().any(|c| c.channel == "a"
            && c.credential == Some(0)
            && c.last_failure.as_deref() == Some("credential_refused")),
        "{view:?}"
    );
    // Past the cool-down one request tries k0 again; its success brings it back.
    w.now += 5 * 60_000;
    let mut probed = false;
    for _ in 0..3 {
        w.upstream(A, vec![ok_json(completion())]);
        probed |= w.run(json!({"model": "m", "messages": user("hi")})).auths[0] == k(0);
    }
    assert!(probed, "k0 probed after its cool-down");
    assert!(w.isolate.breakers.view(w.now).iter().all(|c| c.credential != Some(0)));
}

#[test]
fn a_channel_with_no_usable_credential_is_skipped() {
    let mut w = World::new(unlimited(), routing_with_keys("random"));
    // Every credential of a is refused in turn; b serves.
    w.upstream(A, (0..3).map(|_| status(403, r#"{"error":{"message":"forbidden"}}"#)).collect());
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 200);
    assert_eq!(
        out.fetched.iter().filter(|u| u.starts_with(A)).count(),
        3,
        "each key once, then the next channel"
    );
    let mut sorted = out.auths[..3].to_vec();
    sorted.sort();
    assert_eq!(sorted, (0..3).map(|i| format!("Bearer sk-up-secret-k{i}")).collect::<Vec<_>>());
    // Now a has no usable credential: skipped without a call.
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.fetched.len(), 1);
    assert!(out.fetched[0].starts_with(B));
    assert!(out.logs.iter().any(|l| l.contains("channel a skipped: no usable credential")), "{:?}", out.logs);
}

impl World {
    /// Takes the key's one concurrency slot, as another request would.
    fn hold_slot(&mut self, record: &Value) -> edgeway_core::pipeline::account_slice::Ticket {
        use edgeway_core::pipeline::account_slice::{LocalAdmit, Need, Renewed};
        let mut record = record.clone();
        record["digest"] = json!(key_digest(KEY));
        let record: edgeway_core::key_record::KeyRecord = serde_json::from_value(record).unwrap();
        let limits = edgeway_core::key_account::KeyLimits::from_record(&record);
        let need = Need { reserve_micros: 0, tokens: 1 };
        let renewal = match self.isolate.slices.admit(&record.digest, &limits, need, self.now) {
            LocalAdmit::Admitted(ticket) => return ticket,
            LocalAdmit::Renew(renewal) => renewal,
            other => panic!("{other:?}"),
        };
        let (grant, _) = self.account.renew_slice(&renewal, self.now);
        match self.isolate.slices.renewed(&record.digest, grant, self.now, Some(need)) {
            Renewed::Admitted(ticket) => ticket,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_request_over_the_limit_waits_for_a_slot_up_to_the_keys_max_wait() {
    let record = json!({"max_concurrency": 1, "max_wait_ms": 300});
    let mut w = World::new(record.clone(), routing(&[("a", A)]));
    let held = w.hold_slot(&record);
    w.release_at = Some((w.now + 100, held));
    w.upstream(A, vec![ok_json(completion())]);
    let t0 = w.now;
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 200, "served once the slot freed");
    assert!(w.now - t0 >= 100, "it waited for the slot");
    assert_eq!(w.isolate.waiters.waiting(&key_digest(KEY)), 0, "out of the queue");

    // Never freed: refused when the wait is over, not before.
    let held = w.hold_slot(&record);
    let t0 = w.now;
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.status, 429);
    assert!((300..400).contains(&(w.now - t0)), "refused after max_wait_ms: {} ms", w.now - t0);
    assert_eq!(w.isolate.waiters.waiting(&key_digest(KEY)), 0);
    w.isolate.slices.release(&held);

    // A waiter whose client disconnects leaves the queue: nothing forwarded.
    let held = w.hold_slot(&record);
    w.gone_on_sleep = true;
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.fetched.len(), 0);
    assert!(out.logs.iter().any(|l| l.contains("left while waiting")), "{:?}", out.logs);
    assert_eq!(w.isolate.waiters.waiting(&key_digest(KEY)), 0, "out of the queue");
    w.isolate.slices.release(&held);

    // Without max_wait_ms the refusal is immediate.
    let record = json!({"max_concurrency": 1});
    let mut w = World::new(record.clone(), routing(&[("a", A)]));
    let _held = w.hold_slot(&record);
    let t0 = w.now;
    assert_eq!(w.run(json!({"model": "m", "messages": user("hi")})).status, 429);
    assert!(w.now - t0 < 20);
}

/// Two isolates (two `IsolateState`s taking turns in one world) sharing the
/// channels' health records.
fn shared_isolate() -> IsolateState {
    let mut isolate = IsolateState::default();
    isolate.config.shared_health = true;
    isolate
}

#[test]
fn failures_seen_by_two_isolates_open_the_circuit_for_both() {
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 2, 5_000));
    w.isolate = shared_isolate();
    let mut other = shared_isolate();
    // One failure of a in each isolate: neither opens its own copy.
    for _ in 0..2 {
        w.upstream(A, vec![status(500, r#"{"error":{"message":"boom"}}"#)]);
        w.upstream(B, vec![ok_json(completion())]);
        assert_eq!(w.run(json!({"model": "m", "messages": user("hi")})).fetched.len(), 2);
        assert_eq!(w.sync_health(), 2, "a's failure and b's first use");
        std::mem::swap(&mut w.isolate, &mut other);
    }
    // The record counted both: the second report opened it, and the first
    // isolate learns it at its next refresh of a.
    assert_eq!(w.boards["a"].view("a", w.now).circuits.len(), 1);
    w.now += HEALTH_SYNC_MS;
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.fetched.len(), 2, "not yet known here: a tried once more");
    w.sync_health();
    w.upstream(B, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(out.fetched.len(), 1, "open in this isolate too: a skipped");
    assert!(out.fetched[0].starts_with(B));
    assert!(w.claims.is_empty(), "no round trip while the circuit is open");
}

#[test]
fn after_the_cool_down_one_isolate_probes_and_the_other_skips_without_trying() {
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 1, 5_000));
    w.isolate = shared_isolate();
    w.upstream(A, vec![status(500, "{}")]);
    w.upstream(B, vec![ok_json(completion())]);
    w.run(json!({"model": "m", "messages": user("hi")}));
    w.sync_health();
    let mut other = shared_isolate();
    std::mem::swap(&mut w.isolate, &mut other);
    w.upstream(B, vec![ok_json(completion())]);
    w.run(json!({"model": "m", "messages": user("hi")}));
    w.now += HEALTH_SYNC_MS;
    w.sync_health();
    // Both isolates' copies now say open; after the cool-down both would probe.
    w.now += 5_000;
    w.upstream(A, vec![ok_json(completion())]);
    let first = w.run(json!({"model": "m", "messages": user("hi")}));
    assert!(first.fetched[0].starts_with(A), "this isolate's claim was granted: it probed a");
    assert!(first.logs.iter().any(|l| l.contains("this request probes it")), "{:?}", first.logs);
    std::mem::swap(&mut w.isolate, &mut other);
    // The probe's success has not been reported yet: a is half-open at the record.
    w.upstream(B, vec![ok_json(completion())]);
    let second = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(second.fetched.len(), 1);
    assert!(second.fetched[0].starts_with(B), "the other isolate's claim was refused: b served");
    assert!(
        second.logs.iter().any(|l| l.contains("channel a skipped: another request probes it")),
        "{:?}",
        second.logs
    );
    assert_eq!(second.events()[0].attempts.len(), 1, "a refused claim is no attempt");
    assert_eq!(w.claims, ["a", "a"]);
    // The prober reports its success; the other isolate, which skipped a,
    // refreshes its copy of a too, and tries a again with no claim.
    std::mem::swap(&mut w.isolate, &mut other);
    w.sync_health();
    std::mem::swap(&mut w.isolate, &mut other);
    w.now += HEALTH_SYNC_MS;
    assert_eq!(w.sync_health(), 2, "a (skipped) and b (served)");
    assert!(w.isolate.breakers.view(w.now).is_empty(), "closed in this isolate's copy");
    w.upstream(A, vec![ok_json(completion())]);
    let third = w.run(json!({"model": "m", "messages": user("hi")}));
    assert!(third.fetched[0].starts_with(A), "a tried");
    assert_eq!(w.claims.len(), 2, "no claim for a closed circuit");
}

#[test]
fn an_unreachable_record_leaves_the_isolate_deciding_alone() {
    let mut w = World::new(unlimited(), routing_with_breaker(&[("a", A), ("b", B)], 1, 5_000));
    w.isolate = shared_isolate();
    w.health_unreachable = true;
    w.upstream(A, vec![status(500, "{}")]);
    w.upstream(B, vec![ok_json(completion())]);
    w.run(json!({"model": "m", "messages": user("hi")}));
    w.upstream(B, vec![ok_json(completion())]);
    assert_eq!(w.run(json!({"model": "m", "messages": user("hi")})).fetched.len(), 1, "open here");
    w.now += 5_000;
    w.upstream(A, vec![ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("hi")}));
    assert_eq!(w.claims, ["a"], "the claim was sent");
    assert!(out.fetched[0].starts_with(A), "and unanswered: probed on the isolate's own word");
    assert!(out.logs.iter().any(|l| l.contains("did not answer")), "{:?}", out.logs);
}

#[test]
fn the_request_policy_refuses_or_rewrites_before_routing() {
    let mut config = routing(&[("a", A)]);
    config["policy"] = json!([
        {"name": "card", "pattern": r"\b\d{4}(?: ?\d{4}){3}\b", "action": "replace", "replacement": "[card]"},
        {"name": "no-secrets", "pattern": "(?i)top secret", "action": "block"}
    ]);
    let mut w = World::new(limited(), config);
    w.upstream(A, vec![ok_json(completion()), ok_json(completion())]);
    let out = w.run(json!({"model": "m", "messages": user("this is TOP SECRET")}));
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["error"]["code"], "request_policy");
    assert!(out.json()["error"]["message"].as_str().is_some_and(|m| m.contains("`no-secrets`")));
    assert!(out.fetched.is_empty() && out.events().is_empty(), "nothing sent, nothing metered");
    assert!(!out.trace.iter().any(|t| t == "AccountCall"), "refused before admission: {:?}", out.trace);
    // The same rule in the Anthropic dialect's error shape.
    let out = w.run_as(
        ClientDialect::Anthropic,
        json!({"model": "m", "max_tokens": 5, "system": "top secret", "messages": user("hi")}),
    );
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["type"], "error");
    assert_eq!(out.json()["error"]["type"], "invalid_request_error");
    // A replacement: the upstream gets the rewritten text, passed through or translated.
    let out = w.run(json!({"model": "m", "messages": user("card 4111 1111 1111 1111 please")}));
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched_bodies[0]["messages"][0]["content"], "card [card] please");
    let out = w.run_as(
        ClientDialect::Anthropic,
        json!({"model": "m", "max_tokens": 5, "messages": user("4111111111111111")}),
    );
    assert_eq!(out.status, 200);
    assert_eq!(out.fetched_bodies[0]["messages"][0]["content"], "[card]");
}
