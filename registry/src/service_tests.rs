//! The registry's request logic over an in-memory store, with simulated time.

use std::time::Duration;

use wmig_proto::checkpoint::{Counters, Manifest, MemoryImage, CHUNK_SIZE};
use wmig_proto::wasi::WasiSnapshot;

use super::*;
use crate::store::MemStore;

/// The smallest valid wasm module: magic and version.
pub(crate) const EMPTY_WASM: &[u8] = b"\0asm\x01\0\0\0";

fn registry(config: RegistryConfig) -> Registry {
    Registry::open(Arc::new(MemStore::new()), config).expect("open")
}

pub(crate) fn chunk(i: u32) -> Vec<u8> {
    let mut c = vec![0u8; CHUNK_SIZE];
    c[..4].copy_from_slice(&i.to_le_bytes());
    c
}

pub(crate) fn manifest(task: u64, seq: u64, chunks: &[Hash]) -> Manifest {
    Manifest {
        module: Hash::of(EMPTY_WASM),
        rewriter: 1,
        instrumented: Hash::of(b"instrumented"),
        task: Some(TaskId(task)),
        seq,
        epoch: 1,
        memories: vec![MemoryImage {
            name: "memory".into(),
            byte_len: (chunks.len() * CHUNK_SIZE) as u64,
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(i, h)| (i as u32, *h))
                .collect(),
        }],
        globals: Vec::new(),
        wasi: WasiSnapshot::default(),
        counters: Counters::default(),
        files: Vec::new(),
        end: false,
    }
}

fn store_chunks(r: &Registry, ids: std::ops::Range<u32>, now: Instant) -> Vec<Hash> {
    let data: Vec<Vec<u8>> = ids.map(chunk).collect();
    let items: Vec<(Hash, &[u8])> = data.iter().map(|c| (Hash::of(c), c.as_slice())).collect();
    r.put_chunks(&items, now).expect("put chunks");
    items.iter().map(|(h, _)| *h).collect()
}

#[test]
fn bundles_round_trip_by_hash_and_name() {
    let r = registry(RegistryConfig::default());
    let name: NameTag = "hello:v1".parse().expect("name");
    let h = Hash::of(EMPTY_WASM);
    let stored = r.put_bundle(h, EMPTY_WASM, Some(&name)).expect("put");
    assert!(stored.created);
    assert!(!r.put_bundle(h, EMPTY_WASM, None).expect("again").created);
    assert_eq!(
        r.bundle(&BundleRef::Hash(h)).expect("by hash").1,
        EMPTY_WASM
    );
    assert_eq!(
        r.bundle(&BundleRef::Name(name.clone())).expect("by name").0,
        h
    );
    assert_eq!(r.list_bundles()[0].names, vec![name]);
    let unknown = BundleRef::Name("nope".parse().expect("name"));
    assert!(matches!(
        r.bundle(&unknown),
        Err(RegistryError::UnknownName(_))
    ));
}

#[test]
fn bad_bundles_store_nothing() {
    let mut config = RegistryConfig::default();
    config.limits.max_bundle = 16;
    let r = registry(config);
    let junk = b"#!/bin/sh\necho hi".as_slice();
    let e = r
        .put_bundle(Hash::of(junk), junk, None)
        .expect_err("too large");
    assert!(
        matches!(e, RegistryError::TooLarge { what: "bundle", .. }),
        "{e}"
    );
    let junk = b"not wasm".as_slice();
    let e = r
        .put_bundle(Hash::of(junk), junk, None)
        .expect_err("not wasm");
    assert!(matches!(e, RegistryError::NotWasm(_)), "{e}");
    let e = r
        .put_bundle(Hash::of(b"other"), EMPTY_WASM, None)
        .expect_err("mismatch");
    assert_eq!(
        e.to_remote().code,
        wmig_proto::wire::ErrorCode::HashMismatch
    );
    assert_eq!(r.stats(Instant::now()).bundles.count, 0);
}

#[test]
fn leases_hand_each_chunk_to_one_writer() {
    let r = registry(RegistryConfig::default());
    let t0 = Instant::now();
    let c = chunk(1);
    let h = Hash::of(&c);
    assert_eq!(r.can_store(1, &[h], t0), vec![LeaseStatus::Granted]);
    assert_eq!(r.can_store(2, &[h], t0), vec![LeaseStatus::Leased]);
    let report = r.put_chunks(&[(h, &c)], t0).expect("put");
    assert_eq!((report.written, report.already_stored), (1, 0));
    assert_eq!(r.can_store(2, &[h], t0), vec![LeaseStatus::AlreadyStored]);
    let s = r.stats(t0);
    assert_eq!(
        (s.leases.active, s.leases.granted, s.leases.completed),
        (0, 1, 1)
    );
    assert_eq!((s.chunks_written, s.chunks.count), (1, 1));
}

