//! The registry through the `wmig` binary: `init`, `registry serve` on
//! 127.0.0.1 port 0, `upload`, `registry ls | get | stats | gc`, the
//! flag > environment > config lookup, every bad input, and a `kill -9` of
//! the server in the middle of uploads.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{run, stderr, stdout, wmig};

/// A running `wmig registry serve`; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(cluster: &Path, data: &Path) -> Server {
        let mut child = wmig()
            .args([
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--gc-grace",
                "0s",
            ])
            .arg("--cluster")
            .arg(cluster)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wmig registry serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its address");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Server { child, addr }
    }

    /// `kill -9`.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let o = run(wmig().arg("init").arg("--cluster").arg(&dir));
    assert!(o.status.success(), "init: {}", stderr(&o));
    (tmp, dir)
}

/// `wmig ARGS --cluster DIR`; returns (exit ok, stdout, stderr).
fn cli(cluster: &Path, args: &[&str]) -> (bool, String, String) {
    let o = run(wmig().args(args).arg("--cluster").arg(cluster));
    (o.status.success(), stdout(&o), stderr(&o))
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A valid wasm module of about `size` bytes: an empty module with one
/// custom section of pseudo-random bytes.
fn wasm_module(size: usize, seed: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size + 16);
    let name = b"wmig-test";
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    let mut x = seed | 1;
    while payload.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(0);
    leb128(payload.len(), &mut m);
    m.extend_from_slice(&payload);
    m
}

fn hex_blake3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn upload_list_get_stats_and_gc_through_the_cli() {
    let (tmp, dir) = cluster();
    let server = Server::start(&dir, &tmp.path().join("data"));
    let module = tmp.path().join("hello.wasm");
    let bytes = wasm_module(300_000, 7);
    std::fs::write(&module, &bytes).expect("write module");
    let module_arg = module.to_str().expect("utf-8 path");

    // The address comes from the config file `serve` wrote.
    let (ok, out, err) = cli(&dir, &["upload", module_arg, "--name", "hello:v1"]);
    assert!(ok, "upload: {err}");
    let hash = out.trim().to_owned();
    assert_eq!(
        hash,
        hex_blake3(&bytes),
        "upload prints the module's blake3"
    );
    let (ok, out, _) = cli(&dir, &["upload", module_arg, "--name", "hello"]);
    assert!(ok && out.trim() == hash, "uploading again is idempotent");

    let (ok, out, err) = cli(&dir, &["registry", "ls"]);
    assert!(ok, "ls: {err}");
    assert!(
        out.contains(&hash) && out.contains("hello:v1") && out.contains("hello:latest"),
        "{out}"
    );

    for reference in [hash.as_str(), "hello:v1", "hello"] {
        let target = tmp.path().join("out.wasm");
        let (ok, _, err) = cli(
            &dir,
            &[
                "registry",
                "get",
                reference,
                "-o",
                target.to_str().expect("utf-8"),
            ],
        );
        assert!(ok, "get {reference}: {err}");
        assert_eq!(
            std::fs::read(&target).expect("read back"),
            bytes,
            "get {reference}"
        );
    }

    // Flags and environment override the config file.
    let o = run(wmig()
        .args(["registry", "stats", "--json"])
        .env("WMIG_CLUSTER", &dir)
        .env("WMIG_REGISTRY", &server.addr));
    assert!(o.status.success(), "stats: {}", stderr(&o));
    let stats: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stats JSON");
    assert_eq!(stats["bundles"]["count"], 1, "{stats}");
    assert_eq!(stats["names"], 2, "{stats}");
    assert!(stats["leases"]["active"].is_u64(), "{stats}");
    let o = run(wmig()
        .args(["registry", "stats", "--registry", "127.0.0.1:9"])
        .env("WMIG_CLUSTER", &dir)
        .env("WMIG_REGISTRY", &server.addr));
    assert!(
        !o.status.success(),
        "--registry must win over WMIG_REGISTRY"
    );

    let (ok, out, err) = cli(&dir, &["registry", "gc"]);
    assert!(ok && out.contains("removed 0 chunk"), "gc: {out}{err}");
    let (ok, out, _) = cli(&dir, &["registry", "stats"]);
    assert!(
        ok && out.contains("bundles") && out.contains("leases"),
        "{out}"
    );
    drop(server);
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let (tmp, dir) = cluster();
    let _server = Server::start(&dir, &tmp.path().join("data"));
    let junk = tmp.path().join("script.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho not wasm\n").expect("write");
    let (ok, _, err) = cli(&dir, &["upload", junk.to_str().expect("utf-8")]);
    assert!(!ok && err.contains("not a WebAssembly module"), "{err}");

    let missing = tmp.path().join("missing.wasm");
    let (ok, _, err) = cli(&dir, &["upload", missing.to_str().expect("utf-8")]);
    assert!(
        !ok && err.contains("could not read") && err.contains("missing.wasm"),
        "{err}"
    );

    let out = tmp.path().join("o.wasm");
    let out = out.to_str().expect("utf-8");
    let unknown = "0".repeat(64);
    let (ok, _, err) = cli(&dir, &["registry", "get", &unknown, "-o", out]);
    assert!(!ok && err.contains("is not stored"), "{err}");
    let (ok, _, err) = cli(&dir, &["registry", "get", "ghost:v1", "-o", out]);
    assert!(!ok && err.contains("no bundle named ghost:v1"), "{err}");
    let (ok, _, err) = cli(&dir, &["registry", "get", "bad name!", "-o", out]);
    assert!(!ok && err.contains("not a valid bundle name"), "{err}");
    let (ok, _, err) = cli(
        &dir,
        &["upload", junk.to_str().expect("utf-8"), "--name=-x"],
    );
    assert!(!ok && err.contains("not a valid bundle name"), "{err}");
    assert!(!Path::new(out).exists(), "nothing written on failure");

    // A cluster the registry does not belong to.
    let (_other_tmp, other) = cluster();
    let o = run(wmig()
        .args(["registry", "ls", "--registry", &_server.addr])
        .arg("--cluster")
        .arg(&other));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("TLS"), "{err}");
    // A cluster without a registry address, and no cluster at all.
    let (ok, _, err) = cli(&other, &["registry", "ls"]);
    assert!(!ok && err.contains("no registry address"), "{err}");
    let (ok, _, err) = cli(
        &tmp.path().join("nowhere"),
        &["registry", "ls", "--registry", "127.0.0.1:1"],
    );
    assert!(!ok && err.contains("wmig init"), "{err}");

    let (ok, out, _) = cli(&dir, &["registry", "stats", "--json"]);
    assert!(ok);
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(stats["bundles"]["count"], 0, "nothing was stored: {stats}");
}

