//! Descriptor attributes: `fd_fdstat_*`, `fd_filestat_*` and `fd_prestat_*`.
//!
//! Rights and flags are reported exactly as wasmtime-wasi computes them (it
//! ignores the rights a guest asked for and derives them from the access
//! mode), since guests such as wasi-libc's `isatty` and `opendir` act on them.

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::stat::{self, filetype, Filestat};
use crate::table::{fdflags, rights, Desc};
use crate::WasiCtx;

impl WasiCtx {
    pub(crate) fn fd_fdstat_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        mem.check(out, 24)?;
        let (ftype, flags, base, inheriting) = match self.table.get(fd)? {
            Desc::Stdin => (filetype::UNKNOWN, 0, rights::FD_READ, rights::FD_READ),
            Desc::Stdout | Desc::Stderr => {
                let tty = match self.table.get(fd)? {
                    Desc::Stdout => self.stdout.is_terminal(),
                    _ => self.stderr.is_terminal(),
                };
                let ftype = if tty {
                    filetype::CHARACTER_DEVICE
                } else {
                    filetype::UNKNOWN
                };
                (ftype, 0, rights::FD_WRITE, rights::FD_WRITE)
            }
            Desc::Dir(d) if d.is_preopen => {
                (filetype::DIRECTORY, 0, d.rights_base, d.rights_inheriting)
            }
            Desc::Dir(_) => {
                // wasmtime: all rights but seeking/sizing, and no FD_WRITE
                // since directories never carry the WRITE flag.
                let r = rights::ALL
                    & !(rights::FD_SEEK
                        | rights::FD_FILESTAT_SET_SIZE
                        | rights::PATH_FILESTAT_SET_SIZE
                        | rights::FD_WRITE);
                (filetype::DIRECTORY, 0, r, r)
            }
            Desc::File(f) => {
                let ftype = stat::filetype_of(f.file.metadata()?.file_type());
                let mut r = rights::ALL;
                if ftype == filetype::DIRECTORY {
                    r &= !(rights::FD_SEEK
                        | rights::FD_FILESTAT_SET_SIZE
                        | rights::PATH_FILESTAT_SET_SIZE);
                }
                if !f.read {
                    r &= !(rights::FD_READ | rights::FD_READDIR);
                }
                if !f.write {
                    r &= !rights::FD_WRITE;
                }
                (ftype, f.fdflags(), r, r)
            }
        };
        mem.write_u8(out, ftype)?;
        mem.write_u16(out + 2, flags)?;
        mem.write_u64(out + 8, base)?;
        mem.write_u64(out + 16, inheriting)
    }

    pub(crate) fn fd_fdstat_set_flags(&mut self, fd: u32, flags: u32) -> WasiResult {
        let flags = u16::try_from(flags).map_err(|_| Errno::INVAL)?;
        if flags & !fdflags::ALL != 0 {
            return Err(Errno::INVAL);
        }
        let f = self.table.file_mut(fd)?;
        // Only APPEND and NONBLOCK can change, as in wasmtime-wasi.
        if flags & (fdflags::DSYNC | fdflags::SYNC | fdflags::RSYNC) != 0 {
            return Err(Errno::INVAL);
        }
        f.append = flags & fdflags::APPEND != 0;
        f.nonblock = flags & fdflags::NONBLOCK != 0;
        Ok(())
    }

    pub(crate) fn fd_fdstat_set_rights(
        &mut self,
        fd: u32,
        base: u64,
        inheriting: u64,
    ) -> WasiResult {
        if (base | inheriting) & !rights::ALL != 0 {
            return Err(Errno::INVAL);
        }
        self.table.handle(fd)?;
        Err(Errno::NOTSUP)
    }

    pub(crate) fn fd_filestat_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        mem.check(out, stat::FILESTAT_SIZE)?;
        let st = match self.table.get(fd)? {
            Desc::Stdin => Filestat::of_type(filetype::UNKNOWN),
            Desc::Stdout | Desc::Stderr => {
                let tty = match self.table.get(fd)? {
                    Desc::Stdout => self.stdout.is_terminal(),
                    _ => self.stderr.is_terminal(),
                };
                Filestat::of_type(if tty {
                    filetype::CHARACTER_DEVICE
                } else {
                    filetype::UNKNOWN
                })
            }
            Desc::File(f) => Filestat::from_meta(&f.file.metadata()?),
            Desc::Dir(d) => Filestat::from_meta(&d.handle.metadata()?),
        };
        st.write(mem, out)
    }

    pub(crate) fn fd_filestat_set_size(&mut self, fd: u32, size: u64) -> WasiResult {
        Ok(self.table.file(fd)?.file.set_len(size)?)
    }

    pub(crate) fn fd_filestat_set_times(
        &mut self,
        fd: u32,
        atim: u64,
        mtim: u64,
        fst: u32,
    ) -> WasiResult {
        let fst = u16::try_from(fst).map_err(|_| Errno::INVAL)?;
        let times = stat::timespecs(atim, mtim, fst)?;
        stat::set_times_fd(self.table.handle(fd)?, &times)
    }

    pub(crate) fn fd_prestat_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        mem.check(out, 8)?;
        let name_len = match self.table.get(fd)? {
            Desc::Dir(d) if d.is_preopen => self.preopen_guest(d.preopen)?.len(),
            _ => return Err(Errno::BADF),
        };
        mem.write_u8(out, 0)?; // tag 0: a directory
        mem.write_u32(out + 4, u32::try_from(name_len)?)
    }

    pub(crate) fn fd_prestat_dir_name(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        ptr: u32,
        len: u32,
    ) -> WasiResult {
        let name = match self.table.get(fd)? {
            Desc::Dir(d) if d.is_preopen => self.preopen_guest(d.preopen)?,
            _ => return Err(Errno::NOTDIR),
        };
        if name.len() > len as usize {
            return Err(Errno::NAMETOOLONG);
        }
        mem.write(ptr, name.as_bytes())
    }

    fn preopen_guest(&self, index: u32) -> WasiResult<&str> {
        self.preopens
            .get(index as usize)
            .map(|p| p.guest.as_str())
            .ok_or(Errno::BADF)
    }
}
