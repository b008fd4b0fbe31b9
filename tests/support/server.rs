//! Servers under test. In this process: [`builder`] and [`build`] (the one
//! place a test server is built, so every test runs on the I/O backend named
//! by `RINGCAST_IO_BACKEND`), [`spawn`], [`start`] and [`Backend`] (the
//! client tests' server). As a child process: [`server_command`],
//! [`CliServer`], [`spawn_confined`] (under seccomp filters), [`LogLines`]
//! (its stderr), [`sigterm`] and [`wait_exit`].

use crate::support::wait::{poll, recv_within};
use ringcast::server::{IoBackend, Server, ServerBuilder, ServerError, ServerHandle};
use seccompiler::BpfProgram;
use serde_json::Value;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The variable naming the I/O backend every test server uses (`auto`,
/// `io-uring` or `epoll`; unset: the builder's default). Child-process
/// servers read it themselves; it is the one `RINGCAST_*` variable they
/// inherit (see [`server_command`]).
pub const IO_BACKEND_ENV: &str = "RINGCAST_IO_BACKEND";

/// The backend `RINGCAST_IO_BACKEND` names; `None` when it is unset. Panics
/// on any other value, so a typo cannot quietly test the default.
pub fn io_backend_from_env() -> Option<IoBackend> {
    let v = match std::env::var(IO_BACKEND_ENV) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return None,
        Err(e) => panic!("{IO_BACKEND_ENV}: {e}"),
    };
    let all = IoBackend::ALL;
    let names: Vec<&str> = all.iter().map(|b| b.as_str()).collect();
    match all.iter().find(|b| b.as_str() == v) {
        Some(b) => Some(*b),
        None => panic!(
            "{IO_BACKEND_ENV}={v:?} is not an I/O backend: use one of {names:?}, \
             or leave it unset for the default"
        ),
    }
}

/// A builder for a test server: 127.0.0.1:0, `shards` shards, not pinned
/// (tests run side by side on few cores).
pub fn builder(shards: usize) -> ServerBuilder {
    Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .shards(shards)
        .pin(false)
}

/// Builds (binds) a test server: the one function every in-process server
/// of the tests goes through. `RINGCAST_IO_BACKEND`, when set, is applied
/// here, over whatever the builder says, so the whole suite runs on it.
pub fn build(b: ServerBuilder) -> Result<Server, ServerError> {
    match io_backend_from_env() {
        Some(backend) => b.io_backend(backend),
        None => b,
    }
    .build()
}

/// Builds and spawns.
pub fn spawn(b: ServerBuilder) -> ServerHandle {
    build(b)
        .expect("server builds")
        .spawn()
        .expect("server starts")
}

/// A server with defaults and `shards` shards.
pub fn start(shards: usize) -> ServerHandle {
    spawn(builder(shards))
}

/// The real server, in this process, for the client tests: two shards, no
/// idle timeout, and one custom handler: `fake_custom` answers
/// `fake_custom_ok` with the request's `data`.
pub struct Backend(ServerHandle);

impl Backend {
    fn build(addr: SocketAddr, token: Option<&str>) -> Backend {
        // A restarted server may find its port busy for a moment.
        let mut last = None;
        let server = poll(Duration::from_secs(10), || {
            let b = builder(2)
                .addr(addr)
                .idle_timeout_secs(0)
                .auth_token(token.map(str::to_owned))
                .handler(
                    "fake_custom",
                    |req: &ringcast::protocol::Request<'_, '_>,
                     _: &str,
                     _: &str,
                     out: &mut Vec<u8>| {
                        ringcast::protocol::message::write_response(
                            out,
                            "fake_custom_ok",
                            req.id.as_ref(),
                            |o| {
                                if let Some(d) = req.get("data") {
                                    o.value("data", &d);
                                }
                            },
                        )
                    },
                );
            build(b).map_err(|e| last = Some(e)).ok()
        })
        .unwrap_or_else(|| panic!("server on {addr}: {}", last.unwrap()));
        Backend(server.spawn().expect("server start"))
    }

    pub fn start() -> Backend {
        Self::build("127.0.0.1:0".parse().unwrap(), None)
    }

