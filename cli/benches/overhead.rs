//! `cargo bench -p wmig --bench overhead`: what being migratable costs an
//! ordinary program, against the reference `wasmtime` CLI.
//!
//! The corpus is programs nobody wrote for wmig (`scripts/build-corpus`:
//! crates.io libraries, a Go program, a C interpreter from a PyPI sdist,
//! plus tight loops, recursion and memory-heavy tasks) and the example tasks.
//! For each program:
//!
//! - **wasmtime s / wmig s / ratio**: whole processes, medians of alternating
//!   runs: `wasmtime run --allow-precompiled` of the module precompiled by
//!   `wasmtime compile`, against `wmig run` with a warm cache. This is what a
//!   user sees.
//! - **cost split** (in-process, same engine settings, ratios to the
//!   uninstrumented module): the yield checks alone; the whole rewrite as
//!   rewriter 2 did it (Binaryen Asyncify, for comparison); the current
//!   rewrite (wmig's own unwind transform); and the current rewrite under
//!   wmig's real host (its yield import, usage publishing): the last step is
//!   the host calls' share; **after a restore**: the same run paused at its
//!   first yield, checkpointed and restored into a fresh instance, timed
//!   from the restore to the end (frames that were on the stack finish in
//!   their rewind bodies).
//! - **yields**: host-visible yields per run (default yield fuel).
//! - **rewrite ms**: validation + rewrite, uncached; **compile ms**: wasmtime
//!   compiling the rewritten module (in brackets: the original); **rewind
//!   compile ms**: compiling the rewind bodies, paid when a task first
//!   resumes (workers start it in the background).
//! - **worst pause ms**: a pause requested at random moments, from the
//!   request to the task standing still at a yield point (max of 8).
//!
//! With `WMIG_BENCH_KNOBS=1` it also measures the rewrite's knobs on every
//! program (rewriter 1, leaf ticks off, Binaryen levels).
//!
//! Environment: `WMIG_CORPUS` (default `target/corpus`, built when missing),
//! `WASMTIME` (default: `scripts/install-wasmtime-ref`), `WMIG_BENCH_REPS`
//! (default 5), `WMIG_BENCH_FILTER` (substring of program names).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wmig_host::baseline::Baseline;
use wmig_host::local::{SinkFactory, WasiSpec};
use wmig_host::wasi::OutputSink;
use wmig_host::{Outcome, Runtime, RuntimeConfig, Task, TaskConfig};
use wmig_tests::artifacts;

struct Program {
    name: String,
    wasm: PathBuf,
    args: Vec<String>,
    what: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the repository")
        .to_path_buf()
}

fn corpus() -> Vec<Program> {
    let dir = std::env::var_os("WMIG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/corpus"));
    let tsv = dir.join("corpus.tsv");
    if !tsv.exists() {
        eprintln!("building the corpus into {} ...", dir.display());
        let ok = Command::new(repo().join("scripts/build-corpus"))
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "scripts/build-corpus failed");
    }
    let text = std::fs::read_to_string(&tsv).expect("corpus.tsv");
    let mut out: Vec<Program> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Program {
                name: f[0].to_string(),
                wasm: dir.join(f.get(1).copied().unwrap_or_default()),
                args: f
                    .get(2)
                    .map(|a| a.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
                what: f.get(3).copied().unwrap_or_default().to_string(),
            }
        })
        .collect();
    for (name, path, args) in [
        ("task:nbody", artifacts::NBODY, "2000000"),
        ("task:sieve", artifacts::SIEVE, "30000000"),
        ("task:recursion", artifacts::RECURSION, "5000 4000"),
        ("task:counter", artifacts::COUNTER, "200000000"),
    ] {
        out.push(Program {
            name: name.into(),
            wasm: path.into(),
            args: args.split_whitespace().map(String::from).collect(),
            what: "wmig's own example task".into(),
        });
    }
    if let Ok(filter) = std::env::var("WMIG_BENCH_FILTER") {
        out.retain(|p| p.name.contains(&filter));
    }
    out
}

