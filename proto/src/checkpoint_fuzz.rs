//! Fuzz harness of the checkpoint file decoder, [`CheckpointFile::decode`]:
//! checkpoints are read back from disk (`wmig resume FILE`) where they may
//! be truncated, damaged or simply not checkpoints, and their manifests
//! travel between nodes. Decoding must refuse all of that by name, never
//! panic, and only ever return a checkpoint that honours its documented
//! invariants (chunks present, sized and named by their hash, listed once in
//! hash order; memories of whole chunks with ascending chunk indices), so a
//! restore can rely on them.
//!
//! The integrity trailer catches blind damage, so besides arbitrary bytes,
//! truncations and raw bit flips, the harness damages the *body* and signs it
//! again: that reaches the postcard decoder and [`CheckpointFile::verify`]
//! with a file whose hash is right but whose structure is not. It also
//! encodes arbitrary (invalid) structures directly.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::fuzzing::{self, manifest, mutations, text};

/// Chunk contents: two distinct 64 KiB patterns, built once (chunk bytes
/// cost time in every encode and decode of an unoptimised test build, so
/// most generated files hold none; see [`valid_file`]).
fn pool() -> &'static [(Hash, Vec<u8>); 2] {
    static POOL: std::sync::OnceLock<[(Hash, Vec<u8>); 2]> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        [1u8, 2].map(|seed| {
            let data = chunk_data(seed);
            (Hash::of(&data), data)
        })
    })
}

fn chunk_data(seed: u8) -> Vec<u8> {
    (0..CHUNK_SIZE)
        .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
        .collect()
}

/// A valid checkpoint: memories of whole chunks, ascending indices, every
/// referenced chunk present once, in hash order. Three in four reference
/// no chunk (all-zero memories), which keeps the structure the same and the
/// files small.
fn valid_file() -> impl Strategy<Value = CheckpointFile> {
    let picks = prop_oneof![
        3 => Just(Vec::new()),
        1 => vec((0u32..6, 0usize..2), 1..4),
    ];
    let memory = (text(), 0u64..6, picks);
    (manifest(), vec(memory, 0..3)).prop_map(|(mut m, memories)| {
        let mut used = Vec::new();
        m.memories = memories
            .into_iter()
            .map(|(name, chunks, picks)| {
                let mut listed: Vec<(u32, Hash)> = picks
                    .into_iter()
                    .filter(|(i, _)| u64::from(*i) < chunks)
                    .map(|(i, s)| (i, pool()[s].0))
                    .collect();
                listed.sort_by_key(|(i, _)| *i);
                listed.dedup_by_key(|(i, _)| *i);
                used.extend(listed.iter().map(|(_, h)| *h));
                MemoryImage {
                    name,
                    byte_len: chunks * CHUNK_SIZE as u64,
                    chunks: listed,
                }
            })
            .collect();
        let mut chunks: Vec<(Hash, Vec<u8>)> = pool()
            .iter()
            .filter(|(h, _)| used.contains(h))
            .cloned()
            .collect();
        chunks.sort_by_key(|c| c.0);
        CheckpointFile {
            manifest: m,
            chunks,
        }
    })
}

/// `body` (what follows magic and version) framed and signed like a file.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(body);
    let digest = Hash::of(&out);
    out.extend_from_slice(digest.as_bytes());
    out
}

/// What any decode must satisfy: a result that keeps every promise, or an
/// error that names a real problem.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match CheckpointFile::decode(bytes) {
        Ok(f) => {
            prop_assert!(f.verify().is_ok());
            prop_assert!(f.manifest.validate().is_ok());
            for m in &f.manifest.memories {
                prop_assert_eq!(m.byte_len % CHUNK_SIZE as u64, 0, "ragged memory");
                prop_assert!(m.chunks.windows(2).all(|w| w[0].0 < w[1].0), "chunk order");
                let max = m.byte_len / CHUNK_SIZE as u64;
                prop_assert!(m.chunks.iter().all(|(i, _)| u64::from(*i) < max));
            }
            prop_assert!(f.chunks.windows(2).all(|w| w[0].0 < w[1].0));
            for h in f.manifest.chunk_hashes() {
                prop_assert_eq!(f.chunk(&h).map(Hash::of), Some(h));
            }
            let again = f.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = CheckpointFile::decode(&again)
                .map_err(|e| TestCaseError::fail(format!("re-encoded checkpoint: {e}")))?;
            prop_assert_eq!(back, f);
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            match &e {
                CheckpointError::Empty => prop_assert!(bytes.is_empty()),
                CheckpointError::Truncated { len } => {
                    prop_assert_eq!(*len, bytes.len());
                    prop_assert!(*len < HEADER_LEN + TRAILER_LEN);
                }
                CheckpointError::NotACheckpoint => {
                    prop_assert!(!bytes.starts_with(&MAGIC) && !MAGIC.starts_with(bytes));
                }
                CheckpointError::UnknownVersion { found, .. } => {
                    prop_assert_ne!(*found, FORMAT_VERSION);
                }
                CheckpointError::IntegrityMismatch { expected, actual } => {
                    prop_assert_ne!(expected, actual);
                }
                // Named problems of a correctly signed body: check the claim
                // against the bytes with a decoder that checks nothing.
                CheckpointError::MissingChunk(h) => {
                    let raw = raw_body(bytes);
                    prop_assert!(
                        raw.is_none_or(|f| f.chunks.iter().all(|(c, _)| c != h)),
                        "chunk {} is reported missing but is in the file",
                        h
                    );
                }
                CheckpointError::ChunkMismatch { claimed, actual } => {
                    prop_assert_ne!(claimed, actual);
                }
                CheckpointError::Malformed(why) => prop_assert!(!why.is_empty()),
                CheckpointError::Encode(_) => {
                    prop_assert!(false, "decode reported an encode error")
                }
            }
        }
    }
    Ok(())
}

