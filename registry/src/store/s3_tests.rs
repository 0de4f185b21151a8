//! The store contract against a real S3 server: `s3s-fs` (crates.io, the
//! s3s project's S3 server over a directory; it checks SigV4 signatures and
//! speaks the S3 REST protocol), started per test on a free loopback port.
//! `scripts/deps` installs it; without it these tests say so and pass only
//! outside CI.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::contract;
use super::*;

const KEY: &str = "wmig-test-access";
const SECRET: &str = "wmig-test-secret-key";

struct S3Server {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("WMIG_S3S_FS") {
        return Some(p.into());
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(home.map(|h| h.join("bin")));
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// A fresh server with one bucket, `wmig`; None (and a note) without the
/// binary outside CI.
fn server() -> Option<S3Server> {
    let Some(bin) = binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "s3s-fs is not installed; scripts/deps installs it (cargo install s3s-fs)"
        );
        eprintln!("skipping: s3s-fs is not installed (scripts/deps installs it)");
        return None;
    };
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("wmig")).expect("bucket directory");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(S3Server {
                    child,
                    endpoint: format!("http://127.0.0.1:{port}"),
                    _root: root,
                });
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // lost the port to someone else: try another
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("s3s-fs did not start")
}

fn open(server: &S3Server, prefix: &str) -> S3Store {
    let options = S3Options {
        endpoint: Some(server.endpoint.clone()),
        access_key: Some(KEY.into()),
        secret_key: Some(SECRET.into()),
        region: Some("us-east-1".into()),
    };
    S3Store::open_with(&format!("s3://wmig/{prefix}"), &options).expect("open the bucket")
}

#[test]
fn contract() {
    let Some(server) = server() else { return };
    contract::objects_round_trip(&open(&server, "a"));
    contract::mismatch_stores_nothing(&open(&server, "b"));
    contract::refs_round_trip(&open(&server, "c"));
}

#[test]
fn a_reopened_store_finds_its_objects_and_refuses_tampered_ones() {
    let Some(server) = server() else { return };
    let store = open(&server, "reopen");
    let data = vec![7u8; 100_000];
    let h = Hash::of(&data);
    store
        .put_objects(ObjectKind::Chunk, &[(h, &data)])
        .expect("put");
    store
        .put_ref(RefSpace::Manifests, "t-3/00000000000000000001", b"m")
        .expect("put ref");
    drop(store);
    let again = open(&server, "reopen");
    assert!(again.contains(ObjectKind::Chunk, &h), "indexed by listing");
    assert_eq!(again.count(ObjectKind::Chunk).bytes, 100_000);
    assert_eq!(again.object(ObjectKind::Chunk, &h).expect("get"), data);
    let both = again
        .objects_many(ObjectKind::Chunk, &[h, h])
        .expect("get many");
    assert!(both.len() == 2 && both.iter().all(|b| *b == data));
    assert!(matches!(
        again.objects_many(ObjectKind::Chunk, &[h, Hash::of(b"absent")]),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        again.refs(RefSpace::Manifests).expect("refs"),
        vec![("t-3/00000000000000000001".to_owned(), 1)]
    );
    // Someone rewrites the object behind the registry's back.
    again
        .put(
            &again.object_path(ObjectKind::Chunk, &h),
            Bytes::from_static(b"evil"),
        )
        .expect("overwrite");
    assert!(matches!(
        again.object(ObjectKind::Chunk, &h),
        Err(StoreError::Corrupt { .. })
    ));
    again
        .put(
            &again.record_path(RefSpace::Manifests, "t-3/00000000000000000001"),
            Bytes::from_static(b"short"),
        )
        .expect("overwrite record");
    assert!(matches!(
        again.get_ref(RefSpace::Manifests, "t-3/00000000000000000001"),
        Err(StoreError::CorruptRef { .. })
    ));
}

#[test]
fn bad_urls_and_credentials_are_named() {
    let err = S3Store::open("file:///tmp/x").expect_err("not s3");
    assert!(err.to_string().contains("s3://BUCKET"), "{err}");
    let Some(server) = server() else { return };
    let options = S3Options {
        endpoint: Some(server.endpoint.clone()),
        access_key: Some(KEY.into()),
        secret_key: Some("wrong".into()),
        region: None,
    };
    let err = S3Store::open_with("s3://wmig/x", &options).expect_err("bad secret");
    assert!(
        err.to_string().contains("object storage s3://wmig/x"),
        "{err}"
    );
}
