//! The `path_*` calls and `fd_readdir`: everything that names a file by a
//! guest path relative to a directory descriptor.
//!
//! Every path goes through `path::resolve` first, so nothing here can reach
//! outside the directory's preopen. Errnos and argument checks follow
//! wasmtime-wasi's order: flag/enum validation, then descriptors, then the
//! path string, then the operation.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::path::{self, Resolved};
use crate::stat::{self, filetype, Filestat};
use crate::table::{fdflags, rights, Desc, DirDesc, FileDesc};
use crate::WasiCtx;

const LOOKUP_SYMLINK_FOLLOW: u32 = 1;
const OFLAG_CREAT: u32 = 1 << 0;
const OFLAG_DIRECTORY: u32 = 1 << 1;
const OFLAG_EXCL: u32 = 1 << 2;
const OFLAG_TRUNC: u32 = 1 << 3;
const DIRENT_SIZE: usize = 24;

/// Arguments of `path_open` after the path string.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenArgs {
    pub dirflags: u32,
    pub oflags: u32,
    pub rights_base: u64,
    pub rights_inheriting: u64,
    pub fdflags: u32,
}

fn follow(lookupflags: u32) -> WasiResult<bool> {
    if lookupflags & !LOOKUP_SYMLINK_FOLLOW != 0 {
        return Err(Errno::INVAL);
    }
    Ok(lookupflags & LOOKUP_SYMLINK_FOLLOW != 0)
}

impl WasiCtx {
    /// Resolve `path` against directory fd `fd` (which must be a directory:
    /// `EBADF` otherwise, as in wasmtime-wasi).
    fn resolve_at(&self, fd: u32, path: &str, follow: bool) -> WasiResult<(u32, Resolved)> {
        let d = self.table.dir(fd)?;
        let root = self.preopen_root(d.preopen)?;
        Ok((d.preopen, path::resolve(root, &d.rel, path, follow)?))
    }

    /// Resolve `path` against directory fd `fd` the "via parent" way: the
    /// final component is named inside its directory, never followed.
    fn parent_at(&self, fd: u32, path: &str) -> WasiResult<PathBuf> {
        Ok(self.named_at(fd, path)?.1.host)
    }

    /// `parent_at`, also giving the preopen and normalised path of the entry.
    fn named_at(&self, fd: u32, path: &str) -> WasiResult<(u32, Resolved)> {
        let d = self.table.dir(fd)?;
        let r = path::resolve_parent(self.preopen_root(d.preopen)?, &d.rel, path)?;
        Ok((d.preopen, r))
    }

