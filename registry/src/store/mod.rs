//! The storage trait: immutable objects named by blake3, and small mutable
//! records ("refs") that point at them.
//!
//! The split mirrors what the registry keeps. Bundles and chunks are
//! content-addressed, so they are written once, never modified, and any copy
//! is as good as another: they need no transactions, only an atomic publish.
//! Names (`name:tag` → hash) and checkpoint manifests (task, seq → manifest)
//! are keyed records, rewritten or deleted as a whole. A backend for an
//! object store (S3) fits the same two calls per kind.
//!
//! Contract for every backend: `put_objects` verifies each object against
//! its hash before anything becomes visible; a reader sees a whole object or
//! none; `object` and `get_ref` verify what they read. Backends keep an
//! index of which objects exist so `contains` (asked a million times a second
//! by `can_store`) never touches the disk.

use std::time::SystemTime;

use wmig_proto::wire::registry::ObjectCount;
use wmig_proto::Hash;

use crate::error::StoreError;

pub mod fs;
pub mod mem;
pub mod s3;

pub use fs::FsStore;
pub use mem::MemStore;
pub use s3::{S3Options, S3Store};

/// The two kinds of content-addressed objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Bundle,
    Chunk,
}

impl ObjectKind {
    pub fn dir_name(self) -> &'static str {
        match self {
            ObjectKind::Bundle => "bundles",
            ObjectKind::Chunk => "chunks",
        }
    }
}

/// The namespaces of keyed records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefSpace {
    /// `name:tag` → 32-byte bundle hash.
    Names,
    /// `t-<task>/<seq>` → manifest envelope.
    Manifests,
    /// `t-<task>/<seq>` → nothing: checkpoints evicted for space, which a
    /// ring's repair must not fetch back (see `evict.rs`).
    Evicted,
}

impl RefSpace {
    pub fn dir_name(self) -> &'static str {
        match self {
            RefSpace::Names => "names",
            RefSpace::Manifests => "manifests",
            RefSpace::Evicted => "evicted",
        }
    }
}

/// One stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub hash: Hash,
    pub len: u64,
    /// When it was written (file mtime for the file backend): garbage
    /// collection spares young objects a checkpoint may be about to use.
    pub stored_at: SystemTime,
}

/// A storage backend. Methods block; async callers use `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Store `items` (hash, bytes) of `kind`. Every item is verified first;
    /// one mismatch stores nothing. Returns, per item, whether it was newly
    /// written (false: it was already stored, or repeated in `items`).
    fn put_objects(
        &self,
        kind: ObjectKind,
        items: &[(Hash, &[u8])],
    ) -> Result<Vec<bool>, StoreError>;

    /// The object's bytes, verified against `hash`.
    fn object(&self, kind: ObjectKind, hash: &Hash) -> Result<Vec<u8>, StoreError>;

    /// Several objects' bytes, in order; the first missing or corrupt one
    /// is the error. Backends with a round trip per object (S3) fetch them
    /// concurrently.
    fn objects_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, StoreError> {
        hashes.iter().map(|h| self.object(kind, h)).collect()
    }

    /// Whether each hash is stored, from the index.
    fn contains_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<bool>;

    fn contains(&self, kind: ObjectKind, hash: &Hash) -> bool {
        self.contains_many(kind, std::slice::from_ref(hash))
            .first()
            .copied()
            .unwrap_or(false)
    }

    /// Remove an object; returns its size if it existed.
    fn delete_object(&self, kind: ObjectKind, hash: &Hash) -> Result<Option<u64>, StoreError>;

    /// Every object of `kind`.
    fn objects(&self, kind: ObjectKind) -> Vec<ObjectInfo>;

    fn count(&self, kind: ObjectKind) -> ObjectCount;

    /// Atomically create or replace a record.
    fn put_ref(&self, space: RefSpace, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// A record's value, verified; `None` if absent.
    fn get_ref(&self, space: RefSpace, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Remove a record; returns whether it existed.
    fn delete_ref(&self, space: RefSpace, key: &str) -> Result<bool, StoreError>;

    /// Every key in `space` with its value's size.
    fn refs(&self, space: RefSpace) -> Result<Vec<(String, u64)>, StoreError>;
}

/// Indices of the items to write: not `stored` yet, and the first of any
/// repeats within `items`.
pub(crate) fn new_items(items: &[(Hash, &[u8])], stored: impl Fn(&Hash) -> bool) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    (0..items.len())
        .filter(|&i| !stored(&items[i].0) && seen.insert(items[i].0))
        .collect()
}

