//! `tokio-baseline`: the ringcast protocol served the way a competent Rust
//! user would write it without io_uring — tokio's multi-thread runtime,
//! tokio-util's `LengthDelimitedCodec` and serde_json.
//!
//! It is the honest yardstick for ringcast's benchmarks. `bench-compare`
//! starts this example on one address and `ringcast server` on another, runs
//! the same load generator (`ringcast bench`) against each with the same
//! workload, and reports the two side by side:
//!
//! ```text
//! cargo run --release --example tokio_baseline -- --addr 127.0.0.1:9998 [--threads N]
//!     [--tls-addr 127.0.0.1:9443 --tls-cert cert.pem --tls-key key.pem]
//! ```
//!
//! TLS, like ringcast's `--tls-addr` (so a bench script gives both servers
//! the same flags): with `--tls-addr`, `--tls-cert` and `--tls-key` (PEM,
//! full chain first), a second listener serves the same protocol over TLS
//! beside the plain one, sharing one client registry (a broadcast reaches
//! plain and TLS clients). It is tokio-rustls, what a Rust user would
//! write: the same rustls 0.23 and crypto settings as `ringcast server`
//! (`ringcast::tls::server_provider()`: aws-lc-rs, AES-128-GCM preferred
//! over the client's order, so both negotiate the same cipher suite and
//! the comparison measures the transport, not the cipher), TLS 1.3 and
//! 1.2, rustls's other defaults, the handshake run in the connection's
//! task (cut after 10 s), then the very same per-connection code over the
//! `TlsStream` (`tokio::io::split` into a read and a write half).
//!
//! Protocol (see docs/PROTOCOL.md and `ringcast::protocol::message`): each
//! frame is a 4-byte big-endian length and a JSON object of at most 1 MiB.
//! `ping` → `pong`, `echo` → `echo_response`, `broadcast` → `broadcast_sent`
//! (and `broadcast_message` to every other client), `get_stats` →
//! `server_stats`, `message` → `message_ack`, anything else → an `error`
//! frame. A request's scalar `id` is copied into its response.
//!
//! Design, chosen to be competitive rather than a strawman:
//! - one task per connection, `TCP_NODELAY`, the socket split into a
//!   `FramedRead` and a `FramedWrite`;
//! - every frame already buffered is handled before one flush: responses
//!   are `feed`-ed and the socket is flushed once per batch;
//! - requests are parsed into a borrowed `#[derive(Deserialize)]` struct
//!   (`content`, `id` and `timestamp` are `&RawValue`, passed through
//!   untouched); responses are derived structs serialized into a reused
//!   per-connection buffer, so a response allocates nothing;
//! - broadcasts: a registry of per-client unbounded mpsc senders; the
//!   `broadcast_message` is serialized once into `Bytes` and each other
//!   client's task receives a clone, drains its channel and flushes once;
//! - counters are atomics, and the message counter is bumped once per batch;
//! - the timestamp is formatted once per batch;
//! - the connection code is generic over `AsyncRead + AsyncWrite`: plain
//!   TCP passes the socket's borrowed halves, TLS the split `TlsStream`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Largest request payload accepted.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// What `echo_response` says in `echoed_by`.
const SERVER_NAME: &str = "tokio-baseline";

/// Write buffer size past which `feed` flushes on its own.
const WRITE_BACKPRESSURE: usize = 64 * 1024;

/// A TLS handshake not done by then is cut.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "tokio_baseline",
    about = "tokio + LengthDelimitedCodec + serde_json baseline server"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9999")]
    addr: SocketAddr,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Address of the TLS listener (beside the plain one).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_addr: Option<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_addr")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_addr")]
    tls_key: Option<PathBuf>,
}

// ---------------------------------------------------------------- requests

/// A request, borrowed from the frame. Unknown fields are ignored.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
}

/// Keeps a field that is present as `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn is_scalar(v: &RawValue) -> bool {
    !matches!(v.get().as_bytes().first(), Some(b'{' | b'['))
}

// --------------------------------------------------------------- responses

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ping_timestamp: Option<&'a RawValue>,
    pong_timestamp: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct EchoResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    content: Option<&'a RawValue>,
    timestamp: &'a str,
    echoed_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct BroadcastSent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    recipients: u64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct BroadcastMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    content: Option<&'a RawValue>,
    from: &'a str,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct ServerStats<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    connected_clients: u64,
    uptime_seconds: u64,
    total_messages: u64,
    server_start_time: &'a str,
    current_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct MessageAck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

