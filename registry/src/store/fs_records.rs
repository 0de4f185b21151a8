//! Keyed records of the file store (names, manifests): one file each under
//! `refs/<space>/`, holding `value ‖ blake3(value)` so a torn or flipped
//! record is detected on read, written like objects (temp, fsync, rename,
//! directory fsync). Keys become file names by escaping every byte outside
//! `[A-Za-z0-9_-]` as `%XX`, so no key can reach another directory.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::FsStore;
use crate::error::StoreError;
use crate::store::RefSpace;

impl FsStore {
    pub(super) fn record_path(&self, space: RefSpace, key: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(space.dir_name())
            .join(escape(key))
    }

    pub(super) fn write_record(
        &self,
        space: RefSpace,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.record_path(space, key);
        self.write_file(&path, &crate::store::seal(value))?;
        self.sync_dir(path.parent().unwrap_or(&self.root))
    }

    pub(super) fn read_record(
        &self,
        space: RefSpace,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.record_path(space, key);
        match fs::read(&path) {
            Ok(body) => crate::store::unseal(key, body).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(path)(e)),
        }
    }

    pub(super) fn delete_record(&self, space: RefSpace, key: &str) -> Result<bool, StoreError> {
        let path = self.record_path(space, key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(path)(e)),
        }
    }

    pub(super) fn records(&self, space: RefSpace) -> Result<Vec<(String, u64)>, StoreError> {
        let dir = self.root.join("refs").join(space.dir_name());
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let Some(key) = unescape(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(StoreError::io(entry.path()))?
                .len();
            out.push((key, len.saturating_sub(32)));
        }
        out.sort();
        Ok(out)
    }
}

/// A record key as a file name: bytes outside `[A-Za-z0-9_-]` (and a `.`
/// that would start the name) become `%XX`, so no key can name another
/// directory or a hidden file.
pub(super) fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, b) in key.bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if safe {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn unescape(name: &str) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}
