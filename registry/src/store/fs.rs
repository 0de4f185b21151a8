//! `FsStore`: the embedded default backend, one file per object.
//!
//! ```text
//! DATA/FORMAT                   "wmig-registry-store/1"
//! DATA/tmp/                     writes in progress; emptied on open
//! DATA/bundles/<blake3 hex>     a wasm module
//! DATA/chunks/<blake3 hex>      a 64 KiB checkpoint chunk
//! DATA/refs/names/<key>         name:tag  -> hash      (value ‖ blake3(value))
//! DATA/refs/manifests/<key>     t-N/seq   -> manifest  (value ‖ blake3(value))
//! DATA/refs/evicted/<key>       t-N/seq   -> nothing   (an evicted checkpoint)
//! ```
//!
//! Every write goes to `tmp/`, is fdatasynced, then renamed into place, and the
//! target directory is fsynced once per batch: a crash (or `kill -9`) leaves
//! either the whole object under its name or nothing but a temp file, which
//! the next open deletes. Objects are read back whole and hashed before they
//! are returned, so a bit flip on disk is reported, never served.
//!
//! One fsync per object is what limits write throughput on ordinary disks
//! (a few ms each on this class of VM). A batch of objects is therefore
//! written to temp files by several threads, made durable by **one**
//! `syncfs(2)` of the store's filesystem (Linux; elsewhere each file is
//! fdatasynced, and the journal groups those flushes), and only then
//! renamed into place: a crash before the flush leaves temp files, after it
//! whole objects. `syncfs` also flushes whatever else is dirty on that
//! filesystem, which is one reason to give the store a disk of its own.
//! Directories are flat (ext4 and xfs index large directories), which keeps
//! it to one directory fsync per batch.

use crate::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::SystemTime;

use wmig_proto::wire::registry::ObjectCount;
use wmig_proto::Hash;

use super::{verify_all, ObjectInfo, ObjectKind, RefSpace, Store};
use crate::error::StoreError;

/// The on-disk format this build reads and writes.
pub const STORE_FORMAT: &str = "wmig-registry-store/1";

#[derive(Clone, Copy)]
struct Entry {
    len: u64,
    stored_at: SystemTime,
}

type Index = RwLock<HashMap<Hash, Entry>>;

pub struct FsStore {
    root: PathBuf,
    bundles: Index,
    chunks: Index,
    /// Threads that write (and fsync) one batch in parallel.
    write_threads: usize,
    /// Makes temp file names unique within this process.
    seq: AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl FsStore {
    /// Open (or create) a store under `root`: check its format, delete
    /// leftover temp files, and index every object.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
        let format_path = root.join("FORMAT");
        match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == STORE_FORMAT => {}
            Ok(found) => {
                return Err(StoreError::UnknownFormat {
                    path: root,
                    found: found.trim().chars().take(64).collect(),
                    supported: STORE_FORMAT,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let foreign = fs::read_dir(&root)
                    .map_err(StoreError::io(&root))?
                    .filter_map(Result::ok)
                    .any(|e| !is_store_entry(&e.file_name().to_string_lossy()));
                if foreign {
                    return Err(StoreError::UnknownFormat {
                        path: root,
                        found: "no FORMAT file, and other files present".into(),
                        supported: STORE_FORMAT,
                    });
                }
            }
            Err(e) => return Err(StoreError::io(&format_path)(e)),
        }
        for dir in [
            "tmp",
            "bundles",
            "chunks",
            "refs/names",
            "refs/manifests",
            "refs/evicted",
        ] {
            fs::create_dir_all(root.join(dir)).map_err(StoreError::io(root.join(dir)))?;
        }
        let store = FsStore {
            bundles: RwLock::new(HashMap::default()),
            chunks: RwLock::new(HashMap::default()),
            write_threads: 16,
            seq: AtomicU64::new(0),
            root,
        };
        if !format_path.exists() {
            store.write_file(&format_path, format!("{STORE_FORMAT}\n").as_bytes())?;
        }
        store.clear_tmp()?;
        for kind in [ObjectKind::Bundle, ObjectKind::Chunk] {
            let index = store.scan(kind)?;
            *write(store.index(kind)) = index;
        }
        Ok(store)
    }

    /// How many threads write one batch (default 16).
    pub fn with_write_threads(mut self, n: usize) -> Self {
        self.write_threads = n.max(1);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index(&self, kind: ObjectKind) -> &Index {
        match kind {
            ObjectKind::Bundle => &self.bundles,
            ObjectKind::Chunk => &self.chunks,
        }
    }

    fn object_path(&self, kind: ObjectKind, hash: &Hash) -> PathBuf {
        self.root.join(kind.dir_name()).join(hash.to_hex())
    }

    fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            let entry = entry.map_err(StoreError::io(&tmp))?;
            let path = entry.path();
            fs::remove_file(&path).map_err(StoreError::io(&path))?;
        }
        Ok(())
    }

