//! Request logs: the usage ledger filtered by time, key, user, model, channel
//! and status, newest first, in pages with a keyset cursor; with
//! `format=csv` the whole filtered set is streamed as CSV, read from the
//! database one page at a time (memory stays bounded whatever its size).
//!
//! `GET /api/logs` (admins) and `GET /api/me/logs` (a user's own rows).

use crate::auth::Caller;
use crate::console::stats::own_key_digest;
use crate::db::keys::find_key;
use crate::db::stats::{rows_page, Cursor, UsageFilter};
use crate::db::usage::LedgerEntry;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Rows per page of the JSON listing by default, and at most.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 1000;
/// Rows read from the database per chunk of a CSV export.
pub const EXPORT_CHUNK: i64 = 500;

/// `GET /api/logs` query (times are unix ms).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    pub from_ms: Option<i64>,
    #[serde(default)]
    pub to_ms: Option<i64>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    /// `ok` (< 400), `error` (>= 400), `4xx`, `5xx`, or one status code.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// `json` (default) or `csv` (the whole filtered set, streamed).
    #[serde(default)]
    pub format: Option<String>,
}

/// A page of the listing.
#[derive(Debug, Serialize)]
pub struct LogsPage {
    pub data: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The inclusive status range of a `status` filter.
pub fn parse_status(text: &str) -> Result<(i64, i64), String> {
    match text.trim() {
        "ok" => Ok((0, 399)),
        "error" => Ok((400, i64::from(u16::MAX))),
        "4xx" => Ok((400, 499)),
        "5xx" => Ok((500, 599)),
        code => match code.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok((i64::from(n), i64::from(n))),
            _ => Err(format!("`status` must be ok, error, 4xx, 5xx or a status code, not `{code}`")),
        },
    }
}

/// `created_at_ms:request_id` of the row a page ended with.
pub fn encode_cursor(entry: &LedgerEntry) -> String {
    format!("{}:{}", entry.event.created_at_ms, entry.event.request_id)
}

pub fn parse_cursor(text: &str) -> Result<Cursor, String> {
    let (ms, id) = text.split_once(':').ok_or("malformed `cursor`")?;
    let created_at_ms = ms.parse().map_err(|_| "malformed `cursor`")?;
    Ok(Cursor { created_at_ms, request_id: id.to_string() })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// The filter of a query; `key_digest` already resolved.
fn filter_of(q: &LogsQuery, key_digest: Option<String>) -> Result<UsageFilter, String> {
    if let (Some(from), Some(to)) = (q.from_ms, q.to_ms) {
        if from >= to {
            return Err("`from_ms` must be before `to_ms`".into());
        }
    }
    Ok(UsageFilter {
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        key_digest,
        user_id: non_empty(q.user_id.clone()),
        model: non_empty(q.model.clone()),
        channel: non_empty(q.channel.clone()),
        status: non_empty(q.status.clone()).map(|s| parse_status(&s)).transpose()?,
    })
}

async fn answer(db: &Db, q: &LogsQuery, filter: UsageFilter, file_name: &str) -> ApiResult<Response> {
    let cursor =
        non_empty(q.cursor.clone()).map(|c| parse_cursor(&c)).transpose().map_err(ApiError::BadRequest)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let limit = q.limit.unwrap_or(DEFAULT_PAGE);
            if !(1..=MAX_PAGE).contains(&limit) {
                return Err(ApiError::bad_request(format!("`limit` must be between 1 and {MAX_PAGE}")));
            }
            // One row more than asked says whether there is a next page.
            let mut data = rows_page(db, &filter, cursor.as_ref(), limit + 1).await?;
            let more = data.len() as i64 > limit;
            data.truncate(usize::try_from(limit).unwrap_or(0));
            let next_cursor = if more { data.last().map(encode_cursor) } else { None };
            Ok(Json(LogsPage { data, next_cursor }).into_response())
        }
        "csv" => Ok(csv_response(db.clone(), filter, cursor, file_name)),
        other => Err(ApiError::bad_request(format!("`format` must be json or csv, not `{other}`"))),
    }
}