/// An `error` frame. `I` is the id's type: `&RawValue` on the fast path,
/// `&Value` when the payload had to be re-parsed to find out what is wrong.
#[derive(Serialize)]
struct ErrorResponse<'a, I: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<I>,
}

fn error<'a, I: Serialize>(
    code: &'static str,
    message: &'a str,
    request_type: Option<&'a str>,
    id: Option<I>,
) -> ErrorResponse<'a, I> {
    ErrorResponse {
        kind: "error",
        code,
        message,
        request_type,
        id,
    }
}

// ------------------------------------------------------------ shared state

struct Shared {
    /// Every connected client's queue of server-pushed frames.
    clients: RwLock<HashMap<u64, mpsc::UnboundedSender<Bytes>>>,
    next_client: AtomicU64,
    connected: AtomicU64,
    total_messages: AtomicU64,
    started: Instant,
    start_time: String,
}

/// Removes a client from the registry however its task ends.
struct Registration {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared
            .clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ------------------------------------------------------------- connection

type Reader<R> = FramedRead<R, LengthDelimitedCodec>;
type Writer<W> = FramedWrite<W, LengthDelimitedCodec>;

/// Per-connection state used while answering requests.
struct Conn {
    key: u64,
    client_id: String,
    shared: Arc<Shared>,
    /// Reused serialization buffer for responses.
    out: Vec<u8>,
}

/// Whether to keep the connection after a frame.
enum Next {
    Continue,
    Close,
}

/// A plain TCP connection.
async fn serve_plain(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.split();
    serve(rd, wr, peer, shared).await;
}

/// A TLS connection: the handshake, then the same code as plain TCP.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let _ = stream.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        // A failed or stalled handshake: rustls has sent its alert.
        _ => return,
    };
    let (rd, wr) = tokio::io::split(stream);
    serve(rd, wr, peer, shared).await;
}

/// Serves one connection, plain or TLS, from its read and write halves.
async fn serve<R, W>(rd: R, wr: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let key = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    shared
        .clients
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, tx);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let _registration = Registration {
        shared: shared.clone(),
        key,
    };

    let mut reader = FramedRead::new(
        rd,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_BYTES)
            .new_codec(),
    );
    // Responses may exceed the request limit (an echo of a 1 MiB content).
    let mut writer = FramedWrite::new(
        wr,
        LengthDelimitedCodec::builder()
            .max_frame_length(u32::MAX as usize)
            .new_codec(),
    );
    writer.set_backpressure_boundary(WRITE_BACKPRESSURE);
    let mut conn = Conn {
        key,
        client_id: peer.to_string(),
        shared,
        out: Vec::with_capacity(512),
    };

    // I/O errors here mean the peer went away: nothing to report to it.
    let _ = conn.run(&mut reader, &mut writer, &mut rx).await;
    // TLS: close_notify (plain: FIN) before the socket closes; bounded,
    // as a peer that stopped reading could hold it forever.
    let mut wr = writer.into_inner();
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// Serializes `resp` into the reused buffer `out` and queues it as a frame.
async fn send<T: Serialize, W: AsyncWrite + Unpin>(
    out: &mut Vec<u8>,
    writer: &mut Writer<W>,
    resp: &T,
) -> io::Result<()> {
    out.clear();
    serde_json::to_writer(&mut *out, resp)?;
    writer.feed(out.as_slice()).await
}

impl Conn {
    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut Reader<R>,
        writer: &mut Writer<W>,
        rx: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> io::Result<()> {
        loop {
            tokio::select! {
                first = reader.next() => {
                    let Some(first) = first else { return Ok(()) };
                    let next = self.batch(first, reader, writer).await?;
                    // Broadcasts that queued meanwhile ride the same flush.
                    while let Ok(frame) = rx.try_recv() {
                        writer.feed(frame).await?;
                    }
                    SinkExt::<Bytes>::flush(writer).await?;
                    if let Next::Close = next {
                        return Ok(());
                    }
                }
                Some(frame) = rx.recv() => {
                    writer.feed(frame).await?;
                    while let Ok(frame) = rx.try_recv() {
                        writer.feed(frame).await?;
                    }
                    SinkExt::<Bytes>::flush(writer).await?;
                }
            }
        }
    }

