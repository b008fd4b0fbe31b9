//! Admission: the connection limits, over all shards and per client IP.

use super::stats::{bump, ShardCounters};
use super::Shared;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// What an accepted connection holds until it is freed: its place in the
/// server-wide count, and a per-IP slot when that limit is on.
#[derive(Debug)]
pub(crate) struct Admission {
    ip_slot: Option<IpAddr>,
}

impl Admission {
    /// Counts a connection from `ip`; the message says why it is refused
    /// (`server_full`), if it is. Either way, release it when freed.
    pub fn admit(
        shared: &Shared,
        counters: &ShardCounters,
        ip: IpAddr,
    ) -> (Admission, Option<&'static str>) {
        let cfg = &shared.config;
        bump(&counters.total_connections, 1);
        let total = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if total > cfg.max_connections {
            return (
                Admission { ip_slot: None },
                Some("the server is at its connection limit"),
            );
        }
        if cfg.max_connections_per_ip == 0 {
            return (Admission { ip_slot: None }, None);
        }
        let mut m = crate::sync::lock(&shared.per_ip);
        let n = m.entry(ip).or_insert(0);
        if *n >= cfg.max_connections_per_ip {
            return (
                Admission { ip_slot: None },
                Some("too many connections from your address"),
            );
        }
        *n += 1;
        (Admission { ip_slot: Some(ip) }, None)
    }

    /// Gives back what [`Admission::admit`] took.
    pub fn release(self, shared: &Shared) {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip_slot {
            let mut m = crate::sync::lock(&shared.per_ip);
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}
