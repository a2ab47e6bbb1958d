//! The rows of the provider table, from each provider's API reference.
//!
//! Most rows are [`openai_compatible`] with a few fields changed by the
//! `const` builders below; a provider's documented quirks are written as
//! those fields, with the reason next to the row.

use super::{AuthScheme, BodyQuirks, HealthCheck, OutputLimit, Provider, ProviderDialect, UrlStyle};
use crate::family::Families;
use crate::family::Family::{Chat, Completions, Embeddings, Rerank};

impl Provider {
    /// The same row serving `families`.
    const fn serving(self, families: Families) -> Self {
        Self { families, ..self }
    }

    /// The same row, checked with `health_check`.
    const fn checked_by(self, health_check: HealthCheck) -> Self {
        Self { health_check, ..self }
    }

    /// The same row with its families at `family_paths` and its models list
    /// at `models_path`.
    const fn at_paths(
        self,
        family_paths: &'static [(crate::family::Family, &'static str)],
        models_path: &'static str,
    ) -> Self {
        Self { family_paths, models_path, ..self }
    }

    /// The same row with `output_limit`.
    const fn limited_by(self, output_limit: OutputLimit) -> Self {
        Self { output_limit, ..self }
    }

    /// The same row with `quirks`.
    const fn with_quirks(self, quirks: BodyQuirks) -> Self {
        Self { quirks, ..self }
    }

    /// The same row, never sent `stream_options` by the gateway (the
    /// provider refuses it, or reports usage without it).
    const fn without_stream_usage_option(self) -> Self {
        Self { stream_usage_option: false, ..self }
    }
}

