//! The internal API the admin service pushes configuration through, and the
//! operator's view of key accounts and the usage pipeline. Every request is
//! HMAC-signed over method, path, query, timestamp, nonce and body
//! (`edgeway_core::internal_auth`): the headers are checked before the body
//! is read, the signature after, and the nonce is then claimed in the
//! deployment-wide guard ([`crate::internal_guard`]), so a captured request
//! cannot be sent again. Every refusal is the same 401. A routing config or
//! key record whose version is not newer than the stored one is a 409
//! (the same version with the same body is accepted again, for full syncs).
//! With no secret configured the whole API refuses, so it can never be open
//! by mistake.
//!
//! | route | what |
//! | --- | --- |
//! | `PUT /internal/keys/{digest}` | store the key record in KV and push it to the key's account object (revocation and quota changes apply on the next request, whatever KV's propagation) |
//! | `DELETE /internal/keys/{digest}` | delete it from KV and disable the account for good |
//! | `GET /internal/keys/{digest}/account` | the account's snapshot: spend, reservations, leases, windows, outbox, counters |
//! | `POST /internal/keys/{digest}/account/probe?limit=n` | times `n` sequential admission + settle round trips (no billing) on that account: use a scratch digest, the admissions count in its windows |
//! | `PUT /internal/users/{id}/account` | the user's account: `{user_id, credited_micros, version, disabled}` (cumulative credit; the edge keeps the spend); a newer version applies at once to every key of the user, the same version with the same body is accepted again, anything else is a 409 |
//! | `GET /internal/users/{id}/account` | the user's balance at the edge: credited, spent, reserved (allowances held by the user's keys), available |
//! | `PUT`/`GET /internal/routing` | the routing config |
//! | `GET /internal/counters` | the answering isolate's counters (requests, attempts, failovers, refusals, cache verdicts, stream endings) with its id and start time (`edgeway_core::pipeline::counters`) |
//! | `GET /internal/health` | the circuits the isolate that answers has opened, or that have recent failures (channel, upstream model, state, last failure) |
//! | `GET /internal/usage/stats?key_digest=&limit=` | D1 usage totals and rows (newest first), dead-letter counts |
//! | `POST /internal/usage/requeue` | `{"events":[…]}` onto the usage queue again (every store is idempotent on request id) |
//! | `GET /internal/usage/dead-letters?limit=` | dead letters kept in D1 |
//! | `POST /internal/usage/dead-letters/replay?limit=` | put unreplayed dead letters back on the usage queue |

use crate::channel_health_object;
use crate::key_account_object::KeyAccountClient;
use crate::user_account_object::{Configured, UserAccountClient};
use crate::{bindings, http_io, internal_guard, isolate, runtime::now_ms, usage_pipeline};
use edgeway_core::api_key::{is_valid_digest, kv_key_for_digest};
use edgeway_core::channel_health::check::disabled_reason;
use edgeway_core::error::GatewayError;
use edgeway_core::internal_auth::{
    self, ClaimReply, ClaimRequest, VersionClaim, VersionStamp, NONCE_HEADER, REFUSED_MESSAGE,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use edgeway_core::key_record::KeyRecord;
use edgeway_core::routing::{RoutingConfig, RoutingTable, ROUTING_KV_KEY};
use edgeway_core::usage::UsageEvent;
use edgeway_core::user_account::{is_valid_user_id, UserAccountPush};
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Method, Request, Response};

/// Most events accepted by `POST /internal/usage/requeue`.
const MAX_REQUEUE_EVENTS: usize = 1000;

#[derive(Deserialize)]
struct Requeue {
    events: Vec<UsageEvent>,
}

