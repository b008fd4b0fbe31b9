//! A connection's set-up, sans-IO: `hello` (negotiating compression),
//! `auth`, and a verifying `ping`, one request at a time. No sockets, no
//! clocks: the caller sends the payloads it is given and hands back the
//! frames it reads. Both the client library (src/client/connection.rs)
//! and the load generator (src/bench/setup.rs) drive it, so the rules of
//! the exchange are written once.
//!
//! Call order:
//! 1. [`Handshake::poll_request`]: the next request to send (None: the
//!    set-up is over; call [`Handshake::finish`]). When the request
//!    [announces compression](Request::announces_compression), frames
//!    with the compressed flag may come from then on.
//! 2. [`Handshake::handle_message`] with each frame read, until it says
//!    [`Handled::Answered`]; frames that answer nothing (a broadcast
//!    arriving meanwhile) come back as [`Handled::Unrelated`], for the
//!    caller to keep or drop. After each answer, [`Handshake::codec`] is
//!    the codec to decompress what follows with.
//! 3. Back to 1.

use super::frames::request_payload;
use super::{ClientConfig, ClientError, Codec, Message, Result};
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use serde_json::{Map, Value};

/// What a connection's set-up asks of the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Offer {
    /// Codecs to offer in `hello`, in order of preference (empty: no
    /// `hello`).
    pub(crate) compression: Vec<Codec>,
    /// Whether a server that does not agree to compression fails the
    /// set-up (the load generator, asked to measure compression, must not
    /// quietly measure without it) instead of leaving it uncompressed.
    pub(crate) require_compression: bool,
    /// Sent as `client` in `hello` and `client_info` in the `ping`.
    pub(crate) client_info: String,
    /// Sent in `auth` after `hello` (None: no `auth`).
    pub(crate) token: Option<String>,
    /// Whether some request must be answered before the connection counts
    /// as up: when neither `hello` nor `auth` is sent, a `ping` is. A TCP
    /// connect alone can land in the backlog of a server that is shutting
    /// down and never answers.
    pub(crate) verify: bool,
}

impl Offer {
    /// What a client with `cfg` asks on each connection.
    pub(crate) fn of(cfg: &ClientConfig, verify: bool) -> Offer {
        Offer {
            compression: cfg.compression.clone(),
            require_compression: false,
            client_info: cfg.client_info.clone(),
            token: cfg.auth_token.clone(),
            verify,
        }
    }
}

/// A request the set-up wants sent.
#[derive(Debug)]
pub(crate) struct Request {
    /// The JSON payload, to be sent as one plain (never compressed) frame.
    pub(crate) payload: Vec<u8>,
    /// This is `hello`: from now on a frame header with the top bit set is
    /// a compressed frame (a server that never negotiates never sets it).
    pub(crate) announces_compression: bool,
}

/// What a frame handed to [`Handshake::handle_message`] was.
#[derive(Debug)]
pub(crate) enum Handled {
    /// The answer to the request in flight: poll for the next one.
    Answered,
    /// A frame that answers nothing, given back.
    Unrelated(Message),
}

/// Why a set-up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// `hello` was answered with `unauthorized`: a server from before
    /// `hello` that wants `auth` first. Connecting again without `hello`
    /// (uncompressed) gets through.
    #[error("{0}")]
    HelloRefused(ClientError),
    /// `auth` was answered with this `error` frame.
    #[error("authentication refused: {}", .0.raw)]
    AuthRefused(Message),
    /// Compression was required and the server did not agree; its answer.
    #[error("the server did not agree (it answered {0})")]
    CompressionRefused(String),
    /// Any other failure: an `error` answer, or an answer that breaks the
    /// protocol.
    #[error("{0}")]
    Failed(ClientError),
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> ClientError {
        match e {
            HandshakeError::HelloRefused(e) | HandshakeError::Failed(e) => e,
            HandshakeError::AuthRefused(m) => m.to_server_error(),
            e @ HandshakeError::CompressionRefused(_) => ClientError::Protocol(e.to_string()),
        }
    }
}

/// The requests of the set-up, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Hello,
    Auth,
    Verify,
    Done,
}

impl Step {
    fn request_type(self) -> &'static str {
        match self {
            Step::Hello => "hello",
            Step::Auth => "auth",
            Step::Verify | Step::Done => "ping",
        }
    }

    fn answer_type(self) -> &'static str {
        match self {
            Step::Hello => "hello_ok",
            Step::Auth => "auth_ok",
            Step::Verify | Step::Done => "pong",
        }
    }
}

