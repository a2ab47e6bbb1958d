//! The top-level request parameters a provider names differently or
//! refuses, applied to every OpenAI-format body sent to it (passed through
//! or translated), whatever the endpoint family.
//!
//! **Key design decision:** a refused parameter is dropped, not sent to be
//! refused: the provider would answer the whole request with a 400 or 422
//! (Groq for `logprobs`, Mistral for any field outside its schema), and the
//! next candidate of the route may accept it. The client is told which
//! parameters were dropped in [`DROPPED_PARAMS_HEADER`], so nothing is
//! silently lost.

use serde_json::{Map, Value};

/// Response header naming the parameters dropped for the serving provider
/// (comma-separated), when any were.
pub const DROPPED_PARAMS_HEADER: &str = "x-edgeway-dropped-params";

/// A provider's parameter quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyQuirks {
    /// `(OpenAI name, the provider's name)`: sent under the provider's name.
    pub renamed: &'static [(&'static str, &'static str)],
    /// Refused by the provider: dropped.
    pub dropped: &'static [&'static str],
}

/// What becomes of one top-level parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRule {
    Keep,
    Rename(&'static str),
    Drop,
}

impl BodyQuirks {
    /// No quirks.
    pub const NONE: Self = Self { renamed: &[], dropped: &[] };

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.renamed.is_empty() && self.dropped.is_empty()
    }

    /// What becomes of the parameter `key`.
    pub fn rule(&self, key: &str) -> ParamRule {
        if self.dropped.contains(&key) {
            return ParamRule::Drop;
        }
        match self.renamed.iter().find(|(from, _)| *from == key) {
            Some((_, to)) => ParamRule::Rename(to),
            None => ParamRule::Keep,
        }
    }

    /// Applies the quirks to `body` in place; the names dropped, in the
    /// order of [`Self::dropped`]. A renamed parameter replaces one already
    /// sent under the provider's name.
    pub fn apply(&self, body: &mut Map<String, Value>) -> Vec<&'static str> {
        let dropped: Vec<&'static str> =
            self.dropped.iter().copied().filter(|name| body.remove(*name).is_some()).collect();
        for (from, to) in self.renamed {
            if let Some(value) = body.remove(*from) {
                body.insert((*to).to_string(), value);
            }
        }
        dropped
    }

    /// The [`DROPPED_PARAMS_HEADER`] value for `dropped` (`None` when empty).
    pub fn header_value(dropped: &[&str]) -> Option<String> {
        (!dropped.is_empty()).then(|| dropped.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MISTRALISH: BodyQuirks =
        BodyQuirks { renamed: &[("seed", "random_seed")], dropped: &["logprobs", "user"] };

    #[test]
    fn rules_and_application() {
        assert_eq!(MISTRALISH.rule("seed"), ParamRule::Rename("random_seed"));
        assert_eq!(MISTRALISH.rule("user"), ParamRule::Drop);
        assert_eq!(MISTRALISH.rule("messages"), ParamRule::Keep);
        assert!(BodyQuirks::NONE.is_empty() && !MISTRALISH.is_empty());
        let mut body = json!({"model": "m", "seed": 7, "user": "u", "temperature": 0.5})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let dropped = MISTRALISH.apply(&mut body);
        assert_eq!(dropped, ["user"], "only what was there");
        assert_eq!(Value::Object(body), json!({"model": "m", "random_seed": 7, "temperature": 0.5}));
        assert_eq!(BodyQuirks::header_value(&dropped).as_deref(), Some("user"));
        assert_eq!(BodyQuirks::header_value(&[]), None);
    }
}
