//! Fuzz harness of what the file store reads back from disk: keyed records
//! (`value ‖ blake3(value)`), the file names records and objects are found
//! by, and a data directory that holds foreign, damaged or half-written
//! files. A disk is not trusted: a record or object that does not verify is
//! reported by key or hash and never served, a file name that is not ours
//! is skipped, and opening the store and the registry over any of it must
//! not panic.

use std::sync::Arc;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;

use super::records::{escape, unescape};
use super::*;
use crate::{Registry, RegistryConfig};

/// Every case of the disk properties creates a store (with its fsyncs,
/// slow on a busy disk): fewer cases than the pure ones.
fn disk_config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    }
}

/// Keys of every shape: names, manifest keys, and anything else.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/-]{1,12}:[a-z0-9._-]{1,6}",
        "t-[0-9]{1,4}/[0-9]{20}",
        ".{1,16}",
        Just("%".to_owned()),
        Just(".hidden".to_owned()),
        Just("../../escape".to_owned()),
    ]
}

/// Names a foreign or damaged file in a store directory may have.
fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9%._-]{1,24}",
        "[0-9a-f]{64}",
        "[0-9a-f]{64}\\.corrupt",
        "t-[0-9]{1,3}%2F[0-9]{20}",
        "%[0-9A-Fa-f]{0,2}.{0,3}",
    ]
    .prop_filter("a file name", |n| {
        n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
    })
}

#[derive(Clone, Debug)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        any::<usize>().prop_map(Damage::Truncate),
        vec(any::<u8>(), 1..8).prop_map(Damage::Append),
        vec(any::<u8>(), 0..48).prop_map(Damage::Replace),
    ]
}

fn damaged(mut bytes: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::Flip(at, bit) if !bytes.is_empty() => {
            let n = bytes.len();
            bytes[at % n] ^= 1 << bit;
        }
        Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Damage::Append(more) => bytes.extend_from_slice(more),
        Damage::Replace(new) => bytes = new.clone(),
        _ => {}
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    /// Every key maps to a file name of its own (inside the records
    /// directory, never hidden) and back.
    #[test]
    fn keys_escape_to_safe_names_and_back(key in key()) {
        let name = escape(&key);
        prop_assert!(!name.is_empty());
        prop_assert!(!name.starts_with('.'));
        prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"%._-".contains(&b)), "{}", name);
        prop_assert_eq!(unescape(&name), Some(key));
    }

    #[test]
    fn any_file_name_unescapes_or_is_skipped(name in ".{0,24}") {
        if let Some(key) = unescape(&name) {
            // Whatever it names, its own escaping names it again.
            prop_assert_eq!(unescape(&escape(&key)), Some(key));
        }
    }

}

