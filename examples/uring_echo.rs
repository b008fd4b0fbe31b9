//! `uring_echo`: the ceiling for ringcast's echo traffic on this machine.
//!
//! The same shard-per-core layout as `ringcast server` on its io_uring
//! backend, doing no protocol work: one thread per core, each with its own
//! ring ([`ringcast::io::Backend`], the server's own I/O layer: multishot
//! accept, multishot receive into a provided-buffer ring, one gathered
//! `sendmsg` per connection per loop turn) and its own `SO_REUSEPORT`
//! listener. Every length-prefixed frame (4-byte big-endian length, then
//! the payload) is sent back exactly as it arrived: no JSON, no parsing
//! beyond the length prefix, no allocation per frame.
//!
//! ```text
//! cargo run --release --example uring_echo -- --addr 127.0.0.1:9997 --threads N
//! ```
//!
//! `scripts/bench-compare.sh` starts it beside `ringcast server` and the
//! tokio baseline and drives all three with the same generator
//! (`ringcast bench --workload echo`): the generator matches replies to
//! requests in order and takes any frame that starts with `{"type":"` for a
//! reply, so a request echoed back byte for byte counts like an
//! `echo_response`. The one difference on the wire: the ceiling's reply is
//! the request (`{"type":"echo","content":"…"}`), ringcast's is that plus
//! about 60 bytes (`_response`, `timestamp`, `echoed_by`).
//!
//! Framing: bytes are appended to the connection's output buffer as they
//! arrive (the one copy every byte needs, out of the receive buffer that
//! goes back to the kernel), and the length prefixes are walked to find
//! where the complete frames end. Only complete frames are sent, split off
//! that buffer without a copy; a frame cut across receives stays at its
//! tail until the rest arrives. So frames split across receives, many
//! frames per receive and large (64 KiB and up, to `--max-frame-bytes`)
//! frames all cost one copy per byte. A zero or oversized length closes the
//! connection, as ringcast does. While more than 1 MiB waits to be sent to
//! a peer that does not read, its reading is paused (resumed under
//! 256 KiB), as the server's backpressure does.
//!
//! Not a server: no auth, no limits beyond those, no graceful stop
//! (SIGTERM ends it).

use bytes::BytesMut;
use clap::Parser;
use ringcast::io::{Backend, Event, Kind, ListenerId, Options, Segment, SendBatch, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Pause reading a connection while this much output is unsent.
const HIGH_WATER: usize = 1 << 20;
/// Resume below this.
const LOW_WATER: usize = 256 << 10;

#[derive(Debug, Parser)]
#[command(
    name = "uring_echo",
    about = "io_uring length-prefixed frame echo: the ceiling for ringcast's echo traffic"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9997")]
    addr: SocketAddr,
    /// Threads, one ring and one listener each (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Pin thread i to core i (ringcast's default; off as in bench-compare).
    #[arg(long)]
    pin: bool,
    /// Largest payload accepted (ringcast's default).
    #[arg(long, default_value_t = ringcast::protocol::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Receive buffers per ring (ringcast's default).
    #[arg(long, default_value_t = 512)]
    recv_buffers: u16,
    /// Bytes per receive buffer (ringcast's default).
    #[arg(long, default_value_t = 32 * 1024)]
    recv_buffer_size: usize,
    /// Submission queue entries (ringcast's default).
    #[arg(long, default_value_t = 4096)]
    ring_entries: u32,
}

/// One connection: what arrived and is not sent yet.
struct Conn {
    /// Received bytes not yet handed to a send: complete frames first,
    /// then at most one incomplete frame.
    buf: BytesMut,
    /// Where the complete frames in `buf` end.
    ready: usize,
    /// A send is in flight (at most one per connection).
    sending: bool,
    /// Bytes in the send in flight.
    inflight: usize,
    /// Reading as last told to the backend.
    reading: bool,
    /// Closing: no more sends.
    closing: bool,
    /// Queued in `dirty` this turn.
    dirty: bool,
}

impl Conn {
    /// Appends a received chunk and walks the length prefixes past every
    /// frame that is now complete. Err on a zero or oversized length.
    fn receive(&mut self, chunk: &[u8], max: usize) -> Result<(), ()> {
        self.buf.extend_from_slice(chunk);
        loop {
            let rest = &self.buf[self.ready..];
            let Some(h) = rest.first_chunk::<4>() else {
                return Ok(());
            };
            let len = u32::from_be_bytes(*h) as usize;
            if len == 0 || len > max {
                return Err(());
            }
            if rest.len() - 4 < len {
                return Ok(());
            }
            self.ready += 4 + len;
        }
    }

