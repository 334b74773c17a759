//! The lingering close of a connection that ends after its response (a
//! request without FCGI_KEEP_CONN). The writer has already shut our side
//! down, so the peer has its response and our FIN; what the peer still
//! sends is read and dropped until it closes too, or for `LINGER` at most,
//! so that it never gets a reset (a TCP peer can lose a response it has not
//! read yet to one: golang.org/issue/4183).
//!
//! The connection's task does not wait for that itself: it hands its
//! socket here, taken out of the runtime's poller, and ends. Each socket
//! handed over first looks at the oldest few lingering before it: by then
//! their peers (nginx closes within microseconds of the response) have
//! most likely closed, so they are read and closed right there, and the
//! work stays spread over the connections as it was. A sweeper, alive
//! while any socket lingers, looks at all of them every `SWEEP` for the
//! rest (the last ones before a pause, peers that keep the connection
//! open). Waiting in the task cost every fresh connection a timer, a poller
//! event for the peer's close and a task wake-up (a context switch when
//! the worker slept); here it costs the read that finds the close.
//! (Closing them all at a sweep instead put bursts of hundreds of closes
//! on one worker: requests queued behind them.)
//!
//! A lingering socket keeps what it was given (the connection's
//! `--max-connections` slot) until it closes: it is still a file
//! descriptor. It is no longer an open connection in the statistics: its
//! response is done, and its peer has usually closed already.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a closing connection drains what the peer still sends.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// How often the sweeper looks at every lingering socket.
const SWEEP: Duration = Duration::from_millis(50);
/// How many of the oldest lingering sockets each handed-over one looks at:
/// more than one, so that the list shrinks under a steady load.
const LOOK_AT: usize = 2;
/// Bytes drained from one socket in one sweep at most, so that a peer that
/// keeps sending cannot hold the sweeper.
const DRAIN_PER_SWEEP: usize = 256 * 1024;
/// Bytes drained from one socket at a hand-over at most: the connection
/// handing over does one or two reads for the others, never a peer's
/// flood (that is left to the sweeper).
const DRAIN_AT_HAND_OVER: usize = 1024;

/// A connection's socket, out of the runtime (non-blocking).
pub enum Socket {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
        }
    }
}

/// The lingering sockets of one listener, each with what it holds (`H`).
pub(crate) struct Lingerer<H> {
    state: Mutex<State<H>>,
}

struct State<H> {
    /// Oldest first.
    sockets: VecDeque<Lingering<H>>,
    /// A sweeper task is running (it ends when the list is empty).
    sweeping: bool,
}

struct Lingering<H> {
    socket: Socket,
    until: Instant,
    _held: H,
}

impl<H: Send + 'static> Lingerer<H> {
    pub(crate) fn new() -> Arc<Lingerer<H>> {
        Arc::new(Lingerer {
            state: Mutex::new(State {
                sockets: VecDeque::new(),
                sweeping: false,
            }),
        })
    }

    /// Closes `socket` (and drops `held`) once the peer has closed, or
    /// after `LINGER`. Must be called within the runtime.
    pub(crate) fn close_later(self: &Arc<Self>, socket: Socket, held: H) {
        let now = Instant::now();
        let mut oldest: [Option<Lingering<H>>; LOOK_AT] = Default::default();
        {
            let Ok(mut st) = self.state.lock() else {
                return; // poisoned by a panic: close now
            };
            for slot in &mut oldest {
                *slot = st.sockets.pop_front();
            }
            st.sockets.push_back(Lingering {
                socket,
                until: now + LINGER,
                _held: held,
            });
            if !st.sweeping {
                st.sweeping = true;
                tokio::spawn(self.clone().sweep());
            }
        }
        // Read (and mostly closed) outside the lock.
        let mut scratch = [0u8; 1024];
        for mut l in oldest.into_iter().flatten() {
            if still_lingering(&mut l, now, &mut scratch, DRAIN_AT_HAND_OVER) {
                if let Ok(mut st) = self.state.lock() {
                    st.sockets.push_back(l);
                }
            }
        }
    }

    /// Sockets lingering now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().map(|s| s.sockets.len()).unwrap_or(0)
    }

    async fn sweep(self: Arc<Self>) {
        let mut running = Running {
            lingerer: &self,
            done: false,
        };
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            tokio::time::sleep(SWEEP).await;
            // Looked at outside the lock: the connections handing over
            // their sockets meanwhile do not wait on the reads.
            let mut batch = match self.state.lock() {
                Ok(mut st) => std::mem::take(&mut st.sockets),
                Err(_) => return,
            };
            let now = Instant::now();
            batch.retain_mut(|l| still_lingering(l, now, &mut scratch, DRAIN_PER_SWEEP));
            // Those handed over meanwhile are younger: after the batch.
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            batch.append(&mut st.sockets);
            st.sockets = batch;
            if st.sockets.is_empty() {
                st.sweeping = false;
                running.done = true;
                return;
            }
        }
    }
}