    pub(crate) fn path_open(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        ptr: u32,
        len: u32,
        a: OpenArgs,
        out: u32,
    ) -> WasiResult {
        let follow = follow(a.dirflags)?;
        if a.oflags & !0xf != 0 || (a.rights_base | a.rights_inheriting) & !rights::ALL != 0 {
            return Err(Errno::INVAL);
        }
        let flags = u16::try_from(a.fdflags).map_err(|_| Errno::INVAL)?;
        if flags & !fdflags::ALL != 0 {
            return Err(Errno::INVAL);
        }
        mem.check(out, 4)?;
        let guest_path = mem.string(ptr, len)?;
        match self.table.get(fd)? {
            Desc::Dir(_) => {}
            Desc::File(_) => return Err(Errno::NOTDIR),
            _ => return Err(Errno::BADF),
        }

        let (creat, excl, trunc) = (
            a.oflags & OFLAG_CREAT != 0,
            a.oflags & OFLAG_EXCL != 0,
            a.oflags & OFLAG_TRUNC != 0,
        );
        let directory = a.oflags & OFLAG_DIRECTORY != 0;
        let mut opts = std::fs::OpenOptions::new();
        let (mut read, mut write) = (false, false);
        if creat {
            if excl {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            write = true;
        }
        if trunc {
            opts.truncate(true);
            write = true;
        }
        if a.rights_base & rights::FD_READ != 0 {
            read = true;
        }
        if a.rights_base & rights::FD_WRITE != 0 {
            write = true;
        } else {
            // Open readable so the OS lets us open it; writes then fail EBADF.
            read = true;
        }
        if flags & (fdflags::SYNC | fdflags::DSYNC | fdflags::RSYNC) != 0 {
            return Err(Errno::NOTSUP);
        }
        if directory && (creat || excl || trunc) {
            return Err(Errno::INVAL);
        }
        let (preopen, resolved) = self.resolve_at(fd, &guest_path, follow)?;
        let mut custom = libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if directory {
            custom |= libc::O_DIRECTORY;
        }
        let file = opts
            .read(read)
            .write(write)
            .custom_flags(custom)
            .open(&resolved.host)?;
        let desc = if file.metadata()?.is_dir() {
            Desc::Dir(DirDesc {
                preopen,
                rel: resolved.rel,
                is_preopen: false,
                handle: file,
                rights_base: a.rights_base,
                rights_inheriting: a.rights_inheriting,
            })
        } else {
            Desc::File(FileDesc {
                file,
                preopen,
                rel: resolved.rel_string(),
                offset: 0,
                read,
                write,
                append: flags & fdflags::APPEND != 0,
                nonblock: flags & fdflags::NONBLOCK != 0,
                rights_base: a.rights_base,
                rights_inheriting: a.rights_inheriting,
            })
        };
        let new_fd = self.table.push(desc)?;
        mem.write_u32(out, new_fd)
    }

    pub(crate) fn path_create_directory(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        ptr: u32,
        len: u32,
    ) -> WasiResult {
        self.table.dir(fd)?;
        let p = mem.string(ptr, len)?;
        let host = self.parent_at(fd, path::strip_dir_suffix(&p))?;
        Ok(std::fs::create_dir(host)?)
    }

    pub(crate) fn path_filestat_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        flags: u32,
        ptr: u32,
        len: u32,
        out: u32,
    ) -> WasiResult {
        let follow = follow(flags)?;
        self.table.dir(fd)?;
        mem.check(out, stat::FILESTAT_SIZE)?;
        let p = mem.string(ptr, len)?;
        // cap-std lstat()s a lone name directly, ignoring a trailing `/`.
        let p = match path::single_component(&p) {
            Some(name) if !follow => name.to_owned(),
            _ => p,
        };
        let (_, r) = self.resolve_at(fd, &p, follow)?;
        let meta = std::fs::symlink_metadata(&r.host)?;
        Filestat::from_meta(&meta).write(mem, out)
    }

    #[allow(clippy::too_many_arguments)] // mirrors the preview1 signature
    pub(crate) fn path_filestat_set_times(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        flags: u32,
        ptr: u32,
        len: u32,
        atim: u64,
        mtim: u64,
        fst: u32,
    ) -> WasiResult {
        let follow = follow(flags)?;
        let fst = u16::try_from(fst).map_err(|_| Errno::INVAL)?;
        let times = stat::timespecs(atim, mtim, fst)?;
        self.table.dir(fd)?;
        let p = mem.string(ptr, len)?;
        let host = if follow {
            self.resolve_at(fd, &p, true)?.1.host
        } else {
            self.parent_at(fd, &p)?
        };
        stat::set_times_path(&host, &times)
    }

    pub(crate) fn path_link(
        &mut self,
        mem: &mut GuestMemory<'_>,
        old_fd: u32,
        old_flags: u32,
        old: (u32, u32),
        new_fd: u32,
        new: (u32, u32),
    ) -> WasiResult {
        let follow = follow(old_flags)?;
        self.table.dir(old_fd)?;
        self.table.dir(new_fd)?;
        let old_path = mem.string(old.0, old.1)?;
        let new_path = mem.string(new.0, new.1)?;
        if follow {
            return Err(Errno::INVAL);
        }
        let src = self.parent_at(old_fd, &old_path)?;
        let dst = self.parent_at(new_fd, &new_path)?;
        Ok(std::fs::hard_link(src, dst)?)
    }

    pub(crate) fn path_readlink(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        path: (u32, u32),
        buf: u32,
        buf_len: u32,
        out: u32,
    ) -> WasiResult {
        self.table.dir(fd)?;
        mem.check(out, 4)?;
        let p = mem.string(path.0, path.1)?;
        let target = std::fs::read_link(self.parent_at(fd, &p)?)?;
        let target = target.to_str().ok_or(Errno::ILSEQ)?.as_bytes();
        let n = target.len().min(buf_len as usize);
        mem.write(buf, &target[..n])?;
        mem.write_u32(out, u32::try_from(n)?)
    }

    pub(crate) fn path_remove_directory(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        ptr: u32,
        len: u32,
    ) -> WasiResult {
        self.table.dir(fd)?;
        let p = mem.string(ptr, len)?;
        Ok(std::fs::remove_dir(self.parent_at(fd, &p)?)?)
    }

