//! The isolate's counters ([`edgeway_core::pipeline::counters`]) as the
//! generation machine moves them: requests by family, client and status
//! class, attempts and failovers by channel, admission refusals by reason,
//! response-cache verdicts and stream endings. Each request runs against a
//! small simulated world: KV, the key's account (the real
//! `KeyAccountState`), upstreams that refuse connections or answer 500, the
//! built-in mock, the response cache, and a client that may disconnect.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use edgeway_core::api_key::key_digest;
use edgeway_core::family::Family;
use edgeway_core::key_account::{KeyAccountState, SliceRenewal};
use edgeway_core::pipeline::counters::CountersSnapshot;
use edgeway_core::pipeline::generation::{
    Credentials, Effect, FetchFailure, Generation, Input, ResponseBody, Start,
};
use edgeway_core::pipeline::isolate::IsolateState;
use edgeway_core::translate::ClientDialect;
use serde_json::{json, Value};
use std::collections::HashMap;

const KEY: &str = "sk-ew-counters-key-0000000000000000";
/// An upstream that refuses connections.
const DOWN: &str = "http://down.test/v1";
/// An upstream that answers 500.
const BROKEN: &str = "http://broken.test/v1";

struct World {
    isolate: IsolateState,
    kv: HashMap<String, String>,
    account: KeyAccountState,
    cache: HashMap<String, String>,
    now: i64,
    /// The client disconnects after this many stream writes.
    client_gone_after: Option<usize>,
}

/// A routing config: model `m` on the given channels in priority order
/// (`"mock"`, or an OpenAI-compatible base URL), model `cached` on the mock
/// with the response cache on, model `slow` on a mock that paces its stream.
fn routing(channels: &[(&str, &str)]) -> Value {
    let mut list: Vec<Value> = channels
        .iter()
        .map(|(id, url)| match *url {
            "mock" => json!({"id": id, "provider": "mock"}),
            url => json!({"id": id, "provider": "openai-compatible", "base_url": url, "api_key": "sk-up"}),
        })
        .collect();
    list.push(json!({"id": "paced", "provider": "mock", "mock": {"chunk_delay_ms": 5}}));
    let n = channels.len() as i32;
    let targets: Vec<Value> = channels
        .iter()
        .enumerate()
        .map(|(i, (id, _))| json!({"channel": id, "priority": n - i as i32}))
        .collect();
    json!({"version": 1, "channels": list, "models": [
        {"name": "m", "price": {"input": 1, "output": 1}, "targets": targets},
        {"name": "cached", "price": {"input": 1, "output": 1}, "targets": [{"channel": channels[0].0}],
         "options": {"cache": {"ttl_secs": 60}}},
        {"name": "slow", "price": {"input": 1, "output": 1}, "targets": [{"channel": "paced"}]},
    ]})
}

impl World {
    fn new(record: Value, routing: Value) -> Self {
        let digest = key_digest(KEY);
        let mut record = record;
        record["digest"] = json!(digest);
        let mut kv = HashMap::new();
        kv.insert(format!("key:{digest}"), record.to_string());
        kv.insert("config:routing".into(), routing.to_string());
        let mut isolate = IsolateState::default();
        isolate.counters.begin("isolate-under-test".into(), 1_700_000_000_000);
        Self {
            isolate,
            kv,
            account: KeyAccountState::new(60_000),
            cache: HashMap::new(),
            now: 1_700_000_000_000,
            client_gone_after: None,
        }
    }

