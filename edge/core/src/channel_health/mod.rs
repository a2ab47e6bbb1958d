//! What an upstream attempt's outcome says about the channel that made it:
//! the failure classes routing fails over on and the circuit breaker counts,
//! the `Retry-After` an upstream asked for, and the record of each attempt
//! that goes into the usage event.
//!
//! **Key design decision:** one classification serves every consumer. The
//! request machine asks [`Failure::fails_over`]; the breaker asks
//! [`Failure::counts_against_channel`] and [`Failure::cool_down_ms`]; key
//! rotation asks [`Failure::refuses_credential`]. A failure that is the
//! client's own (a 400) never opens a circuit and never fails over, because
//! every channel would answer the same.

use serde::{Deserialize, Serialize};

pub mod breaker;
pub mod check;
pub mod shared;

/// Cool-down of a circuit opened by an exhausted upstream quota (billing),
/// when the upstream gave no `Retry-After`: it will not come back soon.
pub const QUOTA_COOL_DOWN_MS: u64 = 10 * 60_000;
/// Longest `Retry-After` honoured (a larger one is clamped).
pub const MAX_RETRY_AFTER_MS: u64 = 60 * 60_000;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// No response headers in time (connect included).
    Headers,
    /// Headers came, but no content within the first-content limit.
    FirstContent,
    /// Content had started; the gap before the next chunk was too long.
    Idle,
}

/// Why an upstream attempt failed. On the wire (an isolate's report to a
/// channel's shared record) it is `{"kind": …, "status": …, "retry_after_ms": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FailureWire", try_from = "FailureWire")]
pub enum Failure {
    /// Connection refused or reset, DNS, TLS: no HTTP answer at all.
    Connect,
    Timeout(TimeoutPhase),
    /// 5xx or 408: the upstream's own trouble.
    Server {
        status: u16,
    },
    /// 429 for a rate limit: fine again soon (`retry_after_ms` when said).
    RateLimited {
        retry_after_ms: Option<u64>,
    },
    /// 429 (or 402) because the account's quota or credit is used up.
    QuotaExhausted {
        retry_after_ms: Option<u64>,
    },
    /// 401 / 403: the channel's credential is refused.
    CredentialRefused {
        status: u16,
    },
    /// Any other 4xx: the request's own fault; the same everywhere.
    ClientFault {
        status: u16,
    },
    /// The stream ended or broke before any content.
    StreamBroken,
}

impl Failure {
    /// Classifies an upstream's answer `status` (not 2xx), with its
    /// `Retry-After` header and (the start of) its error body.
    pub fn from_status(status: u16, retry_after: Option<&str>, body: &[u8], now_ms: i64) -> Self {
        let retry_after_ms = retry_after.and_then(|v| parse_retry_after(v, now_ms));
        match status {
            401 | 403 | 407 => Self::CredentialRefused { status },
            402 => Self::QuotaExhausted { retry_after_ms },
            429 if is_quota_body(body) => Self::QuotaExhausted { retry_after_ms },
            429 => Self::RateLimited { retry_after_ms },
            408 | 500..=599 => Self::Server { status },
            _ => Self::ClientFault { status },
        }
    }

    /// Whether the next candidate should be tried: everything but the
    /// client's own fault.
    pub fn fails_over(&self) -> bool {
        !matches!(self, Self::ClientFault { .. })
    }

    /// Whether it counts as a failure of the (channel, key, model) circuit.
    pub fn counts_against_channel(&self) -> bool {
        !matches!(self, Self::ClientFault { .. })
    }

    /// The channel's credential was refused: take the key out of rotation.
    pub fn refuses_credential(&self) -> bool {
        matches!(self, Self::CredentialRefused { .. })
    }

