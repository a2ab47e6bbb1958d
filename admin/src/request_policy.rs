//! The request policy API: the operator's regular-expression rules over
//! prompt text (block, or replace), edited as one ordered list. The rules
//! travel to the edge inside the routing config and are applied there
//! before routing (`edgeway_core::request_policy`), so a change bumps the
//! routing version and pushes it; a list that does not compile is a 400
//! naming the rule, and nothing is stored.

use crate::audit;
use crate::auth::Caller;
use crate::db::routing::{bump_routing_version, load_routing_config, request_policy, set_request_policy};
use crate::edge_sync::push_routing_if_configured;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use edgeway_core::request_policy::{PolicyRule, RequestPolicy};
use edgeway_core::routing::RoutingTable;
use serde::{Deserialize, Serialize};

/// `PUT /api/policy` body: the whole list, in the order the rules apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub rules: Vec<PolicyRule>,
}

/// The policy as stored, and whether the edge has the change.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub rules: Vec<PolicyRule>,
    pub routing_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_synced: Option<bool>,
}

/// `GET /api/policy`.
pub async fn get(State(state): State<AppState>) -> ApiResult<Json<PolicyView>> {
    let mut conn = state.db().pool.acquire().await?;
    let config = load_routing_config(&mut conn).await?;
    Ok(Json(PolicyView { rules: config.policy, routing_version: config.version, edge_synced: None }))
}

/// `PUT /api/policy`: replaces the rules.
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<PolicyBody>,
) -> ApiResult<Json<PolicyView>> {
    RequestPolicy::compile(&body.rules).map_err(ApiError::BadRequest)?;
    let mut tx = state.db().pool.begin().await?;
    let before = request_policy(&mut tx).await?;
    let version = bump_routing_version(&mut tx).await?;
    set_request_policy(&mut tx, &body.rules).await?;
    let config = load_routing_config(&mut tx).await?;
    RoutingTable::new(config).map_err(|e| ApiError::BadRequest(e.0))?;
    audit::record_in(
        &mut tx,
        &caller,
        "policy.update",
        ("policy", "request"),
        Some(&before),
        Some(&body.rules),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(rules = body.rules.len(), version, "request policy updated");
    let edge_synced = push_routing_if_configured(&state).await;
    Ok(Json(PolicyView { rules: body.rules, routing_version: version, edge_synced: Some(edge_synced) }))
}