    /// Runs one request to its end; the status its client was answered.
    fn run(&mut self, client: ClientDialect, family: Family, body: Value) -> u16 {
        let start = Start {
            client,
            family,
            path_model: None,
            path_stream: false,
            credentials: Credentials { authorization: Some(format!("Bearer {KEY}")), ..Default::default() },
            client_ip: Some("127.0.0.1".into()),
            declared_body_len: None,
            request_id: format!("req_{:x}", self.now),
            routing_seed: 7,
            pin: None,
        };
        let body = body.to_string().into_bytes();
        let mut g = Generation::new(start, self.now);
        let mut input = Input::Begin;
        let mut status = 0;
        let mut writes = 0;
        let mut upstream_body = Vec::new();
        for _ in 0..10_000 {
            let effect = g.next(&mut self.isolate, input, self.now);
            self.now += 1;
            input = match effect {
                Effect::KvGet { key } => Input::KvValue(self.kv.get(&key).cloned()),
                Effect::AccountCall { path, body, .. } => {
                    let reply = match path {
                        "/state" => serde_json::to_string(&self.account.snapshot(self.now)).unwrap(),
                        "/slice" => {
                            let renewal: SliceRenewal = serde_json::from_str(&body.unwrap()).unwrap();
                            serde_json::to_string(&self.account.renew_slice(&renewal, self.now).0).unwrap()
                        }
                        other => panic!("unexpected account path {other}"),
                    };
                    Input::AccountReply { status: 200, body: reply }
                }
                Effect::ReadRequestBody { .. } => Input::RequestBody(body.clone()),
                Effect::Fetch(request) if request.url.starts_with(DOWN) => {
                    Input::UpstreamFailed(FetchFailure::Unreachable)
                }
                Effect::Fetch(request) if request.url.starts_with(BROKEN) => {
                    upstream_body = br#"{"error":{"message":"boom"}}"#.to_vec();
                    Input::UpstreamHead { status: 500, retry_after: None }
                }
                Effect::Fetch(request) => panic!("no upstream at {}", request.url),
                Effect::ReadUpstreamBody { .. } => Input::UpstreamBody(std::mem::take(&mut upstream_body)),
                Effect::Sleep { ms } => {
                    self.now += ms as i64;
                    Input::Done
                }
                Effect::Respond(head, body) => {
                    status = head.status;
                    assert!(!matches!(body, ResponseBody::UpstreamBody), "no real upstream serves here");
                    Input::Done
                }
                Effect::Emit(_) => {
                    writes += 1;
                    if self.client_gone_after.is_some_and(|n| writes > n) {
                        Input::ClientGone
                    } else {
                        Input::Done
                    }
                }
                Effect::CloseStream => Input::Done,
                Effect::PublishUsage { .. } => Input::Published(true),
                Effect::CacheGet { url } => Input::CacheValue(self.cache.get(&url).cloned()),
                Effect::CachePut { url, value, .. } => {
                    self.cache.insert(url, value);
                    Input::Done
                }
                Effect::Finished => return status,
                other => panic!("unexpected effect {other:?}"),
            };
        }
        panic!("the request never finished");
    }

    fn chat(&mut self, body: Value) -> u16 {
        self.run(ClientDialect::OpenAiChat, Family::Chat, body)
    }

    fn counters(&self) -> CountersSnapshot {
        self.isolate.counters.snapshot(self.now)
    }
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn requests(s: &CountersSnapshot, family: &str, client: &str, status: &str) -> u64 {
    s.requests
        .iter()
        .find(|r| r.family == family && r.client == client && r.status == status)
        .map_or(0, |r| r.count)
}

fn attempts(s: &CountersSnapshot, channel: &str, outcome: &str) -> u64 {
    s.attempts.iter().find(|a| a.channel == channel && a.outcome == outcome).map_or(0, |a| a.count)
}

fn failovers(s: &CountersSnapshot, channel: &str) -> u64 {
    s.failovers.iter().find(|f| f.channel == channel).map_or(0, |f| f.count)
}

fn labelled(list: &[edgeway_core::pipeline::counters::LabelCount], label: &str) -> u64 {
    list.iter().find(|l| l.label == label).map_or(0, |l| l.count)
}

#[test]
fn requests_are_counted_once_by_family_client_and_status_class() {
    let mut w = World::new(json!({}), routing(&[("mock", "mock")]));
    assert_eq!(w.chat(ask("m")), 200);
    assert_eq!(
        w.chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true})),
        200
    );
    let anthropic = json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(w.run(ClientDialect::Anthropic, Family::Chat, anthropic), 200);
    assert_eq!(
        w.run(ClientDialect::OpenAiChat, Family::Embeddings, json!({"model": "m", "input": "x"})),
        200
    );
    assert_eq!(w.chat(ask("no-such-model")), 404);
    let s = w.counters();
    assert_eq!(s.isolate_id, "isolate-under-test");
    assert_eq!(requests(&s, "chat", "openai_chat", "2xx"), 2);
    assert_eq!(requests(&s, "chat", "anthropic", "2xx"), 1);
    assert_eq!(requests(&s, "embeddings", "openai_chat", "2xx"), 1);
    assert_eq!(requests(&s, "chat", "openai_chat", "4xx"), 1);
    assert_eq!(s.requests.iter().map(|r| r.count).sum::<u64>(), 5, "each request once");
    assert_eq!(attempts(&s, "mock", "served"), 4, "a refused model makes no attempt");
    assert_eq!(labelled(&s.streams, "completed"), 1);
    assert!(s.failovers.is_empty() && s.admission_refusals.is_empty());
}

