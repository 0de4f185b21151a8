//! Scripts: process start-up (prestat, fdstat of every initial fd), stdio
//! misuse, clocks and other argument-only calls, and fd numbering.

use super::{open_rec, rec};
use crate::harness::*;

pub(super) fn startup_and_stdio<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    for fd in [0, 1, 2, 3, 4] {
        rec(
            h,
            l,
            &format!("prestat_get {fd}"),
            "fd_prestat_get",
            &[fd, OUT as i64],
            8,
        );
        rec(
            h,
            l,
            &format!("prestat_dir_name {fd}"),
            "fd_prestat_dir_name",
            &[fd, OUT as i64, 16],
            5,
        );
        rec(
            h,
            l,
            &format!("fdstat_get {fd}"),
            "fd_fdstat_get",
            &[fd, OUT as i64],
            24,
        );
        rec(
            h,
            l,
            &format!("filestat_get {fd} type"),
            "fd_filestat_get",
            &[fd, OUT as i64],
            0,
        );
        rec(h, l, &format!("tell {fd}"), "fd_tell", &[fd, OUT as i64], 0);
        rec(
            h,
            l,
            &format!("seek {fd}"),
            "fd_seek",
            &[fd, 0, 0, OUT as i64],
            0,
        );
        rec(
            h,
            l,
            &format!("allocate {fd}"),
            "fd_allocate",
            &[fd, 0, 1],
            0,
        );
        rec(h, l, &format!("sync {fd}"), "fd_sync", &[fd], 0);
        rec(h, l, &format!("datasync {fd}"), "fd_datasync", &[fd], 0);
        rec(
            h,
            l,
            &format!("advise {fd}"),
            "fd_advise",
            &[fd, 0, 0, 0],
            0,
        );
        rec(
            h,
            l,
            &format!("set_flags {fd}"),
            "fd_fdstat_set_flags",
            &[fd, 0],
            0,
        );
        rec(
            h,
            l,
            &format!("set_rights {fd}"),
            "fd_fdstat_set_rights",
            &[fd, 0, 0],
            0,
        );
        rec(
            h,
            l,
            &format!("set_size {fd}"),
            "fd_filestat_set_size",
            &[fd, 0],
            0,
        );
        rec(
            h,
            l,
            &format!("pread {fd}"),
            "fd_pread",
            &[fd, IOV as i64, 0, 0, OUT as i64],
            0,
        );
        rec(
            h,
            l,
            &format!("pwrite {fd}"),
            "fd_pwrite",
            &[fd, IOV as i64, 0, 0, OUT as i64],
            0,
        );
        rec(
            h,
            l,
            &format!("readdir {fd}"),
            "fd_readdir",
            &[fd, BUF as i64, 0, 0, OUT as i64],
            0,
        );
        rec(
            h,
            l,
            &format!("sock_shutdown {fd}"),
            "sock_shutdown",
            &[fd, 0],
            0,
        );
    }
    rec(
        h,
        l,
        "write stdin",
        "fd_write",
        &[0, IOV as i64, 0, OUT as i64],
        0,
    );
    rec(
        h,
        l,
        "read stdout",
        "fd_read",
        &[1, IOV as i64, 0, OUT as i64],
        0,
    );
    rec(
        h,
        l,
        "args_sizes",
        "args_sizes_get",
        &[OUT as i64, OUT as i64 + 4],
        8,
    );
    rec(
        h,
        l,
        "environ_sizes",
        "environ_sizes_get",
        &[OUT as i64, OUT as i64 + 4],
        8,
    );
    for id in [0, 1, 2, 3, 4] {
        rec(
            h,
            l,
            &format!("clock_res {id}"),
            "clock_res_get",
            &[id, OUT as i64],
            0,
        );
        rec(
            h,
            l,
            &format!("clock_time {id}"),
            "clock_time_get",
            &[id, 0, OUT as i64],
            0,
        );
    }
    rec(h, l, "proc_raise", "proc_raise", &[1], 0);
    rec(h, l, "sched_yield", "sched_yield", &[], 0);
    rec(
        h,
        l,
        "poll none",
        "poll_oneoff",
        &[BUF as i64, STR as i64, 0, OUT as i64],
        0,
    );
    rec(h, l, "renumber 3->9", "fd_renumber", &[3, 9], 0);
    rec(h, l, "renumber 1->1", "fd_renumber", &[1, 1], 0);
    rec(h, l, "close 9", "fd_close", &[9], 0);
    log
}

/// Descriptor numbers after several closes and a renumber.
pub(super) fn fd_numbers<T>(h: &mut Harness<T>) -> Vec<String> {
    let mut log = Vec::new();
    let l = &mut log;
    for name in ["a", "b", "c", "d", "e"] {
        open_rec(h, l, 3, name, O_CREAT, R_WRITE, 0);
    }
    l.push(format!(
        "close 5, 7, 4: {} {} {}",
        h.close(5),
        h.close(7),
        h.close(4)
    ));
    for name in ["f", "g"] {
        open_rec(h, l, 3, name, O_CREAT, R_WRITE, 0);
    }
    rec(h, l, "renumber 8->1", "fd_renumber", &[8, 1], 0);
    rec(h, l, "close 0", "fd_close", &[0], 0);
    for name in ["h", "i", "j"] {
        open_rec(h, l, 3, name, O_CREAT, R_WRITE, 0);
    }
    log
}
