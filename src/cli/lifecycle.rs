//! The `ringcast server` process: logging, the descriptor limit, signals
//! (SIGINT and SIGTERM drain and stop, SIGHUP reloads TLS), the periodic
//! stats line, and the exit status. Its settings come from
//! src/cli/server.rs.

use super::server::{LogFormat, ServerArgs};
use crate::server::{Reloader, Server, Watcher};
use std::process::ExitCode;
use std::time::Duration;

/// Installs the tracing subscriber (RUST_LOG honoured; default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes in the journal or
    // a log file are noise (NO_COLOR turns them off anywhere).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Raises RLIMIT_NOFILE to its hard limit so the connection limit, not the
/// descriptor limit, is what caps clients.
fn raise_nofile() {
    match rlimit_nofile_raise() {
        Ok((old, new)) => tracing::info!(from = old, to = new, "raised RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
    }
}

fn rlimit_nofile_raise() -> std::io::Result<(u64, u64)> {
    crate::io::raise_nofile_limit()
}

/// Runs `ringcast server` until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> ExitCode {
    let print = args.print_config;
    let settings = match args.clone().resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if print {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(settings.log_format);
    raise_nofile();
    // Catch SIGINT and SIGTERM before the shards start: one that arrives
    // while they do (just after "ringcast listening", say) waits here and
    // still drains the server, where it would otherwise kill the process.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::builder().config(settings.server.clone()).build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match server.spawn() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = handle.stopper();
    let reloader = handle.reloader();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                reload_tls(&args, &reloader);
                continue;
            }
            tracing::info!(signal = sig, "shutting down: draining clients");
            stopper.stop();
            break;
        }
    });
    let watcher = handle.watcher();
    let reporter = StatsReporter::start(watcher.clone(), settings.stats_interval_secs);
    let result = handle.join();
    drop(reporter);
    match result {
        Ok(_) if watcher.failed_shards() > 0 => {
            // A supervisor should know: exit non-zero (Restart=on-failure).
            eprintln!(
                "ringcast server: {} shard(s) stopped on an I/O error (see the log)",
                watcher.failed_shards()
            );
            ExitCode::FAILURE
        }
        Ok(t) => {
            tracing::info!(
                total_messages = t.total_messages(),
                total_connections = t.total_connections,
                bytes_received = t.bytes_received,
                bytes_sent = t.bytes_sent,
                broadcasts_delivered = t.broadcasts_delivered,
                protocol_errors = t.protocol_errors(),
                "ringcast stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: reads the configuration again (flags, variables, the file) and
/// reloads the TLS certificate, key and client CA it names. On any error
/// the server keeps what it has, and the error is logged.
fn reload_tls(args: &ServerArgs, reloader: &Reloader) {
    let result = args
        .clone()
        .resolve()
        .map_err(|e| e.to_string())
        .and_then(|s| reloader.reload_tls(&s.server).map_err(|e| e.to_string()));
    match result {
        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: reload failed; keeping the current certificate")
        }
    }
}

/// Logs the headline stats at info level every interval, from its own
/// thread; stops when dropped.
struct StatsReporter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatsReporter {
    fn start(watcher: Watcher, interval_secs: u64) -> StatsReporter {
        if interval_secs == 0 {
            return StatsReporter {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let interval = Duration::from_secs(interval_secs);
        let thread = std::thread::Builder::new()
            .name("ringcast-stats".into())
            .spawn(move || {
                let rss = crate::server::stats::RssReader::new();
                let mut last = watcher.totals().total_messages();
                // Wakes each interval; a message or a hang-up ends the loop.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(interval)
                {
                    let t = watcher.totals();
                    let total = t.total_messages();
                    tracing::info!(
                        connected = t.connected,
                        total_connections = t.total_connections,
                        total_messages = total,
                        messages_per_second = (total - last) / interval_secs,
                        bytes_received = t.bytes_received,
                        bytes_sent = t.bytes_sent,
                        broadcasts_delivered = t.broadcasts_delivered,
                        slow_consumer_disconnects = t.slow_consumer_disconnects,
                        protocol_errors = t.protocol_errors(),
                        rss_bytes = rss.rss_bytes(),
                        "stats"
                    );
                    last = total;
                }
            })
            .ok();
        StatsReporter {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for StatsReporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
