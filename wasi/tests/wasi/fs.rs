//! Files and directories below a preopen: open/read/write, offsets,
//! readdir, metadata, and the errnos of common mistakes.

use std::path::Path;

use wmig_wasi::WasiCtx;

use crate::harness::*;

fn harness(dir: &Path) -> Harness {
    let (cfg, _) = config(&[(dir, "/data")], std::io::empty());
    Harness::new(WasiCtx::new(cfg).unwrap())
}

#[test]
fn prestat_names_the_guest_path() {
    let t = tempfile::tempdir().unwrap();
    let mut h = harness(t.path());
    assert_eq!(h.call("fd_prestat_get", &[3, OUT as i64]), 0);
    assert_eq!((h.read(OUT, 1)[0], h.u32_at(OUT + 4)), (0, 5));
    assert_eq!(h.call("fd_prestat_dir_name", &[3, 200, 5]), 0);
    assert_eq!(h.read(200, 5), b"/data");
    assert_eq!(h.call("fd_prestat_dir_name", &[3, 200, 4]), 37); // ENAMETOOLONG
    assert_eq!(
        h.call("fd_prestat_dir_name", &[3, 0x2_0000, 5]),
        errno::FAULT
    );
    assert_eq!(h.call("fd_prestat_get", &[4, OUT as i64]), errno::BADF);
    assert_eq!(h.call("fd_prestat_get", &[1, OUT as i64]), errno::BADF);
    assert_eq!(h.call("fd_fdstat_get", &[3, OUT as i64]), 0);
    assert_eq!(h.read(OUT, 1)[0], 3); // directory
}

#[test]
fn write_close_reopen_read() {
    let t = tempfile::tempdir().unwrap();
    let mut h = harness(t.path());
    let fd = h
        .open(3, "notes.txt", O_CREAT | O_TRUNC, R_WRITE, 0)
        .unwrap();
    assert_eq!(fd, 4);
    assert_eq!(h.write_fd(fd, b"hello "), Ok(6));
    assert_eq!(h.write_fd(fd, b"world"), Ok(5));
    assert_eq!(h.read_fd(fd, 4), Err(errno::BADF), "write-only");
    assert_eq!(h.close(fd), 0);
    assert_eq!(h.close(fd), errno::BADF);
    assert_eq!(
        std::fs::read(t.path().join("notes.txt")).unwrap(),
        b"hello world"
    );

    let fd = h.open(3, "./notes.txt", 0, R_READ, 0).unwrap();
    assert_eq!(fd, 4, "lowest free fd is reused");
    assert_eq!(h.read_fd(fd, 100).unwrap(), b"hello world");
    assert_eq!(h.read_fd(fd, 100).unwrap(), b"");
    assert_eq!(h.write_fd(fd, b"x"), Err(errno::BADF), "read-only");
}

#[test]
fn seek_tell_pread_pwrite() {
    let t = tempfile::tempdir().unwrap();
    let mut h = harness(t.path());
    let fd = h.open(3, "f", O_CREAT, R_READ | R_WRITE, 0).unwrap();
    h.write_fd(fd, b"hello world").unwrap();
    assert_eq!(h.seek(fd, 6, 0), Ok(6));
    assert_eq!(h.read_fd(fd, 5).unwrap(), b"world");
    assert_eq!(h.seek(fd, -5, 1), Ok(6));
    assert_eq!(h.seek(fd, -1, 2), Ok(10));
    assert_eq!(h.seek(fd, -1, 0), Err(errno::INVAL));
    assert_eq!(h.seek(fd, -100, 1), Err(errno::INVAL));
    assert!(
        h.try_call("fd_seek", &[fd as i64, 0, 3, OUT as i64])
            .is_err(),
        "bad whence traps"
    );
    assert_eq!(h.call("fd_tell", &[fd as i64, OUT as i64]), 0);
    assert_eq!(h.u64_at(OUT), 10);
    assert_eq!(h.seek(3, 0, 0), Err(errno::BADF), "directories do not seek");

    // pwrite/pread leave the cursor alone.
    h.write(BUF, b"HELLO");
    h.write(
        IOV,
        &[(BUF & 0xff) as u8, (BUF >> 8) as u8, 0, 0, 5, 0, 0, 0],
    );
    assert_eq!(
        h.call("fd_pwrite", &[fd as i64, IOV as i64, 1, 0, OUT as i64]),
        0
    );
    assert_eq!(
        h.call("fd_pread", &[fd as i64, IOV as i64, 1, 6, OUT as i64]),
        0
    );
    assert_eq!((h.u32_at(OUT), h.read(BUF, 5)), (5, b"world".to_vec()));
    assert_eq!(h.call("fd_tell", &[fd as i64, OUT as i64]), 0);
    assert_eq!(h.u64_at(OUT), 10);
    assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"HELLO world");
}

