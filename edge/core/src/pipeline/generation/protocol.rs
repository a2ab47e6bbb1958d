//! The machine's protocol with the shell that drives it: what a request
//! starts with, the [`Input`]s the shell feeds, the [`Effect`]s it performs,
//! and the shapes of what goes to the upstream and to the client.

use crate::family::Family;
use crate::pin::PinRequest;
use crate::translate::ClientDialect;

/// The client's credentials as presented, and what the request came with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub x_goog_api_key: Option<String>,
    /// `?key=` (Gemini SDKs).
    pub query_key: Option<String>,
}

/// A generation request as it arrives.
#[derive(Debug, Clone)]
pub struct Start {
    pub client: ClientDialect,
    /// The endpoint family (chat, embeddings, …).
    pub family: Family,
    /// Gemini puts the model and streaming in the path.
    pub path_model: Option<String>,
    pub path_stream: bool,
    pub credentials: Credentials,
    /// `CF-Connecting-IP`, set by Cloudflare's edge (and by `wrangler dev`).
    pub client_ip: Option<String>,
    /// `Content-Length`, when declared.
    pub declared_body_len: Option<u64>,
    /// Unique id of this request (`req_<hex>`), from the runtime's CSPRNG.
    pub request_id: String,
    /// Any random u64: the weighted order of candidates.
    pub routing_seed: u64,
    /// The pin headers, when the request names a channel ([`crate::pin`]).
    pub pin: Option<PinRequest>,
}

/// What the shell tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The first input.
    Begin,
    /// The last effect is done and reported nothing (`Sleep`, `Respond`,
    /// `Emit`, `CloseStream`).
    Done,
    /// `KvGet` answered (`None`: no such key).
    KvValue(Option<String>),
    /// `KvGet` failed.
    KvFailed(String),
    /// `ReadSecret` answered.
    Secret(Option<String>),
    /// `AccountCall` answered with this status and body; a transport failure
    /// is status 0 with the error text.
    AccountReply { status: u16, body: String },
    /// `ReadRequestBody` read the whole body.
    RequestBody(Vec<u8>),
    /// The body is larger than the limit.
    RequestBodyTooLarge,
    /// The body could not be read.
    RequestBodyUnreadable,
    /// `Fetch` got response headers (with the upstream's `Retry-After`).
    UpstreamHead { status: u16, retry_after: Option<String> },
    /// `Fetch` got no response.
    UpstreamFailed(FetchFailure),
    /// `ReadUpstreamBody` read the whole body (up to its limit).
    UpstreamBody(Vec<u8>),
    /// `ReadUpstreamBody` failed or went past its limit.
    UpstreamBodyFailed,
    /// `ReadChunk` read this chunk.
    Chunk(Vec<u8>),
    /// `ReadChunk`: the upstream body ended.
    UpstreamEnd,
    /// `ReadChunk`: the upstream body broke.
    UpstreamBroken(String),
    /// `Fetch`, `ReadChunk` or `Wait`: `wake_ms` passed and the operation
    /// is still pending (the shell keeps it).
    Idle,
    /// `Emit` found the client gone.
    ClientGone,
    /// `PublishUsage` finished (false: the queue refused).
    Published(bool),
    /// `StoreCall` answered with this status and body; a transport failure
    /// is status 0 with the error text.
    StoreReply { status: u16, body: String },
    /// `HealthCall` answered with this status and body (0: no answer).
    HealthReply { status: u16, body: String },
    /// `CacheGet` answered (`None`: not cached, or the cache failed).
    CacheValue(Option<String>),
}

/// Why a fetch got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// Connection refused, reset, DNS, TLS. (Time limits are the
    /// machine's: see [`Input::Idle`].)
    Unreachable,
}

/// An upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answer [`Input::Idle`] if no headers came within this long.
    pub wake_ms: Option<u64>,
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
}

/// The body of the client response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The upstream body the shell last handed in ([`Input::UpstreamBody`]),
    /// unchanged: the shell answers with its own copy.
    UpstreamBody,
    /// A stream the machine fills with [`Effect::Emit`] and ends with
    /// [`Effect::CloseStream`].
    Stream,
}

/// Bytes for the client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emitted {
    Bytes(Vec<u8>),
    /// The chunk the shell last handed in ([`Input::Chunk`]), unchanged.
    Chunk,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Read a KV value as text; answer [`Input::KvValue`] or [`Input::KvFailed`].
    KvGet { key: String },
    /// Read a worker secret; answer [`Input::Secret`].
    ReadSecret { name: String },
    /// Call the key's account object (`https://key-account{path}`); answer
    /// [`Input::AccountReply`].
    AccountCall { digest: String, method: &'static str, path: &'static str, body: Option<String> },
    /// Read the request body, at most `limit` bytes.
    ReadRequestBody { limit: usize },
    /// POST upstream; answer [`Input::UpstreamHead`] or [`Input::UpstreamFailed`].
    Fetch(UpstreamRequest),
    /// Read the whole upstream body, at most `limit` bytes.
    ReadUpstreamBody { limit: usize },
    /// Wait, then answer [`Input::Done`].
    Sleep { ms: u64 },
    /// Answer the client.
    Respond(ResponseHead, ResponseBody),
    /// Read the next upstream chunk; answer [`Input::Chunk`],
    /// [`Input::UpstreamEnd`], [`Input::UpstreamBroken`], or [`Input::Idle`]
    /// when `wake_ms` passes first.
    ReadChunk { wake_ms: Option<u64> },
    /// Keep waiting for the pending `Fetch` or `ReadChunk`; answer as it
    /// would, or [`Input::Idle`] when `wake_ms` passes first.
    Wait { wake_ms: Option<u64> },
    /// Give up the pending `Fetch` or `ReadChunk` (abort it); answer [`Input::Done`].
    CancelUpstream,
    /// Write to the client stream; answer [`Input::Done`] or [`Input::ClientGone`].
    Emit(Emitted),
    /// End the client stream (and stop reading the upstream).
    CloseStream,
    /// Send these events (JSON text of an array of [`UsageEvent`]) to the
    /// usage queue; answer [`Input::Published`].
    PublishUsage { events_json: String, count: usize },
    /// Call the key's conversation store (`https://conversation-store{path}`,
    /// POST, JSON `body`; [`crate::conversation_store`]); answer
    /// [`Input::StoreReply`].
    StoreCall { digest: String, path: &'static str, body: String },
    /// Call the channel's shared health record (`https://channel-health/sync`,
    /// POST, JSON `body`; [`crate::channel_health::shared`]); answer
    /// [`Input::HealthReply`].
    HealthCall { channel: String, body: String },
    /// Read the response cache (the Workers Cache API) at `url`; answer
    /// [`Input::CacheValue`].
    CacheGet { url: String },
    /// Store `value` in the response cache at `url` for `ttl_secs`; answer
    /// [`Input::Done`] (a failure is only logged).
    CachePut { url: String, value: String, ttl_secs: u32 },
    /// Nothing more to do.
    Finished,
}

/// A log line for the shell to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub error: bool,
    pub message: String,
}
