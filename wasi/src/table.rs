//! The descriptor table: what each guest fd number refers to.
//!
//! Unlike wasmtime-wasi's private table, every entry here records how to
//! rebuild it (preopen index, normalised relative path, offset, access mode),
//! so `WasiCtx::snapshot` can describe it with `&self` and `restore` can open
//! it again elsewhere. Numbers are allocated exactly as wasmtime-wasi does
//! (the highest closed-and-unused number first, else one past the highest
//! in use), and the set of closed-but-unused numbers is part of the snapshot,
//! so fd numbers after a restore match an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;

use crate::errno::{Errno, WasiResult};

/// `rights` bits (witx `typenames.witx`), the ones this crate names.
pub(crate) mod rights {
    pub const FD_DATASYNC: u64 = 1 << 0;
    pub const FD_READ: u64 = 1 << 1;
    pub const FD_SEEK: u64 = 1 << 2;
    pub const FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
    pub const FD_SYNC: u64 = 1 << 4;
    pub const FD_TELL: u64 = 1 << 5;
    pub const FD_WRITE: u64 = 1 << 6;
    pub const FD_ADVISE: u64 = 1 << 7;
    pub const FD_ALLOCATE: u64 = 1 << 8;
    pub const PATH_CREATE_DIRECTORY: u64 = 1 << 9;
    pub const PATH_CREATE_FILE: u64 = 1 << 10;
    pub const PATH_LINK_SOURCE: u64 = 1 << 11;
    pub const PATH_LINK_TARGET: u64 = 1 << 12;
    pub const PATH_OPEN: u64 = 1 << 13;
    pub const FD_READDIR: u64 = 1 << 14;
    pub const PATH_READLINK: u64 = 1 << 15;
    pub const PATH_RENAME_SOURCE: u64 = 1 << 16;
    pub const PATH_RENAME_TARGET: u64 = 1 << 17;
    pub const PATH_FILESTAT_GET: u64 = 1 << 18;
    pub const PATH_FILESTAT_SET_SIZE: u64 = 1 << 19;
    pub const PATH_FILESTAT_SET_TIMES: u64 = 1 << 20;
    pub const FD_FILESTAT_GET: u64 = 1 << 21;
    pub const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
    pub const FD_FILESTAT_SET_TIMES: u64 = 1 << 23;
    pub const PATH_SYMLINK: u64 = 1 << 24;
    pub const PATH_REMOVE_DIRECTORY: u64 = 1 << 25;
    pub const PATH_UNLINK_FILE: u64 = 1 << 26;
    pub const POLL_FD_READWRITE: u64 = 1 << 27;
    /// Every defined right (up to `sock_accept`, bit 29).
    pub const ALL: u64 = (1 << 30) - 1;

    /// What wasmtime-wasi reports for a preopened directory (base).
    pub const PREOPEN_BASE: u64 = PATH_CREATE_DIRECTORY
        | PATH_CREATE_FILE
        | PATH_LINK_SOURCE
        | PATH_LINK_TARGET
        | PATH_OPEN
        | FD_READDIR
        | PATH_READLINK
        | PATH_RENAME_SOURCE
        | PATH_RENAME_TARGET
        | PATH_SYMLINK
        | PATH_REMOVE_DIRECTORY
        | PATH_UNLINK_FILE
        | PATH_FILESTAT_GET
        | PATH_FILESTAT_SET_TIMES
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_TIMES;

    /// What wasmtime-wasi reports for a preopened directory (inheriting).
    pub const PREOPEN_INHERITING: u64 = PREOPEN_BASE
        | FD_DATASYNC
        | FD_READ
        | FD_SEEK
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_TELL
        | FD_WRITE
        | FD_ADVISE
        | FD_ALLOCATE
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | POLL_FD_READWRITE;
}

/// `fdflags` bits.
pub(crate) mod fdflags {
    pub const APPEND: u16 = 1 << 0;
    pub const DSYNC: u16 = 1 << 1;
    pub const NONBLOCK: u16 = 1 << 2;
    pub const RSYNC: u16 = 1 << 3;
    pub const SYNC: u16 = 1 << 4;
    pub const ALL: u16 = (1 << 5) - 1;
}

