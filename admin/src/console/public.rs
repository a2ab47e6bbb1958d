//! What the console shows before anyone signs in: how one may sign in or up
//! (`GET /api/public/info`) and the models this deployment serves with their
//! prices (`GET /api/public/pricing`, the public pricing page, as One API
//! operators publish). Nothing here names a channel, a credential or a user.

use crate::config::SignupMode;
use crate::db::routing::load_routing_config_consistent;
use crate::error::ApiResult;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use edgeway_core::pricing::ModelPrice;
use edgeway_core::routing::RoutingConfig;
use serde::Serialize;

/// `GET /api/public/info`.
#[derive(Debug, Serialize)]
pub struct PublicInfo {
    /// `open`, `invite` or `closed`.
    pub signup_mode: &'static str,
    /// External logins: `{id, name, start_url}`.
    pub login_providers: Vec<serde_json::Value>,
    /// The gateway's URL for clients (`GATEWAY_PUBLIC_URL`, else `EDGE_URL`).
    pub gateway_url: Option<String>,
    /// The provider table's ids, names and default base URLs (for the
    /// channel form; public knowledge, no credentials).
    pub providers: Vec<serde_json::Value>,
}

pub async fn info(State(state): State<AppState>) -> Json<PublicInfo> {
    let accounts = state.accounts();
    let signup_mode = match accounts.signup_mode {
        SignupMode::Open => "open",
        SignupMode::Invite => "invite",
        SignupMode::Closed => "closed",
    };
    let login_providers = accounts
        .login_providers
        .iter()
        .map(|p| {
            serde_json::json!({"id": p.id, "name": p.name, "start_url": format!("/api/auth/oidc/{}/start", p.id)})
        })
        .collect();
    let gateway_url = state
        .metrics()
        .config
        .gateway_url
        .clone()
        .or_else(|| state.console().edge.as_ref().map(|e| e.url.trim_end_matches('/').to_string()));
    let providers = edgeway_core::provider::PROVIDERS
        .iter()
        .map(|p| serde_json::json!({"id": p.id, "name": p.name, "base_url": p.base_url}))
        .collect();
    Json(PublicInfo { signup_mode, login_providers, gateway_url, providers })
}

/// One model on the pricing page (prices at x1, micro-units per million
/// tokens; `per_request` in micro-units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicModel {
    pub name: String,
    pub owned_by: Option<String>,
    pub price: ModelPrice,
}

/// A group's multiplier, for "your price = list price × ratio".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicGroup {
    pub name: String,
    pub price_ratio_ppm: u32,
}

#[derive(Debug, Serialize)]
pub struct Pricing {
    pub data: Vec<PublicModel>,
    pub groups: Vec<PublicGroup>,
}

/// The models with at least one enabled channel, by name.
pub fn public_pricing(config: &RoutingConfig) -> Pricing {
    let enabled = |channel: &str| config.channels.iter().any(|c| c.id == channel && c.enabled);
    let mut data: Vec<PublicModel> = config
        .models
        .iter()
        .filter(|m| m.targets.iter().any(|t| enabled(&t.channel)))
        .map(|m| PublicModel { name: m.name.clone(), owned_by: m.owned_by.clone(), price: m.price })
        .collect();
    data.sort_by(|a, b| a.name.cmp(&b.name));
    let groups = config
        .groups
        .iter()
        .map(|g| PublicGroup { name: g.name.clone(), price_ratio_ppm: g.price_ratio_ppm })
        .collect();
    Pricing { data, groups }
}

pub async fn pricing(State(state): State<AppState>) -> ApiResult<Json<Pricing>> {
    let config = load_routing_config_consistent(state.db()).await?;
    Ok(Json(public_pricing(&config)))
}