    pub(crate) fn path_rename(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        old: (u32, u32),
        new_fd: u32,
        new: (u32, u32),
    ) -> WasiResult {
        self.table.dir(fd)?;
        self.table.dir(new_fd)?;
        let old_path = mem.string(old.0, old.1)?;
        let new_path = mem.string(new.0, new.1)?;
        // As cap-std on Linux: a trailing `/` on either side requires the
        // source to be a directory, which the kernel checks for `old/`.
        let requires_dir = old_path.ends_with('/') || new_path.ends_with('/');
        let (src_preopen, src) = self.named_at(fd, path::strip_dir_suffix(&old_path))?;
        let (dst_preopen, dst) = self.named_at(new_fd, path::strip_dir_suffix(&new_path))?;
        let mut src_host = src.host.into_os_string();
        if requires_dir {
            src_host.push("/");
        }
        std::fs::rename(src_host, &dst.host)?;
        // Open descriptors below the old name now live at the new one; keep
        // their checkpoint paths true so a restore reopens the right files.
        self.table
            .rename_paths((src_preopen, &src.rel), (dst_preopen, &dst.rel));
        Ok(())
    }

    pub(crate) fn path_symlink(
        &mut self,
        mem: &mut GuestMemory<'_>,
        old: (u32, u32),
        fd: u32,
        new: (u32, u32),
    ) -> WasiResult {
        self.table.dir(fd)?;
        let target = mem.string(old.0, old.1)?;
        let new_path = mem.string(new.0, new.1)?;
        // cap-std refuses absolute targets so no other program on the host
        // can be tricked into following one out of the sandbox.
        if target.starts_with('/') {
            return Err(Errno::PERM);
        }
        let dst = self.parent_at(fd, &new_path)?;
        Ok(std::os::unix::fs::symlink(&target, dst)?)
    }

    pub(crate) fn path_unlink_file(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        ptr: u32,
        len: u32,
    ) -> WasiResult {
        self.table.dir(fd)?;
        let p = mem.string(ptr, len)?;
        Ok(std::fs::remove_file(self.parent_at(fd, &p)?)?)
    }

    /// Entries are `.`, `..`, then the directory's contents sorted by name,
    /// so cookies (entry indexes) are deterministic and survive a restore.
    pub(crate) fn fd_readdir(
        &mut self,
        mem: &mut GuestMemory<'_>,
        fd: u32,
        buf: u32,
        buf_len: u32,
        cookie: u64,
        out: u32,
    ) -> WasiResult {
        mem.check(out, 4)?;
        mem.check(buf, buf_len)?;
        let d = self.table.dir(fd)?;
        let dir_path = path::host_path(self.preopen_root(d.preopen)?, &d.rel);
        let self_ino = stat::ino_of(&d.handle.metadata()?);
        let cookie = usize::try_from(cookie).map_err(|_| Errno::OVERFLOW)?;

        let mut listed = Vec::new();
        for entry in std::fs::read_dir(&dir_path)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|_| Errno::ILSEQ)?;
            let meta = entry.metadata()?; // does not follow symlinks
            listed.push((
                name,
                stat::filetype_of(meta.file_type()),
                stat::ino_of(&meta),
            ));
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let head = [
            (".".to_owned(), filetype::DIRECTORY, self_ino),
            ("..".to_owned(), filetype::DIRECTORY, self_ino),
        ];

        // Same packing as wasmtime-wasi: entries are cut off at the buffer
        // end, and a full buffer tells the guest to call again.
        let mut cap = buf_len as usize;
        let mut at = buf;
        for (i, (name, ftype, ino)) in head.into_iter().chain(listed).enumerate().skip(cookie) {
            let mut dirent = [0u8; DIRENT_SIZE];
            dirent[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            dirent[8..16].copy_from_slice(&ino.to_le_bytes());
            dirent[16..20].copy_from_slice(&u32::try_from(name.len())?.to_le_bytes());
            dirent[20] = ftype;
            let n = cap.min(DIRENT_SIZE);
            mem.write(at, &dirent[..n])?;
            // In bounds (checked above); may reach exactly 2^32 at the end.
            at = at.wrapping_add(n as u32);
            cap -= n;
            if cap == 0 {
                return mem.write_u32(out, buf_len);
            }
            let name = &name.as_bytes()[..name.len().min(cap)];
            mem.write(at, name)?;
            at = at.wrapping_add(name.len() as u32);
            cap -= name.len();
            if cap == 0 {
                return mem.write_u32(out, buf_len);
            }
        }
        mem.write_u32(out, buf_len - cap as u32)
    }
}
