//! One load-generator thread: its own I/O backend (the server's seam,
//! io_uring or epoll), many connections ([`Conn`]), closed or open loop.
//!
//! Each loop turn: start the sends queued last turn, wait for and handle
//! the backend's events (issuing a request per reply, closed loop), set up
//! again the connections the server closed, issue what is due (open loop),
//! and decide whether the run is over. Every request queued in a turn is
//! stamped with that turn's clock reading; requests queued in one turn
//! leave in one `sendmsg`.

use super::conn::{Conn, RecvBuffers, SendBuffers};
use super::plan::{Outcome, Plan};
use super::replies::Tally;
use super::report::WireBytes;
use super::requests::RequestWriter;
use super::setup::connect_slot;
use super::tls::BenchTls;
use super::{BenchConfig, Control};
use crate::io::{Backend, Event, Options, Token};
use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The generator's ring: buffers big enough for 64 KiB frames to arrive in
/// few completions.
const BACKEND_OPTIONS: Options = Options {
    recv_buffers: 1024,
    recv_buffer_size: 64 * 1024,
    ring_entries: 4096,
};

/// Once sending stops: how long subscribers get for deliveries still in
/// flight (ns)...
const DRAIN_DELIVERIES_NS: u64 = 200_000_000;
/// ...and how long anyone gets for replies still outstanding (ns).
const DRAIN_REPLIES_NS: u64 = 2_000_000_000;

/// Runs one thread's share until the control says stop.
pub fn run(plan: Plan, ctl: Arc<Control>) -> io::Result<Outcome> {
    let mut w = Worker::new(&plan, &ctl)?;
    let streams = w.connect_all(&plan)?;
    let (from, until) = ctl.connected_wait();
    w.issuer.window = Window { from, until };
    for (i, s) in streams.into_iter().enumerate() {
        w.backend.add(Token(i), s)?;
    }
    let start = ctl.now_ns();
    w.prime(start);
    let progress = &ctl.progress[plan.index];
    let mut draining_since: Option<u64> = None;
    let mut now = start;
    loop {
        w.start_sends()?;
        w.poll(now)?;
        now = ctl.now_ns();
        w.reopen(now)?;
        w.issue_due(now);
        progress.store(w.out.responses + w.out.deliveries, Ordering::Relaxed);
        if w.done(now, &mut draining_since) {
            break;
        }
    }
    w.out.finished_ns = ctl.now_ns();
    Ok(w.out)
}

/// The measured window, in ns on the run's clock.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    from: u64,
    until: u64,
}

impl Window {
    fn contains(self, t: u64) -> bool {
        t >= self.from && t < self.until
    }
}

/// Issues requests: writes them, keeps the thread's request budget, and
/// counts the bytes of those stamped inside the measured window.
struct Issuer {
    writer: RequestWriter,
    /// Requests left to send (None: until the end time).
    budget: Option<u64>,
    window: Window,
}

impl Issuer {
    /// Queues one request on `c`, stamped `t` (see [`Conn::issue`]).
    fn issue(&mut self, c: &mut Conn, t: u64, wire: &mut WireBytes) -> bool {
        let counted = self.window.contains(t).then_some(wire);
        c.issue(t, &mut self.writer, &mut self.budget, counted)
    }
}

/// One thread's state (see the module doc).
struct Worker<'a> {
    cfg: &'a BenchConfig,
    ctl: &'a Control,
    backend: Backend,
    tls: Option<BenchTls>,
    conns: Vec<Conn>,
    issuer: Issuer,
    /// Open loop: messages/s per connection (None: closed loop).
    rate_per_conn: Option<f64>,
    /// Closed loop: requests kept outstanding per connection.
    pipeline: usize,
    /// Longest wait for events in one turn.
    wait: Duration,
    send_bufs: SendBuffers,
    recv_bufs: RecvBuffers,
    /// Connections that failed this turn, to close on the backend.
    to_close: Vec<usize>,
    /// Connections closed on the backend, to set up again.
    to_reopen: Vec<usize>,
    out: Outcome,
}

