//! A [`Host`] that routes nowhere, for the fuzz drivers: subscriptions in
//! a map, publishes and broadcasts recorded, `get_stats` answered from the
//! session counters it was given. Not part of the API.

use super::counters::{ShardCounters, Totals};
use super::host::{ConnId, Handler, Host, Routed, SubscribeError};
use crate::protocol::stats::{self, StatsReport};
use crate::protocol::JsonValue;
use bytes::Bytes;
use crossbeam_utils::CachePadded;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// See the module doc.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// Channels each connection holds.
    pub subscriptions: BTreeMap<ConnId, BTreeSet<String>>,
    /// What was published: (from, channel, frame).
    pub published: Vec<(ConnId, String, Bytes)>,
    /// What was broadcast: (from, frame).
    pub broadcasts: Vec<(ConnId, Bytes)>,
    /// The counters `get_stats` reports (one shard's).
    pub counters: Option<Arc<CachePadded<ShardCounters>>>,
}

impl Host for FakeHost {
    fn broadcast(&mut self, from: ConnId, frame: Bytes) -> Routed {
        self.broadcasts.push((from, frame));
        Routed::Recipients(0)
    }

    fn publish(&mut self, from: ConnId, channel: &str, frame: Bytes) -> Routed {
        self.published.push((from, channel.to_owned(), frame));
        let n = self
            .subscriptions
            .values()
            .filter(|s| s.contains(channel))
            .count();
        Routed::Recipients(n as u64)
    }

    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError> {
        let s = self.subscriptions.entry(conn).or_default();
        s.insert(channel.to_owned());
        Ok(s.len())
    }

    fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> usize {
        let s = self.subscriptions.entry(conn).or_default();
        s.remove(channel);
        s.len()
    }

    fn drop_subscriptions(&mut self, conn: ConnId) {
        self.subscriptions.remove(&conn);
    }

    fn write_stats(
        &mut self,
        out: &mut Vec<u8>,
        id: Option<&JsonValue<'_, '_>>,
        now: &str,
        _now_ms: u64,
    ) {
        let mut per_shard = Vec::new();
        let t = match &self.counters {
            Some(c) => Totals::read(std::slice::from_ref(&**c), &mut per_shard),
            None => Totals::default(),
        };
        let report = StatsReport {
            connected_clients: t.connected,
            current_time: now,
            server_start_time: now,
            io_backend: "none",
            connections_per_shard: &per_shard,
            ..StatsReport::default()
        };
        stats::write_server_stats(out, id, &report);
    }

    fn handler(&self, _type_name: &str) -> Option<&dyn Handler> {
        None
    }
}