#[test]
fn an_abandoned_lease_is_granted_again_after_the_ttl() {
    let r = registry(RegistryConfig::default());
    let t0 = Instant::now();
    let h = Hash::of(&chunk(1));
    assert_eq!(r.can_store(1, &[h], t0), vec![LeaseStatus::Granted]);
    assert_eq!(r.expire_leases(t0 + Duration::from_secs(29)), 0);
    assert_eq!(r.expire_leases(t0 + Duration::from_secs(30)), 1);
    assert_eq!(
        r.can_store(2, &[h], t0 + Duration::from_secs(30)),
        vec![LeaseStatus::Granted]
    );
    assert_eq!(r.stats(t0 + Duration::from_secs(30)).leases.expired, 1);
}

#[test]
fn chunk_limits_are_named() {
    let r = registry(RegistryConfig::default());
    let big = vec![1u8; CHUNK_SIZE + 1];
    let e = r
        .put_chunks(&[(Hash::of(&big), &big)], Instant::now())
        .expect_err("big");
    assert!(
        e.to_string().contains("chunk of 65537 bytes exceeds"),
        "{e}"
    );
    let many = vec![Hash::of(b"x"); 257];
    assert!(matches!(
        r.chunks(&many),
        Err(RegistryError::TooLarge { .. })
    ));
    assert!(matches!(
        r.chunks(&many[..1]),
        Err(RegistryError::Store(StoreError::NotFound(_)))
    ));
}

#[test]
fn prefix_counts_leading_stored_chunks() {
    let r = registry(RegistryConfig::default());
    let t0 = Instant::now();
    let stored = store_chunks(&r, 0..3, t0);
    let missing = Hash::of(b"missing");
    assert_eq!(
        r.has_prefix(&[stored[0], stored[1], missing, stored[2]], t0),
        2
    );
    assert_eq!(r.has_prefix(&[missing], t0), 0);
    assert_eq!(r.has_prefix(&[], t0), 0);
}

#[test]
fn manifests_need_their_chunks_and_keep_the_last_three() {
    let r = registry(RegistryConfig::default());
    let t0 = Instant::now();
    let hashes = store_chunks(&r, 0..4, t0);
    let missing = Hash::of(b"missing");
    let e = r
        .put_manifest(&manifest(1, 1, &[hashes[0], missing]))
        .expect_err("missing");
    assert!(matches!(e, RegistryError::MissingChunks { count: 1, first } if first == missing));
    for seq in 1..=5 {
        let stored = r
            .put_manifest(&manifest(1, seq, &hashes[..2]))
            .expect("commit");
        assert_eq!(stored.pruned, if seq > 3 { vec![seq - 3] } else { vec![] });
    }
    assert_eq!(r.manifests(TaskId(1)), vec![3, 4, 5]);
    assert_eq!(r.manifest(TaskId(1), None).expect("latest").seq, 5);
    assert!(matches!(
        r.manifest(TaskId(1), Some(1)),
        Err(RegistryError::NoManifest { .. })
    ));
    assert!(matches!(
        r.manifest(TaskId(9), None),
        Err(RegistryError::NoManifest { .. })
    ));
    // Same bytes again: fine. Different bytes under a kept seq: conflict.
    assert!(r
        .put_manifest(&manifest(1, 5, &hashes[..2]))
        .expect("idempotent")
        .pruned
        .is_empty());
    let e = r
        .put_manifest(&manifest(1, 5, &hashes[..3]))
        .expect_err("conflict");
    assert!(e.to_string().contains("seq 6"), "{e}");
    let e = r
        .put_manifest(&manifest(1, 2, &hashes[..2]))
        .expect_err("stale");
    assert!(e.to_string().contains("stale"), "{e}");
    let mut no_task = manifest(1, 7, &[]);
    no_task.task = None;
    assert!(matches!(
        r.put_manifest(&no_task),
        Err(RegistryError::Invalid(_))
    ));
    let s = r.stats(t0);
    assert_eq!((s.manifests.count, s.tasks), (3, 1));
}

