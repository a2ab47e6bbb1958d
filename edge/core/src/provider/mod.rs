//! The provider table: every upstream edgeway can call, as typed data.
//!
//! **Key design decision:** providers are data, dialects are code. Adding an
//! OpenAI-compatible provider is one row in [`PROVIDERS`] ([`table`]); a
//! provider's quirks (how its credential is sent, where each endpoint family
//! lives, which output-limit field it takes, the parameters it names
//! differently or refuses) are fields of its row, read by the request
//! builders, never branches on a provider id or a model-name prefix. A new
//! wire dialect is a new [`ProviderDialect`] variant and a module of code.
//! A channel (operator configuration) names a provider by `id` and may
//! override its base URL; clients can never choose an upstream URL.

pub mod body_quirks;
mod table;

pub use body_quirks::BodyQuirks;
pub use table::PROVIDERS;

use crate::family::{Families, Family};

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
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
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
            Self::ApiKey => Some(("api-key".into(), key.to_string())),
            Self::None => None,
        }
    }
}

/// How an upstream URL is made from the channel's base URL and a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    /// `{base}{path}`.
    Plain,
    /// Azure OpenAI: the model is a deployment of the resource at `base`
    /// (`https://{resource}.openai.azure.com`), and every call names the API
    /// version: `{base}/openai/deployments/{deployment}{path}?api-version=…`,
    /// resource-wide calls (the models list) `{base}/openai{path}?api-version=…`.
    /// The route's upstream model is the deployment name; `api_version` is
    /// the default a channel may override.
    AzureDeployment { api_version: &'static str },
}

/// Which field carries the output-token limit in an OpenAI-format chat body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLimit {
    /// `max_tokens` (the field most compatible servers take; some refuse
    /// the other).
    MaxTokens,
    /// `max_completion_tokens` (OpenAI's current field; its reasoning
    /// models refuse `max_tokens`).
    MaxCompletionTokens,
    /// `max_completion_tokens` when the request asks for reasoning, else
    /// `max_tokens`: what an unknown OpenAI-compatible server most likely
    /// takes.
    ByRequest,
}

impl OutputLimit {
    /// The field for a request that does (or does not) ask for reasoning.
    pub fn field(self, reasoning: bool) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
            Self::ByRequest if reasoning => "max_completion_tokens",
            Self::ByRequest => "max_tokens",
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
    /// Base URL including the version prefix, without a trailing slash
    /// (empty: the channel must set one).
    pub base_url: &'static str,
    pub auth: AuthScheme,
    pub url_style: UrlStyle,
    /// Headers every request to this provider carries.
    pub static_headers: &'static [(&'static str, &'static str)],
    /// Where an endpoint family lives under the base URL when not at its
    /// OpenAI path ([`Family::openai_path`]).
    pub family_paths: &'static [(Family, &'static str)],
    /// The models list under the base URL (health checks).
    pub models_path: &'static str,
    /// Whether `stream_options.include_usage` is understood (OpenAI dialect).
    pub stream_usage_option: bool,
    /// The output-limit field of its chat body (OpenAI dialect).
    pub output_limit: OutputLimit,
    /// Top-level request parameters it names differently or refuses.
    pub quirks: BodyQuirks,
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
    /// `GET {base}{models_path}`: free, and it checks the credential.
    ModelsList,
    /// A one-token completion of the channel's first model (providers
    /// without a models list).
    Completion,
    /// Nothing to check (the built-in mock; providers with neither a
    /// models list nor chat).
    None,
}

impl Provider {
    /// The path of `family` under the base URL.
    pub fn path(&self, family: Family) -> &'static str {
        self.family_paths.iter().find(|(f, _)| *f == family).map_or(family.openai_path(), |(_, p)| p)
    }

    /// The URL of `path` (query included) at `base` (the channel's base URL,
    /// without a trailing slash) for `deployment` (the route's upstream
    /// model; `None` for resource-wide calls). `api_version` is the
    /// channel's override of the row's default, where the row has one.
    pub fn url(&self, base: &str, path: &str, deployment: Option<&str>, api_version: Option<&str>) -> String {
        match self.url_style {
            UrlStyle::Plain => format!("{base}{path}"),
            UrlStyle::AzureDeployment { api_version: default } => {
                let version = api_version.unwrap_or(default);
                let sep = if path.contains('?') { '&' } else { '?' };
                match deployment {
                    Some(d) => format!("{base}/openai/deployments/{d}{path}{sep}api-version={version}"),
                    None => format!("{base}/openai{path}{sep}api-version={version}"),
                }
            }
        }
    }

    /// Whether a route's upstream model is usable where this row puts it in
    /// the URL path (an Azure deployment name: letters, digits, `-`, `_`, `.`).
    pub fn accepts_upstream_model(&self, model: &str) -> bool {
        match self.url_style {
            UrlStyle::Plain => true,
            UrlStyle::AzureDeployment { .. } => {
                !model.is_empty()
                    && model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            }
        }
    }
}

/// Looks a provider up by id.
pub fn provider_by_id(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}
