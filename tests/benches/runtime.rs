//! `cargo bench -p wmig-tests --bench runtime`: the runtime core's costs.
//!
//! 1. Run time of the instrumented module (yield points + Asyncify, default
//!    yield fuel, no pauses) against the same module under plain wasmtime +
//!    wasmtime-wasi (no rewrite, no fuel), on CPU-bound tasks. Goal ≤ 1.05×.
//! 2. Capture and restore of 64 MiB of live memory. Goal ≤ 25 ms each.
//! 3. Checkpoint bytes: a full capture, and one after a small change.
//!
//! Each number is the median of several runs; compile time is excluded
//! (both sides use a compiled module).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wmig_host::baseline::Baseline;
use wmig_host::local::{SinkFactory, WasiSpec};
use wmig_host::wasi::OutputSink;
use wmig_host::{CaptureMeta, MemChunks, Outcome, Runtime, RuntimeConfig, Task, TaskConfig};
use wmig_tests::artifacts;

const REPS: usize = 5;

#[derive(Clone, Default)]
struct Discard(Arc<Mutex<u64>>);
impl OutputSink for Discard {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Ok(mut n) = self.0.lock() {
            *n += bytes.len() as u64;
        }
        Ok(())
    }
}

fn sinks() -> SinkFactory {
    Arc::new(|| {
        (
            Box::new(Discard::default()) as Box<dyn OutputSink>,
            Box::new(Discard::default()) as Box<dyn OutputSink>,
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spec(name: &str, args: &[&str]) -> WasiSpec {
    let mut argv = vec![format!("{name}.wasm")];
    argv.extend(args.iter().map(|s| s.to_string()));
    WasiSpec {
        args: argv,
        ..WasiSpec::default()
    }
}

fn run_time(
    rt: &Runtime,
    baseline: &Baseline,
    name: &str,
    path: &str,
    args: &[&str],
) -> (f64, f64) {
    let wasm = std::fs::read(path).expect("task module");
    let plain_module = baseline.compile(&wasm).expect("compile plain");
    let prepared = rt.load(&wasm).expect("instrument");
    let spec = spec(name, args);
    let mut plain = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..REPS {
        let t = Instant::now();
        let r = baseline
            .run(&plain_module, &spec.args, &[], &[])
            .expect("plain run");
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.exit_code, 0, "{name} failed under plain wasmtime");

        let t = Instant::now();
        let mut task =
            Task::start(rt, &prepared, TaskConfig::new(spec.config(&sinks()))).expect("start");
        let out = task.run().expect("run");
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out, Outcome::Exited(0), "{name} failed under wmig");
    }
    (median(plain), median(ours))
}

/// A guest that fills `pages` of memory with non-zero data, then spins
/// forever touching one word (so a later capture sees a small change).
fn heap_module(pages: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (memory (export "memory") 1)
          (func (export "_start")
            (local $i i32) (local $end i32)
            (drop (memory.grow (i32.const {grow})))
            (local.set $end (i32.mul (memory.size) (i32.const 65536)))
            (loop $fill
              (i64.store (local.get $i) (i64.or (i64.extend_i32_u (local.get $i)) (i64.const 0x0101010100000000)))
              (local.set $i (i32.add (local.get $i) (i32.const 8)))
              (br_if $fill (i32.lt_u (local.get $i) (local.get $end))))
            (local.set $i (i32.const 0))
            (loop $spin
              (i32.store (i32.const 64) (local.get $i))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $spin))))"#,
        grow = pages - 1
    ))
    .expect("heap WAT")
}

struct MemBench {
    capture_full: f64,
    capture_incremental: f64,
    restore: f64,
    restore_total: f64,
    full_bytes: u64,
    incremental_bytes: u64,
}