    /// Unsent bytes (ready, incomplete and in flight), for backpressure.
    fn unsent(&self) -> usize {
        self.buf.len() + self.inflight
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// One shard: its ring, its listener, its connections.
fn shard(listener: TcpListener, opts: Options, max_frame: usize) -> io::Result<()> {
    let mut backend =
        Backend::new(Kind::Uring, &opts, None).map_err(|e| io::Error::other(e.explanation))?;
    backend.listen(listener, ListenerId(0))?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut dirty: Vec<usize> = Vec::new();
    let mut pending: Vec<(usize, Pending)> = Vec::new();
    let mut close: Vec<usize> = Vec::new();
    let mut spare: Vec<SendBatch> = Vec::new();
    loop {
        // One gathered send per connection with complete frames and none in
        // flight; everything queued here is submitted by the next poll.
        for key in dirty.drain(..) {
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.closing {
                continue;
            }
            if !c.sending && c.ready > 0 {
                let frames = c.buf.split_to(c.ready).freeze();
                c.ready = 0;
                c.inflight = frames.len();
                let mut batch = spare.pop().unwrap_or_default();
                batch.segments.push_back(Segment::Shared(frames));
                c.sending = true;
                backend.send(Token(key), batch)?;
            }
            let want = c.unsent() < if c.reading { HIGH_WATER } else { LOW_WATER };
            if want != c.reading {
                c.reading = want;
                backend.set_reading(Token(key), want)?;
            }
        }
        backend.poll(Some(Duration::from_secs(1)), |ev| {
            let key = match ev {
                Event::Accepted(stream, _) => {
                    let _ = stream.set_nodelay(true);
                    let key = conns.insert(Conn {
                        buf: BytesMut::with_capacity(16 << 10),
                        ready: 0,
                        sending: false,
                        inflight: 0,
                        reading: true,
                        closing: false,
                        dirty: false,
                    });
                    pending.push((key, Pending::Add(stream)));
                    return;
                }
                Event::AcceptFailed(e) => {
                    eprintln!("uring_echo: accept failed ({e}); retrying in a second");
                    return;
                }
                Event::Data(Token(key), data) => {
                    let c = &mut conns[key];
                    if c.closing {
                        return;
                    }
                    if c.receive(data, max_frame).is_err() {
                        c.closing = true;
                        close.push(key);
                        return;
                    }
                    key
                }
                Event::Sent(Token(key), mut batch, r) => {
                    let c = &mut conns[key];
                    match r {
                        Ok(n) => {
                            batch.advance(n, drop);
                            c.inflight -= n;
                            if !batch.is_empty() {
                                // Short send: the rest goes first, now.
                                if !c.closing {
                                    pending.push((key, Pending::Resend(batch)));
                                }
                                return;
                            }
                        }
                        Err(_) => {
                            batch.clear(drop);
                            c.inflight = 0;
                            if !c.closing {
                                c.closing = true;
                                close.push(key);
                            }
                        }
                    }
                    c.sending = false;
                    spare.push(batch);
                    key
                }
                Event::Eof(Token(key)) | Event::Failed(Token(key), _) => {
                    let c = &mut conns[key];
                    if !c.closing {
                        c.closing = true;
                        close.push(key);
                    }
                    return;
                }
                Event::Closed(Token(key)) => {
                    conns.remove(key);
                    return;
                }
            };
            let c = &mut conns[key];
            if !c.dirty {
                c.dirty = true;
                dirty.push(key);
            }
        })?;
        for (key, what) in pending.drain(..) {
            match what {
                Pending::Add(stream) => {
                    backend.add(Token(key), stream)?;
                }
                Pending::Resend(batch) => backend.send(Token(key), batch)?,
            }
        }
        for key in close.drain(..) {
            backend.close(Token(key))?;
        }
        backend.tick()?;
    }
}

/// Work found during a poll and done after it (the backend is borrowed
/// while its events are handled).
enum Pending {
    /// A connection accepted during the poll.
    Add(std::net::TcpStream),
    /// The rest of a short send, resent before anything newer.
    Resend(SendBatch),
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let opts = Options {
        recv_buffers: args.recv_buffers,
        recv_buffer_size: args.recv_buffer_size,
        ring_entries: args.ring_entries,
    };
    let first = bind(args.addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(bind(addr)?);
    }
    let cores = if args.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let max_frame = args.max_frame_bytes;
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let core = cores.get(i % cores.len().max(1)).copied();
            std::thread::Builder::new()
                .name(format!("uring-echo-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    shard(l, opts, max_frame)
                })
        })
        .collect::<io::Result<_>>()?;
    println!(
        "uring_echo listening on {addr} ({threads} threads, pinned: {})",
        args.pin
    );
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("a shard panicked")),
        }
    }
    Ok(())
}
