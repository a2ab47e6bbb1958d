//! The usage row: the columns under which a [`UsageEvent`] is stored, defined
//! once for both stores that keep one row per request: D1's `usage_events`
//! (written by the worker's queue consumer) and the admin's `usage_ledger`.
//!
//! **Key design decision:** the column list, the order of the values and
//! their encoding (integers as `i64`, enums as their snake-case text,
//! booleans as 0/1) live here and nowhere else; each store builds its
//! `INSERT` from [`insert_sql`] and binds [`usage_row`] in order, so a new
//! event field is one change here plus one migration per store.

use crate::channel_health::Attempt;
use crate::usage::UsageEvent;

/// One column value. Nulls carry their column's type, which Postgres needs
/// to bind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageValue<'a> {
    Text(&'a str),
    Int(i64),
    NullText,
    NullInt,
    /// The request's attempts, stored as text by [`encode_attempts`].
    Attempts(&'a [Attempt]),
}

/// The text an attempts column holds: a JSON array, or empty when there
/// were none (requests refused before any upstream).
pub fn encode_attempts(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return String::new();
    }
    serde_json::to_string(attempts).unwrap_or_default()
}

/// The attempts an attempts column holds (unreadable text: none).
pub fn decode_attempts(text: &str) -> Vec<Attempt> {
    if text.is_empty() {
        return Vec::new();
    }
    serde_json::from_str(text).unwrap_or_default()
}

/// Every column of a usage row, in bind order. `request_id` is the primary key.
pub const USAGE_COLUMNS: [&str; 29] = [
    "request_id",
    "key_digest",
    "owner",
    "user_id",
    "group_name",
    "price_ratio_ppm",
    "model",
    "upstream_model",
    "channel",
    "provider",
    "input_uncached_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_micros",
    "status",
    "outcome",
    "usage_source",
    "stream",
    "latency_ms",
    "ttft_ms",
    "created_at_ms",
    "endpoint",
    "unit",
    "unit_count",
    "served_model",
    "attempts",
];

/// How a store numbers its placeholders: D1 `?1`, sqlx/Postgres `$1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Question,
    Dollar,
}

/// Counts the stores cannot hold as `i64` are clamped to `i64::MAX`; the
/// admin refuses such events before binding (see its ingest checks).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The values of `event`, in [`USAGE_COLUMNS`] order.
pub fn usage_row(e: &UsageEvent) -> [UsageValue<'_>; 29] {
    use UsageValue::{Int, NullInt, NullText, Text};
    let u = &e.usage;
    [
        Text(&e.request_id),
        Text(&e.key_digest),
        Text(&e.owner),
        e.user_id.as_deref().map_or(NullText, Text),
        Text(&e.group),
        Int(i64::from(e.price_ratio_ppm)),
        Text(&e.model),
        Text(&e.upstream_model),
        Text(&e.channel),
        Text(&e.provider),
        Int(int(u.input_uncached)),
        Int(int(u.cache_read)),
        Int(int(u.cache_write_5m)),
        Int(int(u.cache_write_1h)),
        Int(int(u.output)),
        Int(int(u.reasoning)),
        Int(e.cost_micros),
        Int(i64::from(e.status)),
        Text(e.outcome.as_str()),
        Text(e.usage_source.as_str()),
        Int(i64::from(e.stream)),
        Int(int(e.latency_ms)),
        e.ttft_ms.map_or(NullInt, |t| Int(int(t))),
        Int(e.created_at_ms),
        Text(e.endpoint.as_str()),
        e.unit.map_or(NullText, |u| Text(u.as_str())),
        Int(int(e.unit_count)),
        Text(&e.served_model),
        UsageValue::Attempts(&e.attempts),
    ]
}