/// A preopened host directory, by position in the task's preopen list.
#[derive(Debug)]
pub(crate) struct PreopenDir {
    /// The path the guest sees (`/data`), also its identity in checkpoints.
    pub guest: String,
    /// The canonical host directory; `None` after a restore for a preopen the
    /// snapshot lists but no descriptor uses any more (nothing to resolve).
    pub root: Option<PathBuf>,
}

/// A directory descriptor: a preopen itself or a directory opened below one.
#[derive(Debug)]
pub(crate) struct DirDesc {
    pub preopen: u32,
    /// Normalised components below the preopen root.
    pub rel: Vec<String>,
    /// True for the preopen's own descriptor (it answers `fd_prestat_get`).
    pub is_preopen: bool,
    /// Open handle, for `fstat`/`futimens`/`fsync`-style calls.
    pub handle: File,
    pub rights_base: u64,
    pub rights_inheriting: u64,
}

/// A file descriptor with the position wmig tracks itself (all IO is
/// positional), so the offset is known without a syscall.
#[derive(Debug)]
pub(crate) struct FileDesc {
    pub file: File,
    pub preopen: u32,
    pub rel: String,
    pub offset: u64,
    /// The access mode the OS file was opened with.
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub nonblock: bool,
    pub rights_base: u64,
    pub rights_inheriting: u64,
}

impl FileDesc {
    pub fn fdflags(&self) -> u16 {
        let mut f = 0;
        if self.append {
            f |= fdflags::APPEND;
        }
        if self.nonblock {
            f |= fdflags::NONBLOCK;
        }
        f
    }
}

#[derive(Debug)]
pub(crate) enum Desc {
    Stdin,
    Stdout,
    Stderr,
    Dir(DirDesc),
    File(FileDesc),
}

/// fd number -> descriptor.
#[derive(Debug, Default)]
pub(crate) struct FdTable {
    fds: BTreeMap<u32, Desc>,
    /// Closed numbers not handed out again yet (wasmtime's `free` set).
    free: BTreeSet<u32>,
}

impl FdTable {
    pub fn get(&self, fd: u32) -> WasiResult<&Desc> {
        self.fds.get(&fd).ok_or(Errno::BADF)
    }

    /// Insert at the next number: the highest freed one, else one past the
    /// highest in use (wasmtime-wasi's `Descriptors::push`).
    pub fn push(&mut self, desc: Desc) -> WasiResult<u32> {
        let fd = match self.free.pop_last() {
            Some(fd) => fd,
            None => match self.fds.last_key_value() {
                Some((last, _)) => last.checked_add(1).ok_or(Errno::LOOP)?,
                None => 0,
            },
        };
        self.fds.insert(fd, desc);
        Ok(fd)
    }

    /// Insert at a given number (restore).
    pub fn insert_at(&mut self, fd: u32, desc: Desc) {
        self.free.remove(&fd);
        self.fds.insert(fd, desc);
    }

    pub fn remove(&mut self, fd: u32) -> WasiResult<Desc> {
        let desc = self.fds.remove(&fd).ok_or(Errno::BADF)?;
        self.free.insert(fd);
        Ok(desc)
    }

    /// `fd_renumber`: both must be open; `to` is closed and replaced, `from`
    /// becomes free.
    pub fn renumber(&mut self, from: u32, to: u32) -> WasiResult {
        if !self.fds.contains_key(&from) || !self.fds.contains_key(&to) {
            return Err(Errno::BADF);
        }
        if from != to {
            let desc = self.remove(from)?;
            self.fds.insert(to, desc);
        }
        Ok(())
    }

