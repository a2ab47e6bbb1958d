//! The per-key Durable Object (`KeyAccount`, one per key digest) and the
//! worker-side client that talks to it.
//!
//! The object is the key's account: it holds the concurrency leases
//! (`edgeway_core::key_account::Leases`) in memory and in its SQLite-backed
//! storage, so an eviction loses nothing, and an alarm expires leases whose
//! release never came. Being single-threaded per key, its admit decisions
//! cannot race.

use crate::runtime::now_ms;
use edgeway_core::error::GatewayError;
use edgeway_core::key_account::{AdmitDecision, AdmitRequest, Leases, ReleaseRequest, SettleRequest};
use std::cell::RefCell;
use worker::{
    durable_object, DurableObject, Env, Headers, Method, Request, RequestInit, Response, Result, State,
};

const LEASE_PREFIX: &str = "lease:";

#[durable_object]
pub struct KeyAccount {
    state: State,
    leases: RefCell<Option<Leases>>,
}

impl KeyAccount {
    async fn loaded_leases(&self) -> Result<Leases> {
        if let Some(leases) = self.leases.borrow().as_ref() {
            return Ok(leases.clone());
        }
        let stored =
            self.state.storage().list_with_options(worker::ListOptions::new().prefix(LEASE_PREFIX)).await?;
        let mut entries = Vec::new();
        for entry in stored.entries() {
            let Ok(pair) = entry else { continue };
            let pair = worker::js_sys::Array::from(&pair);
            let key = pair.get(0).as_string().unwrap_or_default();
            let expires = pair.get(1).as_f64().unwrap_or(0.0) as i64;
            if let Some(id) = key.strip_prefix(LEASE_PREFIX) {
                entries.push((id.to_string(), expires));
            }
        }
        let leases = Leases::from_stored(entries);
        *self.leases.borrow_mut() = Some(leases.clone());
        Ok(leases)
    }

    async fn store(&self, leases: Leases, put: Option<(&str, i64)>, delete: &[String]) -> Result<()> {
        *self.leases.borrow_mut() = Some(leases.clone());
        let storage = self.state.storage();
        // The object's input gate holds other events while storage calls are
        // in flight, and its output gate holds the reply until they are durable.
        if let Some((id, expires)) = put {
            storage.put(&format!("{LEASE_PREFIX}{id}"), expires).await?;
        }
        if !delete.is_empty() {
            let keys: Vec<String> = delete.iter().map(|id| format!("{LEASE_PREFIX}{id}")).collect();
            storage.delete_multiple(keys).await?;
        }
        match leases.next_expiry() {
            Some(at) => storage.set_alarm(at).await?,
            None => storage.delete_alarm().await?,
        }
        Ok(())
    }
}

impl DurableObject for KeyAccount {
    fn new(state: State, _env: Env) -> Self {
        Self { state, leases: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let now = now_ms();
        match req.path().as_str() {
            "/admit" => {
                let admit: AdmitRequest = req.json().await?;
                let mut leases = self.loaded_leases().await?;
                let (decision, expired) = leases.admit(&admit, now);
                let put = match &decision {
                    AdmitDecision::Admitted { lease_expires_at_ms, .. } => {
                        Some((admit.request_id.as_str(), *lease_expires_at_ms))
                    }
                    AdmitDecision::ConcurrencyLimited { .. } | AdmitDecision::Refused { .. } => None,
                };
                self.store(leases, put, &expired).await?;
                Response::from_json(&decision)
            }
            "/release" => {
                let release: ReleaseRequest = req.json().await?;
                let mut leases = self.loaded_leases().await?;
                let released = leases.release(&release.request_id);
                self.store(leases, None, &[release.request_id]).await?;
                Response::from_json(&serde_json::json!({"released": released}))
            }
            "/state" => {
                let leases = self.loaded_leases().await?;
                Response::from_json(&serde_json::json!({"in_flight": leases.in_flight()}))
            }
            _ => Response::error("not found", 404),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let mut leases = self.loaded_leases().await?;
        let expired = leases.expire(now_ms());
        if !expired.is_empty() {
            worker::console_warn!("key account: {} lease(s) expired without release", expired.len());
        }
        self.store(leases, None, &expired).await?;
        Response::ok("ok")
    }
}

/// The worker's handle on one key's account object.
pub struct KeyAccountClient {
    stub: worker::Stub,
    env: Env,
}

impl KeyAccountClient {
    pub fn new(env: &Env, digest: &str) -> std::result::Result<Self, GatewayError> {
        let namespace =
            env.durable_object(crate::bindings::KEY_ACCOUNT).map_err(|_| GatewayError::Internal)?;
        let stub = namespace
            .id_from_name(digest)
            .and_then(|id| id.get_stub())
            .map_err(|_| GatewayError::Internal)?;
        Ok(Self { stub, env: env.clone() })
    }

    async fn call<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<R> {
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(serde_json::to_string(body)?.into()));
        let request = Request::new_with_init(&format!("https://key-account{path}"), &init)?;
        let mut response = self.stub.fetch_with_request(request).await?;
        response.json().await
    }

    /// Takes a lease (and, later, a quota reservation) or refuses.
    pub async fn admit(&self, req: &AdmitRequest) -> std::result::Result<(), GatewayError> {
        let decision: AdmitDecision = self.call("/admit", req).await.map_err(|e| {
            worker::console_error!("key account admit failed: {e}");
            GatewayError::Internal
        })?;
        match decision {
            AdmitDecision::Admitted { .. } => Ok(()),
            AdmitDecision::ConcurrencyLimited { in_flight, retry_after_secs } => {
                Err(GatewayError::RateLimited {
                    message: format!(
                        "Too many concurrent requests for this key ({in_flight} in flight). Retry shortly."
                    ),
                    retry_after_secs,
                })
            }
            AdmitDecision::Refused { .. } => Err(GatewayError::RateLimited {
                message: "Request refused by the key's limits.".into(),
                retry_after_secs: 1,
            }),
        }
    }

    /// Ends a request: releases its lease and publishes its usage event.
    pub async fn settle(&self, req: &SettleRequest) {
        if let Err(e) = self
            .call::<_, serde_json::Value>("/release", &ReleaseRequest { request_id: req.request_id.clone() })
            .await
        {
            worker::console_warn!("key account release failed (lease will expire): {e}");
        }
        if let Some(event) = &req.event {
            crate::usage_pipeline::publish(&self.env, event).await;
        }
    }
}
