//! The sharded server.
//!
//! One shard per core, each a pinned thread with its own I/O backend (on
//! io_uring: its own ring and buffer ring; on epoll: its own epoll
//! instance) and its own SO_REUSEPORT listeners (plain, and TLS when on);
//! shards share no lock on the hot path. A
//! broadcast is serialised once into a [`bytes::Bytes`] and handed to the
//! other shards over lock-free queues (see [`broadcast`]). See
//! docs/ARCHITECTURE.md for the picture.
//!
//! ```no_run
//! use ringcast::server::Server;
//! let handle = Server::builder()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .shards(2)
//!     .build()
//!     .unwrap()
//!     .spawn()
//!     .unwrap();
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown();
//! ```

mod admission;
pub mod config;
mod http;
pub mod jwt;
mod listener;
mod shard;
pub mod stats;
mod tls;

pub use config::{IoBackend, ServerConfig, WakeMode};

pub use crate::session::Handler;

use crate::io::ListenerId;
use crate::protocol::TimestampCache;
use crate::route::{NodeInfo, RouteSettings, Router};
use http::HttpEndpoint;
use stats::Totals;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use thiserror::Error;

/// Why the server could not start (or failed while running).
#[derive(Debug, Error)]
pub enum ServerError {
    /// The I/O backend could not be set up (io_uring refused with
    /// `--io-backend io-uring`, say); the message says how to fix it.
    #[error("I/O backend unavailable: {0}")]
    Backend(String),
    /// The listen address could not be bound.
    #[error("{0}")]
    Bind(io::Error),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TLS certificate, key or CA file could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// State shared by all shards: read-mostly, plus per-shard padded slots.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub shards: usize,
    /// Where every message goes: mailboxes, interest, the cluster, the
    /// counters (see `route`).
    pub router: Arc<Router>,
    /// Connections over all shards (for `max_connections`); touched on
    /// accept and close only.
    pub connections: AtomicUsize,
    /// Connections per IP (only when `max_connections_per_ip` is set).
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub stop: AtomicBool,
    /// Shards that stopped on an I/O error (the others keep serving;
    /// `/healthz` then answers 503 so a supervisor can replace the process).
    pub failed_shards: AtomicUsize,
    /// The backend every shard runs on (`auto` resolved at build).
    pub io_backend: crate::io::Kind,
    /// Makes TLS connections (None without a TLS listener).
    pub tls: Option<tls::TlsAcceptor>,
    /// Verifies JWTs (None without `jwt_secret` or `jwt_public_key`).
    pub verifier: Option<crate::session::grant::Verifier>,
}

impl Shared {
    /// State for `event_fds.len()` shards (each shard's wake-up eventfd).
    pub fn new(
        config: ServerConfig,
        handlers: HashMap<String, Arc<dyn Handler>>,
        io_backend: crate::io::Kind,
        event_fds: &[std::os::fd::RawFd],
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Shared {
        let start_unix_ms = crate::protocol::time::unix_ms_now();
        let node = NodeInfo {
            start_unix_ms,
            start_time: TimestampCache::new().format(start_unix_ms).to_string(),
            io_backend: io_backend.as_str(),
            handlers,
        };
        let settings = RouteSettings {
            compression_threshold_bytes: config.compression_threshold_bytes,
            max_subscriptions: config.max_subscriptions,
            msg_ring: config.wake == WakeMode::MsgRing,
            history: crate::route::history::HistorySettings {
                size: config.history_size,
                ttl_ms: config.history_ttl_secs.saturating_mul(1000),
                max_bytes: config.max_history_bytes,
                recover_limit: config.history_recover_limit,
            },
        };
        Shared {
            shards: event_fds.len(),
            router: Arc::new(Router::new(event_fds, settings, node, cluster)),
            config,
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            failed_shards: AtomicUsize::new(0),
            io_backend,
            tls: None,
            verifier: None,
        }
    }

    /// Sums every shard's counters (and the backplane reader's).
    pub fn totals(&self, per_shard: &mut Vec<u64>) -> Totals {
        self.router.totals(per_shard)
    }

    /// The backplane, with `--backplane`.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.router.cluster.as_deref()
    }
}

/// How long a start waits for the history Redis holds (see
/// `cluster::history`).
const HISTORY_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    config: ServerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

