//! Differential tests: the same preview1 call sequences run against wmig-wasi
//! and against wasmtime-wasi (the reference), on identical fresh directory
//! trees, and must produce the same errnos and results.
//!
//! Not compared, by design: bad guest pointers (wasmtime traps, wmig answers
//! EFAULT), inode numbers and timestamps (the trees are different copies),
//! and raw readdir order (wasmtime returns OS order, wmig sorts).

use std::os::unix::fs::symlink;
use std::path::Path;

use wasmtime::{Engine, Linker};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wmig_wasi::WasiCtx;

use crate::harness::*;

mod files;
mod paths;
mod stdio;

use files::{files, open_errors};
use paths::{dirs, sandbox, trailing_slashes};
use stdio::{fd_numbers, startup_and_stdio};

/// `outer/root` is preopened as `/data`; `outer/secret` lies outside it.
fn fixture() -> tempfile::TempDir {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("file"), b"hello world").unwrap();
    std::fs::write(root.join("sub/inner"), b"inner").unwrap();
    std::fs::write(outer.path().join("secret"), b"secret").unwrap();
    symlink("file", root.join("link")).unwrap();
    symlink("../secret", root.join("outlink")).unwrap();
    symlink(outer.path().join("secret"), root.join("abslink")).unwrap();
    symlink("../nonexistent", root.join("dangling")).unwrap();
    symlink("sub", root.join("sublink")).unwrap();
    outer
}

fn ours(dir: &Path) -> Harness<WasiCtx> {
    let (cfg, _) = config(&[(dir, "/data")], std::io::empty());
    Harness::new(WasiCtx::new(cfg).unwrap())
}

fn reference(dir: &Path) -> Harness<WasiP1Ctx> {
    let mut b = WasiCtxBuilder::new();
    b.args(&["prog", "a1", "two words"])
        .envs(&[("HOME", "/data"), ("X", "1")])
        .stdout(MemoryOutputPipe::new(usize::MAX))
        .stderr(MemoryOutputPipe::new(usize::MAX));
    b.preopened_dir(dir, "/data", FsPerms::ReadWrite).unwrap();
    let engine = Engine::default();
    let mut linker = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |s| s).unwrap();
    Harness::instantiate(&engine, &linker, b.build_p1(), &shim_wat())
}

/// Run `script` on both implementations and compare line by line.
macro_rules! compare {
    ($script:ident) => {{
        let a = fixture();
        let b = fixture();
        let mut h = ours(&a.path().join("root"));
        h.lenient = true;
        let mut got = $script(&mut h);
        got.extend(h.traps);
        let mut h = reference(&b.path().join("root"));
        h.lenient = true;
        let mut want = $script(&mut h);
        want.extend(h.traps);
        if std::env::var_os("WMIG_WASI_TRACE").is_some() {
            eprintln!("{}", got.join("\n"));
        }
        let diffs: Vec<String> = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g != w)
            .map(|(g, w)| format!("  wmig: {g}\n  wasmtime: {w}"))
            .collect();
        assert!(
            diffs.is_empty() && got.len() == want.len(),
            "differences from wasmtime-wasi:\n{}\nwmig extra: {:?}\nwasmtime extra: {:?}",
            diffs.join("\n"),
            got.get(want.len()..),
            want.get(got.len()..),
        );
    }};
}

/// `label: errno [values]` for one call, reading `out_len` result bytes.
fn rec<T>(
    h: &mut Harness<T>,
    log: &mut Vec<String>,
    label: &str,
    name: &str,
    args: &[i64],
    out_len: usize,
) {
    let e = h.call(name, args);
    let out = if e == 0 && out_len > 0 {
        format!(" {:?}", h.read(OUT, out_len))
    } else {
        String::new()
    };
    log.push(format!("{label}: {e}{out}"));
}

fn path_rec<T>(h: &mut Harness<T>, log: &mut Vec<String>, name: &str, fd: u32, path: &str) {
    let e = h.path_call(name, fd, path);
    log.push(format!("{name}({fd}, {path:?}): {e}"));
}

fn open_rec<T>(
    h: &mut Harness<T>,
    log: &mut Vec<String>,
    fd: u32,
    path: &str,
    oflags: i64,
    rights: i64,
    fdflags: i64,
) -> Option<u32> {
    let r = h.open(fd, path, oflags, rights, fdflags);
    log.push(format!(
        "open({fd}, {path:?}, o={oflags}, r={rights}, f={fdflags}): {r:?}"
    ));
    r.ok()
}

#[test]
fn trailing_slashes_match_wasmtime() {
    compare!(trailing_slashes);
}

#[test]
fn fd_numbers_match_wasmtime() {
    compare!(fd_numbers);
}

#[test]
fn startup_and_stdio_match_wasmtime() {
    compare!(startup_and_stdio);
}

#[test]
fn file_io_matches_wasmtime() {
    compare!(files);
}

#[test]
fn open_errors_match_wasmtime() {
    compare!(open_errors);
}

#[test]
fn directory_calls_match_wasmtime() {
    compare!(dirs);
}

#[test]
fn sandbox_errnos_match_wasmtime() {
    compare!(sandbox);
}
