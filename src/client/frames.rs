//! Frames on a client connection: reading them off the stream
//! (decompressing and parsing), and building requests (compressing large
//! ones once a codec is negotiated).

use super::tls::Stream;
use super::{ClientError, Message, Result};
use crate::protocol::codec::{Codec, Compressor, DecompressError, Decompressor};
use crate::protocol::frame::NoPool;
use crate::protocol::{encode_frame, FrameDecoder, FrameError};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;

/// Reads whole frames off a stream, decompresses flagged ones and parses
/// them.
pub(crate) struct FrameReader {
    stream: Stream,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
    /// Ciphertext off the socket (TLS only).
    scratch: Box<[u8]>,
    ready: VecDeque<Result<Incoming>>,
    /// The codec `hello_ok` named: flagged frames are decompressed with it.
    codec: Option<Codec>,
    /// Made on the first compressed frame.
    inflater: Option<Decompressor>,
    /// Decompressed payloads, reused frame to frame.
    inflated: Vec<u8>,
    /// Largest payload accepted, compressed or not.
    max_frame_bytes: usize,
}

/// A frame read but not handed out yet.
enum Incoming {
    Parsed(Message),
    /// A compressed payload that came in the same read as the `hello_ok`
    /// naming its codec, before that was known: decompressed when handed out.
    Packed(Vec<u8>),
}

/// A decompression buffer larger than this is freed after its frame.
const KEEP_INFLATED_CAPACITY: usize = 1 << 20;

impl FrameReader {
    pub(crate) fn new(stream: Stream, max_frame_bytes: usize) -> Self {
        let scratch = match stream {
            Stream::Plain(_) => Box::default(),
            // One full TLS record per socket read.
            Stream::Tls { .. } => vec![0u8; 17 * 1024].into_boxed_slice(),
        };
        FrameReader {
            stream,
            decoder: FrameDecoder::new(max_frame_bytes),
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            scratch,
            ready: VecDeque::new(),
            codec: None,
            inflater: None,
            inflated: Vec::new(),
            max_frame_bytes,
        }
    }

    /// `hello` is about to be sent: from now on a header with the top bit
    /// set is a compressed frame (a server that never negotiates never sets
    /// it, so nothing changes for one).
    pub(crate) fn expect_hello(&mut self) {
        self.decoder.accept_compressed();
    }

    /// The codec `hello_ok` named: compressed frames from here on (and any
    /// already read behind the `hello_ok`) are decompressed with it.
    pub(crate) fn set_codec(&mut self, codec: Option<Codec>) {
        self.codec = codec;
    }

