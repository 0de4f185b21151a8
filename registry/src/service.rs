//! `Registry`: the request logic over a [`Store`], with no networking.
//!
//! The server decodes a request and calls one method here (on a blocking
//! thread, since stores block); tests call the same methods directly. Every
//! method that involves leases takes `now` so the lease policy is testable
//! with simulated time. Checkpoint manifests and garbage collection are in
//! `manifests.rs`.
//!
//! Two in-memory indexes sit beside the store: bundle names and the kept
//! manifests per task. Both are small, rebuilt from the store's records on
//! open, and updated after the store has durably written the record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use wmig_proto::files::FileTree;
use wmig_proto::wire::registry::{
    BundleInfo, BundleRef, BundleStored, Inventory, LeaseStatus, NameTag, PutReport, RegistryStats,
};
use wmig_proto::{Hash, TaskId};

use crate::config::RegistryConfig;
use crate::error::{RegistryError, StoreError};
use crate::lease::{LeaseTable, Owner};
use crate::store::{ObjectKind, RefSpace, Store};

/// The registry's state and operations.
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: RegistryConfig,
    pub(crate) leases: Mutex<LeaseTable>,
    names: RwLock<BTreeMap<NameTag, Hash>>,
    /// Kept manifests: task → seq → encoded size.
    pub(crate) manifests: Mutex<BTreeMap<TaskId, BTreeMap<u64, u64>>>,
    /// Chunk writes and manifest commits hold it shared; garbage collection
    /// holds it exclusively, so it never sees a half-committed checkpoint.
    pub(crate) gc_lock: RwLock<()>,
    chunks_written: AtomicU64,
    chunks_deduplicated: AtomicU64,
    /// Chunk references of the manifests stored since start.
    pub(crate) chunks_referenced: AtomicU64,
    /// Garbage collection may run: false on a ring node until it has
    /// caught up with the others' manifests, which reference its chunks.
    pub(crate) gc_allowed: std::sync::atomic::AtomicBool,
    /// Checkpoints evicted here (see `evict.rs`).
    pub(crate) evicted: Mutex<std::collections::HashSet<(TaskId, u64)>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent; a panic elsewhere
    // must not take the registry down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// A registry over `store`, loading names and manifests from it.
    pub fn open(store: Arc<dyn Store>, config: RegistryConfig) -> Result<Self, RegistryError> {
        let mut names = BTreeMap::new();
        for (key, _) in store.refs(RefSpace::Names)? {
            let Ok(name) = key.parse::<NameTag>() else {
                tracing::warn!(%key, "ignoring a name record with an invalid name");
                continue;
            };
            // A damaged record loses its name, like a malformed one: the
            // bundle stays reachable by hash, and the registry still starts.
            let value = match store.get_ref(RefSpace::Names, &key) {
                Ok(v) => v,
                Err(StoreError::CorruptRef { .. }) => {
                    tracing::warn!(%key, "ignoring a name record that fails its integrity check; push the name again");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match value {
                Some(v) => match <[u8; 32]>::try_from(v.as_slice()) {
                    Ok(h) => {
                        names.insert(name, Hash(h));
                    }
                    Err(_) => tracing::warn!(%key, "ignoring a name record that is not a hash"),
                },
                None => continue,
            }
        }
        let mut manifests: BTreeMap<TaskId, BTreeMap<u64, u64>> = BTreeMap::new();
        for (key, len) in store.refs(RefSpace::Manifests)? {
            match crate::manifests::parse_key(&key) {
                Some((task, seq)) => {
                    manifests.entry(task).or_default().insert(seq, len);
                }
                None => tracing::warn!(%key, "ignoring a manifest record with an invalid key"),
            }
        }
        let mut evicted = std::collections::HashSet::new();
        for (key, _) in store.refs(RefSpace::Evicted)? {
            if let Some(k) = crate::manifests::parse_key(&key) {
                evicted.insert(k);
            }
        }
        let leases = LeaseTable::new(config.lease_ttl, config.gc_grace);
        Ok(Registry {
            store,
            leases: Mutex::new(leases),
            names: RwLock::new(names),
            manifests: Mutex::new(manifests),
            gc_lock: RwLock::new(()),
            chunks_written: AtomicU64::new(0),
            chunks_deduplicated: AtomicU64::new(0),
            chunks_referenced: AtomicU64::new(0),
            gc_allowed: std::sync::atomic::AtomicBool::new(true),
            evicted: Mutex::new(evicted),
            config,
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Store a bundle after checking its size, hash and that it is wasm;
    /// with `name`, point the name at it.
    pub fn put_bundle(
        &self,
        hash: Hash,
        bytes: &[u8],
        name: Option<&NameTag>,
    ) -> Result<BundleStored, RegistryError> {
        self.put_bundle_with(hash, bytes, name, true)
    }

    /// [`Registry::put_bundle`]; a file tree's chunks are checked here only
    /// with `check_chunks` (on a ring they may be held by other nodes, which
    /// the server asks first).
    pub fn put_bundle_with(
        &self,
        hash: Hash,
        bytes: &[u8],
        name: Option<&NameTag>,
        check_chunks: bool,
    ) -> Result<BundleStored, RegistryError> {
        let max = self.config.limits.max_bundle;
        if bytes.len() as u64 > max {
            return Err(RegistryError::TooLarge {
                what: "bundle",
                len: bytes.len() as u64,
                max,
            });
        }
        if let Some(n) = name {
            n.validate()
                .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        }
        let actual = Hash::of(bytes);
        if actual != hash {
            return Err(StoreError::HashMismatch {
                claimed: hash,
                actual,
            }
            .into());
        }
        if FileTree::is_tree(bytes) {
            // A task's files: kept, like a checkpoint, only with its chunks.
            let tree =
                FileTree::decode(bytes).map_err(|e| RegistryError::Invalid(e.to_string()))?;
            if check_chunks {
                let hashes = tree.chunk_hashes();
                let present = self.store.contains_many(ObjectKind::Chunk, &hashes);
                let missing: Vec<Hash> = hashes
                    .into_iter()
                    .zip(present)
                    .filter(|(_, p)| !p)
                    .map(|(h, _)| h)
                    .collect();
                if let Some(first) = missing.first() {
                    return Err(RegistryError::MissingChunks {
                        count: missing.len(),
                        first: *first,
                    });
                }
            }
        } else {
            wasmparser::validate(bytes).map_err(|e| RegistryError::NotWasm(e.to_string()))?;
        }
        let created = self
            .store
            .put_objects(ObjectKind::Bundle, &[(hash, bytes)])?
            .first()
            .copied()
            .unwrap_or(false);
        if let Some(n) = name {
            self.store
                .put_ref(RefSpace::Names, &n.to_string(), hash.as_bytes())?;
            self.names
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n.clone(), hash);
        }
        Ok(BundleStored {
            hash,
            len: bytes.len() as u64,
            created,
        })
    }

    /// The hash a reference points at, if that bundle is stored.
    pub fn resolve(&self, bundle: &BundleRef) -> Result<Hash, RegistryError> {
        let hash = match bundle {
            BundleRef::Hash(h) => *h,
            BundleRef::Name(n) => *self
                .names
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(n)
                .ok_or_else(|| RegistryError::UnknownName(n.to_string()))?,
        };
        if self.store.contains(ObjectKind::Bundle, &hash) {
            Ok(hash)
        } else {
            Err(StoreError::NotFound(hash).into())
        }
    }

    /// A bundle's hash and bytes (verified by the store).
    pub fn bundle(&self, bundle: &BundleRef) -> Result<(Hash, Vec<u8>), RegistryError> {
        let hash = self.resolve(bundle)?;
        Ok((hash, self.store.object(ObjectKind::Bundle, &hash)?))
    }

    /// Per hash, whether this node stores the chunk.
    pub fn store_contains_chunks(&self, hashes: &[Hash]) -> Vec<bool> {
        self.store.contains_many(ObjectKind::Chunk, hashes)
    }

    /// The chunks of every file tree stored as a bundle (they are kept like
    /// a checkpoint's).
    pub(crate) fn tree_chunks(&self) -> Result<Vec<Hash>, RegistryError> {
        let mut out = Vec::new();
        for o in self.store.objects(ObjectKind::Bundle) {
            let bytes = self.store.object(ObjectKind::Bundle, &o.hash)?;
            if FileTree::is_tree(&bytes) {
                let tree = FileTree::decode(&bytes)
                    .map_err(|e| RegistryError::Invalid(format!("stored tree {}: {e}", o.hash)))?;
                out.extend(tree.chunk_hashes());
            }
        }
        Ok(out)
    }

    /// Every bundle with the names pointing at it; named bundles first.
    pub fn list_bundles(&self) -> Vec<BundleInfo> {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<BundleInfo> = self
            .store
            .objects(ObjectKind::Bundle)
            .into_iter()
            .map(|o| BundleInfo {
                hash: o.hash,
                len: o.len,
                names: names
                    .iter()
                    .filter(|(_, h)| **h == o.hash)
                    .map(|(n, _)| n.clone())
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.names.is_empty(), &a.names, a.hash).cmp(&(b.names.is_empty(), &b.names, b.hash))
        });
        out
    }

    /// Per hash: should `owner` store this chunk?
    pub fn can_store(&self, owner: Owner, hashes: &[Hash], now: Instant) -> Vec<LeaseStatus> {
        let stored = self.store.contains_many(ObjectKind::Chunk, hashes);
        let mut leases = lock(&self.leases);
        let answers: Vec<LeaseStatus> = hashes
            .iter()
            .zip(stored)
            .map(|(h, s)| leases.claim(*h, owner, s, now))
            .collect();
        drop(leases);
        let dedup = answers
            .iter()
            .filter(|a| **a == LeaseStatus::AlreadyStored)
            .count();
        self.chunks_deduplicated
            .fetch_add(dedup as u64, Ordering::Relaxed);
        answers
    }

    /// Store chunks (each verified); storing releases their leases.
    pub fn put_chunks(
        &self,
        items: &[(Hash, &[u8])],
        now: Instant,
    ) -> Result<PutReport, RegistryError> {
        self.check_chunk_count(items.len())?;
        let max = u64::from(self.config.limits.max_chunk);
        if let Some((_, big)) = items.iter().find(|(_, b)| b.len() as u64 > max) {
            return Err(RegistryError::TooLarge {
                what: "chunk",
                len: big.len() as u64,
                max,
            });
        }
        if self.config.capacity.is_some() {
            let missing = self.store.contains_many(
                ObjectKind::Chunk,
                &items.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
            );
            let incoming = items
                .iter()
                .zip(missing)
                .filter(|(_, stored)| !stored)
                .map(|((_, b), _)| b.len() as u64)
                .sum();
            self.make_room(incoming, now)?;
        }
        let _gc = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let fresh = self.store.put_objects(ObjectKind::Chunk, items)?;
        let mut leases = lock(&self.leases);
        for (h, _) in items {
            leases.complete(*h, now);
        }
        drop(leases);
        let written = fresh.iter().filter(|f| **f).count() as u64;
        let report = PutReport {
            written,
            already_stored: items.len() as u64 - written,
        };
        self.chunks_written.fetch_add(written, Ordering::Relaxed);
        self.chunks_deduplicated
            .fetch_add(report.already_stored, Ordering::Relaxed);
        Ok(report)
    }

    pub(crate) fn check_chunk_count(&self, n: usize) -> Result<(), RegistryError> {
        let max = self.config.limits.max_chunks_per_request;
        if n > max {
            return Err(RegistryError::TooLarge {
                what: "chunk list (in chunks)",
                len: n as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// Chunks' bytes, in order; the first unknown hash is an error.
    pub fn chunks(&self, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, RegistryError> {
        self.check_chunk_count(hashes.len())?;
        Ok(self.store.objects_many(ObjectKind::Chunk, hashes)?)
    }

    /// How many leading hashes are stored. Those are protected from garbage
    /// collection for a while: the caller is about to reference them.
    pub fn has_prefix(&self, hashes: &[Hash], now: Instant) -> u64 {
        let stored = self.store.contains_many(ObjectKind::Chunk, hashes);
        let n = stored.iter().take_while(|s| **s).count();
        let mut leases = lock(&self.leases);
        for h in &hashes[..n] {
            leases.touch(*h, now);
        }
        n as u64
    }

    /// Which hashes are stored here. Those are spared from garbage
    /// collection for a while, as by [`Self::has_prefix`].
    /// `touch: false` for other registry nodes' repair, which asks about
    /// every chunk and must not keep garbage alive.
    pub fn holds(&self, hashes: &[Hash], touch: bool, now: Instant) -> Vec<bool> {
        let stored = self.store.contains_many(ObjectKind::Chunk, hashes);
        if !touch {
            return stored;
        }
        let mut leases = lock(&self.leases);
        for (h, s) in hashes.iter().zip(&stored) {
            if *s {
                leases.touch(*h, now);
            }
        }
        stored
    }

    /// Point `name` at a bundle this node holds (a name another node took).
    pub fn put_name(&self, name: &NameTag, hash: Hash) -> Result<(), RegistryError> {
        name.validate()
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        if !self.store.contains(ObjectKind::Bundle, &hash) {
            return Err(StoreError::NotFound(hash).into());
        }
        self.store
            .put_ref(RefSpace::Names, &name.to_string(), hash.as_bytes())?;
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), hash);
        Ok(())
    }

    /// What this node keeps of the metadata every node keeps.
    pub fn inventory(&self) -> Inventory {
        let manifests = lock(&self.manifests)
            .iter()
            .flat_map(|(t, seqs)| seqs.keys().map(move |s| (*t, *s)))
            .collect();
        let bundles = self
            .store
            .objects(ObjectKind::Bundle)
            .into_iter()
            .map(|o| o.hash)
            .collect();
        let names = self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, h)| (n.clone(), *h))
            .collect();
        Inventory {
            manifests,
            bundles,
            names,
        }
    }

    /// Hold garbage collection back (or let it run again).
    pub fn allow_gc(&self, allowed: bool) {
        self.gc_allowed.store(allowed, Ordering::Release);
    }

    /// A connection closed: its leases go.
    pub fn release_owner(&self, owner: Owner) -> usize {
        lock(&self.leases).release_owner(owner)
    }

    /// Periodic lease cleanup.
    pub fn expire_leases(&self, now: Instant) -> usize {
        lock(&self.leases).expire(now)
    }

    pub fn stats(&self, now: Instant) -> RegistryStats {
        let (manifests, tasks) = {
            let index = lock(&self.manifests);
            let count = index.values().map(|s| s.len() as u64).sum();
            let bytes = index.values().flat_map(|s| s.values()).sum();
            let tasks = index.values().filter(|s| !s.is_empty()).count() as u64;
            (
                wmig_proto::wire::registry::ObjectCount { count, bytes },
                tasks,
            )
        };
        let names = self.names.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
        RegistryStats {
            bundles: self.store.count(ObjectKind::Bundle),
            chunks: self.store.count(ObjectKind::Chunk),
            manifests,
            names,
            tasks,
            leases: lock(&self.leases).stats(now),
            chunks_written: self.chunks_written.load(Ordering::Relaxed),
            chunks_deduplicated: self.chunks_deduplicated.load(Ordering::Relaxed),
            chunks_referenced: self.chunks_referenced.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
pub(crate) mod tests;
