//! File metadata as preview1 shows it: `filetype`, `filestat`, inode
//! numbers and timestamp updates.
//!
//! Values copy wasmtime-wasi so guests print the same things: `dev` is
//! always 1, `ino` is a SipHash of the host `(dev, ino)` pair (the same hash
//! wasmtime uses, so inode numbers agree), `ctim` is the birth time when the
//! host filesystem reports one and 0 otherwise.

use std::ffi::CString;
use std::fs::{FileType, Metadata};
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;

/// `filetype` values.
pub(crate) mod filetype {
    pub const UNKNOWN: u8 = 0;
    pub const BLOCK_DEVICE: u8 = 1;
    pub const CHARACTER_DEVICE: u8 = 2;
    pub const DIRECTORY: u8 = 3;
    pub const REGULAR_FILE: u8 = 4;
    pub const SYMBOLIC_LINK: u8 = 7;
}

/// `fstflags` bits.
mod fstflags {
    pub const ATIM: u16 = 1 << 0;
    pub const ATIM_NOW: u16 = 1 << 1;
    pub const MTIM: u16 = 1 << 2;
    pub const MTIM_NOW: u16 = 1 << 3;
    pub const ALL: u16 = (1 << 4) - 1;
}

/// Size of `filestat` in guest memory.
pub(crate) const FILESTAT_SIZE: u32 = 64;

pub(crate) fn filetype_of(ft: FileType) -> u8 {
    if ft.is_dir() {
        filetype::DIRECTORY
    } else if ft.is_symlink() {
        filetype::SYMBOLIC_LINK
    } else if ft.is_file() {
        filetype::REGULAR_FILE
    } else if ft.is_block_device() {
        filetype::BLOCK_DEVICE
    } else if ft.is_char_device() {
        filetype::CHARACTER_DEVICE
    } else {
        // FIFOs and sockets have no preview1 code wasmtime uses.
        filetype::UNKNOWN
    }
}

/// The preview1 inode number of a host file: wasmtime-wasi's metadata hash.
pub(crate) fn ino_of(meta: &Metadata) -> u64 {
    // DefaultHasher::new() is SipHash with fixed keys: deterministic.
    let mut hasher = std::hash::DefaultHasher::new();
    (meta.dev(), meta.ino()).hash(&mut hasher);
    hasher.finish()
}

fn timestamp(t: std::io::Result<SystemTime>) -> u64 {
    t.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The guest's `filestat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filestat {
    pub dev: u64,
    pub ino: u64,
    pub filetype: u8,
    pub nlink: u64,
    pub size: u64,
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
}

impl Filestat {
    pub fn from_meta(meta: &Metadata) -> Filestat {
        Filestat {
            dev: 1,
            ino: ino_of(meta),
            filetype: filetype_of(meta.file_type()),
            nlink: meta.nlink(),
            size: meta.len(),
            atim: timestamp(meta.accessed()),
            mtim: timestamp(meta.modified()),
            ctim: timestamp(meta.created()),
        }
    }

    /// Stdio: only the type is known.
    pub fn of_type(filetype: u8) -> Filestat {
        Filestat {
            filetype,
            ..Filestat::default()
        }
    }

    /// Write field by field (padding untouched); bounds checked up front.
    pub fn write(&self, mem: &mut GuestMemory<'_>, ptr: u32) -> WasiResult {
        mem.check(ptr, FILESTAT_SIZE)?;
        mem.write_u64(ptr, self.dev)?;
        mem.write_u64(ptr + 8, self.ino)?;
        mem.write_u8(ptr + 16, self.filetype)?;
        mem.write_u64(ptr + 24, self.nlink)?;
        mem.write_u64(ptr + 32, self.size)?;
        mem.write_u64(ptr + 40, self.atim)?;
        mem.write_u64(ptr + 48, self.mtim)?;
        mem.write_u64(ptr + 56, self.ctim)
    }
}

/// Turn (`atim`, `mtim`, `fst_flags`) into the two `timespec`s `utimensat`
/// takes. Setting a time and "now" together is `EINVAL`, as in wasmtime.
pub(crate) fn timespecs(atim: u64, mtim: u64, fst: u16) -> WasiResult<[libc::timespec; 2]> {
    if fst & !fstflags::ALL != 0 {
        return Err(Errno::INVAL);
    }
    let one = |ts: u64, set: u16, now: u16| -> WasiResult<libc::timespec> {
        let (set, now) = (fst & set != 0, fst & now != 0);
        let (tv_sec, tv_nsec) = match (set, now) {
            (true, true) => return Err(Errno::INVAL),
            (true, false) => (
                libc::time_t::try_from(ts / 1_000_000_000)?,
                // < 1e9: always fits
                (ts % 1_000_000_000) as libc::c_long,
            ),
            (false, true) => (0, libc::UTIME_NOW),
            (false, false) => (0, libc::UTIME_OMIT),
        };
        Ok(libc::timespec { tv_sec, tv_nsec })
    };
    Ok([
        one(atim, fstflags::ATIM, fstflags::ATIM_NOW)?,
        one(mtim, fstflags::MTIM, fstflags::MTIM_NOW)?,
    ])
}

/// `futimens` on an open file or directory.
pub(crate) fn set_times_fd(file: &std::fs::File, times: &[libc::timespec; 2]) -> WasiResult {
    // SAFETY: the fd is open for the duration of the call (borrowed from
    // `file`) and `times` points at two valid timespecs.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
    if rc != 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `utimensat` on a resolved host path, never following a final symlink
/// (resolution already followed it when the guest asked to).
pub(crate) fn set_times_path(path: &Path, times: &[libc::timespec; 2]) -> WasiResult {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
    // SAFETY: `c` is a NUL-terminated string and `times` two valid
    // timespecs, both alive for the duration of the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespecs_follow_fstflags() {
        let t = timespecs(1_500_000_000, 0, fstflags::ATIM | fstflags::MTIM_NOW).unwrap();
        assert_eq!((t[0].tv_sec, t[0].tv_nsec), (1, 500_000_000));
        assert_eq!(t[1].tv_nsec, libc::UTIME_NOW);
        let t = timespecs(0, 0, 0).unwrap();
        assert_eq!(t[0].tv_nsec, libc::UTIME_OMIT);
        assert_eq!(
            timespecs(0, 0, fstflags::ATIM | fstflags::ATIM_NOW).err(),
            Some(Errno::INVAL)
        );
        assert_eq!(timespecs(0, 0, 1 << 4).err(), Some(Errno::INVAL));
    }

    #[test]
    fn filestat_layout() {
        let mut bytes = vec![0u8; 64];
        let mut mem = GuestMemory::new(&mut bytes);
        let st = Filestat {
            dev: 1,
            ino: 2,
            filetype: filetype::REGULAR_FILE,
            nlink: 3,
            size: 4,
            atim: 5,
            mtim: 6,
            ctim: 7,
        };
        st.write(&mut mem, 0).unwrap();
        assert_eq!(bytes[16], 4);
        assert_eq!(bytes[32], 4);
        assert_eq!(bytes[56], 7);
    }
}
