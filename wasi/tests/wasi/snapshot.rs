//! Checkpoint and resume: snapshot a context mid-write, ship it through
//! postcard, rebuild it in a fresh store, and carry on.

use wmig_proto::wasi::{FdKind, WasiSnapshot};
use wmig_wasi::{WasiCtx, WasiError};

use crate::harness::*;

fn roundtrip(s: &WasiSnapshot) -> WasiSnapshot {
    let bytes = postcard::to_allocvec(s).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

#[test]
fn resume_mid_write_keeps_fds_offsets_and_output() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("input.txt"), b"0123456789").unwrap();
    std::fs::create_dir(t.path().join("sub")).unwrap();
    let (cfg, out) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());

    let input = h.open(3, "input.txt", 0, R_READ, 0).unwrap();
    let output = h
        .open(3, "sub/./../result.txt", O_CREAT | O_TRUNC, R_WRITE, 0)
        .unwrap();
    let sub = h.open(3, "sub", O_DIRECTORY, R_READ, 0).unwrap();
    assert_eq!((input, output, sub), (4, 5, 6));
    assert_eq!(h.open(3, "tmp", O_CREAT, R_WRITE, 0), Ok(7));

    assert_eq!(h.read_fd(input, 4).unwrap(), b"0123");
    h.write_fd(output, b"first half, ").unwrap();
    h.write_fd(1, b"progress 50%\n").unwrap();
    let before = h.ctx().snapshot();
    assert_eq!(before.stdout_offset, 13);
    assert_eq!(before.preopens, vec!["/data".to_owned()]);
    let kinds: Vec<(u32, &FdKind)> = before.fds.iter().map(|f| (f.fd, &f.kind)).collect();
    assert!(kinds.contains(&(
        5,
        &FdKind::File {
            preopen: 0,
            path: "result.txt".into(),
            offset: 12,
            read: false,
            write: true
        }
    )));
    let monotonic_before = before.monotonic_ns;
    drop(h); // the old machine goes away

    let snap = roundtrip(&before);
    assert_eq!(snap, before);
    let (cfg, out2) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::restore(cfg, &snap).unwrap());
    h.write_fd(output, b"second half").unwrap();
    assert_eq!(h.read_fd(input, 100).unwrap(), b"456789");
    h.write_fd(1, b"done\n").unwrap();
    assert_eq!(h.close(output), 0);
    assert_eq!(
        std::fs::read(t.path().join("result.txt")).unwrap(),
        b"first half, second half"
    );
    // Same fd numbers, same kinds; the directory fd still works.
    let after = h.ctx().snapshot();
    let open: Vec<u32> = after
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Closed)
        .map(|f| f.fd)
        .collect();
    assert_eq!(open, [0, 1, 2, 3, 4, 6, 7]);
    let f = h.open(sub, "inner", O_CREAT, R_WRITE, 0).unwrap();
    assert_eq!(f, 5, "the closed number is reused");
    assert!(t.path().join("sub/inner").exists());
    // Output offsets continue; only new bytes went to the new sink.
    assert_eq!(h.ctx().stdout_offset(), 18);
    assert_eq!(&*out.lock().unwrap(), b"progress 50%\n");
    assert_eq!(&*out2.lock().unwrap(), b"done\n");
    // The monotonic clock continues from the snapshot.
    assert_eq!(h.call("clock_time_get", &[1, 0, OUT as i64]), 0);
    assert!(h.u64_at(OUT) >= monotonic_before);
}

#[test]
fn restore_without_the_preopen_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    h.open(3, "f", O_CREAT, R_WRITE, 0).unwrap();
    let snap = h.ctx().snapshot();

    let other = tempfile::tempdir().unwrap();
    let (cfg, _) = config(&[(other.path(), "/elsewhere")], std::io::empty());
    let err = WasiCtx::restore(cfg, &snap).err().unwrap();
    assert!(matches!(&err, WasiError::MissingPreopen { guest } if guest == "/data"));
    let msg = err.to_string();
    assert!(msg.contains("/data") && msg.contains("--dir"), "{msg}");
}

