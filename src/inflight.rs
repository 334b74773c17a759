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

use crate::Transport;
use crate::trace::TraceContext;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 8;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its body is still arriving. Only the FastCGI engine can tell (the
    /// app reads the body while "in handler"); it does not report it yet.
    ReadingBody,
    /// The app has it and has not answered yet.
    InHandler,
    /// The app answered; the response body is being sent.
    Writing,
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
    phase: Phase,
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

/// One shard's entries: a slab (slot vector + free list), so that insert,
/// phase change and removal index a slot instead of hashing a key.
#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
}

impl Slots {
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
    /// Registers a request; it stays listed while the guard lives.
    pub fn enter(
        &self,
        request_id: u64,
        method: &http::Method,
        uri: &http::Uri,
        transport: Transport,
        phase: Phase,
        trace: Option<TraceContext>,
    ) -> Tracked {
        let shard = self.shards[shard_index()].clone();
        let entry = Entry {
            request_id,
            method: method.clone(),
            uri: uri.clone(),
            transport,
            started: Instant::now(),
            phase,
            trace,
            reported: false,
        };
        let slot = lock(&shard).insert(entry);
        Tracked { shard, slot }
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
                        phase: e.phase,
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
}

impl Tracked {
    pub fn set_phase(&self, phase: Phase) {
        if let Some(Some(e)) = lock(&self.shard).entries.get_mut(self.slot) {
            e.phase = phase;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The entry's URI is freed after the lock is released.
        let gone = lock(&self.shard).remove(self.slot);
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
        let a = reg.enter(
            1,
            &get,
            &"/a".parse().expect("uri"),
            Transport::Http,
            Phase::InHandler,
            None,
        );
        std::thread::sleep(Duration::from_millis(5));
        let b = std::thread::spawn({
            let reg = reg.clone();
            move || {
                let uri = "/b?x=1".parse().expect("uri");
                reg.enter(
                    2,
                    &http::Method::POST,
                    &uri,
                    Transport::FastCgi,
                    Phase::ReadingBody,
                    None,
                )
            }
        })
        .join()
        .expect("thread");
        b.set_phase(Phase::Writing);
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
}
