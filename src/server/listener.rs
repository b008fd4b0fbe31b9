//! Listening sockets: one per shard, all bound to the same address with
//! SO_REUSEPORT so the kernel spreads incoming connections over the shards.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// Binds a non-blocking listener on `addr` with SO_REUSEPORT, SO_REUSEADDR
/// and TCP_NODELAY (inherited by accepted sockets on Linux).
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// Binds `n` listeners on one address. With port 0 the first picks a free
/// port and the others join it.
pub fn bind_all(addr: SocketAddr, n: usize, backlog: i32) -> io::Result<Vec<TcpListener>> {
    let first = bind(addr, backlog).map_err(|e| explain_bind(addr, e))?;
    let actual = first.local_addr()?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind(actual, backlog).map_err(|e| explain_bind(actual, e))?);
    }
    Ok(v)
}

fn explain_bind(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process is listening there: stop it, or pick another --addr)"
        }
        io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
}