fn wasmtime_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return p.into();
    }
    let out = Command::new(repo().join("scripts/install-wasmtime-ref"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/install-wasmtime-ref");
    assert!(out.status.success(), "installing the wasmtime CLI failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let s = t.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?} failed: {status}");
    s
}

#[derive(Clone, Default)]
struct Discard;
impl OutputSink for Discard {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

fn sinks() -> SinkFactory {
    Arc::new(|| {
        (
            Box::new(Discard) as Box<dyn OutputSink>,
            Box::new(Discard) as Box<dyn OutputSink>,
        )
    })
}

struct Row {
    name: String,
    what: String,
    wasmtime: f64,
    wmig: f64,
    split: Split,
    pause_ms: f64,
}

/// In-process ratios to the uninstrumented module: the yield checks alone,
/// the whole rewrite as rewriter 2 (Asyncify) and as the current rewriter,
/// and the current one under wmig's host; rewrite and compile times.
struct Split {
    checks: f64,
    asyncify: f64,
    full: f64,
    host: f64,
    /// After a restore at the first yield (the rest of the run).
    resumed: f64,
    yields: u64,
    rewrite_ms: u64,
    compile_ms: u64,
    plain_compile_ms: u64,
    rewind_compile_ms: u64,
    pausable: usize,
    functions: usize,
}

/// In-process ratios of each rewrite stage to the uninstrumented module.
fn split(p: &Program, reps: usize) -> Split {
    let wasm = std::fs::read(&p.wasm).expect("module");
    let mut argv = vec![format!("{}.wasm", p.name)];
    argv.extend(p.args.iter().cloned());

    let t = Instant::now();
    let full = wmig_rewrite::instrument(&wasm).expect("rewrite");
    let rewrite_ms = t.elapsed().as_millis() as u64;
    let injected =
        wmig_rewrite::yields::inject(&wasm, wmig_rewrite::REWRITER_VERSION).expect("checks");
    let asyncified = wmig_rewrite::instrument_version(&wasm, 2).expect("rewriter 2");

    let engine = Baseline::like_wmig().expect("engine");
    let t = Instant::now();
    let plain = engine.compile(&wasm).expect("compile plain");
    let plain_compile_ms = t.elapsed().as_millis() as u64;
    let mut compile_ms = 0;
    let stages: Vec<wasmtime::Module> = [&injected.bytes, &asyncified.bytes, &full.bytes]
        .into_iter()
        .map(|b| {
            let t = Instant::now();
            let m = engine.compile(b).expect("compile stage");
            compile_ms = t.elapsed().as_millis() as u64;
            m
        })
        .collect();
    // Paid once per module and machine, when a task first resumes (workers
    // start it in the background as soon as they have the module).
    let rewind_compile_ms = full.rewind.as_ref().map_or(0, |r| {
        let t = Instant::now();
        engine.compile(r).expect("compile rewind module");
        t.elapsed().as_millis() as u64
    });
    let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
    let prepared = rt.load(&wasm).expect("load");
    let spec = WasiSpec {
        args: argv.clone(),
        ..WasiSpec::default()
    };

    prepared.prepare_rewind().expect("rewind module");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 6];
    let mut yields = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let r = engine.run(&plain, &argv, &[], &[]).expect("plain");
        times[0].push(t.elapsed().as_secs_f64());
        assert_eq!(r.exit_code, 0, "{} failed uninstrumented", p.name);
        for (i, m) in stages.iter().enumerate() {
            let t = Instant::now();
            let r = engine.run_instrumented(m, &argv).expect("stage");
            times[i + 1].push(t.elapsed().as_secs_f64());
            assert_eq!(
                r.exit_code, 0,
                "{} failed at stage {i}: {:?}",
                p.name, r.trap
            );
        }
        let t = Instant::now();
        let mut task =
            Task::start(&rt, &prepared, TaskConfig::new(spec.config(&sinks()))).expect("start");
        let out = task.run().expect("run");
        times[4].push(t.elapsed().as_secs_f64());
        assert_eq!(out, Outcome::Exited(0), "{} failed under wmig", p.name);
        yields = task.counters().yields;

        // Paused at its first yield, checkpointed and restored: the frames on
        // the stack then run in their rewind bodies (until a loop's back edge
        // takes them to its fast copy, or they return).
        let mut config = TaskConfig::new(spec.config(&sinks()));
        config.policy = Some(Box::new(|y| y == 1));
        let mut task = Task::start(&rt, &prepared, config).expect("start");
        if task.run().expect("run") == Outcome::Exited(0) {
            let whole = times[4].last().copied().unwrap_or(0.0);
            times[5].push(whole);
            continue;
        }
        let mut chunks = wmig_host::MemChunks::new();
        let captured = task
            .capture(
                &mut chunks,
                wmig_host::CaptureMeta {
                    task: None,
                    seq: 1,
                    epoch: 0,
                },
            )
            .expect("capture");
        drop(task);
        let mut task = Task::restore(
            &rt,
            &prepared,
            TaskConfig::new(spec.config(&sinks())),
            &captured.manifest,
            &chunks,
        )
        .expect("restore");
        let t = Instant::now();
        let out = task.run().expect("resumed run");
        times[5].push(t.elapsed().as_secs_f64());
        assert_eq!(out, Outcome::Exited(0), "{} failed after a restore", p.name);
    }
    let m: Vec<f64> = times.into_iter().map(median).collect();
    Split {
        checks: m[1] / m[0],
        asyncify: m[2] / m[0],
        full: m[3] / m[0],
        host: m[4] / m[0],
        resumed: m[5] / m[0],
        yields,
        rewrite_ms,
        compile_ms,
        plain_compile_ms,
        rewind_compile_ms,
        pausable: full.stats.pausable_functions,
        functions: full.stats.functions,
    }
}

