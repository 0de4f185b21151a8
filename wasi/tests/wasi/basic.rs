//! Args, env, stdio, clocks, random, exit, and untrusted pointers.

use std::io::Cursor;

use wmig_wasi::{I32Exit, WasiCtx};

use crate::harness::{config, engine_and_linker, errno, Harness, IOV, OUT, SIGS};

fn ctx_no_dirs() -> (WasiCtx, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let (cfg, out) = config(&[], std::io::empty());
    (WasiCtx::new(cfg).unwrap(), out)
}

#[test]
fn all_46_functions_are_registered() {
    let (engine, linker) = engine_and_linker();
    let mut store = wasmtime::Store::new(&engine, ctx_no_dirs().0);
    let names: Vec<String> = linker
        .iter(&mut store)
        .filter(|(m, _, _)| *m == "wasi_snapshot_preview1")
        .map(|(_, n, _)| n.to_owned())
        .collect();
    assert_eq!(names.len(), 46);
    assert_eq!(SIGS.len(), 46);
    // The shim imports every one with its exact signature.
    Harness::new(ctx_no_dirs().0);
}

#[test]
fn hello_world_goes_to_the_sink_and_exit_code_is_i32exit() {
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "hello, wasi\n")
        (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 12))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $exit (i32.const 3))))"#;
    let (ctx, out) = ctx_no_dirs();
    let mut h = Harness::with_wat(ctx, wat);
    let start = h
        .instance
        .get_typed_func::<(), ()>(&mut h.store, "_start")
        .unwrap();
    let err = start.call(&mut h.store, ()).unwrap_err();
    assert_eq!(err.downcast_ref::<I32Exit>(), Some(&I32Exit(3)));
    assert_eq!(&*out.lock().unwrap(), b"hello, wasi\n");
    assert_eq!(h.ctx().stdout_offset(), 12);
}

#[test]
fn exit_status_126_and_above_traps_like_wasmtime() {
    let mut h = Harness::new(ctx_no_dirs().0);
    let err = h.try_call("proc_exit", &[126]).unwrap_err();
    assert!(err.downcast_ref::<I32Exit>().is_none());
    let err = h.try_call("proc_exit", &[0]).unwrap_err();
    assert_eq!(err.downcast_ref::<I32Exit>(), Some(&I32Exit(0)));
}

#[test]
fn args_and_env() {
    let mut h = Harness::new(ctx_no_dirs().0);
    assert_eq!(h.call("args_sizes_get", &[0, 4]), 0);
    assert_eq!((h.u32_at(0), h.u32_at(4)), (3, 5 + 3 + 10));
    assert_eq!(h.call("args_get", &[100, 200]), 0);
    let p: Vec<u32> = (0..3).map(|i| h.u32_at(100 + 4 * i)).collect();
    assert_eq!(p, vec![200, 205, 208]);
    assert_eq!(h.read(200, 18), b"prog\0a1\0two words\0");

    assert_eq!(h.call("environ_sizes_get", &[0, 4]), 0);
    assert_eq!((h.u32_at(0), h.u32_at(4)), (2, 11 + 4));
    assert_eq!(h.call("environ_get", &[100, 300]), 0);
    assert_eq!(h.u32_at(104), 311);
    assert_eq!(h.read(300, 15), b"HOME=/data\0X=1\0");
}

#[test]
fn bad_pointers_are_efault_not_panic() {
    let mut h = Harness::new(ctx_no_dirs().0);
    let end = 2 * 65536;
    assert_eq!(h.call("args_get", &[end, 0]), errno::FAULT);
    assert_eq!(h.call("args_get", &[0, end - 2]), errno::FAULT);
    assert_eq!(h.call("args_sizes_get", &[0xffff_fffe, 0]), errno::FAULT);
    assert_eq!(h.call("clock_time_get", &[1, 0, end - 4]), errno::FAULT);
    assert_eq!(h.call("random_get", &[end - 8, 16]), errno::FAULT);
    // fd_write: iovec array out of bounds, then a buffer out of bounds.
    assert_eq!(h.call("fd_write", &[1, end, 1, OUT as i64]), errno::FAULT);
    h.write(IOV, &[0xf0, 0xff, 0xff, 0xff, 16, 0, 0, 0]);
    assert_eq!(
        h.call("fd_write", &[1, IOV as i64, 1, OUT as i64]),
        errno::FAULT
    );
    assert_eq!(
        h.call("path_open", &[0, 0, end, 4, 0, 0, 0, 0, OUT as i64]),
        errno::FAULT
    );
    assert_eq!(
        h.call("poll_oneoff", &[end - 8, 0, 1, OUT as i64]),
        errno::FAULT
    );
    assert_eq!(h.call("fd_prestat_dir_name", &[0, end, 10]), errno::NOTDIR);
    // The instance is still healthy.
    assert_eq!(h.write_fd(1, b"ok"), Ok(2));
}

