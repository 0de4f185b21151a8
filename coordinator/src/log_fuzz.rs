//! Fuzz harness of the event log reader, [`EventLog::open`]: the log is the
//! coordinator's only persistent state and is read back after crashes, disk
//! errors and operator mistakes. Whatever the file holds, `open` must not
//! panic, must keep every record before the first unreadable one, and must
//! either cut a torn tail (reporting where and how much) or name the offset
//! of the first record it cannot read. It must never silently drop a record
//! that a later valid record follows.
//!
//! Inputs: valid logs of random events; valid logs followed by a crash mid
//! append (a prefix of the next batch, optionally zero-filled from a record
//! boundary as some filesystems leave it), by arbitrary bytes, or with
//! records damaged in place; records whose payload is damaged but whose
//! checksums are recomputed (so the event decoder itself is reached); and
//! arbitrary files.

use std::path::Path;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wmig_proto::wire::control::{
    MembershipEvent, NodeInfo, Outcome, Role, TaskEvent, TaskOptions, TaskSpec,
};
use wmig_proto::{Hash, NodeId, TaskId};

use super::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        // Every case writes and opens a file (and may fsync a truncation).
        cases: 128,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,10}", Just(String::new())]
}

fn node() -> impl Strategy<Value = NodeId> {
    "[a-z0-9-]{0,8}".prop_map(NodeId)
}

fn info() -> impl Strategy<Value = NodeInfo> {
    (
        node(),
        any::<bool>(),
        any::<u32>(),
        btree_map(text(), text(), 0..2),
        text(),
        any::<u32>(),
    )
        .prop_map(|(name, worker, slots, labels, addr, pid)| NodeInfo {
            name,
            role: if worker { Role::Worker } else { Role::Monitor },
            slots,
            labels,
            addr,
            pid,
        })
}

fn spec() -> impl Strategy<Value = TaskSpec> {
    (
        any::<[u8; 32]>(),
        vec(text(), 0..3),
        btree_map(text(), text(), 0..2),
    )
        .prop_map(|(h, args, env)| TaskSpec {
            bundle: Hash(h),
            args,
            env,
        })
}

fn event() -> impl Strategy<Value = Event> {
    let id = any::<u64>().prop_map(TaskId);
    prop_oneof![
        info().prop_map(|i| Event::Node(MembershipEvent::Joined(i))),
        (node(), proptest::option::of(info()))
            .prop_map(|(node, info)| Event::Node(MembershipEvent::Recovered { node, info })),
        node().prop_map(|n| Event::Node(MembershipEvent::Offline(n))),
        node().prop_map(|n| Event::Node(MembershipEvent::Removed(n))),
        (id.clone(), spec()).prop_map(|(id, spec)| Event::Task(TaskEvent::Submitted { id, spec })),
        (id.clone(), node(), any::<u64>()).prop_map(|(id, worker, epoch)| {
            Event::Task(TaskEvent::Placed { id, worker, epoch })
        }),
        (id.clone(), any::<u64>(), any::<u64>()).prop_map(|(id, seq, fuel_used)| {
            Event::Task(TaskEvent::Checkpointed { id, seq, fuel_used })
        }),
        (
            id.clone(),
            text(),
            proptest::option::of(any::<i32>()),
            any::<u64>()
        )
            .prop_map(|(id, reason, exit_code, fuel_used)| {
                Event::Task(TaskEvent::Finished {
                    id,
                    outcome: Outcome::Failed { reason, exit_code },
                    fuel_used,
                })
            }),
        (id.clone(), spec(), text(), any::<bool>()).prop_map(|(id, spec, name, stdin)| {
            Event::Task(TaskEvent::SubmittedV3 {
                id,
                spec,
                options: TaskOptions {
                    name,
                    stdin,
                    ..TaskOptions::default()
                },
            })
        }),
        id.prop_map(|id| Event::Task(TaskEvent::Requeued { id })),
    ]
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    vec(event(), 0..6)
}

/// The log file holding `events`, and where each record starts.
fn log_bytes(events: &[Event]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = MAGIC.to_vec();
    let mut starts = Vec::new();
    for e in events {
        starts.push(bytes.len());
        bytes.extend_from_slice(&encode_record(e).expect("encodes"));
    }
    (bytes, starts)
}

