//! User groups and their price ratios. A group's ratio multiplies every
//! model price for its users' keys (parts per million, 1000000 = x1); the
//! groups travel to the edge inside the routing config, so a change bumps
//! the routing version and pushes it. `default` always exists.

use crate::audit;
use crate::auth::Caller;
use crate::db::routing::bump_routing_version;
use crate::db::users::{self, Group};
use crate::edge_sync::push_routing_if_configured;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParam};
use crate::keys::List;
use crate::{now_secs, validate, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

/// Largest ratio accepted: x1000.
pub const MAX_RATIO_PPM: u32 = 1_000_000_000;

/// `POST /api/groups` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    pub price_ratio_ppm: u32,
    #[serde(default)]
    pub description: Option<String>,
}

/// `PATCH /api/groups/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    #[serde(default)]
    pub price_ratio_ppm: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Response of a group change.
#[derive(Debug, Serialize)]
pub struct GroupChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    pub routing_version: u64,
    pub edge_synced: bool,
}

fn check_ratio(ratio: u32) -> ApiResult<u32> {
    if ratio > MAX_RATIO_PPM {
        return Err(ApiError::bad_request(format!(
            "`price_ratio_ppm` must be at most {MAX_RATIO_PPM} (x1000)"
        )));
    }
    Ok(ratio)
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<Group>>> {
    let mut conn = state.db().pool.acquire().await?;
    Ok(Json(List { data: users::groups(&mut conn).await? }))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateGroup>,
) -> ApiResult<(StatusCode, Json<GroupChange>)> {
    let group = Group {
        name: validate::ident("name", &body.name)?,
        price_ratio_ppm: check_ratio(body.price_ratio_ppm)?,
        description: validate::optional_text("description", body.description.as_deref().unwrap_or(""))?,
        created_at: now_secs(),
    };
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    users::insert_group(&mut tx, &group).await?;
    audit::record_in(&mut tx, &caller, "group.create", ("group", &group.name), None::<&Group>, Some(&group))
        .await?;
    tx.commit().await?;
    let edge_synced = push_routing_if_configured(&state).await;
    Ok((
        StatusCode::CREATED,
        Json(GroupChange { group: Some(group), deleted: None, routing_version: version, edge_synced }),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<UpdateGroup>,
) -> ApiResult<Json<GroupChange>> {
    if body.price_ratio_ppm.is_none() && body.description.is_none() {
        return Err(ApiError::bad_request("nothing to change: send `price_ratio_ppm` or `description`"));
    }
    let ratio = body.price_ratio_ppm.map(check_ratio).transpose()?;
    let description =
        body.description.as_deref().map(|d| validate::optional_text("description", d)).transpose()?;
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    let before = users::find_group(&mut tx, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group `{name}`")))?;
    users::update_group(&mut tx, &name, ratio, description.as_deref()).await?;
    let after = users::find_group(&mut tx, &name).await?;
    audit::record_in(&mut tx, &caller, "group.update", ("group", &name), Some(&before), after.as_ref())
        .await?;
    tx.commit().await?;
    let edge_synced = push_routing_if_configured(&state).await;
    Ok(Json(GroupChange { group: after, deleted: None, routing_version: version, edge_synced }))
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<GroupChange>> {
    if name == "default" {
        return Err(ApiError::bad_request("the `default` group cannot be deleted"));
    }
    let mut tx = state.db().pool.begin().await?;
    let version = bump_routing_version(&mut tx).await?;
    let before = users::find_group(&mut tx, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group `{name}`")))?;
    users::delete_group(&mut tx, &name).await?;
    audit::record_in(&mut tx, &caller, "group.delete", ("group", &name), Some(&before), None::<&Group>)
        .await?;
    tx.commit().await?;
    let edge_synced = push_routing_if_configured(&state).await;
    Ok(Json(GroupChange { group: None, deleted: Some(name), routing_version: version, edge_synced }))
}