    /// Answers `first` and every further frame that is ready without
    /// waiting; the caller flushes once afterwards.
    async fn batch<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        first: io::Result<bytes::BytesMut>,
        reader: &mut Reader<R>,
        writer: &mut Writer<W>,
    ) -> io::Result<Next> {
        let now = now_timestamp();
        let mut handled = 0u64;
        let mut item = Some(first);
        let mut next = Next::Continue;
        while let Some(frame) = item.take() {
            match frame {
                Ok(payload) => {
                    handled += 1;
                    if let Next::Close = self.frame(&payload, &now, &mut handled, writer).await? {
                        next = Next::Close;
                        break;
                    }
                }
                Err(e) => {
                    // The codec refused a header: the stream is out of step.
                    if e.kind() == io::ErrorKind::InvalidData {
                        let msg = "frame length exceeds the limit of 1048576 bytes";
                        let resp = error::<&RawValue>("frame_too_large", msg, None, None);
                        send(&mut self.out, writer, &resp).await?;
                    }
                    next = Next::Close;
                    break;
                }
            }
            // Take the next frame only if it is already here (buffered, or
            // readable without blocking); otherwise end the batch and flush.
            match reader.next().now_or_never() {
                Some(Some(frame)) => item = Some(frame),
                Some(None) => next = Next::Close,
                None => {}
            }
        }
        self.shared
            .total_messages
            .fetch_add(handled, Ordering::Relaxed);
        Ok(next)
    }

    /// Answers one frame. `handled` counts this batch's messages not yet
    /// added to the shared total (`get_stats` adds them first).
    async fn frame<W: AsyncWrite + Unpin>(
        &mut self,
        payload: &[u8],
        now: &str,
        handled: &mut u64,
        writer: &mut Writer<W>,
    ) -> io::Result<Next> {
        if payload.is_empty() {
            let resp = error::<&RawValue>("empty_frame", "frame length is zero", None, None);
            send(&mut self.out, writer, &resp).await?;
            return Ok(Next::Close);
        }
        let req: Request<'_> = match serde_json::from_slice(payload) {
            Ok(req) => req,
            Err(e) => {
                self.reject(payload, &e, writer).await?;
                return Ok(Next::Continue);
            }
        };
        let id = req.id;
        if id.is_some_and(|id| !is_scalar(id)) {
            let msg = "id must be a JSON scalar (string, number, bool or null)";
            let resp = error::<&RawValue>("invalid_field", msg, Some(&req.kind), None);
            send(&mut self.out, writer, &resp).await?;
            return Ok(Next::Continue);
        }
        let needs_content = matches!(&*req.kind, "echo" | "broadcast" | "message");
        if needs_content && req.content.is_none() {
            let msg = "this message type needs a content field";
            let resp = error("invalid_field", msg, Some(&req.kind), id);
            send(&mut self.out, writer, &resp).await?;
            return Ok(Next::Continue);
        }
        match &*req.kind {
            "ping" => {
                let resp = Pong {
                    kind: "pong",
                    ping_timestamp: req.timestamp,
                    pong_timestamp: now,
                    client_id: &self.client_id,
                    id,
                };
                send(&mut self.out, writer, &resp).await?;
            }
            "echo" => {
                let resp = EchoResponse {
                    kind: "echo_response",
                    content: req.content,
                    timestamp: now,
                    echoed_by: SERVER_NAME,
                    id,
                };
                send(&mut self.out, writer, &resp).await?;
            }
            "broadcast" => {
                let recipients = self.broadcast(req.content, now)?;
                let resp = BroadcastSent {
                    kind: "broadcast_sent",
                    recipients,
                    timestamp: now,
                    id,
                };
                send(&mut self.out, writer, &resp).await?;
            }
            "get_stats" => {
                let s = &self.shared;
                let total = s.total_messages.fetch_add(*handled, Ordering::Relaxed) + *handled;
                *handled = 0;
                let current = now_timestamp();
                let resp = ServerStats {
                    kind: "server_stats",
                    connected_clients: s.connected.load(Ordering::Relaxed),
                    uptime_seconds: s.started.elapsed().as_secs(),
                    total_messages: total,
                    server_start_time: &s.start_time,
                    current_time: &current,
                    id,
                };
                send(&mut self.out, writer, &resp).await?;
            }
            "message" => {
                let resp = MessageAck {
                    kind: "message_ack",
                    timestamp: now,
                    id,
                };
                send(&mut self.out, writer, &resp).await?;
            }
            other => {
                let resp = error("unknown_type", "unknown message type", Some(other), id);
                send(&mut self.out, writer, &resp).await?;
            }
        }
        Ok(Next::Continue)
    }

    /// Queues one `broadcast_message` to every other client; returns how many
    /// took it.
    fn broadcast(&mut self, content: Option<&RawValue>, now: &str) -> io::Result<u64> {
        let msg = BroadcastMessage {
            kind: "broadcast_message",
            content,
            from: &self.client_id,
            timestamp: now,
        };
        let frame = Bytes::from(serde_json::to_vec(&msg)?);
        let clients = self
            .shared
            .clients
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let sent = clients
            .iter()
            .filter(|(k, tx)| **k != self.key && tx.send(frame.clone()).is_ok())
            .count();
        Ok(sent as u64)
    }

    /// Slow path for a payload that is not a well-formed request: re-parse
    /// it as a `Value` to say precisely what is wrong.
    async fn reject<W: AsyncWrite + Unpin>(
        &mut self,
        payload: &[u8],
        fast_err: &serde_json::Error,
        writer: &mut Writer<W>,
    ) -> io::Result<()> {
        let Ok(root) = serde_json::from_slice::<Value>(payload) else {
            let msg = "payload is not valid UTF-8 JSON";
            return send(
                &mut self.out,
                writer,
                &error::<&Value>("invalid_json", msg, None, None),
            )
            .await;
        };
        let Some(obj) = root.as_object() else {
            let msg = "a message must be a JSON object";
            return send(
                &mut self.out,
                writer,
                &error::<&Value>("not_an_object", msg, None, None),
            )
            .await;
        };
        let id = obj.get("id").filter(|v| !v.is_object() && !v.is_array());
        let resp = match obj.get("type") {
            None => error(
                "missing_type",
                "a message needs a string type field",
                None,
                id,
            ),
            Some(Value::String(t)) => {
                // Well-formed but refused by the derive (e.g. a duplicate field).
                let msg = fast_err.to_string();
                let resp = error("invalid_field", &msg, Some(t), id);
                return send(&mut self.out, writer, &resp).await;
            }
            Some(_) => error("missing_type", "the type field must be a string", None, id),
        };
        send(&mut self.out, writer, &resp).await
    }
}

