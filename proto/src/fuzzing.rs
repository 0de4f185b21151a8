//! Shared pieces of the decoder fuzz harnesses (test-only).
//!
//! The harnesses are proptest properties that run under `cargo test`: a short
//! pass per decoder, not an open-ended campaign. Random bytes alone rarely get
//! past a decoder's first tag or length check, so most properties start from a
//! *valid* encoding and damage it with [`Mutation`]s: bit flips, truncations,
//! insertions, deletions and, above all, varints claiming enormous lengths
//! or counts spliced over the original bytes, which is what probes the
//! "reject before allocating" paths.

use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{Counters, GlobalValue, Manifest, MemoryImage};
use crate::frame::{self, FrameError, MAX_FRAME_LEN};
use crate::wasi::{FdKind, FdSnapshot, WasiSnapshot};
use crate::{Hash, NodeId, TaskId};

/// Cases per property: enough to sweep every variant and mutation kind on
/// each run, few enough that the whole suite stays a short CI step.
pub const CASES: u32 = 256;

pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // Shrinking a failure found in CI is done locally; keep runs bounded.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// One way to damage an encoding.
#[derive(Clone, Debug)]
pub enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate(usize),
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: u8,
    },
    /// Overwrite the bytes at `at` with a varint of `value` (a length or count
    /// that claims far more than the input holds).
    Varint {
        at: usize,
        value: u64,
    },
}

/// Lengths and counts a hostile peer would claim.
pub fn huge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        Just(1 << 31),
        Just(1 << 40),
        Just(MAX_FRAME_LEN as u64),
        Just(MAX_FRAME_LEN as u64 + 1),
        (1u64 << 20)..(1 << 34),
        any::<u64>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1u8..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        3 => (any::<usize>(), huge()).prop_map(|(at, value)| Mutation::Varint { at, value }),
    ]
}

pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..4)
}

/// postcard's varint encoding of `v`.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Apply `ms` to `bytes`, only ever touching positions at or after `from`
/// (so a caller can keep a header intact and aim at the body).
pub fn apply(bytes: &mut Vec<u8>, from: usize, ms: &[Mutation]) {
    for m in ms {
        let span = bytes.len().saturating_sub(from);
        let pos = |at: &usize| from + if span == 0 { 0 } else { at % span };
        match m {
            Mutation::Flip { at, bit } if span > 0 => bytes[pos(at)] ^= 1 << bit,
            Mutation::Set { at, byte } if span > 0 => bytes[pos(at)] = *byte,
            Mutation::Truncate(at) if span > 0 => bytes.truncate(pos(at)),
            Mutation::Insert { at, bytes: new } => {
                let p = pos(at).min(bytes.len());
                bytes.splice(p..p, new.iter().copied());
            }
            Mutation::Remove { at, len } if span > 0 => {
                let p = pos(at);
                let end = (p + usize::from(*len)).min(bytes.len());
                bytes.drain(p..end);
            }
            Mutation::Varint { at, value } => {
                let p = pos(at).min(bytes.len());
                let v = varint(*value);
                let end = (p + v.len()).min(bytes.len());
                bytes.splice(p..end, v);
            }
            _ => {}
        }
    }
}

/// Decode `bytes` as one frame of `T`. Whatever happens must be an answer,
/// not a panic: an error that says what is wrong, or a message whose
/// encoding decodes back to the very same encoding (so a damaged frame that
/// happens to decode is at least a well-formed message).
pub fn check_frame<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match frame::decode::<T>(bytes, MAX_FRAME_LEN) {
        Ok((msg, used)) => {
            prop_assert!(used <= bytes.len());
            let again = frame::encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(again.len() <= MAX_FRAME_LEN + frame::HEADER_LEN);
            let (back, n) = frame::decode::<T>(&again, MAX_FRAME_LEN)
                .map_err(|e| TestCaseError::fail(format!("re-encoded message: {e}")))?;
            prop_assert_eq!(n, again.len());
            prop_assert_eq!(frame::encode(&back).ok(), Some(again));
        }
        Err(e) => check_frame_error(&e, bytes)?,
    }
    // The body decoder on its own (what `read_frame` calls after the prefix).
    if let Some(body) = bytes.get(4..) {
        if let Err(e) = frame::decode_body::<T>(body) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

/// A frame error must be the one the header calls for and carry its reason.
pub fn check_frame_error(e: &FrameError, bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(!e.to_string().is_empty());
    let Some(prefix) = bytes.first_chunk::<4>() else {
        prop_assert!(
            matches!(e, FrameError::Truncated { need: 4, .. }),
            "{:?}",
            e
        );
        return Ok(());
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    match e {
        FrameError::Empty => prop_assert_eq!(len, 0),
        FrameError::TooLarge { len: l, max } => {
            prop_assert_eq!(*l, len);
            prop_assert!(len > *max);
        }
        FrameError::Truncated { have, need } => {
            prop_assert_eq!(*have, bytes.len());
            prop_assert_eq!(*need, len + 4);
            prop_assert!(bytes.len() < len + 4);
        }
        FrameError::UnsupportedVersion { found, .. } => {
            prop_assert_eq!(Some(found), bytes.get(4));
            prop_assert_ne!(*found, frame::PROTOCOL_VERSION);
        }
        FrameError::Malformed(why) => prop_assert!(!why.is_empty()),
        FrameError::TrailingBytes(n) => prop_assert!(*n > 0 && *n < len),
        FrameError::Encode(_) => prop_assert!(false, "decoding reported an encode error"),
    }
    Ok(())
}

// --- value strategies shared by the harnesses --------------------------------

pub fn hash() -> BoxedStrategy<Hash> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(Hash),
        (0u8..4).prop_map(|b| Hash::of(&[b])),
    ]
    .boxed()
}

