//! Accept loops: one per listener, each handing its connections to the
//! transport the server chose for it, within `--max-connections`.

use crate::ConnMeta;
use crate::fastcgi::connection::linger::Lingerer;
use crate::fastcgi::connection::{self, Engine};
use crate::http_server::{self, HttpShared};
use crate::stats::Stats;
use crate::systemd::listen::Socket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
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
    pub slots: Arc<Slots>,
    /// Every connection's task (the server's drain waits on it).
    pub tracker: TaskTracker,
    pub meta: ConnMeta,
    /// Cleared if the loop dies (for the watchdog).
    pub alive: Arc<AtomicBool>,
    /// The lingering closes of this listener's FastCGI connections (each
    /// socket with its slot).
    pub lingerer: Arc<Lingerer<Slot>>,
}

/// Clears an accept loop's `alive` if the loop dies by a panic. Not when
/// its task is aborted: that is the shutdown, through whose drain the
/// watchdog pings on.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(false, Ordering::Relaxed);
        }
    }
}

/// `--max-connections`: the open connections, counted in one atomic shared
/// by every listener. Taking a slot and giving it back is one atomic
/// operation each (a semaphore would take its waiters' lock on every
/// release); an accept loop waits on `freed` only at the cap.
pub(crate) struct Slots {
    open: AtomicUsize,
    max: usize,
    freed: Notify,
}

/// One open connection's slot; dropping it gives the slot back.
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            max,
            freed: Notify::new(),
        })
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// A slot, once one is free.
    async fn take(self: &Arc<Self>) -> Slot {
        loop {
            if let Some(slot) = self.try_take() {
                return slot;
            }
            // At the cap: listen for a release, then look again (a release
            // between the look and the listening would otherwise be missed).
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            freed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) >= self.0.max {
            self.0.freed.notify_waiters();
        }
    }
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
        let _alive = AliveGuard(self.alive.clone());
        loop {
            // Take a slot first: at the cap we stop calling accept() and
            // the kernel backlog holds newcomers.
            let slot = self.slots.take().await;
            match listener.accept_one().await {
                Ok((stream, peer)) => self.spawn(stream, peer, slot),
                Err(e) => accept_error(&self.meta.listener, e).await,
            }
        }
    }

    /// Starts serving one accepted connection; `slot` and the stats guard
    /// live exactly as long as the connection.
    fn spawn<S: Split>(&self, stream: S, peer: Option<String>, slot: Slot) {
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
                // Boxed: spawning moves a future by value through several
                // frames and into the task; boxed, each move is a pointer.
                // (The box is kept under 1 KiB, see `connection::serve`.)
                let conn = connection::serve(r, w, engine, meta);
                let lingerer = self.lingerer.clone();
                self.tracker
                    .spawn(Box::pin(futures_util::FutureExt::map(conn, move |s| {
                        let (slot, open) = held;
                        // A lingering socket is done with (no longer an open
                        // connection in the statistics), but keeps its slot:
                        // it is still a file descriptor.
                        drop(open);
                        if let Some(s) = s {
                            lingerer.close_later(s, slot);
                        }
                    })));
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
    type Read: connection::ConnRead + connection::Reunite<Self::Write>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_a_slot_comes_when_one_is_given_back() {
        let slots = Slots::new(2);
        let a = slots.take().await;
        let _b = slots.take().await;
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third slot while two are taken");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the freed slot reached the waiting loop")
            .expect("joined");
        assert_eq!(slots.open.load(Ordering::Acquire), 2);
        drop(c);
        assert_eq!(slots.open.load(Ordering::Acquire), 1);
    }
}