/// A record as stored: `value ‖ blake3(value)`, so a torn or flipped
/// record is detected on read.
pub(crate) fn seal(value: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(value.len() + 32);
    body.extend_from_slice(value);
    body.extend_from_slice(Hash::of(value).as_bytes());
    body
}

/// The value of a sealed record, or `CorruptRef` naming `key`.
pub(crate) fn unseal(key: &str, mut body: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let corrupt = || StoreError::CorruptRef {
        key: key.to_owned(),
    };
    let split = body.len().checked_sub(32).ok_or_else(corrupt)?;
    let (value, trailer) = body.split_at(split);
    if Hash::of(value).as_bytes().as_slice() != trailer {
        return Err(corrupt());
    }
    body.truncate(split);
    Ok(body)
}

/// Check every item against its hash; the first mismatch is the error.
pub(crate) fn verify_all(items: &[(Hash, &[u8])]) -> Result<(), StoreError> {
    for (claimed, bytes) in items {
        let actual = Hash::of(bytes);
        if actual != *claimed {
            return Err(StoreError::HashMismatch {
                claimed: *claimed,
                actual,
            });
        }
    }
    Ok(())
}

/// Shared behavior tests, run against every backend.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    pub fn objects_round_trip(store: &dyn Store) {
        let a = b"alpha".as_slice();
        let b = vec![9u8; 70_000];
        let (ha, hb) = (Hash::of(a), Hash::of(&b));
        let fresh = store
            .put_objects(ObjectKind::Chunk, &[(ha, a), (hb, &b), (ha, a)])
            .expect("put");
        assert_eq!(fresh, vec![true, true, false]);
        assert_eq!(
            store
                .put_objects(ObjectKind::Chunk, &[(ha, a)])
                .expect("put"),
            vec![false]
        );
        assert_eq!(store.object(ObjectKind::Chunk, &hb).expect("get"), b);
        assert_eq!(
            store.contains_many(ObjectKind::Chunk, &[ha, Hash::of(b"x")]),
            vec![true, false]
        );
        assert!(
            !store.contains(ObjectKind::Bundle, &ha),
            "kinds are separate"
        );
        assert_eq!(store.count(ObjectKind::Chunk).count, 2);
        assert_eq!(
            store.delete_object(ObjectKind::Chunk, &ha).expect("delete"),
            Some(5)
        );
        assert_eq!(
            store.delete_object(ObjectKind::Chunk, &ha).expect("delete"),
            None
        );
        assert!(matches!(
            store.object(ObjectKind::Chunk, &ha),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.objects(ObjectKind::Chunk).len(), 1);
    }

    pub fn mismatch_stores_nothing(store: &dyn Store) {
        let good = b"good".as_slice();
        let r = store.put_objects(
            ObjectKind::Chunk,
            &[
                (Hash::of(good), good),
                (Hash::of(b"other"), b"bad".as_slice()),
            ],
        );
        assert!(matches!(r, Err(StoreError::HashMismatch { .. })));
        assert!(!store.contains(ObjectKind::Chunk, &Hash::of(good)));
    }

    pub fn refs_round_trip(store: &dyn Store) {
        let key = "t-1/00000000000000000002";
        assert_eq!(store.get_ref(RefSpace::Manifests, key).expect("get"), None);
        store
            .put_ref(RefSpace::Manifests, key, b"one")
            .expect("put");
        store
            .put_ref(RefSpace::Manifests, key, b"two")
            .expect("replace");
        store
            .put_ref(RefSpace::Names, "app/x:v1", b"h")
            .expect("put");
        assert_eq!(
            store.get_ref(RefSpace::Manifests, key).expect("get"),
            Some(b"two".to_vec())
        );
        assert_eq!(
            store.refs(RefSpace::Names).expect("list"),
            vec![("app/x:v1".to_owned(), 1)]
        );
        assert!(store.delete_ref(RefSpace::Manifests, key).expect("delete"));
        assert!(!store.delete_ref(RefSpace::Manifests, key).expect("delete"));
        assert!(store.refs(RefSpace::Manifests).expect("list").is_empty());
    }
}
