//! Prices and cost. Money is integer micro-units (1 unit = 1,000,000 micros)
//! of the billing currency; prices are micro-units per million tokens, so a
//! price of $0.15 / 1M tokens is `150_000`. Costs are computed in `i128` and
//! rounded up once, on the total, so no request is billed less than it cost.

use crate::usage::TokenUsage;
use serde::{Deserialize, Serialize};

/// Tokens per pricing unit.
pub const TOKENS_PER_PRICE_UNIT: i128 = 1_000_000;

/// A model's price. Cache prices default to the input price when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Micro-units per million uncached input tokens.
    #[serde(default)]
    pub input: i64,
    /// Micro-units per million output tokens (reasoning included).
    #[serde(default)]
    pub output: i64,
    /// Micro-units per million cache-read tokens; default: `input`.
    #[serde(default)]
    pub cache_read: Option<i64>,
    /// Micro-units per million 5-minute cache-write tokens; default: `input`.
    #[serde(default)]
    pub cache_write_5m: Option<i64>,
    /// Micro-units per million 1-hour cache-write tokens; default: `input`.
    #[serde(default)]
    pub cache_write_1h: Option<i64>,
    /// Flat micro-units per request.
    #[serde(default)]
    pub per_request: i64,
}

impl ModelPrice {
    /// Cost of `usage` in micro-units, rounded up. Never negative for
    /// non-negative prices.
    pub fn cost_micros(&self, usage: &TokenUsage) -> i64 {
        let per_mtok = |tokens: u64, price: i64| i128::from(tokens).saturating_mul(i128::from(price));
        let token_part = [
            per_mtok(usage.input_uncached, self.input),
            per_mtok(usage.cache_read, self.cache_read.unwrap_or(self.input)),
            per_mtok(usage.cache_write_5m, self.cache_write_5m.unwrap_or(self.input)),
            per_mtok(usage.cache_write_1h, self.cache_write_1h.unwrap_or(self.input)),
            per_mtok(usage.output, self.output),
        ]
        .into_iter()
        .fold(0i128, i128::saturating_add);
        let rounded_up = if token_part > 0 {
            token_part.saturating_add(TOKENS_PER_PRICE_UNIT - 1) / TOKENS_PER_PRICE_UNIT
        } else {
            token_part / TOKENS_PER_PRICE_UNIT
        };
        let total = rounded_up.saturating_add(i128::from(self.per_request));
        i64::try_from(total).unwrap_or(i64::MAX)
    }

    /// Worst-case cost of a request with `prompt_tokens` uncached input and up
    /// to `max_output_tokens` output: what a quota reservation holds.
    pub fn worst_case_micros(&self, prompt_tokens: u64, max_output_tokens: u64) -> i64 {
        let input_price = [Some(self.input), self.cache_write_5m, self.cache_write_1h]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.input);
        let price = ModelPrice { input: input_price, ..*self };
        price.cost_micros(&TokenUsage {
            input_uncached: prompt_tokens,
            output: max_output_tokens,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_integer_and_rounded_up_once() {
        let price = ModelPrice { input: 150_000, output: 600_000, ..Default::default() };
        let u = TokenUsage { input_uncached: 1_000_000, output: 1_000_000, ..Default::default() };
        assert_eq!(price.cost_micros(&u), 750_000);
        let u = TokenUsage { input_uncached: 1, output: 1, ..Default::default() };
        assert_eq!(price.cost_micros(&u), 1); // 0.75 micro rounds up to 1
        assert_eq!(price.cost_micros(&TokenUsage::default()), 0);
    }

    #[test]
    fn cache_buckets_use_their_own_prices() {
        let price = ModelPrice {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: Some(300_000),
            cache_write_5m: Some(3_750_000),
            cache_write_1h: Some(6_000_000),
            per_request: 10,
        };
        let u = TokenUsage {
            input_uncached: 1000,
            cache_read: 1000,
            cache_write_5m: 1000,
            cache_write_1h: 1000,
            output: 1000,
            reasoning: 500,
        };
        // 3000 + 300 + 3750 + 6000 + 15000 + 10
        assert_eq!(price.cost_micros(&u), 28_060);
    }

    #[test]
    fn worst_case_uses_the_dearest_input_price() {
        let price = ModelPrice {
            input: 1_000_000,
            output: 2_000_000,
            cache_write_1h: Some(2_000_000),
            ..Default::default()
        };
        assert_eq!(price.worst_case_micros(1000, 1000), 4000);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let price = ModelPrice { input: i64::MAX, output: i64::MAX, ..Default::default() };
        let u = TokenUsage { input_uncached: u64::MAX, output: u64::MAX, ..Default::default() };
        assert_eq!(price.cost_micros(&u), i64::MAX);
    }
}
