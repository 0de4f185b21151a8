//! Checkpoint manifests per task, retention, and garbage collection.
//!
//! A manifest is stored as a record under `t-<task>/<seq, 20 digits>` in a
//! small envelope of our own: `MAGIC (8) | version (u16 LE) | postcard
//! Manifest`, so a future layout is refused by number instead of misread.
//! (The store adds an integrity hash around every record.)
//!
//! Committing a manifest requires every chunk it references to be stored,
//! so a kept manifest is always restorable; then all but the newest
//! `keep_checkpoints` of the task are deleted. Garbage collection deletes
//! chunks no kept manifest references, sparing those a live lease or a
//! recent upload protects.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::registry::{GcReport, ManifestStored};
use wmig_proto::{Hash, TaskId};

use crate::error::{RegistryError, StoreError};
use crate::service::{lock, Registry};
use crate::store::{ObjectKind, RefSpace};

pub const MANIFEST_MAGIC: [u8; 8] = *b"\0wmigmnf";
/// 2: manifests with files; version 1 records still read.
pub const MANIFEST_VERSION: u16 = 2;

pub(crate) fn key(task: TaskId, seq: u64) -> String {
    format!("t-{}/{seq:020}", task.0)
}

pub(crate) fn parse_key(key: &str) -> Option<(TaskId, u64)> {
    let (task, seq) = key.strip_prefix("t-")?.split_once('/')?;
    Some((TaskId(task.parse().ok()?), seq.parse().ok()?))
}

/// Encode a manifest in the registry's envelope.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    postcard::to_extend(m, out)
}

/// Decode the envelope; the error says what is wrong with it.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let rest = bytes
        .strip_prefix(&MANIFEST_MAGIC)
        .ok_or("not a manifest envelope")?;
    let (version, body) = rest.split_first_chunk::<2>().ok_or("truncated envelope")?;
    let version = u16::from_le_bytes(*version);
    let (manifest, rest) = match version {
        1 => postcard::take_from_bytes::<wmig_proto::checkpoint::ManifestV1>(body)
            .map(|(m, rest)| (Manifest::from(m), rest)),
        MANIFEST_VERSION => postcard::take_from_bytes::<Manifest>(body),
        _ => {
            return Err(format!(
                "manifest envelope version {version}, this wmig reads 1 and {MANIFEST_VERSION}"
            ))
        }
    }
    .map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the manifest", rest.len()));
    }
    Ok(manifest)
}

impl Registry {
    /// Commit a checkpoint manifest. Idempotent for identical bytes; a
    /// different manifest under an existing seq is a conflict.
    pub fn put_manifest(&self, m: &Manifest) -> Result<ManifestStored, RegistryError> {
        self.put_manifest_with(m, true)
    }

    /// Store a manifest another registry node accepted: its chunks were
    /// checked across the ring there and need not be on this node.
    pub fn put_manifest_replica(&self, m: &Manifest) -> Result<ManifestStored, RegistryError> {
        self.put_manifest_with(m, false)
    }