fn memory_bench(mib: u32) -> MemBench {
    let wasm = heap_module(mib * 16);
    let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
    let module = rt.load(&wasm).expect("load");
    let mut full = Vec::new();
    let mut incr = Vec::new();
    let mut restore = Vec::new();
    let mut restore_total = Vec::new();
    let (mut full_bytes, mut incremental_bytes) = (0, 0);
    for _ in 0..REPS {
        let mut cfg = TaskConfig::new(spec("heap", &[]).config(&sinks()));
        cfg.yield_fuel = 2_000_000;
        // Pause at the first yield after the fill loop: it stores 8 bytes per
        // iteration, so it takes mib * 2^17 iterations (one fuel each).
        let fill = u64::from(mib) << 17;
        cfg.policy = Some(Box::new(move |y| y * 2_000_000 > fill + 2_000_000));
        let mut task = Task::start(&rt, &module, cfg).expect("start");
        assert!(matches!(task.run().expect("run"), Outcome::Paused(_)));
        let mut sink = MemChunks::new();
        let c = task
            .capture(&mut sink, CaptureMeta::default())
            .expect("capture");
        full.push(c.millis);
        full_bytes = c.cost.copied;
        // Continue a little, pause again: only the touched chunk is new.
        task.pause_flag()
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(task.run().expect("run"), Outcome::Paused(_)));
        let c2 = task
            .capture(&mut sink, CaptureMeta::default())
            .expect("capture");
        incr.push(c2.millis);
        incremental_bytes = c2.cost.copied;

        let t = Instant::now();
        let rt2 = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module2 = rt2.load(&wasm).expect("load");
        let t_restore = Instant::now();
        let restored = Task::restore(
            &rt2,
            &module2,
            TaskConfig::new(spec("heap", &[]).config(&sinks())),
            &c2.manifest,
            &sink,
        )
        .expect("restore");
        restore.push(t_restore.elapsed().as_secs_f64() * 1e3);
        restore_total.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(restored.memory_bytes() >= (mib as usize) << 20);
        assert!(
            full_bytes >= u64::from(mib) << 20,
            "the capture must see all {mib} MiB live"
        );
    }
    MemBench {
        capture_full: median(full),
        capture_incremental: median(incr),
        restore: median(restore),
        restore_total: median(restore_total),
        full_bytes,
        incremental_bytes,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let report = wmig_host::on_guest_thread(|| {
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let baseline = Baseline::new().expect("baseline");
        let tasks: [(&str, &str, &[&str]); 4] = [
            ("nbody", artifacts::NBODY, &["2000000"]),
            ("sieve", artifacts::SIEVE, &["30000000"]),
            ("recursion", artifacts::RECURSION, &["5000", "4000"]),
            ("counter", artifacts::COUNTER, &["200000000"]),
        ];
        let mut rows = Vec::new();
        for (name, path, args) in tasks {
            let (plain, ours) = run_time(&rt, &baseline, name, path, args);
            rows.push((name, args.join(" "), plain, ours));
        }
        let mem = memory_bench(64);
        (rows, mem)
    })
    .expect("bench thread");
    let (rows, mem) = report;

    println!(
        "\nRun time: instrumented (wmig, default yield fuel) vs plain wasmtime 48 + wasmtime-wasi"
    );
    println!("| task | args | plain wasmtime (ms) | wmig (ms) | ratio | goal |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, args, plain, ours) in &rows {
        println!(
            "| {name} | {args} | {plain:.1} | {ours:.1} | {:.2}× | ≤ 1.05× |",
            ours / plain
        );
    }
    println!("\nCheckpoint of 64 MiB of live memory (median of {REPS})");
    println!("| metric | result | goal | ratio to goal |");
    println!("|---|---:|---:|---:|");
    let row = |m: &str, v: f64, goal: f64| {
        println!("| {m} | {v:.1} ms | ≤ {goal} ms | {:.2}× |", v / goal)
    };
    row(
        "capture, cold (hash + copy every chunk)",
        mem.capture_full,
        25.0,
    );
    row(
        "capture, warm (hash all, copy changed)",
        mem.capture_incremental,
        25.0,
    );
    row(
        "restore into a fresh store (instantiate + write memory)",
        mem.restore,
        25.0,
    );
    row(
        "restore incl. new engine + module load",
        mem.restore_total,
        25.0,
    );
    println!(
        "| checkpoint bytes, cold | {:.1} MiB | | |\n| checkpoint bytes, after a small change | {} KiB | | |",
        mem.full_bytes as f64 / (1 << 20) as f64,
        mem.incremental_bytes / 1024
    );
}
