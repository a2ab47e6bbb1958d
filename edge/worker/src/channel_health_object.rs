//! The channel's shared health record (`ChannelHealth`, one Durable Object
//! per channel id): its circuits as every isolate reported them, and its
//! last health checks. The rules are `edgeway_core::channel_health::shared`
//! ([`ChannelBoard`]); this file loads the record, answers the isolates'
//! syncs and claims and the cron's check results, and stores the record
//! after each change.
//!
//! **Key design decision:** a Durable Object per channel, not KV: a probe
//! must be granted to one request in the whole deployment, which needs one
//! place that decides in order; and each channel's traffic reports to its
//! own object, so no single object carries every channel's load.
//!
//! Routes (the channel id in `?channel=`): `POST /sync` ([`SyncRequest`] →
//! [`edgeway_core::channel_health::shared::SyncReply`]), `POST /checks`
//! (a round's [`CheckResult`]s), `GET /view`
//! ([`edgeway_core::channel_health::shared::BoardView`]).

use crate::runtime::now_ms;
use edgeway_core::channel_health::check::CheckResult;
use edgeway_core::channel_health::shared::{ChannelBoard, SyncRequest};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{durable_object, DurableObject, Env, Method, Request, Response, Result, State};

const STATE_KEY: &str = "board";
/// Largest body the object accepts (a sync of many outcomes, a round of checks).
const MAX_OBJECT_BODY: usize = 256 * 1024;

struct Inner {
    state: State,
    board: RefCell<Option<ChannelBoard>>,
}

#[durable_object]
pub struct ChannelHealth {
    inner: Rc<Inner>,
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(status))
}

impl ChannelHealth {
    async fn route(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        let Some(channel) = url.query_pairs().find(|(k, _)| k == "channel").map(|(_, v)| v.into_owned())
        else {
            return json_error(400, "no channel named");
        };
        let text = req.text().await?;
        if text.len() > MAX_OBJECT_BODY {
            return json_error(413, "body too large");
        }
        let now = now_ms();
        let inner = &self.inner;
        match (req.method(), url.path()) {
            (Method::Post, "/sync") => {
                let request: SyncRequest = match serde_json::from_str(&text) {
                    Ok(request) => request,
                    Err(e) => return json_error(400, &format!("invalid sync: {e}")),
                };
                let Some(reply) = self.change(|board| board.sync(&channel, &request, now)) else {
                    return json_error(503, "channel health not loaded");
                };
                if !request.outcomes.is_empty() || request.claim.is_some() {
                    self.persist().await?;
                }
                Response::from_json(&reply)
            }
            (Method::Post, "/checks") => {
                let results: Vec<CheckResult> = match serde_json::from_str(&text) {
                    Ok(results) => results,
                    Err(e) => return json_error(400, &format!("invalid check results: {e}")),
                };
                if self.change(|board| board.record_checks(&channel, &results, now)).is_none() {
                    return json_error(503, "channel health not loaded");
                }
                self.persist().await?;
                Response::from_json(&inner.board.borrow().as_ref().map(|b| b.view(&channel, now)))
            }
            (Method::Get, "/view") => {
                Response::from_json(&inner.board.borrow().as_ref().map(|b| b.view(&channel, now)))
            }
            _ => json_error(404, "no such route"),
        }
    }

    fn change<T>(&self, f: impl FnOnce(&mut ChannelBoard) -> T) -> Option<T> {
        self.inner.board.borrow_mut().as_mut().map(f)
    }

    async fn persist(&self) -> Result<()> {
        let text = match self.inner.board.borrow().as_ref() {
            Some(board) => serde_json::to_string(board)?,
            None => return Ok(()),
        };
        self.inner.state.storage().put(STATE_KEY, text).await
    }
}

impl DurableObject for ChannelHealth {
    fn new(state: State, _env: Env) -> Self {
        let inner = Rc::new(Inner { state, board: RefCell::new(None) });
        let loader = inner.clone();
        // Holds every event until the record is loaded (the runtime's gate).
        let _loading = inner.state.block_concurrency_while(async move {
            let text = loader.state.storage().get::<String>(STATE_KEY).await?;
            let board = match text.map(|t| serde_json::from_str::<ChannelBoard>(&t)) {
                Some(Ok(board)) => board,
                Some(Err(e)) => {
                    // A lost record only forgets circuits: traffic reopens them.
                    worker::console_error!("channel health: unreadable record, starting afresh: {e}");
                    ChannelBoard::default()
                }
                None => ChannelBoard::default(),
            };
            *loader.board.borrow_mut() = Some(board);
            Ok(())
        });
        Self { inner }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.route(req).await
    }
}

/// The URL of `route` at `channel`'s record.
fn url(route: &str, channel: &str) -> Result<worker::Url> {
    let mut url = worker::Url::parse(&format!("https://channel-health{route}"))?;
    url.query_pairs_mut().append_pair("channel", channel);
    Ok(url)
}

/// `channel`'s record, as the operator sees it ([`BoardView`] as JSON, passed
/// on as it came: decoding it here would only cost wasm size).
pub async fn view(env: &Env, channel: &str) -> Result<serde_json::Value> {
    let stub = stub(env, channel)?;
    let url = url("/view", channel)?;
    crate::object_call::call::<(), serde_json::Value>(&stub, url.as_str(), Method::Get, None).await
}

fn stub(env: &Env, channel: &str) -> Result<worker::Stub> {
    env.durable_object(crate::bindings::CHANNEL_HEALTH)?.id_from_name(channel)?.get_stub()
}