/// Clears `sweeping` if the sweeper is dropped unfinished (the runtime
/// shutting down), so a later socket starts a new one.
struct Running<'a, H> {
    lingerer: &'a Lingerer<H>,
    done: bool,
}

impl<H> Drop for Running<'_, H> {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(mut st) = self.lingerer.state.lock() {
                st.sweeping = false;
            }
        }
    }
}

/// Drains what the peer sent, up to `budget` bytes; false once it has
/// closed (or failed), or the socket's time is up.
fn still_lingering<H>(
    l: &mut Lingering<H>,
    now: Instant,
    scratch: &mut [u8],
    budget: usize,
) -> bool {
    let mut drained = 0;
    while drained < budget {
        match l.socket.read(scratch) {
            Ok(0) => return false,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    now < l.until
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Socket, UnixStream) {
        let (ours, peer) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        (Socket::Unix(ours), peer)
    }

    /// Waits up to 2 s for `done`; false if it never came.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Waits up to 2 s for `lingerer` to hold `n` sockets.
    async fn until_len(lingerer: &Lingerer<()>, n: usize) {
        let held = eventually(|| lingerer.len() == n).await;
        assert!(held, "{} sockets lingering, want {n}", lingerer.len());
    }

    #[tokio::test]
    async fn a_socket_closes_once_its_peer_has_and_what_it_sent_is_drained() {
        let lingerer = Lingerer::<()>::new();
        let (ours, mut peer) = pair();
        lingerer.close_later(ours, ());
        // The peer may still send after our response: accepted, not reset.
        peer.write_all(&[7u8; 100_000])
            .expect("sent while lingering");
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.write_all(b"more").expect("sent while lingering");
        assert_eq!(lingerer.len(), 1, "the peer has not closed yet");
        drop(peer);
        until_len(&lingerer, 0).await;
    }

    #[tokio::test]
    async fn a_peer_that_never_closes_is_closed_after_the_linger() {
        let lingerer = Lingerer::<()>::new();
        let (ours, mut peer) = pair();
        lingerer.close_later(ours, ());
        tokio::time::sleep(LINGER - Duration::from_millis(300)).await;
        assert_eq!(lingerer.len(), 1, "closed before LINGER");
        until_len(&lingerer, 0).await;
        // Our side is gone: the peer reads EOF, not a reset (nothing it
        // sent was left unread).
        peer.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut b = [0u8; 8];
        assert_eq!(peer.read(&mut b).expect("EOF, not a reset"), 0);
    }

    #[tokio::test]
    async fn a_socket_handed_over_closes_the_oldest_whose_peer_has_closed() {
        let lingerer = Lingerer::<Arc<()>>::new();
        let held = Arc::new(());
        let (first, first_peer) = pair();
        lingerer.close_later(first, held.clone());
        drop(first_peer);
        let (second, _second_peer) = pair();
        lingerer.close_later(second, Arc::new(()));
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "closed by the next hand-over, not at a sweep"
        );
        assert_eq!(lingerer.len(), 1, "the second lingers");
    }

    #[tokio::test]
    async fn a_hand_over_leaves_a_peers_flood_to_the_sweeper() {
        let lingerer = Lingerer::<()>::new();
        let (first, mut first_peer) = pair();
        lingerer.close_later(first, ());
        first_peer
            .write_all(&[7u8; 100_000])
            .expect("sent while lingering");
        drop(first_peer);
        let (second, _second_peer) = pair();
        lingerer.close_later(second, ());
        assert_eq!(
            lingerer.len(),
            2,
            "the hand-over read 100 KB for another connection"
        );
        // The sweeper drains the rest, finds the close, and closes it.
        until_len(&lingerer, 1).await;
    }

    #[tokio::test]
    async fn what_a_socket_holds_is_released_when_it_closes() {
        let lingerer = Lingerer::<Arc<()>>::new();
        let held = Arc::new(());
        let (ours, peer) = pair();
        lingerer.close_later(ours, held.clone());
        assert_eq!(Arc::strong_count(&held), 2, "held while lingering");
        drop(peer);
        let released = eventually(|| Arc::strong_count(&held) == 1).await;
        assert!(released, "still held after the peer closed");
    }
}