    fn scan(&self, kind: ObjectKind) -> Result<HashMap<Hash, Entry>, StoreError> {
        let dir = self.root.join(kind.dir_name());
        let mut index = HashMap::default();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let Ok(hash) = entry.file_name().to_string_lossy().parse::<Hash>() else {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not named by a hash");
                continue;
            };
            let meta = entry.metadata().map_err(StoreError::io(entry.path()))?;
            let stored_at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            index.insert(
                hash,
                Entry {
                    len: meta.len(),
                    stored_at,
                },
            );
        }
        Ok(index)
    }

    /// Write `bytes` to a temp file, fdatasync, rename to `path`. The caller
    /// fsyncs `path`'s directory.
    pub(super) fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.write_tmp(bytes, true)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(path)(e)
        })
    }

    /// Write `bytes` to a new temp file (fdatasynced with `sync`).
    fn write_tmp(&self, bytes: &[u8], sync: bool) -> Result<PathBuf, StoreError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{n}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(StoreError::io(&tmp))?;
            f.write_all(bytes).map_err(StoreError::io(&tmp))?;
            if sync {
                f.sync_data().map_err(StoreError::io(&tmp))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Flush every dirty page of the store's filesystem (one call per batch).
    #[cfg(target_os = "linux")]
    fn sync_filesystem(&self) -> Result<(), StoreError> {
        use std::os::fd::AsRawFd;
        let dir = self.root.join("tmp");
        let f = File::open(&dir).map_err(StoreError::io(&dir))?;
        // SAFETY: syncfs(2) on a descriptor we own; it touches no memory.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(StoreError::io(dir)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn sync_filesystem(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub(super) fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io(dir))
    }
}

fn is_store_entry(name: &str) -> bool {
    matches!(name, "FORMAT" | "tmp" | "bundles" | "chunks" | "refs")
}

/// Whether a batch is made durable by one `syncfs` rather than a sync
/// per file.
const BATCH_SYNC: bool = cfg!(target_os = "linux");

