//! Pacing a broadcast sender on its readers' progress.
//!
//! A sender paced only on acknowledgements can run far ahead of a reader
//! thread that a busy 2-core machine has descheduled, and that reader is
//! then (correctly) cut as a slow consumer. Tests that need every reader to
//! receive everything keep the sender within a bound of the slowest reader.

use crate::support::wait::wait_until_every;
use crate::support::wire::Client;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How many messages each reader has consumed.
#[derive(Clone)]
pub struct ReaderProgress(Arc<Vec<AtomicU64>>);

impl ReaderProgress {
    /// Progress slots for `readers` readers, all at 0.
    pub fn new(readers: usize) -> Self {
        ReaderProgress(Arc::new((0..readers).map(|_| AtomicU64::new(0)).collect()))
    }

    /// Reader `i` has consumed `n` messages.
    pub fn mark(&self, i: usize, n: u64) {
        self.0[i].store(n, Ordering::Relaxed);
    }

    /// Blocks until the slowest reader is at most `ahead` messages behind
    /// `sent`; panics if that takes longer than `limit` (a reader stopped).
    pub fn wait_within(&self, sent: u64, ahead: u64, limit: Duration) {
        wait_until_every(
            limit,
            Duration::from_micros(200),
            "the slowest reader to catch up (a reader stopped reading)",
            || {
                let slowest = self
                    .0
                    .iter()
                    .map(|p| p.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                sent.saturating_sub(slowest) <= ahead
            },
        );
    }
}

/// The audience of a broadcast test around `sender` (connected to `addr`):
/// a subscriber that advertises a tiny window (SO_RCVBUF 4 KiB) and never
/// reads until the test says so, and `readers` readers; returns them once
/// the server counts all of them and the sender (within `within`).
pub fn connect_audience(
    addr: SocketAddr,
    sender: &mut Client,
    readers: usize,
    within: Duration,
) -> (Client, Vec<Client>) {
    let stalled = Client::connect_small_rcvbuf(addr, 4096);
    let readers = Client::connect_many(addr, readers);
    sender.wait_connected(readers.len() as u64 + 2, within);
    (stalled, readers)
}

/// Starts one thread per reader that reads `broadcast_message`s from
/// `sender_id`, each `body_len` bytes of content beginning with its 8-digit
/// sequence number, asserting order, until the content `END`; marks its
/// progress in `progress` and returns the client and how many it received.
pub fn spawn_ordered_readers(
    readers: Vec<Client>,
    sender_id: &str,
    body_len: usize,
    read_timeout: Duration,
    progress: &ReaderProgress,
) -> Vec<std::thread::JoinHandle<(Client, u64)>> {
    readers
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let sender_id = sender_id.to_string();
            let progress = progress.clone();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    r.set_read_timeout(read_timeout);
                    let mut n = 0u64;
                    loop {
                        progress.mark(i, n);
                        let v = r.recv();
                        assert_eq!(v["type"], "broadcast_message", "{v}");
                        assert_eq!(v["from"], sender_id.as_str());
                        let content = v["content"].as_str().unwrap();
                        if content == "END" {
                            return (r, n);
                        }
                        assert_eq!(content.len(), body_len);
                        assert_eq!(&content[..8], format!("{n:08}"), "out of order");
                        n += 1;
                    }
                })
                .unwrap()
        })
        .collect()
}
