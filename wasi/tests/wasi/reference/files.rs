//! Scripts: file IO (offsets, append, pread/pwrite, rights and flags as
//! fdstat reports them) and every way `path_open` can fail.

use super::{open_rec, path_rec, rec};
use crate::harness::*;

pub(super) fn files<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    let rw = R_READ | R_WRITE;
    let fd = open_rec(h, l, 3, "new", O_CREAT | O_TRUNC, R_WRITE, 0).unwrap_or(99);
    rec(
        h,
        l,
        "fdstat w",
        "fd_fdstat_get",
        &[fd as i64, OUT as i64],
        24,
    );
    l.push(format!("write: {:?}", h.write_fd(fd, b"0123456789")));
    l.push(format!("read w-only: {:?}", h.read_fd(fd, 4)));
    l.push(format!("seek end-3: {:?}", h.seek(fd, -3, 2)));
    l.push(format!("write: {:?}", h.write_fd(fd, b"ab")));
    l.push(format!("seek cur: {:?}", h.seek(fd, 0, 1)));
    l.push(format!("seek past end: {:?}", h.seek(fd, 100, 0)));
    l.push(format!(
        "seek bad: {:?} {:?}",
        h.seek(fd, -1, 0),
        h.seek(fd, 0, 7)
    ));
    rec(
        h,
        l,
        "filestat",
        "fd_filestat_get",
        &[fd as i64, OUT as i64],
        0,
    );
    l.push(format!(
        "type/nlink/size: {} {} {}",
        h.read(OUT + 16, 1)[0],
        h.u64_at(OUT + 24),
        h.u64_at(OUT + 32)
    ));
    rec(h, l, "set_size", "fd_filestat_set_size", &[fd as i64, 4], 0);
    rec(
        h,
        l,
        "set_flags append",
        "fd_fdstat_set_flags",
        &[fd as i64, 1],
        0,
    );
    rec(
        h,
        l,
        "set_flags sync",
        "fd_fdstat_set_flags",
        &[fd as i64, 16],
        0,
    );
    rec(
        h,
        l,
        "set_flags bad",
        "fd_fdstat_set_flags",
        &[fd as i64, 64],
        0,
    );
    rec(
        h,
        l,
        "fdstat append",
        "fd_fdstat_get",
        &[fd as i64, OUT as i64],
        24,
    );
    l.push(format!("append write: {:?}", h.write_fd(fd, b"Z")));
    rec(h, l, "tell", "fd_tell", &[fd as i64, OUT as i64], 8);
    rec(
        h,
        l,
        "set_rights",
        "fd_fdstat_set_rights",
        &[fd as i64, 0, 0],
        0,
    );
    rec(h, l, "advise bad", "fd_advise", &[fd as i64, 0, 0, 9], 0);
    rec(h, l, "advise", "fd_advise", &[fd as i64, 0, 10, 1], 0);
    rec(h, l, "sync", "fd_sync", &[fd as i64], 0);
    rec(
        h,
        l,
        "set_times now+set",
        "fd_filestat_set_times",
        &[fd as i64, 1, 1, 3],
        0,
    );
    rec(
        h,
        l,
        "set_times",
        "fd_filestat_set_times",
        &[fd as i64, 1, 1_000_000_000, 5],
        0,
    );
    l.push(format!("close: {} {}", h.close(fd), h.close(fd)));

    let fd = open_rec(h, l, 3, "new", 0, rw, 0).unwrap_or(99);
    l.push(format!(
        "read: {:?}",
        h.read_fd(fd, 100).map(String::from_utf8)
    ));
    l.push(format!("read eof: {:?}", h.read_fd(fd, 100)));
    h.write(BUF, b"XY");
    h.write(IOV, &[0, 0x20, 0, 0, 2, 0, 0, 0]);
    rec(
        h,
        l,
        "pwrite",
        "fd_pwrite",
        &[fd as i64, IOV as i64, 1, 1, OUT as i64],
        4,
    );
    rec(
        h,
        l,
        "pread",
        "fd_pread",
        &[fd as i64, IOV as i64, 1, 0, OUT as i64],
        4,
    );
    l.push(format!("pread data: {:?}", h.read(BUF, 2)));
    rec(
        h,
        l,
        "pread past eof",
        "fd_pread",
        &[fd as i64, IOV as i64, 1, 1000, OUT as i64],
        4,
    );
    rec(h, l, "tell", "fd_tell", &[fd as i64, OUT as i64], 8);
    rec(
        h,
        l,
        "fdstat rw",
        "fd_fdstat_get",
        &[fd as i64, OUT as i64],
        24,
    );
    let ro = open_rec(h, l, 3, "file", 0, 0, 0).unwrap_or(99);
    rec(
        h,
        l,
        "fdstat no rights",
        "fd_fdstat_get",
        &[ro as i64, OUT as i64],
        24,
    );
    l.push(format!("write no rights: {:?}", h.write_fd(ro, b"x")));
    l.push(format!("read no rights: {:?}", h.read_fd(ro, 5)));
    rec(
        h,
        l,
        "set_size ro",
        "fd_filestat_set_size",
        &[ro as i64, 1],
        0,
    );
    let ap = open_rec(h, l, 3, "file", 0, R_WRITE, 1).unwrap_or(99);
    l.push(format!("append: {:?}", h.write_fd(ap, b"!")));
    rec(h, l, "append tell", "fd_tell", &[ap as i64, OUT as i64], 8);
    open_rec(h, l, 3, "sub", O_DIRECTORY, rw, 0);
    let d = open_rec(h, l, 3, "sub", O_DIRECTORY, R_READ, 0).unwrap_or(99);
    rec(
        h,
        l,
        "fdstat dir",
        "fd_fdstat_get",
        &[d as i64, OUT as i64],
        24,
    );
    rec(
        h,
        l,
        "dir set_flags",
        "fd_fdstat_set_flags",
        &[d as i64, 0],
        0,
    );
    l.push(format!("read dir: {:?}", h.read_fd(d, 4)));
    l.push(format!("seek dir: {:?}", h.seek(d, 0, 0)));
    rec(
        h,
        l,
        "dir set_times",
        "fd_filestat_set_times",
        &[d as i64, 0, 0, 10],
        0,
    );
    rec(h, l, "dir sync", "fd_sync", &[d as i64], 0);
    l.push(format!(
        "close all: {} {} {} {}",
        h.close(fd),
        h.close(ro),
        h.close(ap),
        h.close(d)
    ));
    l.push(format!("reuse: {:?}", h.open(3, "file", 0, R_READ, 0)));
    log
}

