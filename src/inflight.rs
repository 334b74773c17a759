//! The registry of requests in flight, behind `/status?full` and the slow
//! log: request id, method, URI, transport, start, phase and trace of each
//! request the app is working on.
//!
//! A request registers when it enters the app and leaves when its guard
//! drops. Entries live in one shard per thread, each its own `Arc` (the
//! guard's reference count then sits with the shard the thread locks
//! anyway, not on one line all cores write); a request that moves to
//! another thread still leaves the shard it joined. Listing locks each
//! shard in turn, briefly.
//!
//! The phase is not written into the entry: each request has a
//! [`Progress`], one atomic byte that those who know set without a lock
//! (the transport when the request body has all arrived, the layer when
//! the app's response head goes out), read only when the registry is
//! listed.

use crate::Transport;
use crate::trace::TraceContext;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 8;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its body is still arriving: over FastCGI the web server has not
    /// sent the end of STDIN (a response waits for it, see the engine's
    /// rules); over HTTP the app has neither read the body to its end nor
    /// dropped it (hyper receives a body as the app reads it).
    ReadingBody,
    /// The body is in; the app has not answered yet.
    InHandler,
    /// The response head is out; its body is being sent.
    Writing,
}

/// One request's progress, shared by its registry entry, its body and the
/// layer around the app: two bits set once each, in any order.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

/// The request body has all arrived, or will not be read any more.
const BODY_DONE: u8 = 1;
/// The app answered: its response head is going out.
const ANSWERED: u8 = 2;

impl Progress {
    pub(crate) fn body_done(&self) {
        self.0.fetch_or(BODY_DONE, Relaxed);
    }

    pub(crate) fn answered(&self) {
        self.0.fetch_or(ANSWERED, Relaxed);
    }

    /// The phase the two bits tell. A body still arriving comes first:
    /// over FastCGI an answer waits for it before its head goes out.
    pub fn phase(&self) -> Phase {
        let bits = self.0.load(Relaxed);
        if bits & BODY_DONE == 0 {
            Phase::ReadingBody
        } else if bits & ANSWERED == 0 {
            Phase::InHandler
        } else {
            Phase::Writing
        }
    }
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::ReadingBody => "reading body",
            Phase::InHandler => "in handler",
            Phase::Writing => "writing",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    request_id: u64,
    method: http::Method,
    uri: http::Uri,
    transport: Transport,
    started: Instant,
    progress: Progress,
    trace: Option<TraceContext>,
    /// The slow log has reported it.
    reported: bool,
}

/// One request as listed.
#[derive(Debug, Clone)]
pub struct InFlightRequest {
    pub request_id: u64,
    pub method: http::Method,
    pub uri: http::Uri,
    pub transport: Transport,
    pub age: Duration,
    pub phase: Phase,
    pub trace: Option<TraceContext>,
}

/// One shard's entries: a slab (slot vector + free list), so that insert
/// and removal index a slot instead of hashing a key.
#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    /// Progress cells of ended requests that nothing else holds, reset for
    /// the next ones: a bodiless request then allocates none.
    spare: Vec<Progress>,
}

/// Spare progress cells a shard keeps at most.
const SPARE: usize = 64;

impl Slots {
    fn progress(&mut self) -> Progress {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps a removed entry's `p` for reuse if only the entry and its
    /// guard hold it (its body let go of it): no other holder can appear.
    fn recycle(&mut self, p: &Progress) {
        if Arc::strong_count(&p.0) == 2 && self.spare.len() < SPARE {
            // Pairs with the release of the last other holder's drop: what
            // it set is ordered before the reset.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            p.0.store(0, Relaxed);
            self.spare.push(p.clone());
        }
    }

    fn insert(&mut self, e: Entry) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(e);
                i
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Entry> {
        let e = self.entries.get_mut(i)?.take()?;
        self.free.push(i);
        self.live -= 1;
        Some(e)
    }
}

type Shard = Arc<Mutex<Slots>>;

#[derive(Debug, Default)]
pub struct InFlight {
    shards: [Shard; SHARDS],
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// A poisoned shard only means a panic elsewhere while it was held; the
/// slab is consistent after each of its calls, which do not panic.
fn lock(s: &Shard) -> MutexGuard<'_, Slots> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl InFlight {
    /// Registers a request; it stays listed while the guard lives, its
    /// phase told by the guard's [`Tracked::progress`].
    pub fn enter(
        &self,
        request_id: u64,
        method: &http::Method,
        uri: &http::Uri,
        transport: Transport,
        trace: Option<TraceContext>,
    ) -> Tracked {
        let shard = self.shards[shard_index()].clone();
        let (method, uri) = (method.clone(), uri.clone());
        let started = Instant::now();
        let mut slots = lock(&shard);
        let progress = slots.progress();
        let slot = slots.insert(Entry {
            request_id,
            method,
            uri,
            transport,
            started,
            progress: progress.clone(),
            trace,
            reported: false,
        });
        drop(slots);
        Tracked {
            shard,
            slot,
            progress,
        }
    }

