//! The lease table: who may store which chunk right now. Sans-IO: every
//! method takes `now` from the caller and nothing here reads a clock, so
//! tests drive hours of simulated time in microseconds.
//!
//! Workers ask before they upload (`claim`): a chunk already stored is
//! `AlreadyStored`; one nobody is storing is `Granted` to the asker, who
//! holds a lease for `ttl`; one under someone else's live lease is `Leased`.
//! The holder asking again renews its lease. Storing the chunk releases the
//! lease (`complete`); a holder that disappears loses its leases when its
//! connection closes (`release_owner`) or, if it just goes quiet, when they
//! expire (`expire`, called periodically, or lazily by the next `claim`).
//!
//! The table also remembers chunks that were recently stored or reported
//! stored (`touch`): between a worker learning "already stored" and
//! committing the manifest that references the chunk, garbage collection
//! must not delete it. A hash is *protected* while leased or touched within
//! the protection window.

use crate::HashMap;
use std::time::{Duration, Instant};

use wmig_proto::wire::registry::{LeaseStats, LeaseStatus};
use wmig_proto::Hash;

/// Who holds a lease: the server uses the connection's id.
pub type Owner = u64;

#[derive(Clone, Copy, Debug)]
struct Lease {
    owner: Owner,
    expires: Instant,
}

#[derive(Debug)]
pub struct LeaseTable {
    ttl: Duration,
    protect_for: Duration,
    leases: HashMap<Hash, Lease>,
    touched: HashMap<Hash, Instant>,
    stats: LeaseStats,
}

impl LeaseTable {
    /// Leases last `ttl`; touched chunks stay protected for `protect_for`.
    pub fn new(ttl: Duration, protect_for: Duration) -> Self {
        LeaseTable {
            ttl,
            protect_for,
            leases: HashMap::default(),
            touched: HashMap::default(),
            stats: LeaseStats::default(),
        }
    }

    /// Answer "may `owner` store `hash`?", granting a lease when it may.
    pub fn claim(&mut self, hash: Hash, owner: Owner, stored: bool, now: Instant) -> LeaseStatus {
        if stored {
            if self.leases.remove(&hash).is_some() {
                // Stored by someone other than the holder; the lease is moot.
                self.stats.completed += 1;
            }
            self.touched.insert(hash, now);
            return LeaseStatus::AlreadyStored;
        }
        let expires = now + self.ttl;
        match self.leases.get_mut(&hash) {
            Some(lease) if lease.expires > now && lease.owner != owner => LeaseStatus::Leased,
            Some(lease) if lease.expires > now => {
                lease.expires = expires;
                LeaseStatus::Granted
            }
            Some(lease) => {
                self.stats.expired += 1;
                self.stats.granted += 1;
                *lease = Lease { owner, expires };
                LeaseStatus::Granted
            }
            None => {
                self.stats.granted += 1;
                self.leases.insert(hash, Lease { owner, expires });
                LeaseStatus::Granted
            }
        }
    }

    /// `hash` is now stored: release its lease and protect it for a while.
    pub fn complete(&mut self, hash: Hash, now: Instant) {
        if self.leases.remove(&hash).is_some() {
            self.stats.completed += 1;
        }
        self.touched.insert(hash, now);
    }

    /// Protect `hash` from garbage collection for the protection window.
    pub fn touch(&mut self, hash: Hash, now: Instant) {
        self.touched.insert(hash, now);
    }

