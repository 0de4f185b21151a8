//! Fuzz harness of the registry's manifest records: the envelope decoder
//! ([`decode_manifest`], run on every stored record that is read back) and
//! the commit path ([`Registry::put_manifest`], fed by peers). A record must
//! decode to exactly one manifest or be refused by name; a committed
//! manifest must be one a worker can restore (every chunk stored, memory
//! images well formed) and read back unchanged.

use std::sync::Arc;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use wmig_proto::checkpoint::{Counters, GlobalValue, Manifest, MemoryImage, CHUNK_SIZE};
use wmig_proto::wasi::WasiSnapshot;
use wmig_proto::{Hash, TaskId};

use super::*;
use crate::store::MemStore;
use crate::RegistryConfig;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    }
}

/// Two chunks every test registry holds.
fn chunk(i: u8) -> Vec<u8> {
    vec![i; CHUNK_SIZE]
}

fn stored() -> [Hash; 2] {
    [Hash::of(&chunk(1)), Hash::of(&chunk(2))]
}

fn registry() -> Registry {
    let r = Registry::open(Arc::new(MemStore::new()), RegistryConfig::default()).expect("open");
    let (a, b) = (chunk(1), chunk(2));
    let [ha, hb] = stored();
    r.put_chunks(&[(ha, &a), (hb, &b)], Instant::now())
        .expect("put chunks");
    r
}

fn hash() -> impl Strategy<Value = Hash> {
    prop_oneof![
        3 => (0usize..2).prop_map(|i| stored()[i]),
        1 => any::<[u8; 32]>().prop_map(Hash),
    ]
}

fn memory() -> impl Strategy<Value = MemoryImage> {
    let byte_len = prop_oneof![
        3 => (0u64..6).prop_map(|n| n * CHUNK_SIZE as u64),
        1 => any::<u64>(),
    ];
    let index = prop_oneof![4 => 0u32..6, 1 => any::<u32>()];
    (".{0,8}", byte_len, vec((index, hash()), 0..4)).prop_map(|(name, byte_len, chunks)| {
        MemoryImage {
            name,
            byte_len,
            chunks,
        }
    })
}

/// Manifests as a peer may send them: mostly plausible, some not.
fn manifest() -> impl Strategy<Value = Manifest> {
    (
        proptest::option::of(0u64..4),
        0u64..6,
        vec(memory(), 0..3),
        vec((".{0,6}", any::<i64>()), 0..3),
        any::<[u64; 2]>(),
    )
        .prop_map(|(task, seq, memories, globals, n)| Manifest {
            module: Hash::of(b"module"),
            rewriter: 4,
            instrumented: Hash::of(b"instrumented"),
            task: task.map(TaskId),
            seq,
            epoch: 1,
            memories,
            globals: globals
                .into_iter()
                .map(|(name, v)| (name, GlobalValue::I64(v)))
                .collect(),
            wasi: WasiSnapshot {
                args: vec!["prog".into()],
                ..WasiSnapshot::default()
            },
            counters: Counters {
                yields: n[0],
                fuel: n[1],
            },
            files: Vec::new(),
            end: false,
        })
}

/// One way to damage an envelope.
#[derive(Clone, Debug)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    /// A varint claiming `u32::MAX` items written over the bytes at a place.
    Huge(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), vec(any::<u8>(), 1..6)).prop_map(|(at, b)| Damage::Insert(at, b)),
        any::<usize>().prop_map(Damage::Huge),
    ]
}

