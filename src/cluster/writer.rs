//! The writer thread: what local clients broadcast and publish, from the
//! outbox to XADD pipelines, in order; this node's heartbeat once a second,
//! and the others' read into the remote interest and client counts.

use super::{
    lock, Cluster, Host, Pending, BATCH_ENTRIES, HEARTBEAT, HEARTBEAT_TTL, IO_TIMEOUT,
    NODE_KEY_PREFIX, PAUSE_PUBLISHERS_BYTES, STREAM_KEY, STREAM_MAXLEN,
};
use crate::protocol::interest::INTEREST_SLOTS;
use redis::{Commands, Connection, RedisResult};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The writer's state: outbox → XADD pipelines, in order; heartbeats.
pub(super) struct Writer {
    /// The next sequence number to give.
    seq: u64,
    pending: VecDeque<Pending>,
    con: Option<Connection>,
    next_beat: Instant,
    pipe: redis::Pipeline,
    slots: Vec<(usize, u64)>,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
            // Sequence numbers start at this node's start time in µs, so
            // that a node restarted under the same id still counts upwards.
            seq: crate::protocol::time::unix_ms_now() * 1000,
            pending: VecDeque::new(),
            con: None,
            next_beat: Instant::now(),
            pipe: redis::Pipeline::new(),
            slots: Vec::new(),
        }
    }

    /// Writes until the server stops and nothing is left to write (or
    /// Redis is gone by then).
    pub(super) fn run(&mut self, c: &Cluster, host: &dyn Host) {
        while !c.stopping() || (!self.pending.is_empty() && self.con.is_some()) {
            while let Some(out) = c.outbox.pop() {
                self.seq += 1;
                self.pending.push_back(Pending { seq: self.seq, out });
            }
            let Some(conn) = self.con.as_mut() else {
                c.up.store(false, Ordering::Relaxed);
                self.con = c.connect(IO_TIMEOUT, "writer");
                if self.con.is_some() {
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let mut ok = true;
            if Instant::now() >= self.next_beat {
                self.next_beat = Instant::now() + HEARTBEAT;
                ok = heartbeat(c, host, conn, &mut self.slots).is_ok();
            }
            if ok && !self.pending.is_empty() {
                ok = self.write_batch(c, host);
            }
            if !ok {
                self.con = None;
                continue;
            }
            c.up.store(true, Ordering::Relaxed);
            if self.pending.is_empty() && c.outbox.is_empty() {
                c.writer_sleeping.store(true, Ordering::Release);
                if c.outbox.is_empty() && !c.stopping() {
                    std::thread::park_timeout(
                        self.next_beat.saturating_duration_since(Instant::now()),
                    );
                }
                c.writer_sleeping.store(false, Ordering::Release);
            }
        }
    }

    /// XADDs up to [`BATCH_ENTRIES`] pending entries in one pipeline.
    /// False when Redis failed: they stay pending, in order, for the next
    /// connection. (A batch that reached Redis before the failure is
    /// written again then; readers drop it by its sequence numbers.)
    fn write_batch(&mut self, c: &Cluster, host: &dyn Host) -> bool {
        let Some(conn) = self.con.as_mut() else {
            return false;
        };
        let n = self.pending.len().min(BATCH_ENTRIES);
        self.pipe.clear();
        for p in self.pending.iter().take(n) {
            let cmd = self
                .pipe
                .cmd("XADD")
                .arg(STREAM_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("n")
                .arg(&c.node_id)
                .arg("s")
                .arg(p.seq);
            match &p.out.control {
                Some(op) => {
                    for (k, v) in op.fields() {
                        cmd.arg(k).arg(v);
                    }
                }
                None => {
                    cmd.arg("f").arg(p.out.frame.as_ref());
                    if let Some(ch) = &p.out.channel {
                        cmd.arg("c").arg(ch.as_ref());
                    }
                }
            }
            cmd.ignore();
        }
        if self.pipe.query::<()>(conn).is_err() {
            return false;
        }
        let bytes: usize = self.pending.drain(..n).map(|p| p.out.size()).sum();
        let was = c.buffered.fetch_sub(bytes, Ordering::AcqRel);
        if was > PAUSE_PUBLISHERS_BYTES && was - bytes <= PAUSE_PUBLISHERS_BYTES {
            host.backlog_cleared();
        }
        c.written.fetch_add(n as u64, Ordering::Relaxed);
        true
    }

    /// At stop: this node leaves the membership at once.
    pub(super) fn finish(&mut self, c: &Cluster) {
        if let Some(conn) = self.con.as_mut() {
            let _: RedisResult<()> = conn.del(format!("{NODE_KEY_PREFIX}{}", c.node_id));
        }
    }
}

/// Writes this node's heartbeat and reads the others': how many clients
/// each has, and its subscribers per interest slot.
fn heartbeat(
    c: &Cluster,
    host: &dyn Host,
    con: &mut Connection,
    slots: &mut Vec<(usize, u64)>,
) -> RedisResult<()> {
    slots.clear();
    let clients = host.local_figures(slots);
    // `at`: when it was written, for the others' view of its age (nodes
    // that do not know the line skip it, as any line they cannot read).
    let now_ms = crate::protocol::time::unix_ms_now();
    let mut body = format!("clients {clients}\nat {now_ms}\n");
    for (slot, n) in slots.iter() {
        body.push_str(&format!("{slot} {n}\n"));
    }
    let key = format!("{NODE_KEY_PREFIX}{}", c.node_id);
    redis::cmd("SET")
        .arg(&key)
        .arg(&body)
        .arg("PX")
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .query::<()>(con)?;
    let keys: Vec<String> = con
        .scan_match::<_, String>(format!("{NODE_KEY_PREFIX}*"))?
        .collect::<RedisResult<_>>()?;
    let others: Vec<&String> = keys.iter().filter(|k| **k != key).collect();
    let bodies: Vec<Option<String>> = if others.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET").arg(&others).query(con)?
    };
    let mut clients = 0u64;
    let mut remote = vec![0u32; INTEREST_SLOTS];
    let mut alive = HashSet::new();
    let mut peers = Vec::with_capacity(others.len());
    for (k, b) in others.iter().zip(bodies) {
        let Some(b) = b else { continue }; // expired between SCAN and MGET
        let id = k[NODE_KEY_PREFIX.len()..].to_owned();
        alive.insert(id.clone());
        let mut peer = super::Peer {
            id,
            clients: 0,
            heartbeat_unix_ms: None,
        };
        for line in b.lines() {
            let mut f = line.split(' ');
            match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("clients"), Some(n)) => {
                    clients += n;
                    peer.clients = n;
                }
                (Some("at"), Some(ms)) => peer.heartbeat_unix_ms = Some(ms),
                (Some(s), Some(n)) => {
                    if let Some(slot) = s.parse::<usize>().ok().filter(|s| *s < INTEREST_SLOTS) {
                        remote[slot] =
                            remote[slot].saturating_add(n.min(u64::from(u32::MAX)) as u32);
                    }
                }
                _ => {}
            }
        }
        peers.push(peer);
    }
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    *lock(&c.peers) = peers;
    for (slot, n) in remote.into_iter().enumerate() {
        c.remote_interest.set(slot, n);
    }
    c.remote_clients.store(clients, Ordering::Relaxed);
    c.nodes.store(alive.len() as u64 + 1, Ordering::Relaxed);
    *lock(&c.alive) = Arc::new(alive);
    Ok(())
}
