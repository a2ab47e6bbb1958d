//! Admin authentication: `Authorization: Bearer <ADMIN_TOKEN>` on every
//! `/api/*` route except the OpenAPI document. The presented token and the
//! configured one are both hashed to SHA-256 and compared in constant time,
//! so neither their contents nor their lengths leak through timing.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a token, the form in which the admin token is kept in memory.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether an `Authorization` header value carries the expected token.
pub fn bearer_matches(header: Option<&str>, expected_digest: &[u8; 32]) -> bool {
    let Some((scheme, token)) = header.map(str::trim).and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    token_digest(token.trim()).ct_eq(expected_digest).into()
}

/// Middleware refusing requests without the admin bearer token (401 JSON).
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if bearer_matches(header, state.admin_token_digest()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_matching() {
        let expected = token_digest("0123456789abcdef");
        assert!(bearer_matches(Some("Bearer 0123456789abcdef"), &expected));
        assert!(bearer_matches(Some("bearer  0123456789abcdef "), &expected));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdeF"), &expected));
        assert!(!bearer_matches(Some("Basic 0123456789abcdef"), &expected));
        assert!(!bearer_matches(Some("0123456789abcdef"), &expected));
        assert!(!bearer_matches(Some("Bearer "), &expected));
        assert!(!bearer_matches(None, &expected));
    }
}