#[test]
fn append_mode_writes_at_the_end() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("log"), b"one\n").unwrap();
    let mut h = harness(t.path());
    let fd = h.open(3, "log", 0, R_READ | R_WRITE, 1).unwrap();
    std::fs::write(t.path().join("log"), b"one\ntwo\n").unwrap();
    h.write_fd(fd, b"three\n").unwrap();
    assert_eq!(
        std::fs::read(t.path().join("log")).unwrap(),
        b"one\ntwo\nthree\n"
    );
    assert_eq!(h.call("fd_tell", &[fd as i64, OUT as i64]), 0);
    assert_eq!(h.u64_at(OUT), 14);
    assert_eq!(h.call("fd_fdstat_get", &[fd as i64, OUT as i64]), 0);
    assert_eq!((h.read(OUT, 1)[0], h.read(OUT + 2, 1)[0]), (4, 1)); // regular file, APPEND
}

#[test]
fn readdir_is_sorted_with_cookies() {
    let t = tempfile::tempdir().unwrap();
    for name in ["b", "a", "c"] {
        std::fs::write(t.path().join(name), name).unwrap();
    }
    std::fs::create_dir(t.path().join("d")).unwrap();
    let mut h = harness(t.path());
    let parse = |h: &Harness, len: usize| {
        let bytes = h.read(BUF, len);
        let mut out = Vec::new();
        let mut i = 0;
        while i + 24 <= bytes.len() {
            let next = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
            let namlen = u32::from_le_bytes(bytes[i + 16..i + 20].try_into().unwrap()) as usize;
            let name = String::from_utf8(bytes[i + 24..i + 24 + namlen].to_vec()).unwrap();
            out.push((next, name, bytes[i + 20]));
            i += 24 + namlen;
        }
        out
    };
    assert_eq!(
        h.call("fd_readdir", &[3, BUF as i64, 4096, 0, OUT as i64]),
        0
    );
    let n = h.u32_at(OUT) as usize;
    let all = parse(&h, n);
    let names: Vec<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, [".", "..", "a", "b", "c", "d"]);
    assert_eq!(all[5], (6, "d".to_owned(), 3));
    assert_eq!(all[2].2, 4);

    assert_eq!(
        h.call("fd_readdir", &[3, BUF as i64, 4096, 3, OUT as i64]),
        0
    );
    let rest = parse(&h, h.u32_at(OUT) as usize);
    assert_eq!(rest.first().map(|e| e.1.as_str()), Some("b"));
    // A small buffer is filled completely: the guest must call again.
    assert_eq!(h.call("fd_readdir", &[3, BUF as i64, 30, 0, OUT as i64]), 0);
    assert_eq!(h.u32_at(OUT), 30);
    let fd = h.open(3, "a", 0, R_READ, 0).unwrap();
    assert_eq!(
        h.call("fd_readdir", &[fd as i64, BUF as i64, 100, 0, OUT as i64]),
        errno::BADF
    );
}

#[test]
fn directories_metadata_and_renames() {
    let t = tempfile::tempdir().unwrap();
    let mut h = harness(t.path());
    assert_eq!(h.path_call("path_create_directory", 3, "sub"), 0);
    assert_eq!(h.path_call("path_create_directory", 3, "sub"), errno::EXIST);
    let sub = h.open(3, "sub", O_DIRECTORY, R_READ, 0).unwrap();
    let f = h.open(sub, "inner", O_CREAT, R_WRITE, 0).unwrap();
    h.write_fd(f, b"12345").unwrap();
    assert!(t.path().join("sub/inner").is_file());

    let (p, l) = h.str_at(STR, "sub/inner");
    assert_eq!(h.call("path_filestat_get", &[3, 1, p, l, 512]), 0);
    assert_eq!((h.read(512 + 16, 1)[0], h.u64_at(512 + 32)), (4, 5));
    assert_eq!(h.call("fd_filestat_get", &[f as i64, 600]), 0);
    assert_eq!(h.u64_at(600 + 8), h.u64_at(512 + 8), "same inode both ways");
    assert_eq!(h.call("fd_filestat_set_size", &[f as i64, 2]), 0);
    assert_eq!(std::fs::read(t.path().join("sub/inner")).unwrap(), b"12");

    let (op, ol) = h.str_at(STR, "inner");
    let (np, nl) = h.str_at(STR2, "../moved");
    assert_eq!(
        h.call("path_rename", &[sub as i64, op, ol, sub as i64, np, nl]),
        errno::PERM
    );
    let (np, nl) = h.str_at(STR2, "moved");
    assert_eq!(h.call("path_rename", &[sub as i64, op, ol, 3, np, nl]), 0);
    assert!(t.path().join("moved").is_file());
    assert_eq!(
        h.path_call("path_remove_directory", 3, "moved"),
        errno::NOTDIR
    );
    assert_eq!(h.path_call("path_unlink_file", 3, "sub"), errno::ISDIR);
    std::fs::write(t.path().join("sub/x"), b"").unwrap();
    assert_eq!(
        h.path_call("path_remove_directory", 3, "sub"),
        errno::NOTEMPTY
    );
    assert_eq!(h.path_call("path_unlink_file", 3, "sub/x"), 0);
    assert_eq!(h.path_call("path_remove_directory", 3, "sub"), 0);
    assert_eq!(h.path_call("path_unlink_file", 3, "moved"), 0);
    assert_eq!(h.path_call("path_unlink_file", 3, "moved"), errno::NOENT);
}

