//! Waiting with a deadline. A test waits for a condition with
//! [`wait_until`]: a time limit, a description, and a check polled every
//! 20 ms; on timeout it panics with the description. There is no
//! bool-returning variant: a test that wants the last state in the failure
//! message passes a closure as the description (evaluated only on timeout).
//!
//! A test waiting for a message on a channel calls [`next_matching`], with
//! the same contract.
//!
//! [`poll`] and [`recv_within`] are the building blocks for the support
//! helpers that must return a value or clean up before failing (a child
//! process killed, a bind retried); they return `None` at the deadline.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`poll`] check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a wait is for, as its timeout message says: a string, or a closure
/// building the text when the wait has failed (so it can report the last
/// state seen).
pub trait Describe {
    fn describe(&self) -> String;
}

impl Describe for &str {
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl<F: Fn() -> String> Describe for F {
    fn describe(&self) -> String {
        self()
    }
}

/// Polls `check` every 20 ms until it returns true; panics with
/// "timed out after {within} waiting for {what}" if `within` passes first.
/// `check` runs at least once, and once more at the deadline.
pub fn wait_until(within: Duration, what: impl Describe, check: impl FnMut() -> bool) {
    wait_until_every(within, POLL_INTERVAL, what, check)
}

/// [`wait_until`] polling every `every`: for a sender paced on its readers,
/// which checks after every message and must not stall 20 ms each time.
pub fn wait_until_every(
    within: Duration,
    every: Duration,
    what: impl Describe,
    mut check: impl FnMut() -> bool,
) {
    if poll_every(within, every, || check().then_some(())).is_none() {
        panic!("timed out after {within:?} waiting for {}", what.describe());
    }
}

/// Polls `f` every 20 ms until it returns `Some`; `None` if `within` passes
/// first. For support helpers that need the value or must clean up before
/// failing; a test waiting for a condition calls [`wait_until`].
pub fn poll<T>(within: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(within, POLL_INTERVAL, f)
}

fn poll_every<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The first message from `rx` that `pick` maps to `Some`, skipping the
/// others, within `within` in all: [`wait_until`] for a channel. Panics
/// naming `what` at the deadline or when every sender has gone.
pub fn next_matching<M, T>(
    rx: &Receiver<M>,
    within: Duration,
    what: impl Describe,
    pick: impl FnMut(M) -> Option<T>,
) -> T {
    recv_within(rx, within, pick).unwrap_or_else(|| {
        panic!(
            "timed out after {within:?} waiting for {} (or the channel closed)",
            what.describe()
        )
    })
}

/// [`next_matching`], returning `None` at the deadline or when every
/// sender has gone (for [`crate::support::server::LogLines`], whose users
/// clean up before failing).
pub fn recv_within<M, T>(
    rx: &Receiver<M>,
    within: Duration,
    mut pick: impl FnMut(M) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = rx.recv_timeout(left).ok()?;
        if let Some(t) = pick(m) {
            return Some(t);
        }
    }
}
