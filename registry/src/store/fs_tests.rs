//! FsStore: the shared contract plus what only a disk can get wrong.

use super::records::{escape, unescape};
use super::*;
use crate::store::contract;

fn open(dir: &Path) -> FsStore {
    FsStore::open(dir).expect("open store")
}

#[test]
fn contract() {
    for (i, check) in [
        contract::objects_round_trip as fn(&dyn Store),
        contract::mismatch_stores_nothing,
        contract::refs_round_trip,
    ]
    .into_iter()
    .enumerate()
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        check(&open(&tmp.path().join(i.to_string())));
    }
}

#[test]
fn reopening_finds_every_object_and_drops_temp_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let items: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    let pairs: Vec<(Hash, &[u8])> = items.iter().map(|b| (Hash::of(b), b.as_slice())).collect();
    {
        let store = open(tmp.path());
        assert!(store
            .put_objects(ObjectKind::Chunk, &pairs)
            .expect("put")
            .iter()
            .all(|f| *f));
    }
    // What a crash mid-write leaves behind.
    fs::write(tmp.path().join("tmp/123.4"), b"half a chunk").expect("write");
    let store = open(tmp.path());
    assert!(fs::read_dir(tmp.path().join("tmp"))
        .expect("tmp")
        .next()
        .is_none());
    assert_eq!(store.count(ObjectKind::Chunk).count, 40);
    for (h, b) in &pairs {
        assert_eq!(store.object(ObjectKind::Chunk, h).expect("read"), *b);
    }
}

#[test]
fn a_corrupted_object_is_reported_not_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let h = Hash::of(b"precious");
    store
        .put_objects(ObjectKind::Bundle, &[(h, b"precious")])
        .expect("put");
    fs::write(tmp.path().join("bundles").join(h.to_hex()), b"pr3cious").expect("flip");
    assert!(matches!(
        store.object(ObjectKind::Bundle, &h),
        Err(StoreError::Corrupt { .. })
    ));
    // Found corrupt, it is no longer claimed as stored: the next upload of
    // the same bytes is accepted and heals it.
    assert!(!store.contains(ObjectKind::Bundle, &h));
    store
        .put_objects(ObjectKind::Bundle, &[(h, b"precious")])
        .expect("put again");
    assert_eq!(
        store.object(ObjectKind::Bundle, &h).expect("healed"),
        b"precious"
    );
    // A restart does not bring the corrupt copy back.
    drop(store);
    let store = open(tmp.path());
    assert_eq!(
        store.object(ObjectKind::Bundle, &h).expect("after restart"),
        b"precious"
    );
}

#[test]
fn a_corrupted_record_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .put_ref(RefSpace::Names, "app:v1", b"value")
        .expect("put");
    let path = tmp.path().join("refs/names").join(escape("app:v1"));
    let mut body = fs::read(&path).expect("read");
    body[0] ^= 1;
    fs::write(&path, body).expect("write");
    assert!(matches!(
        store.get_ref(RefSpace::Names, "app:v1"),
        Err(StoreError::CorruptRef { .. })
    ));
    fs::write(&path, b"short").expect("write");
    assert!(store.get_ref(RefSpace::Names, "app:v1").is_err());
}

#[test]
fn foreign_directories_and_formats_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("notes.txt"), b"mine").expect("write");
    assert!(matches!(
        FsStore::open(tmp.path()),
        Err(StoreError::UnknownFormat { .. })
    ));
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("FORMAT"), b"wmig-registry-store/9\n").expect("write");
    let err = FsStore::open(tmp.path()).err().expect("refused");
    assert!(err.to_string().contains("wmig-registry-store/9"), "{err}");
}

#[test]
fn keys_escape_to_plain_file_names() {
    for key in [
        "app/x:v1",
        "..",
        ".hidden",
        "t-1/00000000000000000002",
        "ü%",
    ] {
        let e = escape(key);
        assert!(!e.contains('/') && !e.starts_with('.'), "{key} -> {e}");
        assert_eq!(unescape(&e).as_deref(), Some(key));
    }
    assert_eq!(unescape("%zz"), None);
    assert_eq!(unescape("%4"), None);
}