#[test]
fn stdin_reads_advance_the_offset() {
    let (cfg, _) = config(&[], Cursor::new(b"abcdef".to_vec()));
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    assert_eq!(h.read_fd(0, 4).unwrap(), b"abcd");
    assert_eq!(h.read_fd(0, 4).unwrap(), b"ef");
    assert_eq!(h.read_fd(0, 4).unwrap(), b"");
    assert_eq!(h.ctx().snapshot().stdin_offset, 6);
    assert_eq!(h.seek(0, 0, 0), Err(errno::SPIPE));
    assert_eq!(h.write_fd(0, b"x"), Err(errno::BADF));
    assert_eq!(
        h.call("fd_pwrite", &[1, IOV as i64, 1, 0, OUT as i64]),
        errno::SPIPE
    );
}

#[test]
fn clocks_and_random() {
    let mut h = Harness::new(ctx_no_dirs().0);
    assert_eq!(h.call("clock_time_get", &[1, 0, 0]), 0);
    let a = h.u64_at(0);
    assert_eq!(h.call("clock_time_get", &[1, 0, 0]), 0);
    assert!(h.u64_at(0) >= a);
    assert_eq!(h.call("clock_time_get", &[0, 0, 0]), 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(now.as_nanos().abs_diff(h.u64_at(0) as u128) < 10_000_000_000);
    assert_eq!(h.call("clock_res_get", &[1, 0]), 0);
    assert!(h.u64_at(0) > 0);
    assert_eq!(h.call("clock_time_get", &[2, 0, 0]), errno::BADF);
    // Out-of-range enum arguments trap, as under wasmtime-wasi.
    assert!(h.try_call("clock_time_get", &[7, 0, 0]).is_err());

    assert_eq!(h.call("random_get", &[1000, 64]), 0);
    assert_ne!(h.read(1000, 64), vec![0u8; 64]);
    assert_eq!(h.call("sched_yield", &[]), 0);
}

#[test]
fn poll_oneoff_sleeps_and_reports_fds_ready() {
    let mut h = Harness::new(ctx_no_dirs().0);
    // One relative 5ms timer: userdata 7.
    let mut sub = vec![0u8; 48];
    sub[0] = 7;
    sub[16] = 1; // monotonic
    sub[24..32].copy_from_slice(&5_000_000u64.to_le_bytes());
    h.write(0, &sub);
    let t = std::time::Instant::now();
    assert_eq!(h.call("poll_oneoff", &[0, 512, 1, OUT as i64]), 0);
    assert!(t.elapsed() >= std::time::Duration::from_millis(5));
    assert_eq!((h.u32_at(OUT), h.u64_at(512)), (1, 7));

    // A long timer plus stdout writable: only stdout is reported, at once.
    let mut subs = sub.clone();
    subs[24..32].copy_from_slice(&60_000_000_000u64.to_le_bytes());
    let mut w = vec![0u8; 48];
    w[0] = 9;
    w[8] = 2; // fd_write
    w[16] = 1; // fd 1
    subs.extend_from_slice(&w);
    h.write(0, &subs);
    assert_eq!(h.call("poll_oneoff", &[0, 512, 2, OUT as i64]), 0);
    assert_eq!((h.u32_at(OUT), h.u64_at(512), h.read(522, 1)[0]), (1, 9, 2));
    assert_eq!(
        h.call("poll_oneoff", &[0, 512, 0, OUT as i64]),
        errno::INVAL
    );
}

#[test]
fn unsupported_calls_answer_like_wasmtime() {
    let mut h = Harness::new(ctx_no_dirs().0);
    assert_eq!(h.call("proc_raise", &[2]), errno::NOTSUP);
    assert_eq!(h.call("sock_accept", &[1, 0, OUT as i64]), errno::NOTSOCK);
    assert_eq!(h.call("sock_shutdown", &[99, 0]), errno::BADF);
    assert_eq!(
        h.call("sock_send", &[1, IOV as i64, 1, 0, OUT as i64]),
        errno::NOTSOCK
    );
    assert_eq!(
        h.call("sock_recv", &[0, IOV as i64, 1, 0, OUT as i64, 0]),
        errno::NOTSOCK
    );
    assert_eq!(h.call("fd_fdstat_set_rights", &[1, 0, 0]), errno::BADF);
}

#[test]
fn stdio_fdstat() {
    let mut h = Harness::new(ctx_no_dirs().0);
    assert_eq!(h.call("fd_fdstat_get", &[1, 0]), 0);
    assert_eq!(h.read(0, 1)[0], 0); // unknown: a buffer is not a tty
    assert_eq!(h.u64_at(8), 1 << 6); // FD_WRITE
    assert_eq!(h.call("fd_fdstat_get", &[0, 0]), 0);
    assert_eq!(h.u64_at(8), 1 << 1); // FD_READ
    assert_eq!(h.call("fd_fdstat_get", &[5, 0]), errno::BADF);
    assert_eq!(h.call("fd_filestat_get", &[2, 0]), 0);
}