/// Write `bytes` as the log, open it, and check what every open must
/// satisfy: no panic; on success the events decode from the front of the
/// file, the file is cut to exactly what was kept and a later open agrees;
/// on failure the error names an offset inside the file.
fn open(path: &Path, bytes: &[u8]) -> Result<Result<Replay, LogError>, TestCaseError> {
    std::fs::write(path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let result = EventLog::open(path).map(|(log, replay)| (log.len_bytes(), replay));
    match result {
        Ok((len, replay)) => {
            let on_disk =
                std::fs::metadata(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(on_disk.len(), len, "the file is cut to what was read");
            if let Some(t) = &replay.torn {
                prop_assert_eq!(t.offset, len);
                prop_assert_eq!(t.offset + t.dropped_bytes, bytes.len() as u64);
            } else if bytes.len() >= MAGIC.len() {
                prop_assert_eq!(len, bytes.len() as u64);
            }
            // The kept prefix re-opens identically, with nothing torn.
            let again = EventLog::open(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again.1.events, &replay.events);
            prop_assert_eq!(again.1.torn, None);
            Ok(Ok(replay))
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            match &e {
                LogError::Corrupt { offset, .. } | LogError::UnsupportedVersion { offset, .. } => {
                    prop_assert!(*offset >= MAGIC.len() as u64 && *offset < bytes.len() as u64);
                    prop_assert!(msg.contains(&format!("offset {offset}")), "{}", msg);
                }
                LogError::NotALog { .. } => prop_assert!(!bytes.starts_with(&MAGIC)),
                other => prop_assert!(false, "unexpected error {:?}", other),
            }
            Ok(Err(e))
        }
    }
}

fn offset_of(e: &LogError) -> Option<u64> {
    match e {
        LogError::Corrupt { offset, .. } | LogError::UnsupportedVersion { offset, .. } => {
            Some(*offset)
        }
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_logs_read_back(events in events()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (bytes, _) = log_bytes(&events);
        let replay = open(&path, &bytes)?.expect("a valid log opens");
        prop_assert_eq!(replay, Replay { events, torn: None });
    }

    /// A crash during the append of `batch`: only a prefix of its bytes
    /// reached the file, possibly followed by zeros up to where the batch
    /// would have ended if those zeros start at a record boundary. Every
    /// acknowledged event is kept, and so is every batch record that
    /// arrived whole; the rest is cut as torn.
    #[test]
    fn a_crash_mid_append_keeps_every_acknowledged_event(
        acked in events(),
        batch in vec(event(), 1..4),
        cut in any::<usize>(),
        zero_fill in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (mut bytes, _) = log_bytes(&acked);
        let acked_len = bytes.len();
        let records: Vec<Vec<u8>> = batch.iter().map(|e| encode_record(e).expect("encodes")).collect();
        let all: Vec<u8> = records.concat();
        let mut cut = cut % all.len();
        // Whole records of the batch that made it before the cut.
        let mut whole = 0;
        let mut boundary = 0;
        for r in &records {
            if boundary + r.len() > cut {
                break;
            }
            boundary += r.len();
            whole += 1;
        }
        if zero_fill {
            // Zeros from a record boundary: the filesystem extended the file
            // but none of the record's bytes reached the disk.
            cut = boundary;
        }
        bytes.extend_from_slice(&all[..cut]);
        if zero_fill {
            bytes.resize(acked_len + all.len(), 0);
        }
        let replay = open(&path, &bytes)?.expect("a crash tail is not corruption");
        let mut expected = acked.clone();
        expected.extend(batch[..whole].iter().cloned());
        prop_assert_eq!(&replay.events, &expected);
        let kept = (acked_len + boundary) as u64;
        let torn = (kept < bytes.len() as u64).then(|| TornTail {
            offset: kept,
            dropped_bytes: bytes.len() as u64 - kept,
        });
        prop_assert_eq!(replay.torn, torn);
    }

    /// Arbitrary bytes after valid records: the records are kept, and the
    /// tail is either cut as torn or reported at the offset where it starts.
    /// A crash that left part of a record followed by zeros (the rest of
    /// the record never reached the disk, but the file size did). `open`
    /// cannot tell this from a record damaged in place, so it may refuse the
    /// log, but only naming that record's offset: every acknowledged event
    /// before it stays readable after the operator truncates there.
    #[test]
    fn a_zero_filled_partial_record_is_torn_or_named(
        acked in events(),
        next in event(),
        cut in any::<usize>(),
        pad in 1usize..64,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (mut bytes, _) = log_bytes(&acked);
        let acked_len = bytes.len() as u64;
        let record = encode_record(&next).expect("encodes");
        bytes.extend_from_slice(&record[..1 + cut % (record.len() - 1)]);
        bytes.resize(bytes.len() + pad, 0);
        // The zeros may stand in for a record that ended in zero bytes: then
        // the record is whole after all, and only what follows it is torn.
        let whole = bytes.get(acked_len as usize..acked_len as usize + record.len()) == Some(&record[..]);
        let (expected, torn_at) = if whole {
            (acked.iter().chain([&next]).cloned().collect(), acked_len + record.len() as u64)
        } else {
            (acked.clone(), acked_len)
        };
        match open(&path, &bytes)? {
            Ok(replay) => {
                prop_assert_eq!(&replay.events, &expected);
                let torn = (torn_at < bytes.len() as u64).then_some(torn_at);
                prop_assert_eq!(replay.torn.map(|t| t.offset), torn);
            }
            Err(e) => {
                prop_assert!(!whole, "a whole record was refused: {}", e);
                prop_assert_eq!(offset_of(&e), Some(acked_len), "{}", e);
            }
        }
    }

    #[test]
    fn arbitrary_tails_after_valid_records(
        events in events(),
        tail in prop_oneof![vec(any::<u8>(), 1..64), vec(0u8..2, 1..64)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (mut bytes, _) = log_bytes(&events);
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&tail);
        match open(&path, &bytes)? {
            Ok(replay) => {
                prop_assert_eq!(&replay.events, &events);
                prop_assert_eq!(replay.torn.map(|t| t.offset), Some(good));
            }
            Err(e) => prop_assert_eq!(offset_of(&e), Some(good)),
        }
    }

    /// Damage inside record `i` of a log: an error naming record `i`'s
    /// offset, never a silent truncation (records after it are
    /// acknowledged), never a different event.
    #[test]
    fn damaged_records_are_reported_at_their_offset(
        events in vec(event(), 1..6),
        which in any::<usize>(),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (mut bytes, starts) = log_bytes(&events);
        let i = which % events.len();
        let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
        let pos = starts[i] + at % (end - starts[i]);
        bytes[pos] ^= flip;
        match open(&path, &bytes)? {
            Err(e) => prop_assert_eq!(offset_of(&e), Some(starts[i] as u64), "{}", e),
            Ok(replay) => prop_assert!(false, "damage at {} went unnoticed: {:?}", pos, replay),
        }
    }

    /// Payload damage with both checksums recomputed (a writer bug, or a
    /// deliberate edit): the event decoder itself sees the bytes. The
    /// record decodes to an event that encodes back to exactly those bytes,
    /// or the log is reported corrupt at that record.
    #[test]
    fn resealed_payloads_decode_exactly_or_are_named(
        before in events(),
        event in event(),
        edits in vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let (mut bytes, _) = log_bytes(&before);
        let start = bytes.len() as u64;
        let mut payload = postcard::to_stdvec(&event).expect("encodes");
        for (at, byte, how) in edits {
            let p = at % (payload.len() + 1);
            match how {
                0 if p < payload.len() => payload[p] = byte,
                1 => payload.insert(p, byte),
                _ if p < payload.len() => { payload.remove(p); }
                _ => {}
            }
        }
        prop_assume!(payload.len() <= MAX_RECORD);
        let len = payload.len() as u32;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&checksum(len, RECORD_VERSION, &payload));
        bytes.push(RECORD_VERSION);
        bytes.extend_from_slice(&payload);
        match open(&path, &bytes)? {
            Ok(replay) => {
                prop_assert_eq!(&replay.events[..before.len()], &before[..]);
                prop_assert_eq!(replay.events.len(), before.len() + 1);
                let decoded = &replay.events[before.len()];
                let again = postcard::to_stdvec(decoded).expect("encodes");
                let back = postcard::from_bytes::<Event>(&again).ok();
                prop_assert_eq!(back.as_ref(), Some(decoded));
                // The record is exactly one event: nothing after it.
                let rest = postcard::take_from_bytes::<Event>(&payload).map(|(_, rest)| rest.len());
                prop_assert_eq!(rest.ok(), Some(0), "the record held bytes beyond its event");
            }
            Err(e) => prop_assert_eq!(offset_of(&e), Some(start), "{}", e),
        }
    }

    /// Anything at all: never a panic, and the checks of [`open`].
    #[test]
    fn arbitrary_files(
        magic in any::<bool>(),
        bytes in vec(any::<u8>(), 0..128),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.log");
        let bytes = if magic { [&MAGIC[..], &bytes].concat() } else { bytes };
        let _ = open(&path, &bytes)?;
    }
}

// --- regressions found by the harness -------------------------------------------

/// A record whose checksums are valid but whose payload holds bytes after
/// the event used to decode, the extra bytes ignored.
#[test]
fn bytes_after_the_event_in_a_record_are_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.log");
    let event = Event::Task(TaskEvent::Requeued { id: TaskId(4) });
    let mut payload = postcard::to_stdvec(&event).expect("encodes");
    payload.extend_from_slice(&[7, 7]);
    let len = payload.len() as u32;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&encode_record(&event).expect("encodes"));
    let second = bytes.len();
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&checksum(len, RECORD_VERSION, &payload));
    bytes.push(RECORD_VERSION);
    bytes.extend_from_slice(&payload);
    std::fs::write(&path, &bytes).expect("write");
    match EventLog::open(&path) {
        Err(LogError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, second as u64);
            assert!(reason.contains("2 bytes"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
