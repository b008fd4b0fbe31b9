//! `ringcast client [demo|interactive|performance]`: its flags, turned
//! into [`AppOptions`], and the program's modes, one file each:
//!
//! - `demo.rs`: a walk through every kind of exchange;
//! - `interactive.rs`: commands and text from stdin (rustyline on a
//!   terminal);
//! - `perf.rs`: a short preset of the load generator.
//!
//! How they print (one label column, colour only on a terminal, `--json`
//! for raw frames) is in `print.rs`. The program uses the client library
//! ([`crate::client`]) and the load generator ([`crate::bench`]); neither
//! knows of it.

mod demo;
mod interactive;
mod perf;
mod print;

use crate::client::{Client, ClientConfig, ClientError, Codec, ReconnectPolicy, TlsOptions};
use print::{Style, RED};
use std::process::ExitCode;
use std::time::Duration;

/// What `ringcast client` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Walk through ping, echo, broadcast, stats, a custom message and a text message.
    Demo,
    /// Read commands (/ping, /echo, /broadcast, /stats, /custom, /help, /exit) and text.
    Interactive,
    /// Run a short preset of the load generator (echo, pipelined) and print msgs/s and latency.
    Performance,
}

/// Arguments of `ringcast client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = Mode::Demo)]
    pub mode: Mode,
    /// Server address.
    #[arg(
        long,
        default_value = "127.0.0.1:9999",
        value_name = "HOST:PORT",
        env = "RINGCAST_ADDR"
    )]
    pub addr: String,
    /// Authentication token, sent first on every connection: the server's
    /// --auth-token, or a JWT signed with its --jwt-secret or
    /// --jwt-public-key's private key.
    #[arg(long, env = "RINGCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the raw frames received, one JSON object per line (performance
    /// mode prints one JSON summary line).
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for a connection or an answer.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Performance mode: echo requests to send.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Performance mode: bytes of content in each echo.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Performance mode: requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Negotiate per-frame compression with `hello` (every mode): frames
    /// over the server's threshold travel compressed both ways.
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<crate::cli::CompressFlag>,
    /// TLS.
    #[command(flatten)]
    pub tls: crate::cli::tls::TlsArgs,
}

impl ClientArgs {
    /// The client program's options.
    pub fn to_options(&self) -> AppOptions {
        AppOptions {
            addr: self.addr.clone(),
            token: self.token.clone(),
            json: self.json,
            timeout: Duration::try_from_secs_f64(self.timeout)
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_millis(1)),
            count: self.count,
            size: self.size,
            window: self.window,
            tls: self.tls.to_options(&self.addr),
            compress: self.compress.map(Into::into),
        }
    }
}

/// Runs `ringcast client`.
pub fn run(args: ClientArgs) -> ExitCode {
    let opts = args.to_options();
    match args.mode {
        Mode::Demo => demo(&opts),
        Mode::Interactive => interactive(&opts),
        Mode::Performance => performance(&opts),
    }
}

/// What `ringcast client` was asked, whatever the mode.
#[derive(Debug, Clone, PartialEq)]
pub struct AppOptions {
    /// Server address (`host:port`).
    pub addr: String,
    /// Authentication token, sent first on every connection.
    pub token: Option<String>,
    /// Print the raw frames received, one JSON object per line (performance
    /// mode prints one JSON summary line).
    pub json: bool,
    /// How long to wait for a connection or an answer.
    pub timeout: Duration,
    /// Performance mode: echo requests to send.
    pub count: u64,
    /// Performance mode: bytes of content in each echo.
    pub size: usize,
    /// Performance mode: requests in flight at once.
    pub window: usize,
    /// Speak TLS (None: plain TCP).
    pub tls: Option<TlsOptions>,
    /// Negotiate this codec with `hello` (None: no compression).
    pub compress: Option<Codec>,
}

impl AppOptions {
    pub(crate) fn config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: self.timeout,
            request_timeout: self.timeout,
            auth_token: self.token.clone(),
            tls: self.tls.clone(),
            compression: self.compress.into_iter().collect(),
            ..ClientConfig::default()
        }
    }
}

/// Walks through ping, echo, broadcast, stats, a custom message and a text
/// message, printing each exchange.
pub fn demo(opts: &AppOptions) -> ExitCode {
    run_mode(opts, demo::run)
}

/// Reads commands (/ping, /echo, /broadcast, /stats, /custom, /help, /exit)
/// and text from stdin, with line editing on a terminal.
pub fn interactive(opts: &AppOptions) -> ExitCode {
    run_mode(opts, interactive::run)
}

/// Runs a short preset of the load generator (echo, pipelined) and prints
/// msgs/s and latency.
pub fn performance(opts: &AppOptions) -> ExitCode {
    run_mode(opts, perf::run)
}

/// Runs a mode; an error is printed to stderr and exits non-zero.
fn run_mode(
    opts: &AppOptions,
    mode: fn(&AppOptions, &Style) -> Result<ExitCode, ClientError>,
) -> ExitCode {
    let style = Style::detect(opts.json);
    match mode(opts, &style) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} {e}", style.paint(RED, "error:"));
            ExitCode::FAILURE
        }
    }
}

/// Connects, printing nothing; errors say where.
pub(crate) fn connect(args: &AppOptions, reconnect: bool) -> Result<Client, ClientError> {
    let mut cfg = args.config();
    if reconnect {
        cfg.reconnect = ReconnectPolicy::default();
        cfg.wait_for_reconnect = true;
        cfg.heartbeat_interval = Some(Duration::from_secs(15));
    }
    Client::connect_with(args.addr.as_str(), cfg).map_err(|e| match e {
        ClientError::Io(io) => ClientError::Io(std::io::Error::new(
            io.kind(),
            format!("cannot connect to {}: {io}", args.addr),
        )),
        e => e,
    })
}
