//! The server: which listeners, and which transport each speaks; the
//! lifecycle around the accept loops (`accept.rs`): readiness, status,
//! watchdog, and graceful shutdown.
//!
//! Lifecycle ([`Server::serve`]):
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
//! A listener speaks what it was bound for; a socket systemd passed speaks
//! HTTP/1.1 if its fd is named `http` (`FileDescriptorName=http`) and
//! FastCGI otherwise. Sockets that systemd owns are never unlinked; the ones
//! we bound are.

use crate::accept::{Acceptor, Handler};
use crate::addr::ListenAddr;
use crate::fastcgi::connection::{ConnConfig, Engine};
use crate::http_server::HttpShared;
use crate::reload::{self, Reloader};
use crate::service::App;
use crate::stats::Stats;
use crate::systemd::listen::{self, BindOptions, Listener};
use crate::systemd::notify;
use crate::{ConnMeta, Transport};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The address served when nothing is inherited and nothing is asked for:
/// php-fpm's upstream default, reachable without privileges.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

/// All listeners: the sockets systemd passed, then those asked for
/// (`fastcgi`, `http`), bound by us; with none at all, FastCGI on
/// [`DEFAULT_LISTEN`].
///
/// Must be called before any thread is started (see
/// [`listen::inherited`]).
pub fn listeners(
    fastcgi: &[ListenAddr],
    http: &[ListenAddr],
    opts: &BindOptions,
) -> anyhow::Result<Vec<Listener>> {
    let wanted = fastcgi
        .iter()
        .map(|a| (a, Transport::FastCgi))
        .chain(http.iter().map(|a| (a, Transport::Http)));
    let out = listen::bind_all(listen::inherited()?, wanted, opts)?;
    if !out.is_empty() {
        return Ok(out);
    }
    let addr: ListenAddr = DEFAULT_LISTEN
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let l = listen::bind(&addr, Transport::FastCgi, opts).with_context(|| {
        format!(
            "no socket inherited and none given (--listen); the default {DEFAULT_LISTEN} failed"
        )
    })?;
    Ok(vec![l])
}

