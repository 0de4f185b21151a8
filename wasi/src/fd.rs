//! The `fd_*` calls that read, write and describe an open descriptor.
//!
//! All file IO is positional (`read_at`/`write_at`) against an offset wmig
//! keeps in the table, so a snapshot knows every position without a syscall
//! and a restored file continues exactly where it was. As in wasmtime-wasi,
//! one call transfers at most the first non-empty iovec (guests loop on short
//! transfers), and append-mode writes go to the current end of file.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::table::Desc;
use crate::{Stdin, Wake, WasiCtx};

/// How long a read of an empty stdin pipe waits before looking again; any
/// push, pause or stop wakes it sooner.
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

const WHENCE_SET: u32 = 0;
const WHENCE_CUR: u32 = 1;
const WHENCE_END: u32 = 2;
const ADVICE_MAX: u32 = 5;

/// Write at end of file regardless of other writers' positions: flip the
/// open file description to `O_APPEND` for one `write(2)`, as wasmtime-wasi
/// does where `pwritev2(RWF_APPEND)` is unavailable.
fn append_write(file: &std::fs::File, data: &[u8]) -> std::io::Result<usize> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` stays open for the duration (borrowed from `file`);
    // F_GETFL/F_SETFL only read and set status flags.
    let old = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if old < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, old | libc::O_APPEND) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let result = (&*file).write(data);
    // SAFETY: as above; restores the flags read before.
    unsafe { libc::fcntl(fd, libc::F_SETFL, old) };
    result
}

/// Where an `fd_write`/`fd_pwrite` goes.
#[derive(Clone, Copy)]
enum WriteAt {
    Cursor,
    Offset(u64),
}

impl WasiCtx {
    pub(crate) fn fd_read(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        out: u32,
    ) -> WasiResult {
        let iov = mem.first_nonempty_iovec(iovs, n)?;
        mem.check(out, 4)?;
        let buf = mem.slice_mut(iov.ptr, iov.len)?;
        let nread = match self.table.get(fd)? {
            Desc::File(_) => {
                let f = self.table.file_mut(fd)?;
                let nread = f.file.read_at(buf, f.offset)?;
                f.offset = f.offset.checked_add(nread as u64).ok_or(Errno::OVERFLOW)?;
                nread
            }
            Desc::Stdin => {
                let nread = match &mut self.stdin {
                    Stdin::Reader(r) => r.read(buf)?,
                    Stdin::Pipe(pipe) => loop {
                        if let Some(n) = pipe.take(buf) {
                            break n;
                        }
                        let p = pipe.clone();
                        match self.interrupt.wait(HOUR, || p.ready(), self.reads_pause) {
                            Wake::Stopped => return Ok(()), // the dispatcher traps
                            Wake::Pause => {
                                // Nothing taken: the call runs again on resume.
                                self.paused_in_call = true;
                                return Ok(());
                            }
                            Wake::Ready | Wake::Timeout => {}
                        }
                    },
                };
                // Offsets may come from a checkpoint: saturate, never overflow.
                self.stdin_offset = self.stdin_offset.saturating_add(nread as u64);
                nread
            }
            _ => return Err(Errno::BADF),
        };
        mem.write_u32(out, u32::try_from(nread)?)
    }

    pub(crate) fn fd_pread(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        offset: u64,
        out: u32,
    ) -> WasiResult {
        let iov = mem.first_nonempty_iovec(iovs, n)?;
        mem.check(out, 4)?;
        let buf = mem.slice_mut(iov.ptr, iov.len)?;
        let nread = match self.table.get(fd)? {
            Desc::File(f) => f.file.read_at(buf, offset)?,
            Desc::Stdin => return Err(Errno::SPIPE),
            _ => return Err(Errno::BADF),
        };
        mem.write_u32(out, u32::try_from(nread)?)
    }

    pub(crate) fn fd_write(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        out: u32,
    ) -> WasiResult {
        self.write_impl(mem, fd, iovs, n, WriteAt::Cursor, out)
    }

    pub(crate) fn fd_pwrite(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        offset: u64,
        out: u32,
    ) -> WasiResult {
        self.write_impl(mem, fd, iovs, n, WriteAt::Offset(offset), out)
    }

    fn write_impl(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        at: WriteAt,
        out: u32,
    ) -> WasiResult {
        let iov = mem.first_nonempty_iovec(iovs, n)?;
        mem.check(out, 4)?;
        let data = mem.slice(iov.ptr, iov.len)?;
        let written = match self.table.get(fd)? {
            Desc::File(_) => {
                let f = self.table.file_mut(fd)?;
                // Linux pwrite semantics: append mode ignores the offset.
                let written = match (f.append, at) {
                    (true, _) => append_write(&f.file, data)?,
                    (false, WriteAt::Offset(pos)) => f.file.write_at(data, pos)?,
                    (false, WriteAt::Cursor) => f.file.write_at(data, f.offset)?,
                };
                if let WriteAt::Cursor = at {
                    f.offset = if f.append {
                        f.file.metadata()?.len()
                    } else {
                        f.offset
                            .checked_add(written as u64)
                            .ok_or(Errno::OVERFLOW)?
                    };
                }
                written
            }
            Desc::Stdout | Desc::Stderr if matches!(at, WriteAt::Offset(_)) => {
                return Err(Errno::SPIPE);
            }
            Desc::Stdout => {
                self.stdout.write(data)?;
                self.stdout_offset = self.stdout_offset.saturating_add(data.len() as u64);
                data.len()
            }
            Desc::Stderr => {
                self.stderr.write(data)?;
                self.stderr_offset = self.stderr_offset.saturating_add(data.len() as u64);
                data.len()
            }
            _ => return Err(Errno::BADF),
        };
        mem.write_u32(out, u32::try_from(written)?)
    }

    pub(crate) fn fd_seek(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        delta: i64,
        whence: u32,
        out: u32,
    ) -> WasiResult {
        if whence > WHENCE_END {
            return Err(Errno::INVAL);
        }
        mem.check(out, 8)?;
        let f = self.table.seekable(fd)?;
        let pos = match whence {
            WHENCE_SET => u64::try_from(delta).map_err(|_| Errno::INVAL)?,
            WHENCE_CUR => f.offset.checked_add_signed(delta).ok_or(Errno::INVAL)?,
            _ => {
                let size = f.file.metadata()?.len();
                size.checked_add_signed(delta).ok_or(Errno::INVAL)?
            }
        };
        f.offset = pos;
        mem.write_u64(out, pos)
    }

    pub(crate) fn fd_tell(&mut self, mem: &mut GuestMemory<'_>, fd: u32, out: u32) -> WasiResult {
        mem.check(out, 8)?;
        let pos = self.table.seekable(fd)?.offset;
        mem.write_u64(out, pos)
    }

    pub(crate) fn fd_close(&mut self, fd: u32) -> WasiResult {
        self.table.remove(fd).map(drop)
    }

    pub(crate) fn fd_renumber(&mut self, from: u32, to: u32) -> WasiResult {
        self.table.renumber(from, to)
    }

    pub(crate) fn fd_advise(&mut self, fd: u32, offset: u64, len: u64, advice: u32) -> WasiResult {
        if advice > ADVICE_MAX {
            return Err(Errno::INVAL);
        }
        let file = &self.table.file(fd)?.file;
        advise(file, offset, len, advice)
    }

    pub(crate) fn fd_allocate(&mut self, fd: u32) -> WasiResult {
        self.table.file(fd)?;
        Err(Errno::NOTSUP)
    }

    pub(crate) fn fd_datasync(&mut self, fd: u32) -> WasiResult {
        Ok(self.table.file(fd)?.file.sync_data()?)
    }

    pub(crate) fn fd_sync(&mut self, fd: u32) -> WasiResult {
        Ok(self.table.file(fd)?.file.sync_all()?)
    }
}

#[cfg(target_os = "linux")]
fn advise(file: &std::fs::File, offset: u64, len: u64, advice: u32) -> WasiResult {
    let advice = match advice {
        0 => libc::POSIX_FADV_NORMAL,
        1 => libc::POSIX_FADV_SEQUENTIAL,
        2 => libc::POSIX_FADV_RANDOM,
        3 => libc::POSIX_FADV_WILLNEED,
        4 => libc::POSIX_FADV_DONTNEED,
        _ => libc::POSIX_FADV_NOREUSE,
    };
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::INVAL)?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno::INVAL)?;
    // SAFETY: the fd is open for the call's duration (borrowed from `file`).
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, advice) };
    if rc != 0 {
        return Err(Errno::from(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Advice is only a hint; other hosts ignore it, as wasmtime-wasi does on macOS.
#[cfg(not(target_os = "linux"))]
fn advise(_file: &std::fs::File, _offset: u64, _len: u64, _advice: u32) -> WasiResult {
    Ok(())
}
