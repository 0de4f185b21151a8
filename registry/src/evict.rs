//! A capacity for the chunks a node stores, kept with a high-water mark and
//! tail-first eviction of checkpoint chains (seed 002).
//!
//! When the chunk bytes stored here pass `capacity × high_water`, the
//! oldest kept checkpoint of each task that keeps more than one is deleted
//! (the tail of its chain), then the chunks no kept checkpoint references
//! any more, round after round until the bytes are under
//! `capacity × low_water` or every task is down to its newest checkpoint.
//! A task's newest checkpoint, which a recovery or a migration resumes
//! from, is never evicted, nor a chunk that is leased or was uploaded or
//! confirmed within the eviction grace (a checkpoint may be about to
//! reference it). If that is not enough, uploads beyond the capacity are
//! refused with an error that says so, rather than filling the disk.
//!
//! On a ring each node keeps its own capacity; a checkpoint evicted here is
//! remembered (a record under `evicted/`, loaded on open) so the repair
//! does not fetch it back from a node that kept it.

use std::time::Instant;

use wmig_proto::wire::registry::GcReport;
use wmig_proto::TaskId;

use crate::error::RegistryError;
use crate::service::{lock, Registry};
use crate::store::{ObjectKind, RefSpace};

/// What an eviction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    pub manifests: u64,
    pub chunks: u64,
    pub bytes: u64,
}

impl Registry {
    /// Chunk bytes stored here, and the capacity if there is one.
    pub fn chunk_usage(&self) -> (u64, Option<u64>) {
        (
            self.store.count(ObjectKind::Chunk).bytes,
            self.config.capacity,
        )
    }

    /// Whether `incoming` more bytes fit; evicts first when past the
    /// high-water mark.
    pub fn make_room(&self, incoming: u64, now: Instant) -> Result<(), RegistryError> {
        let Some(capacity) = self.config.capacity else {
            return Ok(());
        };
        let (used, _) = self.chunk_usage();
        if used + incoming > high(capacity, self.config.high_water) {
            let r = self.evict(now)?;
            if r.manifests > 0 {
                tracing::info!(
                    manifests = r.manifests,
                    chunks = r.chunks,
                    bytes = r.bytes,
                    "evicted old checkpoints: the store passed its high-water mark"
                );
            }
        }
        let (used, _) = self.chunk_usage();
        if used + incoming > capacity {
            return Err(RegistryError::Unavailable(format!(
                "this registry node is full: {used} of its {capacity} bytes of chunks are \
                 taken by the newest checkpoint of each task and by chunks still being \
                 uploaded; raise --capacity, add a node, or remove tasks' checkpoints"
            )));
        }
        Ok(())
    }

    /// Evict down to the low-water mark (see the module docs).
    pub fn evict(&self, now: Instant) -> Result<EvictReport, RegistryError> {
        let mut report = EvictReport::default();
        let Some(capacity) = self.config.capacity else {
            return Ok(report);
        };
        let target = high(capacity, self.config.low_water);
        let grace = self.config.lease_ttl * 2;
        while self.chunk_usage().0 > target {
            let tails: Vec<(TaskId, u64)> = lock(&self.manifests)
                .iter()
                .filter(|(_, seqs)| seqs.len() > 1)
                .filter_map(|(t, seqs)| Some((*t, *seqs.keys().next()?)))
                .collect();
            if tails.is_empty() {
                break;
            }
            for (task, seq) in tails {
                self.drop_manifest(task, seq)?;
                report.manifests += 1;
            }
            let GcReport {
                chunks_removed,
                bytes_freed,
                ..
            } = self.collect(now, grace)?;
            report.chunks += chunks_removed;
            report.bytes += bytes_freed;
            if bytes_freed == 0 {
                // Its chunks are still protected (or shared with newer
                // checkpoints): deleting more checkpoints would not help now.
                break;
            }
        }
        Ok(report)
    }

    fn drop_manifest(&self, task: TaskId, seq: u64) -> Result<(), RegistryError> {
        let _gc = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut index = lock(&self.manifests);
        self.store
            .delete_ref(RefSpace::Manifests, &crate::manifests::key(task, seq))?;
        if let Some(seqs) = index.get_mut(&task) {
            seqs.remove(&seq);
        }
        // Remembered across restarts, so a ring's repair does not fetch it
        // back from a node that kept it.
        self.store
            .put_ref(RefSpace::Evicted, &crate::manifests::key(task, seq), &[])?;
        lock(&self.evicted).insert((task, seq));
        Ok(())
    }

