//! Periodic budgets, of users and of keys.
//!
//! Users: a user whose `budget_period` is `daily` or `monthly`
//! gets an allowance at the start of each period (UTC) that tops the balance
//! up to `budget_micros`, so the balance "resets" each period; with
//! `budget_period = none` the balance is a lifetime amount. Each allowance is
//! an ordinary ledger credit (pushed to the edge at once), granted at most
//! once per period: [`run_once`] checks for an allowance entry since the
//! period began, inside the credit's transaction.
//!
//! Keys: a key with a budget (`PUT /api/keys/{id}/budget`) keeps its
//! lifetime quota, which the edge enforces exactly, and at each period start
//! the quota is moved to the cost booked for the key before the period began
//! plus the period's budget, so the key may spend the budget per period.
//! Usage of the previous period that is ingested late counts against the new
//! period (the quota never lets a key spend more than budget + what it spent
//! before).
//!
//! Time is an argument, so tests drive period boundaries directly; the
//! service runs [`run_once`] every minute ([`spawn`]).

use crate::balances::{after_credit, credit_in, Credit};
use crate::db::ledger::{self, EntryKind};
use crate::db::{keys, users};
use crate::error::ApiResult;
use crate::AppState;
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the first day of `year`-`month`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix ms at which the period containing `now_ms` began; `None` for `none`.
pub fn period_start_ms(period: &str, now_ms: i64) -> Option<i64> {
    let day = now_ms.div_euclid(DAY_MS);
    match period {
        "daily" => Some(day * DAY_MS),
        "monthly" => {
            let civil = crate::db::usage::civil_day(day);
            let year: i64 = civil.get(0..4)?.parse().ok()?;
            let month: i64 = civil.get(5..7)?.parse().ok()?;
            Some(days_from_civil(year, month, 1) * DAY_MS)
        }
        _ => None,
    }
}

/// Grants every due allowance at `now_ms`; the number granted.
pub async fn run_once(state: &AppState, now_ms: i64) -> ApiResult<usize> {
    let mut granted = run_keys(state, now_ms).await?;
    for user in users::all(state.db()).await? {
        let (Some(start), Some(budget)) = (period_start_ms(&user.budget_period, now_ms), user.budget_micros)
        else {
            continue;
        };
        if !user.is_active() {
            continue;
        }
        let mut tx = state.db().pool.begin().await?;
        // The credit's first write (the version bump) locks the user, so two
        // runners cannot both see "no allowance yet".
        if ledger::bump_account_version(&mut tx, &user.id).await?.is_none() {
            continue;
        }
        if ledger::allowance_since(&mut tx, &user.id, start).await? {
            continue; // dropped: rolls back the bump
        }
        let balance = ledger::balance(&mut tx, &user.id).await?.balance_micros;
        let top_up = budget.saturating_sub(balance).max(0);
        let reason = format!("{} allowance (balance reset to {budget})", user.budget_period);
        credit_in(
            &mut tx,
            &Credit {
                user_id: &user.id,
                kind: EntryKind::Allowance,
                amount_micros: top_up,
                actor_id: None,
                reason: &reason,
                code_id: None,
                at_ms: Some(now_ms),
            },
        )
        .await?;
        tx.commit().await?;
        after_credit(state, &user.id).await;
        granted += 1;
    }
    Ok(granted)
}

/// Moves the quota of every key whose budget period began; the number moved.
async fn run_keys(state: &AppState, now_ms: i64) -> ApiResult<usize> {
    let mut moved = 0;
    for budget in keys::budgets(state.db()).await? {
        let Some(start) = period_start_ms(&budget.period, now_ms) else { continue };
        if budget.period_start_ms >= start
            || !keys::claim_budget_period(state.db(), &budget.key_id, start).await?
        {
            continue;
        }
        let Some(key) = keys::find_key(state.db(), &budget.key_id).await? else { continue };
        let spent = keys::spent_before(state.db(), &key.digest, start).await?;
        let change = keys::KeyChange {
            quota_micros: Some(Some(spent.saturating_add(budget.budget_micros))),
            ..keys::KeyChange::default()
        };
        crate::keys::change_key(state, &key.id, &change).await?;
        moved += 1;
    }
    Ok(moved)
}

/// Runs [`run_once`] every minute.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(err) = run_once(&state, crate::now_ms()).await {
                tracing::warn!(%err, "periodic budgets: run failed");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_starts() {
        // 2024-03-15T12:00:00Z
        let t = 1_710_504_000_000;
        assert_eq!(period_start_ms("daily", t), Some(1_710_460_800_000)); // 2024-03-15T00:00Z
        assert_eq!(period_start_ms("monthly", t), Some(1_709_251_200_000)); // 2024-03-01T00:00Z
        assert_eq!(period_start_ms("monthly", 1_709_251_200_000), Some(1_709_251_200_000));
        assert_eq!(period_start_ms("none", t), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