    /// A cool-down the upstream asked for (or that its kind implies): the
    /// circuit opens at once for this long instead of counting towards the
    /// threshold.
    pub fn cool_down_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms } => *retry_after_ms,
            Self::QuotaExhausted { retry_after_ms } => Some(retry_after_ms.unwrap_or(QUOTA_COOL_DOWN_MS)),
            _ => None,
        }
    }

    /// Short stable name, as the usage event and the admin show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout(TimeoutPhase::Headers) => "timeout_headers",
            Self::Timeout(TimeoutPhase::FirstContent) => "timeout_first_content",
            Self::Timeout(TimeoutPhase::Idle) => "timeout_idle",
            Self::Server { .. } => "server_error",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExhausted { .. } => "quota_exhausted",
            Self::CredentialRefused { .. } => "credential_refused",
            Self::ClientFault { .. } => "client_error",
            Self::StreamBroken => "stream_broken",
        }
    }
}

/// [`Failure`]'s wire form: flat, so that its code stays small in the wasm
/// build (a derived enum form costs several times as much).
#[derive(Serialize, Deserialize)]
struct FailureWire {
    kind: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn is_zero(status: &u16) -> bool {
    *status == 0
}

impl From<Failure> for FailureWire {
    fn from(failure: Failure) -> Self {
        let (status, retry_after_ms) = match failure {
            Failure::Server { status }
            | Failure::CredentialRefused { status }
            | Failure::ClientFault { status } => (status, None),
            Failure::RateLimited { retry_after_ms } | Failure::QuotaExhausted { retry_after_ms } => {
                (0, retry_after_ms)
            }
            Failure::Connect | Failure::Timeout(_) | Failure::StreamBroken => (0, None),
        };
        Self { kind: failure.kind().to_string(), status, retry_after_ms }
    }
}

impl TryFrom<FailureWire> for Failure {
    type Error = String;