/// One [`ServerBuilder`] method per row of the settings table
/// ([`config::server_settings!`]), documented as the field it sets.
macro_rules! builder_setters {
    (
        {}
        $(
            $(#[doc = $doc:literal])*
            $([$($mark:ident),*])?
            $name:ident: $ty:ty = $default:expr
        ),* $(,)?
    ) => {
        $(
            $(#[doc = $doc])*
            pub fn $name(mut self, v: $ty) -> Self {
                self.config.$name = v;
                self
            }
        )*
    };
}

impl ServerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    config::server_settings!(builder_setters! {});

    /// [`ServerBuilder::http_addr`], by its former name.
    pub fn metrics_addr(self, v: Option<SocketAddr>) -> Self {
        self.http_addr(v)
    }

    /// Registers a handler for custom messages of type `type_name`.
    pub fn handler(mut self, type_name: &str, h: impl Handler) -> Self {
        self.handlers.insert(type_name.to_string(), Arc::new(h));
        self
    }

    /// Validates the configuration, loads the TLS files and binds the
    /// listeners.
    pub fn build(self) -> Result<Server, ServerError> {
        self.config.validate().map_err(ServerError::Config)?;
        let tls = tls::TlsAcceptor::new(&self.config)?;
        let verifier = jwt::JwtVerifier::from_config(&self.config).map_err(ServerError::Config)?;
        let n = self.config.effective_shards();
        let mut listeners: Vec<Vec<(TcpListener, ListenerId)>> =
            (0..n).map(|_| Vec::with_capacity(2)).collect();
        let mut bind = |addr, id| -> Result<SocketAddr, ServerError> {
            let socks =
                listener::bind_all(addr, n, self.config.backlog).map_err(ServerError::Bind)?;
            let local = socks[0].local_addr()?;
            for (shard, sock) in listeners.iter_mut().zip(socks) {
                shard.push((sock, id));
            }
            Ok(local)
        };
        let plain_addr = match self.config.plain {
            true => Some(bind(self.config.addr, PLAIN_LISTENER)?),
            false => None,
        };
        let tls_addr = match self.config.tls_addr {
            Some(addr) => Some(bind(addr, TLS_LISTENER)?),
            None => None,
        };
        let http_listener = match self.config.http_addr {
            Some(addr) => Some(http::bind(addr)?),
            None => None,
        };
        let io_backend = resolve_backend(self.config.io_backend)?;
        let mut wake_fds = Vec::with_capacity(n);
        for _ in 0..n {
            wake_fds.push(crate::io::sys::eventfd()?);
        }
        let fds: Vec<_> = wake_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let cluster = match &self.config.backplane {
            Some(url) => {
                let id = self.config.node_id.clone().unwrap_or_else(|| {
                    // Either listener names the node; plain first, as before TLS.
                    let addr = plain_addr.or(tls_addr).expect("validate: a listener is on");
                    crate::cluster::Cluster::default_node_id(addr)
                });
                let limit = self.config.backplane_buffer_bytes;
                let max = self.config.max_frame_bytes;
                let mut c = crate::cluster::Cluster::new(url, id, limit, max)
                    .map_err(ServerError::Config)?;
                if self.config.history_size > 0 {
                    c = c.with_history(crate::cluster::history::HistoryTarget {
                        size: self.config.history_size,
                        ttl_ms: self.config.history_ttl_secs * 1000,
                    });
                }
                Some(Arc::new(c))
            }
            None => None,
        };
        let mut shared = Shared::new(self.config, self.handlers, io_backend, &fds, cluster);
        shared.tls = tls;
        shared.verifier = verifier;
        Ok(Server {
            shared: Arc::new(shared),
            listeners,
            http_listener,
            wake_fds,
            addrs: Addrs {
                plain: plain_addr,
                tls: tls_addr,
            },
        })
    }
}

/// The listener a connection came in on (see [`crate::io::ListenerId`]).
pub(crate) const PLAIN_LISTENER: ListenerId = ListenerId(0);
/// The TLS listener.
pub(crate) const TLS_LISTENER: ListenerId = ListenerId(1);

/// Where a server listens (with the real ports when 0 was asked for).
#[derive(Debug, Clone, Copy)]
struct Addrs {
    /// Plain TCP (None with `plain = false`).
    plain: Option<SocketAddr>,
    /// TLS (None without `tls_addr`).
    tls: Option<SocketAddr>,
}

impl Addrs {
    /// The plain address, or the TLS one on a TLS-only server.
    fn main(&self) -> SocketAddr {
        self.plain
            .or(self.tls)
            .expect("validate() ensures a listener")
    }
}

/// A bound server, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    /// Each shard's listeners.
    listeners: Vec<Vec<(TcpListener, ListenerId)>>,
    http_listener: Option<TcpListener>,
    wake_fds: Vec<OwnedFd>,
    addrs: Addrs,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.addrs)
            .field("shards", &self.shared.shards)
            .finish()
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The bound plain address (with the real port when 0 was asked
    /// for); on a TLS-only server, the TLS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.main()
    }

    /// The bound TLS address, if TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.tls
    }

    /// Starts the shard threads and returns at once.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let cores = if self.shared.config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (i, (listeners, wake)) in self.listeners.into_iter().zip(self.wake_fds).enumerate() {
            let shared = self.shared.clone();
            let core = if cores.is_empty() {
                None
            } else {
                Some(cores[i % cores.len()])
            };
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("ringcast-shard-{i}"))
                .spawn(move || shard::run(i, shared, listeners, wake, core, ready))?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut features = None;
        let mut first_err = None;
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(f)) => features = Some(f),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(ServerError::Backend(
                        "a shard thread died during start-up".into(),
                    ));
                }
            }
        }
        let mut handle = ServerHandle {
            shared: self.shared,
            threads,
            http: None,
            addrs: self.addrs,
        };
        if let Some(e) = first_err {
            handle.stop();
            let _ = handle.join();
            return Err(e);
        }
        if let Some(c) = &handle.shared.router.cluster {
            if let Err(e) = c.start(handle.shared.router.clone()) {
                handle.stop();
                let _ = handle.join();
                return Err(ServerError::Io(e));
            }
            // Positions and recoveries come from the history Redis holds:
            // read it before the first clients are answered, if Redis
            // answers soon (else the mirror catches up when it does).
            if c.keeps_history() && !c.wait_history_loaded(HISTORY_LOAD_WAIT) {
                tracing::warn!(
                    "the backplane's history was not read within {HISTORY_LOAD_WAIT:?}; \
                    serving positions from this node until it is"
                );
            }
        }
        if let Some(l) = self.http_listener {
            match HttpEndpoint::start(l, handle.shared.clone()) {
                Ok(m) => handle.http = Some(m),
                Err(e) => {
                    handle.stop();
                    let _ = handle.join();
                    return Err(ServerError::Io(e));
                }
            }
        }
        let pinned: Vec<String> = if cores.is_empty() {
            vec!["none".into()]
        } else {
            (0..handle.shared.shards)
                .map(|i| cores[i % cores.len()].id.to_string())
                .collect()
        };
        tracing::info!(
            addr = %handle.addrs.plain.map_or("off".into(), |a| a.to_string()),
            tls_addr = %handle.addrs.tls.map_or("off".into(), |a| a.to_string()),
            shards = handle.shared.shards,
            pinned_cores = %pinned.join(","),
            node_id = handle.shared.cluster().map_or("", |c| c.node_id.as_str()),
            io_backend = handle.shared.io_backend.as_str(),
            features = %features.unwrap_or_default(),
            "ringcast listening"
        );
        Ok(handle)
    }

    /// A trigger that stops this server once it runs (take it before
    /// [`Server::run`], which blocks; a signal handler can hold it).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Runs on the calling thread until stopped through a [`Stopper`], then
    /// returns the final totals.
    pub fn run(self) -> Result<Totals, ServerError> {
        let handle = self.spawn()?;
        handle.join()
    }
}

