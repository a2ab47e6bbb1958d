//! The web console, served by this service at `/`.
//!
//! **Design decision:** the console is a small client of this service's own
//! JSON API: one HTML shell, one stylesheet and a few plain JavaScript
//! modules under `admin/static/` (no build step, no framework), embedded in
//! the binary with `include_str!`, plus the uPlot chart library embedded at
//! build time from `node_modules` (see `build.rs`). Every page reads and
//! changes state through the same `/api/...` routes as scripts do, with the
//! session cookie and the CSRF header, so the one route table
//! ([`crate::route_table`]) and its authorization matrix test decide what a
//! console user may see and do: the console has no access rules of its own
//! to get wrong. Server-rendered templates (askama, minijinja) would have
//! duplicated every handler as an HTML twin and added a template compiler to
//! the build; htmx expects HTML fragments from the server, which this JSON
//! API does not serve.
//!
//! This module serves the files (`GET /`, `GET /static/{file}`, with a strict
//! Content-Security-Policy) and holds the API routes the console added:
//! dashboard statistics ([`stats`]), filtered request logs with a streamed
//! CSV export ([`logs`]), the channel test ([`channel_test`]) and the public
//! pricing page's data ([`public`]).

pub mod channel_test;
pub mod logs;
pub mod public;
pub mod stats;

use crate::auth::Access;
use crate::{route, AppState, Route};
use axum::extract::Path;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The console's API routes (merged into [`crate::route_table`]).
pub fn routes() -> Vec<Route> {
    use Access::{Admin, Public, User};
    vec![
        route(Method::GET, "/api/public/info", Public, public::info),
        route(Method::GET, "/api/public/pricing", Public, public::pricing),
        route(Method::GET, "/api/stats", Admin, stats::admin_stats),
        route(Method::GET, "/api/me/stats", User, stats::my_stats),
        route(Method::GET, "/api/logs", Admin, logs::admin_logs),
        route(Method::GET, "/api/me/logs", User, logs::my_logs),
        route(Method::POST, "/api/channels/{id}/test", Admin, channel_test::test_channel),
    ]
}

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/app.js"),
    },
    Asset {
        name: "pages.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/pages.js"),
    },
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/admin.js"),
    },
    Asset {
        name: "channel_settings.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/channel_settings.js"),
    },
    Asset {
        name: "i18n.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/i18n.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../static/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../static/favicon.svg"),
    },
    Asset {
        name: "uplot.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!(concat!(env!("OUT_DIR"), "/uplot.js")),
    },
    Asset {
        name: "uplot.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!(concat!(env!("OUT_DIR"), "/uplot.css")),
    },
];

const INDEX_HTML: &str = include_str!("../../static/index.html");

/// What a console page may load: only this origin's scripts and styles
/// (uPlot sets element styles from script, which `style-src` permits).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The routes serving the console's files (public: the files hold no data).
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/static/{file}", get(asset))
}

fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /`: the console's HTML shell.
async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /static/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => with_headers(a.content_type, a.body),
        None => crate::error::ApiError::not_found("no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_shell_loads_is_embedded() {
        for piece in INDEX_HTML.split("/static/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(ASSETS.iter().any(|a| a.name == name), "index.html loads /static/{name}, not embedded");
        }
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js") && a.name != "uplot.js") {
            for piece in asset.body.split("from './").skip(1) {
                let name = piece.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports ./{name}, not embedded",
                    asset.name
                );
            }
        }
    }
}
