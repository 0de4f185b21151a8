//! The durable event log: the coordinator's only persistent state.
//!
//! File layout: an 8-byte header `WMIGLOG\x01`, then records
//!
//! ```text
//! len: u32 LE | checksum: [u8; 8] | version: u8 | postcard(Event) (len bytes)
//! ```
//!
//! The checksum is two blake3 prefixes: 4 bytes over `len` and 4 bytes over
//! `version ‖ payload`. Checking the length on its own is what lets [`open`]
//! tell a *torn* final record (the coordinator crashed mid-append: the length
//! is intact but the bytes stop early) from a *corrupt* record in the middle
//! (a flipped length would otherwise look like a record running past the end
//! of the file, and we would silently drop everything after it).
//!
//! * A torn tail is reported in [`Replay::torn`] and truncated away: it was
//!   never acknowledged, because [`EventLog::append`] returns only after fsync.
//!   A tail of zero bytes (some filesystems extend the file before the data
//!   reaches the disk) is treated the same way.
//! * Anything else that does not verify is a [`LogError::Corrupt`] naming the
//!   byte offset: the operator decides, the coordinator never guesses.
//!
//! [`open`]: EventLog::open

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::state::Event;

const MAGIC: [u8; 8] = *b"WMIGLOG\x01";
/// Record format version written today; others are refused on open.
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = 4 + 8 + 1;
/// Events are small (the largest is a submission's args and env); anything
/// bigger is a bug on append and corruption on read.
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("could not {action} event log {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a wmig event log (bad header); check the --state path")]
    NotALog { path: PathBuf },
    #[error("event log {path} is corrupt at byte offset {offset}: {reason}; restore it from a backup, or truncate it to {offset} bytes to keep only the events before that point")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("event log {path} has a record of format version {version} at byte offset {offset}; this wmig reads version {RECORD_VERSION}: upgrade wmig")]
    UnsupportedVersion {
        path: PathBuf,
        offset: u64,
        version: u8,
    },
    #[error("event of {len} bytes exceeds the {MAX_RECORD}-byte record limit; submit fewer or shorter args/env")]
    TooLarge { len: usize },
    #[error("event log {path} refused an append: an earlier append failed and could not be rolled back; restart the coordinator so it replays the log")]
    Poisoned { path: PathBuf },
    #[error("could not encode event: {0}")]
    Encode(#[from] postcard::Error),
}

/// A torn final record that `open` cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn record started (the file's new length).
    pub offset: u64,
    /// How many bytes were dropped.
    pub dropped_bytes: u64,
}

/// What `open` read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    pub events: Vec<Event>,
    pub torn: Option<TornTail>,
}

/// An open, append-only event log.
#[derive(Debug)]
pub struct EventLog {
    file: File,
    path: PathBuf,
    /// Bytes known to be valid and durable.
    len: u64,
    /// Set when a failed append could not be rolled back: the file may end in
    /// half a record, and appending after it would corrupt the middle.
    poisoned: bool,
}

fn checksum(len: u32, version: u8, payload: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&blake3::hash(&len.to_le_bytes()).as_bytes()[..4]);
    let mut body = blake3::Hasher::new();
    body.update(&[version]);
    body.update(payload);
    out[4..].copy_from_slice(&body.finalize().as_bytes()[..4]);
    out
}

/// Encode one record (exposed for tests and tools that build logs).
pub fn encode_record(event: &Event) -> Result<Vec<u8>, LogError> {
    let payload = postcard::to_stdvec(event)?;
    if payload.len() > MAX_RECORD {
        return Err(LogError::TooLarge { len: payload.len() });
    }
    let len = payload.len() as u32;
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&checksum(len, RECORD_VERSION, &payload));
    rec.push(RECORD_VERSION);
    rec.extend_from_slice(&payload);
    Ok(rec)
}

// A transient parse result, never stored in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Record(Event, usize),
    Torn,
}

/// Parse the record at the start of `buf` (which runs to end of file).
fn parse(path: &Path, offset: u64, buf: &[u8]) -> Result<Parsed, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let (Some(len_bytes), Some(sum), Some(&version)) = (buf.get(..4), buf.get(4..12), buf.get(12))
    else {
        return Ok(Parsed::Torn);
    };
    let mut len_arr = [0u8; 4];
    len_arr.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(len_arr);
    if sum[..4] != blake3::hash(&len_arr).as_bytes()[..4] {
        if buf.iter().all(|b| *b == 0) {
            return Ok(Parsed::Torn);
        }
        return Err(corrupt(format!(
            "record length field {len} fails its checksum"
        )));
    }
    let len = len as usize;
    if len > MAX_RECORD {
        return Err(corrupt(format!("record length {len} exceeds {MAX_RECORD}")));
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Ok(Parsed::Torn);
    };
    if sum[4..] != checksum(len as u32, version, payload)[4..] {
        let at_end = buf.len() == HEADER + len;
        if at_end && payload.iter().all(|b| *b == 0) {
            return Ok(Parsed::Torn);
        }
        return Err(corrupt(format!("checksum mismatch in a {len}-byte record")));
    }
    if version != RECORD_VERSION {
        return Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            offset,
            version,
        });
    }
    let (event, rest) = postcard::take_from_bytes(payload).map_err(|e| {
        corrupt(format!(
            "checksum is valid but the event does not decode: {e}"
        ))
    })?;
    // A record holds exactly one event: bytes after it mean the writer and
    // this reader disagree about the format, not a shorter event.
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "checksum is valid but {} bytes follow the event in the record",
            rest.len()
        )));
    }
    Ok(Parsed::Record(event, HEADER + len))
}