#[test]
fn open_errors() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), b"x").unwrap();
    let mut h = harness(t.path());
    assert_eq!(h.open(3, "missing", 0, R_READ, 0), Err(errno::NOENT));
    assert_eq!(
        h.open(3, "file", O_CREAT | O_EXCL, R_WRITE, 0),
        Err(errno::EXIST)
    );
    assert_eq!(
        h.open(3, "file", O_DIRECTORY, R_READ, 0),
        Err(errno::NOTDIR)
    );
    assert_eq!(h.open(3, "file/", 0, R_READ, 0), Err(errno::NOTDIR));
    assert_eq!(h.open(3, ".", 0, R_WRITE, 0), Err(errno::ISDIR));
    assert_eq!(
        h.open(3, "d", O_DIRECTORY | O_CREAT, R_READ, 0),
        Err(errno::INVAL)
    );
    assert_eq!(
        h.open(3, "file", 0, R_READ, 1 << 4),
        Err(errno::NOTSUP),
        "SYNC"
    );
    assert_eq!(h.open(99, "file", 0, R_READ, 0), Err(errno::BADF));
    assert_eq!(h.open(1, "file", 0, R_READ, 0), Err(errno::BADF));
    let fd = h.open(3, "file", 0, R_READ, 0).unwrap();
    assert_eq!(h.open(fd, "x", 0, R_READ, 0), Err(errno::NOTDIR));
    assert_eq!(h.read_fd(3, 10), Err(errno::BADF), "fd_read on a directory");
}

#[test]
fn renumber_and_lowest_free_allocation() {
    let t = tempfile::tempdir().unwrap();
    let mut h = harness(t.path());
    let fds: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|n| h.open(3, n, O_CREAT, R_WRITE, 0).unwrap())
        .collect();
    assert_eq!(fds, [4, 5, 6]);
    assert_eq!(h.close(5), 0);
    assert_eq!(h.open(3, "d", O_CREAT, R_WRITE, 0), Ok(5));
    assert_eq!(h.call("fd_renumber", &[6, 4]), 0);
    h.write_fd(4, b"c!").unwrap();
    assert_eq!(std::fs::read(t.path().join("c")).unwrap(), b"c!");
    assert_eq!(h.call("fd_renumber", &[6, 4]), errno::BADF);
    assert_eq!(h.call("fd_renumber", &[4, 40]), errno::BADF);
}

#[test]
fn symlinks_inside_the_preopen_work() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("target"), b"via link").unwrap();
    let mut h = harness(t.path());
    let (op, ol) = h.str_at(STR, "target");
    let (np, nl) = h.str_at(STR2, "link");
    assert_eq!(h.call("path_symlink", &[op, ol, 3, np, nl]), 0);
    let (p, l) = h.str_at(STR, "link");
    assert_eq!(h.call("path_readlink", &[3, p, l, 512, 64, OUT as i64]), 0);
    assert_eq!(h.read(512, h.u32_at(OUT) as usize), b"target");
    let fd = h.open(3, "link", 0, R_READ, 0).unwrap();
    assert_eq!(h.read_fd(fd, 100).unwrap(), b"via link");
    // Not following the final link: lstat sees a symlink (type 7).
    assert_eq!(h.call("path_filestat_get", &[3, 0, p, l, 512]), 0);
    assert_eq!(h.read(512 + 16, 1)[0], 7);
    let (op, ol) = h.str_at(STR, "target");
    let (np2, nl2) = h.str_at(STR2, "hard");
    assert_eq!(h.call("path_link", &[3, 0, op, ol, 3, np2, nl2]), 0);
    assert_eq!(std::fs::read(t.path().join("hard")).unwrap(), b"via link");
}