fn apply(bytes: &mut Vec<u8>, ds: &[Damage]) {
    for d in ds {
        let n = bytes.len().max(1);
        match d {
            Damage::Flip(at, bit) if !bytes.is_empty() => bytes[at % n] ^= 1 << bit,
            Damage::Truncate(at) => bytes.truncate(at % n),
            Damage::Insert(at, b) => {
                let p = at % (bytes.len() + 1);
                bytes.splice(p..p, b.iter().copied());
            }
            Damage::Huge(at) => {
                let p = at % (bytes.len() + 1);
                let end = (p + 5).min(bytes.len());
                bytes.splice(p..end, [0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
            _ => {}
        }
    }
}

/// A decoded envelope is exactly one manifest; else the reason is given.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode_manifest(bytes) {
        Ok(m) => {
            let body = &bytes[MANIFEST_MAGIC.len() + 2..];
            let rest = postcard::take_from_bytes::<Manifest>(body).map(|(_, rest)| rest.len());
            prop_assert_eq!(rest.ok(), Some(0), "bytes after the manifest were ignored");
            let again = encode_manifest(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode_manifest(&again).ok(), Some(m));
        }
        Err(why) => prop_assert!(!why.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn envelopes_round_trip(m in manifest()) {
        let bytes = encode_manifest(&m).expect("encodes");
        prop_assert_eq!(decode_manifest(&bytes), Ok(m));
    }

    #[test]
    fn damaged_envelopes_decode_exactly_or_are_named(m in manifest(), ds in vec(damage(), 1..4)) {
        let mut bytes = encode_manifest(&m).expect("encodes");
        apply(&mut bytes, &ds);
        check_decode(&bytes)?;
    }

    #[test]
    fn arbitrary_envelopes(magic in any::<bool>(), body in vec(any::<u8>(), 0..96)) {
        let mut bytes = if magic {
            [&MANIFEST_MAGIC[..], &MANIFEST_VERSION.to_le_bytes()].concat()
        } else {
            Vec::new()
        };
        bytes.extend_from_slice(&body);
        check_decode(&bytes)?;
    }

    #[test]
    fn keys_parse_or_are_refused(key in "(t-)?[0-9a-z/-]{0,24}", task in any::<u64>(), seq in any::<u64>()) {
        let _ = parse_key(&key);
        prop_assert_eq!(parse_key(&super::key(TaskId(task), seq)), Some((TaskId(task), seq)));
    }

    /// What a peer commits is either refused by name, or stored such that
    /// a worker can restore from it: every referenced chunk present,
    /// memories of whole chunks with ascending in-range indices, and the
    /// very manifest read back.
    #[test]
    fn committed_manifests_are_restorable(m in manifest()) {
        let r = registry();
        match r.put_manifest(&m) {
            Ok(stored) => {
                prop_assert_eq!(Some(TaskId(stored.task.0)), m.task);
                prop_assert!(m.chunk_hashes().iter().all(|h| stored_hashes().contains(h)));
                for img in &m.memories {
                    prop_assert_eq!(img.byte_len % CHUNK_SIZE as u64, 0, "ragged memory stored");
                    let max = img.byte_len / CHUNK_SIZE as u64;
                    prop_assert!(img.chunks.iter().all(|(i, _)| u64::from(*i) < max), "chunk beyond its memory stored");
                    prop_assert!(img.chunks.windows(2).all(|w| w[0].0 < w[1].0), "chunk indices out of order stored");
                }
                let back = r.manifest(stored.task, Some(stored.seq)).expect("reads back");
                prop_assert_eq!(back, m);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

fn stored_hashes() -> Vec<Hash> {
    stored().to_vec()
}

// --- regressions found by the harness -------------------------------------------

/// An envelope with bytes after its manifest used to decode, the extra
/// bytes ignored.
#[test]
fn bytes_after_the_manifest_are_refused() {
    let m = Manifest {
        module: Hash::of(b"m"),
        rewriter: 4,
        instrumented: Hash::of(b"i"),
        task: Some(TaskId(1)),
        seq: 1,
        epoch: 1,
        memories: Vec::new(),
        globals: Vec::new(),
        wasi: WasiSnapshot::default(),
        counters: Counters::default(),
        files: Vec::new(),
        end: false,
    };
    let mut bytes = encode_manifest(&m).expect("encodes");
    bytes.extend_from_slice(&[1, 2]);
    let err = decode_manifest(&bytes).expect_err("refused");
    assert!(err.contains("2 bytes"), "{err}");
}

/// A peer could commit a manifest whose memory is not whole chunks, or
/// whose chunk indices lie beyond its memory or repeat: stored, then
/// refused (or worse, half applied) by every worker that restores it.
#[test]
fn malformed_memory_images_are_refused_at_commit() {
    let r = registry();
    let [a, b] = stored();
    let image = |byte_len: u64, chunks: Vec<(u32, Hash)>| Manifest {
        module: Hash::of(b"m"),
        rewriter: 4,
        instrumented: Hash::of(b"i"),
        task: Some(TaskId(1)),
        seq: 1,
        epoch: 1,
        memories: vec![MemoryImage {
            name: "memory".into(),
            byte_len,
            chunks,
        }],
        globals: Vec::new(),
        wasi: WasiSnapshot::default(),
        counters: Counters::default(),
        files: Vec::new(),
        end: false,
    };
    let chunk = CHUNK_SIZE as u64;
    for bad in [
        image(chunk + 1, vec![(0, a)]),
        image(chunk, vec![(1, a)]),
        image(2 * chunk, vec![(1, a), (0, b)]),
        image(2 * chunk, vec![(0, a), (0, b)]),
    ] {
        match r.put_manifest(&bad) {
            Err(RegistryError::Invalid(why)) => assert!(why.contains("memory"), "{why}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    r.put_manifest(&image(2 * chunk, vec![(0, a), (1, b)]))
        .expect("a well-formed manifest is stored");
}