#[test]
fn manifest_size_limit() {
    let mut config = RegistryConfig::default();
    config.limits.max_manifest = 100;
    let r = registry(config);
    let many: Vec<Hash> = (0..10u8).map(|i| Hash([i; 32])).collect();
    let e = r
        .put_manifest(&manifest(1, 1, &many))
        .expect_err("too large");
    assert!(
        matches!(
            e,
            RegistryError::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn gc_removes_only_unreferenced_unprotected_chunks() {
    let config = RegistryConfig {
        gc_grace: Duration::ZERO,
        keep_checkpoints: 1,
        ..RegistryConfig::default()
    };
    let r = registry(config);
    let t0 = Instant::now();
    let hashes = store_chunks(&r, 0..6, t0);
    r.put_manifest(&manifest(1, 1, &hashes[..3]))
        .expect("commit 1");
    // Seq 2 supersedes seq 1 and references chunks 2..4 only.
    let stored = r
        .put_manifest(&manifest(1, 2, &hashes[2..4]))
        .expect("commit 2");
    assert_eq!(stored.pruned, vec![1]);
    // Chunk 5 is being re-stored by someone under a lease: protected.
    let leased = chunk(100);
    let leased_hash = Hash::of(&leased);
    r.can_store(7, &[leased_hash], t0);
    r.store
        .put_objects(ObjectKind::Chunk, &[(leased_hash, &leased)])
        .expect("sneak in");
    let report = r.gc(t0).expect("gc");
    assert_eq!(report.chunks_removed, 4, "{report:?}");
    assert_eq!(report.bytes_freed, 4 * CHUNK_SIZE as u64);
    assert_eq!(report.chunks_protected, 1);
    assert_eq!(r.has_prefix(&hashes[2..4], t0), 2);
    assert_eq!(r.has_prefix(&hashes[..1], t0), 0);
    assert_eq!(
        r.manifest(TaskId(1), None).expect("still restorable").seq,
        2
    );
}

#[test]
fn gc_spares_recent_uploads() {
    let r = registry(RegistryConfig::default());
    let t0 = Instant::now();
    store_chunks(&r, 0..3, t0);
    let report = r.gc(t0).expect("gc");
    assert_eq!((report.chunks_removed, report.chunks_protected), (0, 3));
}

/// A task's files are kept as a tree bundle: it is refused while a chunk is
/// missing, and once stored it keeps its chunks from garbage collection
/// like a checkpoint does.
#[test]
fn a_tree_bundle_needs_its_chunks_and_keeps_them() {
    use wmig_proto::files::{FileImage, FileTree, Node, TreeEntry};
    let config = RegistryConfig {
        gc_grace: Duration::ZERO,
        ..RegistryConfig::default()
    };
    let r = registry(config);
    let t0 = Instant::now();
    let tree = |hashes: &[Hash]| FileTree {
        entries: vec![
            TreeEntry {
                path: "d".into(),
                node: Node::Dir,
            },
            TreeEntry {
                path: "d/f".into(),
                node: Node::File(FileImage {
                    len: (hashes.len() * CHUNK_SIZE) as u64,
                    executable: false,
                    chunks: hashes
                        .iter()
                        .enumerate()
                        .map(|(i, h)| (i as u32, *h))
                        .collect(),
                }),
            },
        ],
    };
    let absent = Hash::of(&chunk(99));
    let bytes = tree(&[absent]).encode();
    match r.put_bundle(Hash::of(&bytes), &bytes, None) {
        Err(RegistryError::MissingChunks { first, .. }) => assert_eq!(first, absent),
        other => panic!("expected MissingChunks, got {other:?}"),
    }
    let hashes = store_chunks(&r, 0..4, t0);
    let bytes = tree(&hashes[..2]).encode();
    r.put_bundle(Hash::of(&bytes), &bytes, None)
        .expect("stored with its chunks");
    let report = r.gc(t0).expect("gc");
    assert_eq!(report.chunks_removed, 2, "only the unreferenced two");
    assert_eq!(r.has_prefix(&hashes[..2], t0), 2);
    // A damaged tree is refused by what is wrong with it.
    let mut bad = tree(&hashes[..1]);
    bad.entries.remove(0);
    let bytes = bad.encode();
    let e = r
        .put_bundle(Hash::of(&bytes), &bytes, None)
        .expect_err("refused");
    assert!(e.to_string().contains("without its directory"), "{e}");
}