    /// After a rename: descriptors at or below `from` are now at or below
    /// `to` (each given as preopen index and normalised components).
    pub fn rename_paths(&mut self, from: (u32, &[String]), to: (u32, &[String])) {
        let moved = |preopen: u32, rel: &[String]| -> Option<Vec<String>> {
            let rest = rel.strip_prefix(from.1).filter(|_| preopen == from.0)?;
            Some(to.1.iter().chain(rest).cloned().collect())
        };
        for desc in self.fds.values_mut() {
            match desc {
                Desc::File(f) => {
                    let rel: Vec<String> = f.rel.split('/').map(str::to_owned).collect();
                    if let Some(new) = moved(f.preopen, &rel) {
                        f.preopen = to.0;
                        f.rel = new.join("/");
                    }
                }
                Desc::Dir(d) if !d.is_preopen => {
                    if let Some(new) = moved(d.preopen, &d.rel) {
                        d.preopen = to.0;
                        d.rel = new;
                    }
                }
                _ => {}
            }
        }
    }

    /// Closed numbers awaiting reuse, ascending (for snapshots).
    pub fn free(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied()
    }

    /// Restore the set of closed numbers awaiting reuse (open ones ignored).
    pub fn set_free(&mut self, free: impl IntoIterator<Item = u32>) {
        self.free = free
            .into_iter()
            .filter(|fd| !self.fds.contains_key(fd))
            .collect();
    }

    pub fn file(&self, fd: u32) -> WasiResult<&FileDesc> {
        match self.get(fd)? {
            Desc::File(f) => Ok(f),
            _ => Err(Errno::BADF),
        }
    }

    pub fn file_mut(&mut self, fd: u32) -> WasiResult<&mut FileDesc> {
        match self.fds.get_mut(&fd) {
            Some(Desc::File(f)) => Ok(f),
            _ => Err(Errno::BADF),
        }
    }

    /// A file for `fd_seek`/`fd_tell`: stdio is `ESPIPE`, anything else `EBADF`.
    pub fn seekable(&mut self, fd: u32) -> WasiResult<&mut FileDesc> {
        match self.fds.get_mut(&fd) {
            Some(Desc::File(f)) => Ok(f),
            Some(Desc::Stdin | Desc::Stdout | Desc::Stderr) => Err(Errno::SPIPE),
            _ => Err(Errno::BADF),
        }
    }

    pub fn dir(&self, fd: u32) -> WasiResult<&DirDesc> {
        match self.get(fd)? {
            Desc::Dir(d) => Ok(d),
            _ => Err(Errno::BADF),
        }
    }

    /// The OS handle behind a file or directory fd; stdio is `EBADF`.
    pub fn handle(&self, fd: u32) -> WasiResult<&File> {
        match self.get(fd)? {
            Desc::File(f) => Ok(&f.file),
            Desc::Dir(d) => Ok(&d.handle),
            _ => Err(Errno::BADF),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Desc)> {
        self.fds.iter().map(|(fd, d)| (*fd, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_reuses_the_highest_freed_like_wasmtime() {
        let mut t = FdTable::default();
        for want in 0..5 {
            assert_eq!(t.push(Desc::Stdin).unwrap(), want);
        }
        t.remove(1).unwrap();
        t.remove(4).unwrap();
        t.remove(3).unwrap();
        assert_eq!(t.free().collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(t.push(Desc::Stdout).unwrap(), 4);
        assert_eq!(t.push(Desc::Stdout).unwrap(), 3);
        assert_eq!(t.push(Desc::Stdout).unwrap(), 1);
        assert_eq!(t.push(Desc::Stdout).unwrap(), 5);
    }

    #[test]
    fn renumber_requires_both_and_replaces_target() {
        let mut t = FdTable::default();
        t.push(Desc::Stdin).unwrap();
        t.push(Desc::Stdout).unwrap();
        assert_eq!(t.renumber(0, 7), Err(Errno::BADF));
        t.renumber(1, 0).unwrap();
        assert!(matches!(t.get(0), Ok(Desc::Stdout)));
        assert_eq!(t.free().collect::<Vec<_>>(), [1]);
        assert_eq!(t.get(1).err(), Some(Errno::BADF));
        assert_eq!(t.seekable(0).err(), Some(Errno::SPIPE));
        assert_eq!(t.seekable(9).err(), Some(Errno::BADF));
    }
}
