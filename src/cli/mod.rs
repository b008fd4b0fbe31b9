//! The `ringcast` command line (clap): `server`, `client`, `bench` and `top`.
//!
//! Only argument structs and the glue that turns them into the library's
//! configurations and runs them live here; the library modules
//! ([`crate::server`], [`crate::client`], [`crate::bench`]) know nothing of
//! clap. The binary (src/main.rs) calls [`main`].
//!
//! - [`server`]: the server's flags, `RINGCAST_*` variables and config
//!   file, generated from the settings table in src/server/config.rs.
//! - [`lifecycle`]: running the server process (logging, signals, reload,
//!   the periodic stats line).
//! - [`client`]: `ringcast client [demo|interactive|performance]`: its
//!   flags and the program itself (src/cli/client/).
//! - [`bench`](mod@bench): the load generator's flags.
//! - [`top`]: `ringcast top`, a live terminal view over the HTTP API.

pub mod bench;
pub mod client;
pub mod lifecycle;
pub mod server;
pub mod tls;
pub mod top;

use crate::bench::{Content, Workload};
use crate::server::{IoBackend, WakeMode};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// `ringcast`.
#[derive(Debug, Parser)]
#[command(
    name = "ringcast",
    version,
    about = "io_uring TCP message server, client and load generator"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the server (default address 127.0.0.1:9999).
    ///
    /// Boxed (as `Bench`): a flag per setting makes it far larger than
    /// `Client`.
    Server(Box<server::ServerArgs>),
    /// Talk to a server: demo, interactive or performance mode.
    Client(client::ClientArgs),
    /// Load-generate against a server and report latency and throughput.
    Bench(Box<bench::BenchArgs>),
    /// A live terminal view of a server, read from its HTTP API (q quits).
    Top(top::TopArgs),
}

/// Parses the process's arguments and runs the subcommand.
pub fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Server(a) => lifecycle::run(*a),
        Cmd::Client(a) => client::run(a),
        Cmd::Bench(a) => bench::run(*a),
        Cmd::Top(a) => top::run(a),
    }
}

/// Makes library enums of named choices usable as flag values: the names
/// their `Display` gives are listed in `--help` and in the error for any
/// other value, and parsed back with their `FromStr`. (The library types
/// carry no clap derives; this is their clap side.)
macro_rules! choice_flags {
    ($($t:ty),* $(,)?) => {$(
        impl clap::builder::ValueParserFactory for $t {
            type Parser =
                clap::builder::MapValueParser<clap::builder::PossibleValuesParser, fn(String) -> $t>;
            fn value_parser() -> Self::Parser {
                let parse: fn(String) -> $t =
                    |name| name.parse().expect("a listed name parses");
                let names = clap::builder::PossibleValuesParser::new(<$t>::ALL.map(|v| v.to_string()));
                clap::builder::TypedValueParser::map(names, parse)
            }
        }
    )*};
}

choice_flags!(IoBackend, WakeMode, Workload, Content);

/// `--compress`: the codec `ringcast client` and `ringcast bench` offer in
/// `hello` (the library's [`Codec`](crate::protocol::codec::Codec), whose
/// clap side this is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressFlag {
    /// zstd frames.
    Zstd,
    /// zlib streams (deflate).
    Deflate,
}

impl From<CompressFlag> for crate::protocol::codec::Codec {
    fn from(f: CompressFlag) -> Self {
        match f {
            CompressFlag::Zstd => crate::protocol::codec::Codec::Zstd,
            CompressFlag::Deflate => crate::protocol::codec::Codec::Deflate,
        }
    }
}