    /// Every request in flight, oldest first.
    pub fn list(&self) -> Vec<InFlightRequest> {
        self.collect(|_, _| true)
    }

    /// The requests running for `threshold` or longer that this has not
    /// returned before: each is reported once (the slow log).
    pub fn newly_overdue(&self, threshold: Duration) -> Vec<InFlightRequest> {
        self.collect(|e, age| {
            let due = age >= threshold && !e.reported;
            e.reported |= due;
            due
        })
    }

    fn collect(&self, mut keep: impl FnMut(&mut Entry, Duration) -> bool) -> Vec<InFlightRequest> {
        let now = Instant::now();
        let mut out = Vec::new();
        for s in &self.shards {
            for e in lock(s).entries.iter_mut().flatten() {
                let age = now.saturating_duration_since(e.started);
                if keep(e, age) {
                    out.push(InFlightRequest {
                        request_id: e.request_id,
                        method: e.method.clone(),
                        uri: e.uri.clone(),
                        transport: e.transport,
                        age,
                        phase: e.progress.phase(),
                        trace: e.trace,
                    });
                }
            }
        }
        out.sort_by(|a, b| b.age.cmp(&a.age).then(a.request_id.cmp(&b.request_id)));
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).live).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps one request listed; dropping it removes the entry.
#[derive(Debug)]
pub struct Tracked {
    shard: Shard,
    slot: usize,
    progress: Progress,
}

impl Tracked {
    /// Where the request's phase is reported.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut slots = lock(&self.shard);
        let gone = slots.remove(self.slot);
        if let Some(e) = &gone {
            slots.recycle(&e.progress);
        }
        drop(slots);
        // The entry's URI is freed after the lock is released.
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_guarded_across_threads() {
        let reg = Arc::new(InFlight::default());
        let get = http::Method::GET;
        let a = reg.enter(1, &get, &"/a".parse().expect("uri"), Transport::Http, None);
        a.progress().body_done();
        std::thread::sleep(Duration::from_millis(5));
        let b = std::thread::spawn({
            let reg = reg.clone();
            move || {
                let uri = "/b?x=1".parse().expect("uri");
                reg.enter(2, &http::Method::POST, &uri, Transport::FastCgi, None)
            }
        })
        .join()
        .expect("thread");
        assert_eq!(b.progress().phase(), Phase::ReadingBody, "a new entry");
        // In either order: an answer waiting for its body is not written.
        b.progress().answered();
        assert_eq!(b.progress().phase(), Phase::ReadingBody);
        b.progress().body_done();
        let overdue = reg.newly_overdue(Duration::from_millis(5));
        assert_eq!(overdue.len(), 1, "only the request older than 5 ms");
        assert_eq!(overdue[0].request_id, 1);
        let again = reg.newly_overdue(Duration::ZERO);
        assert!(again.iter().all(|r| r.request_id == 2), "once each");
        let l = reg.list();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].request_id, l[0].phase),
            (1, Phase::InHandler),
            "oldest first"
        );
        assert_eq!(l[1].uri.to_string(), "/b?x=1");
        assert_eq!(l[1].phase, Phase::Writing);
        assert!(l[0].age >= Duration::from_millis(5));
        drop(b); // on another thread than the one that entered it
        assert_eq!(reg.len(), 1);
        drop(a);
        assert!(reg.is_empty());
    }

    #[test]
    fn progress_cells_are_reused_only_once_nothing_else_holds_them() {
        let reg = InFlight::default();
        let uri: http::Uri = "/".parse().expect("uri");
        let enter = || reg.enter(1, &http::Method::GET, &uri, Transport::Http, None);
        let a = enter();
        a.progress().body_done();
        a.progress().answered();
        let held = a.progress().clone(); // as a body still alive would
        let a_cell = Arc::as_ptr(&held.0);
        drop(a);
        let b = enter();
        assert_ne!(
            Arc::as_ptr(&b.progress().0),
            a_cell,
            "still held: not reused"
        );
        assert_eq!(
            held.phase(),
            Phase::Writing,
            "and not reset under its holder"
        );
        let b_cell = Arc::as_ptr(&b.progress().0);
        b.progress().body_done();
        drop(b);
        let c = enter();
        assert_eq!(Arc::as_ptr(&c.progress().0), b_cell, "reused");
        assert_eq!(c.progress().phase(), Phase::ReadingBody, "reset");
    }
}