impl<'a> Worker<'a> {
    fn new(plan: &Plan, ctl: &'a Control) -> io::Result<Worker<'a>> {
        let cfg = &ctl.config;
        let kind = crate::server::resolve_backend(cfg.io_backend)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let backend = Backend::new(kind, &BACKEND_OPTIONS, None)
            .map_err(|e| io::Error::other(e.explanation))?;
        let tls = match &cfg.tls {
            Some(o) => Some(BenchTls::new(o, cfg.addr)?),
            None => None,
        };
        Ok(Worker {
            cfg,
            ctl,
            backend,
            recv_bufs: RecvBuffers::new(tls.is_some()),
            tls,
            conns: Vec::with_capacity(plan.slots.len()),
            issuer: Issuer {
                writer: RequestWriter::new(cfg),
                budget: plan.request_budget,
                window: Window::default(),
            },
            rate_per_conn: plan.rate_per_conn,
            pipeline: cfg.pipeline.max(1),
            // Open loop wakes often enough to send on time.
            wait: if plan.rate_per_conn.is_some() {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(50)
            },
            send_bufs: SendBuffers::default(),
            to_close: Vec::new(),
            to_reopen: Vec::new(),
            out: Outcome::new(),
        })
    }

    /// Sets up every connection of the plan (blocking), paced by
    /// `--connect-rate` (shared evenly by the threads); returns their
    /// sockets, in slot order, for the backend.
    fn connect_all(&mut self, plan: &Plan) -> io::Result<Vec<TcpStream>> {
        let cfg = self.cfg;
        let gap = cfg
            .connect_rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(cfg.threads as f64 / r as f64));
        let mut streams = Vec::with_capacity(plan.slots.len());
        for (i, slot) in plan.slots.iter().enumerate() {
            let src =
                (!plan.source_ips.is_empty()).then(|| plan.source_ips[i % plan.source_ips.len()]);
            let set_up = connect_slot(cfg, slot, src, self.tls.as_ref()).map_err(|e| {
                io::Error::new(e.kind(), format!("connecting to {}: {e}", slot.server))
            })?;
            let (conn, sock) = Conn::new(slot, set_up, i as u64);
            self.conns.push(conn);
            streams.push(sock);
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
        }
        Ok(streams)
    }

    /// The start: closed loop fills every pipeline; open loop staggers the
    /// connections' first sends evenly over one interval.
    fn prime(&mut self, start: u64) {
        match self.rate_per_conn {
            None => {
                for c in &mut self.conns {
                    fill(
                        &mut self.issuer,
                        c,
                        start,
                        self.pipeline,
                        &mut self.out.wire,
                    );
                }
            }
            Some(per) => {
                let n = self.conns.len().max(1) as f64;
                for (i, c) in self.conns.iter_mut().enumerate() {
                    c.next_due = start + ((i as f64 / n) * 1e9 / per) as u64;
                }
            }
        }
    }

    /// Whether requests are still to be sent at `now`.
    fn sending(&self, now: u64) -> bool {
        now < self.issuer.window.until && !self.ctl.stop.load(Ordering::Relaxed)
    }

    /// Starts a send on every connection with something to send.
    fn start_sends(&mut self) -> io::Result<()> {
        for (i, c) in self.conns.iter_mut().enumerate() {
            if let Some(batch) = c.take_send(&mut self.send_bufs)? {
                self.backend.send(Token(i), batch)?;
            }
        }
        Ok(())
    }

    /// Waits for the backend's events and handles them; `now` stamps the
    /// requests that replies make room for (closed loop).
    fn poll(&mut self, now: u64) -> io::Result<()> {
        let sending = self.sending(now);
        let measuring = self.issuer.window.contains(now);
        let closed_loop = self.rate_per_conn.is_none();
        let Worker {
            backend,
            conns,
            issuer,
            send_bufs,
            recv_bufs,
            to_close,
            to_reopen,
            out,
            wait,
            ..
        } = self;
        backend.poll(Some(*wait), |ev| match ev {
            Event::Sent(Token(i), b, r) => conns[i].on_sent(b, r, send_bufs),
            Event::Data(Token(i), chunk) => {
                let c = &mut conns[i];
                let mut tally = Tally {
                    out: &mut *out,
                    measuring,
                    now,
                };
                let replies = c.on_data(chunk, recv_bufs, &mut tally);
                if closed_loop && sending {
                    for _ in 0..replies {
                        if !issuer.issue(c, now, &mut out.wire) {
                            break;
                        }
                    }
                }
            }
            Event::Eof(Token(i)) | Event::Failed(Token(i), _) => {
                // Unexpected close: count what was lost, reconnect.
                conns[i].on_lost(sending, out);
                to_close.push(i);
            }
            Event::Closed(Token(i)) => to_reopen.push(i),
            Event::Accepted(..) | Event::AcceptFailed(_) => {}
        })?;
        for i in self.to_close.drain(..) {
            self.backend.close(Token(i))?;
        }
        Ok(())
    }

