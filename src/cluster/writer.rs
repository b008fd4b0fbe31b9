//! The writer thread: what local clients broadcast and publish, from the
//! outbox to XADD pipelines, in order; this node's heartbeat once a second,
//! and the others' read into the remote interest and client counts.

use super::{
    history, lock, Cluster, Host, Pending, BATCH_ENTRIES, HEARTBEAT, HEARTBEAT_TTL, IO_TIMEOUT,
    NODE_KEY_PREFIX, PAUSE_PUBLISHERS_BYTES, STREAM_KEY, STREAM_MAXLEN,
};
use crate::protocol::interest::INTEREST_SLOTS;
use redis::{Commands, Connection, RedisResult};
use std::collections::{HashMap, HashSet, VecDeque};
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
    beat: Beat,
    /// The history script's SHA1, for EVALSHA.
    script_sha: String,
    /// The epoch this node proposes if Redis has none (see
    /// [`history`]).
    epoch_candidate: String,
}

/// The heartbeat's scratch, and the other nodes' patterns as last told to
/// the host (kept across a restart of the writer, so the next heartbeat
/// tells only what changed).
#[derive(Default)]
struct Beat {
    slots: Vec<(usize, u64)>,
    patterns: Vec<(String, u64)>,
    remote_patterns: HashMap<String, u64>,
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
            beat: Beat::default(),
            script_sha: redis::Script::new(history::PUBLISH_SCRIPT)
                .get_hash()
                .to_owned(),
            epoch_candidate: history::epoch_candidate(),
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
                // A Redis that restarted empty gets a new epoch, never the
                // one this node proposed before.
                self.epoch_candidate = history::epoch_candidate();
                if let (Some(con), Some(_)) = (self.con.as_mut(), c.history) {
                    // Loaded on every connection: a restarted Redis has
                    // forgotten it (EVALSHA would fail with NOSCRIPT).
                    if let Err(e) = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(history::PUBLISH_SCRIPT)
                        .query::<String>(con)
                    {
                        tracing::warn!(node_id = %c.node_id, error = %e,
                            "cannot load the history script into Redis");
                        self.con = None;
                        continue;
                    }
                }
                if self.con.is_some() {
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let mut ok = true;
            if Instant::now() >= self.next_beat {
                self.next_beat = Instant::now() + HEARTBEAT;
                ok = heartbeat(c, host, conn, &mut self.beat).is_ok();
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
            if let (Some(_), Some(h), Some(ch)) = (&p.out.history, c.history, &p.out.channel) {
                self.pipe
                    .cmd("EVALSHA")
                    .arg(&self.script_sha)
                    .arg(5)
                    .arg(history::EPOCH_KEY)
                    .arg(history::TOPS_KEY)
                    .arg(history::PLACED_KEY)
                    .arg(format!("{}{ch}", history::CHANNEL_STREAM_PREFIX))
                    .arg(STREAM_KEY)
                    .arg(&self.epoch_candidate)
                    .arg(h.size)
                    .arg(h.ttl_ms)
                    .arg(&c.node_id)
                    .arg(p.seq)
                    .arg(ch.as_ref())
                    .arg(p.out.frame.as_ref())
                    .arg(STREAM_MAXLEN);
                continue;
            }
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
        // Only the history scripts' answers come back (the rest are
        // ignored), in order.
        let placed: Vec<redis::Value> = match self.pipe.query(conn) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "backplane write failed");
                return false;
            }
        };
        let mut placed = placed.into_iter();
        let mut bytes = 0;
        for p in self.pending.drain(..n) {
            bytes += p.out.size();
            if let Some(placement) = p.out.history {
                let place = placed
                    .next()
                    .and_then(|v| redis::from_redis_value::<(u64, String)>(v).ok())
                    .filter(|(o, _)| *o > 0);
                let place = place.as_ref().map(|(o, e)| (*o, e.as_str()));
                match placement {
                    history::Placement::Reply(reply) => host.placed(reply, place),
                    history::Placement::Notify(f) => f(place),
                }
            }
        }
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
/// each has, its subscribers per interest slot, and its patterns with
/// their subscribers (`p <count> <pattern>` lines: a pattern has no slot).
fn heartbeat(
    c: &Cluster,
    host: &dyn Host,
    con: &mut Connection,
    beat: &mut Beat,
) -> RedisResult<()> {
    beat.slots.clear();
    beat.patterns.clear();
    let clients = host.local_figures(&mut beat.slots, &mut beat.patterns);
    // `at`: when it was written, for the others' view of its age (nodes
    // that do not know the line skip it, as any line they cannot read).
    let now_ms = crate::protocol::time::unix_ms_now();
    let mut body = format!("clients {clients}\nat {now_ms}\n");
    for (slot, n) in beat.slots.iter() {
        body.push_str(&format!("{slot} {n}\n"));
    }
    // A pattern has no control characters (no newline): one line each.
    for (pattern, n) in beat.patterns.iter() {
        body.push_str(&format!("p {n} {pattern}\n"));
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
    let mut patterns: HashMap<String, u64> = HashMap::new();
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
            let mut f = line.splitn(3, ' ');
            match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("clients"), Some(n)) => {
                    clients += n;
                    peer.clients = n;
                }
                (Some("at"), Some(ms)) => peer.heartbeat_unix_ms = Some(ms),
                (Some("p"), Some(n)) => {
                    // Checked as a subscribe would be: another node's bad
                    // line is skipped, never matched.
                    let p = f.next().unwrap_or("");
                    if crate::protocol::pattern::check_subscribe(p).is_ok() {
                        *patterns.entry(p.to_owned()).or_default() += n;
                    }
                }
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
    for (p, old) in beat.remote_patterns.iter() {
        if !patterns.contains_key(p) {
            host.remote_pattern(p, *old, 0);
        }
    }
    for (p, n) in patterns.iter() {
        let old = beat.remote_patterns.get(p).copied().unwrap_or(0);
        if old != *n {
            host.remote_pattern(p, old, *n);
        }
    }
    beat.remote_patterns = patterns;
    c.remote_clients.store(clients, Ordering::Relaxed);
    c.nodes.store(alive.len() as u64 + 1, Ordering::Relaxed);
    *lock(&c.alive) = Arc::new(alive);
    Ok(())
}
