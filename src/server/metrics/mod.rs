//! The metrics endpoint's HTTP side: `GET /metrics` in the Prometheus text
//! exposition format (version 0.0.4) and `GET /healthz`, over a minimal
//! HTTP/1.1 responder on a thread of its own (`--metrics-addr`, off by
//! default). What a scrape reads is [`collector`].
//!
//! Nothing here runs on a shard. The shards keep writing their plain
//! single-writer counters ([`super::stats`]); a scrape reads them through a
//! prometheus-client [`Collector`], so there is no second set of metric
//! objects to keep in step and the hot path pays nothing for the endpoint.
//! The one cost the endpoint adds to the shards is request timing (two
//! clock reads and two stores per receive chunk, not per request), and only
//! when it is configured.
//!
//! The responder serves one connection at a time, closes every connection
//! after its response, and gives a client [`IO_TIMEOUT`] to send its request
//! head and another to read the response (one deadline for all of it, not
//! per write), plus a short linger: a stuck or slow client holds the thread
//! for at most about 4.2 s, and delays scrapes queued behind it by as much.
//! At stop the listener is shut down, which ends the blocked `accept`.

mod collector;

use super::{ServerError, Shared};
use collector::ShardCollector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time a client has to send its request head; also the write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// How long a response waits for the client to close before closing anyway.
const LINGER: Duration = Duration::from_millis(200);
/// Input discarded while lingering, at most.
const MAX_LINGER_BYTES: usize = 64 * 1024;
/// Content type of every answer but the metrics.
const TEXT: &str = "text/plain; charset=utf-8";

/// Binds the endpoint's listener (a plain blocking socket: no
/// SO_REUSEPORT, so a port already in use is an error, not a silent share).
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (something is listening there: pick another --metrics-addr)"
            }
            io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
            _ => "",
        };
        ServerError::Bind(io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}{hint}"),
        ))
    })
}

