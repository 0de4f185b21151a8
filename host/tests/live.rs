//! Live migration in one process: a task that keeps writing scattered words
//! into a growing memory is moved in rounds of written pages to an instance
//! built ahead of the pause, and finishes there with exactly the output of
//! an uninterrupted run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use wmig_host::local::WasiSpec;
use wmig_host::wasi::{BufferSink as Buf, OutputSink};
use wmig_host::{
    CaptureMeta, Incoming, Outcome, PageBuf, PauseReason, Runtime, RuntimeConfig, Task, TaskConfig,
};

/// 4 MiB of memory, grown to 8 MiB after 20,000 stores; ROUNDS scattered 8-byte
/// stores from a nested call (frames with live locals at every pause);
/// then the sum of all memory goes to stdout as 8 raw bytes.
const SCATTER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 64)
  (func $store (param $x i64) (param $size i32)
    (i64.store
      (i32.and (i32.wrap_i64 (i64.rem_u (local.get $x) (i64.extend_i32_u (local.get $size))))
               (i32.const -8))
      (local.get $x)))
  (func $step (param $x i64) (result i64)
    (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
    (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
    (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
    (call $store (local.get $x) (i32.mul (memory.size) (i32.const 65536)))
    (local.get $x))
  (func (export "_start") (local $i i32) (local $x i64) (local $sum i64) (local $p i32)
    (local.set $x (i64.const 0x9E3779B97F4A7C15))
    (loop $l
      (local.set $x (call $step (local.get $x)))
      (if (i32.eq (local.get $i) (i32.const 20000))
        (then (drop (memory.grow (i32.const 64)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 400000))))
    (local.set $p (i32.const 16))
    (loop $s
      (local.set $sum (i64.add (i64.mul (local.get $sum) (i64.const 31)) (i64.load (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 8)))
      (br_if $s (i32.lt_u (local.get $p) (i32.mul (memory.size) (i32.const 65536)))))
    (i64.store (i32.const 0) (local.get $sum))
    (i32.store (i32.const 8) (i32.const 0))
    (i32.store (i32.const 12) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 8)))))"#;

fn config(out: &Buf, pause_every: Option<u32>) -> TaskConfig {
    let o = out.clone();
    let sinks: wmig_host::local::SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(Buf::default()) as Box<dyn OutputSink>,
        )
    });
    let mut c = TaskConfig::new(WasiSpec::default().config(&sinks));
    c.yield_fuel = 2_000;
    if let Some(every) = pause_every {
        let n = AtomicU32::new(0);
        c.policy = Some(Box::new(move |_| {
            n.fetch_add(1, Ordering::Relaxed) % every == every - 1
        }));
    }
    c
}

fn sinks_config(out: &Buf) -> wmig_host::wasi::WasiConfig {
    let o = out.clone();
    let sinks: wmig_host::local::SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(Buf::default()) as Box<dyn OutputSink>,
        )
    });
    WasiSpec::default().config(&sinks)
}

#[test]
fn a_task_moved_live_in_rounds_of_written_pages_ends_as_if_never_moved() {
    let wasm = wat::parse_str(SCATTER).expect("WAT");
    let result = wmig_host::on_guest_thread(move || {
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        module.prepare_rewind().expect("rewind module");

        let plain = Buf::default();
        let mut t = Task::start(&rt, &module, config(&plain, None)).expect("start");
        assert_eq!(t.run().expect("run"), Outcome::Exited(0));
        let expected = plain.0.lock().expect("lock").clone();

        let src_out = Buf::default();
        let mut src = Task::start(&rt, &module, config(&src_out, Some(1))).expect("start");
        assert_eq!(
            src.run().expect("run"),
            Outcome::Paused(PauseReason::Policy)
        );
        let target_rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let target_module = target_rt.load(&module_bytes()).expect("load");
        let dst_out = Buf::default();
        let mut incoming =
            Incoming::new(&target_rt, &target_module, config(&dst_out, None)).expect("incoming");
        let mut buf = PageBuf::default();
        let tracker = src.live_begin(&mut buf).expect("begin");
        let all_pages = buf.pages();
        incoming.apply(&buf.delta, &buf.bytes).expect("round 0");
        let mut round_pages = Vec::new();
        // Rounds across the memory.grow, at later pauses.
        for _ in 0..6 {
            assert_eq!(
                src.run().expect("run"),
                Outcome::Paused(PauseReason::Policy)
            );
            src.live_round(&mut buf).expect("round");
            round_pages.push(buf.pages());
            incoming.apply(&buf.delta, &buf.bytes).expect("apply");
        }
        assert_eq!(
            src.run().expect("run"),
            Outcome::Paused(PauseReason::Policy)
        );
        let fin = src
            .live_final(
                CaptureMeta {
                    task: None,
                    seq: 9,
                    epoch: 0,
                },
                PageBuf::default(),
            )
            .expect("final");
        assert!(fin.manifest.memories.is_empty());
        let mut dst = incoming
            .finish(
                sinks_config(&dst_out),
                &fin.manifest,
                (&fin.memory.delta, &fin.memory.bytes),
                (&fin.stack.delta, &fin.stack.bytes),
            )
            .expect("finish");
        drop(src);
        loop {
            match dst.run().expect("run on the target") {
                Outcome::Exited(code) => {
                    assert_eq!(code, 0);
                    break;
                }
                Outcome::Paused(_) => {}
            }
        }
        let mut got = src_out.0.lock().expect("lock").clone();
        got.extend_from_slice(&dst_out.0.lock().expect("lock"));
        (expected, got, tracker, all_pages, round_pages)
    })
    .expect("guest thread");
    let (expected, got, tracker, all_pages, rounds) = result;
    assert_eq!(expected.len(), 8, "the program prints its sum");
    assert_eq!(
        got, expected,
        "moved live ({tracker}): rounds of {rounds:?} pages"
    );
    assert_eq!(all_pages, 1024, "round 0 covers all 4 MiB");
    // Between two pauses (2,000 fuel) the program stores a few hundred words:
    // a round sends the pages they hit, not the whole memory, except the
    // round that sees the memory grow by 1,024 pages.
    let small = rounds.iter().filter(|&&p| p < 1024).count();
    assert!(small >= 4, "rounds of {rounds:?} pages ({tracker})");
}

fn module_bytes() -> Vec<u8> {
    wat::parse_str(SCATTER).expect("WAT")
}
