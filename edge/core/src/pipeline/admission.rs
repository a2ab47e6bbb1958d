//! What a key's account must admit, and what an admission holds.

use super::account_slice::Need;
use super::inbound::Inbound;
use crate::error::GatewayError;
use crate::key_account::{AccountSnapshot, KeyLimits};
use crate::key_record::KeyRecord;
use crate::limits::DEFAULT_RESERVED_OUTPUT_TOKENS;
use crate::pricing::ModelPrice;

/// How long an isolate trusts its key account's word that a key without
/// limits may skip admission (ms): the bound on how late a revocation pushed
/// to the account is seen by such keys.
pub const ACCOUNT_CHECK_TTL_MS: i64 = 2_000;

/// Whether a key without limits in its record may skip per-request admission,
/// by its account's snapshot (which knows of revocations, expiries and limits
/// pushed by the admin before KV does). A revoked or expired key is refused.
/// `now_ms` is the isolate's clock.
pub fn may_skip_admission(
    record: &KeyRecord,
    account: &AccountSnapshot,
    now_ms: i64,
) -> Result<bool, GatewayError> {
    if account.expires_at.is_some_and(|at| now_ms / 1000 >= at) {
        return Err(GatewayError::InvalidApiKey);
    }
    match &account.limits {
        Some(limits) if limits.version >= record.version => {
            if limits.disabled {
                return Err(GatewayError::InvalidApiKey);
            }
            Ok(!limits.enforces_anything())
        }
        _ => Ok(!KeyLimits::from_record(record).enforces_anything()),
    }
}

/// What a request holds in its key's slice: the worst case reserved against
/// the quota (the prompt's upper bound plus the output limit at the model's
/// dearest input price, at the key's group ratio) and the tokens counted
/// against TPM until settled (the estimate).
pub fn slice_need(price: &ModelPrice, price_ratio_ppm: u32, inbound: &Inbound) -> Need {
    let max_output = inbound.max_output_tokens.unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS);
    Need {
        reserve_micros: price.worst_case_micros_at_ratio(
            inbound.prompt.upper_bound,
            max_output,
            price_ratio_ppm,
        ),
        tokens: inbound.prompt.estimate.saturating_add(max_output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_account::KeyAccountState;
    use crate::translate::ClientDialect;

    fn record(json: &str) -> KeyRecord {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn snapshot_after(push: Option<&KeyRecord>) -> AccountSnapshot {
        let mut account = KeyAccountState::new(60_000);
        if let Some(r) = push {
            let _ = account.configure(r);
        }
        account.snapshot(0)
    }

    #[test]
    fn unlimited_keys_skip_until_the_account_knows_better() {
        let plain = record(r#"{"digest":"d","version":3}"#);
        assert_eq!(may_skip_admission(&plain, &snapshot_after(None), 0), Ok(true));
        // an older push changes nothing
        let older = record(r#"{"digest":"d","version":2,"rpm":5}"#);
        assert_eq!(may_skip_admission(&plain, &snapshot_after(Some(&older)), 0), Ok(true));
        // limits pushed to the account before KV has them
        let newer = record(r#"{"digest":"d","version":4,"rpm":5}"#);
        assert_eq!(may_skip_admission(&plain, &snapshot_after(Some(&newer)), 0), Ok(false));
        // revoked in the account, still active in KV
        let revoked = record(r#"{"digest":"d","version":4,"status":"disabled"}"#);
        assert_eq!(
            may_skip_admission(&plain, &snapshot_after(Some(&revoked)), 0),
            Err(GatewayError::InvalidApiKey)
        );
        // an expiry pushed to the account counts at once
        let expiring = record(r#"{"digest":"d","version":4,"expires_at":100}"#);
        let snapshot = snapshot_after(Some(&expiring));
        assert_eq!(may_skip_admission(&plain, &snapshot, 99_999), Ok(true));
        assert_eq!(may_skip_admission(&plain, &snapshot, 100_000), Err(GatewayError::InvalidApiKey));
    }

    #[test]
    fn reservation_is_the_worst_case() {
        let inbound = Inbound::read(
            ClientDialect::OpenAiChat,
            br#"{"model":"m","messages":[{"role":"user","content":"12345678"}],"max_tokens":10,"stream":true}"#,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let price = ModelPrice { input: 1_000_000, output: 2_000_000, ..Default::default() };
        let need = slice_need(&price, 1_000_000, &inbound);
        // (8 bytes + twice the 7 template tokens of one message + 64 overhead)
        // input tokens at 1 µ + 10 output tokens at 2 µ
        assert_eq!(need.reserve_micros, 86 + 20);
        assert_eq!(need.tokens, 2 + 7 + 10);
        assert_eq!(slice_need(&price, 500_000, &inbound).reserve_micros, 53, "at the group ratio");
    }
}