    /// Whether this node evicted that checkpoint (the repair leaves it).
    pub fn was_evicted(&self, task: TaskId, seq: u64) -> bool {
        lock(&self.evicted).contains(&(task, seq))
    }
}

fn high(capacity: u64, fraction: f64) -> u64 {
    (capacity as f64 * fraction.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use wmig_proto::checkpoint::CHUNK_SIZE;
    use wmig_proto::{Hash, TaskId};

    use crate::config::RegistryConfig;
    use crate::error::RegistryError;
    use crate::service::tests::{chunk, manifest};
    use crate::store::MemStore;
    use crate::Registry;

    /// Store `chunks` and commit them as checkpoint `seq` of `task`.
    fn checkpoint(r: &Registry, task: u64, seq: u64, chunks: &[u32], now: Instant) {
        let data: Vec<Vec<u8>> = chunks.iter().map(|i| chunk(*i)).collect();
        let hashes: Vec<Hash> = data.iter().map(|c| Hash::of(c)).collect();
        let items: Vec<(Hash, &[u8])> = hashes
            .iter()
            .zip(&data)
            .map(|(h, c)| (*h, c.as_slice()))
            .collect();
        r.put_chunks(&items, now).expect("put");
        r.put_manifest(&manifest(task, seq, &hashes))
            .expect("manifest");
    }

    #[test]
    fn past_the_high_water_mark_chains_lose_their_tails_never_their_heads() {
        let config = RegistryConfig {
            capacity: Some(20 * CHUNK_SIZE as u64),
            keep_checkpoints: 5,
            lease_ttl: Duration::from_millis(1),
            ..RegistryConfig::default()
        };
        let store = Arc::new(MemStore::new());
        let r = Registry::open(store.clone(), config.clone()).expect("open");
        let t0 = Instant::now();
        // Task 1: four checkpoints of 4 distinct chunks each; task 2: one.
        for seq in 1..=4u64 {
            let base = seq as u32 * 10;
            checkpoint(&r, 1, seq, &[base, base + 1, base + 2, base + 3], t0);
        }
        checkpoint(&r, 2, 1, &[100, 101], t0);
        assert_eq!(r.chunk_usage().0, 18 * CHUNK_SIZE as u64);
        // Past the eviction grace (2 ms here), 4 more chunks would pass 90 %.
        std::thread::sleep(Duration::from_millis(20));
        let later = t0 + Duration::from_secs(1);
        r.make_room(4 * CHUNK_SIZE as u64, later).expect("room");
        // Down to 80 %: task 1's oldest checkpoints went, tail first.
        assert!(r.chunk_usage().0 <= 16 * CHUNK_SIZE as u64);
        let kept = r.manifests(TaskId(1));
        assert_eq!(kept.last(), Some(&4), "the newest is kept");
        assert!(!kept.contains(&1), "the oldest went first: {kept:?}");
        assert!(r.was_evicted(TaskId(1), 1));
        assert_eq!(r.manifests(TaskId(2)), vec![1], "a chain of one is kept");
        // Every kept checkpoint is still whole.
        for seq in &kept {
            let m = r.manifest(TaskId(1), Some(*seq)).expect("manifest");
            assert!(r.chunks_not_here(&m).is_empty());
        }
        // Reopened, it still knows what it evicted, and refuses it back
        // from another node.
        let again = Registry::open(store, config).expect("reopen");
        assert!(again.was_evicted(TaskId(1), 1));
        assert_eq!(again.manifests(TaskId(1)), kept);
        let back = again.put_manifest_replica(&manifest(1, 1, &[Hash::of(&chunk(10))]));
        assert!(matches!(back, Err(RegistryError::Conflict(_))), "{back:?}");
    }

    #[test]
    fn a_store_full_of_newest_checkpoints_refuses_more_with_a_clear_error() {
        let config = RegistryConfig {
            capacity: Some(4 * CHUNK_SIZE as u64),
            lease_ttl: Duration::from_millis(1),
            ..RegistryConfig::default()
        };
        let r = Registry::open(Arc::new(MemStore::new()), config).expect("open");
        let t0 = Instant::now();
        checkpoint(&r, 1, 1, &[1, 2], t0);
        checkpoint(&r, 2, 1, &[3, 4], t0);
        std::thread::sleep(Duration::from_millis(20));
        let err = r
            .make_room(CHUNK_SIZE as u64, t0 + Duration::from_secs(1))
            .expect_err("full");
        assert!(matches!(err, RegistryError::Unavailable(_)));
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(r.manifests(TaskId(1)), vec![1]);
    }
}