/// A query parameter of the request URL.
fn query_param(req: &Request, name: &str) -> Option<String> {
    let url = req.url().ok()?;
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn limit_param(req: &Request, default: u32, max: u32) -> u32 {
    query_param(req, "limit").and_then(|v| v.parse::<u32>().ok()).unwrap_or(default).clamp(1, max)
}

/// A record that disables a deleted key in its account for good.
fn deleted_record(digest: &str) -> Result<KeyRecord, GatewayError> {
    serde_json::from_value(json!({"digest": digest, "status": "disabled", "version": u64::MAX}))
        .map_err(|_| GatewayError::Internal)
}

/// Largest internal request body (a routing config with many channels).
const MAX_INTERNAL_BODY: usize = 1024 * 1024;

/// The one answer to every signature failure (the reason is logged).
fn refused(reason: impl std::fmt::Debug) -> Result<Response, GatewayError> {
    worker::console_warn!("internal API: request refused: {reason:?}");
    http_io::json_response(
        401,
        &json!({"error": {"message": REFUSED_MESSAGE, "type": "authentication_error"}}),
    )
}

/// A push whose version is not newer than the stored one.
fn not_newer(what: &str, version: u64, stored: u64) -> Result<Response, GatewayError> {
    http_io::json_response(
        409,
        &json!({
            "error": {
                "message": format!("{what} version {version} is not newer than the stored version {stored}"),
                "type": "version_conflict",
            },
            "stored_version": stored,
        }),
    )
}

/// The version stored in KV under `key` (a key record or the routing config):
/// the floor for the guard when it has no record of its own yet.
async fn kv_version(kv: &worker::kv::KvStore, key: &str) -> Result<u64, GatewayError> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(default)]
        version: u64,
    }
    let text = kv.get(key).text().await.map_err(|_| GatewayError::Internal)?;
    Ok(text.and_then(|t| serde_json::from_str::<Versioned>(&t).ok()).map_or(0, |v| v.version))
}

