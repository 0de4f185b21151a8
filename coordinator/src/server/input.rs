//! Task input (stdin) on the coordinator's disk, one file per task.
//!
//! A task submitted with `--stdin` reads what `wmig input` sends it, as it
//! arrives, wherever it runs: its worker fetches from here starting at the
//! byte its checkpoint says it had read, so a task that moves or recovers
//! reads on from exactly that byte. Unlike output, input cannot be produced
//! again, so it is fsynced before it is acknowledged. End of input is a
//! marker file next to the bytes.
//!
//! Appends carry the offset the sender believes is the end: a resend after a
//! lost answer overlaps what is stored and only its new tail counts; one
//! that would leave a hole is refused.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use wmig_proto::TaskId;

pub struct InputStore {
    dir: PathBuf,
    /// Stored length and end-of-input per task, loaded on first use.
    known: HashMap<TaskId, (u64, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input of {task} would start at byte {offset}, but only {stored} bytes are stored: send from byte {stored}")]
    Gap {
        task: TaskId,
        offset: u64,
        stored: u64,
    },
    #[error(
        "the input of {task} was already closed at byte {len}; nothing more can be sent to it"
    )]
    Closed { task: TaskId, len: u64 },
    #[error("input file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes of a task's input and whether more may come.
#[derive(Debug, PartialEq, Eq)]
pub struct InputRead {
    pub bytes: Vec<u8>,
    /// The input is closed and `bytes` reach its end.
    pub eof: bool,
}

impl InputStore {
    pub fn open(dir: &Path) -> Result<Self, InputError> {
        std::fs::create_dir_all(dir).map_err(|source| InputError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(InputStore {
            dir: dir.to_owned(),
            known: HashMap::new(),
        })
    }

    fn path(&self, task: TaskId) -> PathBuf {
        self.dir.join(format!("{task}.stdin"))
    }

    fn eof_path(&self, task: TaskId) -> PathBuf {
        self.dir.join(format!("{task}.stdin-end"))
    }

    /// Stored length of `task`'s input and whether it is closed.
    pub fn state(&mut self, task: TaskId) -> (u64, bool) {
        if let Some(&s) = self.known.get(&task) {
            return s;
        }
        let len = std::fs::metadata(self.path(task)).map_or(0, |m| m.len());
        let eof = self.eof_path(task).exists();
        self.known.insert(task, (len, eof));
        (len, eof)
    }

    /// Store `bytes` at `offset` (the stored end when `None`), durably, and
    /// close the input after them when `eof`. Returns the stored length.
    pub fn append(
        &mut self,
        task: TaskId,
        offset: Option<u64>,
        bytes: &[u8],
        eof: bool,
    ) -> Result<u64, InputError> {
        let (stored, closed) = self.state(task);
        let offset = offset.unwrap_or(stored);
        if offset > stored {
            return Err(InputError::Gap {
                task,
                offset,
                stored,
            });
        }
        let skip = usize::try_from(stored - offset).unwrap_or(usize::MAX);
        let new = bytes.get(skip..).unwrap_or_default();
        if closed {
            // A resend of what is stored, or of the close itself, is fine.
            if new.is_empty() {
                return Ok(stored);
            }
            return Err(InputError::Closed { task, len: stored });
        }
        let path = self.path(task);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InputError::Io { path, source }
        };
        let mut len = stored;
        if !new.is_empty() {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            // A write cut short by a crash was never acknowledged: cut it off.
            if f.metadata().map_err(io(&path))?.len() != stored {
                f.set_len(stored).map_err(io(&path))?;
            }
            f.write_all(new).map_err(io(&path))?;
            f.sync_data().map_err(io(&path))?;
            len += new.len() as u64;
            if stored == 0 {
                sync_dir(&self.dir).map_err(io(&self.dir))?;
            }
        }
        if eof {
            let end = self.eof_path(task);
            File::create(&end)
                .and_then(|f| f.sync_all())
                .map_err(io(&end))?;
            sync_dir(&self.dir).map_err(io(&self.dir))?;
        }
        self.known.insert(task, (len, eof));
        Ok(len)
    }

    /// Up to `max` stored bytes from `from`.
    pub fn read(&mut self, task: TaskId, from: u64, max: usize) -> Result<InputRead, InputError> {
        let (stored, closed) = self.state(task);
        let want = usize::try_from(stored.saturating_sub(from))
            .unwrap_or(usize::MAX)
            .min(max);
        let mut bytes = vec![0; want];
        if want > 0 {
            let path = self.path(task);
            let io = |source| InputError::Io {
                path: path.clone(),
                source,
            };
            let mut f = File::open(&path).map_err(io)?;
            f.seek(SeekFrom::Start(from)).map_err(io)?;
            f.read_exact(&mut bytes).map_err(io)?;
        }
        let eof = closed && from.saturating_add(want as u64) >= stored;
        Ok(InputRead { bytes, eof })
    }

    /// Forget a removed task's input.
    pub fn remove(&mut self, task: TaskId) {
        let _ = std::fs::remove_file(self.path(task));
        let _ = std::fs::remove_file(self.eof_path(task));
        self.known.remove(&task);
    }
}

/// Make a new file's directory entry durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_stored_once_in_order_and_closes_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let t = TaskId(4);
        let mut s = InputStore::open(dir.path()).unwrap();
        assert_eq!(
            s.read(t, 0, 10).unwrap(),
            InputRead {
                bytes: vec![],
                eof: false
            }
        );
        assert_eq!(s.append(t, None, b"hello ", false).unwrap(), 6);
        // A resend from an older offset adds only its tail.
        assert_eq!(s.append(t, Some(3), b"lo world", false).unwrap(), 11);
        assert!(matches!(
            s.append(t, Some(20), b"x", false),
            Err(InputError::Gap { stored: 11, .. })
        ));
        assert_eq!(s.read(t, 6, 3).unwrap().bytes, b"wor");
        assert_eq!(s.append(t, None, b"\n", true).unwrap(), 12);
        // The end is reported with the last bytes, and after them.
        assert_eq!(
            s.read(t, 6, 100).unwrap(),
            InputRead {
                bytes: b"world\n".to_vec(),
                eof: true
            }
        );
        assert!(!s.read(t, 6, 3).unwrap().eof);
        assert!(s.read(t, 12, 3).unwrap().eof);
        assert!(matches!(
            s.append(t, None, b"more", false),
            Err(InputError::Closed { len: 12, .. })
        ));
        // Resending the closing chunk changes nothing.
        assert_eq!(s.append(t, Some(11), b"\n", true).unwrap(), 12);

        // What was acknowledged survives a restart.
        let mut again = InputStore::open(dir.path()).unwrap();
        assert_eq!(again.state(t), (12, true));
        assert_eq!(again.read(t, 0, 100).unwrap().bytes, b"hello world\n");
        again.remove(t);
        assert_eq!(again.state(t), (0, false));
    }
}
