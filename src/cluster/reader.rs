//! The reader thread: XREAD from the last id; other nodes' entries, each
//! decoded and checked, to the host.

use super::seqs::SeqMap;
use super::{control, entry, history};
use super::{
    lock, Cluster, Host, BAD_ENTRY_LOG_EVERY, BATCH_ENTRIES, FAULT_READER_PANICS_ENV, HEARTBEAT,
    HEARTBEAT_TTL, IO_TIMEOUT, READ_BLOCK_MS, STREAM_KEY,
};
use crate::protocol::JsonParser;
use redis::streams::StreamReadReply;
use redis::{Connection, RedisResult};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The reader's state: XREAD from the last id; others' entries, checked,
/// to the host.
pub(super) struct Reader {
    /// Where to read from: the stream's end at start (a new node gets no
    /// history), then always the last id handled, across reconnections
    /// and restarts.
    last_id: Option<String>,
    seqs: SeqMap,
    con: Option<Connection>,
    parser: JsonParser,
    scratch: Vec<u8>,
    next_prune: Instant,
    bad_log: BadEntryLog,
    /// The history epoch was read on this connection.
    epoch_checked: bool,
}

impl Reader {
    pub(super) fn new() -> Reader {
        Reader {
            last_id: None,
            seqs: SeqMap::default(),
            con: None,
            parser: JsonParser::new(),
            scratch: Vec::new(),
            next_prune: Instant::now() + HEARTBEAT_TTL,
            bad_log: BadEntryLog::default(),
            epoch_checked: false,
        }
    }

    pub(super) fn run(&mut self, c: &Cluster, host: &dyn Host) {
        let read_timeout = IO_TIMEOUT + Duration::from_millis(READ_BLOCK_MS as u64);
        while !c.stopping() {
            let Some(conn) = self.con.as_mut() else {
                self.con = c.connect(read_timeout, "reader");
                self.epoch_checked = false;
                continue;
            };
            if self.last_id.is_none() {
                // The end first, then the history: what is placed between
                // the two is in both, and the mirror keeps it once.
                let r = stream_end(conn).and_then(|id| {
                    if let Some(h) = c.history {
                        let loaded = history::load(conn, &history::epoch_candidate(), h.size)?;
                        host.history_loaded(loaded);
                    }
                    Ok(id)
                });
                match r {
                    Ok(id) => {
                        self.last_id = Some(id);
                        self.epoch_checked = true;
                        c.history_ready.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(node_id = %c.node_id, error = %e,
                            "cannot read the backplane's start (stream end, history)");
                        self.con = None;
                        continue;
                    }
                }
            }
            if !self.epoch_checked {
                // A new connection: Redis may have lost its data meanwhile
                // (a new epoch), which the mirror must know before it
                // answers another subscribe.
                if c.history.is_some() {
                    match history::epoch(conn, &history::epoch_candidate()) {
                        Ok(e) => host.history_epoch(&e),
                        Err(_) => {
                            self.con = None;
                            continue;
                        }
                    }
                }
                self.epoch_checked = true;
            }
            let now = Instant::now();
            if now >= self.next_prune {
                self.next_prune = now + HEARTBEAT;
                let alive = lock(&c.alive).clone();
                self.seqs.prune(&alive, now, HEARTBEAT_TTL);
            }
            let from = self.last_id.clone().unwrap_or_else(|| "0-0".into());
            let reply: RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(BATCH_ENTRIES)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("STREAMS")
                .arg(STREAM_KEY)
                .arg(&from)
                .query(conn);
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "backplane read failed");
                    self.con = None;
                    continue;
                }
            };
            let Some(reply) = reply else { continue };
            if reply.keys.iter().any(|k| !k.ids.is_empty())
                && c.fault_reader_panics
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                panic!("injected fault ({FAULT_READER_PANICS_ENV})");
            }
            for key in reply.keys {
                for e in key.ids {
                    self.handle(c, host, &e.map, Instant::now());
                    self.last_id = Some(e.id);
                }
            }
        }
    }

    /// One entry: checked, deduplicated, delivered (or skipped and counted).
    fn handle(
        &mut self,
        c: &Cluster,
        host: &dyn Host,
        fields: &std::collections::HashMap<String, redis::Value>,
        now: Instant,
    ) {
        if control::is_control(fields) {
            match control::decode(fields) {
                Ok(e) => {
                    if e.node != c.node_id && self.seqs.accept(&e.node, e.seq, now) {
                        host.control(e.op);
                        c.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(why) => self.bad(c, why, now),
            }
            return;
        }
        let e = match entry::decode(
            fields,
            c.max_frame_bytes,
            &mut self.parser,
            &mut self.scratch,
        ) {
            Ok(e) => e,
            Err(why) => return self.bad(c, why, now),
        };
        if e.node == c.node_id && e.placed.is_none() {
            return; // our own: delivered locally already
        }
        if !self.seqs.accept(&e.node, e.seq, now) {
            return; // written twice after a lost reply
        }
        host.deliver(e);
        c.received.fetch_add(1, Ordering::Relaxed);
    }

    /// A malformed entry: counted, and logged within the warning budget.
    fn bad(&mut self, c: &Cluster, why: entry::BadEntry, now: Instant) {
        c.bad_entries.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_log.allow(now) {
            tracing::warn!(node_id = %c.node_id, reason = %why, suppressed,
                "skipped a malformed backplane entry (someone else writes to {STREAM_KEY}?)");
        }
    }
}

/// Rate limit for the bad-entry warning.
#[derive(Debug, Default)]
struct BadEntryLog {
    next: Option<Instant>,
    suppressed: u64,
}

impl BadEntryLog {
    /// Whether to log now; if so, how many were suppressed since the last.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + BAD_ENTRY_LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The id of the stream's last entry ("0-0" when it is empty or absent).
fn stream_end(con: &mut Connection) -> RedisResult<String> {
    let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(STREAM_KEY)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    Ok(r.ids.first().map_or_else(|| "0-0".into(), |e| e.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bad_entry_warning_is_rate_limited() {
        let mut l = BadEntryLog::default();
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t + BAD_ENTRY_LOG_EVERY), Some(2));
    }
}
