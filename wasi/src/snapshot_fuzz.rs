//! Fuzz harness of [`WasiCtx::restore`]: a checkpoint's WASI snapshot comes
//! from disk or from another node, and restoring it opens host files. From
//! any snapshot (arbitrary fd numbers, kinds, offsets, rights, flags,
//! preopen indices, and paths with `..`, `.`, empty, absolute or NUL parts,
//! or naming symlinks that point out of the sandbox, directories, FIFOs),
//! restore must return an error or a context, never panic or hang, and every
//! descriptor it opens must lie inside a preopened directory. A restored
//! context must then survive the guest's calls on every descriptor (reads,
//! writes, seeks, stat, prestat, the clocks, a new snapshot) without a
//! panic, whatever offsets the snapshot carried.
//!
//! Strategies draw path components from a fixed sandbox (see [`Sandbox`]) so
//! that most cases name real files, links and directories.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use wmig_proto::wasi::{FdKind, FdSnapshot, WasiSnapshot};

use crate::memory::GuestMemory;
use crate::table::Desc;
use crate::{BufferSink, Preopen, Stdin, WasiConfig, WasiCtx};

/// ```text
/// outer/secret                 must never be opened
/// outer/root/                  preopened as /data
///     file  dir/inner  dir/deeper/
///     in -> dir/inner   indir -> dir      (inside: allowed)
///     up -> ../secret   updir -> ..       (climb out: refused)
///     abs -> outer/secret                 (absolute: refused)
///     loop -> loop      fifo (a named pipe)
/// ```
struct Sandbox {
    _dir: tempfile::TempDir,
    outer: PathBuf,
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let outer = dir.path().canonicalize().expect("canonical");
        let root = outer.join("root");
        std::fs::create_dir_all(root.join("dir/deeper")).expect("mkdir");
        std::fs::write(outer.join("secret"), b"secret").expect("write");
        std::fs::write(root.join("file"), b"0123456789").expect("write");
        std::fs::write(root.join("dir/inner"), b"inner").expect("write");
        symlink("dir/inner", root.join("in")).expect("symlink");
        symlink("dir", root.join("indir")).expect("symlink");
        symlink("../secret", root.join("up")).expect("symlink");
        symlink("..", root.join("updir")).expect("symlink");
        symlink(outer.join("secret"), root.join("abs")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        let fifo = std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes())
            .expect("no NUL");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        Sandbox {
            _dir: dir,
            outer,
            root,
        }
    }

    fn config(&self, with_sub: bool) -> WasiConfig {
        let mut preopens = vec![Preopen {
            host: self.root.clone(),
            guest: "/data".into(),
        }];
        if with_sub {
            preopens.push(Preopen {
                host: self.root.join("dir"),
                guest: "/sub".into(),
            });
        }
        let sink = || Box::new(BufferSink::new(Arc::new(Mutex::new(Vec::new()))));
        WasiConfig {
            args: Vec::new(),
            env: Vec::new(),
            preopens,
            stdin: Stdin::reader(&b"stdin bytes"[..]),
            stdout: sink(),
            stderr: sink(),
        }
    }
}

/// Names in the sandbox: files, directories, links in and out, a FIFO, a
/// loop, and names that do not exist.
const NAMES: &[&str] = &[
    "file", "dir", "inner", "deeper", "in", "indir", "up", "updir", "abs", "loop", "fifo",
    "missing", "secret", "root",
];

/// Components a normalised checkpoint path never holds.
const HOSTILE: &[&str] = &["..", ".", "", "a\0b", "/etc", "dir/../.."];

/// Mostly normalised paths over [`NAMES`] (these get as far as opening
/// something), else paths with hostile parts or arbitrary text.
fn guest_path() -> impl Strategy<Value = String> {
    let name = proptest::sample::select(NAMES);
    let any_part = prop_oneof![3 => name.clone(), 1 => proptest::sample::select(HOSTILE)];
    prop_oneof![
        6 => vec(name, 0..3).prop_map(|parts| parts.join("/")),
        3 => (any::<bool>(), vec(any_part, 0..4))
            .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/"))),
        1 => ".{0,12}",
    ]
}

