//! A task waiting for input on stdin can be paused at once (rewriter 4): it
//! is checkpointed inside `fd_read` with nothing consumed, restored into a
//! fresh engine with the rest of the input, and reads on from exactly the
//! byte where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wmig_host::local::WasiSpec;
use wmig_host::wasi::{BufferSink as Buf, InputPipe, OutputSink, Stdin};
use wmig_host::{
    CaptureMeta, MemChunks, Outcome, PauseReason, Runtime, RuntimeConfig, Task, TaskConfig,
};

/// Copies stdin to stdout in reads of at most 16 bytes until end of file,
/// then prints "eof".
fn echo() -> Vec<u8> {
    wat::parse_str(
        r#"(module
        (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 300) "eof\n")
        (func $write (param $at i32) (param $len i32)
          (i32.store (i32.const 400) (local.get $at))
          (i32.store (i32.const 404) (local.get $len))
          (drop (call $fd_write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408))))
        (func $read (result i32)
          (i32.store (i32.const 500) (i32.const 1000))
          (i32.store (i32.const 504) (i32.const 16))
          (if (call $fd_read (i32.const 0) (i32.const 500) (i32.const 1) (i32.const 508))
            (then unreachable))
          (i32.load (i32.const 508)))
        (func (export "_start") (local $n i32)
          (loop $l
            (local.set $n (call $read))
            (if (local.get $n)
              (then (call $write (i32.const 1000) (local.get $n)) (br $l))))
          (call $write (i32.const 300) (i32.const 4))))"#,
    )
    .expect("test WAT parses")
}

fn config(out: &Buf, pipe: &Arc<InputPipe>) -> TaskConfig {
    let o = out.clone();
    let sinks: wmig_host::local::SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(Buf::default()) as Box<dyn OutputSink>,
        )
    });
    let mut wasi = WasiSpec::default().config(&sinks);
    wasi.stdin = Stdin::Pipe(pipe.clone());
    TaskConfig::new(wasi)
}

#[test]
fn a_task_waiting_for_stdin_pauses_at_once_and_reads_on_after_a_restore() {
    let wasm = echo();
    let out = Buf::default();
    let result = wmig_host::on_guest_thread(move || {
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        module.prepare_rewind().expect("rewind module");
        let first = InputPipe::new();
        first.push(b"first line, longer than one read\n");
        let mut task = Task::start(&rt, &module, config(&out, &first)).expect("start");
        let pauser = task.pauser();
        let requester = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
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
            latency < Duration::from_millis(250),
            "paused {latency:?} after the request, while waiting for input"
        );

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
        assert_eq!(
            captured.manifest.wasi.stdin_offset, 33,
            "the checkpoint counts the bytes read, none of the pending read"
        );

        // Elsewhere: a new engine, a new pipe that carries the input from
        // the checkpoint's stdin offset on.
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        let second = InputPipe::new();
        let mut task = Task::restore(
            &rt,
            &module,
            config(&out, &second),
            &captured.manifest,
            &chunks,
        )
        .expect("restore");
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            second.push(b"second\n");
            second.close();
        });
        let outcome = task.run().expect("resume");
        feeder.join().expect("feeder");
        assert_eq!(outcome, Outcome::Exited(0));
        String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8")
    })
    .expect("guest thread");
    assert_eq!(result, "first line, longer than one read\nsecond\neof\n");
}

/// Without a pause the same guest just waits for input, and a cancel (the
/// interrupt) ends the wait at once.
#[test]
fn a_cancel_ends_a_read_that_waits_for_input() {
    let wasm = echo();
    let out = Buf::default();
    let (took, outcome) = wmig_host::on_guest_thread(move || {
        let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
        let module = rt.load(&wasm).expect("load");
        let pipe = InputPipe::new();
        let mut task = Task::start(&rt, &module, config(&out, &pipe)).expect("start");
        let interrupt = task.interrupt();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let at = Instant::now();
            interrupt.interrupt();
            at
        });
        let outcome = task.run();
        let ended = Instant::now();
        let at = canceller.join().expect("canceller");
        (ended.saturating_duration_since(at), outcome.is_err())
    })
    .expect("guest thread");
    assert!(outcome, "an interrupted read traps");
    // Not an hour: the wait ends at the cancel. (The bound is loose because
    // a debug build with RUST_BACKTRACE set spends ~150 ms capturing the
    // trap's backtrace.)
    assert!(
        took < Duration::from_secs(2),
        "the read ended {took:?} after the cancel"
    );
}
