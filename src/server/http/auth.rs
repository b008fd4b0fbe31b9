//! Who may use the API (`api_key`, sent as `Authorization: Bearer <key>`).
//!
//! - Writes always need the key; with none configured they are refused
//!   (403) with a message that says how to set one.
//! - Reads need it too, except when the listener is bound to a loopback
//!   address and no key is set (only this machine can reach it then).
//! - `/metrics`, `/healthz` and the dashboard page need no key.
//!
//! The key is compared in constant time (`subtle`): the time taken does
//! not tell how much of a guess was right. Only its length can leak, as
//! with any comparison that does not pad.

use super::reply::{ApiError, ErrorCode};
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use subtle::ConstantTimeEq;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone who reaches the listener.
    Open,
    /// The key, or loopback with no key set.
    Read,
    /// The key, always.
    Write,
}

/// The listener's key and where it listens.
#[derive(Debug)]
pub(super) struct Keys {
    key: Option<Vec<u8>>,
    loopback: bool,
}

/// What a request without a key is told when none is configured.
const SET_A_KEY: &str = "this needs an API key and the server has none: start it with \
     --api-key <key> or --api-key-file <file> (RINGCAST_API_KEY, config key api_key), \
     then send Authorization: Bearer <key>";

impl Keys {
    /// `key` (None: no key) for a listener bound to a loopback address or not.
    pub fn new(key: Option<&str>, loopback: bool) -> Keys {
        Keys {
            key: key.map(|k| k.as_bytes().to_vec()),
            loopback,
        }
    }

    /// Whether `headers` may make a request that needs `access`.
    pub fn check(&self, access: Access, headers: &HeaderMap) -> Result<(), ApiError> {
        if access == Access::Open {
            return Ok(());
        }
        let Some(key) = &self.key else {
            if access == Access::Read && self.loopback {
                return Ok(());
            }
            return Err(ApiError::new(ErrorCode::Forbidden, SET_A_KEY));
        };
        let sent = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match sent {
            Some(sent) if bool::from(sent.ct_eq(key)) => Ok(()),
            Some(_) => Err(ApiError::new(ErrorCode::Unauthorized, "wrong API key")),
            None => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "send the API key as Authorization: Bearer <key>",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn keys_reads_writes_and_loopback() {
        let code = |r: Result<(), ApiError>| r.err().map(|e| e.code);
        let keyed = Keys::new(Some("s3cret"), true);
        assert_eq!(
            code(keyed.check(Access::Read, &with(None))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(keyed.check(Access::Write, &with(Some("Bearer s3cre")))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(keyed.check(Access::Write, &with(Some("s3cret")))),
            Some(ErrorCode::Unauthorized),
            "the key without its scheme"
        );
        assert_eq!(
            code(keyed.check(Access::Write, &with(Some("Bearer s3cret")))),
            None
        );
        assert_eq!(code(keyed.check(Access::Open, &with(None))), None);

        let local = Keys::new(None, true);
        assert_eq!(code(local.check(Access::Read, &with(None))), None);
        assert_eq!(
            code(local.check(Access::Write, &with(None))),
            Some(ErrorCode::Forbidden)
        );
        let public = Keys::new(None, false);
        assert_eq!(
            code(public.check(Access::Read, &with(None))),
            Some(ErrorCode::Forbidden)
        );
    }
}
