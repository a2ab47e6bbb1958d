//! Integration tests of the admin HTTP API: each test gets a fresh database
//! and drives the router with `oneshot`; edge pushes go to a fake edge on
//! 127.0.0.1. Tests marked `on_both_databases!` also run against Postgres
//! when `TEST_POSTGRES_URL` is set.

// Test helpers fail loudly: a panic is the assertion.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod authz;
mod channel_update;
mod common;
mod console;
mod edge;
mod hardening;
mod keys;
mod ledger;
mod oidc;
mod openapi;
mod policy;
mod routing;
mod usage;
mod usage_pull;
