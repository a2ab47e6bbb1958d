//! Reasoning controls: effort words, token budgets and model-name suffixes,
//! mapped both ways with one table.
//!
//! | effort  | budget (tokens) | from budget   |
//! |---------|-----------------|---------------|
//! | minimal | 1024            | ≤ 1024        |
//! | low     | 2048            | ≤ 4096        |
//! | medium  | 8192            | ≤ 16384       |
//! | high    | 24576           | above         |
//!
//! 1024 is Anthropic's minimum budget; 24576 is Gemini 2.5 Flash's maximum.
//! The suffix `-thinking` means "reasoning on, medium".

use super::canonical::{Reasoning, ReasoningEffort};

/// Anthropic's smallest accepted `budget_tokens`.
pub const ANTHROPIC_MIN_BUDGET: u64 = 1024;

/// Token budget for an effort level.
pub fn effort_budget(effort: ReasoningEffort) -> u64 {
    match effort {
        ReasoningEffort::Minimal => 1024,
        ReasoningEffort::Low => 2048,
        ReasoningEffort::Medium => 8192,
        ReasoningEffort::High => 24576,
    }
}

/// Effort level closest to a token budget.
pub fn budget_effort(budget: u64) -> ReasoningEffort {
    match budget {
        0..=1024 => ReasoningEffort::Minimal,
        1025..=4096 => ReasoningEffort::Low,
        4097..=16384 => ReasoningEffort::Medium,
        _ => ReasoningEffort::High,
    }
}

/// Parses an effort word; `none` means disabled.
pub fn parse_effort(word: &str) -> Option<Reasoning> {
    Some(match word {
        "none" => Reasoning::Disabled,
        "minimal" => Reasoning::Effort(ReasoningEffort::Minimal),
        "low" => Reasoning::Effort(ReasoningEffort::Low),
        "medium" => Reasoning::Effort(ReasoningEffort::Medium),
        "high" | "xhigh" => Reasoning::Effort(ReasoningEffort::High),
        _ => return None,
    })
}

/// The OpenAI word for an effort level.
pub fn effort_word(effort: ReasoningEffort) -> &'static str {
    match effort {
        ReasoningEffort::Minimal => "minimal",
        ReasoningEffort::Low => "low",
        ReasoningEffort::Medium => "medium",
        ReasoningEffort::High => "high",
    }
}

/// Splits a reasoning suffix off a model name:
/// `claude-sonnet-4-high` → (`claude-sonnet-4`, high).
pub fn split_model_suffix(model: &str) -> Option<(&str, Reasoning)> {
    const SUFFIXES: &[(&str, Reasoning)] = &[
        ("-thinking", Reasoning::Effort(ReasoningEffort::Medium)),
        ("-high", Reasoning::Effort(ReasoningEffort::High)),
        ("-medium", Reasoning::Effort(ReasoningEffort::Medium)),
        ("-low", Reasoning::Effort(ReasoningEffort::Low)),
        ("-minimal", Reasoning::Effort(ReasoningEffort::Minimal)),
    ];
    SUFFIXES.iter().find_map(|(suffix, reasoning)| {
        model.strip_suffix(suffix).filter(|base| !base.is_empty()).map(|base| (base, *reasoning))
    })
}

/// Token budget for a reasoning request, `None` when reasoning is off.
pub fn budget_for(reasoning: Reasoning) -> Option<u64> {
    match reasoning {
        Reasoning::Disabled => None,
        Reasoning::Effort(effort) => Some(effort_budget(effort)),
        Reasoning::Budget(0) => None,
        Reasoning::Budget(budget) => Some(budget),
    }
}

/// Effort level for a reasoning request, `None` when reasoning is off.
pub fn effort_for(reasoning: Reasoning) -> Option<ReasoningEffort> {
    match reasoning {
        Reasoning::Disabled | Reasoning::Budget(0) => None,
        Reasoning::Effort(effort) => Some(effort),
        Reasoning::Budget(budget) => Some(budget_effort(budget)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_split() {
        assert_eq!(
            split_model_suffix("claude-sonnet-4-thinking"),
            Some(("claude-sonnet-4", Reasoning::Effort(ReasoningEffort::Medium)))
        );
        assert_eq!(split_model_suffix("gemini-2.5-pro-low").map(|s| s.0), Some("gemini-2.5-pro"));
        assert_eq!(split_model_suffix("gpt-4o"), None);
        assert_eq!(split_model_suffix("-high"), None);
    }

    #[test]
    fn table_round_trips() {
        for effort in
            [ReasoningEffort::Minimal, ReasoningEffort::Low, ReasoningEffort::Medium, ReasoningEffort::High]
        {
            assert_eq!(budget_effort(effort_budget(effort)), effort);
            assert_eq!(parse_effort(effort_word(effort)), Some(Reasoning::Effort(effort)));
        }
        assert_eq!(budget_for(Reasoning::Budget(0)), None);
        assert_eq!(effort_for(Reasoning::Budget(30000)), Some(ReasoningEffort::High));
    }
}
