//! Runtime edge cases as small WAT programs: each runs uninterrupted, under
//! plain wasmtime-wasi, and with a checkpoint + restore into a fresh engine
//! at every yield point; output and exit status must be identical.

use std::sync::Arc;

use wmig_host::baseline::Baseline;
use wmig_host::local::{run_local, Finish, LocalOptions, RunStats, SinkFactory, WasiSpec};
use wmig_host::wasi::{BufferSink as Buf, OutputSink};
use wmig_host::{HostError, RuntimeConfig};

const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; Print $n in decimal and a newline (scratch space at 1000..1210).
  (func $print (param $n i32)
    (local $p i32)
    (local.set $p (i32.const 1100))
    (i32.store8 (local.get $p) (i32.const 10))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (i32.store (i32.const 1200) (local.get $p))
    (i32.store (i32.const 1204) (i32.sub (i32.const 1101) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 1200) (i32.const 1) (i32.const 1208))))
"#;

fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {PRELUDE} {body})")).expect("test WAT parses")
}

/// (stdout, exit code or "trap", stats)
fn run(wasm: &[u8], opts: LocalOptions) -> (String, String, RunStats) {
    let out = Buf::default();
    let err = Buf::default();
    let (o, e) = (out.clone(), err.clone());
    let sinks: SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(e.clone()) as Box<dyn OutputSink>,
        )
    });
    let spec = WasiSpec {
        args: vec!["edge.wasm".into()],
        ..WasiSpec::default()
    };
    let wasm = wasm.to_vec();
    let result = wmig_host::on_guest_thread(move || run_local(&wasm, &spec, &sinks, &opts))
        .expect("guest thread");
    let (status, stats) = match result {
        Ok((Finish::Exited(code), stats)) => (code.to_string(), stats),
        Ok((other, _)) => panic!("unexpected finish {other:?}"),
        Err(HostError::Trap(_)) => ("trap".to_string(), RunStats::default()),
        Err(e) => panic!("run failed: {e}"),
    };
    let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
    (text, status, stats)
}

fn opts() -> LocalOptions {
    LocalOptions {
        // A shared on-disk cache: each restore builds a new engine, and
        // reloading the compiled module from disk keeps that cheap.
        runtime: RuntimeConfig {
            cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wmig-cache")),
        },
        yield_fuel: 40,
        ..LocalOptions::default()
    }
}

/// Uninterrupted, migrated at every yield, and plain wasmtime agree.
fn check(name: &str, wasm: &[u8]) -> String {
    let (plain, plain_status, _) = run(wasm, opts());
    let migrating = LocalOptions {
        checkpoint_every: Some(1),
        restore_each_checkpoint: true,
        ..opts()
    };
    let (moved, moved_status, stats) = run(wasm, migrating);
    assert_eq!(moved, plain, "{name}: output differs after restores");
    assert_eq!(moved_status, plain_status, "{name}: exit status differs");
    if moved_status != "trap" {
        assert!(
            stats.restores >= 10,
            "{name}: only {} restores",
            stats.restores
        );
    }

    let baseline = Baseline::new().expect("baseline");
    let reference = baseline
        .run(
            &baseline.compile(wasm).expect("compile"),
            &["edge.wasm".into()],
            &[],
            &[],
        )
        .expect("plain wasmtime");
    assert_eq!(
        plain,
        String::from_utf8_lossy(&reference.stdout),
        "{name}: differs from wasmtime"
    );
    let ref_status = if reference.trap.is_some() {
        "trap".to_string()
    } else {
        reference.exit_code.to_string()
    };
    assert_eq!(
        plain_status, ref_status,
        "{name}: exit differs from wasmtime"
    );
    plain
}

#[test]
fn indirect_calls() {
    let wasm = module(
        r#"
        (type $op (func (param i32) (result i32)))
        (table 3 funcref)
        (elem (i32.const 0) $inc $triple $dec2)
        (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
        (func $triple (param i32) (result i32) (i32.and (i32.mul (local.get 0) (i32.const 3)) (i32.const 0xffff)))
        (func $dec2 (param i32) (result i32) (i32.sub (local.get 0) (i32.const 2)))
        (func (export "_start")
          (local $i i32) (local $acc i32)
          (local.set $acc (i32.const 7))
          (loop $l
            (local.set $acc (call_indirect (type $op) (local.get $acc) (i32.rem_u (local.get $i) (i32.const 3))))
            (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 150))) (then (call $print (local.get $acc))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 3000)))))"#,
    );
    let out = check("indirect_calls", &wasm);
    assert_eq!(out.lines().count(), 20);
}

#[test]
fn multi_value() {
    let wasm = module(
        r#"
        (func $divmod (param i32 i32) (result i32 i32)
          (i32.div_u (local.get 0) (local.get 1)) (i32.rem_u (local.get 0) (local.get 1)))
        (func (export "_start")
          (local $i i32) (local $q i32) (local $r i32) (local $sum i32)
          (loop $l
            (call $divmod (i32.add (local.get $i) (i32.const 1000)) (i32.const 7))
            (local.set $r) (local.set $q)
            (local.set $sum (i32.add (local.get $sum) (i32.add (local.get $q) (local.get $r))))
            (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 250))) (then (call $print (local.get $sum))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 2500)))))"#,
    );
    check("multi_value", &wasm);
}

