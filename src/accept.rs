//! Accept loops: one per listener, each handing its connections to the
//! transport the server chose for it, within `--max-connections`.

use crate::ConnMeta;
use crate::fastcgi::connection::{self, Engine};
use crate::http_server::{self, HttpShared};
use crate::stats::Stats;
use crate::systemd::listen::Socket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::error;

/// The transport one listener's connections are served with.
pub(crate) enum Handler {
    FastCgi(Arc<Engine>),
    Http(Arc<HttpShared>),
}

/// One listener's accept loop.
pub(crate) struct Acceptor {
    pub handler: Handler,
    pub stats: Arc<Stats>,
    /// `--max-connections`, shared by every listener.
    pub slots: Arc<Semaphore>,
    /// Every connection's task (the server's drain waits on it).
    pub tracker: TaskTracker,
    pub meta: ConnMeta,
    /// Cleared when the loop ends (for the watchdog).
    pub alive: Arc<AtomicBool>,
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
    /// Registers `socket` with the runtime and spawns the accept loop;
    /// a TCP listener with an allow-list `gate` closes other peers at
    /// accept. Without one the loop runs the plain listener: no check per
    /// connection.
    pub fn start(
        self,
        socket: Socket,
        gate: Option<crate::allow::Gate>,
    ) -> std::io::Result<JoinHandle<()>> {
        Ok(match socket {
            Socket::Unix(s) => tokio::spawn(self.run(tokio::net::UnixListener::from_std(s)?)),
            Socket::Tcp(s) => {
                let s = tokio::net::TcpListener::from_std(s)?;
                match gate {
                    Some(gate) => tokio::spawn(self.run(Guarded(s, gate))),
                    None => tokio::spawn(self.run(s)),
                }
            }
        })
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

    /// Starts serving one accepted connection; `slot` and the stats guard
    /// live exactly as long as the connection.
    fn spawn<S: Split>(&self, stream: S, peer: Option<String>, slot: OwnedSemaphorePermit) {
        let held = (slot, self.stats.connection());
        // Each connection gets its own copy of the listener's name: every
        // request clones it into `RequestInfo`, and one reference count
        // shared by all connections would be written by every core.
        let meta = ConnMeta {
            listener: Arc::from(&*self.meta.listener),
            inherited: self.meta.inherited,
        };
        match &self.handler {
            Handler::FastCgi(engine) => {
                let engine = engine.clone();
                let (r, w) = stream.split();
                self.tracker.spawn(async move {
                    connection::serve(r, w, engine, meta).await;
                    drop(held);
                });
            }
            Handler::Http(shared) => {
                let shared = shared.clone();
                self.tracker.spawn(async move {
                    http_server::serve(stream, peer, shared, meta).await;
                    drop(held);
                });
            }
        }
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

/// A TCP listener with an allow-list: peers outside it are closed at
/// accept, before anything is read (the gate logs them).
struct Guarded(tokio::net::TcpListener, crate::allow::Gate);

impl Accept for Guarded {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Option<String>)> {
        loop {
            let (s, peer) = self.0.accept().await?;
            if self.1.admit(peer) {
                let _ = s.set_nodelay(true);
                return Ok((s, Some(peer.to_string())));
            }
        }
    }
}
