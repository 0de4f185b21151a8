//! Scripts: directory calls (mkdir, rmdir, unlink, rename, link, symlink,
//! readlink, stat, readdir), sandbox escapes and trailing-slash rules.

use super::{open_rec, path_rec, rec};
use crate::harness::*;

pub(super) fn dirs<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    for (name, path) in [
        ("path_create_directory", "newdir"),
        ("path_create_directory", "newdir"),
        ("path_create_directory", "file"),
        ("path_create_directory", "."),
        ("path_create_directory", "newdir/"),
        ("path_create_directory", "missing/x"),
        ("path_remove_directory", "sub"),
        ("path_remove_directory", "file"),
        ("path_remove_directory", "missing"),
        ("path_remove_directory", "empty/"),
        ("path_remove_directory", "."),
        ("path_remove_directory", "sublink"),
        ("path_unlink_file", "sub"),
        ("path_unlink_file", "missing"),
        ("path_unlink_file", "file/"),
        ("path_unlink_file", "."),
        ("path_unlink_file", "sublink"),
        ("path_unlink_file", "newdir"),
    ] {
        path_rec(h, l, name, 3, path);
    }
    for (follow, path) in [
        (1, "link"),
        (0, "link"),
        (1, "sub"),
        (0, "missing"),
        (1, "dangling"),
        (0, "file/"),
    ] {
        let (p, len) = h.str_at(STR, path);
        let e = h.call("path_filestat_get", &[3, follow, p, len, OUT as i64]);
        let st = if e == 0 {
            format!(
                "type {} size {}",
                h.read(OUT + 16, 1)[0],
                h.u64_at(OUT + 32)
            )
        } else {
            String::new()
        };
        l.push(format!("filestat_get {follow} {path}: {e} {st}"));
        rec(
            h,
            l,
            &format!("set_times {path}"),
            "path_filestat_set_times",
            &[3, follow, p, len, 0, 0, 2],
            0,
        );
        rec(
            h,
            l,
            &format!("readlink {path}"),
            "path_readlink",
            &[3, p, len, BUF as i64, 3, OUT as i64],
            4,
        );
    }
    let pair = |h: &mut Harness<T>, a: &str, b: &str| {
        let (ap, al) = h.str_at(STR, a);
        let (bp, bl) = h.str_at(STR2, b);
        (ap, al, bp, bl)
    };
    for (a, b) in [
        ("file", "renamed"),
        ("renamed", "sub"),
        ("sub", "empty"),
        ("missing", "x"),
        ("empty", "sub/inner"),
    ] {
        let (ap, al, bp, bl) = pair(h, a, b);
        rec(
            h,
            l,
            &format!("rename {a} {b}"),
            "path_rename",
            &[3, ap, al, 3, bp, bl],
            0,
        );
    }
    for (flags, a, b) in [
        (0, "renamed", "hard"),
        (1, "renamed", "hard2"),
        (0, "renamed", "hard"),
        (0, "sub", "subhard"),
    ] {
        let (ap, al, bp, bl) = pair(h, a, b);
        rec(
            h,
            l,
            &format!("link {flags} {a} {b}"),
            "path_link",
            &[3, flags, ap, al, 3, bp, bl],
            0,
        );
    }
    for (a, b) in [
        ("renamed", "sym"),
        ("renamed", "sym"),
        ("/abs", "sym2"),
        ("../up", "sym3"),
    ] {
        let (ap, al, bp, bl) = pair(h, a, b);
        rec(
            h,
            l,
            &format!("symlink {a} {b}"),
            "path_symlink",
            &[ap, al, 3, bp, bl],
            0,
        );
    }
    let sub = h.open(3, "empty", O_DIRECTORY, R_READ, 0).unwrap_or(99);
    let (p, len) = h.str_at(STR, "inner");
    rec(
        h,
        l,
        "filestat via subdir",
        "path_filestat_get",
        &[sub as i64, 0, p, len, OUT as i64],
        0,
    );
    // Readdir: names and types as a set, then cookies and truncation.
    rec(
        h,
        l,
        "readdir",
        "fd_readdir",
        &[3, BUF as i64, 4096, 0, OUT as i64],
        0,
    );
    let n = h.u32_at(OUT) as usize;
    let bytes = h.read(BUF, n);
    let mut entries = Vec::new();
    let mut i = 0;
    while i + 24 <= bytes.len() {
        let namlen = u32::from_le_bytes(bytes[i + 16..i + 20].try_into().unwrap()) as usize;
        entries.push((
            String::from_utf8_lossy(&bytes[i + 24..i + 24 + namlen]).into_owned(),
            bytes[i + 20],
        ));
        i += 24 + namlen;
    }
    entries.sort();
    l.push(format!("entries {entries:?}"));
    rec(
        h,
        l,
        "readdir small",
        "fd_readdir",
        &[3, BUF as i64, 30, 0, OUT as i64],
        4,
    );
    rec(
        h,
        l,
        "readdir past end",
        "fd_readdir",
        &[3, BUF as i64, 4096, 1000, OUT as i64],
        4,
    );
    log
}