pub async fn handle(mut req: Request, env: &Env) -> Result<Response, GatewayError> {
    let path = req.path();
    let method = req.method();
    let query = req.url().map_err(|_| GatewayError::Internal)?.query().unwrap_or("").to_string();
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let secret = bindings::text(env, bindings::EDGE_ADMIN_SECRET);
    // Headers first: an unsigned request is refused before its body is read.
    let pre = match internal_auth::precheck(
        secret.as_deref(),
        header(TIMESTAMP_HEADER).as_deref(),
        header(NONCE_HEADER).as_deref(),
        header(SIGNATURE_HEADER).as_deref(),
        now_ms() / 1000,
    ) {
        Ok(pre) => pre,
        Err(reason) => return refused(reason),
    };
    let body = http_io::read_body_limited(&mut req, MAX_INTERNAL_BODY).await?;
    if let Err(reason) = internal_auth::verify(secret.as_deref(), &pre, method.as_ref(), &path, &query, &body)
    {
        return refused(reason);
    }
    let kv = env.kv(bindings::KV).map_err(|_| GatewayError::Internal)?;
    let bad = |message: String| GatewayError::InvalidRequest { message, param: None };
    // The nonce is claimed (and a push's version with it) once the request
    // is known to be authentic and well-formed.
    let claim = |version: Option<VersionClaim>| ClaimRequest {
        nonce: pre.nonce.clone(),
        until: pre.remember_until(),
        version,
    };

    if let Some(rest) = path.strip_prefix("/internal/keys/") {
        let (digest, view) = if let Some(digest) = rest.strip_suffix("/account") {
            (digest, Some(false))
        } else if let Some(digest) = rest.strip_suffix("/account/probe") {
            (digest, Some(true))
        } else {
            (rest, None)
        };
        if !is_valid_digest(digest) {
            return Err(bad("key digest must be 64 lower-case hex characters".into()));
        }
        let account = KeyAccountClient::new(env, digest)?;
        if view.is_some() && internal_guard::claim(env, &claim(None)).await? == ClaimReply::Replayed {
            return refused("replayed nonce");
        }
        match (view, method.clone()) {
            (Some(false), Method::Get) => return http_io::json_response(200, &account.snapshot().await?),
            (Some(true), Method::Post) => {
                let probe = account.probe(limit_param(&req, 100, 1000)).await?;
                return http_io::json_response(200, &probe);
            }
            (Some(_), _) => return Err(GatewayError::MethodNotAllowed),
            (None, _) => {}
        }
        return match method {
            Method::Put => {
                let record: KeyRecord =
                    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid key record: {e}")))?;
                if record.digest != digest {
                    return Err(bad("record digest does not match the URL".into()));
                }
                let version = VersionClaim {
                    scope: format!("key:{digest}"),
                    stamp: VersionStamp::of(record.version, &body),
                    floor: kv_version(&kv, &kv_key_for_digest(digest)).await?,
                };
                match internal_guard::claim(env, &claim(Some(version))).await? {
                    ClaimReply::Replayed => return refused("replayed nonce"),
                    ClaimReply::NotNewer { stored } => {
                        return not_newer("key record", record.version, stored)
                    }
                    ClaimReply::Accepted { .. } => {}
                }
                let text = serde_json::to_string(&record).map_err(|_| GatewayError::Internal)?;
                kv.put(&kv_key_for_digest(digest), text)
                    .map_err(|_| GatewayError::Internal)?
                    .execute()
                    .await
                    .map_err(|_| GatewayError::Internal)?;
                isolate::with(|s| s.forget_key(digest));
                // KV is only a cache that other locations see late; the
                // account object enforces the new record from its next request.
                account.configure(&record).await?;
                http_io::json_response(
                    200,
                    &json!({"stored": true, "digest": digest, "version": record.version}),
                )
            }
            Method::Delete => {
                // A deleted key stays deleted: its version becomes the largest
                // there is, so no replayed or late record can bring it back.
                let version = VersionClaim {
                    scope: format!("key:{digest}"),
                    stamp: VersionStamp::of(u64::MAX, b""),
                    floor: 0,
                };
                match internal_guard::claim(env, &claim(Some(version))).await? {
                    ClaimReply::Replayed => return refused("replayed nonce"),
                    ClaimReply::NotNewer { .. } | ClaimReply::Accepted { .. } => {}
                }
                kv.delete(&kv_key_for_digest(digest)).await.map_err(|_| GatewayError::Internal)?;
                isolate::with(|s| s.forget_key(digest));
                account.configure(&deleted_record(digest)?).await?;
                http_io::json_response(200, &json!({"deleted": true}))
            }
            _ => Err(GatewayError::MethodNotAllowed),
        };
    }
    if let Some(user_id) = path.strip_prefix("/internal/users/").and_then(|r| r.strip_suffix("/account")) {
        if !is_valid_user_id(user_id) {
            return Err(bad("user id must be 1 to 128 letters, digits, `_` or `-`".into()));
        }
        let account = UserAccountClient::new(env, user_id).map_err(|e| internal("user account stub", e))?;
        if internal_guard::claim(env, &claim(None)).await? == ClaimReply::Replayed {
            return refused("replayed nonce");
        }
        return match method {
            Method::Get => http_io::json_response(
                200,
                &serde_json::to_value(account.snapshot().await?).map_err(|_| GatewayError::Internal)?,
            ),
            Method::Put => {
                let push: UserAccountPush =
                    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid user account: {e}")))?;
                if push.user_id != user_id {
                    return Err(bad("user_id does not match the URL".into()));
                }
                // The object is the one place the version is decided: a
                // replayed or late push of an older account is refused there.
                match account.configure(&push).await? {
                    Configured::NotNewer { stored } => not_newer("user account", push.version, stored),
                    Configured::Applied => http_io::json_response(
                        200,
                        &json!({"stored": true, "user_id": user_id, "version": push.version}),
                    ),
                }
            }
            _ => Err(GatewayError::MethodNotAllowed),
        };
    }
    let is_routing_push = method == Method::Put && path == "/internal/routing";
    if !is_routing_push && internal_guard::claim(env, &claim(None)).await? == ClaimReply::Replayed {
        return refused("replayed nonce");
    }
    match (method, path.as_str()) {
        (Method::Put, "/internal/routing") => {
            let config: RoutingConfig =
                serde_json::from_slice(&body).map_err(|e| bad(format!("invalid routing config: {e}")))?;
            let table = RoutingTable::new(config.clone()).map_err(|e| bad(e.0))?;
            let version = VersionClaim {
                scope: "routing".into(),
                stamp: VersionStamp::of(config.version, &body),
                floor: kv_version(&kv, ROUTING_KV_KEY).await?,
            };
            match internal_guard::claim(env, &claim(Some(version))).await? {
                ClaimReply::Replayed => return refused("replayed nonce"),
                ClaimReply::NotNewer { stored } => {
                    return not_newer("routing config", config.version, stored)
                }
                ClaimReply::Accepted { .. } => {}
            }
            let text = serde_json::to_string(&config).map_err(|_| GatewayError::Internal)?;
            kv.put(ROUTING_KV_KEY, text)
                .map_err(|_| GatewayError::Internal)?
                .execute()
                .await
                .map_err(|_| GatewayError::Internal)?;
            isolate::with(|s| s.set_routing(table, now_ms()));
            http_io::json_response(
                200,
                &json!({"stored": true, "version": config.version, "models": config.models.len()}),
            )
        }
        (Method::Get, "/internal/usage/stats") => {
            let digest = query_param(&req, "key_digest").unwrap_or_default();
            if !digest.is_empty() && !is_valid_digest(&digest) {
                return Err(bad("key_digest must be 64 lower-case hex characters".into()));
            }
            let stats = usage_pipeline::stats(env, &digest, limit_param(&req, 100, 1000))
                .await
                .map_err(|e| internal("usage stats", e))?;
            http_io::json_response(200, &stats)
        }
        (Method::Post, "/internal/usage/requeue") => {
            let requeue: Requeue =
                serde_json::from_slice(&body).map_err(|e| bad(format!("invalid usage events: {e}")))?;
            if requeue.events.len() > MAX_REQUEUE_EVENTS {
                return Err(bad(format!("at most {MAX_REQUEUE_EVENTS} events per call")));
            }
            let queued =
                usage_pipeline::requeue(env, &requeue.events).await.map_err(|e| internal("requeue", e))?;
            http_io::json_response(200, &json!({"queued": queued}))
        }
        (Method::Get, "/internal/usage/dead-letters") => {
            let rows = usage_pipeline::dead_letters(env, limit_param(&req, 100, 1000))
                .await
                .map_err(|e| internal("dead letters", e))?;
            http_io::json_response(200, &rows)
        }
        (Method::Post, "/internal/usage/dead-letters/replay") => {
            let replayed = usage_pipeline::replay_dead_letters(env, limit_param(&req, 100, 1000))
                .await
                .map_err(|e| internal("dead-letter replay", e))?;
            http_io::json_response(200, &replayed)
        }
        (Method::Get, "/internal/health") => {
            // Every channel's shared record (its circuits and last health
            // checks), and the circuits as the answering isolate knows them.
            let table = isolate::routing_table(env).await?;
            let ids: Vec<&str> = table.config().channels.iter().map(|c| c.id.as_str()).collect();
            let views =
                futures_util::future::join_all(ids.iter().map(|id| channel_health_object::view(env, id)))
                    .await;
            let mut circuits = Vec::new();
            let mut channels = serde_json::Map::new();
            for (id, view) in ids.iter().zip(views) {
                let mut view = view.map_err(|e| internal("channel health", e))?;
                let checks = view["checks"].take();
                channels
                    .insert(id.to_string(), json!({"checks": checks, "disabled": disabled_reason(&checks)}));
                if let serde_json::Value::Array(list) = view["circuits"].take() {
                    circuits.extend(list);
                }
            }
            let isolate_circuits = isolate::with(|s| s.breakers.view(now_ms()));
            http_io::json_response(
                200,
                &json!({ "circuits": circuits, "channels": channels, "isolate_circuits": isolate_circuits }),
            )
        }
        (Method::Get, "/internal/counters") => {
            // This isolate's counts only: each isolate keeps its own.
            let snapshot = isolate::with(|s| s.counters.snapshot(now_ms()));
            http_io::json_response(200, &serde_json::to_value(snapshot).map_err(|_| GatewayError::Internal)?)
        }
        (Method::Get, "/internal/routing") => {
            let table = isolate::routing_table(env).await?;
            http_io::json_response(
                200,
                &serde_json::to_value(table.config()).map_err(|_| GatewayError::Internal)?,
            )
        }
        _ => Err(GatewayError::NotFound),
    }
}

fn internal(what: &str, e: worker::Error) -> GatewayError {
    worker::console_error!("internal API: {what} failed: {e}");
    GatewayError::Internal
}
