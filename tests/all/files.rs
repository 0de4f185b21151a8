//! Task files that travel (`wmig submit --dir LOCAL::GUEST`): each worker
//! has its own data and cache directories, so nothing is shared but what
//! the registry and the live-migration stream carry. The reference is the
//! `wasmtime` CLI (`scripts/install-wasmtime-ref`) run with `--dir` on a
//! copy of the same input directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wmig_tests::artifacts;

use crate::cluster::{kill9, wait_until, Up};
use crate::support::{run, stderr, stdout};

const FAST: &[&str] = &["--offline-timeout", "1s", "--checkpoint-every", "300ms"];

fn task(up: &Up, id: &str) -> Value {
    up.json(&["inspect", id, "--json"])
}

/// The reference `wasmtime` CLI, installed once per target dir.
pub(crate) fn wasmtime_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return p.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-wasmtime-ref");
    let o = run(&mut Command::new(script));
    assert!(
        o.status.success(),
        "installing the wasmtime CLI: {}",
        stderr(&o)
    );
    PathBuf::from(stdout(&o).trim())
}

/// The input directory: a text file and a nested binary one.
pub(crate) fn input_dir(at: &Path) {
    std::fs::create_dir_all(at.join("nested")).expect("mkdir");
    let text: String = (1..=400)
        .map(|i| format!("line {i} of the input\n"))
        .collect();
    std::fs::write(at.join("input.txt"), text).expect("write input");
    let bin: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(at.join("nested/data.bin"), bin).expect("write data");
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).expect("copy");
        }
    }
}

/// Every path under `dir` with its kind and bytes.
pub(crate) fn tree_of(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("below")
                .display()
                .to_string();
            if e.path().is_dir() {
                stack.push(e.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).expect("read")));
            }
        }
    }
    out
}

pub(crate) fn same_trees(ours: &Path, theirs: &Path) {
    let (a, b) = (tree_of(ours), tree_of(theirs));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same paths"
    );
    for (path, bytes) in &a {
        assert!(bytes == &b[path], "{path} differs from wasmtime's");
    }
}

