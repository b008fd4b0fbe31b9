//! `ringcast top`: a live terminal view of one server, in the manner of
//! nats-top and `redis-cli --stat`, read from its HTTP API
//! (`--http-addr`): totals, rates, and the top connections by rate,
//! pending bytes or bytes sent.
//!
//! - `api.rs`: the HTTP reads (ureq, blocking, keep-alive);
//! - `view.rs`: the screen as lines of text (pure, tested alone);
//! - here: the flags, the terminal (crossterm) and the loop.
//!
//! The terminal is put back as it was on every way out: `q`, Esc, Ctrl-C
//! (read as a key in raw mode), SIGTERM, SIGINT or SIGHUP (a flag the loop
//! checks every [`TICK`]), an error, and a panic (the guard's `Drop`).

mod api;
mod view;

use api::{Api, ApiError, Connections};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use std::collections::HashMap;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use view::{Rates, Sample, Screen, SortBy};

/// Arguments of `ringcast top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// The server's HTTP listener (its `--http-addr`).
    #[arg(
        long,
        default_value = "127.0.0.1:9090",
        value_name = "HOST:PORT",
        env = "RINGCAST_HTTP_ADDR"
    )]
    pub http_addr: String,
    /// The API key (the server's `--api-key`), sent as a bearer token.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", value_parser = interval)]
    pub interval: f64,
    /// Order the connections by `rate`, `pending` (bytes) or `bytes-out`;
    /// keys r, p and b switch while it runs.
    #[arg(long, default_value = "rate", value_parser = ["rate", "pending", "bytes-out"])]
    pub sort: String,
}

fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        Ok(_) => Err("between 0.1 and 3600 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// How often the loop looks at the keyboard and the signal flag: short
/// enough that q and SIGTERM feel immediate.
const TICK: Duration = Duration::from_millis(100);
/// Connections fetched per refresh: the API's page limit, so rates are
/// measured over as many connections as one answer holds.
const LISTED: usize = 1024;

/// Runs `ringcast top` until q, Ctrl-C or a signal.
pub fn run(args: TopArgs) -> ExitCode {
    if !crossterm::tty::IsTty::is_tty(&io::stdout()) {
        eprintln!("ringcast top: stdout is not a terminal (it draws a live screen)");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("ringcast top: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let sort = match args.sort.as_str() {
        "pending" => SortBy::Pending,
        "bytes-out" => SortBy::BytesOut,
        _ => SortBy::Rate,
    };
    let mut term = match Terminal::enter() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringcast top: cannot set up the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = Top::new(&args, sort).run(&mut term, &stop);
    drop(term);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The terminal in raw mode on the alternate screen; `Drop` puts it back.
struct Terminal {
    out: io::Stdout,
}

impl Terminal {
    fn enter() -> io::Result<Terminal> {
        terminal::enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = execute!(out, terminal::EnterAlternateScreen, cursor::Hide) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        Ok(Terminal { out })
    }

    fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        queue!(self.out, cursor::MoveTo(0, 0))?;
        for (i, line) in lines.iter().enumerate() {
            queue!(
                self.out,
                cursor::MoveTo(0, i as u16),
                style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        queue!(
            self.out,
            terminal::Clear(terminal::ClearType::FromCursorDown)
        )?;
        self.out.flush()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = execute!(self.out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// The loop's state between refreshes.
struct Top<'a> {
    args: &'a TopArgs,
    api: Api,
    sort: SortBy,
    prev: Option<Sample>,
    sample: Option<Sample>,
    conns: Connections,
    /// Frames in + out per client at the previous listing, and when.
    prev_frames: HashMap<String, u64>,
    listed_at: Option<Instant>,
    listing_secs: f64,
    problem: Option<String>,
    listing_problem: Option<String>,
}

impl<'a> Top<'a> {
    fn new(args: &'a TopArgs, sort: SortBy) -> Top<'a> {
        Top {
            args,
            api: Api::new(&args.http_addr, args.api_key.as_deref()),
            sort,
            prev: None,
            sample: None,
            conns: Connections::default(),
            prev_frames: HashMap::new(),
            listed_at: None,
            listing_secs: 0.0,
            problem: None,
            listing_problem: None,
        }
    }

    fn run(&mut self, term: &mut Terminal, stop: &AtomicBool) -> io::Result<()> {
        let every = Duration::from_secs_f64(self.args.interval);
        let mut next = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() >= next {
                self.refresh();
                next = Instant::now() + every;
                self.draw(term)?;
            }
            if event::poll(TICK)? {
                match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => match key(k) {
                        Some(Key::Quit) => return Ok(()),
                        Some(Key::Sort(s)) if s != self.sort => {
                            self.sort = s;
                            // A new order needs a new page from the server.
                            next = Instant::now();
                        }
                        _ => {}
                    },
                    Event::Resize(..) => self.draw(term)?,
                    _ => {}
                }
            }
        }
    }

    fn refresh(&mut self) {
        match self.api.stats() {
            Ok(stats) => {
                let local = chrono::Utc::now().timestamp_millis();
                self.prev = self.sample.take();
                self.sample = Some(Sample::new(stats, local));
                self.problem = None;
            }
            Err(e) => {
                self.problem = Some(e.to_string());
                return;
            }
        }
        match self.api.connections(self.sort.api_key(), LISTED) {
            Ok(c) => {
                let now = Instant::now();
                self.listing_secs = self
                    .listed_at
                    .map(|t| now.duration_since(t).as_secs_f64())
                    .unwrap_or(0.0);
                self.listed_at = Some(now);
                self.prev_frames = self
                    .conns
                    .connections
                    .iter()
                    .map(|c| (c.client_id.clone(), c.msgs_in + c.msgs_out))
                    .collect();
                self.conns = c;
                self.listing_problem = None;
            }
            Err(ApiError::Status { status: 404, .. }) => {
                self.listing_problem =
                    Some("this server has no /v1/connections (an older ringcast)".into());
            }
            Err(e) => self.listing_problem = Some(e.to_string()),
        }
    }

    fn draw(&self, term: &mut Terminal) -> io::Result<()> {
        let (w, h) = terminal::size().unwrap_or((100, 30));
        let rows = view::rows(
            &self.conns.connections,
            &self.prev_frames,
            self.listing_secs,
            self.sort,
        );
        let screen = Screen {
            addr: &self.args.http_addr,
            sample: self.sample.as_ref(),
            rates: match (&self.prev, &self.sample) {
                (Some(a), Some(b)) => Rates::between(a, b),
                _ => None,
            },
            connections_total: self.listed_at.map(|_| self.conns.total),
            rows: &rows,
            sort: Some(self.sort),
            problem: self.problem.as_deref(),
            listing_problem: self.listing_problem.as_deref(),
        };
        term.draw(&view::render(&screen, w as usize, h as usize))
    }
}

enum Key {
    Quit,
    Sort(SortBy),
}

fn key(k: KeyEvent) -> Option<Key> {
    match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Quit),
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Some(Key::Quit),
        KeyCode::Char('r') => Some(Key::Sort(SortBy::Rate)),
        KeyCode::Char('p') => Some(Key::Sort(SortBy::Pending)),
        KeyCode::Char('b') => Some(Key::Sort(SortBy::BytesOut)),
        _ => None,
    }
}
