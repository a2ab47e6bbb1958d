//! The provider table: every upstream edgeway can call, as typed data.
//!
//! Adding an OpenAI-compatible provider is one row in [`PROVIDERS`]; a new
//! wire dialect is a new [`ProviderDialect`] variant and a module of code. A
//! channel (operator configuration) names a provider by `id` and may override
//! its base URL; clients can never choose an upstream URL. Which endpoint
//! families a provider serves is a field of its row ([`Provider::families`]).

use crate::family::Families;
use crate::family::Family::{Chat, Completions, Embeddings, Rerank};

/// Wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderDialect {
    /// OpenAI Chat Completions (`POST {base}/chat/completions`, `GET {base}/models`).
    OpenAiChat,
    /// Anthropic Messages (`POST {base}/messages`).
    Anthropic,
    /// Google Gemini (`POST {base}/models/{model}:generateContent`).
    Gemini,
    /// The built-in deterministic mock; no network at all.
    Mock,
}

/// How the channel credential is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>`.
    XApiKey,
    /// `x-goog-api-key: <key>`.
    XGoogApiKey,
    /// No credential (local servers, the mock).
    None,
}

impl AuthScheme {
    /// The header that carries `key` in this scheme.
    pub fn header(self, key: &str) -> Option<(String, String)> {
        match self {
            Self::Bearer => Some(("authorization".into(), format!("Bearer {key}"))),
            Self::XApiKey => Some(("x-api-key".into(), key.to_string())),
            Self::XGoogApiKey => Some(("x-goog-api-key".into(), key.to_string())),
            Self::None => None,
        }
    }
}

/// One row of the provider table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    /// Stable id used in channel configuration.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    pub dialect: ProviderDialect,
    /// Base URL including the version prefix, without a trailing slash.
    pub base_url: &'static str,
    pub auth: AuthScheme,
    /// Headers every request to this provider carries.
    pub static_headers: &'static [(&'static str, &'static str)],
    /// Whether `stream_options.include_usage` is understood (OpenAI dialect).
    pub stream_usage_option: bool,
    /// The endpoint families it serves (from its API reference); a channel
    /// of this provider is a candidate only for these.
    pub families: Families,
    /// How the cron's health check asks whether a channel of this provider
    /// is reachable with its credential.
    pub health_check: HealthCheck,
}

/// The tiny request a health check sends ([`crate::channel_health::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET {base}/models`: free, and it checks the credential.
    ModelsList,
    /// A one-token completion of the channel's first model (providers
    /// without a models list).
    Completion,
    /// Nothing to check (the built-in mock).
    None,
}

impl Provider {
    /// The same row serving `families`.
    const fn serving(self, families: Families) -> Self {
        Self { families, ..self }
    }

    /// The same row, checked with `health_check`.
    const fn checked_by(self, health_check: HealthCheck) -> Self {
        Self { health_check, ..self }
    }
}

const fn openai_compatible(id: &'static str, name: &'static str, base_url: &'static str) -> Provider {
    Provider {
        id,
        name,
        dialect: ProviderDialect::OpenAiChat,
        base_url,
        auth: AuthScheme::Bearer,
        static_headers: &[],
        stream_usage_option: true,
        families: Families::CHAT,
        health_check: HealthCheck::ModelsList,
    }
}