    pub fn with_token(token: &str) -> Backend {
        Self::build("127.0.0.1:0".parse().unwrap(), Some(token))
    }

    /// Binds a fixed address (to restart on the same port).
    pub fn start_on(addr: SocketAddr) -> Backend {
        Self::build(addr, None)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Graceful stop (`shutting_down`, drain, join), then waits (up to 5 s)
    /// until the port refuses connections: the listener outlives
    /// `shutdown()` by a few milliseconds (reported to the server's owner),
    /// and a restart in that window would share the port with it.
    pub fn stop(self) {
        let addr = self.addr();
        self.0.shutdown();
        let _ = poll(Duration::from_secs(5), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
    }
}

/// `ringcast server`, with no inherited `RINGCAST_*` setting but
/// `RINGCAST_IO_BACKEND` (so a child server runs on the suite's backend),
/// no `RUST_LOG`, and `NO_COLOR=1`.
pub fn server_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    c.arg("server");
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("RINGCAST_") && k != IO_BACKEND_ENV {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

/// The flags of a local test server: `--addr 127.0.0.1:0 --shards
/// {shards} --no-pin`.
pub fn local_args(shards: usize) -> Vec<String> {
    [
        "--addr",
        "127.0.0.1:0",
        "--shards",
        &shards.to_string(),
        "--no-pin",
    ]
    .map(String::from)
    .to_vec()
}

/// A `ringcast server` child process on 127.0.0.1 with a kernel-chosen
/// port; killed (SIGKILL) on drop if still running.
pub struct CliServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// Kept so the reader thread has somewhere to put later lines.
    _log: LogLines,
}

impl CliServer {
    /// Starts `ringcast server --addr 127.0.0.1:0 --shards 2 --no-pin
    /// --log-format json` plus `args` ([`server_command`]'s environment with
    /// `envs` and `RUST_LOG=info`), and waits for its "ringcast listening"
    /// log line to learn the port.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> CliServer {
        let mut cmd = server_command();
        cmd.args(local_args(2))
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied());
        let mut child = cmd.spawn().expect("start ringcast server");
        let mut log = LogLines::new(child.stderr.take().unwrap());
        let listening = await_listening(&mut child, &mut log, Duration::from_secs(10));
        CliServer {
            child,
            addr: addr_field(&listening),
            _log: log,
        }
    }

    /// SIGTERM, then waits up to `within` for a clean exit; returns whether
    /// it exited successfully.
    pub fn terminate(&mut self, within: Duration) -> bool {
        sigterm(&self.child);
        wait_exit(&mut self.child, within).is_some_and(|st| st.success())
    }
}

impl Drop for CliServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `within` for a server child's JSON "ringcast listening" log
/// line; kills the child and panics, with what it wrote so far, if none
/// comes.
fn await_listening(child: &mut Child, log: &mut LogLines, within: Duration) -> Value {
    match log.wait_for("ringcast listening", within) {
        Some(v) => v,
        None => {
            let _ = child.kill();
            panic!(
                "ringcast server printed no listening line within {within:?}; stderr: {:#?}",
                log.seen
            );
        }
    }
}

/// The `addr` field of a JSON log line.
fn addr_field(line: &Value) -> SocketAddr {
    line["fields"]["addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no addr field in {line}"))
        .parse()
        .expect("an address")
}

/// A `ringcast` child process started under seccomp filters, with its
/// stderr lines.
pub struct Confined {
    pub child: Child,
    pub log: LogLines,
}

/// Spawns `ringcast args...` (its command adjusted by `prepare`) from a
/// thread that first loads `filters`; the child inherits them across fork
/// and exec, as a container's process does from runc. Its stderr is one end
/// of a socket pair made before the filters are loaded, so the spawning
/// needs no system call beyond `dup2` to put it in place.
pub fn spawn_confined<S: AsRef<str>>(
    filters: Vec<BpfProgram>,
    args: &[S],
    prepare: impl FnOnce(&mut Command) + Send + 'static,
) -> Confined {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let args: Vec<String> = args.iter().map(|s| s.as_ref().to_owned()).collect();
    let child = std::thread::spawn(move || {
        for f in &filters {
            seccompiler::apply_filter(f).expect("seccomp filter loads");
        }
        let mut c = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        c.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(theirs)));
        prepare(&mut c);
        c.spawn()
    })
    .join()
    .unwrap()
    .expect("ringcast spawns under the filter");
    Confined {
        child,
        log: LogLines::new(ours),
    }
}