proptest! {
    #![proptest_config(disk_config())]

    /// A record damaged on disk is reported corrupt under its key; only the
    /// bytes that were written are ever served.
    #[test]
    fn damaged_records_are_never_served(
        space in prop_oneof![Just(RefSpace::Names), Just(RefSpace::Manifests)],
        key in key(),
        value in vec(any::<u8>(), 0..64),
        d in damage(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(tmp.path()).expect("open");
        store.put_ref(space, &key, &value).expect("put");
        let path = store.record_path(space, &key);
        let before = fs::read(&path).expect("read");
        let after = damaged(before.clone(), &d);
        fs::write(&path, &after).expect("write");
        match store.get_ref(space, &key) {
            Ok(Some(v)) => {
                prop_assert_eq!(&after, &before, "damaged record served");
                prop_assert_eq!(v, value);
            }
            Ok(None) => prop_assert!(false, "a present record read as absent"),
            Err(StoreError::CorruptRef { key: k }) => {
                prop_assert_ne!(&after, &before);
                prop_assert_eq!(k, key);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    /// A data directory with foreign, damaged and half-written files in
    /// every subdirectory: the store and the registry open, skip what is
    /// not theirs, and report what does not verify when it is read.
    #[test]
    fn a_littered_data_directory_opens(
        litter in vec((0usize..5, file_name(), vec(any::<u8>(), 0..80)), 0..8),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let store = FsStore::open(tmp.path()).expect("open");
            let bundle = b"\0asm\x01\0\0\0";
            store
                .put_objects(ObjectKind::Bundle, &[(Hash::of(bundle), bundle)])
                .expect("put");
            store.put_ref(RefSpace::Names, "app:latest", Hash::of(bundle).as_bytes()).expect("name");
        }
        let dirs = ["bundles", "chunks", "refs/names", "refs/manifests", "tmp"];
        for (dir, name, bytes) in &litter {
            fs::write(tmp.path().join(dirs[*dir]).join(name), bytes).expect("litter");
        }
        let store = Arc::new(FsStore::open(tmp.path()).expect("a littered store opens"));
        for kind in [ObjectKind::Bundle, ObjectKind::Chunk] {
            for o in store.objects(kind) {
                match store.object(kind, &o.hash) {
                    Ok(bytes) => prop_assert_eq!(Hash::of(&bytes), o.hash),
                    Err(StoreError::Corrupt { hash, .. }) => prop_assert_eq!(hash, o.hash),
                    Err(e) => prop_assert!(false, "unexpected error {}", e),
                }
            }
        }
        for space in [RefSpace::Names, RefSpace::Manifests] {
            for (key, _) in store.refs(space).expect("refs") {
                match store.get_ref(space, &key) {
                    Ok(_) | Err(StoreError::CorruptRef { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected error for {:?}: {}", key, e),
                }
            }
        }
        let registry = Registry::open(store, RegistryConfig::default())
            .map_err(|e| TestCaseError::fail(format!("registry over a littered store: {e}")))?;
        let _ = registry.list_bundles();
        let _ = registry.stats(Instant::now());
        for task in 0..4 {
            for seq in registry.manifests(wmig_proto::TaskId(task)) {
                // Damaged records are errors, not panics or garbage.
                let _ = registry.manifest(wmig_proto::TaskId(task), Some(seq));
            }
        }
        let _ = registry.gc(Instant::now());
    }

    /// Whatever the FORMAT file says, opening answers: ours, or refused.
    #[test]
    fn any_format_file_is_ours_or_refused(format in prop_oneof![
        Just(format!("{STORE_FORMAT}\n")),
        Just("wmig-registry-store/2\n".to_owned()),
        ".{0,40}",
    ]) {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("FORMAT"), &format).expect("write");
        match FsStore::open(tmp.path()) {
            Ok(_) => prop_assert_eq!(format.trim(), STORE_FORMAT),
            Err(e) => {
                prop_assert!(matches!(e, StoreError::UnknownFormat { .. }), "{}", e);
                prop_assert_ne!(format.trim(), STORE_FORMAT);
            }
        }
    }
}

// --- regressions found by the harness -------------------------------------------

/// One damaged name record (here: emptied) made `Registry::open` fail, so
/// the registry would not start, while a name record holding something
/// other than a hash was already skipped with a warning.
#[test]
fn a_damaged_name_record_does_not_keep_the_registry_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bundle = b"\0asm\x01\0\0\0";
    let h = Hash::of(bundle);
    {
        let store = FsStore::open(tmp.path()).expect("open");
        store
            .put_objects(ObjectKind::Bundle, &[(h, bundle)])
            .expect("put");
        store
            .put_ref(RefSpace::Names, "app:v1", h.as_bytes())
            .expect("name");
        store
            .put_ref(RefSpace::Names, "app:v2", h.as_bytes())
            .expect("name");
    }
    fs::write(tmp.path().join("refs/names").join(escape("app:v1")), b"").expect("damage");
    let store = Arc::new(FsStore::open(tmp.path()).expect("open"));
    let registry = Registry::open(store, RegistryConfig::default()).expect("the registry starts");
    let v2 = wmig_proto::wire::registry::BundleRef::Name("app:v2".parse().expect("name"));
    let v1 = wmig_proto::wire::registry::BundleRef::Name("app:v1".parse().expect("name"));
    assert_eq!(registry.resolve(&v2).expect("intact name"), h);
    assert!(registry.resolve(&v1).is_err(), "the damaged name is gone");
    assert_eq!(
        registry
            .resolve(&wmig_proto::wire::registry::BundleRef::Hash(h))
            .expect("by hash"),
        h
    );
}
