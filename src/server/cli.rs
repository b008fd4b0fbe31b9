//! `ringcast server` command-line arguments.

use std::process::ExitCode;

/// Arguments of `ringcast server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {}

/// Runs `ringcast server`.
pub fn run(_args: ServerArgs) -> ExitCode {
    eprintln!("ringcast server: not built yet");
    ExitCode::FAILURE
}