    /// The next frame. Errors are final: the stream is out of step or gone.
    pub(crate) fn next_message(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return match m? {
                    Incoming::Parsed(m) => Ok(m),
                    Incoming::Packed(p) => inflate_message(
                        self.codec,
                        &mut self.inflater,
                        &mut self.inflated,
                        &p,
                        self.max_frame_bytes,
                    ),
                };
            }
            let n = match self.stream.read(&mut self.buf, &mut self.scratch) {
                Ok(0) => {
                    let reason = if self.decoder.in_frame() {
                        "server closed the connection in the middle of a frame"
                    } else {
                        "server closed the connection"
                    };
                    return Err(ClientError::Disconnected {
                        reason: reason.into(),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return Err(ClientError::Timeout(
                        self.stream
                            .socket()
                            .read_timeout()
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                    ))
                }
                Err(e) => return Err(ClientError::Io(e)),
            };
            let FrameReader {
                decoder,
                buf,
                ready,
                codec,
                inflater,
                inflated,
                max_frame_bytes,
                ..
            } = self;
            let fed =
                decoder.feed_flagged(&mut buf[..n], &mut NoPool, usize::MAX, |payload, packed| {
                    let m = match (packed, *codec) {
                        (false, _) => parse_message(payload).map(Incoming::Parsed),
                        (true, Some(_)) => {
                            inflate_message(*codec, inflater, inflated, payload, *max_frame_bytes)
                                .map(Incoming::Parsed)
                        }
                        // Behind the hello_ok still waiting in `ready`.
                        (true, None) => Ok(Incoming::Packed(payload.to_vec())),
                    };
                    let bad = m.is_err();
                    ready.push_back(m);
                    if bad {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
            if let Err(e) = fed {
                self.ready.push_back(Err(match e {
                    FrameError::TooLarge { len, max } => ClientError::FrameTooLarge { len, max },
                    FrameError::Empty => ClientError::Protocol("server sent an empty frame".into()),
                    // No capacity bound is set; kept for completeness.
                    e @ FrameError::OverBudget { .. } => ClientError::Protocol(e.to_string()),
                }));
            }
        }
    }
}

/// Decompresses one payload (never past `limit` bytes) and parses it.
fn inflate_message(
    codec: Option<Codec>,
    inflater: &mut Option<Decompressor>,
    out: &mut Vec<u8>,
    payload: &[u8],
    limit: usize,
) -> Result<Message> {
    let Some(codec) = codec else {
        return Err(ClientError::Protocol(
            "server sent a compressed frame, but no codec was negotiated".into(),
        ));
    };
    let r = inflater
        .get_or_insert_with(Decompressor::new)
        .decompress(codec, payload, out, limit);
    let m = match r {
        Ok(()) => parse_message(out),
        Err(DecompressError::TooLarge { limit }) => Err(ClientError::FrameTooLarge {
            len: limit as u64 + 1,
            max: limit,
        }),
        Err(e @ DecompressError::Corrupt { .. }) => Err(ClientError::Protocol(format!(
            "server sent a compressed frame that is not valid: {e}"
        ))),
    };
    if out.capacity() > KEEP_INFLATED_CAPACITY {
        *out = Vec::new();
    }
    m
}

/// Whether a socket error is its read or write timeout running out.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parses one payload; anything but a UTF-8 JSON object is a protocol error.
pub(crate) fn parse_message(payload: &[u8]) -> Result<Message> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        ClientError::Protocol(format!(
            "server sent a frame that is not valid JSON ({e}): {}",
            preview(payload)
        ))
    })?;
    if !value.is_object() {
        return Err(ClientError::Protocol(format!(
            "server sent a frame that is not a JSON object: {}",
            preview(payload)
        )));
    }
    Ok(Message {
        value,
        raw: String::from_utf8_lossy(payload).into_owned(),
    })
}

fn preview(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
    let mut out: String = s.escape_debug().collect();
    if payload.len() > 64 {
        out.push('…');
    }
    out
}

