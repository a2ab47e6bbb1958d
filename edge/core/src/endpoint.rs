//! Which gateway endpoint a request is for, from its method and path. Kept
//! pure so every path shape (Gemini puts the model and the action in the
//! path: `/v1beta/models/{model}:streamGenerateContent`) is tested natively.

use crate::error::Dialect;
use crate::family::Family;
use crate::translate::ClientDialect;

/// A recognised endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A generation request of `family` in `client`'s dialect. Gemini carries
    /// the model (`path_model`) and streaming (`path_stream`) in the path.
    Generate { client: ClientDialect, family: Family, path_model: Option<String>, path_stream: bool },
    /// Token counting: Anthropic `/v1/messages/count_tokens`, Gemini `:countTokens`.
    CountTokens { client: ClientDialect, path_model: Option<String> },
    /// `GET /v1/models` (OpenAI and Anthropic list shapes are compatible enough
    /// for both SDKs' `models.list`).
    ListModels,
    /// `GET /v1beta/models` (Gemini's list shape).
    ListGeminiModels,
    /// `GET` or `DELETE /v1/responses/{id}`: a response stored with
    /// `store: true` ([`crate::translate::responses_state`]).
    StoredResponse { id: String, delete: bool },
    /// `GET /health`.
    Health,
    /// `/internal/*`, the admin's signed API.
    Internal,
    /// CORS preflight of a public API route (`/internal/*` and unknown
    /// paths get none).
    Preflight,
}

/// Why no endpoint matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Unknown path.
    NotFound,
    /// Known path, wrong method.
    MethodNotAllowed,
}

