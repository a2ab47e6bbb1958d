//! The per-key Durable Object (`KeyAccount`, one per key digest) and the
//! worker-side client that talks to it.
//!
//! The object is the key's account. Its rules are
//! `edgeway_core::key_account::KeyAccountState` (leases, RPM/TPM windows,
//! quota reserve → settle, outbox); this file only loads that state once,
//! persists exactly the records each operation reports as changed, runs the
//! alarm, and publishes the outbox to the usage queue.
//!
//! **Key design decision:** the in-memory state is the truth while the object
//! lives and storage is its durable mirror. Every operation mutates memory
//! synchronously (no `await` in between, so concurrent requests cannot
//! interleave inside a decision), then writes its changed records in one
//! `put` (the output gate holds the reply until they are durable). State is
//! loaded in the constructor under `blockConcurrencyWhile`, so no request ever
//! sees a half-loaded account.
//!
//! A key with a user draws on the user's balance: before a decision its
//! allowance cannot cover, the object asks the user's account
//! ([`crate::user_account_object`]) for more, and once nothing of the key is
//! held it gives back what it does not use (`edgeway_core::key_account::balance`).
//!
//! Storage: `core` (limits, spend, windows, counters, balance draw) and `r:<request id>`
//! ([`RequestRecord`]), values as JSON text. An admission writes `core` and
//! its lease; a settle writes `core` and the request's record, which carries
//! the outbox copy of the usage event until the queue accepted it.

use crate::bindings;
use crate::runtime::now_ms;
use crate::user_account_object::UserAccountClient;
use edgeway_core::error::GatewayError;
use edgeway_core::key_account::{
    AccountCore, AdmitDecision, AdmitRequest, KeyAccountState, ReleaseRequest, RequestRecord, SettleOutcome,
    SettleRequest, SliceRenewal, Writes, OUTBOX_BATCH,
};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::rate_window::MINUTE_MS;
use edgeway_core::usage::UsageEvent;
use edgeway_core::user_account::AllowanceRequest;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::js_sys::{Array, Object, Reflect};
use worker::wasm_bindgen::JsValue;
use worker::{
    durable_object, DurableObject, Env, Method, Request, Response, Result, ScheduledTime, State, Storage,
};

const CORE_KEY: &str = "core";
const RECORD_PREFIX: &str = "r:";
/// Most keys per storage `put`/`delete` call.
const STORAGE_BATCH: usize = 128;
/// Largest body the object accepts from the worker.
const MAX_OBJECT_BODY: usize = 256 * 1024;
/// An outbox event is published at once after its settle; if that fails or
/// the object is evicted first, the alarm retries this soon.
const OUTBOX_SAFETY_MS: i64 = 5_000;
/// A release of balance allowance that did not reach the user account is
/// sent again by the alarm this soon.
const RELEASE_RETRY_MS: i64 = 5_000;

struct Inner {
    state: State,
    env: Env,
    account: RefCell<Option<KeyAccountState>>,
    /// The alarm time this object last set and has not seen fire.
    alarm_at: Cell<Option<i64>>,
    /// An outbox flush is running.
    flushing: Cell<bool>,
}

#[durable_object]
pub struct KeyAccount {
    inner: Rc<Inner>,
}

fn record_key(request_id: &str) -> String {
    format!("{RECORD_PREFIX}{request_id}")
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(status))
}

/// Loads the account from storage.
async fn load(storage: Storage, window_ms: i64) -> Result<(KeyAccountState, Option<i64>)> {
    let core: Option<AccountCore> = match storage.get::<String>(CORE_KEY).await? {
        Some(text) => match serde_json::from_str(&text) {
            Ok(core) => Some(core),
            Err(e) => {
                worker::console_error!("key account: unreadable core record, starting afresh: {e}");
                None
            }
        },
        None => None,
    };
    let listed = storage.list_with_options(worker::ListOptions::new().prefix(RECORD_PREFIX)).await?;
    let mut records = Vec::new();
    for entry in listed.entries() {
        let Ok(pair) = entry else { continue };
        let pair = Array::from(&pair);
        let key = pair.get(0).as_string().unwrap_or_default();
        let Some(id) = key.strip_prefix(RECORD_PREFIX) else { continue };
        let Some(text) = pair.get(1).as_string() else { continue };
        match serde_json::from_str::<RequestRecord>(&text) {
            Ok(record) => records.push((id.to_string(), record)),
            Err(e) => worker::console_error!("key account: unreadable record {key}: {e}"),
        }
    }
    let alarm = storage.get_alarm().await?;
    Ok((KeyAccountState::from_stored(core, records, window_ms), alarm))
}

