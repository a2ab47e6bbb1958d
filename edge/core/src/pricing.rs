//! Prices and cost. Money is integer micro-units (1 unit = 1,000,000 micros)
//! of the billing currency; prices are micro-units per million tokens, so a
//! price of $0.15 / 1M tokens is `150_000`. Costs are computed in `i128` and
//! rounded up once, on the total, so no request is billed less than it cost.
//!
//! A user's group multiplies prices by a ratio in parts per million
//! ([`RATIO_ONE_PPM`] = ×1), as One API's group ratio does; the ratio is
//! applied to the exact total before the one rounding, so `x1` costs the same
//! as no ratio and no ratio ever rounds twice.

use crate::usage::TokenUsage;
use serde::{Deserialize, Serialize};

/// Tokens per pricing unit.
pub const TOKENS_PER_PRICE_UNIT: i128 = 1_000_000;

/// A price ratio of ×1, in parts per million.
pub const RATIO_ONE_PPM: u32 = 1_000_000;

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
    /// Each part the dearer of the two: a price whose worst case covers a
    /// request that either model may serve (a model and its fallbacks).
    pub fn dearest_of(&self, other: &ModelPrice) -> ModelPrice {
        let part = |a: Option<i64>, a_default: i64, b: Option<i64>, b_default: i64| {
            Some(a.unwrap_or(a_default).max(b.unwrap_or(b_default)))
        };
        ModelPrice {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: part(self.cache_read, self.input, other.cache_read, other.input),
            cache_write_5m: part(self.cache_write_5m, self.input, other.cache_write_5m, other.input),
            cache_write_1h: part(self.cache_write_1h, self.input, other.cache_write_1h, other.input),
            per_request: self.per_request.max(other.per_request),
        }
    }

    /// Cost of `usage` in micro-units, rounded up. Never negative for
    /// non-negative prices. The same as [`Self::cost_micros_at_ratio`] at ×1.
    pub fn cost_micros(&self, usage: &TokenUsage) -> i64 {
        self.cost_micros_at_ratio(usage, RATIO_ONE_PPM)
    }

    /// Cost of `usage` with every price multiplied by `ratio_ppm / 1_000_000`
    /// (a group's price ratio), in micro-units. The whole sum, flat
    /// per-request price included, is computed exactly in `i128` (saturating)
    /// and rounded up once.
    pub fn cost_micros_at_ratio(&self, usage: &TokenUsage, ratio_ppm: u32) -> i64 {
        let per_mtok = |tokens: u64, price: i64| i128::from(tokens).saturating_mul(i128::from(price));
        // In micro-units × TOKENS_PER_PRICE_UNIT.
        let exact = [
            per_mtok(usage.input_uncached, self.input),
            per_mtok(usage.cache_read, self.cache_read.unwrap_or(self.input)),
            per_mtok(usage.cache_write_5m, self.cache_write_5m.unwrap_or(self.input)),
            per_mtok(usage.cache_write_1h, self.cache_write_1h.unwrap_or(self.input)),
            per_mtok(usage.output, self.output),
            i128::from(self.per_request).saturating_mul(TOKENS_PER_PRICE_UNIT),
        ]
        .into_iter()
        .fold(0i128, i128::saturating_add);
        let scaled = exact.saturating_mul(i128::from(ratio_ppm));
        let divisor = TOKENS_PER_PRICE_UNIT * i128::from(RATIO_ONE_PPM);
        let rounded_up =
            if scaled > 0 { scaled.saturating_add(divisor - 1) / divisor } else { scaled / divisor };
        i64::try_from(rounded_up).unwrap_or(if rounded_up > 0 { i64::MAX } else { i64::MIN })
    }

    /// Worst-case cost of a request with `prompt_tokens` uncached input and up
    /// to `max_output_tokens` output: what a quota reservation holds.
    pub fn worst_case_micros(&self, prompt_tokens: u64, max_output_tokens: u64) -> i64 {
        self.worst_case_micros_at_ratio(prompt_tokens, max_output_tokens, RATIO_ONE_PPM)
    }

    /// [`Self::worst_case_micros`] at a group's price ratio.
    pub fn worst_case_micros_at_ratio(
        &self,
        prompt_tokens: u64,
        max_output_tokens: u64,
        ratio_ppm: u32,
    ) -> i64 {
        let input_price = [Some(self.input), self.cache_write_5m, self.cache_write_1h]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.input);
        let price = ModelPrice { input: input_price, ..*self };
        let usage =
            TokenUsage { input_uncached: prompt_tokens, output: max_output_tokens, ..Default::default() };
        price.cost_micros_at_ratio(&usage, ratio_ppm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dearest_of_two_prices_covers_both_worst_cases() {
        let a = ModelPrice { input: 5, output: 1, cache_read: Some(1), per_request: 0, ..Default::default() };
        let b = ModelPrice {
            input: 2,
            output: 9,
            cache_write_1h: Some(20),
            per_request: 3,
            ..Default::default()
        };
        let d = a.dearest_of(&b);
        assert_eq!((d.input, d.output, d.per_request), (5, 9, 3));
        assert_eq!((d.cache_read, d.cache_write_5m, d.cache_write_1h), (Some(2), Some(5), Some(20)));
        for p in [a, b] {
            assert!(
                d.worst_case_micros_at_ratio(1_000, 500, 1_000_000)
                    >= p.worst_case_micros_at_ratio(1_000, 500, 1_000_000)
            );
        }
    }

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
    fn ratio_multiplies_the_exact_total_and_rounds_once() {
        let price = ModelPrice { input: 150_000, output: 600_000, per_request: 3, ..Default::default() };
        let u = TokenUsage { input_uncached: 1_000_000, output: 1_000_000, ..Default::default() };
        assert_eq!(price.cost_micros_at_ratio(&u, RATIO_ONE_PPM), price.cost_micros(&u));
        assert_eq!(price.cost_micros_at_ratio(&u, RATIO_ONE_PPM), 750_003);
        assert_eq!(price.cost_micros_at_ratio(&u, 2_000_000), 1_500_006);
        assert_eq!(price.cost_micros_at_ratio(&u, 500_000), 375_002); // 375001.5 rounds up
        assert_eq!(price.cost_micros_at_ratio(&u, 0), 0);
        // Rounded once, after the ratio: 3 input tokens at 150_000 are 0.45 micros,
        // x2 = 0.9 -> 1 (rounding first would give ceil(0.45) * 2 = 2).
        let p = ModelPrice { input: 150_000, ..Default::default() };
        let three = TokenUsage { input_uncached: 3, ..Default::default() };
        assert_eq!(p.cost_micros_at_ratio(&three, 2_000_000), 1);
        // Every ratio is monotonic and never below the exact value.
        for ratio in [1u32, 999_999, 1_000_000, 1_000_001, 3_333_333] {
            let c = price.cost_micros_at_ratio(&u, ratio);
            let exact = 750_003f64 * f64::from(ratio) / 1e6;
            assert!(c as f64 >= exact && (c as f64) < exact + 1.0, "{ratio}: {c} vs {exact}");
        }
        assert_eq!(price.worst_case_micros_at_ratio(1_000_000, 1_000_000, 2_000_000), 1_500_006);
        assert_eq!(price.worst_case_micros(10, 10), price.worst_case_micros_at_ratio(10, 10, RATIO_ONE_PPM));
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let price = ModelPrice { input: i64::MAX, output: i64::MAX, ..Default::default() };
        let u = TokenUsage { input_uncached: u64::MAX, output: u64::MAX, ..Default::default() };
        assert_eq!(price.cost_micros(&u), i64::MAX);
        assert_eq!(price.cost_micros_at_ratio(&u, u32::MAX), i64::MAX);
    }
}
