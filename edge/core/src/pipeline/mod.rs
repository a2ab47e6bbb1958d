//! The request pipeline's rules, in the order a generation request meets them.
//! The worker sequences these over platform I/O and decides nothing itself.
//!
//! | step | module | what is decided |
//! |---|---|---|
//! | read | [`inbound`] | what the client asked, validated once (one parser per dialect; the OpenAI passthrough uses the OpenAI translator's parser in its lenient mode), how big the prompt is, what the upstream body is |
//! | route | [`route`] | which public model serves (model-name reasoning suffixes), whether the key may call it, the ordered candidates, the price |
//! | admit | [`admission`] | whether the key's account must admit the request, what is reserved against the quota and counted against TPM |
//! | forward | [`route`] | how each attempt reaches its upstream ([`route::Plan`]) and whether a failed attempt fails over ([`route::AttemptVerdict`]) |
//! | meter | [`metering`] | the usage event of a request from how it ended; the response id the client sees |
//! | count | [`counters`] | the isolate's counts of those decisions (requests, attempts, failovers, refusals, cache verdicts, stream endings) |
//!
//! Time, randomness and request ids are arguments, never read here.

pub mod account_slice;
pub mod admission;
pub mod counters;
pub mod generation;
pub mod inbound;
pub mod isolate;
pub mod metering;
pub mod route;
pub mod wait_queue;
