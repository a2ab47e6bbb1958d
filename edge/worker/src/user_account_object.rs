//! The per-user Durable Object (`UserAccount`, one per admin user id) and
//! the client the internal API and the key accounts use to reach it.
//!
//! The object is the user's balance at the edge. Its rules are
//! `edgeway_core::user_account::UserAccountState` (the admin's cumulative
//! credit by version, one allowance per key granted only from what is free);
//! this file loads that state once, persists it after every change, and
//! answers three calls: `PUT /configure` (the admin's push), `POST /draw`
//! (a key account's allowance request or release) and `GET /state`.
//!
//! **Key design decision:** the whole state is one small record (the push,
//! one allowance and spend per key of the user), held in memory while the
//! object lives and written in one `put` per change before the answer
//! leaves (the output gate holds it), so every decision is made on the
//! latest state, in order, whichever location the user's keys are used from.

use crate::bindings;
use edgeway_core::error::GatewayError;
use edgeway_core::user_account::{
    AllowanceGrant, AllowanceRequest, PushOutcome, UserAccountPush, UserAccountSnapshot, UserAccountState,
};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{durable_object, DurableObject, Env, Method, Request, Response, Result, State};

const STATE_KEY: &str = "state";
/// Largest body the object accepts.
const MAX_OBJECT_BODY: usize = 16 * 1024;

struct Inner {
    state: State,
    env: Env,
    account: RefCell<Option<UserAccountState>>,
}

#[durable_object]
pub struct UserAccount {
    inner: Rc<Inner>,
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(status))
}

impl Inner {
    fn with_account<T>(&self, f: impl FnOnce(&mut UserAccountState) -> T) -> Option<T> {
        self.account.borrow_mut().as_mut().map(f)
    }

    async fn persist(&self) -> Result<()> {
        let text = self.account.borrow().as_ref().map(serde_json::to_string).transpose()?;
        match text {
            Some(text) => self.state.storage().put(STATE_KEY, text).await,
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Tells every key account that drew on the balance that the user was
    /// disabled or enabled again (a key with allowance left would otherwise
    /// only hear of it on its next request for more). A key that cannot be
    /// told hears it on its next request, when it asks again anyway.
    async fn notify_keys(&self, disabled: bool) {
        let ids: Vec<String> = self
            .account
            .borrow()
            .as_ref()
            .map(|a| a.key_ids().map(str::to_string).collect())
            .unwrap_or_default();
        let Ok(namespace) = self.env.durable_object(bindings::KEY_ACCOUNT) else { return };
        let body = serde_json::json!({ "disabled": disabled });
        for id in ids {
            let sent = async {
                let stub = namespace.id_from_string(&id)?.get_stub()?;
                crate::object_call::json::<_, serde_json::Value>(
                    &stub,
                    "key-account",
                    Method::Post,
                    "/balance-notice",
                    Some(&body),
                )
                .await
            };
            if let Err(e) = sent.await {
                worker::console_error!("user account: key account {id} not told of the user's status: {e}");
            }
        }
    }
}

impl UserAccount {
    async fn route(&self, mut req: Request) -> Result<Response> {
        let inner = &self.inner;
        if inner.account.borrow().is_none() {
            return json_error(503, "user account not loaded");
        }
        let path = req.path();
        if path == "/state" {
            let snapshot = inner.with_account(|a| a.snapshot());
            return Response::from_json(&snapshot);
        }
        let body = req.bytes().await?;
        if body.len() > MAX_OBJECT_BODY {
            return json_error(413, "body too large");
        }
        match path.as_str() {
            "/draw" => {
                let Ok(draw) = serde_json::from_slice::<AllowanceRequest>(&body) else {
                    return json_error(400, "invalid allowance request");
                };
                let Some((grant, changed)) = inner.with_account(|a| a.draw(&draw)) else {
                    return json_error(503, "user account not loaded");
                };
                if changed {
                    inner.persist().await?;
                }
                Response::from_json(&grant)
            }
            "/configure" => {
                let Ok(push) = serde_json::from_slice::<UserAccountPush>(&body) else {
                    return json_error(400, "invalid account push");
                };
                let Some((was_disabled, outcome)) =
                    inner.with_account(|a| (a.disabled(), a.configure(&push)))
                else {
                    return json_error(503, "user account not loaded");
                };
                let stored = match outcome {
                    PushOutcome::Applied => {
                        inner.persist().await?;
                        if was_disabled != push.disabled {
                            inner.notify_keys(push.disabled).await;
                        }
                        push.version
                    }
                    PushOutcome::Unchanged => push.version,
                    PushOutcome::NotNewer { stored } => stored,
                };
                let applied = matches!(outcome, PushOutcome::Applied | PushOutcome::Unchanged);
                Response::from_json(&serde_json::json!({"applied": applied, "stored_version": stored}))
            }
            _ => json_error(404, "not found"),
        }
    }
}

impl DurableObject for UserAccount {
    fn new(state: State, env: Env) -> Self {
        let inner = Rc::new(Inner { state, env, account: RefCell::new(None) });
        let loader = inner.clone();
        // Holds every event until the account is loaded (the runtime's gate).
        let _loading = inner.state.block_concurrency_while(async move {
            let text = loader.state.storage().get::<String>(STATE_KEY).await?;
            let account = match text.map(|t| serde_json::from_str::<UserAccountState>(&t)) {
                Some(Ok(account)) => account,
                Some(Err(e)) => {
                    // Never silently: a lost state would re-grant spent credit.
                    worker::console_error!("user account: unreadable state record: {e}");
                    return Err(worker::Error::RustError(format!("unreadable user account state: {e}")));
                }
                None => UserAccountState::default(),
            };
            *loader.account.borrow_mut() = Some(account);
            Ok(())
        });
        Self { inner }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.route(req).await
    }
}

/// How a push to the user account ended.
pub enum Configured {
    Applied,
    NotNewer { stored: u64 },
}

/// A handle on one user's account object.
pub struct UserAccountClient {
    stub: worker::Stub,
}

impl UserAccountClient {
    pub fn new(env: &Env, user_id: &str) -> Result<Self> {
        let stub = env.durable_object(bindings::USER_ACCOUNT)?.id_from_name(user_id)?.get_stub()?;
        Ok(Self { stub })
    }

    async fn call<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<R> {
        crate::object_call::json(&self.stub, "user-account", method, path, body).await
    }

    /// A key account's allowance request or release.
    pub async fn draw(&self, req: &AllowanceRequest) -> Result<AllowanceGrant> {
        self.call(Method::Post, "/draw", Some(req)).await
    }

    /// The admin's push.
    pub async fn configure(&self, push: &UserAccountPush) -> std::result::Result<Configured, GatewayError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            applied: bool,
            stored_version: u64,
        }
        let reply: Reply = self
            .call(Method::Put, "/configure", Some(push))
            .await
            .map_err(|e| crate::internal("user account configure", e))?;
        Ok(if reply.applied {
            Configured::Applied
        } else {
            Configured::NotNewer { stored: reply.stored_version }
        })
    }

    pub async fn snapshot(&self) -> std::result::Result<UserAccountSnapshot, GatewayError> {
        self.call::<(), _>(Method::Get, "/state", None)
            .await
            .map_err(|e| crate::internal("user account snapshot", e))
    }
}
