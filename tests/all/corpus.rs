//! The benchmark corpus (`scripts/build-corpus`: Rust programs using
//! crates.io libraries, a Go program, the Lua interpreter in C — none written
//! for wmig) under forced restore: checkpointed and restored into a fresh
//! engine ~25 times per run, each must print exactly what plain
//! wasmtime + wasmtime-wasi prints and exit the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::support::{run, stat_u64, stats, stderr, stdout, wmig};

/// Smaller arguments than the benchmark's, so that the whole corpus under
/// forced restore takes seconds; the code paths are the same. The flag says
/// whether the program does the same work on every run: Rust's `HashMap`
/// and Go's maps are seeded from `random_get`, Lua seeds its string hashes
/// from the time, and the sleeper formats measured times: their fuel differs
/// between any two runs.
const TEST_ARGS: [(&str, &str, bool); 11] = [
    ("nbody", "20000", true),
    ("intloops", "1", true),
    ("alloc", "3", false),
    ("libs", "1", false),
    ("recursion", "10", true),
    ("bigmem", "2 1", true),
    ("writer", "20000", true),
    ("sleeper", "3 2 100000", false),
    ("io", "2000", true),
    ("go", "10", false),
    ("c", "1", false),
];

fn corpus_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the repository")
        .to_path_buf();
    let dir = repo.join("target/corpus");
    if !dir.join("corpus.tsv").exists() {
        let status = Command::new(repo.join("scripts/build-corpus"))
            .arg(&dir)
            .status()
            .expect("run scripts/build-corpus");
        assert!(status.success(), "scripts/build-corpus failed");
    }
    dir
}

#[test]
fn corpus_survives_a_restore_at_every_checkpoint() {
    let dir = corpus_dir();
    let listed = std::fs::read_to_string(dir.join("corpus.tsv")).expect("corpus.tsv");
    let baseline = wmig_host::baseline::Baseline::new().expect("baseline engine");
    let tmp = TempDir::new().expect("tempdir");
    for (name, args, deterministic) in TEST_ARGS {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{name}\t"))),
            "{name} is missing from the corpus (did scripts/build-corpus skip it?)"
        );
        let module = dir.join(format!("{name}.wasm"));
        let args: Vec<String> = args.split_whitespace().map(String::from).collect();
        let mut argv = vec![format!("{name}.wasm")];
        argv.extend(args.iter().cloned());
        let wasm = std::fs::read(&module).expect("module");
        let compiled = baseline.compile(&wasm).expect("plain compile");
        let reference = baseline.run(&compiled, &argv, &[], &[]).expect("plain run");

        let plain_stats = tmp.path().join(format!("{name}-plain.json"));
        let plain = run(wmig()
            .arg("run")
            .arg("--stats-json")
            .arg(&plain_stats)
            .arg(&module)
            .args(&args));
        let plain_s = stats(&plain_stats);
        assert_eq!(
            plain_s["unwind"], "wmig",
            "{name}: fell back to Asyncify instead of wmig's own unwind transform"
        );
        let fuel = stat_u64(&plain_s, "fuel");
        let yield_fuel = (fuel / 25).clamp(1_000, 1_000_000).to_string();
        let restored_stats = tmp.path().join(format!("{name}-restored.json"));
        let restored = run(wmig()
            .arg("run")
            .args(["--yield-fuel", &yield_fuel])
            .args(["--checkpoint-every", "1", "--restore-each-checkpoint"])
            .arg("--stats-json")
            .arg(&restored_stats)
            .arg(&module)
            .args(&args));
        let expected = String::from_utf8_lossy(&reference.stdout);
        assert_eq!(
            stdout(&plain),
            expected,
            "{name}: wmig run differs from wasmtime"
        );
        assert_eq!(
            stdout(&restored),
            expected,
            "{name}: output differs after restores; stderr: {}",
            stderr(&restored)
        );
        assert_eq!(
            restored.status.code(),
            Some(reference.exit_code),
            "{name}: exit code"
        );
        assert_eq!(
            plain.status.code(),
            Some(reference.exit_code),
            "{name}: exit code"
        );
        let s = stats(&restored_stats);
        assert!(
            stat_u64(&s, "restores") >= 2,
            "{name}: expected several restores, stats {s}"
        );
        if deterministic {
            assert_eq!(
                stat_u64(&s, "fuel"),
                fuel,
                "{name}: fuel accounting changed across restores"
            );
        }
    }
}