#[test]
fn memory_grows_between_checkpoint_and_restore() {
    let wasm = module(
        r#"
        (func (export "_start")
          (local $i i32) (local $j i32) (local $page i32) (local $sum i32)
          (loop $grow
            (local.set $page (memory.grow (i32.const 1)))
            (i32.store (i32.mul (local.get $page) (i32.const 65536)) (i32.add (local.get $i) (i32.const 100)))
            ;; burn fuel so checkpoints fall between grows
            (local.set $j (i32.const 0))
            (loop $burn
              (local.set $j (i32.add (local.get $j) (i32.const 1)))
              (br_if $burn (i32.lt_u (local.get $j) (i32.const 200))))
            (call $print (memory.size))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $grow (i32.lt_u (local.get $i) (i32.const 24))))
          ;; read back every grown page
          (local.set $i (i32.const 1))
          (loop $read
            (local.set $sum (i32.add (local.get $sum) (i32.load (i32.mul (local.get $i) (i32.const 65536)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $read (i32.lt_u (local.get $i) (memory.size))))
          (call $print (local.get $sum)))"#,
    );
    let out = check("memory_grow", &wasm);
    assert_eq!(
        out.lines().last(),
        Some(((0..24).map(|i| i + 100).sum::<i32>()).to_string().as_str())
    );
}

#[test]
fn trap_after_resume() {
    let wasm = module(
        r#"
        (func (export "_start")
          (local $i i32)
          (loop $l
            (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 200))) (then (call $print (local.get $i))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 2000))))
          unreachable)"#,
    );
    let (_, status, _) = run(&wasm, opts());
    assert_eq!(status, "trap");
    check("trap_after_resume", &wasm);
}

#[test]
fn proc_exit_in_the_middle() {
    let wasm = module(
        r#"
        (func (export "_start")
          (local $i i32)
          (loop $l
            (if (i32.eq (local.get $i) (i32.const 1500)) (then (call $proc_exit (i32.const 42))))
            (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 100))) (then (call $print (local.get $i))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 3000)))))"#,
    );
    let (out, status, _) = run(&wasm, opts());
    assert_eq!(status, "42");
    assert_eq!(out.lines().count(), 15);
    check("proc_exit", &wasm);
}

#[test]
fn recursion_is_paused_inside_deep_frames() {
    let wasm = module(
        r#"
        (func $down (param $n i32) (result i32)
          (if (result i32) (i32.eqz (local.get $n))
            (then (i32.const 0))
            (else (i32.add (i32.const 1) (call $down (i32.sub (local.get $n) (i32.const 1)))))))
        (func (export "_start")
          (local $i i32)
          (loop $l
            (call $print (call $down (i32.add (i32.const 500) (local.get $i))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 8)))))"#,
    );
    check("recursion", &wasm);
}

/// The shapes wmig's own unwind transform must save and resume exactly:
/// values of several types left on the operand stack below a call that can
/// pause, a block with parameters and two results around such calls, a loop
/// with a parameter, both arms of an `if`, and a `br_table` target.
#[test]
fn stack_values_block_params_and_branches_survive_a_pause() {
    let wasm = module(
        r#"
        (func $work (param $n i32) (result i32)
          (local $i i32) (local $acc i32)
          (loop $l
            (local.set $acc (i32.add (local.get $acc) (i32.mul (local.get $i) (local.get $n))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 50))))
          (local.get $acc))
        (func (export "_start")
          (local $k i32) (local $x i64) (local $f f64) (local $t i32)
          (loop $outer
            (local.set $x (i64.add (i64.extend_i32_u (local.get $k))
              (i64.extend_i32_u (i32.add (i32.const 7) (call $work (local.get $k))))))
            (local.set $f (f64.add (f64.const 0.5)
              (f64.convert_i32_u (call $work (i32.add (local.get $k) (i32.const 2))))))
            (i32.const 3) (i32.const 4)
            (block $b (param i32 i32) (result i32 i32)
              (call $work)
              (i32.add)
              (call $work (local.get $k)))
            (i32.add)
            (call $print)
            (i32.const 5)
            (loop $lp (param i32) (result i32)
              (i32.add (i32.const 1))
              (local.tee $t)
              (drop (call $work))
              (local.get $t)
              (br_if $lp (i32.lt_u (local.get $t) (i32.const 8))))
            (call $print)
            (if (i32.and (local.get $k) (i32.const 1))
              (then (call $print (call $work (i32.const 1))))
              (else (call $print (i32.add (i32.const 1000) (call $work (i32.const 2))))))
            (block $c
              (block $b1
                (block $b0 (br_table $b0 $b1 $c (i32.rem_u (local.get $k) (i32.const 3))))
                (call $print (call $work (i32.const 9)))
                (br $c))
              (call $print (i32.wrap_i64 (local.get $x))))
            (call $print (i32.trunc_f64_u (local.get $f)))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br_if $outer (i32.lt_u (local.get $k) (i32.const 30)))))"#,
    );
    let out = check("stack_shapes", &wasm);
    assert_eq!(out.lines().count(), 30 * 5 - 10, "{out}");
}
