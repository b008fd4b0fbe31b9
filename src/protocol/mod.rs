//! The sans-IO protocol core: framing, JSON parsing, messages, errors and
//! timestamps. No sockets, no clocks read, no threads: callers hand in bytes
//! and the time, and get frames written into buffers they own. The server,
//! the client library and the load generator all speak through this module.
//!
//! Call order for a receiver: [`FrameDecoder::feed`] each chunk; for each
//! payload, [`parse_request`] (server) or [`JsonParser::parse`] (clients);
//! write answers with the `write_*` functions of [`message`]. A connection
//! that negotiated compression ([`codec`]) also has flagged frames, which
//! are decompressed before parsing and compressed after writing.

pub mod auth;
pub mod codec;
pub mod error;
pub mod frame;
pub mod interest;
pub mod json;
pub mod message;
pub mod pattern;
pub mod raw;
pub mod stats;
pub mod time;

pub use error::{ErrorCode, FrameError, RequestError};
pub use frame::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME_BYTES, HEADER_LEN};
pub use json::{InvalidJson, JsonParser, JsonValue};
pub use message::{Request, RequestKind};
pub use stats::{ServerStats, StatsReport};
pub use time::{TimestampCache, TIMESTAMP_LEN};

/// A payload that is not a valid request, with what is needed to answer it.
#[derive(Debug, Clone)]
pub struct Rejected<'t, 'a> {
    /// Why.
    pub error: RequestError<'a>,
    /// The payload's `id`, when it had a scalar one.
    pub id: Option<JsonValue<'t, 'a>>,
}

/// Parses a frame payload in place and classifies it as a request, then
/// calls `f` with the result. Bad UTF-8 and bad JSON are `invalid_json`.
#[inline]
pub fn parse_request<'a, R>(
    parser: &mut JsonParser,
    payload: &'a mut [u8],
    f: impl for<'t> FnOnce(Result<Request<'t, 'a>, Rejected<'t, 'a>>) -> R,
) -> R {
    parser.parse(payload, |root| match root {
        Err(InvalidJson) => f(Err(Rejected {
            error: RequestError::new(ErrorCode::InvalidJson, "payload is not valid UTF-8 JSON"),
            id: None,
        })),
        Ok(root) => match Request::from_value(root) {
            Ok(req) => f(Ok(req)),
            Err(mut error) => {
                if error.request_type.is_none() {
                    error.request_type = Request::type_of(&root);
                }
                f(Err(Rejected {
                    error,
                    id: Request::id_of(&root),
                }))
            }
        },
    })
}
