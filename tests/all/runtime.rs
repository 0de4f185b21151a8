//! The runtime core through `wmig run` / `wmig resume`: every example task
//! gives byte-identical output and exit code when it is checkpointed and
//! restored into a fresh engine at every yield; a stop/resume pair across
//! processes reproduces the full output; bad input is refused clearly.

use std::path::{Path, PathBuf};
use std::process::Output;

use tempfile::TempDir;
use wmig_tests::{artifacts, inputs};

use crate::support::{run, stat_u64, stats, stderr, stdout, wmig};

/// A task with the arguments and files it needs.
struct Case {
    name: &'static str,
    module: &'static str,
    args: Vec<String>,
    data: Option<TempDir>,
}

impl Case {
    fn new(name: &'static str, module: &'static str, args: &[&str]) -> Self {
        Case {
            name,
            module,
            args: args.iter().map(|s| s.to_string()).collect(),
            data: None,
        }
    }

    /// A fresh copy of the task's data dir, so every run starts from the same files.
    fn fresh_dir(&self) -> Option<TempDir> {
        let src = self.data.as_ref()?;
        let dst = TempDir::new().expect("tempdir");
        for entry in std::fs::read_dir(src.path())
            .expect("read data dir")
            .flatten()
        {
            std::fs::copy(entry.path(), dst.path().join(entry.file_name())).expect("copy input");
        }
        Some(dst)
    }

    /// `wmig run <extra> MODULE ARGS` in a fresh data dir; returns the output
    /// and the data dir (to compare output files).
    fn run(&self, extra: &[&str]) -> (Output, Option<TempDir>) {
        let dir = self.fresh_dir();
        let mut cmd = wmig();
        cmd.arg("run").args(extra);
        if let Some(d) = &dir {
            cmd.arg("--dir")
                .arg(format!("{}::/data", d.path().display()));
        }
        cmd.arg(self.module).args(&self.args);
        (run(&mut cmd), dir)
    }
}

fn cases() -> Vec<Case> {
    let mut fileio = Case::new(
        "fileio",
        artifacts::FILEIO,
        &["/data/input.txt", "/data/output.txt", "40"],
    );
    let data = TempDir::new().expect("tempdir");
    std::fs::write(data.path().join("input.txt"), inputs::fileio_input()).expect("write input");
    fileio.data = Some(data);
    vec![
        Case::new("counter", artifacts::COUNTER, &[]),
        Case::new("sieve", artifacts::SIEVE, &[]),
        Case::new("nbody", artifacts::NBODY, &["100000"]),
        Case::new("bigheap", artifacts::BIGHEAP, &["72"]),
        Case::new("recursion", artifacts::RECURSION, &["5000", "100"]),
        fileio,
        Case::new("sdk_demo", artifacts::SDK_DEMO, &[]),
        Case::new("exit_code", artifacts::EXIT_CODE, &["7"]),
        Case::new("args_env", artifacts::ARGS_ENV, &["alpha", "--beta", "γ"]),
    ]
}

fn dir_contents(dir: &Option<TempDir>) -> Vec<(String, Vec<u8>)> {
    let Some(dir) = dir else { return Vec::new() };
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read file"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_task_survives_a_restore_at_every_checkpoint() {
    let tmp = TempDir::new().expect("tempdir");
    for case in cases() {
        let plain_stats = tmp.path().join(format!("{}-plain.json", case.name));
        let (plain, plain_dir) = case.run(&["--stats-json", &plain_stats.to_string_lossy()]);
        assert!(
            plain.status.code().is_some(),
            "{}: plain run died: {}",
            case.name,
            stderr(&plain)
        );
        let fuel = stat_u64(&stats(&plain_stats), "fuel");
        // Aim for ~25 migrations per task whatever its length.
        let yield_fuel = (fuel / 25).clamp(1_000, 1_000_000).to_string();

        let mig_stats = tmp.path().join(format!("{}-mig.json", case.name));
        let (migrated, mig_dir) = case.run(&[
            "--yield-fuel",
            &yield_fuel,
            "--checkpoint-every",
            "1",
            "--restore-each-checkpoint",
            "--stats-json",
            &mig_stats.to_string_lossy(),
        ]);
        let s = stats(&mig_stats);
        let name = case.name;
        assert_eq!(
            stdout(&migrated),
            stdout(&plain),
            "{name}: stdout differs after restores"
        );
        assert_eq!(
            stderr(&migrated),
            stderr(&plain),
            "{name}: stderr differs after restores"
        );
        assert_eq!(
            migrated.status.code(),
            plain.status.code(),
            "{name}: exit code differs"
        );
        assert_eq!(
            dir_contents(&mig_dir),
            dir_contents(&plain_dir),
            "{name}: output files differ"
        );
        if fuel > 10_000 {
            assert!(
                stat_u64(&s, "restores") >= 5,
                "{name}: expected several restores: {s}"
            );
            assert_eq!(
                stat_u64(&s, "checkpoints"),
                stat_u64(&s, "restores"),
                "{name}: {s}"
            );
        }
        assert_eq!(
            stat_u64(&s, "fuel"),
            fuel,
            "{name}: fuel accounting must survive restores"
        );
    }
}