    /// Sets up again the connections the server closed (while the run is
    /// still sending); one that fails stays closed.
    fn reopen(&mut self, now: u64) -> io::Result<()> {
        let sending = self.sending(now);
        for i in std::mem::take(&mut self.to_reopen) {
            if !sending {
                continue;
            }
            let c = &mut self.conns[i];
            let Ok(set_up) = connect_slot(self.cfg, &c.slot(), None, self.tls.as_ref()) else {
                continue;
            };
            self.backend.add(Token(i), c.reconnected(set_up))?;
            self.out.reconnects += 1;
            if self.rate_per_conn.is_none() {
                fill(&mut self.issuer, c, now, self.pipeline, &mut self.out.wire);
            }
        }
        Ok(())
    }

    /// Open loop: issues what is due, stamped with its intended time
    /// (coordinated-omission correction, as wrk2 does).
    fn issue_due(&mut self, now: u64) {
        let Some(per) = self.rate_per_conn else {
            return;
        };
        if !self.sending(now) {
            return;
        }
        let interval = (1e9 / per) as u64;
        let (issuer, wire) = (&mut self.issuer, &mut self.out.wire);
        for c in self.conns.iter_mut().filter(|c| c.is_live()) {
            let mut next = c.next_due;
            due_sends(&mut next, interval, now, |due| issuer.issue(c, due, wire));
            c.next_due = next;
        }
    }

    /// Whether the run is over at `now`: the budget spent and every reply
    /// in, or sending over and the drain's grace gone (what is still
    /// outstanding then counts as lost).
    fn done(&mut self, now: u64, draining_since: &mut Option<u64>) -> bool {
        let outstanding: usize = self.conns.iter().map(Conn::outstanding).sum();
        let budget_done = self.issuer.budget == Some(0);
        let sending = self.sending(now);
        if sending && !budget_done {
            return false;
        }
        if budget_done && outstanding == 0 {
            return true;
        }
        if sending {
            return false;
        }
        let since = *draining_since.get_or_insert(now);
        let grace = if outstanding == 0 {
            DRAIN_DELIVERIES_NS
        } else {
            DRAIN_REPLIES_NS
        };
        if now.saturating_sub(since) > grace {
            self.out.errors += outstanding as u64;
            return true;
        }
        false
    }
}

/// Closed loop: queues `pipeline` requests on `c` (a subscriber queues
/// none, but is asked as often).
fn fill(issuer: &mut Issuer, c: &mut Conn, t: u64, pipeline: usize, wire: &mut WireBytes) {
    for _ in 0..pipeline {
        issuer.issue(c, t, wire);
    }
}

/// Open loop: calls `send(intended_time)` for every send due by `now` on a
/// fixed schedule (`*next_due`, then every `interval` ns), advancing the
/// schedule; stops early if `send` returns false. Each request is stamped
/// with when it *should* have left, not when it did, so a stall shows up
/// in the latency of every request it delayed (coordinated omission).
pub fn due_sends(next_due: &mut u64, interval: u64, now: u64, mut send: impl FnMut(u64) -> bool) {
    while *next_due <= now {
        if !send(*next_due) {
            break;
        }
        *next_due += interval.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinated_omission_hand_worked() {
        // 1,000 req/s on one connection (1 ms apart), starting at t = 0.
        // The generator's loop is stalled until t = 10 ms (the server did
        // not answer, say), then every response arrives at t = 10.1 ms.
        let ms = 1_000_000u64;
        let mut next = 0;
        let mut intended = Vec::new();
        due_sends(&mut next, ms, 10 * ms, |t| {
            intended.push(t);
            true
        });
        // Eleven sends were due (t = 0, 1, ..., 10 ms), and the schedule
        // moves on to 11 ms, not to "now + 1 ms".
        assert_eq!(intended, (0..=10).map(|i| i * ms).collect::<Vec<_>>());
        assert_eq!(next, 11 * ms);
        // Latency from intended time: 10.1, 9.1, ..., 0.1 ms. Measured from
        // the actual send (all at 10 ms) it would be 0.1 ms for every one.
        let arrive = 10 * ms + ms / 10;
        let mut h = crate::bench::report::new_histogram();
        for t in &intended {
            h.record((arrive - t) / 1000).unwrap();
        }
        let l = crate::bench::report::Latency::from_histogram(&h);
        assert_eq!(l.count, 11);
        assert!((5095..=5110).contains(&l.p50), "p50 {}", l.p50); // 5.1 ms
        assert!((10_095..=10_110).contains(&l.max), "max {}", l.max); // 10.1 ms
        assert!((95..=105).contains(&h.min()), "min {}", h.min()); // 0.1 ms
                                                                   // A budget that runs out stops the schedule where it is.
        let mut next = 0;
        let mut left = 3;
        due_sends(&mut next, ms, 10 * ms, |_| {
            left -= 1;
            left >= 0
        });
        assert_eq!(next, 3 * ms);
    }
}