/// Uploads race a `kill -9` of the server. After a restart every upload
/// that was acknowledged is intact, no object is partial or corrupt, and
/// leftover temp files are gone.
#[test]
fn kill_9_during_uploads_loses_nothing_acknowledged() {
    let (tmp, dir) = cluster();
    let data = tmp.path().join("data");
    let server = Server::start(&dir, &data);
    let modules: Vec<(PathBuf, Vec<u8>)> = (0..12u64)
        .map(|i| {
            let bytes = wasm_module(12 << 20, 100 + i);
            let path = tmp.path().join(format!("m{i}.wasm"));
            std::fs::write(&path, &bytes).expect("write module");
            (path, bytes)
        })
        .collect();
    // Start uploads a few milliseconds apart and kill the server as soon as
    // the first is acknowledged: the others are at every stage of flight.
    let mut uploads: Vec<(Vec<u8>, Child)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending = modules.into_iter();
    loop {
        if let Some((path, bytes)) = pending.next() {
            let child = wmig()
                .arg("upload")
                .arg(&path)
                .arg("--cluster")
                .arg(&dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start upload");
            uploads.push((bytes, child));
        }
        if uploads
            .iter_mut()
            .any(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no upload finished");
        std::thread::sleep(Duration::from_millis(15));
    }
    server.kill();
    let started = uploads.len();
    let mut acknowledged = Vec::new();
    for (bytes, mut child) in uploads {
        // Uploads still waiting for their dead server would only time out.
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let o = child.wait_with_output().expect("upload exits");
        if o.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                hex_blake3(&bytes)
            );
            acknowledged.push(bytes);
        }
    }
    assert!(!acknowledged.is_empty());

    let server = Server::start(&dir, &data);
    assert!(
        std::fs::read_dir(data.join("tmp"))
            .expect("tmp")
            .next()
            .is_none(),
        "temp files removed"
    );
    for entry in std::fs::read_dir(data.join("bundles")).expect("bundles") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        assert_eq!(
            hex_blake3(&std::fs::read(&path).expect("read")),
            name,
            "no partial object"
        );
    }
    let out = tmp.path().join("back.wasm");
    for bytes in &acknowledged {
        let hash = hex_blake3(bytes);
        let (ok, _, err) = cli(
            &dir,
            &["registry", "get", &hash, "-o", out.to_str().expect("utf-8")],
        );
        assert!(ok, "acknowledged upload {hash} lost: {err}");
        assert_eq!(&std::fs::read(&out).expect("read"), bytes);
    }
    eprintln!(
        "{} of {started} started uploads acknowledged before the kill",
        acknowledged.len()
    );
    drop(server);
}