    /// The manifest's chunks this node does not hold.
    pub fn chunks_not_here(&self, m: &Manifest) -> Vec<Hash> {
        let hashes = m.chunk_hashes();
        let present = self.store.contains_many(ObjectKind::Chunk, &hashes);
        hashes
            .into_iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(h, _)| h)
            .collect()
    }

    /// Whether this node keeps the task's checkpoint `seq`.
    pub fn has_manifest(&self, task: TaskId, seq: u64) -> bool {
        lock(&self.manifests)
            .get(&task)
            .is_some_and(|s| s.contains_key(&seq))
    }

    pub(crate) fn put_manifest_with(
        &self,
        m: &Manifest,
        check_chunks: bool,
    ) -> Result<ManifestStored, RegistryError> {
        let task = m.task.ok_or_else(|| {
            RegistryError::Invalid(
                "the manifest names no task; only task checkpoints can be stored".into(),
            )
        })?;
        // Refuse what no worker could restore before storing it for them.
        m.validate().map_err(RegistryError::Invalid)?;
        if !check_chunks && self.was_evicted(task, m.seq) {
            return Err(RegistryError::Conflict(format!(
                "checkpoint {} of task {task} was evicted here for space",
                m.seq
            )));
        }
        let seq = m.seq;
        let body = encode_manifest(m)
            .map_err(|e| RegistryError::Invalid(format!("manifest does not encode: {e}")))?;
        let max = self.config.limits.max_manifest;
        if body.len() as u64 > max {
            return Err(RegistryError::TooLarge {
                what: "manifest",
                len: body.len() as u64,
                max,
            });
        }
        let _gc = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut index = lock(&self.manifests);
        let seqs = index.entry(task).or_default();
        let keep = self.config.keep_checkpoints.max(1);
        if seqs.contains_key(&seq) {
            let existing = self.store.get_ref(RefSpace::Manifests, &key(task, seq))?;
            if existing.as_deref() == Some(body.as_slice()) {
                return Ok(ManifestStored {
                    task,
                    seq,
                    pruned: Vec::new(),
                });
            }
            let next = seqs.keys().next_back().map_or(1, |s| s + 1);
            return Err(RegistryError::Conflict(format!(
                "task {task} already has a different checkpoint with seq {seq}; \
                 checkpoints are immutable, commit this one as seq {next}"
            )));
        }
        if retired(seqs.keys().copied().chain([seq]), keep).contains(&seq) {
            let oldest = seqs.keys().next().copied().unwrap_or(seq);
            return Err(RegistryError::Conflict(format!(
                "task {task} keeps {keep} newer checkpoints (oldest seq {oldest}); \
                 seq {seq} is stale and would be deleted at once"
            )));
        }
        let missing = if check_chunks {
            self.chunks_not_here(m)
        } else {
            Vec::new()
        };
        if let Some(first) = missing.first() {
            return Err(RegistryError::MissingChunks {
                count: missing.len(),
                first: *first,
            });
        }
        self.store
            .put_ref(RefSpace::Manifests, &key(task, seq), &body)?;
        seqs.insert(seq, body.len() as u64);
        let refs: usize = m.memories.iter().map(|i| i.chunks.len()).sum();
        self.chunks_referenced
            .fetch_add(refs as u64, std::sync::atomic::Ordering::Relaxed);
        let pruned = retired(seqs.keys().copied(), keep);
        for old in &pruned {
            seqs.remove(old);
            self.store
                .delete_ref(RefSpace::Manifests, &key(task, *old))?;
        }
        Ok(ManifestStored { task, seq, pruned })
    }

    /// A task's manifest by seq, or its newest.
    pub fn manifest(&self, task: TaskId, seq: Option<u64>) -> Result<Manifest, RegistryError> {
        let not_found = || RegistryError::NoManifest { task, seq };
        let seq = match seq {
            Some(s) => s,
            None => *lock(&self.manifests)
                .get(&task)
                .and_then(|s| s.keys().next_back())
                .ok_or_else(not_found)?,
        };
        let k = key(task, seq);
        let body = self
            .store
            .get_ref(RefSpace::Manifests, &k)?
            .ok_or_else(not_found)?;
        decode_manifest(&body).map_err(|reason| {
            tracing::error!(key = %k, %reason, "stored manifest is unreadable");
            StoreError::CorruptRef { key: k }.into()
        })
    }

    /// The seqs kept for a task, ascending.
    pub fn manifests(&self, task: TaskId) -> Vec<u64> {
        lock(&self.manifests)
            .get(&task)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Delete chunks that no kept manifest references and nothing protects.
    /// Refuses to delete anything if a kept manifest cannot be read.
    pub fn gc(&self, now: Instant) -> Result<GcReport, RegistryError> {
        if !self.gc_allowed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RegistryError::Unavailable(
                "this registry node has not caught up with the others' checkpoints since it \
                 started, so it cannot tell which chunks are unreferenced; try again in a \
                 few seconds"
                    .into(),
            ));
        }
        self.collect(now, self.config.gc_grace)
    }

    /// Garbage collection sparing only chunks younger than `grace` (or
    /// leased, or touched within it).
    pub(crate) fn collect(&self, now: Instant, grace: Duration) -> Result<GcReport, RegistryError> {
        let _gc = self.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let kept: Vec<(TaskId, u64)> = lock(&self.manifests)
            .iter()
            .flat_map(|(t, seqs)| seqs.keys().map(move |s| (*t, *s)))
            .collect();
        let mut referenced = HashSet::new();
        for (task, seq) in kept {
            referenced.extend(self.manifest(task, Some(seq))?.chunk_hashes());
        }
        referenced.extend(self.tree_chunks()?);
        let wall = SystemTime::now();
        let mut report = GcReport::default();
        // Hold the lease table while deleting so no `AlreadyStored` answer is
        // given for a chunk that is about to go.
        let leases = lock(&self.leases);
        for o in self.store.objects(ObjectKind::Chunk) {
            if referenced.contains(&o.hash) {
                continue;
            }
            let young = wall
                .duration_since(o.stored_at)
                .map_or(true, |age| age < grace);
            if young || leases.is_protected_for(&o.hash, now, grace) {
                report.chunks_protected += 1;
                continue;
            }
            if let Some(len) = self.store.delete_object(ObjectKind::Chunk, &o.hash)? {
                report.chunks_removed += 1;
                report.bytes_freed += len;
            }
        }
        Ok(report)
    }
}