impl Inner {
    /// Runs `f` on the loaded account (synchronously: no await inside).
    fn with_account<T>(&self, f: impl FnOnce(&mut KeyAccountState) -> T) -> Option<T> {
        self.account.borrow_mut().as_mut().map(f)
    }

    /// Writes what an operation changed: one `put` of every changed value
    /// (JSON text), then the deletions.
    async fn persist(&self, writes: Writes) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut values: Vec<(String, String)> = Vec::with_capacity(writes.put.len() + 1);
        if writes.core {
            let core = self.account.borrow().as_ref().map(|a| serde_json::to_string(a.core()));
            if let Some(core) = core {
                values.push((CORE_KEY.to_string(), core?));
            }
        }
        for (id, record) in &writes.put {
            values.push((record_key(id), serde_json::to_string(record)?));
        }
        let storage = self.state.storage();
        for chunk in values.chunks(STORAGE_BATCH) {
            let object = Object::new();
            for (key, value) in chunk {
                Reflect::set(&object, &JsValue::from_str(key), &JsValue::from_str(value))?;
            }
            storage.put_multiple_raw(object).await?;
        }
        let deletes: Vec<String> = writes.delete.iter().map(|id| record_key(id)).collect();
        for chunk in deletes.chunks(STORAGE_BATCH) {
            storage.delete_multiple(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Makes sure the alarm fires no later than the account needs (lease
    /// expiry, hold release, outbox retry, forgetting old ids). Never moves
    /// an alarm later: an early alarm only re-checks.
    async fn schedule(&self, now: i64, at_most: Option<i64>) -> Result<()> {
        let wanted = self.with_account(|a| a.next_wakeup(now)).flatten();
        let wanted = match (wanted, at_most) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(wanted) = wanted else { return Ok(()) };
        let wanted = wanted.max(now);
        if self.alarm_at.get().is_some_and(|current| current <= wanted) {
            return Ok(());
        }
        self.alarm_at.set(Some(wanted));
        let date = worker::js_sys::Date::new(&JsValue::from_f64(wanted as f64));
        self.state.storage().set_alarm(ScheduledTime::new(date)).await
    }

    /// Publishes the outbox to the usage queue, a batch at a time, until it is
    /// empty or the queue refuses (then the alarm retries with back-off).
    async fn flush_outbox(&self) -> Result<()> {
        if self.flushing.replace(true) {
            return Ok(());
        }
        let result = self.flush_loop().await;
        self.flushing.set(false);
        result
    }

    async fn flush_loop(&self) -> Result<()> {
        loop {
            let now = now_ms();
            let batch: Vec<UsageEvent> =
                self.with_account(|a| a.outbox_batch(now, OUTBOX_BATCH)).unwrap_or_default();
            if batch.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = batch.iter().map(|e| e.request_id.clone()).collect();
            let sent = match self.env.queue(bindings::USAGE_QUEUE) {
                Ok(queue) => queue.send_batch(batch).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    let now = now_ms();
                    let writes = self.with_account(|a| a.mark_published(&ids, now)).unwrap_or_default();
                    self.persist(writes).await?;
                }
                Err(e) => {
                    let now = now_ms();
                    let retry_at = self.with_account(|a| a.publish_failed(now));
                    worker::console_error!(
                        "key account: {} usage event(s) not accepted by the queue, retrying: {e}",
                        ids.len()
                    );
                    return self.schedule(now, retry_at).await;
                }
            }
        }
    }
}

impl Inner {
    /// Sends an allowance request (or release) to the key's user account
    /// and applies the answer.
    async fn draw_balance(&self, mut ask: AllowanceRequest) -> Result<()> {
        let Some(user) = self.with_account(|a| a.balance_user().map(str::to_string)).flatten() else {
            return Ok(());
        };
        ask.key_id = self.state.id().to_string();
        let grant = UserAccountClient::new(&self.env, &user)?.draw(&ask).await?;
        let writes = self.with_account(|a| a.apply_allowance(&grant)).unwrap_or_default();
        self.persist(writes).await
    }

    /// When nothing of the key is held any more: gives the balance
    /// allowance it does not use back to the user account, so the user's
    /// other keys can have it (retried by alarm until the answer comes).
    fn release_balance_soon(self: &Rc<Self>) {
        let Some((release, writes)) = self.with_account(|a| a.allowance_release()).flatten() else { return };
        let inner = self.clone();
        self.state.wait_until(async move {
            let sent = async {
                inner.persist(writes).await?;
                inner.draw_balance(release).await
            };
            if let Err(e) = sent.await {
                worker::console_error!("key account: balance release not answered, retrying: {e}");
                let now = now_ms();
                if let Err(e) = inner.schedule(now, Some(now + RELEASE_RETRY_MS)).await {
                    worker::console_error!("key account: alarm not set: {e}");
                }
            }
        });
    }

    /// Before a decision: asks the user account for more allowance when
    /// `ask` says the one counted on cannot cover it. An unreachable user
    /// account fails the call (the request is refused, fail closed).
    async fn ensure_balance(&self, ask: Option<AllowanceRequest>, writes: Writes) -> Result<()> {
        self.persist(writes).await?;
        match ask {
            Some(ask) => self.draw_balance(ask).await,
            None => Ok(()),
        }
    }
}

impl KeyAccount {
    /// After settled usage entered the outbox: publish it now (the alarm
    /// retries if this fails or the object is evicted first).
    async fn publish_soon(&self, now: i64) -> Result<()> {
        let inner = &self.inner;
        let pending = inner.with_account(|a| a.outbox_len()).unwrap_or(0);
        if pending == 0 {
            return inner.schedule(now, None).await;
        }
        inner.schedule(now, Some(now + OUTBOX_SAFETY_MS)).await?;
        let flusher = inner.clone();
        inner.state.wait_until(async move {
            if let Err(e) = flusher.flush_outbox().await {
                worker::console_error!("key account: outbox flush failed: {e}");
            }
        });
        Ok(())
    }

    async fn route(&self, mut req: Request) -> Result<Response> {
        let inner = &self.inner;
        if inner.account.borrow().is_none() {
            return json_error(503, "key account not loaded");
        }
        let path = req.path();
        if path == "/state" {
            let now = now_ms();
            let snapshot = inner.with_account(|a| a.snapshot(now));
            return Response::from_json(&snapshot);
        }
        let body = req.bytes().await?;
        if body.len() > MAX_OBJECT_BODY {
            return json_error(413, "body too large");
        }
        match path.as_str() {
            "/admit" => {
                let Ok(admit) = serde_json::from_slice::<AdmitRequest>(&body) else {
                    return json_error(400, "invalid admission request");
                };
                let Some((ask, writes)) = inner.with_account(|a| a.balance_request_for_admit(&admit)) else {
                    return json_error(503, "key account not loaded");
                };
                if let Err(e) = inner.ensure_balance(ask, writes).await {
                    worker::console_error!("key account: the user account did not answer: {e}");
                    return json_error(503, "user account unreachable");
                }
                let now = now_ms();
                let Some((decision, writes)) = inner.with_account(|a| a.admit(&admit, now)) else {
                    return json_error(503, "key account not loaded");
                };
                inner.persist(writes).await?;
                inner.schedule(now, None).await?;
                Response::from_json(&decision)
            }
            "/settle" | "/release" => {
                let settle = if path == "/release" {
                    serde_json::from_slice::<ReleaseRequest>(&body)
                        .map(|r| SettleRequest { request_id: r.request_id, event: None })
                } else {
                    serde_json::from_slice::<SettleRequest>(&body)
                };
                let Ok(settle) = settle else { return json_error(400, "invalid settle request") };
                let now = now_ms();
                let Some((outcome, writes)) = inner.with_account(|a| a.settle(&settle, now)) else {
                    return json_error(503, "key account not loaded");
                };
                inner.persist(writes).await?;
                self.publish_soon(now).await?;
                inner.release_balance_soon();
                if outcome == SettleOutcome::Duplicate {
                    worker::console_warn!("key account: repeated settle of {} ignored", settle.request_id);
                }
                Response::from_json(&serde_json::json!({ "outcome": outcome }))
            }
            "/slice" => {
                let Ok(renewal) = serde_json::from_slice::<SliceRenewal>(&body) else {
                    return json_error(400, "invalid slice renewal");
                };
                let Some((ask, writes)) = inner.with_account(|a| a.balance_request_for_slice(&renewal))
                else {
                    return json_error(503, "key account not loaded");
                };
                if let Err(e) = inner.ensure_balance(ask, writes).await {
                    worker::console_error!("key account: the user account did not answer: {e}");
                    return json_error(503, "user account unreachable");
                }
                let now = now_ms();
                let Some((grant, writes)) = inner.with_account(|a| a.renew_slice(&renewal, now)) else {
                    return json_error(503, "key account not loaded");
                };
                inner.persist(writes).await?;
                self.publish_soon(now).await?;
                inner.release_balance_soon();
                Response::from_json(&grant)
            }
            "/balance-notice" => {
                #[derive(serde::Deserialize)]
                struct Notice {
                    disabled: bool,
                }
                let Ok(notice) = serde_json::from_slice::<Notice>(&body) else {
                    return json_error(400, "invalid balance notice");
                };
                let writes = inner.with_account(|a| a.user_notice(notice.disabled)).unwrap_or_default();
                inner.persist(writes).await?;
                Response::from_json(&serde_json::json!({ "ok": true }))
            }
            "/configure" => {
                let Ok(record) = serde_json::from_slice::<KeyRecord>(&body) else {
                    return json_error(400, "invalid key record");
                };
                let Some(writes) = inner.with_account(|a| a.configure(&record)) else {
                    return json_error(503, "key account not loaded");
                };
                let applied = writes.core;
                inner.persist(writes).await?;
                let limits = inner.with_account(|a| a.core().limits.clone()).flatten();
                Response::from_json(&serde_json::json!({ "applied": applied, "limits": limits }))
            }
            _ => json_error(404, "not found"),
        }
    }
}

impl DurableObject for KeyAccount {
    fn new(state: State, env: Env) -> Self {
        let window_ms = i64::try_from(bindings::number(&env, bindings::RATE_WINDOW_MS, MINUTE_MS as u64))
            .unwrap_or(MINUTE_MS);
        let inner = Rc::new(Inner {
            state,
            env,
            account: RefCell::new(None),
            alarm_at: Cell::new(None),
            flushing: Cell::new(false),
        });
        let loader = inner.clone();
        let storage = inner.state.storage();
        // Holds every event until the account is loaded (the runtime's gate).
        let _loading = inner.state.block_concurrency_while(async move {
            let (account, alarm) = load(storage, window_ms).await?;
            *loader.account.borrow_mut() = Some(account);
            loader.alarm_at.set(alarm);
            Ok(())
        });
        Self { inner }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.route(req).await
    }

    async fn alarm(&self) -> Result<Response> {
        let inner = &self.inner;
        inner.alarm_at.set(None);
        let now = now_ms();
        let Some(writes) = inner.with_account(|a| a.expire(now)) else {
            return Response::ok("not loaded");
        };
        let expired = writes.put.iter().filter(|(_, r)| matches!(r, RequestRecord::Expired { .. })).count();
        if expired > 0 {
            worker::console_warn!("key account: {expired} lease(s) or hold(s) expired without a settle");
        }
        inner.persist(writes).await?;
        if let Err(e) = inner.flush_outbox().await {
            worker::console_error!("key account: outbox flush failed: {e}");
        }
        inner.release_balance_soon();
        inner.schedule(now_ms(), None).await?;
        Response::ok("ok")
    }
}

/// The worker's handle on one key's account object.
pub struct KeyAccountClient {
    stub: worker::Stub,
}

impl KeyAccountClient {
    pub fn new(env: &Env, digest: &str) -> std::result::Result<Self, GatewayError> {
        let namespace = env.durable_object(bindings::KEY_ACCOUNT).map_err(|_| GatewayError::Internal)?;
        let stub = namespace
            .id_from_name(digest)
            .and_then(|id| id.get_stub())
            .map_err(|_| GatewayError::Internal)?;
        Ok(Self { stub })
    }

    async fn call<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<R> {
        crate::object_call::json(&self.stub, "key-account", method, path, body).await
    }

    /// Ok(()) = admitted (lease held, reservation held, windows counted).
    /// Refusals map to the client's error (429 with `Retry-After`,
    /// `insufficient_quota`, invalid key); an unreachable object is
    /// `Internal` (fail closed). A transport failure is retried once: a
    /// repeated admission of the same request id only renews its lease.
    pub async fn admit(&self, req: &AdmitRequest) -> std::result::Result<(), GatewayError> {
        let mut last_error = None;
        for _ in 0..2 {
            match self.call::<_, AdmitDecision>(Method::Post, "/admit", Some(req)).await {
                Ok(AdmitDecision::Admitted { .. }) => return Ok(()),
                Ok(AdmitDecision::Refused { reason, retry_after_secs }) => {
                    return Err(reason.into_error(retry_after_secs))
                }
                Ok(AdmitDecision::ConcurrencyLimited { retry_after_secs, .. }) => {
                    return Err(
                        edgeway_core::key_account::Refusal::Concurrency.into_error(Some(retry_after_secs))
                    )
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            worker::console_error!("key account admission failed for {}: {e}", req.request_id);
        }
        Err(GatewayError::Internal)
    }

    /// Admin push: the newest key record wins by version (revocation, quota,
    /// limits), effective on the key's next admission.
    pub async fn configure(&self, record: &KeyRecord) -> std::result::Result<(), GatewayError> {
        self.call::<_, serde_json::Value>(Method::Post, "/configure", Some(record)).await.map(|_| ()).map_err(
            |e| {
                worker::console_error!("key account configure failed: {e}");
                GatewayError::Internal
            },
        )
    }

    /// Times `n` sequential admission + settle round trips (settled without
    /// an event: nothing is billed or published) as the worker sees them:
    /// what the account adds to a request. Milliseconds, p50/p99/max.
    pub async fn probe(&self, n: u32) -> std::result::Result<serde_json::Value, GatewayError> {
        let mut admit_ms = Vec::with_capacity(n as usize);
        let mut settle_ms = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let request_id = format!("probe_{}", crate::runtime::random_uuid().replace('-', ""));
            let admit = AdmitRequest {
                request_id: request_id.clone(),
                limits: edgeway_core::key_account::KeyLimits::default(),
                reserve_micros: 0,
                estimated_tokens: 0,
                lease_ms: Some(60_000),
                max_concurrency: None,
            };
            let started = worker::Date::now().as_millis();
            self.admit(&admit).await?;
            let admitted = worker::Date::now().as_millis();
            self.call::<_, serde_json::Value>(
                Method::Post,
                "/settle",
                Some(&SettleRequest { request_id, event: None }),
            )
            .await
            .map_err(|_| GatewayError::Internal)?;
            let settled = worker::Date::now().as_millis();
            admit_ms.push(admitted.saturating_sub(started));
            settle_ms.push(settled.saturating_sub(admitted));
        }
        let summary = |mut v: Vec<u64>| {
            v.sort_unstable();
            let at = |q: f64| {
                v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0)
            };
            serde_json::json!({"p50": at(0.5), "p99": at(0.99), "max": v.last().copied().unwrap_or(0)})
        };
        Ok(serde_json::json!({"n": n, "admit_ms": summary(admit_ms), "settle_ms": summary(settle_ms)}))
    }

    /// The account's read-only snapshot (`AccountSnapshot` as JSON).
    pub async fn snapshot(&self) -> std::result::Result<serde_json::Value, GatewayError> {
        self.call::<(), serde_json::Value>(Method::Get, "/state", None).await.map_err(|e| {
            worker::console_error!("key account snapshot failed: {e}");
            GatewayError::Internal
        })
    }
}