    fn try_from(wire: FailureWire) -> Result<Self, String> {
        let FailureWire { status, retry_after_ms, .. } = wire;
        Ok(match wire.kind.as_str() {
            "connect" => Self::Connect,
            "timeout_headers" => Self::Timeout(TimeoutPhase::Headers),
            "timeout_first_content" => Self::Timeout(TimeoutPhase::FirstContent),
            "timeout_idle" => Self::Timeout(TimeoutPhase::Idle),
            "server_error" => Self::Server { status },
            "rate_limited" => Self::RateLimited { retry_after_ms },
            "quota_exhausted" => Self::QuotaExhausted { retry_after_ms },
            "credential_refused" => Self::CredentialRefused { status },
            "client_error" => Self::ClientFault { status },
            "stream_broken" => Self::StreamBroken,
            other => return Err(format!("unknown failure kind `{other}`")),
        })
    }
}

/// A 429 body that speaks of an exhausted quota or credit rather than a rate
/// (OpenAI's `insufficient_quota`, billing and balance messages).
fn is_quota_body(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    [
        "insufficient_quota",
        "billing",
        "credit balance",
        "insufficient balance",
        "quota exceeded for this month",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// `Retry-After` (delta seconds or an HTTP date) as ms from `now_ms`,
/// clamped to [`MAX_RETRY_AFTER_MS`].
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    // Delta seconds are an integer (RFC 9110); integer parsing also keeps
    // the float parser out of the wasm build.
    let ms = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        value.parse::<u64>().unwrap_or(u64::MAX).saturating_mul(1000)
    } else if value.starts_with('-') {
        return None;
    } else {
        let at = parse_http_date(value)?;
        u64::try_from(at.saturating_mul(1000).saturating_sub(now_ms)).unwrap_or(0)
    };
    Some(ms.min(MAX_RETRY_AFTER_MS))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as unix seconds.
fn parse_http_date(value: &str) -> Option<i64> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// One upstream attempt of a request, as the usage event lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub channel: String,
    /// The public model the attempt was for (a fallback's name when one was
    /// tried).
    pub model: String,
    /// HTTP status the upstream answered; 0 when it did not answer.
    pub status: u16,
    /// Failure class ([`Failure::kind`]); `None` for the attempt that served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// From the attempt's start to its failure, or to the first content
    /// (the headers for a whole answer) of the attempt that served, ms.
    pub latency_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let c = |status, body: &str| Failure::from_status(status, None, body.as_bytes(), 0);
        assert_eq!(c(500, ""), Failure::Server { status: 500 });
        assert_eq!(c(503, ""), Failure::Server { status: 503 });
        assert_eq!(c(529, ""), Failure::Server { status: 529 });
        assert_eq!(c(408, ""), Failure::Server { status: 408 });
        assert_eq!(c(401, ""), Failure::CredentialRefused { status: 401 });
        assert_eq!(c(403, ""), Failure::CredentialRefused { status: 403 });
        assert_eq!(c(400, ""), Failure::ClientFault { status: 400 });
        assert_eq!(c(404, ""), Failure::ClientFault { status: 404 });
        assert_eq!(c(422, ""), Failure::ClientFault { status: 422 });
        assert_eq!(
            c(429, r#"{"error":{"message":"Rate limit reached"}}"#),
            Failure::RateLimited { retry_after_ms: None }
        );
        let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(c(429, quota), Failure::QuotaExhausted { retry_after_ms: None });
        assert_eq!(c(402, ""), Failure::QuotaExhausted { retry_after_ms: None });
    }

    #[test]
    fn only_the_clients_own_fault_neither_fails_over_nor_opens() {
        for f in [
            Failure::Connect,
            Failure::Timeout(TimeoutPhase::Headers),
            Failure::Server { status: 502 },
            Failure::RateLimited { retry_after_ms: None },
            Failure::QuotaExhausted { retry_after_ms: None },
            Failure::CredentialRefused { status: 401 },
            Failure::StreamBroken,
        ] {
            assert!(f.fails_over() && f.counts_against_channel(), "{f:?}");
        }
        let client = Failure::ClientFault { status: 400 };
        assert!(!client.fails_over() && !client.counts_against_channel() && !client.refuses_credential());
        assert!(Failure::CredentialRefused { status: 403 }.refuses_credential());
    }

    #[test]
    fn failures_travel_flat_and_come_back_the_same() {
        for f in [
            Failure::Connect,
            Failure::Timeout(TimeoutPhase::Headers),
            Failure::Timeout(TimeoutPhase::FirstContent),
            Failure::Timeout(TimeoutPhase::Idle),
            Failure::Server { status: 502 },
            Failure::RateLimited { retry_after_ms: Some(7_000) },
            Failure::RateLimited { retry_after_ms: None },
            Failure::QuotaExhausted { retry_after_ms: None },
            Failure::CredentialRefused { status: 403 },
            Failure::ClientFault { status: 422 },
            Failure::StreamBroken,
        ] {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), f, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Failure::RateLimited { retry_after_ms: Some(5) }).unwrap(),
            r#"{"kind":"rate_limited","retry_after_ms":5}"#
        );
        assert!(serde_json::from_str::<Failure>(r#"{"kind":"nope"}"#).is_err());
    }

    #[test]
    fn retry_after_sets_the_cool_down() {
        let rate = Failure::from_status(429, Some("7"), b"{}", 0);
        assert_eq!(rate, Failure::RateLimited { retry_after_ms: Some(7000) });
        assert_eq!(rate.cool_down_ms(), Some(7000));
        assert_eq!(Failure::RateLimited { retry_after_ms: None }.cool_down_ms(), None, "counted, not opened");
        assert_eq!(Failure::QuotaExhausted { retry_after_ms: None }.cool_down_ms(), Some(QUOTA_COOL_DOWN_MS));
        assert_eq!(Failure::Server { status: 500 }.cool_down_ms(), None);
        assert_eq!(parse_retry_after("0", 0), Some(0));
        assert_eq!(parse_retry_after("999999", 0), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(parse_retry_after("-1", 0), None);
        assert_eq!(parse_retry_after("soon", 0), None);
        // 1994-11-06T08:49:37Z = 784111777
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", 784_111_777_000), Some(10_000));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", 784_111_777_000), Some(0), "past: now");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }
}