/// The rewrite's knobs, each measured on the whole corpus (in-process, same
/// engine, ratio to the uninstrumented module; rewrite ms uncached).
const KNOBS: [(&str, u32, bool, wmig_rewrite::asyncify::Levels); 5] = {
    use wmig_rewrite::asyncify::Levels;
    [
        ("rewriter 1", 1, false, Levels::CURRENT),
        ("2, no leaf ticks", 2, false, Levels::CURRENT),
        ("rewriter 2", 2, true, Levels::CURRENT),
        (
            "2, no -O2 after",
            2,
            true,
            Levels {
                asyncify: 2,
                after: None,
            },
        ),
        (
            "2, Asyncify -O1, no -O2",
            2,
            true,
            Levels {
                asyncify: 1,
                after: None,
            },
        ),
    ]
};

fn knobs(p: &Program, reps: usize) -> Vec<(f64, u64)> {
    let wasm = std::fs::read(&p.wasm).expect("module");
    let mut argv = vec![format!("{}.wasm", p.name)];
    argv.extend(p.args.iter().cloned());
    let engine = Baseline::like_wmig().expect("engine");
    let plain = engine.compile(&wasm).expect("compile plain");
    let time = |run: &dyn Fn()| {
        median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    run();
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let base = time(&|| {
        engine.run(&plain, &argv, &[], &[]).expect("plain");
    });
    KNOBS
        .iter()
        .map(|(_, version, leaf, levels)| {
            let t = Instant::now();
            let injected =
                wmig_rewrite::yields::inject_with(&wasm, *version, *leaf).expect("checks");
            let bytes = wmig_rewrite::asyncify::run_with(
                &injected.bytes,
                injected.pausable.as_deref(),
                *levels,
                *version,
            )
            .expect("asyncify");
            let ms = t.elapsed().as_millis() as u64;
            let m = engine.compile(&bytes).expect("compile variant");
            let r = time(&|| {
                let out = engine.run_instrumented(&m, &argv).expect("variant");
                assert_eq!(out.exit_code, 0, "{} failed", p.name);
            });
            (r / base, ms)
        })
        .collect()
}

/// Worst time from a pause request to the task standing still.
fn pause_latency(p: &Program) -> f64 {
    let wasm = std::fs::read(&p.wasm).expect("module");
    let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
    let prepared = rt.load(&wasm).expect("load");
    // Resuming compiles the rewind bodies the first time; that is not pause
    // latency (workers compile them ahead).
    prepared.prepare_rewind().expect("rewind module");
    let mut argv = vec![format!("{}.wasm", p.name)];
    argv.extend(p.args.iter().cloned());
    let spec = WasiSpec {
        args: argv,
        ..WasiSpec::default()
    };
    let mut task =
        Task::start(&rt, &prepared, TaskConfig::new(spec.config(&sinks()))).expect("start");
    let flag = task.pause_flag();
    let requested: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut worst: f64 = 0.0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(5 + seed % 40);
        let (flag2, req2) = (flag.clone(), requested.clone());
        let requester = std::thread::spawn(move || {
            std::thread::sleep(delay);
            *req2.lock().expect("lock") = Some(Instant::now());
            flag2.store(true, Ordering::SeqCst);
        });
        let out = task.run().expect("run");
        let paused_at = Instant::now();
        requester.join().expect("requester");
        match out {
            Outcome::Paused(_) => {
                if let Some(t) = requested.lock().expect("lock").take() {
                    worst = worst.max(paused_at.saturating_duration_since(t).as_secs_f64() * 1e3);
                }
            }
            Outcome::Exited(_) => break,
        }
    }
    flag.store(false, Ordering::SeqCst);
    worst
}