/// Server settings (the `serve` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Open connections at most; accepting pauses at the cap.
    pub max_connections: usize,
    /// Requests in flight at most, server-wide; more get a 503.
    pub max_requests: usize,
    /// Requests in flight at most on one FastCGI connection.
    pub max_requests_per_conn: usize,
    /// Size of a request's FastCGI params at most; more is a 431.
    pub max_params_bytes: usize,
    /// Size of a request body at most; more is a 413.
    pub max_body_bytes: u64,
    /// How long a peer may stall mid-record or mid-request.
    pub stall_timeout: Duration,
    /// How long a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Exit after this long without a connection (`--idle-exit`).
    pub idle_exit: Option<Duration>,
    /// How often the systemd `STATUS=` line is refreshed.
    pub status_interval: Duration,
    /// How long a new process started by a reload gets to become ready.
    pub reload_timeout: Duration,
    /// Install SIGTERM/SIGINT handlers that start a graceful shutdown, and
    /// a SIGHUP handler that reloads (`crate::reload`). The binary wants
    /// them; a program embedding the library may prefer its own (tokio
    /// cannot uninstall a handler once installed) and use
    /// [`Server::shutdown_token`] instead.
    pub handle_signals: bool,
    /// TCP peers served (src/allow.rs); `None` serves every peer.
    pub allowed_clients: Option<crate::allow::AllowList>,
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
            allowed_clients: None,
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
        self.listeners.iter().map(describe).collect()
    }

    /// Serves until shutdown. Must run inside a tokio runtime.
    pub async fn serve(mut self, app: App) -> anyhow::Result<()> {
        // Before READY: a SIGTERM that arrives right after it must drain.
        let mut signals = StopSignals::install(self.config.handle_signals)?;
        let cfg = &self.config;
        let mut reloader = Reloader::new(&self.listeners, cfg.reload_timeout, cfg.handle_signals)?;
        let accepting = self.start_accepting(app)?;
        // READY=1, or for a process a reload started, the hand-over.
        let predecessor =
            reload::announce_ready(&format!("serving; {}", status_text(&self.stats))).await?;
        info!("ready");
        let status = spawn_status(self.stats.clone(), self.config.status_interval);
        let watchdog = spawn_watchdog(accepting.alive.clone());
        let reason = self.wait_for_stop(&mut signals, &mut reloader).await;
        // Status and watchdog run until the drain is over: `STATUS=` goes on
        // counting the requests that finish, and a runtime wedged mid-drain
        // stops the pings.
        self.drain(accepting, &reason, predecessor).await;
        status.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        Ok(())
    }

    /// Registers every listener with the runtime and starts its accept loop.
    fn start_accepting(&mut self, app: App) -> anyhow::Result<Accepting> {
        let handlers = Handlers::new(&self.config, app, &self.stats, &self.shutdown);
        let slots = crate::accept::Slots::new(self.config.max_connections);
        let mut accepting = Accepting::default();
        for l in std::mem::take(&mut self.listeners) {
            info!("listening: {}", describe(&l));
            accepting.owned_paths.extend(l.owned_path.clone());
            let alive = Arc::new(AtomicBool::new(true));
            accepting.alive.push(alive.clone());
            let acceptor = Acceptor {
                handler: handlers.for_transport(transport_of(&l)),
                stats: self.stats.clone(),
                slots: slots.clone(),
                tracker: accepting.connections.clone(),
                meta: ConnMeta {
                    listener: Arc::from(l.address.as_str()),
                    inherited: l.inherited.is_some(),
                },
                alive,
                lingerer: crate::fastcgi::connection::linger::Lingerer::new(),
            };
            let gate =
                crate::allow::AllowList::gate(self.config.allowed_clients.as_ref(), &l.address);
            accepting.loops.push(acceptor.start(l.socket, gate)?);
        }
        Ok(accepting)
    }

    /// Waits for a reason to stop; returns it, for the log and `STATUS=`.
    async fn wait_for_stop(&self, signals: &mut StopSignals, reloader: &mut Reloader) -> String {
        tokio::select! {
            r = signals.recv() => r.to_string(),
            _ = idle_exit(&self.stats, self.config.idle_exit) => "idle exit (no connection)".into(),
            _ = self.shutdown.cancelled() => "shutdown requested".into(),
            pid = reloader.handed_over() => format!("reloaded (PID {pid} took over)"),
        }
    }

    /// Stops accepting, lets the connections finish (up to
    /// `--shutdown-timeout`), and removes the socket files we bound. A
    /// process a reload started also waits (within the same limit) for its
    /// still-draining predecessor: with `KillMode=mixed`, the main
    /// process's exit ends what is left of the service.
    async fn drain(
        &self,
        accepting: Accepting,
        reason: &str,
        predecessor: Option<reload::Predecessor>,
    ) {
        let in_flight = self.stats.active_requests();
        info!("{reason}: shutting down; draining {in_flight} requests in flight");
        notify::stopping(&format!(
            "stopping ({reason}); draining {in_flight} requests"
        ));
        self.shutdown.cancel();
        for h in &accepting.loops {
            h.abort();
        }
        accepting.connections.close();
        let limit = self.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let drained = tokio::time::timeout_at(deadline, accepting.connections.wait()).await;
        if let Some(p) = predecessor {
            let _ = tokio::time::timeout_at(deadline, p.gone()).await;
        }
        for p in &accepting.owned_paths {
            let _ = std::fs::remove_file(p);
        }
        match drained {
            Ok(()) => info!("all connections closed; exiting"),
            Err(_) => warn!(
                "shutdown timeout ({limit:?}) passed with {} requests still in flight; exiting anyway",
                self.stats.active_requests()
            ),
        }
    }
}

/// What a listener speaks: what it was bound for; for a socket systemd
/// passed, HTTP/1.1 if its fd is named `http`, else FastCGI (the name the
/// packaged `myflask-http.socket` gives it).
fn transport_of(l: &Listener) -> Transport {
    match (l.transport, l.inherited.as_deref()) {
        (Some(t), _) => t,
        (None, Some("http")) => Transport::Http,
        (None, _) => Transport::FastCgi,
    }
}

/// `FastCGI on unix:/run/myflask/fcgi.sock (inherited from systemd, ...)`.
fn describe(l: &Listener) -> String {
    format!("{} on {}", transport_of(l).as_str(), l.describe())
}

fn status_text(stats: &Stats) -> String {
    let s = stats.snapshot();
    format!(
        "{} requests served, {} in flight, {} connections",
        s.total_requests, s.active_requests, s.active_connections
    )
}

/// Refreshes systemd's `STATUS=` line every `every`.
fn spawn_status(stats: Arc<Stats>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.tick().await;
        loop {
            t.tick().await;
            notify::status(&status_text(&stats));
        }
    })
}