/// The body as postcard sees it, without any of `decode`'s checks.
fn raw_body(bytes: &[u8]) -> Option<CheckpointFile> {
    let body = bytes.get(HEADER_LEN..bytes.len().checked_sub(TRAILER_LEN)?)?;
    postcard::take_from_bytes(body).ok().map(|(f, _)| f)
}

proptest! {
    #![proptest_config(fuzzing::config())]

    #[test]
    fn valid_files_round_trip(f in valid_file()) {
        let bytes = f.encode().expect("encodes");
        prop_assert_eq!(CheckpointFile::decode(&bytes).expect("valid file decodes"), f);
    }

    #[test]
    fn arbitrary_bytes_are_refused_by_name(
        prefix in prop_oneof![
            Just(Vec::new()),
            Just(MAGIC.to_vec()),
            Just([&MAGIC[..], &FORMAT_VERSION.to_le_bytes()].concat()),
        ],
        tail in vec(any::<u8>(), 0..96),
    ) {
        let bytes = [prefix, tail].concat();
        check(&bytes)?;
        check(&signed(bytes.get(HEADER_LEN..).unwrap_or_default()))?;
    }

    #[test]
    fn truncated_files_are_refused(f in valid_file(), cut in any::<usize>()) {
        let bytes = f.encode().expect("encodes");
        let cut = cut % bytes.len();
        prop_assert!(CheckpointFile::decode(&bytes[..cut]).is_err());
        check(&bytes[..cut])?;
    }

    /// Blind damage anywhere (header, body, trailer) is always refused.
    #[test]
    fn damaged_files_are_refused(f in valid_file(), ms in mutations()) {
        let bytes = f.encode().expect("encodes");
        let mut damaged = bytes.clone();
        fuzzing::apply(&mut damaged, 0, &ms);
        prop_assume!(damaged != bytes);
        prop_assert!(CheckpointFile::decode(&damaged).is_err());
        check(&damaged)?;
    }

    /// Damage to the manifest and chunk headers, signed again so that the
    /// integrity check passes and the structure is what gets tested.
    #[test]
    fn damaged_bodies_signed_again(f in valid_file(), ms in mutations(), whole in any::<bool>()) {
        let bytes = f.encode().expect("encodes");
        let body = &bytes[HEADER_LEN..bytes.len() - TRAILER_LEN];
        let manifest_len = postcard::to_stdvec(&f.manifest).expect("encodes").len();
        // Mostly aim at the manifest and the first chunk's header; bulk
        // chunk bytes only ever fail their hash.
        let split = if whole { body.len() } else { (manifest_len + 40).min(body.len()) };
        let mut head = body[..split].to_vec();
        fuzzing::apply(&mut head, 0, &ms);
        head.extend_from_slice(&body[split..]);
        check(&signed(&head))?;
    }

    /// A signed file whose body is followed by anything is refused: the
    /// body must be exactly one checkpoint.
    #[test]
    fn bytes_after_the_body_are_refused(f in valid_file(), junk in vec(any::<u8>(), 1..16)) {
        let bytes = f.encode().expect("encodes");
        let mut body = bytes[HEADER_LEN..bytes.len() - TRAILER_LEN].to_vec();
        body.extend_from_slice(&junk);
        let damaged = signed(&body);
        prop_assert!(CheckpointFile::decode(&damaged).is_err());
        check(&damaged)?;
    }

    /// Arbitrary structures, correctly encoded and signed: chunk lists out
    /// of order, repeated, mis-sized or mis-named; memories of any size with
    /// chunk indices in any order.
    #[test]
    fn arbitrary_structures_keep_their_promises(
        m in manifest(),
        picks in prop_oneof![
            Just(Vec::new()),
            vec((0usize..2, any::<bool>(), any::<bool>()), 1..3),
        ],
        borrow in vec((0usize..3, any::<usize>()), 0..4),
        resolve in any::<bool>(),
    ) {
        let mut m = m;
        let mut chunks = Vec::new();
        for (which, misnamed, short) in picks {
            let (h, mut data) = pool()[which].clone();
            if short {
                data.truncate(100);
            }
            chunks.push((if misnamed { Hash::of(&[which as u8]) } else { h }, data));
        }
        // Point some memory chunks at hashes that are in the file.
        for (mem, at) in borrow {
            if let (Some(img), false) = (m.memories.get_mut(mem), chunks.is_empty()) {
                let h = chunks[at % chunks.len()].0;
                img.chunks.push((at as u32, h));
            }
        }
        // Or make every reference resolve, so that the memory images
        // themselves are what gets judged.
        if resolve && !chunks.is_empty() {
            for (i, entry) in m.memories.iter_mut().flat_map(|img| img.chunks.iter_mut()).enumerate() {
                entry.1 = chunks[i % chunks.len()].0;
            }
        }
        let f = CheckpointFile { manifest: m, chunks };
        let bytes = f.encode().expect("encodes");
        check(&bytes)?;
    }

    /// The manifest alone, as the registry stores it and a live target
    /// receives it: decoding arbitrary or damaged bytes never panics, and
    /// `validate` judges whatever comes out.
    #[test]
    fn damaged_manifests(m in manifest(), ms in mutations()) {
        let mut bytes = postcard::to_stdvec(&m).expect("encodes");
        fuzzing::apply(&mut bytes, 0, &ms);
        if let Ok((back, _)) = postcard::take_from_bytes::<Manifest>(&bytes) {
            let _ = back.validate();
            let _ = back.chunk_hashes();
            let again = postcard::to_stdvec(&back).expect("encodes");
            prop_assert_eq!(postcard::from_bytes::<Manifest>(&again).ok(), Some(back));
        }
    }
}

