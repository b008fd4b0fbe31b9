//! `ringcast bench` command-line arguments.

use std::process::ExitCode;

/// Arguments of `ringcast bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs `ringcast bench`.
pub fn run(_args: BenchArgs) -> ExitCode {
    eprintln!("ringcast bench: not built yet");
    ExitCode::FAILURE
}