fn main() {
    let reps: usize = std::env::var("WMIG_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let wmig = PathBuf::from(env!("CARGO_BIN_EXE_wmig"));
    let wasmtime = wasmtime_cli();
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let mut rows = Vec::new();
    for p in corpus() {
        eprintln!("{} ...", p.name);
        let cwasm = work
            .path()
            .join(format!("{}.cwasm", p.name.replace(':', "_")));
        let ok = Command::new(&wasmtime)
            .arg("compile")
            .arg(&p.wasm)
            .arg("-o")
            .arg(&cwasm)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "wasmtime compile {} failed", p.wasm.display());
        let wasmtime_cmd = || {
            let mut c = Command::new(&wasmtime);
            c.arg("run")
                .arg("--allow-precompiled")
                .arg(&cwasm)
                .args(&p.args);
            c
        };
        let wmig_cmd = || {
            let mut c = Command::new(&wmig);
            c.env("WMIG_CACHE_DIR", &cache)
                .arg("run")
                .arg(&p.wasm)
                .args(&p.args);
            c
        };
        // Warm both: the rewrite and compile caches, the page cache.
        timed(&mut wmig_cmd());
        timed(&mut wasmtime_cmd());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            a.push(timed(&mut wasmtime_cmd()));
            b.push(timed(&mut wmig_cmd()));
        }
        let (wasmtime_s, wmig_s) = (median(a), median(b));
        let p2 = Program {
            name: p.name.clone(),
            wasm: p.wasm.clone(),
            args: p.args.clone(),
            what: String::new(),
        };
        let (split, pause_ms) =
            wmig_host::on_guest_thread(move || (split(&p2, reps.min(3)), pause_latency(&p2)))
                .expect("bench thread");
        rows.push(Row {
            name: p.name,
            what: p.what,
            wasmtime: wasmtime_s,
            wmig: wmig_s,
            split,
            pause_ms,
        });
    }

    println!("\nRun time of `wmig run` against `wasmtime run --allow-precompiled` (whole processes, median of {reps})");
    println!("| program | wasmtime s | wmig s | ratio | checks | rewriter 2 (Asyncify) | rewriter 3 | + host | after a restore | yields | pausable fns | rewrite ms | compile ms (plain) | rewind compile ms | worst pause ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut logs = Vec::new();
    let mut max: f64 = 0.0;
    for r in &rows {
        let ratio = r.wmig / r.wasmtime;
        max = max.max(ratio);
        logs.push(ratio.ln());
        println!(
            "| {} | {:.3} | {:.3} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {} | {}/{} | {} | {} ({}) | {} | {:.1} |",
            r.name,
            r.wasmtime,
            r.wmig,
            ratio,
            r.split.checks,
            r.split.asyncify,
            r.split.full,
            r.split.host,
            r.split.resumed,
            r.split.yields,
            r.split.pausable,
            r.split.functions,
            r.split.rewrite_ms,
            r.split.compile_ms,
            r.split.plain_compile_ms,
            r.split.rewind_compile_ms,
            r.pause_ms
        );
    }
    let geomean = (logs.iter().sum::<f64>() / logs.len().max(1) as f64).exp();
    println!("\ngeometric mean {geomean:.2}× (goal ≤ 1.25×), max {max:.2}× (goal ≤ 1.6×)");
    if let Some(r) = rows
        .iter()
        .max_by_key(|r| r.split.rewrite_ms + r.split.compile_ms)
    {
        println!(
            "slowest first run: {} — rewrite {} ms + compile {} ms = {:.1} s before its first instruction (goal ≤ 5 s); its rewind bodies compile in {:.1} s more when it first resumes",
            r.name,
            r.split.rewrite_ms,
            r.split.compile_ms,
            (r.split.rewrite_ms + r.split.compile_ms) as f64 / 1e3,
            r.split.rewind_compile_ms as f64 / 1e3
        );
    }
    println!("\nprograms:");
    for r in &rows {
        println!("- {}: {}", r.name, r.what);
    }

    if std::env::var_os("WMIG_BENCH_KNOBS").is_some() {
        println!(
            "\nThe rewrite's knobs (in-process ratio to the uninstrumented module / rewrite ms)"
        );
        let head: Vec<&str> = KNOBS.iter().map(|k| k.0).collect();
        println!("| program | {} |", head.join(" | "));
        println!("|---|{}", "---:|".repeat(KNOBS.len()));
        for p in corpus() {
            let cells = wmig_host::on_guest_thread({
                let p = Program {
                    name: p.name.clone(),
                    wasm: p.wasm.clone(),
                    args: p.args.clone(),
                    what: String::new(),
                };
                move || knobs(&p, reps.min(3))
            })
            .expect("bench thread");
            let cells: Vec<String> = cells
                .iter()
                .map(|(r, ms)| format!("{r:.2}× / {ms}"))
                .collect();
            println!("| {} | {} |", p.name, cells.join(" | "));
        }
    }
}