#[test]
fn restore_reports_a_file_removed_since_the_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    h.open(3, "gone", O_CREAT, R_WRITE, 0).unwrap();
    let snap = h.ctx().snapshot();
    std::fs::remove_file(t.path().join("gone")).unwrap();
    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let err = WasiCtx::restore(cfg, &snap).err().unwrap();
    assert!(matches!(err, WasiError::Reopen { .. }), "{err}");
    assert!(err.to_string().contains("gone"));
    assert!(
        !t.path().join("gone").exists(),
        "restore never creates files"
    );
}

#[test]
fn restore_onto_another_host_dir_and_after_closing_the_preopen() {
    let a = tempfile::tempdir().unwrap();
    let (cfg, _) = config(&[(a.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    let fd = h.open(3, "log", O_CREAT, R_WRITE, 1).unwrap();
    h.write_fd(fd, b"a").unwrap();
    assert_eq!(h.close(3), 0, "a guest may close its preopen");
    assert_eq!(
        h.call("fd_renumber", &[fd as i64, 1]),
        0,
        "and move a file onto stdout"
    );
    let snap = roundtrip(&h.ctx().snapshot());
    assert!(snap
        .fds
        .iter()
        .all(|f| (f.fd != 3 || f.kind == FdKind::Closed) && f.kind != FdKind::Stdout));

    // The checkpoint moves to a machine where /data lives elsewhere.
    let b = tempfile::tempdir().unwrap();
    std::fs::copy(a.path().join("log"), b.path().join("log")).unwrap();
    let (cfg, out) = config(&[(b.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::restore(cfg, &snap).unwrap());
    h.write_fd(1, b"b").unwrap();
    assert_eq!(std::fs::read(b.path().join("log")).unwrap(), b"ab");
    assert_eq!(std::fs::read(a.path().join("log")).unwrap(), b"a");
    assert!(out.lock().unwrap().is_empty());
    assert_eq!(h.call("fd_prestat_get", &[3, OUT as i64]), errno::BADF);
}

#[test]
fn fd_numbers_after_restore_continue_as_without_the_pause() {
    let t = tempfile::tempdir().unwrap();
    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    for name in ["a", "b", "c", "d", "e"] {
        h.open(3, name, O_CREAT, R_WRITE, 0).unwrap();
    }
    assert_eq!((h.close(5), h.close(7)), (0, 0));
    let snap = roundtrip(&h.ctx().snapshot());
    let closed: Vec<u32> = snap
        .fds
        .iter()
        .filter(|f| f.kind == FdKind::Closed)
        .map(|f| f.fd)
        .collect();
    assert_eq!(closed, [5, 7]);

    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::restore(cfg, &snap).unwrap());
    let next: Vec<u32> = ["f", "g", "h"]
        .iter()
        .map(|n| h.open(3, n, O_CREAT, R_WRITE, 0).unwrap())
        .collect();
    // wasmtime-wasi's order: highest freed number first, then fresh ones.
    assert_eq!(next, [7, 5, 9]);
}

#[test]
fn renaming_an_open_file_or_its_directory_keeps_the_checkpoint_path_true() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("tmp")).unwrap();
    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::new(cfg).unwrap());
    let a = h.open(3, "a.part", O_CREAT, R_WRITE, 0).unwrap();
    let b = h.open(3, "tmp/b.part", O_CREAT, R_WRITE, 0).unwrap();
    h.write_fd(a, b"a1").unwrap();
    h.write_fd(b, b"b1").unwrap();
    for (from, to) in [("a.part", "a.txt"), ("tmp", "done")] {
        let (op, ol) = h.str_at(STR, from);
        let (np, nl) = h.str_at(STR2, to);
        assert_eq!(h.call("path_rename", &[3, op, ol, 3, np, nl]), 0);
    }
    let snap = roundtrip(&h.ctx().snapshot());
    let paths: Vec<&str> = snap
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::File { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(paths, ["a.txt", "done/b.part"]);

    let (cfg, _) = config(&[(t.path(), "/data")], std::io::empty());
    let mut h = Harness::new(WasiCtx::restore(cfg, &snap).unwrap());
    h.write_fd(a, b"a2").unwrap();
    h.write_fd(b, b"b2").unwrap();
    assert_eq!(std::fs::read(t.path().join("a.txt")).unwrap(), b"a1a2");
    assert_eq!(
        std::fs::read(t.path().join("done/b.part")).unwrap(),
        b"b1b2"
    );
}