/// `INSERT INTO {table} (…every column…, …extra…) VALUES (…) ON CONFLICT
/// (request_id) DO NOTHING`, idempotent on the request id. `extra` are the
/// store's own columns, bound after the row's values. `table` and `extra`
/// are constants of the caller, never input.
pub fn insert_sql(table: &str, placeholder: Placeholder, extra: &[&str]) -> String {
    let sign = match placeholder {
        Placeholder::Question => '?',
        Placeholder::Dollar => '$',
    };
    let columns: Vec<&str> = USAGE_COLUMNS.iter().chain(extra).copied().collect();
    let values: Vec<String> = (1..=columns.len()).map(|i| format!("{sign}{i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (request_id) DO NOTHING",
        columns.join(", "),
        values.join(", ")
    )
}

/// The comma-separated column list, for `SELECT`s.
pub fn column_list() -> String {
    USAGE_COLUMNS.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::Family;
    use crate::usage::{RequestOutcome, TokenUsage, Unit, UsageSource};

    fn event() -> UsageEvent {
        UsageEvent {
            request_id: "r1".into(),
            key_digest: "d".into(),
            owner: "o".into(),
            user_id: Some("usr_1".into()),
            group: "vip".into(),
            price_ratio_ppm: 1_500_000,
            model: "m".into(),
            upstream_model: "um".into(),
            channel: "c".into(),
            provider: "p".into(),
            endpoint: Family::Embeddings,
            unit: Some(Unit::AudioSecond),
            unit_count: 3,
            usage: TokenUsage {
                input_uncached: 1,
                cache_read: 2,
                cache_write_5m: 3,
                cache_write_1h: 4,
                output: 5,
                reasoning: u64::MAX,
            },
            cost_micros: -7,
            status: 200,
            outcome: RequestOutcome::ClientAborted,
            usage_source: UsageSource::Estimated,
            stream: true,
            latency_ms: 9,
            ttft_ms: None,
            served_model: String::new(),
            attempts: Vec::new(),
            created_at_ms: 11,
        }
    }

    #[test]
    fn values_follow_the_columns() {
        let e = event();
        let row = usage_row(&e);
        let get = |name: &str| row[USAGE_COLUMNS.iter().position(|c| *c == name).unwrap_or(usize::MAX)];
        assert_eq!(get("user_id"), UsageValue::Text("usr_1"));
        assert_eq!(get("group_name"), UsageValue::Text("vip"));
        assert_eq!(get("price_ratio_ppm"), UsageValue::Int(1_500_000));
        assert_eq!(get("cache_write_1h_tokens"), UsageValue::Int(4));
        assert_eq!(get("reasoning_tokens"), UsageValue::Int(i64::MAX), "clamped, not wrapped");
        assert_eq!(get("cost_micros"), UsageValue::Int(-7));
        assert_eq!(get("outcome"), UsageValue::Text("client_aborted"));
        assert_eq!(get("usage_source"), UsageValue::Text("estimated"));
        assert_eq!(get("stream"), UsageValue::Int(1));
        assert_eq!(get("ttft_ms"), UsageValue::NullInt);
        assert_eq!(get("endpoint"), UsageValue::Text("embeddings"));
        assert_eq!((get("unit"), get("unit_count")), (UsageValue::Text("audio_second"), UsageValue::Int(3)));
        let standalone = UsageEvent { user_id: None, unit: None, unit_count: 0, ..e.clone() };
        assert_eq!(usage_row(&standalone)[3], UsageValue::NullText);
        assert_eq!(usage_row(&standalone)[25..27], [UsageValue::NullText, UsageValue::Int(0)]);
    }

    #[test]
    fn attempts_are_stored_as_json_text_and_read_back() {
        assert_eq!(encode_attempts(&[]), "", "none: empty");
        let attempts = vec![
            Attempt {
                channel: "a".into(),
                model: "m".into(),
                status: 500,
                failure: Some("server_error".into()),
                latency_ms: 12,
            },
            Attempt { channel: "b".into(), model: "m".into(), status: 200, failure: None, latency_ms: 30 },
        ];
        let text = encode_attempts(&attempts);
        assert!(text.starts_with('[') && text.contains("server_error"), "{text}");
        assert_eq!(decode_attempts(&text), attempts);
        assert_eq!(decode_attempts(""), vec![]);
        assert_eq!(decode_attempts("not json"), vec![], "unreadable: none");
    }

    #[test]
    fn insert_has_one_placeholder_per_column() {
        let sql = insert_sql("usage_events", Placeholder::Question, &[]);
        assert!(sql.starts_with("INSERT INTO usage_events (request_id, key_digest,"));
        assert!(sql.contains("?29)") && !sql.contains("?30"));
        assert!(sql.ends_with("ON CONFLICT (request_id) DO NOTHING"));
        let sql = insert_sql("usage_ledger", Placeholder::Dollar, &["ingested_at_ms"]);
        assert!(
            sql.contains("attempts, ingested_at_ms)") && sql.contains("($1, $2,") && sql.contains("$30)")
        );
        let unique: std::collections::BTreeSet<&str> = USAGE_COLUMNS.iter().copied().collect();
        assert_eq!(unique.len(), USAGE_COLUMNS.len());
    }

    /// Every D1 migration together creates exactly these columns.
    #[test]
    fn d1_migrations_define_exactly_these_columns() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../d1-migrations");
        let mut sql = String::new();
        let mut files: Vec<_> =
            std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            sql.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        let mut found: Vec<String> = Vec::new();
        let mut in_table = false;
        for line in sql.lines().map(str::trim) {
            if line.starts_with("CREATE TABLE IF NOT EXISTS usage_events") {
                in_table = true;
                continue;
            }
            if in_table && line.starts_with(')') {
                in_table = false;
            }
            if in_table {
                if let Some(name) = line.split_whitespace().next() {
                    found.push(name.to_string());
                }
            }
            if let Some(rest) = line.strip_prefix("ALTER TABLE usage_events ADD COLUMN ") {
                found.extend(rest.split_whitespace().next().map(String::from));
            }
        }
        let mut expected: Vec<String> = USAGE_COLUMNS.iter().map(|c| c.to_string()).collect();
        expected.sort();
        found.sort();
        assert_eq!(found, expected);
    }
}
