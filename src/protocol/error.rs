//! Error codes carried in `error` frames, and the errors of the protocol core.

use thiserror::Error;

/// Stable error codes sent to clients in `{"type":"error","code":…}`.
///
/// The string form (see [`ErrorCode::as_str`]) is part of the wire protocol:
/// never rename one. docs/PROTOCOL.md says for each whether the connection
/// is closed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The payload is not valid UTF-8 JSON.
    InvalidJson,
    /// The payload is valid JSON but its top level is not an object.
    NotAnObject,
    /// The object has no `type` field, or it is not a string.
    MissingType,
    /// No handler for this `type` (the CLI server registers no custom types).
    UnknownType,
    /// A field the message type requires is missing or has the wrong JSON type.
    InvalidField,
    /// The frame header announced a length of zero.
    EmptyFrame,
    /// The frame header announced more than the server's `max_frame_bytes`.
    FrameTooLarge,
    /// The server is at `max_connections` (or `max_connections_per_ip`), or
    /// its shard's budget for partially received frames is used up.
    ServerFull,
    /// The client did not read its broadcasts and fell `max_pending_bytes` behind.
    SlowConsumer,
    /// The client exceeded its per-connection message rate.
    RateLimited,
    /// Authentication is required and the first frame was not a valid `auth`.
    Unauthorized,
    /// The server is shutting down; the connection will be closed.
    ShuttingDown,
    /// A channel name is empty, longer than
    /// [`MAX_CHANNEL_BYTES`](crate::protocol::message::MAX_CHANNEL_BYTES),
    /// or holds a control character.
    InvalidChannel,
    /// A `subscribe` would take the connection past the server's
    /// `max_subscriptions`.
    TooManySubscriptions,
    /// The cluster backplane is unreachable and its buffer is full: the
    /// message reached this node's clients only.
    BackplaneUnavailable,
    /// A compressed frame is not a valid stream of the negotiated codec
    /// (garbage, truncated, or with bytes after its end).
    CompressionError,
    /// `hello` was sent a second time on this connection.
    HelloRepeated,
    /// `history` on a channel that keeps no history (`history_size` 0).
    NoHistory,
    /// The token's claims or a namespace do not allow this subscribe,
    /// publish, history or broadcast; nothing was done.
    PermissionDenied,
    /// The connection's token has expired: `refresh` within
    /// `token_refresh_grace_secs`, or the connection is closed (with this
    /// code again).
    TokenExpired,
    /// An operator disconnected this client (`POST /v1/disconnect`); the
    /// message is the reason given. The connection is closed.
    Kicked,
}

impl ErrorCode {
    /// How many codes there are (the length of per-code counter arrays).
    pub const COUNT: usize = 21;

    /// Every code, in the order of per-code counters.
    pub const ALL: [ErrorCode; ErrorCode::COUNT] = [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::MissingType,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
        ErrorCode::EmptyFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::ServerFull,
        ErrorCode::SlowConsumer,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidChannel,
        ErrorCode::TooManySubscriptions,
        ErrorCode::BackplaneUnavailable,
        ErrorCode::CompressionError,
        ErrorCode::HelloRepeated,
        ErrorCode::NoHistory,
        ErrorCode::PermissionDenied,
        ErrorCode::TokenExpired,
        ErrorCode::Kicked,
    ];

    /// The wire string of this code.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::EmptyFrame => "empty_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::BackplaneUnavailable => "backplane_unavailable",
            ErrorCode::CompressionError => "compression_error",
            ErrorCode::HelloRepeated => "hello_repeated",
            ErrorCode::NoHistory => "no_history",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Kicked => "kicked",
        }
    }

    /// Position in [`ErrorCode::ALL`] (per-code counters).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses a wire string back into a code (used by clients).
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the server closes the connection after sending this code.
    ///
    /// Framing errors close because the byte stream can no longer be trusted
    /// to be in step; JSON-level errors leave the stream in step, so the
    /// connection stays usable.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::EmptyFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::ServerFull
                | ErrorCode::SlowConsumer
                | ErrorCode::Unauthorized
                | ErrorCode::ShuttingDown
                | ErrorCode::CompressionError
                | ErrorCode::Kicked
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A framing error: the byte stream broke the length-prefix rules, or a
/// partial frame needs more buffer than the receiver allows it.
///
/// After one of these the decoder is poisoned; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A header announced a zero-length payload.
    #[error("frame length is zero")]
    Empty,
    /// A header announced more than the limit.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The configured `max_frame_bytes`.
        max: usize,
    },
    /// Keeping the bytes of a partial frame would take the decoder's buffer
    /// past the capacity the receiver allowed for this feed (the server's
    /// per-shard budget for partial frames, `max_partial_bytes`).
    #[error("a partial frame needs {needed} bytes of buffer, over the {max} allowed")]
    OverBudget {
        /// Bytes the buffer would have to hold.
        needed: usize,
        /// The capacity allowed.
        max: usize,
    },
}

impl FrameError {
    /// The wire error code for this framing error.
    pub const fn code(self) -> ErrorCode {
        match self {
            FrameError::Empty => ErrorCode::EmptyFrame,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::OverBudget { .. } => ErrorCode::ServerFull,
        }
    }
}

/// Why a frame's payload could not be turned into a request.
///
/// These are answered with an `error` frame and the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError<'a> {
    /// The wire error code.
    pub code: ErrorCode,
    /// A human-readable explanation (static, so building one never allocates).
    pub message: &'static str,
    /// The request's `type`, when it could be read.
    pub request_type: Option<&'a str>,
}

impl<'a> RequestError<'a> {
    pub(crate) const fn new(code: ErrorCode, message: &'static str) -> Self {
        RequestError {
            code,
            message,
            request_type: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;
    use crate::protocol::RequestKind;

    #[test]
    fn counter_positions_match_the_lists() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i, "{c}");
            assert_eq!(ErrorCode::from_wire(c.as_str()), Some(c));
        }
        for (i, k) in RequestKind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i, "{}", k.label());
            if k != RequestKind::Custom {
                assert_eq!(RequestKind::from_type(k.label()), k);
            }
        }
    }
}
