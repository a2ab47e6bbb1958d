//! Bounds on everything a client or upstream can make the gateway hold in
//! memory or wait for. Each is a default; the worker may lower or raise them
//! from configuration.

/// Largest request body accepted (bytes). Larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Longest single SSE line accepted from an upstream (bytes).
pub const MAX_SSE_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Time allowed for an upstream to send its response headers (ms).
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 120_000;

/// Time a streaming upstream has from its response headers to the first
/// content (text, reasoning, a tool call), ms; a channel may set its own.
/// Until then the request fails over invisibly.
pub const DEFAULT_FIRST_CONTENT_TIMEOUT_MS: u64 = 120_000;
/// Longest gap between chunks once content flows, ms; past it the stream
/// ends with an in-stream timeout error, billed for what was received.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Interval of SSE keepalives while a streaming client waits for its first
/// content, ms. The response head (`200 text/event-stream`) goes out with
/// the first one, so a long wait never meets a proxy's or Cloudflare's
/// first-byte limit, while quick failures keep their status codes.
pub const DEFAULT_KEEPALIVE_MS: u64 = 5_000;
/// Largest non-streaming upstream response body read (bytes).
pub const MAX_UPSTREAM_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How long a key record is trusted from the per-isolate cache (ms).
pub const KEY_CACHE_TTL_MS: u64 = 10_000;

/// How long the routing table is trusted from the per-isolate cache (ms).
pub const ROUTING_CACHE_TTL_MS: u64 = 5_000;

/// Output tokens assumed (and, for keys with a quota, enforced upstream as
/// `max_tokens`) when a request sets no output limit.
pub const DEFAULT_RESERVED_OUTPUT_TOKENS: u64 = 4096;

/// How long the gateway keeps reading an upstream stream after the client
/// disconnected, to record the provider's own usage (ms). Stays inside the
/// platform's `waitUntil` allowance (about 30 s).
pub const MAX_DRAIN_AFTER_DISCONNECT_MS: i64 = 20_000;