impl Store for FsStore {
    fn put_objects(
        &self,
        kind: ObjectKind,
        items: &[(Hash, &[u8])],
    ) -> Result<Vec<bool>, StoreError> {
        verify_all(items)?;
        let todo: Vec<usize> = {
            let index = read(self.index(kind));
            super::new_items(items, |h| index.contains_key(h))
        };
        // Phase 1: temp files, synced here only where one syncfs cannot do
        // it for the whole batch.
        let write_one = |i: usize| -> Result<PathBuf, StoreError> {
            let (_, bytes) = items[i];
            self.write_tmp(bytes, !BATCH_SYNC)
        };
        let threads = self.write_threads.min(todo.len());
        let results: Vec<(usize, Result<PathBuf, StoreError>)> = if threads <= 1 {
            todo.iter().map(|&i| (i, write_one(i))).collect()
        } else {
            let per = todo.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = todo
                    .chunks(per)
                    .map(|part| {
                        s.spawn(|| part.iter().map(|&i| (i, write_one(i))).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        // A writer thread that panicked returns no results for its items.
        let all_reported = results.len() == todo.len();
        let mut fresh = vec![false; items.len()];
        let mut first_err = None;
        let now = SystemTime::now();
        let mut staged = Vec::new();
        for (i, r) in results {
            match r {
                Ok(tmp) => staged.push((i, tmp)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Phase 2: one flush for the batch, then the names.
        if BATCH_SYNC && !staged.is_empty() {
            if let Err(e) = self.sync_filesystem() {
                for (_, tmp) in &staged {
                    let _ = fs::remove_file(tmp);
                }
                return Err(e);
            }
        }
        let mut written = Vec::new();
        for (i, tmp) in staged {
            let path = self.object_path(kind, &items[i].0);
            match fs::rename(&tmp, &path) {
                Ok(()) => {
                    fresh[i] = true;
                    written.push(i);
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    first_err.get_or_insert(StoreError::io(path)(e));
                }
            }
        }
        if !all_reported && first_err.is_none() {
            first_err = Some(StoreError::Io {
                path: self.root.join("tmp"),
                source: std::io::Error::other("a writer thread failed"),
            });
        }
        if !written.is_empty() {
            self.sync_dir(&self.root.join(kind.dir_name()))?;
            let mut index = write(self.index(kind));
            for i in written {
                let (hash, bytes) = items[i];
                index.insert(
                    hash,
                    Entry {
                        len: bytes.len() as u64,
                        stored_at: now,
                    },
                );
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(fresh),
        }
    }

    fn object(&self, kind: ObjectKind, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(kind, hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                write(self.index(kind)).remove(hash);
                return Err(StoreError::NotFound(*hash));
            }
            Err(e) => return Err(StoreError::io(path)(e)),
        };
        let actual = Hash::of(&bytes);
        if actual != *hash {
            // Forget it, so that `can_store` grants it again and the next
            // upload of these bytes rewrites it; the bad file is kept aside
            // for inspection rather than served or silently overwritten.
            write(self.index(kind)).remove(hash);
            let aside = path.with_extension("corrupt");
            if let Err(e) = fs::rename(&path, &aside) {
                tracing::warn!(path = %path.display(), error = %e, "could not move a corrupt object aside");
            }
            tracing::warn!(%hash, %actual, kind = ?kind, "stored object is corrupt; dropped from the index until it is uploaded again");
            return Err(StoreError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    fn contains_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<bool> {
        let index = read(self.index(kind));
        hashes.iter().map(|h| index.contains_key(h)).collect()
    }

    fn delete_object(&self, kind: ObjectKind, hash: &Hash) -> Result<Option<u64>, StoreError> {
        let Some(entry) = write(self.index(kind)).remove(hash) else {
            return Ok(None);
        };
        let path = self.object_path(kind, hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(entry.len)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => {
                write(self.index(kind)).insert(*hash, entry);
                Err(StoreError::io(path)(e))
            }
        }
    }

    fn objects(&self, kind: ObjectKind) -> Vec<ObjectInfo> {
        read(self.index(kind))
            .iter()
            .map(|(h, e)| ObjectInfo {
                hash: *h,
                len: e.len,
                stored_at: e.stored_at,
            })
            .collect()
    }

    fn count(&self, kind: ObjectKind) -> ObjectCount {
        let index = read(self.index(kind));
        ObjectCount {
            count: index.len() as u64,
            bytes: index.values().map(|e| e.len).sum(),
        }
    }

    fn put_ref(&self, space: RefSpace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write_record(space, key, value)
    }

    fn get_ref(&self, space: RefSpace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_record(space, key)
    }

    fn delete_ref(&self, space: RefSpace, key: &str) -> Result<bool, StoreError> {
        self.delete_record(space, key)
    }

    fn refs(&self, space: RefSpace) -> Result<Vec<(String, u64)>, StoreError> {
        self.records(space)
    }
}

#[path = "fs_records.rs"]
mod records;

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fs_fuzz.rs"]
mod fuzz;