/// `GET /api/logs`.
pub async fn admin_logs(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Response> {
    let key_digest = match non_empty(q.key_id.clone()) {
        None => None,
        Some(id) => Some(
            find_key(state.db(), &id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no key with id `{id}`")))?
                .digest,
        ),
    };
    let filter = filter_of(&q, key_digest).map_err(ApiError::BadRequest)?;
    answer(state.db(), &q, filter, "edgeway-requests.csv").await
}

/// `GET /api/me/logs`: the caller's own rows (`user_id` is ignored).
pub async fn my_logs(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Response> {
    let key_digest = own_key_digest(&state, &caller, q.key_id.clone()).await?;
    let mut filter = filter_of(&q, key_digest).map_err(ApiError::BadRequest)?;
    filter.user_id = Some(caller.user_id.clone());
    answer(state.db(), &q, filter, "my-requests.csv").await
}

/// The CSV header (one line per request).
pub const CSV_HEADER: &str = "created_at_ms,request_id,user_id,owner,group,model,served_model,channel,provider,\
endpoint,status,outcome,stream,input_uncached_tokens,cache_read_tokens,cache_write_5m_tokens,cache_write_1h_tokens,\
output_tokens,reasoning_tokens,unit,unit_count,cost_micros,latency_ms,ttft_ms,usage_source,attempts\n";

/// One CSV field: quoted when needed, and a leading `= + - @` (a formula to
/// a spreadsheet) neutralised with a `'`.
pub fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// One row of the export.
pub fn csv_line(entry: &LedgerEntry) -> String {
    let e = &entry.event;
    let u = &e.usage;
    let fields: [String; 26] = [
        e.created_at_ms.to_string(),
        csv_field(&e.request_id),
        csv_field(e.user_id.as_deref().unwrap_or("")),
        csv_field(&e.owner),
        csv_field(&e.group),
        csv_field(&e.model),
        csv_field(&e.served_model),
        csv_field(&e.channel),
        csv_field(&e.provider),
        e.endpoint.as_str().to_string(),
        e.status.to_string(),
        e.outcome.as_str().to_string(),
        e.stream.to_string(),
        u.input_uncached.to_string(),
        u.cache_read.to_string(),
        u.cache_write_5m.to_string(),
        u.cache_write_1h.to_string(),
        u.output.to_string(),
        u.reasoning.to_string(),
        e.unit.map(|x| x.as_str().to_string()).unwrap_or_default(),
        e.unit_count.to_string(),
        e.cost_micros.to_string(),
        e.latency_ms.to_string(),
        e.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
        e.usage_source.as_str().to_string(),
        csv_field(&serde_json::to_string(&e.attempts).unwrap_or_default()),
    ];
    let mut line = fields.join(",");
    line.push('\n');
    line
}

/// State of a streaming export.
struct Export {
    db: Db,
    filter: UsageFilter,
    cursor: Option<Cursor>,
    header_sent: bool,
    done: bool,
}

fn csv_response(db: Db, filter: UsageFilter, cursor: Option<Cursor>, file_name: &str) -> Response {
    let export = Export { db, filter, cursor, header_sent: false, done: false };
    let stream = futures_util::stream::unfold(export, |mut x| async move {
        if x.done {
            return None;
        }
        if !x.header_sent {
            x.header_sent = true;
            return Some((Ok::<String, ApiError>(CSV_HEADER.to_string()), x));
        }
        match rows_page(&x.db, &x.filter, x.cursor.as_ref(), EXPORT_CHUNK).await {
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => {
                x.done = (rows.len() as i64) < EXPORT_CHUNK;
                x.cursor = rows.last().map(|r| Cursor {
                    created_at_ms: r.event.created_at_ms,
                    request_id: r.event.request_id.clone(),
                });
                Some((Ok(rows.iter().map(csv_line).collect::<String>()), x))
            }
            Err(err) => {
                // The status line has gone; a cut-off body is the only signal left.
                tracing::error!(error = %err, "request log export failed");
                x.done = true;
                Some((Err(err), x))
            }
        }
    });
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(parse_status("ok"), Ok((0, 399)));
        assert_eq!(parse_status("error"), Ok((400, 65535)));
        assert_eq!(parse_status("5xx"), Ok((500, 599)));
        assert_eq!(parse_status(" 429 "), Ok((429, 429)));
        assert!(parse_status("700").is_err());
        assert!(parse_status("bad").is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let c = parse_cursor("1700:req:with:colons").unwrap();
        assert_eq!(c, Cursor { created_at_ms: 1700, request_id: "req:with:colons".into() });
        assert!(parse_cursor("x:1").is_err());
        assert!(parse_cursor("17").is_err());
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("-2,3"), "\"'-2,3\"");
        assert_eq!(CSV_HEADER.matches(',').count(), 25);
    }
}
