//! `cargo bench -p wmig --bench files`: what a task's files cost when they
//! travel with it (`wmig submit --dir LOCAL::GUEST`), on a real `wmig up`
//! cluster (registry, coordinator, 2 workers as processes on 127.0.0.1,
//! each worker with its own cache and working copies).
//!
//! The task (`filework touch`) appends one line to one file each 100 ms and
//! touches nothing else; it is submitted once with a small tree (that one
//! file) and once with the same file beside 100 MiB of other files
//! (100 × 1 MiB, distinct bytes). Per tree:
//!
//! - **submit**: wall time of `wmig submit`, which uploads the tree.
//! - **per checkpoint**: chunk bytes the registry was sent, averaged over
//!   10 periodic checkpoints (every 300 ms), and the size of the tree's
//!   listing, which every checkpoint's manifest carries. Only the changed file's last chunk should
//!   travel, whatever the tree's size.
//! - **migration**: downtime (pause on the source → first instruction on
//!   the target) and total time of `wmig migrate`, live (pre-copy: the
//!   files travel while the task runs, the pause carries what changed) and
//!   cold (`--no-precopy`: everything during the pause), and the bytes
//!   each moved. Medians of 3 moves each way.
//!
//! The same for third-party code: `archiver` (bench/corpus/rust/archiver:
//! the `tar` and `flate2` crates from crates.io) backs up a 15 MiB source
//! directory each round and restores and checks the previous backup, so it
//! rewrites ~17 MiB of files per round. And its run time (4 rounds) under
//! the wasmtime CLI on a precompiled module (`wasmtime run --dir`), under
//! `wmig run --dir` (local, no checkpoints), and as a cluster task from
//! `wmig submit --dir` to `wmig wait`, checkpointing every 300 ms.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: usize = 1 << 20;

struct Up(Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cli<'a> {
    dir: &'a Path,
    cache: &'a Path,
}

impl Cli<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wmig"));
        c.env("WMIG_CLUSTER", self.dir)
            .env("WMIG_CACHE_DIR", self.cache)
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cmd(args).output()?;
        anyhow::ensure!(
            o.status.success(),
            "wmig {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.ok(args)?)?)
    }

    fn task(&self, id: &str) -> anyhow::Result<Value> {
        self.json(&["inspect", id, "--json"])
    }

    fn seq(&self, id: &str) -> anyhow::Result<u64> {
        Ok(self.task(id)?["checkpoint_seq"].as_u64().unwrap_or(0))
    }

    fn chunks_written(&self) -> anyhow::Result<u64> {
        let v = self.json(&["registry", "stats", "--json"])?;
        v["chunks_written"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no chunks_written in {v}"))
    }
}

/// `files` files of 1 MiB of distinct pseudo-random bytes, and `log.txt`.
fn make_tree(at: &Path, files: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(at.join("bulk"))?;
    std::fs::write(at.join("log.txt"), b"start\n")?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..files {
        let mut data = vec![0u8; MIB];
        for b in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::write(at.join(format!("bulk/{i:03}.bin")), data)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn human(bytes: f64) -> String {
    if bytes < 1024.0 {
        format!("{bytes:.0} B")
    } else if bytes < MIB as f64 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / MIB as f64)
    }
}

struct Row {
    tree: String,
    submit_ms: f64,
    per_checkpoint: f64,
    manifest: f64,
    live: (f64, f64, f64),
    cold: (f64, f64, f64),
}

