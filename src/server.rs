//! The server: accept loops, connection and request limits, readiness,
//! status, watchdog, and graceful shutdown.
//!
//! Lifecycle:
//! 1. listeners (already bound or inherited) are registered with the runtime
//!    and one accept loop per listener starts;
//! 2. `READY=1` is sent only then, with a first `STATUS=`;
//! 3. a status task refreshes `STATUS=` every few seconds, and a watchdog
//!    task pings at half of `WATCHDOG_USEC` — it runs on the serving runtime
//!    and checks that every accept loop is still alive, so a wedged runtime
//!    or a dead listener stops the pings and systemd restarts us;
//! 4. on SIGTERM/SIGINT (or `--idle-exit`): `STOPPING=1`, accepting stops,
//!    idle connections close, busy ones close after their last request, and
//!    the process exits once all are gone or `--shutdown-timeout` passes;
//! 5. on SIGHUP, a reload (`crate::reload`): a new process takes over the
//!    sockets and becomes the main process, then this one drains as in 4.
//!
//! Sockets that systemd owns are never unlinked; the ones we bound are.

use crate::fastcgi::connection::{self, ConnConfig, ConnMeta, Engine};
use crate::http_server;
use crate::reload::{self, Reloader};
use crate::service::App;
use crate::stats::Stats;
use crate::systemd::listen::{Listener, Protocol, Socket};
use crate::systemd::notify;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Server settings (the `serve` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_connections: usize,
    pub max_requests: usize,
    pub max_requests_per_conn: usize,
    pub max_params_bytes: usize,
    pub max_body_bytes: u64,
    pub stall_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub idle_exit: Option<Duration>,
    pub status_interval: Duration,
    /// How long a new process started by a reload gets to become ready.
    pub reload_timeout: Duration,
    /// Install SIGTERM/SIGINT handlers that start a graceful shutdown, and
    /// a SIGHUP handler that reloads (`crate::reload`). The binary wants
    /// them; a program embedding the library may prefer its own (tokio
    /// cannot uninstall a handler once installed) and use
    /// [`Server::shutdown_token`] instead.
    pub handle_signals: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            max_requests: 1024,
            max_requests_per_conn: 128,
            max_params_bytes: 128 * 1024,
            max_body_bytes: 32 * 1024 * 1024,
            stall_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
            idle_exit: None,
            status_interval: Duration::from_secs(5),
            reload_timeout: Duration::from_secs(30),
            handle_signals: true,
        }
    }
}

