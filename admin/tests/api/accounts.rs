//! Users, logins and sessions: password login, the session cookie's
//! attributes, session expiry, CSRF refusal, brute-force throttling per
//! account and per address, sign-up modes and invitation rewards.

use crate::common::{DbKind, Full, Options, TestApp};
use crate::on_both_databases;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use edgeway_admin::config::{AccountsConfig, SignupMode};
use serde_json::{json, Value};
use std::net::SocketAddr;

fn login_request(username: &str, password: &str, from: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(json!({"username": username, "password": password}).to_string()))
        .unwrap();
    let addr: SocketAddr = format!("{from}:40000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

fn cookie_of(full: &Full) -> String {
    let set = full.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

fn with_cookie(
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path).header(header::COOKIE, cookie);
    if let Some(csrf) = csrf {
        b = b.header("x-csrf-token", csrf);
    }
    match body {
        Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn password_login_sessions_and_csrf(db: DbKind) {
    let accounts =
        AccountsConfig { public_url: Some("https://admin.example.com".into()), ..AccountsConfig::default() };
    let app = TestApp::new(db, Options { accounts: Some(accounts), ..Options::default() }).await;
    let alice = app.user_with("alice", json!({"password": "alice-password-1"})).await;

    let wrong = app.send_full(login_request("alice", "not-her-password", "192.0.2.1")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let unknown = app.send_full(login_request("nobody", "alice-password-1", "192.0.2.1")).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "unknown users look like wrong passwords");

    let ok = app.send_full(login_request("ALICE", "alice-password-1", "192.0.2.1")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let set_cookie = ok.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attr), "cookie lacks {attr}: {set_cookie}");
    }
    assert_eq!(ok.body["user"]["id"], alice.id.as_str());
    assert!(ok.body["user"].get("password_hash").is_none(), "the hash is never shown");
    let csrf = ok.body["csrf_token"].as_str().unwrap().to_string();
    let cookie = cookie_of(&ok);

    // The cookie authenticates reads.
    let me = app.send_full(with_cookie(Method::GET, "/api/me", &cookie, None, None)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], "alice");
    // Unsafe methods need the CSRF token: absent or wrong is refused, nothing changes.
    let body = json!({"name": "from-browser"});
    for bad in [None, Some("not-the-token")] {
        let r =
            app.send_full(with_cookie(Method::POST, "/api/me/keys", &cookie, bad, Some(body.clone()))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("CSRF"));
    }
    let (_, keys) = app.call_as(Method::GET, "/api/me/keys", None, Some(&alice.token)).await;
    assert_eq!(keys["data"], json!([]), "the refused requests created nothing");
    let r = app.send_full(with_cookie(Method::POST, "/api/me/keys", &cookie, Some(&csrf), Some(body))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // A session is a user's, not an admin's.
    let r = app.send_full(with_cookie(Method::GET, "/api/users", &cookie, None, None)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let s = app.send_full(with_cookie(Method::GET, "/api/auth/session", &cookie, None, None)).await;
    assert_eq!(
        (s.body["via"].as_str(), s.body["csrf_token"].as_str()),
        (Some("session"), Some(csrf.as_str()))
    );

    // The database holds the session's digest, never the cookie.
    let value = cookie.split_once('=').unwrap().1.to_string();
    let dump = app.dump().await;
    assert!(!dump.contains(&value), "the session cookie must not be stored");
    assert!(dump.contains(&edgeway_admin::auth::hex_digest(&value)));

    // Expiry: a session past its expiry is refused.
    edgeway_admin::db::sessions::set_session_expiry(
        app.state.db(),
        &edgeway_admin::auth::hex_digest(&value),
        edgeway_admin::now_secs() - 1,
    )
    .await
    .unwrap();
    let r = app.send_full(with_cookie(Method::GET, "/api/me", &cookie, None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "an expired session is refused");

    // Logout ends the session.
    let ok = app.send_full(login_request("alice", "alice-password-1", "192.0.2.1")).await;
    let (cookie, csrf) = (cookie_of(&ok), ok.body["csrf_token"].as_str().unwrap().to_string());
    let r = app.send_full(with_cookie(Method::POST, "/api/auth/logout", &cookie, Some(&csrf), None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.send_full(with_cookie(Method::GET, "/api/me", &cookie, None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a logged-out session is refused");

    // A password change ends every session.
    let ok = app.send_full(login_request("alice", "alice-password-1", "192.0.2.1")).await;
    let cookie = cookie_of(&ok);
    let (status, _) = app
        .call_as(Method::PATCH, "/api/me", Some(json!({"password": "alice-password-2"})), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = app.send_full(with_cookie(Method::GET, "/api/me", &cookie, None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.send_full(login_request("alice", "alice-password-2", "192.0.2.1")).await.status,
        StatusCode::OK
    );
}
on_both_databases!(password_login_sessions_and_csrf);

async fn failed_logins_are_throttled_per_account_and_per_address(db: DbKind) {
    let app = TestApp::new(db, Options::default()).await;
    app.user_with("carol", json!({"password": "carol-password-1"})).await;
    app.user_with("dave", json!({"password": "dave-password-1"})).await;
    // Per account: 5 failures (from different addresses), then even the right password is refused.
    for i in 0..edgeway_admin::login::MAX_FAILURES_PER_ACCOUNT {
        let r = app.send_full(login_request("carol", "wrong-password", &format!("198.51.100.{i}"))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = app.send_full(login_request("carol", "carol-password-1", "198.51.100.200")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    let retry: u64 = r.headers.get(header::RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    // Another account is unaffected.
    assert_eq!(
        app.send_full(login_request("dave", "dave-password-1", "198.51.100.201")).await.status,
        StatusCode::OK
    );

    // Per address: 20 failures from one address over many usernames lock that address out.
    for i in 0..edgeway_admin::login::MAX_FAILURES_PER_ADDRESS {
        let r = app.send_full(login_request(&format!("guess{i}"), "x-password", "203.0.113.9")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = app.send_full(login_request("dave", "dave-password-1", "203.0.113.9")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "the address is throttled");
    assert_eq!(
        app.send_full(login_request("dave", "dave-password-1", "203.0.113.10")).await.status,
        StatusCode::OK
    );
}
on_both_databases!(failed_logins_are_throttled_per_account_and_per_address);

async fn signup(app: &TestApp, username: &str, invite: Option<&str>) -> Full {
    let mut body = json!({"username": username, "password": "signup-password"});
    if let Some(code) = invite {
        body["invite_code"] = code.into();
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/auth/signup")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send_full(request).await
}

#[tokio::test]
async fn signup_modes_and_invitation_rewards() {
    let closed = TestApp::sqlite().await;
    let r = signup(&closed, "eve", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "closed by default: {}", r.text);

    let open = TestApp::new(
        DbKind::Sqlite,
        Options {
            accounts: Some(AccountsConfig { signup_mode: SignupMode::Open, ..AccountsConfig::default() }),
            ..Options::default()
        },
    )
    .await;
    let r = signup(&open, "eve", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.headers.get(header::SET_COOKIE).is_some(), "signed in at once");
    assert_eq!(
        (r.body["user"]["role"].as_str(), r.body["user"]["group"].as_str()),
        (Some("user"), Some("default"))
    );
    assert_eq!(signup(&open, "eve", None).await.status, StatusCode::CONFLICT);

    let invite = TestApp::new(
        DbKind::Sqlite,
        Options {
            accounts: Some(AccountsConfig {
                signup_mode: SignupMode::Invite,
                inviter_reward_micros: 3_000_000,
                invitee_reward_micros: 1_000_000,
                ..AccountsConfig::default()
            }),
            ..Options::default()
        },
    )
    .await;
    let inviter = invite.user("frank", "user").await;
    let (_, code) = invite.call_as(Method::GET, "/api/me/invitation", None, Some(&inviter.token)).await;
    let code = code["code"].as_str().unwrap().to_string();
    let (_, again) = invite.call_as(Method::GET, "/api/me/invitation", None, Some(&inviter.token)).await;
    assert_eq!(again["code"], code.as_str(), "one code per user");
    assert_eq!(signup(&invite, "gina", None).await.status, StatusCode::FORBIDDEN, "a code is required");
    assert_eq!(signup(&invite, "gina", Some("inv-nope")).await.status, StatusCode::BAD_REQUEST);
    let r = signup(&invite, "gina", Some(&code)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user"]["balance"]["balance_micros"], 1_000_000, "the invitee is credited");
    assert_eq!(r.body["user"]["invited_by"], inviter.id.as_str());
    let (_, ledger) = invite.call_as(Method::GET, "/api/me/ledger", None, Some(&inviter.token)).await;
    assert_eq!(ledger["balance_micros"], 3_000_000, "the inviter is credited");
    assert_eq!(ledger["data"][0]["kind"], "invite_reward");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_throttled() {
    let accounts = AccountsConfig { trust_forwarded_for: true, ..AccountsConfig::default() };
    let app = TestApp::new(DbKind::Sqlite, Options { accounts: Some(accounts), ..Options::default() }).await;
    app.user_with("erin", json!({"password": "erin-password-1"})).await;
    let via_proxy = |forwarded: &str, user: &str, password: &str| {
        let mut r = login_request(user, password, "10.0.0.1"); // the proxy
        r.headers_mut().insert("x-forwarded-for", forwarded.parse().unwrap());
        r
    };
    for i in 0..edgeway_admin::login::MAX_FAILURES_PER_ADDRESS {
        // The client forges the first entry; the proxy appends the real one.
        let r = app
            .send_full(via_proxy(&format!("1.2.3.{i}, 198.51.100.7"), &format!("g{i}"), "x-password"))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = app.send_full(via_proxy("9.9.9.9, 198.51.100.7", "erin", "erin-password-1")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "the real client address is throttled");
    let r = app.send_full(via_proxy("198.51.100.8", "erin", "erin-password-1")).await;
    assert_eq!(r.status, StatusCode::OK, "other clients behind the same proxy are not");
}