/// Downtime ms, total ms and bytes moved (medians) of `n` moves.
fn moves(cli: &Cli, id: &str, n: usize, cold: bool) -> anyhow::Result<(f64, f64, f64)> {
    let (mut down, mut total, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let owner = cli.task(id)?["owner"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let to = if owner == "worker-1" {
            "worker-2"
        } else {
            "worker-1"
        };
        let mut args = vec!["migrate", id, to, "--json"];
        if cold {
            args.push("--no-precopy");
        }
        let r = cli.json(&args)?;
        down.push(r["downtime_ms"].as_f64().unwrap_or(f64::NAN));
        total.push(r["total_ms"].as_f64().unwrap_or(f64::NAN));
        bytes.push(r["bytes_moved"].as_f64().unwrap_or(f64::NAN));
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok((median(down), median(total), median(bytes)))
}

fn measure(cli: &Cli, tree: &Path, label: &str, wasm: &str, args: &[&str]) -> anyhow::Result<Row> {
    let data = format!("{}::/data", tree.display());
    let t = Instant::now();
    let mut submit = vec!["submit", wasm, "--dir", &data, "--on", "worker-1", "--"];
    submit.extend_from_slice(args);
    let id = cli.ok(&submit)?.trim().to_owned();
    let submit_ms = t.elapsed().as_secs_f64() * 1e3;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.seq(&id)? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "{id}: no checkpoint in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Steady state: the first checkpoint here carried the tree's chunks
    // the worker did not know the registry held.
    std::thread::sleep(Duration::from_millis(1000));
    let (w0, s0) = (cli.chunks_written()?, cli.seq(&id)?);
    while cli.seq(&id)? < s0 + 10 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (w1, s1) = (cli.chunks_written()?, cli.seq(&id)?);
    let per_checkpoint = (w1 - w0) as f64 * 65536.0 / (s1 - s0) as f64;
    let manifest = {
        struct Nothing;
        impl wmig_host::chunks::ChunkSink for Nothing {
            fn contains(&self, _: &wmig_proto::Hash) -> bool {
                true
            }
            fn put(&mut self, _: wmig_proto::Hash, _: &[u8]) {}
        }
        let mut budget = u64::MAX;
        wmig_host::files::Scanner::new()
            .scan(tree, &mut Nothing, &mut budget, u64::MAX)?
            .encode()
            .len() as f64
    };
    let live = moves(cli, &id, 3, false)?;
    let cold = moves(cli, &id, 3, true)?;
    cli.ok(&["cancel", &id])?;
    Ok(Row {
        tree: label.into(),
        submit_ms,
        per_checkpoint,
        manifest,
        live,
        cold,
    })
}

/// `archiver`'s source directory: 40 text files of random words (15 MiB).
fn make_sources(at: &Path) -> anyhow::Result<()> {
    let dir = at.join("src/docs");
    std::fs::create_dir_all(&dir)?;
    let words: Vec<&str> =
        "alpha beta gamma delta wasm task migrate registry chunk tree file worker coordinator epoch lease"
            .split(' ')
            .collect();
    let mut x: u32 = 1;
    for i in 0..40 {
        let mut text = String::new();
        for _ in 0..60_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
            text.push_str(words[x as usize % words.len()]);
            text.push(' ');
        }
        std::fs::write(dir.join(format!("{i:02}.txt")), text)?;
    }
    Ok(())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Build `archiver` for wasm32-wasip1 from the corpus workspace.
fn build_archiver() -> anyhow::Result<PathBuf> {
    let target = repo().join("target/corpus-files");
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-q",
            "--target",
            "wasm32-wasip1",
        ])
        .args(["-p", "archiver", "--manifest-path"])
        .arg(repo().join("bench/corpus/rust/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    anyhow::ensure!(status.success(), "building archiver failed");
    Ok(target.join("wasm32-wasip1/release/archiver.wasm"))
}

fn wasmtime_cli() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return Ok(p.into());
    }
    let out = Command::new(repo().join("scripts/install-wasmtime-ref"))
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "installing the wasmtime CLI failed");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Seconds of `cmd` run to success, with a fresh copy of the sources.
fn timed(cmd: &mut Command, fresh: &Path, sources: &Path) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(fresh);
    copy_dir(sources, fresh)?;
    let t = Instant::now();
    let o = cmd.output()?;
    let s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(s)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else {
            std::fs::copy(e.path(), t)?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::TempDir::new()?;
    let root = tmp.path();
    let dir = root.join("cluster");
    let cache = root.join("cache");
    let small = root.join("small");
    let big = root.join("big");
    make_tree(&small, 0)?;
    make_tree(&big, 100)?;
    let sources = root.join("sources");
    make_sources(&sources)?;
    let archiver = build_archiver()?;
    let archiver = archiver.display().to_string();
    let wasm = wmig_tests::artifacts::FILEWORK;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wmig"))
        .env("WMIG_CLUSTER", &dir)
        .env("WMIG_CACHE_DIR", &cache)
        .env("WMIG_LOG", "warn")
        .args(["up", "--workers", "2", "--checkpoint-every", "300ms"])
        .args(["--no-restart"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let _up = Up(child);
    let mut lines = BufReader::new(out).lines();
    anyhow::ensure!(
        matches!(lines.next(), Some(Ok(l)) if l == "ready"),
        "wmig up did not get ready"
    );
    let cli = Cli {
        dir: &dir,
        cache: &cache,
    };
    let touch = ["touch", "100000", "100"];
    let rows = [
        measure(&cli, &small, "filework: 1 file (6 B)", wasm, &touch)?,
        measure(&cli, &big, "filework: 1 file + 100 MiB", wasm, &touch)?,
        measure(
            &cli,
            &sources,
            "archiver (tar + flate2): 15 MiB",
            &archiver,
            &["100000"],
        )?,
    ];

    // Run time of 4 rounds of archiver, medians of 3.
    let wasmtime = wasmtime_cli()?;
    let cwasm = root.join("archiver.cwasm");
    let o = Command::new(&wasmtime)
        .args(["compile", &archiver, "-o"])
        .arg(&cwasm)
        .output()?;
    anyhow::ensure!(o.status.success(), "wasmtime compile failed");
    let fresh = root.join("fresh");
    let dir_arg = format!("{}::/data", fresh.display());
    // Warm wmig's module cache first.
    timed(
        cli.cmd(&["run", "--dir", &dir_arg, &archiver, "1"])
            .stdout(Stdio::null()),
        &fresh,
        &sources,
    )?;
    let (mut wt, mut wr, mut wc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        wt.push(timed(
            Command::new(&wasmtime)
                .args(["run", "--allow-precompiled", "--dir", &dir_arg])
                .arg(&cwasm)
                .arg("4"),
            &fresh,
            &sources,
        )?);
        wr.push(timed(
            &mut cli.cmd(&["run", "--dir", &dir_arg, &archiver, "4"]),
            &fresh,
            &sources,
        )?);
        let t = Instant::now();
        let id = cli
            .ok(&[
                "submit",
                &archiver,
                "--dir",
                &format!("{}::/data", sources.display()),
                "--",
                "4",
            ])?
            .trim()
            .to_owned();
        cli.ok(&["wait", &id, "--timeout", "300s"])?;
        wc.push(t.elapsed().as_secs_f64());
    }
    let (wt, wr, wc) = (median(wt), median(wr), median(wc));
    println!();
    println!(
        "task files: one file appended every 100 ms; checkpoints every 300 ms; medians of 3 moves"
    );
    println!(
        "| tree | submit | sent per checkpoint | tree listing | live downtime | live total | live moved | cold downtime | cold total | cold moved |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} ms | {} | {} | {:.1} ms | {:.0} ms | {} | {:.1} ms | {:.0} ms | {} |",
            r.tree,
            r.submit_ms,
            human(r.per_checkpoint),
            human(r.manifest),
            r.live.0,
            r.live.1,
            human(r.live.2),
            r.cold.0,
            r.cold.1,
            human(r.cold.2),
        );
    }
    println!();
    println!(
        "archiver (tar + flate2 from crates.io), 4 rounds over a 15 MiB directory, medians of 3"
    );
    println!("| wasmtime CLI (precompiled) | wmig run | ratio | cluster task (submit → wait, checkpoints every 300 ms) | ratio |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {wt:.2} s | {wr:.2} s | {:.2}× | {wc:.2} s | {:.2}× |",
        wr / wt,
        wc / wt
    );
    Ok(())
}
