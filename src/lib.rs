//! ringcast: a Linux io_uring TCP message server speaking length-prefixed
//! JSON, with its client library and load generator.
//!
//! - [`protocol`]: the sans-IO core (framing, messages, errors, timestamps).
//! - [`uring`]: the only module that touches raw io_uring (and `unsafe`).
//! - [`server`]: shards, connections, broadcast, stats.
//! - [`client`]: a blocking client library with reconnection and a pool.
//! - [`bench`]: the load generator.
#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod protocol;
pub mod server;
pub mod uring;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
