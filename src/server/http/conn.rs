//! Accepting and serving HTTP connections: the connection cap, hyper's
//! HTTP/1 server with the head deadline, the write deadline, and the 408
//! a client gets when it never finishes its first request head.

use super::ctx::Ctx;
use super::reply::{error_body, ErrorCode as Http};
use super::routes;
use super::{HEAD_TIMEOUT, MAX_HEAD, WRITE_TIMEOUT};
use crate::server::Shared;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long a refused or timed-out connection may take to read its short
/// answer before it is closed anyway; input left is read and dropped
/// meanwhile, so the close sends no reset that would destroy the answer.
const LINGER: Duration = Duration::from_millis(500);

/// The listener thread's body: accepts until `stop` is notified.
pub(super) async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, stop: Arc<Notify>) {
    let bound = listener.local_addr().ok();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "HTTP listener could not start");
            return;
        }
    };
    let ctx = Rc::new(Ctx::new(shared, bound));
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = tokio::select! {
            _ = stop.notified() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if open.get() >= ctx.max_connections {
                    tokio::task::spawn_local(refuse(stream));
                    continue;
                }
                open.set(open.get() + 1);
                let guard = Open(open.clone());
                tokio::task::spawn_local(connection(stream, peer, ctx.clone(), guard));
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Holds one of the `http_max_connections` slots while it lives.
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Serves one connection until it closes, times out or breaks.
async fn connection(stream: TcpStream, peer: SocketAddr, ctx: Rc<Ctx>, _slot: Open) {
    let _ = stream.set_nodelay(true);
    // A second descriptor on the socket, to answer 408 once hyper has
    // given up on a head that never came (hyper closes silently).
    let spare = socket2::SockRef::from(&stream).try_clone().ok();
    let answered = Rc::new(Cell::new(0u64));
    let service = {
        let (ctx, answered) = (ctx.clone(), answered.clone());
        hyper::service::service_fn(move |req| {
            answered.set(answered.get() + 1);
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(&ctx, peer, req).await) }
        })
    };
    let io = Deadlined {
        io: TokioIo::new(stream),
        write_deadline: None,
    };
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service)
        .await;
    match r {
        Ok(()) => {}
        Err(e) if e.is_timeout() && answered.get() == 0 => {
            if let Some(s) = spare {
                let body = error_body(Http::RequestTimeout, "no complete request head in time");
                answer_and_close(s.into(), 408, "Request Timeout", &body).await;
            }
        }
        Err(e) => tracing::debug!(peer = %peer, error = %e, "HTTP connection ended"),
    }
}

/// A connection over `http_max_connections`: 503 and close.
async fn refuse(stream: TcpStream) {
    let body = error_body(
        Http::TooManyConnections,
        "the HTTP listener is at http_max_connections; retry shortly",
    );
    if let Ok(s) = stream.into_std() {
        answer_and_close(s, 503, "Service Unavailable", &body).await;
    }
}

/// Writes a whole `Connection: close` JSON answer (within [`LINGER`]),
/// sends our FIN, and drops what the client still sends until it closes
/// or the linger ends.
async fn answer_and_close(s: std::net::TcpStream, status: u16, reason: &str, body: &str) {
    // fcntl, not std's ioctl(FIONBIO): the seccomp profile refuses ioctl.
    let nonblocking = socket2::SockRef::from(&s).set_nonblocking(true);
    let Ok(mut s) = nonblocking.and_then(|()| TcpStream::from_std(s)) else {
        return;
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(LINGER, async {
        s.write_all(answer.as_bytes()).await?;
        s.shutdown().await?;
        let mut sink = [0u8; 4096];
        while s.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A connection's I/O with a write deadline: a write that cannot progress
/// for [`WRITE_TIMEOUT`] (a client that does not read its response) fails,
/// which ends the connection. Reads are bounded by hyper's head deadline
/// and the routes' body deadline.
struct Deadlined<T> {
    io: T,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Deadlined<T> {
    /// Turns a pending write into a timeout once it has waited too long.
    fn stalled<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let d = self
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
                match d.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "HTTP client did not read its response",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: Read + Unpin> Read for Deadlined<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Deadlined<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stalled(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stalled(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.stalled(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stalled(cx, r)
    }
}
