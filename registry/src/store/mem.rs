//! `MemStore`: everything in memory, nothing durable.
//!
//! For tests and for benchmarks that measure the protocol and transport
//! without the disk; also a reference for what a backend must do.

use std::collections::BTreeMap;

use crate::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use wmig_proto::wire::registry::ObjectCount;
use wmig_proto::Hash;

use super::{verify_all, ObjectInfo, ObjectKind, RefSpace, Store};
use crate::error::StoreError;

type Objects = HashMap<Hash, (Arc<[u8]>, SystemTime)>;

#[derive(Default)]
pub struct MemStore {
    bundles: RwLock<Objects>,
    chunks: RwLock<Objects>,
    refs: RwLock<BTreeMap<(u8, String), Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self, kind: ObjectKind) -> &RwLock<Objects> {
        match kind {
            ObjectKind::Bundle => &self.bundles,
            ObjectKind::Chunk => &self.chunks,
        }
    }
}

fn space_id(space: RefSpace) -> u8 {
    match space {
        RefSpace::Names => 0,
        RefSpace::Manifests => 1,
        RefSpace::Evicted => 2,
    }
}

// A poisoned lock means another thread panicked mid-update of plain maps that
// are valid after every statement; keep serving rather than cascade.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemStore {
    fn put_objects(
        &self,
        kind: ObjectKind,
        items: &[(Hash, &[u8])],
    ) -> Result<Vec<bool>, StoreError> {
        verify_all(items)?;
        let mut map = write(self.map(kind));
        let now = SystemTime::now();
        Ok(items
            .iter()
            .map(|(h, bytes)| {
                if map.contains_key(h) {
                    false
                } else {
                    map.insert(*h, (Arc::from(*bytes), now));
                    true
                }
            })
            .collect())
    }

    fn object(&self, kind: ObjectKind, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        read(self.map(kind))
            .get(hash)
            .map(|(b, _)| b.to_vec())
            .ok_or(StoreError::NotFound(*hash))
    }

    fn contains_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<bool> {
        let map = read(self.map(kind));
        hashes.iter().map(|h| map.contains_key(h)).collect()
    }

    fn delete_object(&self, kind: ObjectKind, hash: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(write(self.map(kind))
            .remove(hash)
            .map(|(b, _)| b.len() as u64))
    }

    fn objects(&self, kind: ObjectKind) -> Vec<ObjectInfo> {
        read(self.map(kind))
            .iter()
            .map(|(h, (b, t))| ObjectInfo {
                hash: *h,
                len: b.len() as u64,
                stored_at: *t,
            })
            .collect()
    }

    fn count(&self, kind: ObjectKind) -> ObjectCount {
        let map = read(self.map(kind));
        ObjectCount {
            count: map.len() as u64,
            bytes: map.values().map(|(b, _)| b.len() as u64).sum(),
        }
    }

    fn put_ref(&self, space: RefSpace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        write(&self.refs).insert((space_id(space), key.to_owned()), value.to_vec());
        Ok(())
    }

    fn get_ref(&self, space: RefSpace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(read(&self.refs)
            .get(&(space_id(space), key.to_owned()))
            .cloned())
    }

    fn delete_ref(&self, space: RefSpace, key: &str) -> Result<bool, StoreError> {
        Ok(write(&self.refs)
            .remove(&(space_id(space), key.to_owned()))
            .is_some())
    }

    fn refs(&self, space: RefSpace) -> Result<Vec<(String, u64)>, StoreError> {
        let id = space_id(space);
        Ok(read(&self.refs)
            .iter()
            .filter(|((s, _), _)| *s == id)
            .map(|((_, k), v)| (k.clone(), v.len() as u64))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    #[test]
    fn contract() {
        contract::objects_round_trip(&MemStore::new());
        contract::mismatch_stores_nothing(&MemStore::new());
        contract::refs_round_trip(&MemStore::new());
    }
}