/// A configured server, ready to serve an [`App`].
pub struct Server {
    config: ServerConfig,
    listeners: Vec<Listener>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl Server {
    pub fn new(config: ServerConfig, listeners: Vec<Listener>) -> Server {
        Server {
            config,
            listeners,
            stats: Arc::new(Stats::new()),
            shutdown: CancellationToken::new(),
        }
    }

    /// The live figures (hand them to the application for a status page).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Cancel it to shut the server down gracefully (as SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Describes each listener, for the application's front page.
    pub fn listener_descriptions(&self) -> Vec<String> {
        self.listeners.iter().map(Listener::describe).collect()
    }

    /// Serves until shutdown. Must run inside a tokio runtime.
    pub async fn serve(mut self, app: App) -> anyhow::Result<()> {
        let cfg = &self.config;
        let engine = Arc::new(Engine {
            app,
            config: ConnConfig {
                max_requests_per_conn: cfg.max_requests_per_conn,
                max_params_bytes: cfg.max_params_bytes,
                max_body_bytes: cfg.max_body_bytes,
                stall_timeout: cfg.stall_timeout,
                idle_timeout: cfg.idle_timeout,
                max_conns: cfg.max_connections,
                max_requests: cfg.max_requests,
            },
            stats: self.stats.clone(),
            shutdown: self.shutdown.clone(),
        });
        let conn_slots = Arc::new(Semaphore::new(cfg.max_connections));
        let connections = TaskTracker::new();

        // Signals first: a SIGTERM that arrives right after READY must drain.
        let mut signals = if cfg.handle_signals {
            use tokio::signal::unix::{SignalKind, signal};
            Some((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        } else {
            None
        };

        let mut reloader = Reloader::new(&self.listeners, cfg.reload_timeout, cfg.handle_signals)?;
        let mut accept_loops = Vec::new();
        let mut owned_paths = Vec::new();
        let mut alive_flags = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            info!("listening: {}", l.describe());
            if let Some(p) = &l.owned_path {
                owned_paths.push(p.clone());
            }
            let meta = ConnMeta {
                listener: Arc::from(l.address.as_str()),
                inherited: l.inherited.is_some(),
            };
            let alive = Arc::new(AtomicBool::new(true));
            alive_flags.push(alive.clone());
            let acceptor = Acceptor {
                engine: engine.clone(),
                slots: conn_slots.clone(),
                tracker: connections.clone(),
                meta,
                protocol: l.protocol,
                alive,
            };
            let handle = match l.socket {
                Socket::Unix(s) => {
                    let s = tokio::net::UnixListener::from_std(s)?;
                    tokio::spawn(acceptor.run(s))
                }
                Socket::Tcp(s) => {
                    let s = tokio::net::TcpListener::from_std(s)?;
                    tokio::spawn(acceptor.run(s))
                }
            };
            accept_loops.push(handle);
        }

        let first_status = format!("serving; {}", Self::status_text(&self.stats));
        let predecessor = reload::announce_ready(&first_status).await?;
        info!("ready");

        let status_task = {
            let stats = self.stats.clone();
            let every = cfg.status_interval;
            tokio::spawn(async move {
                let mut t = tokio::time::interval(every);
                t.tick().await;
                loop {
                    t.tick().await;
                    notify::status(&Self::status_text(&stats));
                }
            })
        };

        let watchdog_task = notify::watchdog_period().map(|period| {
            let alive_flags = alive_flags.clone();
            info!("systemd watchdog enabled: pinging every {:?}", period / 2);
            tokio::spawn(async move {
                let mut t = tokio::time::interval(period / 2);
                loop {
                    t.tick().await;
                    // Reaching this line proves the runtime schedules tasks;
                    // the flags prove every listener still accepts.
                    if alive_flags.iter().all(|a| a.load(Ordering::Relaxed)) {
                        notify::watchdog();
                    } else {
                        error!("an accept loop has died; withholding watchdog pings so systemd restarts us");
                    }
                }
            })
        });

        let idle_exit = async {
            match cfg.idle_exit {
                None => std::future::pending::<()>().await,
                Some(limit) => {
                    let mut idle_for = Duration::ZERO;
                    let step = Duration::from_millis(250).min(limit);
                    loop {
                        tokio::time::sleep(step).await;
                        if self.stats.active_connections() == 0 {
                            idle_for += step;
                            if idle_for >= limit {
                                return;
                            }
                        } else {
                            idle_for = Duration::ZERO;
                        }
                    }
                }
            }
        };

        let signal = async {
            match &mut signals {
                Some((term, int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            r = signal => r.to_string(),
            _ = idle_exit => "idle exit (no connection)".to_string(),
            _ = self.shutdown.cancelled() => "shutdown requested".to_string(),
            pid = reloader.handed_over() => format!("reloaded (PID {pid} took over)"),
        };
        let in_flight = self.stats.active_requests();
        info!("{reason}: shutting down; draining {in_flight} requests in flight");
        notify::stopping(&format!(
            "stopping ({reason}); draining {in_flight} requests"
        ));
        self.shutdown.cancel();
        for h in &accept_loops {
            h.abort();
        }
        connections.close();
        let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout;
        let drained = tokio::time::timeout_at(deadline, connections.wait()).await;
        if let Some(p) = predecessor {
            // KillMode=mixed: our exit ends what is left of the service.
            let _ = tokio::time::timeout_at(deadline, p.gone()).await;
        }
        status_task.abort();
        if let Some(w) = watchdog_task {
            w.abort();
        }
        for p in owned_paths {
            let _ = std::fs::remove_file(&p);
        }
        match drained {
            Ok(()) => info!("all connections closed; exiting"),
            Err(_) => warn!(
                "shutdown timeout ({:?}) passed with {} requests still in flight; exiting anyway",
                cfg.shutdown_timeout,
                self.stats.active_requests()
            ),
        }
        Ok(())
    }

    fn status_text(stats: &Stats) -> String {
        let s = stats.snapshot();
        format!(
            "{} requests served, {} in flight, {} connections",
            s.total_requests, s.active_requests, s.active_connections
        )
    }
}

struct Acceptor {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    meta: ConnMeta,
    protocol: Protocol,
    alive: Arc<AtomicBool>,
}

/// Sleeps after accept errors that would otherwise spin (EMFILE, ENFILE,
/// ENOBUFS): the condition clears when connections close.
async fn accept_error(listener: &str, e: std::io::Error) {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EAGAIN) => {}
        _ => {
            error!(listener, "accept failed: {e}; pausing accepts for 100 ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Acceptor {
    /// Starts serving one accepted connection; `slot` and the stats guard
    /// live exactly as long as the connection.
    fn spawn<S>(&self, stream: S, peer: Option<String>, slot: OwnedSemaphorePermit)
    where
        S: Split,
    {
        let guard = self.engine.stats.connection();
        let engine = self.engine.clone();
        // A copy of the listener's name per connection, not a clone of the
        // server-wide one: every request clones it (`RequestInfo`), and one
        // shared reference count bounced between the cores.
        let meta = ConnMeta {
            listener: Arc::from(&*self.meta.listener),
            inherited: self.meta.inherited,
        };
        match self.protocol {
            Protocol::FastCgi => {
                let (r, w) = stream.split();
                self.tracker.spawn(async move {
                    connection::serve(r, w, engine, meta).await;
                    drop((slot, guard));
                });
            }
            Protocol::Http => {
                self.tracker.spawn(async move {
                    http_server::serve(stream, peer, engine, meta).await;
                    drop((slot, guard));
                });
            }
        }
    }

    async fn run<L: Accept>(self, listener: L) {
        loop {
            // Take a slot first: at the cap we stop calling accept() and
            // the kernel backlog holds newcomers.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                break;
            };
            match listener.accept_one().await {
                Ok((stream, peer)) => self.spawn(stream, peer, slot),
                Err(e) => accept_error(&self.meta.listener, e).await,
            }
        }
        self.alive.store(false, Ordering::Relaxed);
    }
}

/// A stream that splits into owned halves for the FastCGI engine.
trait Split: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    type Read: connection::ConnRead;
    type Write: tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Split for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Split for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// The two kinds of listener, behind one accept call.
trait Accept: Send + 'static {
    type Stream: Split;
    fn accept_one(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, Option<String>)>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Option<String>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Option<String>)> {
        let (s, peer) = self.accept().await?;
        // Responses are written whole; Nagle would only delay them.
        let _ = s.set_nodelay(true);
        Ok((s, Some(peer.to_string())))
    }
}