/// `wasmtime run --dir COPY::/data filework ARGS` on a copy of `input` at
/// `copy`: its stdout (the copy holds its final files).
pub(crate) fn wasmtime_reference(input: &Path, copy: &Path, args: &[&str]) -> String {
    copy_dir(input, copy);
    let o = run(Command::new(wasmtime_cli())
        .arg("run")
        .arg("--dir")
        .arg(format!("{}::/data", copy.display()))
        .arg(artifacts::FILEWORK)
        .args(args));
    assert!(o.status.success(), "wasmtime: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn a_task_s_files_survive_five_migrations_and_a_kill_and_match_wasmtime() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("input");
    input_dir(&input);
    let before = tree_of(&input);

    let reference = dir.path().join("wasmtime");
    let args = ["70", "120"];
    let expected = wasmtime_reference(&input, &reference, &args);

    let up = Up::start_with(3, FAST);
    let data = format!("{}::/data", input.display());
    let id = up.submit(artifacts::FILEWORK, &["--dir", &data], &args);
    // The submitted directory moves away: the workers have only what the
    // registry holds.
    let moved = dir.path().join("input-moved");
    std::fs::rename(&input, &moved).expect("move the input away");
    wait_until("the task writes", Duration::from_secs(30), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let workers = ["worker-1", "worker-2", "worker-3"];
    let mut at = workers
        .iter()
        .position(|w| task(&up, &id)["owner"] == *w)
        .expect("an owner");
    for hop in 1..=5 {
        at = (at + 1) % workers.len();
        let report = up.json(&["migrate", &id, workers[at], "--json"]);
        assert_eq!(report["to"], workers[at], "hop {hop}: {report}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // While it runs: its files as of a checkpoint taken for the asking.
    let now = up.ok(&["files", &id]);
    assert!(
        now.contains("/data/log.txt") && now.contains("/data/journal.bin"),
        "{now}"
    );
    let t = task(&up, &id);
    assert_eq!(t["state"], "running", "still running for the kill: {t}");
    assert!(t["files_bytes"].as_u64() > Some(1 << 20), "{t}");
    assert_eq!(t["files_limit"], 1u64 << 30);
    // A checkpoint of the last owner, then kill it.
    let epoch = t["epoch"].as_u64().expect("epoch");
    wait_until("a checkpoint here", Duration::from_secs(10), || {
        task(&up, &id)["checkpoint_seq"]
            .as_u64()
            .is_some_and(|s| s >> 32 == epoch)
    });
    let owner = workers[at];
    kill9(up.node(owner)["pid"].as_u64().expect("pid"));
    wait_until(
        "the task resumes elsewhere",
        Duration::from_secs(15),
        || {
            let t = task(&up, &id);
            t["owner"] != owner && t["epoch"].as_u64() > Some(epoch)
        },
    );
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait: {}", stderr(&o));
    assert_eq!(
        up.ok(&["logs", &id]),
        expected,
        "stdout differs from wasmtime's"
    );

    let out = dir.path().join("out");
    up.ok(&["files", &id, "-o", &out.display().to_string()]);
    same_trees(&out, &reference);
    let listing = up.ok(&["files", &id]);
    assert!(listing.contains("/data/work/r70.txt"), "{listing}");
    // The HTTP API lists them and serves each.
    let api = crate::api::Api::of(&up);
    let v = api.ok(&format!("/api/tasks/{id}/files"));
    assert_eq!(v["from"], "final", "{v}");
    let log = v["files"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["path"] == "/data/log.txt"))
        .unwrap_or_else(|| panic!("log.txt listed: {v}"));
    let want = std::fs::read(reference.join("log.txt")).expect("reference log");
    assert_eq!(log["len"], want.len());
    assert_eq!(
        api.bytes(&format!("/api/tasks/{id}/files/data/log.txt")),
        want
    );
    assert_eq!(
        api.bytes(&format!("/api/tasks/{id}/files/data/big.bin")),
        std::fs::read(reference.join("big.bin")).expect("reference big.bin")
    );
    // The submitted directory itself was never written.
    assert_eq!(tree_of(&moved), before);
}

#[test]
fn limits_and_host_paths_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("input");
    input_dir(&input);
    let data = format!("{}::/data", input.display());
    let up = Up::start_with(2, FAST);

    // Too large to upload.
    let e = up.fails(&[
        "submit",
        artifacts::FILEWORK,
        "--dir",
        &data,
        "--files-limit",
        "10K",
    ]);
    assert!(
        e.contains("over") || e.contains("limit of 10240 bytes"),
        "{e}"
    );

    // Within the limit at submission, over it once the task writes 1 MiB.
    let id = up.submit(
        artifacts::FILEWORK,
        &["--dir", &data, "--files-limit", "600K"],
        &["200", "20"],
    );
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "60s"]));
    assert_ne!(o.status.code(), Some(0));
    let t = task(&up, &id);
    assert_eq!(t["state"], "failed", "{t}");
    assert!(
        t["failure"]
            .as_str()
            .is_some_and(|f| f.contains("limit of 614400 bytes")),
        "{t}"
    );

    // A host path must be pinned, and does not move.
    let e = up.fails(&["submit", artifacts::FILEWORK, "--host-dir", &data]);
    assert!(e.contains("--on WORKER"), "{e}");
    let host = dir.path().join("host");
    copy_dir(&input, &host);
    let host = format!("{}::/data", host.display());
    let id = up.submit(
        artifacts::FILEWORK,
        &["--host-dir", &host, "--on", "worker-1"],
        &["400", "50"],
    );
    wait_until("the task writes", Duration::from_secs(30), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let e = up.fails(&["migrate", &id, "worker-2"]);
    assert!(e.contains("does not travel"), "{e}");
    up.ok(&["cancel", &id]);
    // A task without trees has no files to show.
    let id = up.submit(artifacts::EXIT_CODE, &[], &["0"]);
    let e = up.fails(&["files", &id]);
    assert!(e.contains("has no files"), "{e}");
}
