//! The one support module of the integration tests. Every test file has
//! `mod support;` and imports what it needs from:
//!
//! - [`server`]: test servers, in this process (every one built through
//!   [`server::build`], which applies `RINGCAST_IO_BACKEND`) or as a
//!   `ringcast server` child process, with its log lines;
//! - [`wire`]: the frame encoder, the one frame reader, [`wire::Client`]
//!   (a blocking test connection) and readers of JSON responses;
//! - [`wait`]: [`wait::wait_until`], the one way to wait for a condition
//!   (and [`wait::next_matching`], the same for a channel);
//! - [`fake`]: misbehaving fake servers, and library-client settings and
//!   helpers, for the client tests;
//! - [`hostile`]: watchdog, seeded RNG, descriptor and RSS probes for the
//!   hostile and resource tests;
//! - [`http`]: a blocking HTTP/1.1 client for the HTTP listener's API;
//! - [`pacing`]: a broadcast sender paced on its readers' progress;
//! - [`tls`]: certificates made at test time (rcgen), TLS servers and clients;
//! - [`redis`]: a real redis-server on a free port, for the cluster tests,
//!   and a raw RESP command writer (to write what no node would);
//! - [`skip`]: how a test that cannot run says so (never as a pass).
//!
//! Run the whole suite on one I/O backend with `RINGCAST_IO_BACKEND=auto`,
//! `io-uring` or `epoll` (unset: the builder's default).

// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod fake;
pub mod hostile;
pub mod http;
pub mod pacing;
pub mod redis;
pub mod server;
pub mod skip;
pub mod tls;
pub mod wait;
pub mod wire;
