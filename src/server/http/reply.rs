//! The listener's answers: JSON bodies, and the one error shape every
//! refusal has, `{"error":{"code":…,"message":…}}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// An answer.
pub(super) type Answer = Response<Full<Bytes>>;

/// The `code` of an error answer; the status goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorCode {
    /// 400: the body is not JSON, or not the object the endpoint takes.
    InvalidJson,
    /// 400: a field is missing or of the wrong type.
    InvalidField,
    /// 400: the channel name is not one a client could use.
    InvalidChannel,
    /// 400: a query parameter is not one the endpoint takes.
    InvalidQuery,
    /// 401: no key, or the wrong one, was sent.
    Unauthorized,
    /// 403: the request needs a key and none is configured.
    Forbidden,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint takes another method.
    MethodNotAllowed,
    /// 408: the head or the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is over `max_frame_bytes`.
    PayloadTooLarge,
    /// 429: this IP address is over `http_rate_limit`.
    RateLimited,
    /// 503: the listener is at `http_max_connections`.
    TooManyConnections,
    /// 503: the backplane refused the message (this node's clients only).
    BackplaneUnavailable,
    /// 503: a shard did not answer in time (it stopped, or the server
    /// is stopping).
    Unavailable,
}

impl ErrorCode {
    /// The wire name and the status.
    pub(super) fn parts(self) -> (&'static str, StatusCode) {
        use ErrorCode::*;
        match self {
            InvalidJson => ("invalid_json", StatusCode::BAD_REQUEST),
            InvalidField => ("invalid_field", StatusCode::BAD_REQUEST),
            InvalidChannel => ("invalid_channel", StatusCode::BAD_REQUEST),
            InvalidQuery => ("invalid_query", StatusCode::BAD_REQUEST),
            Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            NotFound => ("not_found", StatusCode::NOT_FOUND),
            MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            RequestTimeout => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            TooManyConnections => ("too_many_connections", StatusCode::SERVICE_UNAVAILABLE),
            BackplaneUnavailable => ("backplane_unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Unavailable => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// A refusal: its code and message (see [`error`]).
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// The JSON of an error answer.
pub(super) fn error_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({"error": {"code": code.parts().0, "message": message}}).to_string()
}

/// An error answer.
pub(super) fn error(e: &ApiError) -> Answer {
    let (_, status) = e.code.parts();
    let mut r = with_type(
        status,
        "application/json",
        error_body(e.code, &e.message).into(),
    );
    if e.code == ErrorCode::Unauthorized {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if e.code == ErrorCode::PayloadTooLarge {
        // What is left of the body is not read: the connection cannot
        // carry another request.
        r = closing(r);
    }
    if e.code == ErrorCode::RateLimited {
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A 200 JSON answer.
pub(super) fn json(v: &serde_json::Value) -> Answer {
    with_type(StatusCode::OK, "application/json", v.to_string().into())
}

/// An answer of `content_type`.
pub(super) fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Answer {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Asks hyper to close the connection after this answer (the endpoints
/// Prometheus and health checkers use keep their one-shot behaviour).
pub(super) fn closing(mut r: Answer) -> Answer {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}