/// Percent-decodes the few characters SDKs escape in a model path segment.
fn decode_segment(segment: &str) -> String {
    let mut out = Vec::with_capacity(segment.len());
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = segment.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Classifies a request. `path` excludes the query string.
pub fn classify(method: &str, path: &str) -> Result<Endpoint, NoEndpoint> {
    let post = method.eq_ignore_ascii_case("POST");
    let get = method.eq_ignore_ascii_case("GET");
    if method.eq_ignore_ascii_case("OPTIONS") {
        if path.starts_with("/internal/") {
            return Err(NoEndpoint::NotFound);
        }
        // A preflight is for a route that exists, whatever method it takes.
        let known = |m: &str| classify(m, path) != Err(NoEndpoint::NotFound);
        return if known("POST") || known("GET") {
            Ok(Endpoint::Preflight)
        } else {
            Err(NoEndpoint::NotFound)
        };
    }
    if path.starts_with("/internal/") {
        return Ok(Endpoint::Internal);
    }
    let only =
        |ok: bool, endpoint: Endpoint| if ok { Ok(endpoint) } else { Err(NoEndpoint::MethodNotAllowed) };
    let generate =
        |client| Endpoint::Generate { client, family: Family::Chat, path_model: None, path_stream: false };
    let openai = |family| Endpoint::Generate {
        client: ClientDialect::OpenAiChat,
        family,
        path_model: None,
        path_stream: false,
    };
    match path.trim_end_matches('/') {
        "/v1/chat/completions" | "/chat/completions" => only(post, generate(ClientDialect::OpenAiChat)),
        "/v1/completions" | "/completions" => only(post, openai(Family::Completions)),
        "/v1/embeddings" | "/embeddings" => only(post, openai(Family::Embeddings)),
        "/v1/moderations" | "/moderations" => only(post, openai(Family::Moderations)),
        // Cohere's clients call /v2/rerank; Jina's and the OpenAI-compatible servers' /v1/rerank.
        "/v1/rerank" | "/v2/rerank" | "/rerank" => only(post, openai(Family::Rerank)),
        "/v1/responses" | "/responses" => only(post, generate(ClientDialect::OpenAiResponses)),
        "/v1/messages" => only(post, generate(ClientDialect::Anthropic)),
        "/v1/messages/count_tokens" => {
            only(post, Endpoint::CountTokens { client: ClientDialect::Anthropic, path_model: None })
        }
        "/v1/models" | "/models" => only(get, Endpoint::ListModels),
        "/v1beta/models" => only(get, Endpoint::ListGeminiModels),
        "/health" | "" => only(get || method.eq_ignore_ascii_case("HEAD"), Endpoint::Health),
        other => {
            if let Some(id) =
                other.strip_prefix("/v1/responses/").or_else(|| other.strip_prefix("/responses/"))
            {
                if id.is_empty() || id.contains('/') {
                    return Err(NoEndpoint::NotFound);
                }
                let delete = method.eq_ignore_ascii_case("DELETE");
                return only(get || delete, Endpoint::StoredResponse { id: decode_segment(id), delete });
            }
            let Some(rest) =
                other.strip_prefix("/v1beta/models/").or_else(|| other.strip_prefix("/v1/models/"))
            else {
                return Err(NoEndpoint::NotFound);
            };
            let Some((model, action)) = rest.rsplit_once(':') else { return Err(NoEndpoint::NotFound) };
            let model = decode_segment(model);
            if model.is_empty() || model.contains('/') {
                return Err(NoEndpoint::NotFound);
            }
            let client = ClientDialect::Gemini;
            let family = Family::Chat;
            match action {
                // Both embedding actions are read alike: the body's shape
                // (`requests` or `content`) says which answer it gets.
                "embedContent" | "batchEmbedContents" => only(
                    post,
                    Endpoint::Generate {
                        client,
                        family: Family::Embeddings,
                        path_model: Some(model),
                        path_stream: false,
                    },
                ),
                "generateContent" => only(
                    post,
                    Endpoint::Generate { client, family, path_model: Some(model), path_stream: false },
                ),
                "streamGenerateContent" => only(
                    post,
                    Endpoint::Generate { client, family, path_model: Some(model), path_stream: true },
                ),
                "countTokens" => only(post, Endpoint::CountTokens { client, path_model: Some(model) }),
                _ => Err(NoEndpoint::NotFound),
            }
        }
    }
}

/// The dialect errors are rendered in for `path`, whether or not the method
/// matched: Anthropic for `/v1/messages…`, Gemini for `/v1beta/…` and
/// `/v1/models/{model}:{action}`, OpenAI otherwise (and for `/internal/*`).
pub fn error_dialect(path: &str) -> Dialect {
    let path = path.trim_end_matches('/');
    if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        Dialect::Anthropic
    } else if path == "/v1beta"
        || path.starts_with("/v1beta/")
        || (path.starts_with("/v1/models/") && path.contains(':'))
    {
        Dialect::Gemini
    } else {
        Dialect::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_anthropic_and_responses_paths() {
        assert_eq!(
            classify("POST", "/v1/chat/completions"),
            Ok(Endpoint::Generate {
                client: ClientDialect::OpenAiChat,
                family: Family::Chat,
                path_model: None,
                path_stream: false
            })
        );
        for (path, family) in [
            ("/v1/completions", Family::Completions),
            ("/completions", Family::Completions),
            ("/v1/embeddings", Family::Embeddings),
            ("/embeddings/", Family::Embeddings),
            ("/v1/moderations", Family::Moderations),
            ("/v1/rerank", Family::Rerank),
            ("/v2/rerank", Family::Rerank),
        ] {
            assert!(
                matches!(classify("POST", path), Ok(Endpoint::Generate { client: ClientDialect::OpenAiChat, family: f, .. }) if f == family),
                "{path}"
            );
            assert_eq!(classify("GET", path), Err(NoEndpoint::MethodNotAllowed), "{path}");
            assert_eq!(classify("OPTIONS", path), Ok(Endpoint::Preflight), "{path}");
            assert_eq!(error_dialect(path), Dialect::OpenAi, "{path}");
        }
        assert!(matches!(
            classify("POST", "/v1/messages"),
            Ok(Endpoint::Generate { client: ClientDialect::Anthropic, .. })
        ));
        assert!(matches!(
            classify("POST", "/v1/responses"),
            Ok(Endpoint::Generate { client: ClientDialect::OpenAiResponses, .. })
        ));
        assert!(matches!(
            classify("POST", "/v1/messages/count_tokens"),
            Ok(Endpoint::CountTokens { client: ClientDialect::Anthropic, .. })
        ));
        assert_eq!(
            classify("GET", "/v1/responses/resp_1"),
            Ok(Endpoint::StoredResponse { id: "resp_1".into(), delete: false })
        );
        assert_eq!(
            classify("DELETE", "/v1/responses/resp_1"),
            Ok(Endpoint::StoredResponse { id: "resp_1".into(), delete: true })
        );
        assert_eq!(classify("POST", "/v1/responses/resp_1"), Err(NoEndpoint::MethodNotAllowed));
        assert_eq!(classify("GET", "/v1/responses/a/input_items"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("OPTIONS", "/v1/responses/resp_1"), Ok(Endpoint::Preflight));
        assert_eq!(classify("GET", "/v1/chat/completions"), Err(NoEndpoint::MethodNotAllowed));
        assert_eq!(classify("GET", "/v1/models"), Ok(Endpoint::ListModels));
        assert_eq!(classify("GET", "/nope"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("OPTIONS", "/v1/messages"), Ok(Endpoint::Preflight));
        assert_eq!(classify("OPTIONS", "/v1beta/models/m:streamGenerateContent"), Ok(Endpoint::Preflight));
        assert_eq!(classify("OPTIONS", "/v1/models"), Ok(Endpoint::Preflight));
        assert_eq!(classify("OPTIONS", "/internal/routing"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("OPTIONS", "/nope"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("PUT", "/internal/routing"), Ok(Endpoint::Internal));
    }

    #[test]
    fn gemini_paths_carry_model_and_action() {
        assert_eq!(
            classify("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Ok(Endpoint::Generate {
                client: ClientDialect::Gemini,
                family: Family::Chat,
                path_model: Some("gemini-2.5-flash".into()),
                path_stream: true
            })
        );
        assert_eq!(
            classify("POST", "/v1beta/models/my%2Dmodel:generateContent"),
            Ok(Endpoint::Generate {
                client: ClientDialect::Gemini,
                family: Family::Chat,
                path_model: Some("my-model".into()),
                path_stream: false
            })
        );
        assert!(matches!(
            classify("POST", "/v1beta/models/m:countTokens"),
            Ok(Endpoint::CountTokens { client: ClientDialect::Gemini, .. })
        ));
        for action in ["embedContent", "batchEmbedContents"] {
            assert_eq!(
                classify("POST", &format!("/v1beta/models/text-embedding-004:{action}")),
                Ok(Endpoint::Generate {
                    client: ClientDialect::Gemini,
                    family: Family::Embeddings,
                    path_model: Some("text-embedding-004".into()),
                    path_stream: false
                })
            );
            assert_eq!(
                classify("GET", &format!("/v1beta/models/m:{action}")),
                Err(NoEndpoint::MethodNotAllowed)
            );
        }
        assert_eq!(classify("POST", "/v1beta/models/m:embedText"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("POST", "/v1beta/models/:generateContent"), Err(NoEndpoint::NotFound));
        assert_eq!(classify("GET", "/v1beta/models/m:generateContent"), Err(NoEndpoint::MethodNotAllowed));
        assert_eq!(classify("GET", "/v1beta/models"), Ok(Endpoint::ListGeminiModels));
    }

    #[test]
    fn head_health_and_error_dialects_follow_the_path() {
        assert_eq!(classify("HEAD", "/health"), Ok(Endpoint::Health));
        assert_eq!(classify("HEAD", "/v1/models"), Err(NoEndpoint::MethodNotAllowed));
        assert_eq!(error_dialect("/v1/messages"), Dialect::Anthropic);
        assert_eq!(error_dialect("/v1/messages/count_tokens"), Dialect::Anthropic);
        assert_eq!(error_dialect("/v1beta/models/m:generateContent"), Dialect::Gemini);
        assert_eq!(error_dialect("/v1beta/models"), Dialect::Gemini);
        assert_eq!(error_dialect("/v1/models/m:streamGenerateContent"), Dialect::Gemini);
        assert_eq!(error_dialect("/v1/models"), Dialect::OpenAi);
        assert_eq!(error_dialect("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(error_dialect("/v1/messagesx"), Dialect::OpenAi);
    }

    #[test]
    fn bad_percent_escapes_do_not_panic() {
        for p in [
            "/v1beta/models/%:generateContent",
            "/v1beta/models/a%z:generateContent",
            "/v1beta/models/%4:generateContent",
        ] {
            let _ = classify("POST", p);
        }
    }
}