/// Decode one whole record stored on its own (one etcd key per event):
/// `source` names where it came from in errors; a torn or longer record is
/// corruption there, since each was written whole.
pub fn decode_record(source: &Path, bytes: &[u8]) -> Result<Event, LogError> {
    match parse(source, 0, bytes)? {
        Parsed::Record(event, len) if len == bytes.len() => Ok(event),
        Parsed::Record(_, len) => Err(LogError::Corrupt {
            path: source.to_path_buf(),
            offset: 0,
            reason: format!("{} bytes follow the record", bytes.len() - len),
        }),
        Parsed::Torn => Err(LogError::Corrupt {
            path: source.to_path_buf(),
            offset: 0,
            reason: format!("the record is cut short at {} bytes", bytes.len()),
        }),
    }
}

impl EventLog {
    /// Open (creating if missing) the log at `path` and replay every record.
    pub fn open(path: impl AsRef<Path>) -> Result<(EventLog, Replay), LogError> {
        let path = path.as_ref().to_path_buf();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| LogError::Io {
                path,
                action,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("open"))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io("read"))?;

        let mut log = EventLog {
            file,
            path: path.clone(),
            len: 0,
            poisoned: false,
        };
        if buf.len() < MAGIC.len() && MAGIC.starts_with(&buf) {
            // New file, or a crash while it was being created.
            log.truncate(0)?;
            log.file.write_all(&MAGIC).map_err(io("write header of"))?;
            log.file.sync_all().map_err(io("sync"))?;
            sync_parent(&path);
            log.len = MAGIC.len() as u64;
            return Ok((
                log,
                Replay {
                    events: Vec::new(),
                    torn: None,
                },
            ));
        }
        if buf.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(LogError::NotALog { path });
        }

        let mut events = Vec::new();
        let mut pos = MAGIC.len();
        let mut torn = None;
        while let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) {
            match parse(&path, pos as u64, rest)? {
                Parsed::Record(event, used) => {
                    events.push(event);
                    pos += used;
                }
                Parsed::Torn => {
                    torn = Some(TornTail {
                        offset: pos as u64,
                        dropped_bytes: rest.len() as u64,
                    });
                    break;
                }
            }
        }
        if let Some(t) = &torn {
            tracing::warn!(
                path = %path.display(),
                offset = t.offset,
                dropped_bytes = t.dropped_bytes,
                "event log ends in a torn record (crash during append); truncating it"
            );
            log.truncate(t.offset)?;
        }
        log.len = pos as u64;
        Ok((log, Replay { events, torn }))
    }

    fn truncate(&mut self, len: u64) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            action: "truncate",
            source,
        };
        self.file.set_len(len).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.len = len;
        Ok(())
    }

    /// Append `events` as one write and one fsync. When this returns `Ok`
    /// they are durable. On error the file is cut back to its previous
    /// length so a later append does not land after half a record.
    pub fn append(&mut self, events: &[Event]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.clone(),
            });
        }
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for event in events {
            buf.extend_from_slice(&encode_record(event)?);
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // If even the rollback fails, `open` will see a torn tail; until
            // then nothing may be appended after the half-written bytes.
            self.poisoned = self.file.set_len(self.len).is_err();
            return Err(LogError::Io {
                path: self.path.clone(),
                action: "append to",
                source,
            });
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Valid bytes in the file, header included.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Make a newly created file's directory entry durable (best effort: not
/// every platform lets you fsync a directory).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
#[path = "log_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wmig_proto::{Hash, NodeId, TaskId};

    use super::*;
    use crate::membership::{MembershipEvent, NodeInfo, Role};
    use crate::tasks::{Outcome, TaskEvent, TaskSpec};

    fn sample(n: u64) -> Event {
        match n % 4 {
            0 => Event::Node(MembershipEvent::Joined(NodeInfo {
                name: NodeId(format!("w{n}")),
                role: Role::Worker,
                slots: 2,
                labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
                addr: "127.0.0.1:7000".into(),
                pid: 42,
            })),
            1 => Event::Task(TaskEvent::Submitted {
                id: TaskId(n),
                spec: TaskSpec {
                    bundle: Hash::of(&n.to_le_bytes()),
                    args: vec!["--n".into(), n.to_string()],
                    env: BTreeMap::new(),
                },
            }),
            2 => Event::Task(TaskEvent::Finished {
                id: TaskId(n),
                outcome: Outcome::Failed {
                    reason: "trap".into(),
                    exit_code: Some(1),
                },
                fuel_used: n,
            }),
            _ => Event::Node(MembershipEvent::Offline(NodeId(format!("w{n}")))),
        }
    }

    fn write_log(path: &Path, n: u64) -> Vec<Event> {
        let (mut log, replay) = EventLog::open(path).unwrap();
        assert!(replay.events.is_empty());
        let events: Vec<Event> = (0..n).map(sample).collect();
        // Mix single and batched appends.
        log.append(&events[..1]).unwrap();
        log.append(&events[1..]).unwrap();
        events
    }

    #[test]
    fn round_trip_and_continue_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let events = write_log(&path, 10);
        let (mut log, replay) = EventLog::open(&path).unwrap();
        assert_eq!(
            replay,
            Replay {
                events: events.clone(),
                torn: None
            }
        );
        log.append(&[sample(99)]).unwrap();
        log.append(&[]).unwrap();
        assert_eq!(log.len_bytes(), std::fs::metadata(&path).unwrap().len());
        let (_, replay) = EventLog::open(&path).unwrap();
        assert_eq!(replay.events.len(), 11);
        assert_eq!(replay.events.last(), Some(&sample(99)));
    }

    /// A crash can cut the last append anywhere: every prefix of the last
    /// record opens with all earlier records, and the log is usable after.
    #[test]
    fn torn_final_record_at_every_offset_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let events = write_log(&path, 6);
        let full = std::fs::read(&path).unwrap();
        let last_len = encode_record(&events[5]).unwrap().len();
        let last_start = full.len() - last_len;
        for cut in last_start..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut log, replay) = EventLog::open(&path).unwrap();
            assert_eq!(replay.events, events[..5], "cut at {cut}");
            let torn = (cut > last_start).then(|| TornTail {
                offset: last_start as u64,
                dropped_bytes: (cut - last_start) as u64,
            });
            assert_eq!(replay.torn, torn, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
            log.append(&[sample(7)]).unwrap();
            let (_, replay) = EventLog::open(&path).unwrap();
            assert_eq!(replay.events.len(), 6);
            assert_eq!(replay.torn, None);
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let events = write_log(&path, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[0u8; 40]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, replay) = EventLog::open(&path).unwrap();
        assert_eq!(replay.events, events);
        assert_eq!(replay.torn.map(|t| t.offset), Some(good as u64));
    }

    /// Flip every byte of a record in the middle, one at a time: each flip is
    /// an error naming that record's offset, never a silent truncation.
    #[test]
    fn corrupt_middle_record_is_an_error_naming_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let events = write_log(&path, 8);
        let full = std::fs::read(&path).unwrap();
        let start = MAGIC.len()
            + events[..3]
                .iter()
                .map(|e| encode_record(e).unwrap().len())
                .sum::<usize>();
        let len = encode_record(&events[3]).unwrap().len();
        for i in start..start + len {
            let mut bytes = full.clone();
            bytes[i] ^= 0x55;
            std::fs::write(&path, &bytes).unwrap();
            match EventLog::open(&path) {
                Err(LogError::Corrupt { offset, .. })
                | Err(LogError::UnsupportedVersion { offset, .. }) => {
                    assert_eq!(offset, start as u64, "flip at {i}")
                }
                other => panic!("flip at {i}: expected corruption error, got {other:?}"),
            }
        }
        let mut bytes = full.clone();
        bytes[start + len - 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = EventLog::open(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("corrupt at byte offset {start}")),
            "{err}"
        );
        assert!(err.contains("truncate"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let payload = postcard::to_stdvec(&sample(1)).unwrap();
        let len = payload.len() as u32;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&checksum(len, 9, &payload));
        bytes.push(9);
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, &bytes).unwrap();
        let err = EventLog::open(&path).unwrap_err();
        assert!(matches!(
            err,
            LogError::UnsupportedVersion {
                version: 9,
                offset: 8,
                ..
            }
        ));
        assert!(err.to_string().contains("upgrade wmig"), "{err}");
    }

    #[test]
    fn headers_new_torn_and_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        // A crash while creating the file leaves a prefix of the header.
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        let (_, replay) = EventLog::open(&path).unwrap();
        assert!(replay.events.is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), MAGIC);
        std::fs::write(&path, b"{\"not\": \"a log\"}").unwrap();
        let err = EventLog::open(&path).unwrap_err();
        assert!(matches!(err, LogError::NotALog { .. }), "{err}");
        let err = EventLog::open(dir.path().join("missing/dir/log")).unwrap_err();
        assert!(
            err.to_string().starts_with("could not open event log"),
            "{err}"
        );
    }

    #[test]
    fn oversized_event_is_refused_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path().join("l")).unwrap();
        let huge = Event::Task(TaskEvent::Submitted {
            id: TaskId(1),
            spec: TaskSpec {
                bundle: Hash([0; 32]),
                args: vec!["x".repeat(MAX_RECORD)],
                env: BTreeMap::new(),
            },
        });
        assert!(matches!(
            log.append(&[huge]),
            Err(LogError::TooLarge { .. })
        ));
        assert_eq!(log.len_bytes(), MAGIC.len() as u64);
    }
}