/// One connection's set-up (see the module doc for the call order).
#[derive(Debug)]
pub(crate) struct Handshake {
    offer: Offer,
    /// The next step to consider sending.
    next: Step,
    /// The request in flight and its id.
    waiting: Option<(Step, u64)>,
    /// Whether any request has been answered (then no `ping` is needed).
    answered: bool,
    /// What `hello_ok` said.
    hello: Option<ServerHello>,
    /// `auth_ok`'s `expires_at` (a JWT's `exp`, Unix seconds).
    expires_at: Option<u64>,
}

impl Handshake {
    /// A set-up that asks what `offer` says.
    pub(crate) fn new(offer: Offer) -> Handshake {
        Handshake {
            offer,
            next: Step::Hello,
            waiting: None,
            answered: false,
            hello: None,
            expires_at: None,
        }
    }

    /// The next request, with an id from `next_id` (called only when there
    /// is one), or None when the set-up is over. Call it again only once
    /// the previous request is answered.
    pub(crate) fn poll_request(&mut self, next_id: impl FnOnce() -> u64) -> Option<Request> {
        debug_assert!(self.waiting.is_none(), "a request is still in flight");
        let mut fields = Map::new();
        let step = loop {
            let step = self.next;
            match step {
                Step::Hello => {
                    self.next = Step::Auth;
                    if self.offer.compression.is_empty() {
                        continue;
                    }
                    let offer = self.offer.compression.iter();
                    let offer = offer.map(|c| Value::from(c.as_str())).collect();
                    fields.insert("compression".into(), Value::Array(offer));
                    fields.insert(
                        "client".into(),
                        Value::from(self.offer.client_info.as_str()),
                    );
                }
                Step::Auth => {
                    self.next = Step::Verify;
                    let Some(token) = &self.offer.token else {
                        continue;
                    };
                    fields.insert("token".into(), Value::from(token.as_str()));
                }
                Step::Verify => {
                    self.next = Step::Done;
                    if !self.offer.verify || self.answered {
                        continue;
                    }
                    let info = Value::from(self.offer.client_info.as_str());
                    fields.insert("client_info".into(), info);
                }
                Step::Done => return None,
            }
            break step;
        };
        let id = next_id();
        self.waiting = Some((step, id));
        Some(Request {
            payload: request_payload(step.request_type(), &fields, id),
            announces_compression: step == Step::Hello,
        })
    }

    /// Takes one frame read off the connection.
    pub(crate) fn handle_message(&mut self, m: Message) -> Result<Handled, HandshakeError> {
        let Some((step, id)) = self.waiting else {
            return Ok(Handled::Unrelated(m));
        };
        let want = step.answer_type();
        // Servers that do not copy ids (like the Python seed server) answer
        // without one: the first frame of the wanted type, or an error, is
        // the answer then.
        let answers = match m.get("id") {
            Some(v) => v.as_u64() == Some(id),
            None => m.kind() == want || m.is_error(),
        };
        if !answers {
            return Ok(Handled::Unrelated(m));
        }
        self.waiting = None;
        self.answered = true;
        if m.kind() != want && !m.is_error() {
            return Err(HandshakeError::Failed(ClientError::Protocol(format!(
                "expected {want}, got {:?}",
                m.kind()
            ))));
        }
        match step {
            Step::Hello => self.handle_hello(m)?,
            Step::Auth if m.is_error() => return Err(HandshakeError::AuthRefused(m)),
            Step::Auth => self.expires_at = m.get_u64("expires_at"),
            _ if m.is_error() => return Err(HandshakeError::Failed(m.to_server_error())),
            _ => {}
        }
        Ok(Handled::Answered)
    }

    /// The answer to `hello`.
    fn handle_hello(&mut self, m: Message) -> Result<(), HandshakeError> {
        let require = self.offer.require_compression;
        if m.is_error() {
            return match m.get_str("code") {
                _ if require => Err(HandshakeError::CompressionRefused(m.raw)),
                // A server from before hello: uncompressed, as before.
                Some("unknown_type") => Ok(()),
                Some("unauthorized") => Err(HandshakeError::HelloRefused(m.to_server_error())),
                _ => Err(HandshakeError::Failed(m.to_server_error())),
            };
        }
        let h = ServerHello::from_message(&m).map_err(HandshakeError::Failed)?;
        if let Some(c) = h
            .compression
            .filter(|c| !self.offer.compression.contains(c))
        {
            return Err(HandshakeError::Failed(ClientError::Protocol(format!(
                "hello_ok chose {:?}, which was not offered",
                c.as_str()
            ))));
        }
        if require && h.compression.is_none() {
            return Err(HandshakeError::CompressionRefused(m.raw));
        }
        self.hello = Some(h);
        Ok(())
    }