/// The running endpoint thread.
pub(crate) struct MetricsEndpoint {
    addr: SocketAddr,
    /// A second handle on the listening socket, to shut it down at stop.
    listener: TcpListener,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Starts serving on `listener`.
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<MetricsEndpoint> {
        let addr = listener.local_addr()?;
        let handle = listener.try_clone()?;
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-metrics".into())
            .spawn(move || serve(listener, shared, flag))?;
        tracing::info!(addr = %addr, "metrics endpoint listening (/metrics, /healthz)");
        Ok(MetricsEndpoint {
            addr,
            listener: handle,
            closing,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets a response in progress finish (bounded by
    /// twice [`IO_TIMEOUT`] plus the linger) and joins the thread.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.closing.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept (EINVAL)
        // and refuses new connections; closing our handle alone would not,
        // since the thread holds the same socket.
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        let _ = thread.join();
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The endpoint thread's body.
fn serve(listener: TcpListener, shared: Arc<Shared>, closing: Arc<AtomicBool>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ShardCollector::new(shared.clone())));
    let mut body = String::with_capacity(16 * 1024);
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = respond(stream, &registry, &shared, &mut body) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What the request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    /// `GET /`: the dashboard page.
    Dashboard,
    /// `GET /v1/stats`: what `get_stats` answers.
    Stats,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (everything up to the blank line). Returns the
/// route and whether the method was HEAD (headers only).
fn route(head: &[u8]) -> (Route, bool) {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return (Route::BadRequest, false);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Route::MethodNotAllowed, false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/" => Route::Dashboard,
        "/v1/stats" => Route::Stats,
        _ => Route::NotFound,
    };
    (route, head_only)
}

/// Where the request head ends (after the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i + 4);
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Reads one request from `stream` and answers it, then closes.
fn respond(
    mut stream: TcpStream,
    registry: &Registry,
    shared: &Shared,
    body: &mut String,
) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    let (route, head_only) = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break route(&buf[..end]);
        }
        if len == buf.len() {
            return write_response(
                &mut stream,
                "431 Request Header Fields Too Large",
                TEXT,
                b"request head too large\n",
                false,
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = left.is_zero() || {
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf[len..]) {
                Ok(0) => return Ok(()), // gone before asking anything
                Ok(n) => {
                    len += n;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    true
                }
                Err(e) => return Err(e),
            }
        };
        if timed_out {
            let status = "408 Request Timeout";
            return write_response(&mut stream, status, TEXT, b"request timeout\n", false);
        }
    };
    match route {
        Route::Metrics => {
            body.clear();
            if prometheus_text::encode(body, registry).is_err() {
                return write_response(
                    &mut stream,
                    "500 Internal Server Error",
                    TEXT,
                    b"encoding failed\n",
                    head_only,
                );
            }
            write_response(
                &mut stream,
                "200 OK",
                prometheus_text::CONTENT_TYPE,
                body.as_bytes(),
                head_only,
            )
        }
        Route::Healthz => {
            if shared.stop.load(Ordering::Relaxed) {
                write_response(
                    &mut stream,
                    "503 Service Unavailable",
                    TEXT,
                    b"shutting down\n",
                    head_only,
                )
            } else if shared.failed_shards.load(Ordering::Relaxed) > 0 {
                write_response(
                    &mut stream,
                    "503 Service Unavailable",
                    TEXT,
                    b"a shard stopped on an I/O error (see the log)\n",
                    head_only,
                )
            } else if shared.cluster().is_some_and(|c| !c.threads_alive()) {
                // Still serving its own clients: not a reason to restart it.
                write_response(
                    &mut stream,
                    "200 OK",
                    TEXT,
                    b"degraded: a cluster backplane thread died and is being restarted (see the log)\n",
                    head_only,
                )
            } else if shared.cluster().is_some_and(|c| !c.is_up()) {
                write_response(
                    &mut stream,
                    "200 OK",
                    TEXT,
                    b"degraded: the cluster backplane is unreachable; delivering locally\n",
                    head_only,
                )
            } else {
                write_response(&mut stream, "200 OK", TEXT, b"ok\n", head_only)
            }
        }
        Route::Dashboard => write_response(
            &mut stream,
            "200 OK",
            super::http::dashboard::CONTENT_TYPE,
            super::http::dashboard::PAGE.as_bytes(),
            head_only,
        ),
        Route::Stats => {
            let now_ms = crate::protocol::time::unix_ms_now();
            let now = crate::protocol::time::TimestampCache::new()
                .format(now_ms)
                .to_string();
            let mut frame = Vec::with_capacity(2048);
            crate::route::report::write_stats(
                &shared.router,
                &crate::route::report::RssReader::new(),
                &mut Vec::new(),
                &mut frame,
                None,
                &now,
                now_ms,
            );
            // The frame's 4-byte length prefix is not part of the JSON.
            write_response(
                &mut stream,
                "200 OK",
                "application/json",
                &frame[4..],
                head_only,
            )
        }
        Route::NotFound => write_response(
            &mut stream,
            "404 Not Found",
            TEXT,
            b"not found: try /metrics or /healthz\n",
            head_only,
        ),
        Route::MethodNotAllowed => write_response(
            &mut stream,
            "405 Method Not Allowed",
            TEXT,
            b"only GET and HEAD\n",
            false,
        ),
        Route::BadRequest => write_response(
            &mut stream,
            "400 Bad Request",
            TEXT,
            b"bad request\n",
            false,
        ),
    }
}

/// Writes all of `bytes` before `deadline`, or fails with `TimedOut`.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "metrics client too slow to read its response",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a complete response (within [`IO_TIMEOUT`]) and closes our side.
fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if content_type == super::http::dashboard::CONTENT_TYPE {
        head.push_str("Content-Security-Policy: ");
        head.push_str(super::http::dashboard::CONTENT_SECURITY_POLICY);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // One deadline for the whole response: a write timeout alone bounds
    // each send(2), and a client reading a few bytes at a time could hold
    // the thread (and the server's stop) for as long as it liked.
    let deadline = Instant::now() + IO_TIMEOUT;
    write_all_by(stream, head.as_bytes(), deadline)?;
    if !head_only {
        write_all_by(stream, body, deadline)?;
    }
    stream.shutdown(Shutdown::Write)?;
    // Lingering close: closing with unread input (a rejected head, a
    // pipelined request) would send a reset that can destroy the response
    // before the client reads it; wait briefly for the client's close.
    stream.set_read_timeout(Some(LINGER))?;
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES && Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(r("GET /metrics HTTP/1.1\r\n\r\n"), (Route::Metrics, false));
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(r("HEAD /healthz HTTP/1.1\r\n\r\n"), (Route::Healthz, true));
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), (Route::NotFound, false));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            (Route::MethodNotAllowed, false)
        );
        assert_eq!(r("GET /metrics\r\n\r\n"), (Route::BadRequest, false));
        assert_eq!(r("GET /metrics HTTP/2\r\n\r\n"), (Route::BadRequest, false));
        assert_eq!(
            r("GET metrics HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
        assert_eq!(
            r("GET  /metrics HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
        assert_eq!(
            route(b"GET /\xff HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
    }

    #[test]
    fn head_ends_at_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    }
}