pub(super) fn open_errors<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    let cases: &[(&str, i64, i64, i64)] = &[
        ("missing", 0, R_READ, 0),
        ("file", O_CREAT | O_EXCL, R_WRITE, 0),
        ("file", O_DIRECTORY, R_READ, 0),
        ("file/", 0, R_READ, 0),
        ("file/.", 0, R_READ, 0),
        (".", 0, R_WRITE, 0),
        (".", O_TRUNC, R_READ, 0),
        ("sub", O_CREAT, R_READ, 0),
        ("sub", 0, R_READ, 0),
        ("sub/", 0, R_READ, 0),
        ("sublink/inner", 0, R_READ, 0),
        ("sublink/", O_DIRECTORY, R_READ, 0),
        ("d", O_DIRECTORY | O_CREAT, R_READ, 0),
        ("d", O_DIRECTORY | O_TRUNC, R_READ, 0),
        ("file", 0, R_READ, 16),
        ("file", 0, R_READ, 2),
        ("file", 0, R_READ, 4),
        ("file", 0, R_READ, 1 << 7),
        ("file", 1 << 5, R_READ, 0),
        ("file", 0, 1 << 40, 0),
        ("", 0, R_READ, 0),
        ("missing/x", O_CREAT, R_WRITE, 0),
        ("file/x", O_CREAT, R_WRITE, 0),
        ("newdir/", O_CREAT, R_WRITE, 0),
        ("link", 0, R_READ, 0),
        ("dangling-in", O_CREAT, R_WRITE, 0),
    ];
    for &(path, o, r, f) in cases {
        if let Some(fd) = open_rec(h, l, 3, path, o, r, f) {
            h.close(fd);
        }
    }
    // Not following a final symlink.
    let (p, len) = h.str_at(STR, "link");
    rec(
        h,
        l,
        "open nofollow link",
        "path_open",
        &[3, 0, p, len, 0, R_READ, R_READ, 0, OUT as i64],
        0,
    );
    for fd in [0, 1, 99] {
        open_rec(h, l, fd, "file", 0, R_READ, 0);
    }
    let f = open_rec(h, l, 3, "file", 0, R_READ, 0).unwrap_or(99);
    open_rec(h, l, f, "x", 0, R_READ, 0);
    path_rec(h, l, "path_create_directory", f, "x");
    log
}