pub(super) fn sandbox<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    for path in [
        "../secret",
        "/etc/passwd",
        "sub/../../secret",
        "outlink",
        "abslink",
        "dangling",
        "sub/../sub/inner",
        "./sub/./inner",
    ] {
        if let Some(fd) = open_rec(h, l, 3, path, 0, R_READ, 0) {
            h.close(fd);
        }
    }
    open_rec(h, l, 3, "dangling", O_CREAT, R_WRITE, 0);
    open_rec(h, l, 3, "../created", O_CREAT, R_WRITE, 0);
    let sub = h.open(3, "sub", O_DIRECTORY, R_READ, 0).unwrap();
    open_rec(h, l, sub, "../file", 0, R_READ, 0);
    open_rec(h, l, sub, "..", O_DIRECTORY, R_READ, 0);
    path_rec(h, l, "path_create_directory", 3, "../x");
    path_rec(h, l, "path_unlink_file", 3, "../secret");
    path_rec(h, l, "path_remove_directory", 3, "..");
    path_rec(h, l, "path_unlink_file", 3, "outlink");
    log
}

/// Trailing `/`, `/.` and `..`: cap-std's "via parent" rules.
pub(super) fn trailing_slashes<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    for (name, path) in [
        ("path_create_directory", "brand/"),
        ("path_create_directory", "brand2/."),
        ("path_create_directory", "brand/new/"),
        ("path_remove_directory", "brand/new/."),
        ("path_remove_directory", "brand/new/.."),
        ("path_remove_directory", "brand/new"),
        ("path_unlink_file", "sub/"),
        ("path_unlink_file", "sub/inner/"),
        ("path_unlink_file", "link/"),
        ("path_remove_directory", "sublink/"),
        ("path_remove_directory", "sublink"),
    ] {
        path_rec(h, l, name, 3, path);
    }
    for (follow, path) in [
        (0, "link/"),
        (0, "link/."),
        (0, "./link"),
        (0, "sub/inner/"),
        (0, "sublink/"),
        (1, "file/"),
        (0, "sub/.."),
        (1, "."),
    ] {
        let (p, len) = h.str_at(STR, path);
        let e = h.call("path_filestat_get", &[3, follow, p, len, OUT as i64]);
        let st = if e == 0 { h.read(OUT + 16, 1)[0] } else { 0 };
        l.push(format!("filestat_get {follow} {path:?}: {e} {st}"));
        rec(
            h,
            l,
            &format!("set_times {follow} {path:?}"),
            "path_filestat_set_times",
            &[3, follow, p, len, 0, 0, 2],
            0,
        );
        rec(
            h,
            l,
            &format!("readlink {path:?}"),
            "path_readlink",
            &[3, p, len, BUF as i64, 64, OUT as i64],
            4,
        );
    }
    for (a, b) in [
        ("file/", "f2"),
        ("file", "f2/"),
        ("empty/", "e2/"),
        ("e2", "e3/."),
        ("sub/", "sub2"),
        ("link", "sub2/link2"),
    ] {
        let (ap, al) = h.str_at(STR, a);
        let (bp, bl) = h.str_at(STR2, b);
        rec(
            h,
            l,
            &format!("rename {a:?} {b:?}"),
            "path_rename",
            &[3, ap, al, 3, bp, bl],
            0,
        );
    }
    for (a, b) in [("f2", "l/"), ("sub2/", "l2"), ("sub2/inner", "sub2/.")] {
        let (ap, al) = h.str_at(STR, a);
        let (bp, bl) = h.str_at(STR2, b);
        rec(
            h,
            l,
            &format!("link {a:?} {b:?}"),
            "path_link",
            &[3, 0, ap, al, 3, bp, bl],
            0,
        );
        rec(
            h,
            l,
            &format!("symlink {a:?} {b:?}"),
            "path_symlink",
            &[ap, al, 3, bp, bl],
            0,
        );
    }
    log
}