const fn openai_compatible(id: &'static str, name: &'static str, base_url: &'static str) -> Provider {
    Provider {
        id,
        name,
        dialect: ProviderDialect::OpenAiChat,
        base_url,
        auth: AuthScheme::Bearer,
        url_style: UrlStyle::Plain,
        static_headers: &[],
        family_paths: &[],
        models_path: "/models",
        stream_usage_option: true,
        output_limit: OutputLimit::ByRequest,
        quirks: BodyQuirks::NONE,
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
        families: Families::ALL,
        health_check: HealthCheck::None,
        ..openai_compatible("", "", "")
    },
    // Reasoning models refuse `max_tokens`; every model takes `max_completion_tokens`.
    openai_compatible("openai", "OpenAI", "https://api.openai.com/v1")
        .serving(Families::OPENAI)
        .limited_by(OutputLimit::MaxCompletionTokens),
    // The channel's base URL is the resource (`https://{resource}.openai.azure.com`)
    // and a route's upstream model is the deployment name.
    Provider {
        id: "azure",
        name: "Azure OpenAI",
        auth: AuthScheme::ApiKey,
        url_style: UrlStyle::AzureDeployment { api_version: "2024-10-21" },
        ..openai_compatible("", "", "")
    }
    .serving(Families::of(&[Chat, Completions, Embeddings]))
    .limited_by(OutputLimit::MaxCompletionTokens),
    Provider {
        id: "anthropic",
        name: "Anthropic",
        dialect: ProviderDialect::Anthropic,
        base_url: "https://api.anthropic.com/v1",
        auth: AuthScheme::XApiKey,
        static_headers: &[("anthropic-version", "2023-06-01")],
        stream_usage_option: false,
        ..openai_compatible("", "", "")
    },
    Provider {
        id: "gemini",
        name: "Google AI Studio (Gemini)",
        dialect: ProviderDialect::Gemini,
        base_url: "https://generativelanguage.googleapis.com/v1beta",
        auth: AuthScheme::XGoogApiKey,
        stream_usage_option: false,
        // Embeddings through `:batchEmbedContents` (crate::family::embeddings).
        families: Families::of(&[Chat, Embeddings]),
        ..openai_compatible("", "", "")
    },
    openai_compatible("deepseek", "DeepSeek", "https://api.deepseek.com/v1")
        .limited_by(OutputLimit::MaxTokens),
    // "logprobs, logit_bias, top_logprobs … will result in a 400 error" (its OpenAI compatibility page).
    openai_compatible("groq", "Groq", "https://api.groq.com/openai/v1")
        .with_quirks(BodyQuirks { renamed: &[], dropped: &["logprobs", "logit_bias", "top_logprobs"] }),
    // Its schema refuses any other field with a 422 (`extra_forbidden`),
    // `stream_options` and `max_completion_tokens` included; the seed is
    // `random_seed`; stream usage comes without being asked for.
    openai_compatible("mistral", "Mistral AI", "https://api.mistral.ai/v1")
        .serving(Families::of(&[Chat, Embeddings]))
        .without_stream_usage_option()
        .limited_by(OutputLimit::MaxTokens)
        .with_quirks(BodyQuirks {
            renamed: &[("seed", "random_seed")],
            dropped: &[
                "stream_options",
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "user",
                "store",
                "metadata",
                "service_tier",
                "modalities",
                "audio",
                "web_search_options",
                "reasoning_effort",
            ],
        }),
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
    openai_compatible("cerebras", "Cerebras", "https://api.cerebras.ai/v1"),
    // Chat and embeddings through its OpenAI compatibility API, rerank at its own v2 API.
    openai_compatible("cohere", "Cohere", "https://api.cohere.com")
        .serving(Families::of(&[Chat, Embeddings, Rerank]))
        .at_paths(
            &[
                (Chat, "/compatibility/v1/chat/completions"),
                (Embeddings, "/compatibility/v1/embeddings"),
                (Rerank, "/v2/rerank"),
            ],
            "/v1/models",
        )
        .without_stream_usage_option()
        .limited_by(OutputLimit::MaxTokens),
    // Embeddings and rerank only; no models list to check.
    openai_compatible("jina", "Jina AI", "https://api.jina.ai/v1")
        .serving(Families::of(&[Embeddings, Rerank]))
        .checked_by(HealthCheck::None),
    // Embeddings take `output_dimension` for OpenAI's `dimensions`.
    openai_compatible("voyage", "Voyage AI", "https://api.voyageai.com/v1")
        .serving(Families::of(&[Embeddings]))
        .checked_by(HealthCheck::None)
        .with_quirks(BodyQuirks { renamed: &[("dimensions", "output_dimension")], dropped: &[] }),
    // Chinese providers (mainland endpoints).
    openai_compatible("moonshot", "Moonshot AI (Kimi)", "https://api.moonshot.ai/v1"),
    openai_compatible(
        "dashscope",
        "Alibaba DashScope / Qwen (compatible mode)",
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    )
    .serving(Families::of(&[Chat, Embeddings])),
    openai_compatible("siliconflow", "SiliconFlow", "https://api.siliconflow.cn/v1")
        .serving(Families::of(&[Chat, Embeddings, Rerank])),
    // Stream usage arrives in the last chunk unasked; no models list.
    openai_compatible("zhipu", "Zhipu AI (GLM, BigModel)", "https://open.bigmodel.cn/api/paas/v4")
        .serving(Families::of(&[Chat, Embeddings]))
        .without_stream_usage_option()
        .limited_by(OutputLimit::MaxTokens)
        .checked_by(HealthCheck::Completion),
    // A route's upstream model may be an inference endpoint id (`ep-…`) or a model name.
    openai_compatible("volcengine", "Volcengine Ark (Doubao)", "https://ark.cn-beijing.volces.com/api/v3")
        .serving(Families::of(&[Chat, Embeddings]))
        .checked_by(HealthCheck::Completion),
    openai_compatible("qianfan", "Baidu Qianfan (ERNIE)", "https://qianfan.baidubce.com/v2")
        .serving(Families::of(&[Chat, Embeddings]))
        .checked_by(HealthCheck::Completion),
    openai_compatible("hunyuan", "Tencent Hunyuan", "https://api.hunyuan.cloud.tencent.com/v1")
        .serving(Families::of(&[Chat, Embeddings]))
        .without_stream_usage_option()
        .checked_by(HealthCheck::Completion),
    openai_compatible("minimax", "MiniMax", "https://api.minimax.io/v1")
        .without_stream_usage_option()
        .checked_by(HealthCheck::Completion),
    openai_compatible("baichuan", "Baichuan AI", "https://api.baichuan-ai.com/v1")
        .serving(Families::of(&[Chat, Embeddings]))
        .without_stream_usage_option()
        .checked_by(HealthCheck::Completion),
    openai_compatible("lingyiwanwu", "01.AI (Yi)", "https://api.lingyiwanwu.com/v1"),
    openai_compatible("stepfun", "StepFun", "https://api.stepfun.com/v1"),
    // Self-hosted servers: the channel must set `base_url`; the operator
    // knows what their server serves.
    openai_compatible("openai-compatible", "Any OpenAI-compatible server", "").serving(Families::ALL),
    Provider { auth: AuthScheme::None, ..openai_compatible("ollama", "Ollama", "http://127.0.0.1:11434/v1") }
        .serving(Families::of(&[Chat, Completions, Embeddings])),
    openai_compatible("vllm", "vLLM", "").serving(Families::of(&[Chat, Completions, Embeddings, Rerank])),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::Family::{self, Moderations};
    use crate::provider::provider_by_id;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_urls_parse() {
        let mut seen = HashSet::new();
        for p in PROVIDERS {
            assert!(!p.id.is_empty() && !p.name.is_empty(), "{p:?}");
            assert!(seen.insert(p.id), "duplicate provider id {}", p.id);
            assert!(!p.base_url.ends_with('/'), "{} base_url ends with /", p.id);
            if p.dialect != ProviderDialect::Mock && !p.base_url.is_empty() {
                assert!(url::Url::parse(p.base_url).is_ok(), "{}", p.id);
                assert!(
                    p.base_url.starts_with("https://") || p.base_url.starts_with("http://127.0.0.1"),
                    "{}",
                    p.id
                );
            }
            assert!(p.models_path.starts_with('/'), "{}", p.id);
            for (family, path) in p.family_paths {
                assert!(path.starts_with('/'), "{} {path}", p.id);
                assert!(p.families.contains(*family), "{}: a path for a family it does not serve", p.id);
            }
        }
    }

    #[test]
    fn every_family_a_row_claims_has_a_builder() {
        for p in PROVIDERS {
            assert!(p.families.iter().next().is_some(), "{} serves nothing", p.id);
            // Only OpenAI-format upstreams take the other families' bodies as
            // they are; other dialects serve what has a translator.
            let translated = match p.dialect {
                ProviderDialect::OpenAiChat | ProviderDialect::Mock => Families::ALL,
                ProviderDialect::Gemini => Families::of(&[Chat, Embeddings]),
                ProviderDialect::Anthropic => Families::CHAT,
            };
            assert!(p.families.iter().all(|f| translated.contains(f)), "{}", p.id);
            if p.health_check == HealthCheck::Completion {
                assert!(p.families.contains(Chat), "{}: a completion check needs chat", p.id);
            }
            for (from, to) in p.quirks.renamed {
                assert!(!p.quirks.dropped.contains(from) && from != to, "{}", p.id);
            }
        }
        assert_eq!(provider_by_id("mock").map(|p| p.families), Some(Families::ALL));
        assert!(provider_by_id("groq").is_some_and(|p| !p.families.contains(Family::Embeddings)));
        assert!(provider_by_id("openai").is_some_and(|p| p.families.contains(Moderations)));
    }

    #[test]
    fn paths_and_urls() {
        let cohere = provider_by_id("cohere").unwrap_or(&PROVIDERS[0]);
        assert_eq!(cohere.path(Rerank), "/v2/rerank");
        assert_eq!(
            cohere.url(cohere.base_url, cohere.path(Chat), Some("command-a"), None),
            "https://api.cohere.com/compatibility/v1/chat/completions"
        );
        let openai = provider_by_id("openai").unwrap_or(&PROVIDERS[0]);
        assert_eq!(openai.path(Embeddings), "/embeddings");
        assert_eq!(
            openai.url(openai.base_url, "/chat/completions", Some("gpt"), Some("x")),
            "https://api.openai.com/v1/chat/completions"
        );
        let azure = provider_by_id("azure").unwrap_or(&PROVIDERS[0]);
        let base = "https://res.openai.azure.com";
        assert_eq!(
            azure.url(base, azure.path(Chat), Some("gpt-4o-prod"), None),
            "https://res.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            azure.url(base, azure.models_path, None, Some("2025-04-01-preview")),
            "https://res.openai.azure.com/openai/models?api-version=2025-04-01-preview"
        );
        assert_eq!(
            azure.url(base, "/x?a=1", Some("d"), None),
            "https://res.openai.azure.com/openai/deployments/d/x?a=1&api-version=2024-10-21"
        );
        assert!(azure.accepts_upstream_model("gpt-4o.prod_2"));
        assert!(
            !azure.accepts_upstream_model("../admin")
                && !azure.accepts_upstream_model("a b")
                && !azure.accepts_upstream_model("")
        );
        assert!(openai.accepts_upstream_model("any/thing"));
    }

    #[test]
    fn lookup_and_auth() {
        assert_eq!(provider_by_id("groq").map(|p| p.dialect), Some(ProviderDialect::OpenAiChat));
        assert_eq!(provider_by_id("anthropic").map(|p| p.auth), Some(AuthScheme::XApiKey));
        assert_eq!(
            provider_by_id("azure").and_then(|p| p.auth.header("k")),
            Some(("api-key".to_string(), "k".to_string()))
        );
        assert!(provider_by_id("nope").is_none());
        assert_eq!(OutputLimit::ByRequest.field(true), "max_completion_tokens");
        assert_eq!(OutputLimit::ByRequest.field(false), "max_tokens");
        assert_eq!(OutputLimit::MaxTokens.field(true), "max_tokens");
        assert_eq!(OutputLimit::MaxCompletionTokens.field(false), "max_completion_tokens");
    }
}