#[test]
fn output_matches_plain_wasmtime() {
    let baseline = wmig_host::baseline::Baseline::new().expect("baseline engine");
    for case in cases() {
        let dir = case.fresh_dir();
        let preopens: Vec<(PathBuf, String)> = dir
            .iter()
            .map(|d| (d.path().to_path_buf(), "/data".to_string()))
            .collect();
        let wasm = std::fs::read(case.module).expect("module");
        let module = baseline.compile(&wasm);
        let module = match module {
            Ok(m) => m,
            Err(e) => panic!("{}: {e}", case.name),
        };
        let mut argv = vec![Path::new(case.module)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()];
        argv.extend(case.args.iter().cloned());
        if case.name == "sdk_demo" {
            continue; // needs the wmig.* imports plain wasmtime lacks
        }
        let reference = baseline
            .run(&module, &argv, &[], &preopens)
            .expect("plain run");
        let (ours, _) = case.run(&[]);
        assert_eq!(
            stdout(&ours),
            String::from_utf8_lossy(&reference.stdout),
            "{}",
            case.name
        );
        assert_eq!(
            ours.status.code(),
            Some(reference.exit_code),
            "{}",
            case.name
        );
    }
}

#[test]
fn stop_and_resume_in_another_process_reproduces_the_output() {
    let tmp = TempDir::new().expect("tempdir");
    for case in cases()
        .into_iter()
        .filter(|c| ["counter", "nbody", "fileio", "sieve"].contains(&c.name))
    {
        let name = case.name;
        let full_stats = tmp.path().join(format!("{name}.json"));
        let (full, full_dir) = case.run(&[
            "--yield-fuel",
            "20000",
            "--stats-json",
            &full_stats.to_string_lossy(),
        ]);
        let yields = stat_u64(&stats(&full_stats), "yields");
        assert!(
            yields >= 4,
            "{name}: only {yields} yields; use a larger workload"
        );
        let stop_at = (yields / 2).to_string();
        let ckpt = tmp.path().join(format!("{name}.ckpt"));
        let dir = case.fresh_dir();
        let mut cmd = wmig();
        cmd.args([
            "run",
            "--yield-fuel",
            "20000",
            "--stop-at",
            &stop_at,
            "--checkpoint-out",
        ])
        .arg(&ckpt);
        if let Some(d) = &dir {
            cmd.arg("--dir")
                .arg(format!("{}::/data", d.path().display()));
        }
        let first = run(cmd.arg(case.module).args(&case.args));
        assert_eq!(first.status.code(), Some(0), "{name}: {}", stderr(&first));
        assert!(ckpt.exists(), "{name}: no checkpoint written");

        let mut cmd = wmig();
        cmd.args(["resume", "--yield-fuel", "20000"])
            .arg(&ckpt)
            .arg("--module")
            .arg(case.module);
        if let Some(d) = &dir {
            cmd.arg("--dir")
                .arg(format!("{}::/data", d.path().display()));
        }
        let second = run(&mut cmd);
        assert_eq!(
            second.status.code(),
            full.status.code(),
            "{name}: {}",
            stderr(&second)
        );
        let joined = stdout(&first) + &stdout(&second);
        assert_eq!(
            joined,
            stdout(&full),
            "{name}: output before + after the checkpoint"
        );
        assert!(
            !stdout(&second).is_empty(),
            "{name}: resume printed nothing"
        );
        assert_eq!(dir_contents(&dir), dir_contents(&full_dir), "{name}: files");
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let tmp = TempDir::new().expect("tempdir");
    // Not wasm.
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").expect("write");
    let out = run(wmig().arg("run").arg(&junk));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a WebAssembly module"),
        "{}",
        stderr(&out)
    );

    // A checkpoint of counter.
    let ckpt = tmp.path().join("counter.ckpt");
    let out = run(wmig()
        .args([
            "run",
            "--yield-fuel",
            "20000",
            "--stop-at",
            "3",
            "--checkpoint-out",
        ])
        .arg(&ckpt)
        .arg(artifacts::COUNTER));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // ... refused for another module, naming both hashes.
    let out = run(wmig()
        .arg("resume")
        .arg(&ckpt)
        .arg("--module")
        .arg(artifacts::SIEVE));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let counter_hash = blake3::hash(&std::fs::read(artifacts::COUNTER).expect("read")).to_hex();
    let sieve_hash = blake3::hash(&std::fs::read(artifacts::SIEVE).expect("read")).to_hex();
    assert!(
        err.contains(counter_hash.as_str()) && err.contains(sieve_hash.as_str()),
        "{err}"
    );

    let bytes = std::fs::read(&ckpt).expect("read checkpoint");
    let variants: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "corrupt"),
        (
            "bitflip",
            {
                let mut b = bytes.clone();
                let mid = b.len() / 3;
                b[mid] ^= 0x04;
                b
            },
            "integrity hash",
        ),
        (
            "version",
            {
                let mut b = bytes.clone();
                b[8] = 0x7f;
                b
            },
            "format version 127",
        ),
        ("empty", Vec::new(), "checkpoint is empty"),
    ];
    for (what, data, expect) in variants {
        let path = tmp.path().join(format!("{what}.ckpt"));
        std::fs::write(&path, data).expect("write");
        let out = run(wmig()
            .arg("resume")
            .arg(&path)
            .arg("--module")
            .arg(artifacts::COUNTER));
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(stderr(&out).contains(expect), "{what}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

/// wmig must run every program plain wasmtime runs, although the rewrite
/// makes frames larger: find the deepest `recursion` plain wasmtime (default
/// 512 KiB wasm stack) manages, then run exactly that rewritten, pausing and
/// restoring deep inside the recursion.
#[test]
fn recursion_as_deep_as_plain_wasmtime_allows() {
    let baseline = wmig_host::baseline::Baseline::new().expect("baseline");
    let wasm = std::fs::read(artifacts::RECURSION).expect("module");
    let module = baseline.compile(&wasm).expect("compile");
    let plain = |depth: u32| {
        let argv = vec![
            "recursion.wasm".to_string(),
            depth.to_string(),
            "20".to_string(),
        ];
        baseline.run(&module, &argv, &[], &[]).expect("plain run")
    };
    // Bisect the deepest depth that does not exhaust plain wasmtime's stack.
    let (mut ok, mut fail) = (1_000u32, 200_000u32);
    assert_eq!(plain(ok).exit_code, 0);
    assert!(
        plain(fail).trap.is_some(),
        "plain wasmtime should not manage depth {fail}"
    );
    while fail - ok > 1 {
        let mid = ok + (fail - ok) / 2;
        if plain(mid).exit_code == 0 {
            ok = mid
        } else {
            fail = mid
        }
    }
    let reference = plain(ok);
    let depth = ok.to_string();

    let tmp = TempDir::new().expect("tempdir");
    let stats_path = tmp.path().join("stats.json");
    let out = run(wmig()
        .args([
            "run",
            "--yield-fuel",
            "3000",
            "--checkpoint-every",
            "1",
            "--restore-each-checkpoint",
        ])
        .arg("--stats-json")
        .arg(&stats_path)
        .arg(artifacts::RECURSION)
        .args([depth.as_str(), "20"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "depth {depth}: {}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        String::from_utf8_lossy(&reference.stdout),
        "depth {depth}"
    );
    let s = stats(&stats_path);
    assert!(stat_u64(&s, "restores") >= 40, "{s}");
}