impl Confined {
    /// Waits (up to 15 s) for the JSON log line "ringcast listening" and
    /// returns it.
    pub fn listening(&mut self) -> Value {
        await_listening(&mut self.child, &mut self.log, Duration::from_secs(15))
    }

    /// [`Self::listening`]'s address.
    pub fn listening_addr(&mut self) -> SocketAddr {
        addr_field(&self.listening())
    }

    /// The metrics endpoint's address, from its start-up line (logged before
    /// "ringcast listening", so call [`Self::listening_addr`] first).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.log
            .find_seen("metrics endpoint listening")
            .map(|v| addr_field(&v))
            .unwrap_or_else(|| panic!("no metrics endpoint line in {:#?}", self.log.seen))
    }

    /// Waits for the process to exit; returns its status and all of stderr.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let Some(status) = wait_exit(&mut self.child, within) else {
            panic!("ringcast did not exit; stderr: {:#?}", self.log.seen);
        };
        // The child's end is closed now: read what is left to EOF.
        (status, self.log.finish(Duration::from_secs(5)).join("\n"))
    }
}

/// The lines a child process writes (its stderr, say), read on a thread of
/// their own so that a test can wait for one with a deadline.
pub struct LogLines {
    rx: Receiver<String>,
    /// Every line read so far, in order.
    pub seen: Vec<String>,
}

impl LogLines {
    /// Starts reading `r` line by line.
    pub fn new(r: impl Read + Send + 'static) -> LogLines {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in io::BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a new line that `pick` accepts; `None` if
    /// none came (or the stream ended) by then. Every line read is kept in
    /// `seen`.
    fn wait_line<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let seen = &mut self.seen;
        recv_within(&self.rx, within, |line| {
            let got = pick(&line);
            seen.push(line);
            got
        })
    }

    /// Waits up to `within` for a JSON log line whose message starts with
    /// `msg`; `None` if none came (or the stream ended) by then.
    pub fn wait_for(&mut self, msg: &str, within: Duration) -> Option<Value> {
        self.wait_line(within, |l| log_line_with(l, msg))
    }

    /// Waits up to `within` for a line containing `text` (text-format logs,
    /// or any program's output).
    pub fn wait_for_text(&mut self, text: &str, within: Duration) -> Option<String> {
        self.wait_line(within, |l| l.contains(text).then(|| l.to_owned()))
    }

    /// The first line already read whose message starts with `msg`.
    pub fn find_seen(&self, msg: &str) -> Option<Value> {
        self.seen.iter().find_map(|l| log_line_with(l, msg))
    }

    /// Reads what is left until the stream ends (the child has exited), or
    /// until no line comes for `quiet`; returns every line.
    pub fn finish(mut self, quiet: Duration) -> Vec<String> {
        while let Ok(l) = self.rx.recv_timeout(quiet) {
            self.seen.push(l);
        }
        self.seen
    }
}

/// `line` as JSON when it is a tracing JSON line whose message starts with `msg`.
fn log_line_with(line: &str, msg: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let m = v["fields"]["message"].as_str()?;
    m.starts_with(msg).then_some(v)
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
}

/// Waits up to `within` for a child to exit; `None` (the child killed) if
/// it did not.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let status = poll(within, || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// What a `ringcast` child process did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code; shows both outputs if it is another.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs the `ringcast` binary with `args` and `stdin` piped in (no
/// `RINGCAST_TOKEN` / `RINGCAST_ADDR` from the environment, no colour);
/// panics if it has not finished `within` (it is killed).
pub fn run_ringcast(args: &[&str], stdin: &str, within: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RINGCAST_TOKEN")
        .env_remove("RINGCAST_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(stdin.as_bytes());
    });
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_t = read_all(Box::new(child.stdout.take().unwrap()));
    let err_t = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, within)
        .unwrap_or_else(|| panic!("ringcast {args:?} did not finish in {within:?}"));
    writer.join().unwrap();
    Run {
        code: status.code(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}
