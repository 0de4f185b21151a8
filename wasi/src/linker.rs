//! Wiring: registers all 46 `wasi_snapshot_preview1` functions on a
//! `wasmtime::Linker` with their exact core-wasm signatures.
//!
//! Each import borrows the guest's exported `memory` and the host's
//! `WasiCtx` together (`Memory::data_and_store_mut`), runs the call's body and
//! returns its errno. What traps is what traps under wasmtime-wasi (whose
//! wiggle bindings convert arguments before the call): a module without a
//! `memory` export, a flag or enum argument outside its type (unknown bits,
//! clock id, whence, advice, signal), and `proc_exit`, which unwinds with
//! [`I32Exit`]. Bad pointers are the deliberate exception: wasmtime traps,
//! wmig answers `EFAULT` so a guest can survive its own mistake.

use wasmtime::{Caller, Extern, Linker};

use crate::dir::OpenArgs;
use crate::errno::WasiResult;
use crate::memory::GuestMemory;
use crate::{I32Exit, WasiCtx};

const MODULE: &str = "wasi_snapshot_preview1";

/// Run one call body against the caller's memory and context.
fn dispatch<T: 'static>(
    caller: &mut Caller<'_, T>,
    get: fn(&mut T) -> &mut WasiCtx,
    name: &'static str,
    body: impl FnOnce(&mut WasiCtx, &mut GuestMemory<'_>) -> WasiResult,
) -> wasmtime::Result<i32> {
    let memory = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return Err(wasmtime::Error::msg("missing required memory export")),
    };
    let (bytes, data) = memory.data_and_store_mut(caller);
    let mut mem = GuestMemory::new(bytes);
    let ctx = get(data);
    if ctx.interrupt.is_interrupted() {
        return Err(wasmtime::Error::new(crate::Interrupted));
    }
    let result = body(ctx, &mut mem);
    if ctx.interrupt.is_interrupted() {
        return Err(wasmtime::Error::new(crate::Interrupted));
    }
    match result {
        Ok(()) => Ok(0),
        Err(errno) => {
            tracing::trace!(call = name, ?errno, "wasi call failed");
            Ok(i32::from(errno.0))
        }
    }
}

/// `poll_oneoff` as the import runs it, for a host that wraps the import
/// (wmig's host unwinds from inside it when a pause ends the sleep).
pub fn poll_oneoff<T: 'static>(
    caller: &mut Caller<'_, T>,
    get: fn(&mut T) -> &mut WasiCtx,
    subs: u32,
    events: u32,
    n: u32,
    out: u32,
) -> wasmtime::Result<i32> {
    dispatch(caller, get, "poll_oneoff", |c, m| {
        c.poll_oneoff(m, subs, events, n, out)
    })
}

/// `fd_read` as the import runs it, for a host that wraps the import
/// (rewriter 4 unwinds from inside it while stdin waits for input).
pub fn fd_read<T: 'static>(
    caller: &mut Caller<'_, T>,
    get: fn(&mut T) -> &mut WasiCtx,
    fd: u32,
    iovs: u32,
    n: u32,
    out: u32,
) -> wasmtime::Result<i32> {
    dispatch(caller, get, "fd_read", |c, m| {
        c.fd_read(m, fd, iovs, n, out)
    })
}

/// Argument types whose invalid values trap (wiggle's "convert" errors).
mod valid {
    pub const CLOCKID_MAX: u32 = 3;
    pub const WHENCE_MAX: u32 = 2;
    pub const ADVICE_MAX: u32 = 5;
    pub const SIGNAL_MAX: u32 = 30;
    pub const FDFLAGS: u32 = 0x1f;
    pub const OFLAGS: u32 = 0xf;
    pub const LOOKUPFLAGS: u32 = 0x1;
    pub const FSTFLAGS: u32 = 0xf;
    pub const RIFLAGS: u32 = 0x3;
    pub const SDFLAGS: u32 = 0x3;
    pub const SIFLAGS_MAX: u32 = 0xffff;
    pub const RIGHTS: u64 = (1 << 30) - 1;

    pub fn bits(v: u32, all: u32) -> bool {
        v & !all == 0
    }

    pub fn rights(v: u64) -> bool {
        v & !RIGHTS == 0
    }
}

fn bad_arg(name: &str, what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("{MODULE}::{name}: invalid {what} argument"))
}

/// `wasi!(linker, get, "name", |ctx, mem, a: u32, ...| [where [ok => "What"]] body)`
/// registers one import whose body returns `WasiResult`; failed checks trap.
macro_rules! wasi {
    ($linker:ident, $get:ident, $name:literal, |$ctx:ident, $mem:ident $(, $arg:ident : $ty:ty)*|
     $(where [$($ok:expr => $what:literal),+])? $body:expr) => {
        $linker.func_wrap(
            MODULE,
            $name,
            move |mut caller: Caller<'_, T>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                $($(if !$ok {
                    return Err(bad_arg($name, $what));
                })+)?
                dispatch(&mut caller, $get, $name, |$ctx, $mem| $body)
            },
        )?;
    };
}

