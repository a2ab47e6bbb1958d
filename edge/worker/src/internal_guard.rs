//! The internal API's guard: one Durable Object (`InternalGuard`) for the
//! whole deployment, holding the nonces of the replay window and the last
//! accepted version of the routing config and of each key record.
//!
//! **Key design decision:** the decision is `edgeway_core::internal_auth::
//! decide_claim`, taken inside a single object so every location sees the
//! same memory: a request replayed at another location, or a push older than
//! one already accepted anywhere, is refused. Nonces live in memory (loaded
//! under `blockConcurrencyWhile`) and in storage (`n:<nonce>` → until), and
//! are forgotten once their window ends; versions are read from storage
//! (`v:<scope>`) per claim. Storage operations hold the object's input gate,
//! so a read-decide-write cannot interleave with another claim.

use crate::bindings;
use crate::runtime::now_ms;
use edgeway_core::error::GatewayError;
use edgeway_core::internal_auth::{decide_claim, ClaimReply, ClaimRequest, NonceMemory, VersionStamp};
use std::cell::RefCell;
use std::rc::Rc;
use worker::js_sys::Array;
use worker::{
    durable_object, DurableObject, Env, Headers, Method, Request, RequestInit, Response, Result, State,
};

const NONCE_PREFIX: &str = "n:";
const VERSION_PREFIX: &str = "v:";
/// Name of the one guard object.
const GUARD_NAME: &str = "internal-api";
/// Largest claim body.
const MAX_CLAIM_BODY: usize = 16 * 1024;

#[durable_object]
pub struct InternalGuard {
    state: State,
    nonces: Rc<RefCell<Option<NonceMemory>>>,
}

impl InternalGuard {
    async fn claim(&self, claim: ClaimRequest) -> Result<ClaimReply> {
        let storage = self.state.storage();
        let stored: Option<VersionStamp> = match &claim.version {
            Some(v) => storage
                .get::<String>(&format!("{VERSION_PREFIX}{}", v.scope))
                .await?
                .and_then(|text| serde_json::from_str(&text).ok()),
            None => None,
        };
        let now = now_ms() / 1000;
        let decided = {
            let mut nonces = self.nonces.borrow_mut();
            let Some(memory) = nonces.as_mut() else {
                return Err(worker::Error::RustError("guard not loaded".into()));
            };
            let expired = memory.forget_expired(now);
            let (reply, store) = decide_claim(memory, stored.as_ref(), &claim, now);
            (reply, store, expired)
        };
        let (reply, store, expired) = decided;
        if reply != ClaimReply::Replayed {
            storage.put(&format!("{NONCE_PREFIX}{}", claim.nonce), claim.until).await?;
        }
        if let (Some(stamp), Some(v)) = (store, &claim.version) {
            storage.put(&format!("{VERSION_PREFIX}{}", v.scope), serde_json::to_string(&stamp)?).await?;
        }
        if !expired.is_empty() {
            let keys: Vec<String> = expired.iter().map(|n| format!("{NONCE_PREFIX}{n}")).collect();
            for chunk in keys.chunks(128) {
                storage.delete_multiple(chunk.to_vec()).await?;
            }
        }
        Ok(reply)
    }
}

impl DurableObject for InternalGuard {
    fn new(state: State, _env: Env) -> Self {
        let nonces = Rc::new(RefCell::new(None));
        let loader = nonces.clone();
        let storage = state.storage();
        let _loading = state.block_concurrency_while(async move {
            let listed = storage.list_with_options(worker::ListOptions::new().prefix(NONCE_PREFIX)).await?;
            let mut memory = NonceMemory::default();
            for entry in listed.entries() {
                let Ok(pair) = entry else { continue };
                let pair = Array::from(&pair);
                let key = pair.get(0).as_string().unwrap_or_default();
                let Some(nonce) = key.strip_prefix(NONCE_PREFIX) else { continue };
                let Some(until) = pair.get(1).as_f64() else { continue };
                memory.restore(nonce, until as i64);
            }
            *loader.borrow_mut() = Some(memory);
            Ok(())
        });
        Self { state, nonces }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() != "/claim" || req.method() != Method::Post {
            return Response::error("not found", 404);
        }
        let body = req.bytes().await?;
        if body.len() > MAX_CLAIM_BODY {
            return Response::error("body too large", 413);
        }
        let Ok(claim) = serde_json::from_slice::<ClaimRequest>(&body) else {
            return Response::error("invalid claim", 400);
        };
        Response::from_json(&self.claim(claim).await?)
    }
}

/// Asks the guard to claim a nonce (and a version). Unreachable = `Internal`
/// (the request is refused: fail closed).
pub async fn claim(env: &Env, claim: &ClaimRequest) -> std::result::Result<ClaimReply, GatewayError> {
    let call = async {
        let stub = env.durable_object(bindings::INTERNAL_GUARD)?.id_from_name(GUARD_NAME)?.get_stub()?;
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(serde_json::to_string(claim)?.into()));
        let request = Request::new_with_init("https://internal-guard/claim", &init)?;
        let mut response = stub.fetch_with_request(request).await?;
        if response.status_code() != 200 {
            return Err(worker::Error::RustError(format!("guard answered {}", response.status_code())));
        }
        response.json::<ClaimReply>().await
    };
    call.await.map_err(|e| {
        worker::console_error!("internal API guard unreachable: {e}");
        GatewayError::Internal
    })
}
