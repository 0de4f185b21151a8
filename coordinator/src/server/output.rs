//! Task output on the coordinator's disk, one file per task and stream.
//!
//! Output arrives as [`OutputChunk`]s tagged with their byte offset. A chunk
//! that overlaps what is stored (a resend after a reconnect, or output a
//! restored task replays after its checkpoint) only contributes its new tail,
//! so every byte is stored exactly once; a chunk that starts past the end
//! would leave a hole and is refused (its sender resends from the end).
//! Output is acknowledged only once durable: appends mark their file dirty
//! and the server's output syncer fsyncs every dirty file in one pass
//! ([`OutputStore::take_dirty`]) before the reports that wrote them are
//! answered, so a worker never drops bytes the coordinator could still lose
//! (a group commit, like the event log's).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use wmig_proto::TaskId;

use crate::wire::{OutputChunk, Stream};

pub struct OutputStore {
    dir: PathBuf,
    /// Stored length per (task, stream), loaded from file sizes on first use.
    lens: HashMap<(TaskId, Stream), u64>,
    total: u64,
    /// Files written since the last [`OutputStore::take_dirty`].
    dirty: std::collections::HashSet<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output of {task} {stream} starts at byte {offset}, but only {stored} bytes are stored: resend from byte {stored}")]
    Gap {
        task: TaskId,
        stream: &'static str,
        offset: u64,
        stored: u64,
    },
    #[error("output file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OutputStore {
    pub fn open(dir: &Path) -> Result<Self, OutputError> {
        std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(OutputStore {
            dir: dir.to_owned(),
            lens: HashMap::new(),
            total: 0,
            dirty: std::collections::HashSet::new(),
        })
    }

    fn path(&self, task: TaskId, stream: Stream) -> PathBuf {
        self.dir.join(format!("{task}.{}", stream.name()))
    }

    /// Bytes stored for `task`'s `stream`.
    pub fn len(&mut self, task: TaskId, stream: Stream) -> u64 {
        if let Some(&n) = self.lens.get(&(task, stream)) {
            return n;
        }
        let n = std::fs::metadata(self.path(task, stream)).map_or(0, |m| m.len());
        self.lens.insert((task, stream), n);
        n
    }

    /// Bytes accepted since this store was opened (all tasks).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Store the part of `chunk` past the stored end. Returns the chunk of
    /// new bytes, if any.
    pub fn append(&mut self, chunk: &OutputChunk) -> Result<Option<OutputChunk>, OutputError> {
        let stored = self.len(chunk.task, chunk.stream);
        if chunk.offset > stored {
            return Err(OutputError::Gap {
                task: chunk.task,
                stream: chunk.stream.name(),
                offset: chunk.offset,
                stored,
            });
        }
        let skip = usize::try_from(stored - chunk.offset).unwrap_or(usize::MAX);
        let Some(new) = chunk.bytes.get(skip..).filter(|b| !b.is_empty()) else {
            return Ok(None);
        };
        let path = self.path(chunk.task, chunk.stream);
        let io = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // A previous write may have failed halfway; cut back to what we count.
        if f.metadata().map_err(io)?.len() != stored {
            f.set_len(stored).map_err(io)?;
        }
        f.write_all(new).map_err(io)?;
        if stored == 0 {
            // A new file: its directory entry must be durable too.
            self.dirty.insert(self.dir.clone());
        }
        self.dirty.insert(path.clone());
        self.lens
            .insert((chunk.task, chunk.stream), stored + new.len() as u64);
        self.total += new.len() as u64;
        Ok(Some(OutputChunk {
            task: chunk.task,
            stream: chunk.stream,
            offset: stored,
            bytes: new.to_vec(),
        }))
    }

    /// The files (and directory) written since the last call, to fsync.
    pub fn take_dirty(&mut self) -> Vec<PathBuf> {
        self.dirty.drain().collect()
    }

    /// Sync these again next time (the last sync of them failed).
    pub fn mark_dirty(&mut self, paths: Vec<PathBuf>) {
        self.dirty.extend(paths);
    }

    /// Up to `max` stored bytes of `stream` from `from`.
    pub fn read(
        &mut self,
        task: TaskId,
        stream: Stream,
        from: u64,
        max: usize,
    ) -> Result<Vec<u8>, OutputError> {
        let stored = self.len(task, stream);
        if from >= stored {
            return Ok(Vec::new());
        }
        let want = usize::try_from(stored - from)
            .unwrap_or(usize::MAX)
            .min(max);
        let path = self.path(task, stream);
        let io = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let mut f = File::open(&path).map_err(io)?;
        f.seek(SeekFrom::Start(from)).map_err(io)?;
        let mut buf = vec![0; want];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// Make `paths` (files or directories) durable.
pub fn sync_paths(paths: &[PathBuf]) -> Result<(), OutputError> {
    for path in paths {
        File::open(path)
            .and_then(|f| f.sync_data())
            .map_err(|source| OutputError::Io {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, bytes: &[u8]) -> OutputChunk {
        OutputChunk {
            task: TaskId(1),
            stream: Stream::Stdout,
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn overlapping_resends_store_each_byte_once_and_gaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = OutputStore::open(dir.path()).unwrap();
        assert_eq!(s.append(&chunk(0, b"hello ")).unwrap().unwrap().offset, 0);
        // A replay from an older offset adds only its tail.
        let tail = s.append(&chunk(3, b"lo world")).unwrap().unwrap();
        assert_eq!((tail.offset, tail.bytes.as_slice()), (6, &b"world"[..]));
        assert!(s.append(&chunk(0, b"hello")).unwrap().is_none());
        assert!(matches!(
            s.append(&chunk(20, b"x")),
            Err(OutputError::Gap { stored: 11, .. })
        ));
        assert_eq!(
            s.read(TaskId(1), Stream::Stdout, 0, 100).unwrap(),
            b"hello world"
        );
        assert_eq!(s.read(TaskId(1), Stream::Stdout, 6, 3).unwrap(), b"wor");
        // A new store over the same directory sees the same bytes.
        let mut again = OutputStore::open(dir.path()).unwrap();
        assert_eq!(again.len(TaskId(1), Stream::Stdout), 11);
        assert_eq!(again.len(TaskId(1), Stream::Stderr), 0);
    }
}
