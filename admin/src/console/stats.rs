//! The dashboard's numbers: requests, tokens, spend and errors over time and
//! by model, key, channel and user, for a date range.
//!
//! `GET /api/stats` (admins: everything, with optional filters) and `GET
//! /api/me/stats` (a user: their own rows only, by model and key). The range
//! and bucket are resolved by the pure [`resolve_range`], with the time as
//! an argument.

use crate::auth::Caller;
use crate::db::keys::find_key;
use crate::db::stats::{self, Dimension, Group, Point, Sums, UsageFilter};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::{now_ms, AppState};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// Default range: the last seven days.
pub const DEFAULT_RANGE_MS: i64 = 7 * DAY_MS;
/// Longest range: about two years.
pub const MAX_RANGE_MS: i64 = 732 * DAY_MS;
/// Most buckets a series may have.
pub const MAX_BUCKETS: i64 = 2_000;
/// Groups listed per breakdown.
pub const BREAKDOWN_LIMIT: i64 = 20;

/// `GET /api/stats` query (times are unix ms).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    #[serde(default)]
    pub from_ms: Option<i64>,
    #[serde(default)]
    pub to_ms: Option<i64>,
    /// `hour`, `day` or `auto` (default: hours for up to two days, else days).
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
}

/// The dashboard's answer.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    pub totals: Sums,
    /// One point per bucket that has rows, oldest first.
    pub series: Vec<Point>,
    /// Breakdowns by dimension (`model`, `key`, `channel`, `user`), dearest first.
    pub by: BTreeMap<&'static str, Vec<Group>>,
}

/// The range `[from, to)` and bucket size of a query at `now_ms`.
pub fn resolve_range(
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    bucket: Option<&str>,
    now_ms: i64,
) -> Result<(i64, i64, i64), String> {
    let to = to_ms.unwrap_or(now_ms);
    let from = from_ms.unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS));
    if from >= to {
        return Err("`from_ms` must be before `to_ms`".into());
    }
    if to - from > MAX_RANGE_MS {
        return Err("the range may be at most 732 days".into());
    }
    let bucket_ms = match bucket.unwrap_or("auto") {
        "hour" => HOUR_MS,
        "day" => DAY_MS,
        "auto" if to - from <= 2 * DAY_MS => HOUR_MS,
        "auto" => DAY_MS,
        other => return Err(format!("`bucket` must be hour, day or auto, not `{other}`")),
    };
    if (to - from) / bucket_ms > MAX_BUCKETS {
        return Err(format!("at most {MAX_BUCKETS} buckets; choose a larger bucket"));
    }
    Ok((from, to, bucket_ms))
}

async fn compute(
    state: &AppState,
    filter: UsageFilter,
    bucket_ms: i64,
    dimensions: &[Dimension],
) -> ApiResult<Stats> {
    let db = state.db();
    let mut by = BTreeMap::new();
    for d in dimensions {
        by.insert(d.as_str(), stats::breakdown(db, &filter, *d, BREAKDOWN_LIMIT).await?);
    }
    Ok(Stats {
        from_ms: filter.from_ms.unwrap_or(0),
        to_ms: filter.to_ms.unwrap_or(0),
        bucket_ms,
        totals: stats::totals(db, &filter).await?,
        series: stats::series(db, &filter, bucket_ms).await?,
        by,
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// `GET /api/stats`.
pub async fn admin_stats(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<StatsQuery>,
) -> ApiResult<Json<Stats>> {
    let (from, to, bucket_ms) =
        resolve_range(q.from_ms, q.to_ms, q.bucket.as_deref(), now_ms()).map_err(ApiError::BadRequest)?;
    let key_digest = match non_empty(q.key_id) {
        None => None,
        Some(id) => Some(
            find_key(state.db(), &id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no key with id `{id}`")))?
                .digest,
        ),
    };
    let filter = UsageFilter {
        from_ms: Some(from),
        to_ms: Some(to),
        key_digest,
        user_id: non_empty(q.user_id),
        model: non_empty(q.model),
        channel: non_empty(q.channel),
        status: None,
    };
    Ok(Json(compute(&state, filter, bucket_ms, &Dimension::ALL).await?))
}

/// `GET /api/me/stats` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyStatsQuery {
    #[serde(default)]
    pub from_ms: Option<i64>,
    #[serde(default)]
    pub to_ms: Option<i64>,
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
}

/// The digest of one of the caller's own keys (another user's is not found).
pub async fn own_key_digest(
    state: &AppState,
    caller: &Caller,
    key_id: Option<String>,
) -> ApiResult<Option<String>> {
    let Some(id) = non_empty(key_id) else { return Ok(None) };
    match find_key(state.db(), &id).await? {
        Some(key) if key.user_id.as_deref() == Some(caller.user_id.as_str()) => Ok(Some(key.digest)),
        _ => Err(ApiError::NotFound(format!("no key with id `{id}`"))),
    }
}

/// `GET /api/me/stats`: the caller's own usage.
pub async fn my_stats(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<MyStatsQuery>,
) -> ApiResult<Json<Stats>> {
    let (from, to, bucket_ms) =
        resolve_range(q.from_ms, q.to_ms, q.bucket.as_deref(), now_ms()).map_err(ApiError::BadRequest)?;
    let filter = UsageFilter {
        from_ms: Some(from),
        to_ms: Some(to),
        key_digest: own_key_digest(&state, &caller, q.key_id).await?,
        user_id: Some(caller.user_id.clone()),
        model: non_empty(q.model),
        channel: None,
        status: None,
    };
    Ok(Json(compute(&state, filter, bucket_ms, &[Dimension::Model, Dimension::Key]).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    #[test]
    fn ranges_default_to_the_last_week_in_days() {
        assert_eq!(resolve_range(None, None, None, NOW), Ok((NOW - DEFAULT_RANGE_MS, NOW, DAY_MS)));
        assert_eq!(resolve_range(Some(NOW - DAY_MS), None, None, NOW), Ok((NOW - DAY_MS, NOW, HOUR_MS)));
        assert_eq!(
            resolve_range(Some(NOW - DAY_MS), None, Some("day"), NOW),
            Ok((NOW - DAY_MS, NOW, DAY_MS))
        );
        assert_eq!(resolve_range(Some(0), Some(10), Some("hour"), NOW), Ok((0, 10, HOUR_MS)));
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(resolve_range(Some(NOW), Some(NOW), None, NOW).is_err());
        assert!(resolve_range(Some(NOW), Some(NOW - 1), None, NOW).is_err());
        assert!(resolve_range(Some(NOW - MAX_RANGE_MS - 1), None, None, NOW).is_err());
        assert!(resolve_range(None, None, Some("minute"), NOW).is_err());
        // 732 days in hours is more than MAX_BUCKETS.
        assert!(resolve_range(Some(NOW - MAX_RANGE_MS), None, Some("hour"), NOW).is_err());
    }
}
