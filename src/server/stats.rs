//! The process's memory, and (re-exported) the counters.
//!
//! The per-shard counter block and its sums over shards are the sessions'
//! (`session::counters`): sessions write them, the router and the server
//! read them.

pub use crate::session::counters::*;

pub use crate::route::report::RssReader;