/// Pings systemd's watchdog at half its period (when `WatchdogSec=` is
/// set) while every accept loop is alive.
fn spawn_watchdog(alive: Vec<Arc<AtomicBool>>) -> Option<JoinHandle<()>> {
    let period = notify::watchdog_period()?;
    info!("systemd watchdog enabled: pinging every {:?}", period / 2);
    Some(tokio::spawn(async move {
        let mut t = tokio::time::interval(period / 2);
        loop {
            t.tick().await;
            // Reaching this line proves the runtime schedules tasks; the
            // flags prove every listener still accepts.
            if alive.iter().all(|a| a.load(Ordering::Relaxed)) {
                notify::watchdog();
            } else {
                error!(
                    "an accept loop has died; withholding watchdog pings so systemd restarts us"
                );
            }
        }
    }))
}

/// Returns once no connection has been open for `limit` (never without one).
async fn idle_exit(stats: &Stats, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let mut idle_for = Duration::ZERO;
    let step = Duration::from_millis(250).min(limit);
    loop {
        tokio::time::sleep(step).await;
        if stats.active_connections() == 0 {
            idle_for += step;
            if idle_for >= limit {
                return;
            }
        } else {
            idle_for = Duration::ZERO;
        }
    }
}

/// SIGTERM and SIGINT, when the server handles them
/// ([`ServerConfig::handle_signals`]).
struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    fn install(enabled: bool) -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        if !enabled {
            return Ok(StopSignals(None));
        }
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        Ok(StopSignals(Some((term, int))))
    }

    /// The name of the first signal to arrive (never, when not handled).
    async fn recv(&mut self) -> &'static str {
        match &mut self.0 {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            None => std::future::pending().await,
        }
    }
}

/// The running accept loops, and what shutdown needs of them.
#[derive(Default)]
struct Accepting {
    loops: Vec<JoinHandle<()>>,
    /// One flag per loop, cleared when it ends (for the watchdog).
    alive: Vec<Arc<AtomicBool>>,
    /// Every connection's task, awaited by the drain.
    connections: TaskTracker,
    /// Socket files we bound, removed on exit.
    owned_paths: Vec<PathBuf>,
}

/// What each transport's connections share, built once per `serve`.
struct Handlers {
    fastcgi: Arc<Engine>,
    http: Arc<HttpShared>,
}

impl Handlers {
    fn new(cfg: &ServerConfig, app: App, stats: &Arc<Stats>, shutdown: &CancellationToken) -> Self {
        let fastcgi = Arc::new(Engine {
            app: app.clone(),
            config: ConnConfig {
                max_requests_per_conn: cfg.max_requests_per_conn,
                max_params_bytes: cfg.max_params_bytes,
                max_body_bytes: cfg.max_body_bytes,
                stall_timeout: cfg.stall_timeout,
                idle_timeout: cfg.idle_timeout,
                max_conns: cfg.max_connections,
                max_requests: cfg.max_requests,
            },
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        });
        let http = Arc::new(HttpShared {
            app,
            max_body_bytes: cfg.max_body_bytes,
            max_requests: cfg.max_requests,
            header_timeout: cfg.stall_timeout,
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        });
        Handlers { fastcgi, http }
    }

    fn for_transport(&self, t: Transport) -> Handler {
        match t {
            Transport::FastCgi => Handler::FastCgi(self.fastcgi.clone()),
            Transport::Http => Handler::Http(self.http.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::listen::Socket;

    fn listener(transport: Option<Transport>, fd_name: Option<&str>) -> Listener {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        Listener {
            socket: Socket::Tcp(socket),
            transport,
            address: "127.0.0.1:9000".into(),
            inherited: fd_name.map(str::to_string),
            owned_path: None,
        }
    }

    #[test]
    fn a_listener_speaks_what_it_was_bound_for_or_what_its_fd_name_says() {
        use Transport::{FastCgi, Http};
        let cases = [
            (Some(FastCgi), None, FastCgi),
            (Some(Http), None, Http),
            (None, Some("http"), Http),
            (None, Some("fastcgi"), FastCgi),
            (None, Some("tcp-fcgi"), FastCgi),
            (None, Some("unknown"), FastCgi),
            (None, Some("HTTP"), FastCgi),
        ];
        for (bound_for, fd_name, want) in cases {
            let l = listener(bound_for, fd_name);
            assert_eq!(transport_of(&l), want, "{bound_for:?} {fd_name:?}");
        }
        assert_eq!(
            describe(&listener(None, Some("http"))),
            "HTTP on 127.0.0.1:9000 (inherited from systemd, fd name \"http\")"
        );
    }
}
