//! (bench: being built; see the open issue.)

pub mod cli;