    /// The codec frames from the server are compressed with from here on.
    /// When the token `auth` carried expires (Unix seconds), if the
    /// server said (a JWT with `exp`).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    pub(crate) fn codec(&self) -> Option<Codec> {
        self.hello.as_ref().and_then(|h| h.compression)
    }

    /// The set-up is over: what `hello_ok` said (None: no `hello`, or a
    /// server from before it).
    pub(crate) fn finish(self) -> Option<ServerHello> {
        self.hello
    }
}

/// What a server said in `hello_ok` about itself and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The codec chosen for this connection (None: uncompressed).
    pub compression: Option<Codec>,
    /// `ringcast/<version>`.
    pub server: String,
    /// Protocol version (1).
    pub protocol: u64,
    /// The largest (decompressed) payload the server accepts.
    pub max_frame_bytes: usize,
    /// Payloads larger than this are worth compressing (bytes).
    pub compression_threshold: usize,
    /// Capabilities present (`broadcast`, `channels`, `compression`, `auth`,
    /// `tls`, `cluster`).
    pub features: Vec<String>,
}

impl ServerHello {
    /// Reads a `hello_ok` frame. A codec name this build does not have
    /// (the server must pick one of those offered) is a protocol error.
    pub fn from_message(m: &Message) -> Result<ServerHello> {
        let compression = match m.get("compression") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(Codec::from_name(name).ok_or_else(|| {
                ClientError::Protocol(format!("hello_ok names an unknown codec {name:?}"))
            })?),
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "hello_ok with a compression of {other}"
                )))
            }
        };
        let size = |key: &str, default: usize| {
            m.get_u64(key)
                .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        Ok(ServerHello {
            compression,
            server: m.get_str("server").unwrap_or("").to_owned(),
            protocol: m.get_u64("protocol").unwrap_or(0),
            max_frame_bytes: size("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES),
            compression_threshold: size(
                "compression_threshold",
                crate::protocol::codec::DEFAULT_THRESHOLD,
            ),
            features: m
                .get("features")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Whether `features` lists `name`.
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::frames::parse_message;

    fn msg(s: &str) -> Message {
        parse_message(s.as_bytes()).unwrap()
    }

    /// Runs a set-up against `server`, which answers each request payload
    /// with frames; returns the requests' types and how it ended.
    fn drive(
        offer: Offer,
        mut server: impl FnMut(&Value) -> Vec<String>,
    ) -> (
        Vec<String>,
        Result<Option<ServerHello>, HandshakeError>,
        usize,
    ) {
        let mut hs = Handshake::new(offer);
        let mut sent = Vec::new();
        let mut unrelated = 0;
        let mut id = 0;
        while let Some(req) = hs.poll_request(|| {
            id += 1;
            id
        }) {
            let v: Value = serde_json::from_slice(&req.payload).unwrap();
            assert_eq!(req.announces_compression, v["type"] == "hello");
            sent.push(v["type"].as_str().unwrap().to_owned());
            let mut answered = false;
            for f in server(&v) {
                match hs.handle_message(msg(&f)) {
                    Ok(Handled::Answered) => answered = true,
                    Ok(Handled::Unrelated(_)) => unrelated += 1,
                    Err(e) => return (sent, Err(e), unrelated),
                }
            }
            assert!(answered, "no answer to {v}");
        }
        (sent, Ok(hs.finish()), unrelated)
    }

    fn offer(codecs: &[Codec], token: Option<&str>, verify: bool) -> Offer {
        Offer {
            compression: codecs.to_vec(),
            client_info: "test".into(),
            token: token.map(Into::into),
            verify,
            ..Offer::default()
        }
    }

    #[test]
    fn hello_then_auth_with_broadcasts_in_between() {
        let (sent, r, unrelated) = drive(offer(&[Codec::Zstd], Some("t"), true), |v| {
            let id = &v["id"];
            match v["type"].as_str().unwrap() {
                "hello" => {
                    assert_eq!(v["compression"], serde_json::json!(["zstd"]));
                    assert_eq!(v["client"], "test");
                    vec![
                        r#"{"type":"broadcast_message","content":"x"}"#.into(),
                        format!(r#"{{"type":"hello_ok","compression":"zstd","id":{id}}}"#),
                    ]
                }
                "auth" => {
                    assert_eq!(v["token"], "t");
                    vec![format!(r#"{{"type":"auth_ok","id":{id}}}"#)]
                }
                t => panic!("unexpected {t}"),
            }
        });
        // No ping: hello already proved the server answers.
        assert_eq!(sent, ["hello", "auth"]);
        assert_eq!(r.unwrap().unwrap().compression, Some(Codec::Zstd));
        assert_eq!(unrelated, 1);
    }

    #[test]
    fn nothing_to_ask_sends_nothing_unless_verifying() {
        let (sent, r, _) = drive(offer(&[], None, false), |_| unreachable!());
        assert!(sent.is_empty() && r.unwrap().is_none());
        // Verifying: a ping, answered by a server that copies no ids.
        let (sent, r, _) = drive(offer(&[], None, true), |v| {
            assert_eq!(v["client_info"], "test");
            vec![r#"{"type":"pong"}"#.into()]
        });
        assert_eq!(sent, ["ping"]);
        assert!(r.unwrap().is_none());
    }

    #[test]
    fn a_server_from_before_hello() {
        let unknown = r#"{"type":"error","code":"unknown_type","message":"no handler"}"#;
        // Uncompressed, as before.
        let (sent, r, _) = drive(offer(&[Codec::Deflate], None, true), |_| {
            vec![unknown.into()]
        });
        assert_eq!(sent, ["hello"]);
        assert!(r.unwrap().is_none());
        // Unless compression is required.
        let required = Offer {
            require_compression: true,
            ..offer(&[Codec::Deflate], None, false)
        };
        let (_, r, _) = drive(required.clone(), |_| vec![unknown.into()]);
        let e = r.unwrap_err();
        assert!(matches!(e, HandshakeError::CompressionRefused(_)), "{e:?}");
        assert!(e.to_string().contains("unknown_type"), "{e}");
        let (_, r, _) = drive(required, |v| {
            vec![format!(
                r#"{{"type":"hello_ok","compression":null,"id":{}}}"#,
                v["id"]
            )]
        });
        assert!(matches!(r, Err(HandshakeError::CompressionRefused(_))));
        // One that wants auth first closes with unauthorized.
        let (_, r, _) = drive(offer(&[Codec::Zstd], Some("t"), false), |_| {
            vec![r#"{"type":"error","code":"unauthorized","message":"auth first"}"#.into()]
        });
        assert!(matches!(r, Err(HandshakeError::HelloRefused(_))));
    }

    #[test]
    fn refusals_and_wrong_answers_fail_the_set_up() {
        let (_, r, _) = drive(offer(&[], Some("bad"), false), |v| {
            vec![format!(
                r#"{{"type":"error","code":"unauthorized","message":"no","id":{}}}"#,
                v["id"]
            )]
        });
        let e = r.unwrap_err();
        assert!(
            e.to_string().starts_with("authentication refused: {"),
            "{e}"
        );
        let e = ClientError::from(e);
        assert_eq!(e.server_code().map(|c| c.as_str()), Some("unauthorized"));
        // An answer (by id) of the wrong type.
        let (_, r, _) = drive(offer(&[], Some("t"), false), |v| {
            vec![format!(r#"{{"type":"pong","id":{}}}"#, v["id"])]
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Failed(ClientError::Protocol(_)))
        ));
        // A codec that was not offered.
        let (_, r, _) = drive(offer(&[Codec::Zstd], None, false), |v| {
            vec![format!(
                r#"{{"type":"hello_ok","compression":"deflate","id":{}}}"#,
                v["id"]
            )]
        });
        let e = r.unwrap_err();
        assert!(e.to_string().contains("not offered"), "{e}");
    }

    #[test]
    fn hello_ok_is_read_with_defaults_for_what_it_leaves_out() {
        let m = parse_message(br#"{"type":"hello_ok","compression":null}"#).unwrap();
        let h = ServerHello::from_message(&m).unwrap();
        assert_eq!(h.compression, None);
        assert_eq!(h.compression_threshold, 1024);
        assert_eq!(h.max_frame_bytes, 1 << 20);
        let m = parse_message(
            br#"{"type":"hello_ok","compression":"deflate","server":"ringcast/9","protocol":1,
                "max_frame_bytes":2048,"compression_threshold":10,"features":["tls","auth"]}"#,
        )
        .unwrap();
        let h = ServerHello::from_message(&m).unwrap();
        assert_eq!(h.compression, Some(Codec::Deflate));
        assert_eq!((h.max_frame_bytes, h.compression_threshold), (2048, 10));
        assert!(h.has_feature("auth") && !h.has_feature("cluster"));
        let m = parse_message(br#"{"type":"hello_ok","compression":"lz4"}"#).unwrap();
        assert!(matches!(
            ServerHello::from_message(&m),
            Err(ClientError::Protocol(_))
        ));
    }
}
