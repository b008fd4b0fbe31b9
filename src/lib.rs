//! ringcast: a Linux io_uring TCP message server speaking length-prefixed
//! JSON, with its client library and load generator.
//!
//! - [`protocol`]: the sans-IO core (framing, messages, errors, timestamps).
//! - [`session`]: one connection's rules, sans-IO: bytes and time in,
//!   segments, pause/resume and close out.
//! - [`io`]: the backend seam, with io_uring and epoll behind it (the only
//!   `unsafe`, and the only raw io_uring).
//! - [`server`]: shard loop, admission, fan-out, stats, metrics, config.
//! - [`route`]: where every message goes (shards, other nodes) and the
//!   session's host on each shard.
//! - [`cluster`]: delivery across nodes over Redis Streams (`--backplane`).
//! - [`client`]: a blocking client library with reconnection and a pool.
//! - [`bench`]: the load generator.
//! - [`tls`]: what TLS endpoints share (crypto provider, PEM files).
//! - [`cli`]: the `ringcast` command line (the only module that uses clap),
//!   and the `ringcast client` program.
//!
//! Small helpers every room shares, each defined once: `backoff`
//! (exponential backoff with jitter), `random` (the one random source),
//! `sync` (poison-tolerant locks), `choices` (enums of named choices).
#![warn(missing_docs)]

pub(crate) mod backoff;
pub mod bench;
pub(crate) mod choices;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod io;
pub mod protocol;
pub(crate) mod random;
pub mod route;
pub mod server;
pub mod session;
pub(crate) mod sync;
pub mod tls;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
