//! A guest can never reach outside its preopens: `..`, absolute paths and
//! symlinks pointing out are all refused with EPERM (as cap-std does in
//! wasmtime-wasi), and nothing outside is created, read or removed.

use std::os::unix::fs::symlink;

use wmig_wasi::WasiCtx;

use crate::harness::*;

struct Setup {
    _outer: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
    h: Harness,
}

fn setup() -> Setup {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(outer.path().join("secret"), b"top secret").unwrap();
    let (cfg, _) = config(&[(&root, "/data")], std::io::empty());
    let h = Harness::new(WasiCtx::new(cfg).unwrap());
    let outside = outer.path().to_path_buf();
    Setup {
        _outer: outer,
        root,
        outside,
        h,
    }
}

#[test]
fn dotdot_and_absolute_paths_are_refused() {
    let mut s = setup();
    let h = &mut s.h;
    assert_eq!(h.open(3, "../secret", 0, R_READ, 0), Err(errno::PERM));
    assert_eq!(
        h.open(3, "sub/../../secret", 0, R_READ, 0),
        Err(errno::PERM)
    );
    assert_eq!(h.open(3, "../x", O_CREAT, R_WRITE, 0), Err(errno::PERM));
    let abs = s.outside.join("secret");
    assert_eq!(
        h.open(3, abs.to_str().unwrap(), 0, R_READ, 0),
        Err(errno::PERM)
    );
    assert_eq!(h.open(3, "/etc/passwd", 0, R_READ, 0), Err(errno::PERM));
    assert_eq!(
        h.path_call("path_create_directory", 3, "../newdir"),
        errno::PERM
    );
    assert_eq!(h.path_call("path_unlink_file", 3, "../secret"), errno::PERM);
    assert_eq!(h.path_call("path_remove_directory", 3, ".."), errno::PERM);
    assert!(!s.outside.join("x").exists());
    assert!(!s.outside.join("newdir").exists());
    assert!(s.outside.join("secret").exists());
    // `..` that stays inside is fine.
    assert!(h.open(3, "sub/../sub", O_DIRECTORY, R_READ, 0).is_ok());
}

#[test]
fn a_directory_fd_is_its_own_sandbox() {
    let mut s = setup();
    std::fs::write(s.root.join("inroot"), b"r").unwrap();
    let h = &mut s.h;
    let sub = h.open(3, "sub", O_DIRECTORY, R_READ, 0).unwrap();
    // wasmtime (cap-std) refuses `..` above any directory descriptor.
    assert_eq!(h.open(sub, "../inroot", 0, R_READ, 0), Err(errno::PERM));
}

#[test]
fn symlinks_leading_outside_are_refused() {
    let mut s = setup();
    symlink(s.outside.join("secret"), s.root.join("abs")).unwrap();
    symlink("../secret", s.root.join("rel")).unwrap();
    symlink("../../", s.root.join("sub/up")).unwrap();
    symlink("../nonexistent", s.root.join("dangling")).unwrap();
    let h = &mut s.h;
    assert_eq!(h.open(3, "abs", 0, R_READ, 0), Err(errno::PERM));
    assert_eq!(h.open(3, "rel", 0, R_READ, 0), Err(errno::PERM));
    assert_eq!(h.open(3, "sub/up/secret", 0, R_READ, 0), Err(errno::PERM));
    // A dangling link may not be used to create a file outside.
    assert_eq!(h.open(3, "dangling", O_CREAT, R_WRITE, 0), Err(errno::PERM));
    assert!(!s.outside.join("nonexistent").exists());
    let (p, l) = h.str_at(STR, "rel");
    assert_eq!(h.call("path_filestat_get", &[3, 1, p, l, 512]), errno::PERM);
    // Without following, the link itself is inside and may be inspected.
    assert_eq!(h.call("path_filestat_get", &[3, 0, p, l, 512]), 0);
    // Creating a link with an absolute target is refused outright.
    let (op, ol) = h.str_at(STR, "/etc/passwd");
    let (np, nl) = h.str_at(STR2, "newlink");
    assert_eq!(h.call("path_symlink", &[op, ol, 3, np, nl]), errno::PERM);
    // Relative links out can be created (as in wasmtime) but never followed.
    let (op, ol) = h.str_at(STR, "../secret");
    assert_eq!(h.call("path_symlink", &[op, ol, 3, np, nl]), 0);
    assert_eq!(h.open(3, "newlink", 0, R_READ, 0), Err(errno::PERM));
}