// ------------------------------------------------------------------- main

/// Accepts plain connections, or TLS ones with an `acceptor`.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match &acceptor {
                None => {
                    tokio::spawn(serve_plain(stream, peer, shared.clone()));
                }
                Some(a) => {
                    tokio::spawn(serve_tls(stream, peer, shared.clone(), a.clone()));
                }
            },
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("tokio-baseline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The TLS acceptor for `--tls-cert` and `--tls-key`: ringcast's server
/// provider and suite order (aws-lc-rs, AES-128-GCM first), TLS 1.3 and
/// 1.2, no client authentication, otherwise rustls's defaults (as
/// `ringcast server` builds its config).
fn tls_acceptor(cert: &Path, key: &Path) -> io::Result<tokio_rustls::TlsAcceptor> {
    let bad =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let chain = ringcast::tls::load_certs(cert).map_err(|e| bad(&e))?;
    let key = ringcast::tls::load_key(key).map_err(|e| bad(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(ringcast::tls::server_provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(&e))?;
    config.ignore_client_order = true;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    runtime.block_on(async {
        let listener = TcpListener::bind(args.addr).await?;
        let addr = listener.local_addr()?;
        let tls_listener = match args.tls_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let shared = Arc::new(Shared {
            clients: RwLock::new(HashMap::new()),
            next_client: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            total_messages: AtomicU64::new(0),
            started: Instant::now(),
            start_time: now_timestamp(),
        });
        println!("tokio-baseline listening on {addr} ({threads} threads)");
        if let (Some(l), Some(a)) = (tls_listener, acceptor) {
            println!("tokio-baseline listening for TLS on {}", l.local_addr()?);
            tokio::spawn(accept_loop(l, shared.clone(), Some(a)));
        }
        tokio::select! {
            _ = accept_loop(listener, shared, None) => {}
            _ = shutdown_signal() => eprintln!("tokio-baseline: shutting down"),
        }
        Ok::<(), io::Error>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