/// Every provider edgeway knows.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        id: "mock",
        name: "Built-in mock",
        dialect: ProviderDialect::Mock,
        base_url: "mock://edgeway",
        auth: AuthScheme::None,
        static_headers: &[],
        stream_usage_option: true,
        families: Families::ALL,
        health_check: HealthCheck::None,
    },
    openai_compatible("openai", "OpenAI", "https://api.openai.com/v1").serving(Families::OPENAI),
    Provider {
        id: "anthropic",
        name: "Anthropic",
        dialect: ProviderDialect::Anthropic,
        base_url: "https://api.anthropic.com/v1",
        auth: AuthScheme::XApiKey,
        static_headers: &[("anthropic-version", "2023-06-01")],
        stream_usage_option: false,
        families: Families::CHAT,
        health_check: HealthCheck::ModelsList,
    },
    Provider {
        id: "gemini",
        name: "Google AI Studio (Gemini)",
        dialect: ProviderDialect::Gemini,
        base_url: "https://generativelanguage.googleapis.com/v1beta",
        auth: AuthScheme::XGoogApiKey,
        static_headers: &[],
        stream_usage_option: false,
        families: Families::CHAT,
        health_check: HealthCheck::ModelsList,
    },
    openai_compatible("deepseek", "DeepSeek", "https://api.deepseek.com/v1"),
    openai_compatible("groq", "Groq", "https://api.groq.com/openai/v1"),
    openai_compatible("mistral", "Mistral AI", "https://api.mistral.ai/v1")
        .serving(Families::of(&[Chat, Embeddings])),
    openai_compatible("openrouter", "OpenRouter", "https://openrouter.ai/api/v1")
        .serving(Families::of(&[Chat, Completions])),
    openai_compatible("together", "Together AI", "https://api.together.xyz/v1").serving(Families::of(&[
        Chat,
        Completions,
        Embeddings,
        Rerank,
    ])),
    openai_compatible("fireworks", "Fireworks AI", "https://api.fireworks.ai/inference/v1")
        .serving(Families::of(&[Chat, Completions, Embeddings])),
    openai_compatible("xai", "xAI", "https://api.x.ai/v1"),
    // No models list in its API reference.
    openai_compatible("perplexity", "Perplexity", "https://api.perplexity.ai")
        .checked_by(HealthCheck::Completion),
    openai_compatible("moonshot", "Moonshot AI", "https://api.moonshot.ai/v1"),
    openai_compatible(
        "dashscope",
        "Alibaba DashScope (compatible mode)",
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    )
    .serving(Families::of(&[Chat, Embeddings])),
    openai_compatible("siliconflow", "SiliconFlow", "https://api.siliconflow.cn/v1")
        .serving(Families::of(&[Chat, Embeddings, Rerank])),
    openai_compatible("cerebras", "Cerebras", "https://api.cerebras.ai/v1"),
    // Self-hosted servers: the channel must set `base_url`.
    Provider {
        id: "openai-compatible",
        name: "Any OpenAI-compatible server",
        dialect: ProviderDialect::OpenAiChat,
        base_url: "",
        auth: AuthScheme::Bearer,
        static_headers: &[],
        stream_usage_option: true,
        // The operator knows what their server serves.
        families: Families::ALL,
        health_check: HealthCheck::ModelsList,
    },
    Provider {
        id: "ollama",
        name: "Ollama",
        dialect: ProviderDialect::OpenAiChat,
        base_url: "http://127.0.0.1:11434/v1",
        auth: AuthScheme::None,
        static_headers: &[],
        stream_usage_option: true,
        families: Families::of(&[Chat, Completions, Embeddings]),
        health_check: HealthCheck::ModelsList,
    },
    Provider {
        id: "vllm",
        name: "vLLM",
        dialect: ProviderDialect::OpenAiChat,
        base_url: "",
        auth: AuthScheme::Bearer,
        static_headers: &[],
        stream_usage_option: true,
        families: Families::of(&[Chat, Completions, Embeddings, Rerank]),
        health_check: HealthCheck::ModelsList,
    },
];

/// Looks a provider up by id.
pub fn provider_by_id(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::Family;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_urls_well_formed() {
        let mut seen = HashSet::new();
        for p in PROVIDERS {
            assert!(seen.insert(p.id), "duplicate provider id {}", p.id);
            assert!(!p.base_url.ends_with('/'), "{} base_url ends with /", p.id);
            if p.dialect != ProviderDialect::Mock && !p.base_url.is_empty() {
                assert!(
                    p.base_url.starts_with("https://") || p.base_url.starts_with("http://127.0.0.1"),
                    "{}",
                    p.id
                );
            }
        }
    }

    #[test]
    fn every_provider_serves_chat_and_families_follow_the_dialect() {
        for p in PROVIDERS {
            assert!(p.families.contains(Family::Chat), "{}", p.id);
            if !matches!(p.dialect, ProviderDialect::OpenAiChat | ProviderDialect::Mock) {
                // Only OpenAI-format upstreams take the other families' bodies as they are.
                assert_eq!(p.families, Families::CHAT, "{}", p.id);
            }
        }
        assert_eq!(provider_by_id("mock").map(|p| p.families), Some(Families::ALL));
        assert!(provider_by_id("groq").is_some_and(|p| !p.families.contains(Family::Embeddings)));
    }

    #[test]
    fn lookup() {
        assert_eq!(provider_by_id("groq").map(|p| p.dialect), Some(ProviderDialect::OpenAiChat));
        assert_eq!(provider_by_id("anthropic").map(|p| p.auth), Some(AuthScheme::XApiKey));
        assert!(provider_by_id("nope").is_none());
    }
}
