//! `ringcast client` command-line arguments.

use std::process::ExitCode;

/// Arguments of `ringcast client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {}

/// Runs `ringcast client`.
pub fn run(_args: ClientArgs) -> ExitCode {
    eprintln!("ringcast client: not built yet");
    ExitCode::FAILURE
}
