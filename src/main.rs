//! The `ringcast` command line: `server`, `client` and `bench`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ringcast",
    version,
    about = "io_uring TCP message server, client and load generator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (default address 127.0.0.1:9999).
    Server(ringcast::server::cli::ServerArgs),
    /// Talk to a server: demo, interactive or performance mode.
    Client(ringcast::client::cli::ClientArgs),
    /// Load-generate against a server and report latency and throughput.
    Bench(ringcast::bench::cli::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server(a) => ringcast::server::cli::run(a),
        Cmd::Client(a) => ringcast::client::cli::run(a),
        Cmd::Bench(a) => ringcast::bench::cli::run(a),
    }
}
