//! The operator's HTTP listener.

pub(crate) mod dashboard;
