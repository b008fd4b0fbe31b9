//! The operator's HTTP listener (`--http-addr`, alias `--metrics-addr`):
//! `/metrics` (Prometheus text, [`collector`]), `/healthz`, and the JSON
//! API under `/v1/` ([`listing`], [`writes`]); the dashboard at `/`
//! ([`dashboard`]); the route table is [`routes`], what handlers share
//! [`ctx`].
//!
//! It runs hyper 1 (HTTP/1.1 only) on a tokio current-thread runtime on a
//! thread of its own, `ringcast-http`: never on a shard. hyper because it
//! is the HTTP implementation most of the Rust ecosystem runs on (axum,
//! reqwest, …), kept to its HTTP/1 server parts: no router or middleware
//! stack is needed for a dozen routes, and one thread serves every HTTP
//! client, idle or slow ones included, without a thread per connection.
//!
//! Nothing here runs on a shard. Scrapes and listings read the shards'
//! plain counters, or ask the shards through their mailboxes for a copy
//! of what they hold (src/route/control.rs); the hot path pays nothing
//! for the listener but request timing (two clock reads per receive
//! chunk), and only when it is configured.
//!
//! # Limits
//!
//! Each is answered with its status and `{"error":{"code","message"}}`:
//! - [`HEAD_TIMEOUT`] to send a request head (408 if nothing was answered
//!   on the connection yet; an idle keep-alive connection is just closed);
//! - [`BODY_TIMEOUT`] to send the body (408), at most `max_frame_bytes`
//!   of it (413);
//! - `http_max_connections` at once (503 to the next);
//! - `http_rate_limit` requests per second per IP address (429).

mod auth;
mod collector;
mod conn;
mod ctx;
mod dashboard;
mod health;
mod limits;
mod listing;
mod reply;
mod routes;
mod writes;

use super::{ServerError, Shared};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Time a client has to send a request head (from the connection's start,
/// or from the previous response on a kept-alive one).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to send a request's body once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a response has to be written (a client that does not read it is
/// cut).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers): hyper's smallest
/// buffer, and more than any client of this API sends.
pub const MAX_HEAD: usize = 8 * 1024;

/// Binds the listener (a plain socket: no SO_REUSEPORT, so a port already
/// in use is an error, not a silent share).
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => " (something is listening there: pick another --http-addr)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
            _ => "",
        };
        ServerError::Bind(io::Error::new(
            e.kind(),
            format!(
                "cannot listen for metrics on {addr} (the HTTP listener, --http-addr): {e}{hint}"
            ),
        ))
    })
}

/// The running listener thread.
pub(crate) struct HttpEndpoint {
    addr: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl HttpEndpoint {
    /// Starts serving on `listener`.
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<HttpEndpoint> {
        let addr = listener.local_addr()?;
        // fcntl, not std's ioctl(FIONBIO): the seccomp profile refuses ioctl.
        socket2::SockRef::from(&listener).set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-http".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, conn::serve(listener, shared, stopped));
            })?;
        // The message predates the API (tools and tests look for it).
        tracing::info!(addr = %addr, serves = "/metrics /healthz /v1/", "metrics endpoint listening");
        Ok(HttpEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops every connection and joins the thread.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A permit is stored if the loop is not waiting yet.
        self.stop.notify_one();
        let _ = thread.join();
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}