#[test]
fn attempts_and_failovers_are_counted_by_channel() {
    let mut w = World::new(json!({}), routing(&[("down", DOWN), ("broken", BROKEN), ("mock", "mock")]));
    assert_eq!(w.chat(ask("m")), 200, "served by the third candidate");
    let s = w.counters();
    assert_eq!(attempts(&s, "down", "connect"), 1);
    assert_eq!(attempts(&s, "broken", "server_error"), 1);
    assert_eq!(attempts(&s, "mock", "served"), 1);
    assert_eq!((failovers(&s, "down"), failovers(&s, "broken"), failovers(&s, "mock")), (1, 1, 0));
    assert_eq!(requests(&s, "chat", "openai_chat", "2xx"), 1);

    // With no candidate left after the failure, it is no failover.
    let mut w = World::new(json!({}), routing(&[("down", DOWN)]));
    assert_eq!(w.chat(ask("m")), 502);
    let s = w.counters();
    assert_eq!(attempts(&s, "down", "connect"), 1);
    assert_eq!(failovers(&s, "down"), 0);
    assert_eq!(requests(&s, "chat", "openai_chat", "5xx"), 1);
}

#[test]
fn admission_refusals_are_counted_by_reason() {
    let mut w = World::new(json!({"rpm": 1}), routing(&[("mock", "mock")]));
    assert_eq!(w.chat(ask("m")), 200);
    assert_eq!(w.chat(ask("m")), 429, "over the key's RPM");
    let mut quota = World::new(json!({"quota_micros": 0}), routing(&[("mock", "mock")]));
    assert_eq!(quota.chat(ask("m")), 429, "nothing left of the quota");
    let s = w.counters();
    assert_eq!(labelled(&s.admission_refusals, "rpm"), 1);
    assert_eq!(requests(&s, "chat", "openai_chat", "4xx"), 1);
    assert_eq!(attempts(&s, "mock", "served"), 1, "a refused request makes no attempt");
    let q = quota.counters();
    assert_eq!(q.admission_refusals.len(), 1);
    assert_eq!(labelled(&q.admission_refusals, "quota"), 1);
}

#[test]
fn response_cache_verdicts_are_counted() {
    let mut w = World::new(json!({}), routing(&[("mock", "mock")]));
    let deterministic =
        json!({"model": "cached", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
    assert_eq!(w.chat(deterministic.clone()), 200);
    assert_eq!(w.chat(deterministic), 200);
    assert_eq!(w.chat(ask("cached")), 200, "not deterministic: bypassed");
    let s = w.counters();
    assert_eq!(
        (
            labelled(&s.response_cache, "miss"),
            labelled(&s.response_cache, "hit"),
            labelled(&s.response_cache, "bypass")
        ),
        (1, 1, 1)
    );
    assert_eq!(attempts(&s, "mock", "served"), 2, "a hit goes nowhere upstream");
    assert_eq!(requests(&s, "chat", "openai_chat", "2xx"), 3);
}

#[test]
fn stream_endings_count_client_aborts() {
    let mut w = World::new(json!({}), routing(&[("mock", "mock")]));
    let stream = json!({"model": "slow", "messages": [{"role": "user", "content": "a longer answer please"}], "stream": true});
    assert_eq!(w.chat(stream.clone()), 200);
    w.client_gone_after = Some(1);
    assert_eq!(w.chat(stream), 200, "the head went out before the client left");
    let s = w.counters();
    assert_eq!(labelled(&s.streams, "completed"), 1);
    assert_eq!(labelled(&s.streams, "client_aborted"), 1);
    assert_eq!(attempts(&s, "paced", "served"), 2);
}