// --- regressions found by the harness -------------------------------------------

fn two_chunk_file() -> CheckpointFile {
    let (a, b) = (chunk_data(1), chunk_data(2));
    let (ha, hb) = (Hash::of(&a), Hash::of(&b));
    let mut chunks = vec![(ha, a), (hb, b)];
    chunks.sort_by_key(|c| c.0);
    CheckpointFile {
        manifest: Manifest {
            module: Hash::of(b"m"),
            rewriter: 4,
            instrumented: Hash::of(b"i"),
            task: None,
            seq: 1,
            epoch: 0,
            memories: vec![MemoryImage {
                name: "memory".into(),
                byte_len: 2 * CHUNK_SIZE as u64,
                chunks: vec![(0, ha), (1, hb)],
            }],
            globals: Vec::new(),
            wasi: crate::wasi::WasiSnapshot::default(),
            counters: Counters::default(),
            files: Vec::new(),
            end: false,
        },
        chunks,
    }
}

/// Chunks listed in descending order used to decode (every hash present),
/// but `chunk()` binary-searches them: a restore then failed with "chunk
/// missing" for a chunk the file holds, or `verify` blamed a missing chunk.
#[test]
fn chunks_out_of_order_are_refused_by_name() {
    let mut f = two_chunk_file();
    f.chunks.reverse();
    let err = CheckpointFile::decode(&f.encode().expect("encodes")).expect_err("refused");
    assert!(
        err.to_string().contains("strictly ascending hash order"),
        "{err}"
    );
    let mut f = two_chunk_file();
    f.chunks.push(f.chunks[1].clone());
    assert!(CheckpointFile::decode(&f.encode().expect("encodes")).is_err());
}

/// Bytes between the postcard body and the trailer used to be ignored.
#[test]
fn bytes_after_the_body_are_named() {
    let bytes = two_chunk_file().encode().expect("encodes");
    let mut body = bytes[HEADER_LEN..bytes.len() - TRAILER_LEN].to_vec();
    body.extend_from_slice(&[0, 1, 2]);
    match CheckpointFile::decode(&signed(&body)) {
        Err(CheckpointError::Malformed(why)) => assert!(why.contains("3 bytes follow"), "{why}"),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// A memory of a size that is not whole chunks, or with chunk indices out of
/// order or repeated (two different contents for one chunk), used to decode.
#[test]
fn memory_images_must_be_whole_chunks_in_order() {
    let mut f = two_chunk_file();
    f.manifest.memories[0].byte_len += 1;
    let err = CheckpointFile::decode(&f.encode().expect("encodes")).expect_err("ragged");
    assert!(err.to_string().contains("whole number"), "{err}");

    let mut f = two_chunk_file();
    f.manifest.memories[0].chunks.reverse();
    let err = CheckpointFile::decode(&f.encode().expect("encodes")).expect_err("reversed");
    assert!(err.to_string().contains("strictly ascending"), "{err}");

    let mut f = two_chunk_file();
    let h = f.manifest.memories[0].chunks[1].1;
    f.manifest.memories[0].chunks = vec![(1, f.manifest.memories[0].chunks[0].1), (1, h)];
    assert!(CheckpointFile::decode(&f.encode().expect("encodes")).is_err());

    let good = CheckpointFile::decode(&two_chunk_file().encode().expect("encodes"));
    assert_eq!(good.expect("valid"), two_chunk_file());
}

/// Every golden checkpoint (files written by earlier releases) still passes
/// the stricter checks.
#[test]
fn golden_checkpoints_still_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/golden exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "ckpt") {
            let bytes = std::fs::read(&path).expect("readable");
            if let Err(e) = CheckpointFile::decode(&bytes) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "found {seen} golden checkpoints");
}
