//! A task asleep in `poll_oneoff` can be paused at once (rewriter 3): it is
//! checkpointed in the middle of its sleep, restored into a fresh engine,
//! and sleeps on for the time that was left, no more, no less.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wmig_host::local::WasiSpec;
use wmig_host::wasi::{BufferSink as Buf, OutputSink};
use wmig_host::{
    CaptureMeta, MemChunks, Outcome, PauseReason, Runtime, RuntimeConfig, Task, TaskConfig,
};

/// Prints "before", sleeps SLEEP_MS with one relative monotonic clock
/// subscription (what Rust's `thread::sleep` does), prints "after".
fn sleeper(sleep_ms: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 300) "before\n")
        (data (i32.const 310) "after\n")
        (func $say (param $at i32) (param $len i32)
          (i32.store (i32.const 400) (local.get $at))
          (i32.store (i32.const 404) (local.get $len))
          (drop (call $fd_write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408))))
        (func $sleep (param $ns i64)
          ;; subscription at 0: userdata, clock tag, monotonic, relative timeout
          (i64.store (i32.const 0) (i64.const 7))
          (i32.store8 (i32.const 8) (i32.const 0))
          (i32.store (i32.const 16) (i32.const 1))
          (i64.store (i32.const 24) (local.get $ns))
          (i64.store (i32.const 32) (i64.const 0))
          (i32.store16 (i32.const 40) (i32.const 0))
          (if (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200))
            (then unreachable))
          ;; exactly one clock event for our subscription
          (if (i32.ne (i32.load (i32.const 200)) (i32.const 1)) (then unreachable))
          (if (i64.ne (i64.load (i32.const 100)) (i64.const 7)) (then unreachable)))
        (func (export "_start") (local $i i32)
          (call $say (i32.const 300) (i32.const 7))
          ;; a loop, so that the task has yield points like any program
          (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
          (call $sleep (i64.const {ns}))
          (call $say (i32.const 310) (i32.const 6))))"#,
        ns = sleep_ms * 1_000_000
    ))
    .expect("test WAT parses")
}

fn config(out: &Buf) -> TaskConfig {
    let o = out.clone();
    let sinks: wmig_host::local::SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(Buf::default()) as Box<dyn OutputSink>,
        )
    });
    TaskConfig::new(WasiSpec::default().config(&sinks))
}

#[test]
fn a_task_asleep_in_poll_oneoff_pauses_at_once_and_sleeps_on_for_the_time_left() {
    let wasm = sleeper(1500);
    let out = Buf::default();
    let result = wmig_host::on_guest_thread(move || {
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        module.prepare_rewind().expect("rewind module");
        let mut task = Task::start(&rt, &module, config(&out)).expect("start");
        let pauser = task.pauser();
        let started = Instant::now();
        let requester = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            let at = Instant::now();
            pauser.request();
            at
        });
        let outcome = task.run().expect("run");
        let paused = Instant::now();
        let requested = requester.join().expect("requester");
        assert_eq!(outcome, Outcome::Paused(PauseReason::Requested));
        let latency = paused.saturating_duration_since(requested);
        assert!(
            latency < Duration::from_millis(100),
            "paused {latency:?} after the request, inside a 1.5 s sleep"
        );

        // Checkpoint, drop everything, resume in a new engine.
        let mut chunks = MemChunks::new();
        let captured = task
            .capture(
                &mut chunks,
                CaptureMeta {
                    task: None,
                    seq: 1,
                    epoch: 0,
                },
            )
            .expect("capture");
        drop(task);
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        let mut task = Task::restore(&rt, &module, config(&out), &captured.manifest, &chunks)
            .expect("restore");
        let resumed = Instant::now();
        let outcome = task.run().expect("resume");
        assert_eq!(outcome, Outcome::Exited(0));
        let rest = resumed.elapsed();
        let slept_before = paused.saturating_duration_since(started);
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        (text, slept_before, rest)
    })
    .expect("guest thread");
    let (text, before, rest) = result;
    assert_eq!(text, "before\nafter\n");
    // 1.5 s of sleep in all, split across two engines: the resumed task
    // sleeps what was left (~1.1 s), not the whole 1.5 s again.
    let total = before + rest;
    assert!(
        total >= Duration::from_millis(1480) && total < Duration::from_millis(1700),
        "slept {before:?} before the pause and {rest:?} after it, for a 1.5 s sleep"
    );
}
