//! `ringcast client [demo|interactive|performance]`: its flags, turned into
//! the client program's [`AppOptions`] and run (src/client/app.rs).

use crate::client::app::{self, AppOptions};
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
    /// Authentication token, sent first on every connection.
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
    pub compress: Option<super::CompressFlag>,
    /// TLS.
    #[command(flatten)]
    pub tls: super::tls::TlsArgs,
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
        Mode::Demo => app::demo(&opts),
        Mode::Interactive => app::interactive(&opts),
        Mode::Performance => app::performance(&opts),
    }
}
