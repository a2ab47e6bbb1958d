//! Low-balance alerts: when a user's balance falls below their threshold, a
//! signed webhook is sent (and an email, when SMTP is configured), once per
//! crossing: the alert is armed again only when the balance climbs back to
//! the threshold or above.
//!
//! "Once" is decided in the database: the alert fires only for the caller
//! whose conditional `UPDATE … SET low_balance_alerted = 1 WHERE … = 0`
//! changed the row, however many ingests and credits race.
//!
//! The webhook is `POST LOW_BALANCE_WEBHOOK_URL` with a JSON body and
//! `x-edgeway-timestamp` (unix seconds) and `x-edgeway-signature` = hex
//! HMAC-SHA256(`WEBHOOK_SECRET`, "{timestamp}.{body}"). The URL is operator
//! configuration, never user input.

use crate::db::{ledger, users};
use crate::{now_ms, now_secs, AppState};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Header with the webhook's unix-seconds timestamp.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "x-edgeway-timestamp";
/// Header with the webhook's signature.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-edgeway-signature";

/// The webhook body.
#[derive(Debug, Clone, Serialize)]
pub struct LowBalance {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: String,
    pub username: String,
    pub balance_micros: i64,
    pub threshold_micros: i64,
    pub at_ms: i64,
}

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign_webhook(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-checks the user's balance against their threshold; fires or re-arms.
/// Failures are logged: an alert must never fail the change that caused it.
pub async fn check_low_balance(state: &AppState, user_id: &str) {
    if let Err(err) = check(state, user_id).await {
        tracing::warn!(user = %user_id, %err, "low-balance check failed");
    }
}

async fn check(state: &AppState, user_id: &str) -> crate::error::ApiResult<()> {
    let Some(user) = users::find(state.db(), user_id).await? else { return Ok(()) };
    let Some(threshold) = user.low_balance_micros else { return Ok(()) };
    let mut conn = state.db().pool.acquire().await?;
    let balance = ledger::balance(&mut conn, user_id).await?.balance_micros;
    drop(conn);
    if balance >= threshold {
        users::set_low_balance_alerted(state.db(), user_id, false).await?;
        return Ok(());
    }
    if !users::set_low_balance_alerted(state.db(), user_id, true).await? {
        return Ok(()); // already alerted for this crossing
    }
    let alert = LowBalance {
        kind: "low_balance",
        user_id: user.id.clone(),
        username: user.username.clone(),
        balance_micros: balance,
        threshold_micros: threshold,
        at_ms: now_ms(),
    };
    tracing::info!(user = %user.id, balance, threshold, "low balance: alerting");
    let state = state.clone();
    let email = user.email.clone();
    tokio::spawn(async move {
        send_webhook(&state, &alert).await;
        if let Some(to) = email {
            crate::mail::send_low_balance(&state, &to, &alert).await;
        }
    });
    Ok(())
}

async fn send_webhook(state: &AppState, alert: &LowBalance) {
    let alerts = &state.accounts().alerts;
    let (Some(url), Some(secret)) = (&alerts.webhook_url, &alerts.webhook_secret) else { return };
    let Ok(body) = serde_json::to_vec(alert) else { return };
    let timestamp = now_secs();
    let signature = sign_webhook(secret, timestamp, &body);
    let sent = state
        .http()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
        .header(WEBHOOK_SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            tracing::info!(user = %alert.user_id, "low-balance webhook delivered")
        }
        Ok(r) => {
            tracing::warn!(user = %alert.user_id, status = r.status().as_u16(), "low-balance webhook refused")
        }
        Err(_) => tracing::warn!(user = %alert.user_id, "low-balance webhook unreachable"),
    }
}