/// Controls a running server.
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The HTTP listener, when configured; it outlives the shards' drain
    /// (scrapes and `/healthz` = 503 still work then) and stops last.
    http: Option<HttpEndpoint>,
    addrs: Addrs,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl ServerHandle {
    /// The plain address clients connect to; on a TLS-only server, the
    /// TLS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.main()
    }

    /// The TLS address clients connect to, if TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.tls
    }

    /// Reloads the TLS certificate, key and client CA from the files `cfg`
    /// names (the running ones, or new paths): handshakes from now on use
    /// them, connections already made are untouched. On error (a file
    /// missing or bad, a key that does not match) the old ones stay.
    pub fn reload_tls(&self, cfg: &ServerConfig) -> Result<(), ServerError> {
        self.reloader().reload_tls(cfg)
    }

    /// A cloneable, thread-safe [`ServerHandle::reload_tls`] (for a
    /// SIGHUP handler).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// The address of the HTTP listener (metrics, health, API; with the
    /// real port when 0 was asked for), if one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpEndpoint::local_addr)
    }

    /// [`ServerHandle::http_addr`], by its former name.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http_addr()
    }

    /// Current totals over all shards.
    pub fn totals(&self) -> Totals {
        self.shared.totals(&mut Vec::new())
    }

    /// Asks every shard to shut down gracefully (returns at once).
    pub fn stop(&self) {
        request_stop(&self.shared);
    }

    /// A cloneable, thread-safe trigger for [`ServerHandle::stop`] (for
    /// signal handlers and other threads).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// A cloneable, thread-safe view of the counters (for reporters and
    /// monitoring threads).
    pub fn watcher(&self) -> Watcher {
        Watcher(self.shared.clone())
    }

    /// Waits for every shard to finish, then stops the HTTP listener;
    /// returns the final totals.
    pub fn join(mut self) -> Result<Totals, ServerError> {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = self.shared.cluster() {
            c.stop_and_join();
        }
        if let Some(mut m) = self.http.take() {
            m.stop();
        }
        Ok(self.shared.totals(&mut Vec::new()))
    }

    /// Stops gracefully (clients get `shutting_down`, output is flushed
    /// within `drain_secs`) and waits for the shards.
    pub fn shutdown(self) -> Totals {
        self.stop();
        self.join().unwrap_or_default()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        if let Some(c) = self.shared.cluster() {
            c.stop_and_join();
        }
        if let Some(mut m) = self.http.take() {
            m.stop();
        }
    }
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stopper")
    }
}

