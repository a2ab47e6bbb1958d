//! The cron's round of health checks: the checks
//! `edgeway_core::channel_health::check::plan` lists are sent at once, each
//! with a time limit, and each channel's results go to its health record
//! ([`crate::channel_health_object`]), which applies them.

use crate::bindings;
use crate::channel_health_object;
use crate::runtime::now_ms;
use edgeway_core::channel_health::check::{self, CheckRequest, CheckResult, CHECK_TIMEOUT_MS};
use futures_util::future::{join_all, select, Either};
use std::collections::BTreeMap;
use std::time::Duration;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Result};

/// Most of an error body read to classify the failure.
const ERROR_BODY_BYTES: usize = 4096;

/// One round: every check, then every channel's record told.
pub async fn run(env: &Env) -> Result<()> {
    let table = crate::isolate::routing_table(env)
        .await
        .map_err(|e| worker::Error::RustError(format!("routing table: {e}")))?;
    let checks = check::plan(table.config(), &|name| bindings::text(env, name));
    let results = join_all(checks.iter().map(perform)).await;
    let mut by_channel: BTreeMap<&str, Vec<CheckResult>> = BTreeMap::new();
    for (request, result) in checks.iter().zip(results) {
        if let Some(failure) = &result.failure {
            worker::console_warn!(
                "health check of channel {} (credential {:?}): {} ({})",
                request.channel,
                request.credential,
                failure.kind(),
                result.status
            );
        }
        by_channel.entry(request.channel.as_str()).or_default().push(result);
    }
    let told = join_all(by_channel.iter().map(|(channel, results)| async move {
        (channel, channel_health_object::record_checks(env, channel, results).await)
    }))
    .await;
    for (channel, outcome) in told {
        if let Err(e) = outcome {
            worker::console_error!("health check results of channel {channel} not recorded: {e}");
        }
    }
    Ok(())
}

/// Sends one check and classifies its answer.
async fn perform(request: &CheckRequest) -> CheckResult {
    let started = now_ms();
    let latency = || u64::try_from(now_ms() - started).unwrap_or(0);
    let controller = AbortController::default();
    let signal = controller.signal();
    let sent = async move {
        let outbound = build(request)?;
        Fetch::Request(outbound).send_with_signal(&signal).await
    };
    let timeout = Delay::from(Duration::from_millis(CHECK_TIMEOUT_MS));
    let answer = match select(Box::pin(sent), Box::pin(timeout)).await {
        Either::Left((answer, _)) => answer,
        Either::Right(_) => {
            controller.abort();
            return CheckResult::of_answer(request.credential, 0, None, b"", true, latency(), now_ms());
        }
    };
    match answer {
        Ok(mut response) => {
            let status = response.status_code();
            let latency = latency();
            let retry_after = response.headers().get("retry-after").ok().flatten();
            let body = if (200..300).contains(&status) {
                Vec::new()
            } else {
                let mut bytes = response.bytes().await.unwrap_or_default();
                bytes.truncate(ERROR_BODY_BYTES);
                bytes
            };
            CheckResult::of_answer(
                request.credential,
                status,
                retry_after.as_deref(),
                &body,
                false,
                latency,
                now_ms(),
            )
        }
        Err(_) => CheckResult::of_answer(request.credential, 0, None, b"", false, latency(), now_ms()),
    }
}

fn build(request: &CheckRequest) -> Result<Request> {
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(if request.method == "POST" { Method::Post } else { Method::Get }).with_headers(headers);
    if let Some(body) = &request.body {
        init.with_body(Some(body.as_str().into()));
    }
    Request::new_with_init(&request.url, &init)
}