/// Every error code a peer may send.
pub fn code() -> BoxedStrategy<crate::wire::ErrorCode> {
    use crate::wire::ErrorCode::*;
    proptest::sample::select(vec![
        Malformed,
        UnsupportedVersion,
        TooLarge,
        HashMismatch,
        NotWasm,
        NotFound,
        MissingChunks,
        Invalid,
        Conflict,
        Timeout,
        Internal,
        NotLeader,
    ])
    .boxed()
}

pub fn task_id() -> BoxedStrategy<TaskId> {
    prop_oneof![0u64..16, any::<u64>()].prop_map(TaskId).boxed()
}

pub fn node_id() -> BoxedStrategy<NodeId> {
    "[a-z0-9.:-]{0,12}".prop_map(NodeId).boxed()
}

/// Short strings, including the awkward ones (empty, NUL, non-ASCII).
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![".{0,12}", Just(String::new()), Just("\0é/..".to_owned())].boxed()
}

pub fn global() -> BoxedStrategy<GlobalValue> {
    prop_oneof![
        any::<i32>().prop_map(GlobalValue::I32),
        any::<i64>().prop_map(GlobalValue::I64),
        any::<u32>().prop_map(GlobalValue::F32),
        any::<u64>().prop_map(GlobalValue::F64),
        any::<u128>().prop_map(GlobalValue::V128),
    ]
    .boxed()
}

pub fn fd_kind() -> BoxedStrategy<FdKind> {
    prop_oneof![
        text().prop_map(|guest_path| FdKind::Preopen { guest_path }),
        (any::<u32>(), text()).prop_map(|(preopen, path)| FdKind::Dir { preopen, path }),
        (
            any::<u32>(),
            text(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(preopen, path, offset, read, write)| FdKind::File {
                preopen,
                path,
                offset,
                read,
                write
            }),
        Just(FdKind::Stdin),
        Just(FdKind::Stdout),
        Just(FdKind::Stderr),
        Just(FdKind::Closed),
    ]
    .boxed()
}

pub fn fd_snapshot() -> BoxedStrategy<FdSnapshot> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u16>(),
        fd_kind(),
    )
        .prop_map(
            |(fd, rights_base, rights_inheriting, fdflags, kind)| FdSnapshot {
                fd,
                rights_base,
                rights_inheriting,
                fdflags,
                kind,
            },
        )
        .boxed()
}

pub fn wasi_snapshot() -> BoxedStrategy<WasiSnapshot> {
    (
        vec(text(), 0..3),
        vec((text(), text()), 0..3),
        any::<[u64; 4]>(),
        vec(text(), 0..3),
        vec(fd_snapshot(), 0..5),
    )
        .prop_map(|(args, env, n, preopens, fds)| WasiSnapshot {
            args,
            env,
            stdin_offset: n[0],
            stdout_offset: n[1],
            stderr_offset: n[2],
            monotonic_ns: n[3],
            preopens,
            fds,
        })
        .boxed()
}

pub fn memory_image() -> BoxedStrategy<MemoryImage> {
    let byte_len = prop_oneof![
        (0u64..8).prop_map(|n| n * crate::checkpoint::CHUNK_SIZE as u64),
        any::<u64>(),
    ];
    let index = prop_oneof![0u32..8, any::<u32>()];
    (text(), byte_len, vec((index, hash()), 0..4))
        .prop_map(|(name, byte_len, chunks)| MemoryImage {
            name,
            byte_len,
            chunks,
        })
        .boxed()
}

/// Any manifest, valid or not: what a peer may send.
pub fn manifest() -> BoxedStrategy<Manifest> {
    (
        (
            hash(),
            any::<u32>(),
            hash(),
            proptest::option::of(task_id()),
        ),
        any::<[u64; 4]>(),
        vec(memory_image(), 0..3),
        vec((text(), global()), 0..3),
        wasi_snapshot(),
    )
        .prop_map(
            |((module, rewriter, instrumented, task), n, memories, globals, wasi)| Manifest {
                module,
                rewriter,
                instrumented,
                task,
                seq: n[0],
                epoch: n[1],
                memories,
                globals,
                wasi,
                counters: Counters {
                    yields: n[2],
                    fuel: n[3],
                },
                files: Vec::new(),
                end: false,
            },
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_postcard() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(varint(v), postcard::to_stdvec(&v).expect("encodes"));
        }
    }

    #[test]
    fn mutations_stay_in_bounds() {
        let mut b = vec![1, 2, 3];
        let all = [
            Mutation::Truncate(2),
            Mutation::Remove { at: 0, len: 200 },
            Mutation::Flip { at: 1, bit: 7 },
            Mutation::Varint {
                at: 1,
                value: u64::MAX,
            },
        ];
        apply(&mut b, 0, &all);
        assert_eq!(b, varint(u64::MAX));
        // Positions before `from` are never touched; past the end, only
        // insertions (at the end) happen.
        apply(&mut b, 100, &all);
        assert_eq!(b[..10], varint(u64::MAX)[..]);
    }
}
