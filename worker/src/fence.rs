//! Self-fencing: a worker that cannot reach the coordinator stops its tasks
//! itself, before the coordinator declares it offline and runs those tasks
//! elsewhere. Epochs already keep a cut-off worker's reports out of the
//! coordinator's state; fencing keeps it from doing anything else in the
//! meantime (writing files, talking to the world), so a task never runs in
//! two places at once, even across a partition.
//!
//! The coordinator counts its offline timeout from the last heartbeat it
//! received; the worker counts from when it *sent* the last heartbeat that
//! was answered, which is earlier, and fences at three quarters of the
//! timeout, which leaves a task the rest to reach its next yield point.
//! Fenced tasks wait paused, with nothing lost; the first answered
//! heartbeat afterwards drops the ones that moved on (its stale list) and
//! lifts the fence for the others.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    /// [`now_ms`] when the last answered heartbeat was sent.
    last_ok_ms: AtomicU64,
    /// The coordinator's offline timeout in ms (0: not known yet; never fence).
    timeout_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock: the membership's, so that the time a
/// beacon arrived compares with ours.
pub fn now_ms() -> u64 {
    wmig_gossip::now_ms()
}

impl Fence {
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// How long to wait for the coordinator to answer a new connection:
    /// half its offline timeout once known (a coordinator restarted on its
    /// address answers in milliseconds; an attempt sent while it was down
    /// would only be retried by QUIC seconds later), else 5 s.
    pub fn connect_timeout(&self) -> Duration {
        match self.timeout_ms.load(Ordering::SeqCst) {
            0 => Duration::from_secs(5),
            t => Duration::from_millis(t / 2)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
        }
    }

    /// Registered: the coordinator's offline timeout, and a fresh start.
    pub fn registered(&self, offline_timeout_ms: u64, at_ms: u64) {
        self.timeout_ms.store(offline_timeout_ms, Ordering::SeqCst);
        self.last_ok_ms.fetch_max(at_ms, Ordering::SeqCst);
    }

    /// A heartbeat sent at `sent_ms` was answered. Returns true if that
    /// lifted the fence.
    pub fn heard(&self, sent_ms: u64) -> bool {
        self.last_ok_ms.fetch_max(sent_ms, Ordering::SeqCst);
        self.fenced.swap(false, Ordering::SeqCst)
    }

    /// A new leader beacon arrived through the membership at `at_ms`: the
    /// leader's side of the cluster still hears this worker. Counts like an
    /// answered heartbeat while not fenced; once fenced only [`Self::heard`]
    /// (a check-in, which drops the tasks that moved on) lifts the fence.
    pub fn heard_through_membership(&self, at_ms: u64) {
        if at_ms > 0 && !self.is_fenced() {
            self.last_ok_ms.fetch_max(at_ms, Ordering::SeqCst);
        }
    }

    /// Fence now. Returns true if this call fenced.
    pub fn raise(&self) -> bool {
        !self.fenced.swap(true, Ordering::SeqCst)
    }

    /// Fence if it is time. Returns true when this call fenced (so the
    /// caller pauses the tasks once).
    pub fn raise_if_due(&self, now_ms: u64) -> bool {
        let timeout = self.timeout_ms.load(Ordering::SeqCst);
        if timeout == 0 || self.is_fenced() {
            return false;
        }
        let since = now_ms.saturating_sub(self.last_ok_ms.load(Ordering::SeqCst));
        since >= timeout * 3 / 4 && !self.fenced.swap(true, Ordering::SeqCst)
    }

    /// Hold a task thread while fenced, or until `stop` (the task was
    /// dropped). Returns true if it waited.
    pub fn wait(&self, stop: impl Fn() -> bool) -> bool {
        let mut waited = false;
        while self.is_fenced() && !stop() {
            waited = true;
            std::thread::sleep(Duration::from_millis(10));
        }
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_at_three_quarters_of_the_timeout_since_the_last_answer() {
        let f = Fence::default();
        assert!(!f.raise_if_due(1_000_000), "no timeout known: never");
        f.registered(2000, 10_000);
        assert!(!f.raise_if_due(11_499));
        assert!(f.raise_if_due(11_500));
        assert!(!f.raise_if_due(20_000), "raised once");
        assert!(f.is_fenced());
        // An answer to a heartbeat sent before the fence lifts it.
        assert!(f.heard(11_200));
        assert!(!f.is_fenced());
        assert!(!f.raise_if_due(12_000));
        assert!(f.raise_if_due(12_700));
    }

    #[test]
    fn a_dropped_task_stops_waiting() {
        let f = Fence::default();
        f.registered(100, 0);
        assert!(f.raise_if_due(75));
        assert!(!f.wait(|| true), "stop at once");
        assert!(!Fence::default().wait(|| false), "not fenced: no wait");
    }
}