impl Stopper {
    /// Asks every shard to shut down gracefully.
    pub fn stop(&self) {
        request_stop(&self.0);
    }
}

/// Reloads a running server's TLS files from any thread.
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// See [`ServerHandle::reload_tls`].
    pub fn reload_tls(&self, cfg: &ServerConfig) -> Result<(), ServerError> {
        let Some(acceptor) = &self.0.tls else {
            return Err(ServerError::Config(
                "TLS is not on (no tls_addr at start); a reload cannot add it".into(),
            ));
        };
        cfg.validate().map_err(ServerError::Config)?;
        acceptor.reload(cfg)?;
        Ok(())
    }
}

/// Reads a running server's counters from any thread.
#[derive(Clone)]
pub struct Watcher(Arc<Shared>);

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

impl Watcher {
    /// Current totals over all shards.
    pub fn totals(&self) -> Totals {
        self.0.totals(&mut Vec::new())
    }

    /// Shards that stopped on an I/O error (the others keep serving).
    pub fn failed_shards(&self) -> usize {
        self.0.failed_shards.load(Ordering::SeqCst)
    }
}

/// Turns the configured backend into the one to run: `auto` probes
/// io_uring on this thread and falls back to epoll, with one warning that
/// names the cause and the fix.
pub fn resolve_backend(want: IoBackend) -> Result<crate::io::Kind, ServerError> {
    use crate::io::Kind;
    match want {
        IoBackend::Epoll => Ok(Kind::Epoll),
        IoBackend::IoUring => crate::io::probe_uring()
            .map(|()| Kind::Uring)
            .map_err(|e| ServerError::Backend(e.explanation)),
        IoBackend::Auto => match crate::io::probe_uring() {
            Ok(()) => Ok(Kind::Uring),
            Err(e) => {
                tracing::warn!(
                    cause = %e.explanation,
                    "io_uring is not available here, so the server runs on the epoll backend; \
                     to use io_uring, remove the cause given in this line; \
                     --io-backend epoll silences this warning"
                );
                Ok(Kind::Epoll)
            }
        },
    }
}

/// Sets the stop flag and wakes every shard so it notices at once.
fn request_stop(shared: &Shared) {
    shared.stop.store(true, Ordering::SeqCst);
    for m in shared.router.mailboxes.iter() {
        m.wake_external();
    }
}
