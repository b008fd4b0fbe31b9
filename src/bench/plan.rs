//! What one generator thread is given (a [`Plan`] of [`Slot`]s, each with
//! its [`Role`]) and what it gives back (its [`Outcome`]).

use super::report::WireBytes;
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends requests and times their responses.
    Requester,
    /// Sends broadcasts (their `broadcast_sent` acks pace it).
    Publisher,
    /// Only receives broadcasts and times their delivery.
    Subscriber,
}

/// One connection of a thread's share.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// What it does.
    pub role: Role,
    /// The server it connects to.
    pub server: SocketAddr,
    /// Pubsub: the channel a subscriber joins, or where a publisher starts.
    pub channel: usize,
}

/// One thread's share of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Thread index.
    pub index: usize,
    /// This thread's connections.
    pub slots: Vec<Slot>,
    /// Requests this thread may send in total (None = until the end time).
    pub request_budget: Option<u64>,
    /// Open loop: messages/s per connection (None = closed loop).
    pub rate_per_conn: Option<f64>,
    /// Source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
}

/// What a thread measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latency (µs) of measured responses or deliveries.
    pub hist: Histogram<u64>,
    /// Responses (requesters, publishers) measured.
    pub responses: u64,
    /// Broadcast deliveries measured at subscribers.
    pub deliveries: u64,
    /// Bytes received during the measured window.
    pub bytes: u64,
    /// Frame bytes sent and received in the measured window, on the wire
    /// and uncompressed.
    pub wire: WireBytes,
    /// Error frames and lost responses.
    pub errors: u64,
    /// Re-established connections.
    pub reconnects: u64,
    /// First error seen, for the report.
    pub first_error: Option<String>,
    /// When this thread finished (clock ns).
    pub finished_ns: u64,
}

impl Outcome {
    /// Nothing measured yet.
    pub fn new() -> Outcome {
        Outcome {
            hist: super::report::new_histogram(),
            responses: 0,
            deliveries: 0,
            bytes: 0,
            wire: WireBytes::default(),
            errors: 0,
            reconnects: 0,
            first_error: None,
            finished_ns: 0,
        }
    }

    /// Counts one error, keeping the first one's description.
    pub fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::new()
    }
}
