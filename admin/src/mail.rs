//! Email through SMTP (`lettre`), used only when `SMTP_URL` is configured:
//! `smtp://user:pass@host:587?tls=required` (STARTTLS), `smtps://…:465`
//! (TLS), or `smtp://host:25` (plain, for a local relay).

use crate::alerts::LowBalance;
use crate::AppState;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends the low-balance email to `to`; failures are logged, never raised.
pub async fn send_low_balance(state: &AppState, to: &str, alert: &LowBalance) {
    let alerts = &state.accounts().alerts;
    let (Some(url), Some(from)) = (&alerts.smtp_url, &alerts.smtp_from) else { return };
    let units = alert.balance_micros as f64 / 1e6;
    let threshold = alert.threshold_micros as f64 / 1e6;
    let body = format!(
        "Hello {},\n\nyour edgeway balance is {units:.2}, below your alert threshold of {threshold:.2}.\n\
         Top up or redeem a code to keep your keys working.\n",
        alert.username
    );
    let (Ok(from), Ok(to_box)) = (from.parse::<Mailbox>(), to.parse::<Mailbox>()) else {
        tracing::warn!(user = %alert.user_id, "low-balance email not sent: bad address");
        return;
    };
    let message = match Message::builder().from(from).to(to_box).subject("edgeway: low balance").body(body) {
        Ok(m) => m,
        Err(err) => {
            tracing::warn!(user = %alert.user_id, %err, "low-balance email not built");
            return;
        }
    };
    let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(url) {
        Ok(t) => t.timeout(Some(std::time::Duration::from_secs(10))).build(),
        Err(err) => {
            tracing::warn!(%err, "SMTP_URL is not usable");
            return;
        }
    };
    match transport.send(message).await {
        Ok(_) => tracing::info!(user = %alert.user_id, "low-balance email sent"),
        Err(err) => tracing::warn!(user = %alert.user_id, %err, "low-balance email failed"),
    }
}