fn preopen_index() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..2, 1 => 2u32..4, 1 => any::<u32>()]
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    let guest = proptest::sample::select(vec!["/data", "/data", "/sub", "/missing", ""]);
    prop_oneof![
        2 => guest.prop_map(|g| FdKind::Preopen { guest_path: g.to_owned() }),
        3 => (preopen_index(), guest_path()).prop_map(|(preopen, path)| FdKind::Dir { preopen, path }),
        6 => (
            preopen_index(),
            guest_path(),
            prop_oneof![0u64..16, Just(i64::MAX as u64), Just(u64::MAX), any::<u64>()],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(preopen, path, offset, read, write)| FdKind::File {
                preopen,
                path,
                offset,
                read,
                write,
            }),
        1 => Just(FdKind::Stdin),
        1 => Just(FdKind::Stdout),
        1 => Just(FdKind::Stderr),
        1 => Just(FdKind::Closed),
    ]
}

/// Descriptors numbered 3, 4, ... mostly (as a real table is), sometimes
/// any number, repeated or `u32::MAX`.
fn fd_snapshots() -> impl Strategy<Value = Vec<FdSnapshot>> {
    let fd =
        prop_oneof![8 => Just(None), 1 => any::<u32>().prop_map(Some), 1 => Just(Some(u32::MAX))];
    let flags = prop_oneof![4 => 0u16..2, 1 => any::<u16>()];
    let rights = prop_oneof![4 => 0u64..(1 << 30), 1 => any::<u64>()];
    vec((fd, rights.clone(), rights, flags, fd_kind()), 0..5).prop_map(|fds| {
        fds.into_iter()
            .enumerate()
            .map(
                |(i, (fd, rights_base, rights_inheriting, fdflags, kind))| FdSnapshot {
                    fd: fd.unwrap_or(3 + i as u32),
                    rights_base,
                    rights_inheriting,
                    fdflags,
                    kind,
                },
            )
            .collect()
    })
}

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

fn snapshot() -> impl Strategy<Value = WasiSnapshot> {
    let guest = proptest::sample::select(vec!["/data", "/sub", "/missing", "", "/data"]);
    let preopens = prop_oneof![
        4 => Just(vec!["/data".to_owned()]),
        3 => Just(vec!["/data".to_owned(), "/sub".to_owned()]),
        2 => vec(guest.prop_map(str::to_owned), 0..4),
    ];
    (
        vec(".{0,6}", 0..3),
        [counter(), counter(), counter(), counter()],
        preopens,
        fd_snapshots(),
    )
        .prop_map(|(args, n, preopens, fds)| WasiSnapshot {
            args,
            env: vec![("K".into(), "V".into())],
            stdin_offset: n[0],
            stdout_offset: n[1],
            stderr_offset: n[2],
            monotonic_ns: n[3],
            preopens,
            fds,
        })
}