    /// Drop every lease `owner` holds (its connection closed).
    pub fn release_owner(&mut self, owner: Owner) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, l| l.owner != owner);
        let released = before - self.leases.len();
        self.stats.released += released as u64;
        released
    }

    /// Remove expired leases and stale protections; returns how many leases
    /// expired.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, l| l.expires > now);
        let expired = before - self.leases.len();
        self.stats.expired += expired as u64;
        let window = self.protect_for;
        self.touched
            .retain(|_, t| now.saturating_duration_since(*t) < window);
        expired
    }

    /// Whether garbage collection must spare `hash`.
    pub fn is_protected(&self, hash: &Hash, now: Instant) -> bool {
        self.leases.get(hash).is_some_and(|l| l.expires > now)
            || self
                .touched
                .get(hash)
                .is_some_and(|t| now.saturating_duration_since(*t) < self.protect_for)
    }

    /// [`Self::is_protected`] with a shorter window for touched chunks:
    /// eviction under a full disk cannot wait out the whole grace period.
    pub fn is_protected_for(&self, hash: &Hash, now: Instant, window: Duration) -> bool {
        self.leases.get(hash).is_some_and(|l| l.expires > now)
            || self
                .touched
                .get(hash)
                .is_some_and(|t| now.saturating_duration_since(*t) < window.min(self.protect_for))
    }

    /// When the next lease runs out, so a driver knows when to call `expire`.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.expires).min()
    }

    /// Counters, with `active` counting leases still live at `now`.
    pub fn stats(&self, now: Instant) -> LeaseStats {
        LeaseStats {
            active: self.leases.values().filter(|l| l.expires > now).count() as u64,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LeaseStatus::*;

    const TTL: Duration = Duration::from_secs(30);

    fn h(i: u8) -> Hash {
        Hash([i; 32])
    }

    #[test]
    fn one_writer_per_chunk() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(TTL, Duration::from_secs(60));
        assert_eq!(t.claim(h(1), 1, false, t0), Granted);
        assert_eq!(t.claim(h(1), 2, false, t0), Leased);
        assert_eq!(
            t.claim(h(1), 1, false, t0),
            Granted,
            "the holder may ask again"
        );
        t.complete(h(1), t0);
        assert_eq!(t.claim(h(1), 2, true, t0), AlreadyStored);
        let s = t.stats(t0);
        assert_eq!((s.active, s.granted, s.completed, s.expired), (0, 1, 1, 0));
    }

    #[test]
    fn an_abandoned_lease_expires_and_is_granted_again() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(TTL, Duration::ZERO);
        assert_eq!(t.claim(h(1), 1, false, t0), Granted);
        assert_eq!(
            t.claim(h(1), 2, false, t0 + TTL - Duration::from_millis(1)),
            Leased
        );
        assert_eq!(t.claim(h(1), 2, false, t0 + TTL), Granted);
        assert_eq!(
            t.claim(h(1), 1, false, t0 + TTL),
            Leased,
            "the old holder lost it"
        );
        let s = t.stats(t0 + TTL);
        assert_eq!((s.active, s.granted, s.expired), (1, 2, 1));
    }

    #[test]
    fn renewing_extends_the_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(TTL, Duration::ZERO);
        t.claim(h(1), 1, false, t0);
        t.claim(h(1), 1, false, t0 + Duration::from_secs(20));
        assert_eq!(
            t.claim(h(1), 2, false, t0 + Duration::from_secs(40)),
            Leased
        );
    }

    #[test]
    fn periodic_cleanup_over_simulated_hours() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(TTL, Duration::from_secs(600));
        let mut now = t0;
        // Every second for two hours a worker claims ten chunks and stores
        // only half of them.
        for sec in 0..7200u64 {
            now = t0 + Duration::from_secs(sec);
            for i in 0..10u64 {
                let hash = Hash::of(&(sec * 10 + i).to_le_bytes());
                assert_eq!(t.claim(hash, sec % 8, false, now), Granted);
                if i % 2 == 0 {
                    t.complete(hash, now);
                }
            }
            if sec % 5 == 0 {
                t.expire(now);
            }
        }
        t.expire(now);
        let s = t.stats(now);
        assert_eq!(s.granted, 72_000);
        assert_eq!(s.completed, 36_000);
        assert_eq!(s.expired + s.active, 36_000);
        assert!(
            s.active <= 5 * 31,
            "only the last ~30 s of leases remain: {}",
            s.active
        );
        assert!(t.touched.len() <= 5 * 601, "stale protections are dropped");
        assert!(t.next_expiry().is_some_and(|e| e > now));
    }

    #[test]
    fn disconnect_releases_and_protection_window() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(TTL, Duration::from_secs(60));
        t.claim(h(1), 7, false, t0);
        t.claim(h(2), 7, false, t0);
        t.claim(h(3), 8, false, t0);
        assert!(t.is_protected(&h(1), t0));
        assert_eq!(t.release_owner(7), 2);
        assert_eq!(t.claim(h(1), 9, false, t0), Granted);
        assert_eq!(t.stats(t0).released, 2);
        t.complete(h(3), t0);
        assert!(t.is_protected(&h(3), t0 + Duration::from_secs(59)));
        assert!(!t.is_protected(&h(3), t0 + Duration::from_secs(60)));
        t.claim(h(4), 1, true, t0);
        assert!(
            t.is_protected(&h(4), t0),
            "an AlreadyStored answer protects too"
        );
    }
}