/// Register every preview1 function. `get` projects the store's data to
/// its `WasiCtx`.
#[rustfmt::skip] // one line per import reads as a table
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut WasiCtx,
) -> wasmtime::Result<()> {
    use valid::*;
    wasi!(linker, get, "args_get", |c, m, argv: u32, buf: u32| c.args_get(m, argv, buf));
    wasi!(linker, get, "args_sizes_get", |c, m, n: u32, size: u32| c.args_sizes_get(m, n, size));
    wasi!(linker, get, "environ_get", |c, m, env: u32, buf: u32| c.environ_get(m, env, buf));
    wasi!(linker, get, "environ_sizes_get", |c, m, n: u32, size: u32| c.environ_sizes_get(m, n, size));
    wasi!(linker, get, "clock_res_get", |c, m, id: u32, out: u32|
        where [id <= CLOCKID_MAX => "Clockid"] c.clock_res_get(m, id, out));
    wasi!(linker, get, "clock_time_get", |c, m, id: u32, _precision: u64, out: u32|
        where [id <= CLOCKID_MAX => "Clockid"] c.clock_time_get(m, id, out));

    wasi!(linker, get, "fd_advise", |c, _m, fd: u32, off: u64, len: u64, advice: u32|
        where [advice <= ADVICE_MAX => "Advice"] c.fd_advise(fd, off, len, advice));
    wasi!(linker, get, "fd_allocate", |c, _m, fd: u32, _off: u64, _len: u64| c.fd_allocate(fd));
    wasi!(linker, get, "fd_close", |c, _m, fd: u32| c.fd_close(fd));
    wasi!(linker, get, "fd_datasync", |c, _m, fd: u32| c.fd_datasync(fd));
    wasi!(linker, get, "fd_fdstat_get", |c, m, fd: u32, out: u32| c.fd_fdstat_get(m, fd, out));
    wasi!(linker, get, "fd_fdstat_set_flags", |c, _m, fd: u32, flags: u32|
        where [bits(flags, FDFLAGS) => "Fdflags"] c.fd_fdstat_set_flags(fd, flags));
    wasi!(linker, get, "fd_fdstat_set_rights", |c, _m, fd: u32, base: u64, inh: u64|
        where [rights(base) => "Rights", rights(inh) => "Rights"] c.fd_fdstat_set_rights(fd, base, inh));
    wasi!(linker, get, "fd_filestat_get", |c, m, fd: u32, out: u32| c.fd_filestat_get(m, fd, out));
    wasi!(linker, get, "fd_filestat_set_size", |c, _m, fd: u32, size: u64| c.fd_filestat_set_size(fd, size));
    wasi!(linker, get, "fd_filestat_set_times", |c, _m, fd: u32, atim: u64, mtim: u64, fst: u32|
        where [bits(fst, FSTFLAGS) => "Fstflags"] c.fd_filestat_set_times(fd, atim, mtim, fst));
    wasi!(linker, get, "fd_pread", |c, m, fd: u32, iovs: u32, n: u32, off: u64, out: u32| c.fd_pread(m, fd, iovs, n, off, out));
    wasi!(linker, get, "fd_prestat_get", |c, m, fd: u32, out: u32| c.fd_prestat_get(m, fd, out));
    wasi!(linker, get, "fd_prestat_dir_name", |c, m, fd: u32, ptr: u32, len: u32| c.fd_prestat_dir_name(m, fd, ptr, len));
    wasi!(linker, get, "fd_pwrite", |c, m, fd: u32, iovs: u32, n: u32, off: u64, out: u32| c.fd_pwrite(m, fd, iovs, n, off, out));
    wasi!(linker, get, "fd_read", |c, m, fd: u32, iovs: u32, n: u32, out: u32| c.fd_read(m, fd, iovs, n, out));
    wasi!(linker, get, "fd_readdir", |c, m, fd: u32, buf: u32, len: u32, cookie: u64, out: u32| c.fd_readdir(m, fd, buf, len, cookie, out));
    wasi!(linker, get, "fd_renumber", |c, _m, from: u32, to: u32| c.fd_renumber(from, to));
    wasi!(linker, get, "fd_seek", |c, m, fd: u32, delta: i64, whence: u32, out: u32|
        where [whence <= WHENCE_MAX => "Whence"] c.fd_seek(m, fd, delta, whence, out));
    wasi!(linker, get, "fd_sync", |c, _m, fd: u32| c.fd_sync(fd));
    wasi!(linker, get, "fd_tell", |c, m, fd: u32, out: u32| c.fd_tell(m, fd, out));
    wasi!(linker, get, "fd_write", |c, m, fd: u32, iovs: u32, n: u32, out: u32| c.fd_write(m, fd, iovs, n, out));

    wasi!(linker, get, "path_create_directory", |c, m, fd: u32, p: u32, l: u32| c.path_create_directory(m, fd, p, l));
    wasi!(linker, get, "path_filestat_get", |c, m, fd: u32, flags: u32, p: u32, l: u32, out: u32|
        where [bits(flags, LOOKUPFLAGS) => "Lookupflags"] c.path_filestat_get(m, fd, flags, p, l, out));
    wasi!(linker, get, "path_filestat_set_times", |c, m, fd: u32, flags: u32, p: u32, l: u32, atim: u64, mtim: u64, fst: u32|
        where [bits(flags, LOOKUPFLAGS) => "Lookupflags", bits(fst, FSTFLAGS) => "Fstflags"]
        c.path_filestat_set_times(m, fd, flags, p, l, atim, mtim, fst));
    wasi!(linker, get, "path_link", |c, m, old_fd: u32, old_flags: u32, op: u32, ol: u32, new_fd: u32, np: u32, nl: u32|
        where [bits(old_flags, LOOKUPFLAGS) => "Lookupflags"] c.path_link(m, old_fd, old_flags, (op, ol), new_fd, (np, nl)));
    wasi!(linker, get, "path_open", |c, m, fd: u32, dirflags: u32, p: u32, l: u32, oflags: u32, base: u64, inh: u64, fdflags: u32, out: u32|
        where [bits(dirflags, LOOKUPFLAGS) => "Lookupflags", bits(oflags, OFLAGS) => "Oflags",
               rights(base) => "Rights", rights(inh) => "Rights", bits(fdflags, FDFLAGS) => "Fdflags"]
        c.path_open(m, fd, p, l, OpenArgs { dirflags, oflags, rights_base: base, rights_inheriting: inh, fdflags }, out));
    wasi!(linker, get, "path_readlink", |c, m, fd: u32, p: u32, l: u32, buf: u32, len: u32, out: u32| c.path_readlink(m, fd, (p, l), buf, len, out));
    wasi!(linker, get, "path_remove_directory", |c, m, fd: u32, p: u32, l: u32| c.path_remove_directory(m, fd, p, l));
    wasi!(linker, get, "path_rename", |c, m, fd: u32, op: u32, ol: u32, new_fd: u32, np: u32, nl: u32| c.path_rename(m, fd, (op, ol), new_fd, (np, nl)));
    wasi!(linker, get, "path_symlink", |c, m, op: u32, ol: u32, fd: u32, np: u32, nl: u32| c.path_symlink(m, (op, ol), fd, (np, nl)));
    wasi!(linker, get, "path_unlink_file", |c, m, fd: u32, p: u32, l: u32| c.path_unlink_file(m, fd, p, l));

    wasi!(linker, get, "poll_oneoff", |c, m, subs: u32, events: u32, n: u32, out: u32| c.poll_oneoff(m, subs, events, n, out));
    linker.func_wrap(MODULE, "proc_exit", |_caller: Caller<'_, T>, code: u32| -> wasmtime::Result<()> {
        // wasmtime-wasi's range check: larger codes are a trap, not an exit.
        if code >= 126 {
            return Err(wasmtime::Error::msg("exit with invalid exit status outside of [0..126)"));
        }
        Err(wasmtime::Error::new(I32Exit(code as i32)))
    })?;
    wasi!(linker, get, "proc_raise", |c, _m, sig: u32| where [sig <= SIGNAL_MAX => "Signal"] c.proc_raise(sig));
    wasi!(linker, get, "sched_yield", |c, _m| c.sched_yield());
    wasi!(linker, get, "random_get", |c, m, buf: u32, len: u32| c.random_get(m, buf, len));

    wasi!(linker, get, "sock_accept", |c, _m, fd: u32, flags: u32, _out: u32|
        where [bits(flags, FDFLAGS) => "Fdflags"] c.sock_unsupported(fd));
    wasi!(linker, get, "sock_recv", |c, _m, fd: u32, _iovs: u32, _n: u32, flags: u32, _out: u32, _oflags: u32|
        where [bits(flags, RIFLAGS) => "Riflags"] c.sock_unsupported(fd));
    wasi!(linker, get, "sock_send", |c, _m, fd: u32, _iovs: u32, _n: u32, flags: u32, _out: u32|
        where [flags <= SIFLAGS_MAX => "Siflags"] c.sock_unsupported(fd));
    wasi!(linker, get, "sock_shutdown", |c, _m, fd: u32, how: u32|
        where [bits(how, SDFLAGS) => "Sdflags"] c.sock_unsupported(fd));
    Ok(())
}