/// The host path behind an open descriptor, as the kernel sees it.
fn real_path(fd: &impl AsRawFd) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Every descriptor of `ctx` lies inside the sandbox root (or a preopen
/// below it), and the secret beside it is never among them.
fn check_confined(ctx: &WasiCtx, sb: &Sandbox) -> Result<(), TestCaseError> {
    for (fd, desc) in ctx.table.iter() {
        let path = match desc {
            Desc::File(f) => real_path(&f.file),
            Desc::Dir(d) => real_path(&d.handle),
            Desc::Stdin | Desc::Stdout | Desc::Stderr => continue,
        };
        prop_assert!(
            path.starts_with(&sb.root),
            "fd {} opened {} outside {}",
            fd,
            path.display(),
            sb.root.display()
        );
        prop_assert_ne!(path, sb.outer.join("secret"));
    }
    Ok(())
}

/// What the guest is told about each descriptor is something WASI defines:
/// rights within the preview1 set, flags a descriptor can have here.
fn check_reported(ctx: &mut WasiCtx) -> Result<(), TestCaseError> {
    use crate::table::{fdflags, rights};
    let mut bytes = vec![0u8; 64];
    let fds: Vec<u32> = ctx.table.iter().map(|(fd, _)| fd).collect();
    for fd in fds {
        let mut mem = GuestMemory::new(&mut bytes);
        prop_assert_eq!(ctx.fd_fdstat_get(&mut mem, fd, 0), Ok(()));
        let flags = mem.read_u16(2).unwrap_or(u16::MAX);
        let base = mem.read_u64(8).unwrap_or(u64::MAX);
        let inheriting = mem.read_u64(16).unwrap_or(u64::MAX);
        prop_assert_eq!(
            flags & !(fdflags::APPEND | fdflags::NONBLOCK),
            0,
            "fd {} flags",
            fd
        );
        prop_assert_eq!((base | inheriting) & !rights::ALL, 0, "fd {} rights", fd);
    }
    Ok(())
}

/// Make the calls a guest would on every descriptor (and a few that do not
/// exist): none may panic, whatever the restored offsets and rights are.
fn exercise(ctx: &mut WasiCtx) {
    const IOV: u32 = 64;
    const OUT: u32 = 128;
    const BUF: u32 = 256;
    let mut bytes = vec![0u8; 4096];
    let mut mem = GuestMemory::new(&mut bytes);
    let _ = mem.write_u32(IOV, BUF);
    let _ = mem.write_u32(IOV + 4, 16);
    let mut fds: Vec<u32> = ctx.table.iter().map(|(fd, _)| fd).collect();
    fds.extend([0, 1, 2, 3, u32::MAX]);
    for fd in fds {
        let _ = ctx.fd_read(&mut mem, fd, IOV, 1, OUT);
        let _ = ctx.fd_write(&mut mem, fd, IOV, 1, OUT);
        let _ = ctx.fd_pread(&mut mem, fd, IOV, 1, u64::MAX, OUT);
        let _ = ctx.fd_seek(&mut mem, fd, 0, 1, OUT);
        let _ = ctx.fd_seek(&mut mem, fd, i64::MAX, 1, OUT);
        let _ = ctx.fd_tell(&mut mem, fd, OUT);
        let _ = ctx.fd_fdstat_get(&mut mem, fd, OUT);
        let _ = ctx.fd_filestat_get(&mut mem, fd, OUT);
        let _ = ctx.fd_prestat_get(&mut mem, fd, OUT);
        let _ = ctx.fd_prestat_dir_name(&mut mem, fd, BUF, 64);
        let _ = ctx.fd_readdir(&mut mem, fd, BUF, 512, 0, OUT);
    }
    let _ = ctx.clock_time_get(&mut mem, 1, OUT);
    let _ = ctx.snapshot();
}

fn check(sb: &Sandbox, snap: &WasiSnapshot, with_sub: bool) -> Result<(), TestCaseError> {
    match WasiCtx::restore(sb.config(with_sub), snap) {
        Ok(mut ctx) => {
            check_confined(&ctx, sb)?;
            // What the snapshot said about the open descriptors holds.
            let open = snap.fds.iter().filter(|f| f.kind != FdKind::Closed).count();
            prop_assert_eq!(ctx.table.iter().count(), open);
            check_reported(&mut ctx)?;
            exercise(&mut ctx);
            check_confined(&ctx, sb)?;
            // A snapshot of the restored context restores again.
            let again = ctx.snapshot();
            drop(ctx);
            let ctx2 = WasiCtx::restore(sb.config(with_sub), &again)
                .map_err(|e| TestCaseError::fail(format!("re-snapshot does not restore: {e}")))?;
            check_confined(&ctx2, sb)?;
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// The property, run with an explicit runner so the sandbox is built once.
#[test]
fn restore_from_any_snapshot_is_confined_and_total() {
    let sb = Sandbox::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        max_shrink_iters: 1024,
        // A runner outside `proptest!` has no source file to persist to.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let with_sub = prop_oneof![3 => Just(true), 1 => Just(false)];
    let result = runner.run(&(snapshot(), with_sub), |(snap, with_sub)| {
        check(&sb, &snap, with_sub)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Snapshots as a live context takes them (paths that exist, preopens
/// given): these restore, and restore to the same snapshot.
#[test]
fn valid_snapshots_round_trip() {
    let sb = Sandbox::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let path = proptest::sample::select(vec!["file", "dir/inner"]);
    let file = (path, 0u64..100, any::<bool>(), 0u16..2).prop_map(|(p, offset, write, append)| {
        (
            FdKind::File {
                preopen: 0,
                path: p.to_owned(),
                offset,
                read: true,
                write,
            },
            append,
        )
    });
    let dir = proptest::sample::select(vec!["", "dir", "dir/deeper"]).prop_map(|p| {
        (
            FdKind::Dir {
                preopen: 0,
                path: p.to_owned(),
            },
            0,
        )
    });
    let fds = vec(prop_oneof![file, dir, Just((FdKind::Closed, 0))], 0..5);
    let result = runner.run(&(fds, counter()), |(kinds, offset)| {
        let mut fds = vec![
            plain(0, FdKind::Stdin),
            plain(1, FdKind::Stdout),
            plain(2, FdKind::Stderr),
            FdSnapshot {
                fd: 3,
                rights_base: crate::table::rights::PREOPEN_BASE,
                rights_inheriting: crate::table::rights::PREOPEN_INHERITING,
                fdflags: 0,
                kind: FdKind::Preopen {
                    guest_path: "/data".into(),
                },
            },
        ];
        for (i, (kind, flags)) in kinds.into_iter().enumerate() {
            let rights = if kind == FdKind::Closed { 0 } else { 1 << 1 };
            fds.push(FdSnapshot {
                fd: 4 + i as u32,
                rights_base: rights,
                rights_inheriting: rights,
                fdflags: flags,
                kind,
            });
        }
        let snap = WasiSnapshot {
            args: vec!["prog".into()],
            env: Vec::new(),
            stdin_offset: offset,
            stdout_offset: offset,
            stderr_offset: 0,
            monotonic_ns: 5,
            preopens: vec!["/data".into()],
            fds,
        };
        let ctx = WasiCtx::restore(sb.config(false), &snap)
            .map_err(|e| TestCaseError::fail(format!("valid snapshot refused: {e}")))?;
        check_confined(&ctx, &sb)?;
        let mut again = ctx.snapshot();
        prop_assert!(again.monotonic_ns >= snap.monotonic_ns);
        again.monotonic_ns = snap.monotonic_ns;
        prop_assert_eq!(again, snap);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn plain(fd: u32, kind: FdKind) -> FdSnapshot {
    let rights = match kind {
        FdKind::Stdin => crate::table::rights::FD_READ,
        _ => crate::table::rights::FD_WRITE,
    };
    FdSnapshot {
        fd,
        rights_base: rights,
        rights_inheriting: rights,
        fdflags: 0,
        kind,
    }
}

// --- regressions found by the harness -------------------------------------------

fn one_fd(kind: FdKind) -> WasiSnapshot {
    WasiSnapshot {
        preopens: vec!["/data".into()],
        fds: vec![FdSnapshot {
            fd: 4,
            rights_base: 0,
            rights_inheriting: 0,
            fdflags: 0,
            kind,
        }],
        ..WasiSnapshot::default()
    }
}

/// Run `f` on another thread; fail instead of hanging the suite.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("finished in time")
}

/// A file descriptor naming a FIFO below the preopen: restore opened it
/// with a plain blocking `open(2)`, which waits for a writer forever.
#[test]
fn a_fifo_does_not_hang_restore() {
    let sb = Arc::new(Sandbox::new());
    for (read, write) in [(true, false), (false, true), (true, true)] {
        let sb = sb.clone();
        let result = within(10, move || {
            let snap = one_fd(FdKind::File {
                preopen: 0,
                path: "fifo".into(),
                offset: 0,
                read,
                write,
            });
            WasiCtx::restore(sb.config(false), &snap).map(|_| ())
        });
        let err = result.expect_err("a FIFO is not a file to resume");
        assert!(err.to_string().contains("fifo"), "{err}");
    }
}

/// A file descriptor whose path is now a directory was restored as a file
/// over the directory handle.
#[test]
fn a_file_that_is_a_directory_is_refused() {
    let sb = Sandbox::new();
    let snap = one_fd(FdKind::File {
        preopen: 0,
        path: "indir".into(),
        offset: 0,
        read: true,
        write: false,
    });
    let err = WasiCtx::restore(sb.config(false), &snap)
        .map(|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("indir"), "{err}");
}

/// Output offsets near `u64::MAX` in a snapshot made the next write to
/// stdout or stderr (or read of stdin) overflow (a panic in debug builds).
#[test]
fn stdio_offsets_at_the_limit_do_not_overflow() {
    let sb = Sandbox::new();
    let snap = WasiSnapshot {
        stdin_offset: u64::MAX,
        stdout_offset: u64::MAX,
        stderr_offset: u64::MAX - 1,
        fds: vec![
            plain(0, FdKind::Stdin),
            plain(1, FdKind::Stdout),
            plain(2, FdKind::Stderr),
        ],
        ..WasiSnapshot::default()
    };
    let mut ctx = WasiCtx::restore(sb.config(false), &snap).expect("restores");
    exercise(&mut ctx);
    assert_eq!(ctx.stdout_offset(), u64::MAX);
    assert_eq!(ctx.stdin_offset(), u64::MAX);
}

/// Rights outside the preview1 set, or fdflags no guest can set here, were
/// restored as given and shown to the guest by `fd_fdstat_get`.
#[test]
fn undefined_rights_and_flags_are_refused() {
    let sb = Sandbox::new();
    let mut snap = one_fd(FdKind::Preopen {
        guest_path: "/data".into(),
    });
    snap.fds[0].rights_inheriting = 1 << 30;
    let err = WasiCtx::restore(sb.config(false), &snap)
        .map(|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("rights outside"), "{err}");
    let mut snap = one_fd(FdKind::File {
        preopen: 0,
        path: "file".into(),
        offset: 0,
        read: true,
        write: false,
    });
    snap.fds[0].fdflags = crate::table::fdflags::SYNC;
    let err = WasiCtx::restore(sb.config(false), &snap)
        .map(|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("fdflags"), "{err}");
}

/// Tens of thousands of preopens and descriptors (a few hundred KiB of
/// snapshot) took time quadratic in their number before any of them was
/// opened: 50 000 of each was minutes of matching.
#[test]
fn many_preopens_and_descriptors_restore_in_linear_time() {
    let sb = Sandbox::new();
    let n = 50_000u32;
    let snap = WasiSnapshot {
        preopens: (0..n).map(|i| format!("/p{i}")).collect(),
        fds: (0..n)
            .map(|fd| FdSnapshot {
                fd,
                rights_base: 0,
                rights_inheriting: 0,
                fdflags: 0,
                kind: FdKind::Closed,
            })
            .collect(),
        ..WasiSnapshot::default()
    };
    let started = std::time::Instant::now();
    let ctx = within(60, move || {
        WasiCtx::restore(sb.config(false), &snap).map(|c| c.snapshot().fds.len())
    });
    assert_eq!(ctx.expect("restores"), n as usize);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// The WASI state of every golden checkpoint (written by earlier releases)
/// passes the stricter checks and restores (its preopens, if any, given as
/// the sandbox root).
#[test]
fn golden_checkpoints_still_restore() {
    let sb = Sandbox::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/golden exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "ckpt") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable");
        let file = wmig_proto::checkpoint::CheckpointFile::decode(&bytes).expect("decodes");
        let snap = &file.manifest.wasi;
        let mut config = sb.config(false);
        config.preopens = snap
            .preopens
            .iter()
            .map(|guest| Preopen {
                host: sb.root.clone(),
                guest: guest.clone(),
            })
            .collect();
        if let Err(e) = WasiCtx::restore(config, snap) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 4, "found {seen} golden checkpoints");
}

#[test]
fn the_sandbox_is_what_the_harness_assumes() {
    let sb = Sandbox::new();
    let root: &Path = &sb.root;
    assert!(root.join("fifo").exists());
    assert_eq!(
        std::fs::read(root.join("up")).expect("the link resolves on the host"),
        b"secret"
    );
}