/// Epochs whose checkpoints retention keeps (see [`retired`]).
const KEPT_EPOCHS: usize = 8;

/// Which of a task's checkpoint numbers retention deletes. Cluster
/// checkpoints carry their owner's epoch in the high 32 bits: each epoch
/// keeps its `keep` newest, and the newest [`KEPT_EPOCHS`] epochs are kept.
/// An owner therefore never deletes the checkpoints of another epoch: a
/// stale owner still uploading after its task moved cannot push out the
/// checkpoint the coordinator resumes the task from.
fn retired(seqs: impl IntoIterator<Item = u64>, keep: usize) -> Vec<u64> {
    let mut by_epoch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in seqs {
        by_epoch.entry(s >> 32).or_default().push(s);
    }
    let epochs = by_epoch.len();
    let mut out = Vec::new();
    for (i, (_, mut list)) in by_epoch.into_iter().enumerate() {
        list.sort_unstable();
        if i + KEPT_EPOCHS < epochs {
            out.extend(list);
        } else {
            let excess = list.len().saturating_sub(keep.max(1));
            out.extend(list.into_iter().take(excess));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
#[path = "manifests_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_seq() {
        assert_eq!(parse_key(&key(TaskId(12), 5)), Some((TaskId(12), 5)));
        assert!(key(TaskId(1), 9) < key(TaskId(1), 10));
        for bad in ["", "t-", "t-1", "t-x/1", "t-1/y", "u-1/1"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_envelopes_are_named() {
        assert!(decode_manifest(b"junk").is_err());
        let mut v = MANIFEST_MAGIC.to_vec();
        v.extend_from_slice(&7u16.to_le_bytes());
        assert!(decode_manifest(&v)
            .err()
            .unwrap_or_default()
            .contains("version 7"));
        v.truncate(9);
        assert!(decode_manifest(&v).is_err());
    }
}

#[cfg(test)]
mod retention_tests {
    use super::retired;

    const E: u64 = 1 << 32;

    #[test]
    fn each_epoch_keeps_its_newest_and_stale_owners_cannot_push_others_out() {
        // Local checkpoints (epoch 0): the newest `keep`.
        assert_eq!(retired([1, 2, 3, 4, 5], 3), vec![1, 2]);
        // Epoch 2 committed 2.1; a stale epoch-1 owner keeps uploading.
        let seqs = [E + 1, E + 2, E + 3, E + 4, 2 * E + 1];
        assert_eq!(retired(seqs, 3), vec![E + 1]);
        // A newer stale owner (epoch 3) cannot prune epoch 2 either.
        let seqs = [2 * E + 1, 3 * E + 1, 3 * E + 2, 3 * E + 3, 3 * E + 4];
        assert_eq!(retired(seqs, 3), vec![3 * E + 1]);
        // Only the newest 8 epochs are kept.
        let many: Vec<u64> = (1..=10).map(|e| e * E + 1).collect();
        assert_eq!(retired(many, 3), vec![E + 1, 2 * E + 1]);
    }
}