/// Builds a request payload: `{"type":…, fields…, "id":…}`.
pub(crate) fn request_payload(type_name: &str, fields: &Map<String, Value>, id: u64) -> Vec<u8> {
    let mut obj = Map::with_capacity(fields.len() + 2);
    obj.insert("type".into(), Value::from(type_name));
    for (k, v) in fields {
        if k != "type" && k != "id" {
            obj.insert(k.clone(), v.clone());
        }
    }
    obj.insert("id".into(), Value::from(id));
    // Serializing a Map of Values cannot fail.
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// Builds a request frame (never compressed).
pub(crate) fn request_frame(
    out: &mut Vec<u8>,
    type_name: &str,
    fields: &Map<String, Value>,
    id: u64,
) {
    encode_frame(out, &request_payload(type_name, fields, id));
}

/// Compresses requests on a connection that negotiated a codec.
pub(crate) struct Packer {
    codec: Codec,
    /// Payloads larger than this are compressed (when that saves bytes).
    threshold: usize,
    compressor: Compressor,
}

impl Packer {
    /// Compresses with `codec` the payloads over `threshold` bytes (the
    /// server's `compression_threshold`).
    pub(crate) fn new(codec: Codec, threshold: usize) -> Packer {
        Packer {
            codec,
            threshold,
            compressor: Compressor::new(),
        }
    }

    /// Appends `payload` to `out` as one frame: compressed if it is over
    /// the threshold and that is smaller, plain otherwise.
    pub(crate) fn frame(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload.len() > self.threshold
            && self.compressor.compress_frame(self.codec, payload, out)
        {
            return;
        }
        encode_frame(out, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::COMPRESSED_FLAG;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// A connected pair of sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn big_json(kind: &str) -> Vec<u8> {
        let items: Vec<Value> = (0..200)
            .map(|i| serde_json::json!({"sensor": format!("s-{}", i % 7), "v": i}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"type": kind, "content": items})).unwrap()
    }

    #[test]
    fn a_compressed_frame_read_along_with_hello_ok_is_decoded_with_its_codec() {
        let (client, mut server) = pair();
        let mut bytes = Vec::new();
        encode_frame(
            &mut bytes,
            br#"{"type":"hello_ok","compression":"zstd","id":1}"#,
        );
        let payload = big_json("broadcast_message");
        assert!(Compressor::new().compress_frame(Codec::Zstd, &payload, &mut bytes));
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        let ok = r.next_message().unwrap();
        assert_eq!(ok.kind(), "hello_ok");
        // Both frames came in one read: the second waits, compressed, for
        // the codec that the first names.
        assert!(matches!(r.ready.front(), Some(Ok(Incoming::Packed(_)))));
        r.set_codec(
            crate::client::ServerHello::from_message(&ok)
                .unwrap()
                .compression,
        );
        let m = r.next_message().unwrap();
        assert_eq!(m.kind(), "broadcast_message");
        assert_eq!(m.raw.as_bytes(), &payload[..]);
        // Later compressed frames are decoded as they are read.
        let mut more = Vec::new();
        assert!(Compressor::new().compress_frame(Codec::Zstd, &payload, &mut more));
        server.write_all(&more).unwrap();
        assert_eq!(r.next_message().unwrap().raw.as_bytes(), &payload[..]);
    }

    #[test]
    fn compressed_frames_are_bounded_and_checked() {
        // Inflating past the client's limit.
        let (client, mut server) = pair();
        let payload = big_json("echo_response");
        let mut bytes = Vec::new();
        assert!(Compressor::new().compress_frame(Codec::Deflate, &payload, &mut bytes));
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1000);
        r.expect_hello();
        r.set_codec(Some(Codec::Deflate));
        let e = r.next_message().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::FrameTooLarge {
                    len: 1001,
                    max: 1000
                }
            ),
            "{e:?}"
        );
        // Garbage.
        let (client, mut server) = pair();
        let mut bytes = (5u32 | COMPRESSED_FLAG).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"junk!");
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        r.set_codec(Some(Codec::Zstd));
        assert!(matches!(r.next_message(), Err(ClientError::Protocol(_))));
        // The flag without a negotiated codec.
        let (client, mut server) = pair();
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        let e = r.next_message().unwrap_err();
        assert!(e.to_string().contains("no codec was negotiated"), "{e}");
        // Without hello the top bit is just a length over the limit.
        let (client, mut server) = pair();
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        assert!(matches!(
            r.next_message(),
            Err(ClientError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn requests_are_compressed_only_over_the_threshold_and_when_smaller() {
        let mut p = Packer::new(Codec::Zstd, 1024);
        let small = request_payload("echo", &Map::new(), 7);
        let mut out = Vec::new();
        p.frame(&small, &mut out);
        assert_eq!(&out[4..], &small[..]);
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()) & COMPRESSED_FLAG,
            0
        );
        let big = big_json("echo");
        let mut out = Vec::new();
        p.frame(&big, &mut out);
        let h = u32::from_be_bytes(out[..4].try_into().unwrap());
        assert_ne!(h & COMPRESSED_FLAG, 0);
        assert!(out.len() < big.len() / 2);
        let mut plain = Vec::new();
        Decompressor::new()
            .decompress(Codec::Zstd, &out[4..], &mut plain, 1 << 20)
            .unwrap();
        assert_eq!(plain, big);
    }
}
