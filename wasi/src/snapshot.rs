//! Capture and rebuild: `WasiCtx` <-> `wmig_proto::wasi::WasiSnapshot`.
//!
//! A snapshot holds no host paths: preopens are named by guest path and the
//! resuming side supplies host directories again. Files are reopened by
//! their normalised path below the preopen (through the same sandboxed
//! resolver the guest's own calls use), never created or truncated, and put
//! back at the same fd number with the same offset, flags and rights; the
//! closed numbers awaiting reuse (`FdKind::Closed`) come back too, so later
//! fds match as well.

use std::collections::{BTreeMap, BTreeSet};

use wmig_proto::wasi::{FdKind, FdSnapshot, WasiSnapshot};

use crate::path::{self, checkpoint_components};
use crate::table::{fdflags, rights, Desc, DirDesc, FileDesc, PreopenDir};
use crate::{
    clocks, open_dir, open_preopen, preopen_desc, Preopen, WasiConfig, WasiCtx, WasiError,
};

impl WasiCtx {
    /// Everything needed to rebuild this context elsewhere.
    pub fn snapshot(&self) -> WasiSnapshot {
        let mut fds = self
            .table
            .iter()
            .map(|(fd, desc)| match desc {
                Desc::Stdin => plain(fd, crate::table::rights::FD_READ, FdKind::Stdin),
                Desc::Stdout => plain(fd, crate::table::rights::FD_WRITE, FdKind::Stdout),
                Desc::Stderr => plain(fd, crate::table::rights::FD_WRITE, FdKind::Stderr),
                Desc::Dir(d) => FdSnapshot {
                    fd,
                    rights_base: d.rights_base,
                    rights_inheriting: d.rights_inheriting,
                    fdflags: 0,
                    kind: if d.is_preopen {
                        FdKind::Preopen {
                            guest_path: self
                                .preopens
                                .get(d.preopen as usize)
                                .map(|p| p.guest.clone())
                                .unwrap_or_default(),
                        }
                    } else {
                        FdKind::Dir {
                            preopen: d.preopen,
                            path: d.rel.join("/"),
                        }
                    },
                },
                Desc::File(f) => FdSnapshot {
                    fd,
                    rights_base: f.rights_base,
                    rights_inheriting: f.rights_inheriting,
                    fdflags: f.fdflags(),
                    kind: FdKind::File {
                        preopen: f.preopen,
                        path: f.rel.clone(),
                        offset: f.offset,
                        read: f.read,
                        write: f.write,
                    },
                },
            })
            .chain(self.table.free().map(|fd| plain(fd, 0, FdKind::Closed)))
            .collect::<Vec<_>>();
        fds.sort_by_key(|f| f.fd);
        WasiSnapshot {
            args: self.args.clone(),
            env: self.env.clone(),
            stdin_offset: self.stdin_offset,
            stdout_offset: self.stdout_offset,
            stderr_offset: self.stderr_offset,
            monotonic_ns: self.monotonic_ns(),
            preopens: self.preopens.iter().map(|p| p.guest.clone()).collect(),
            fds,
        }
    }

    /// Rebuild a context from a checkpoint. Args and env come from the
    /// snapshot (those in `config` are ignored); every preopen a descriptor
    /// still uses must be in `config.preopens` under the same guest path.
    /// stdin is used as given: a caller replaying the same input should skip
    /// `snapshot.stdin_offset` bytes of it first.
    pub fn restore(config: WasiConfig, snapshot: &WasiSnapshot) -> Result<Self, WasiError> {
        let mut ctx = WasiCtx::empty(
            snapshot.args.clone(),
            snapshot.env.clone(),
            config.stdin,
            config.stdout,
            config.stderr,
        );
        ctx.stdin_offset = snapshot.stdin_offset;
        ctx.stdout_offset = snapshot.stdout_offset;
        ctx.stderr_offset = snapshot.stderr_offset;
        ctx.clock = clocks::MonotonicClock::starting_at(snapshot.monotonic_ns);

        // Which preopens the descriptors use, in one pass: a snapshot is
        // peer or disk input, and matching every preopen against every fd
        // would take time quadratic in its size.
        let mut used_index = BTreeSet::new();
        let mut used_guest = BTreeSet::new();
        for f in &snapshot.fds {
            match &f.kind {
                FdKind::Preopen { guest_path } => {
                    used_guest.insert(guest_path.as_str());
                }
                FdKind::Dir { preopen, .. } | FdKind::File { preopen, .. } => {
                    used_index.insert(*preopen);
                }
                FdKind::Stdin | FdKind::Stdout | FdKind::Stderr | FdKind::Closed => {}
            }
        }

        // Match snapshot preopens to the given host directories by guest path.
        let mut handles = Vec::with_capacity(snapshot.preopens.len());
        let mut first_index = BTreeMap::new();
        for (index, guest) in snapshot.preopens.iter().enumerate() {
            let index = u32::try_from(index)
                .map_err(|_| invalid(u32::MAX, "the snapshot lists too many preopens"))?;
            first_index.entry(guest.as_str()).or_insert(index);
            let used = used_index.contains(&index) || used_guest.contains(guest.as_str());
            let given = config.preopens.iter().find(|p| &p.guest == guest);
            let (root, handle) = match (given, used) {
                (Some(p), _) => open_preopen(p).map(|(r, h)| (Some(r), used.then_some(h)))?,
                (None, true) => {
                    return Err(WasiError::MissingPreopen {
                        guest: guest.clone(),
                    })
                }
                (None, false) => (None, None),
            };
            ctx.preopens.push(PreopenDir {
                guest: guest.clone(),
                root,
            });
            handles.push(handle);
        }

        let mut seen = BTreeSet::new();
        let mut free = Vec::new();
        for f in &snapshot.fds {
            if !seen.insert(f.fd) {
                return Err(invalid(f.fd, "the descriptor appears twice"));
            }
            if f.kind == FdKind::Closed {
                free.push(f.fd);
                continue;
            }
            // Only what the live calls can produce: `path_open` refuses
            // undefined rights, and a descriptor here carries no flags but
            // append and nonblock; the guest would be shown anything else.
            if (f.rights_base | f.rights_inheriting) & !rights::ALL != 0 {
                return Err(invalid(f.fd, "rights outside the WASI preview1 set"));
            }
            if f.fdflags & !(fdflags::APPEND | fdflags::NONBLOCK) != 0 {
                return Err(invalid(
                    f.fd,
                    "fdflags other than append and nonblock (never set by a guest here)",
                ));
            }
            let desc = ctx.rebuild(f, &mut handles, &first_index, &config.preopens)?;
            ctx.table.insert_at(f.fd, desc);
        }
        ctx.table.set_free(free);
        Ok(ctx)
    }

    /// Reopen one descriptor.
    fn rebuild(
        &self,
        f: &FdSnapshot,
        handles: &mut [Option<std::fs::File>],
        first_index: &BTreeMap<&str, u32>,
        given: &[Preopen],
    ) -> Result<Desc, WasiError> {
        let desc = match &f.kind {
            FdKind::Closed => return Err(invalid(f.fd, "a closed number cannot be reopened")),
            FdKind::Stdin => Desc::Stdin,
            FdKind::Stdout => Desc::Stdout,
            FdKind::Stderr => Desc::Stderr,
            FdKind::Preopen { guest_path } => {
                let index = *first_index.get(guest_path.as_str()).ok_or_else(|| {
                    invalid(
                        f.fd,
                        "a preopen fd names a guest path missing from the preopen list",
                    )
                })?;
                // The first fd for a preopen takes the handle opened above;
                // a second one (dup via path_open of ".") opens it again.
                let handle = match handles.get_mut(index as usize).and_then(Option::take) {
                    Some(h) => h,
                    None => {
                        let p = given
                            .iter()
                            .find(|p| &p.guest == guest_path)
                            .ok_or_else(|| WasiError::MissingPreopen {
                                guest: guest_path.clone(),
                            })?;
                        open_preopen(p)?.1
                    }
                };
                let mut d = preopen_desc(index, handle);
                d.rights_base = f.rights_base;
                d.rights_inheriting = f.rights_inheriting;
                Desc::Dir(d)
            }
            FdKind::Dir { preopen, path } => {
                let (rel, host) = self.reopen_path(f.fd, *preopen, path)?;
                let handle = open_dir(&host).map_err(|e| self.reopen_error(*preopen, path, e))?;
                Desc::Dir(DirDesc {
                    preopen: *preopen,
                    rel,
                    is_preopen: false,
                    handle,
                    rights_base: f.rights_base,
                    rights_inheriting: f.rights_inheriting,
                })
            }
            FdKind::File {
                preopen,
                path,
                offset,
                read,
                write,
            } => {
                let (_, host) = self.reopen_path(f.fd, *preopen, path)?;
                let file = reopen_file(&host, *read, *write)
                    .map_err(|e| self.reopen_error(*preopen, path, e))?;
                Desc::File(FileDesc {
                    file,
                    preopen: *preopen,
                    rel: path.clone(),
                    offset: *offset,
                    read: *read,
                    write: *write,
                    append: f.fdflags & crate::table::fdflags::APPEND != 0,
                    nonblock: f.fdflags & crate::table::fdflags::NONBLOCK != 0,
                    rights_base: f.rights_base,
                    rights_inheriting: f.rights_inheriting,
                })
            }
        };
        Ok(desc)
    }

    /// Validate a checkpoint path and resolve it in the sandbox again (the
    /// host directory may differ from the one it was captured on).
    fn reopen_path(
        &self,
        fd: u32,
        preopen: u32,
        rel: &str,
    ) -> Result<(Vec<String>, std::path::PathBuf), WasiError> {
        if checkpoint_components(rel).is_none() {
            return Err(invalid(
                fd,
                "a path is not normalised (empty, `.` or `..` component)",
            ));
        }
        let root = self
            .preopens
            .get(preopen as usize)
            .and_then(|p| p.root.as_deref())
            .ok_or_else(|| {
                invalid(
                    fd,
                    "a descriptor refers to a preopen the snapshot does not list",
                )
            })?;
        let guest_rel = if rel.is_empty() { "." } else { rel };
        let resolved = path::resolve(root, &[], guest_rel, true)
            .map_err(|errno| self.reopen_error(preopen, rel, std::io::Error::other(errno)))?;
        Ok((resolved.rel, resolved.host))
    }

    fn reopen_error(&self, preopen: u32, path: &str, source: std::io::Error) -> WasiError {
        WasiError::Reopen {
            guest: self
                .preopens
                .get(preopen as usize)
                .map(|p| p.guest.clone())
                .unwrap_or_default(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Open a file descriptor's file again: exactly the access mode it had,
/// never creating or truncating. Only what `path_open` gives a file
/// descriptor for is accepted: not a directory (that would be a `Dir`), and
/// not a FIFO or socket, whose contents a checkpoint cannot resume (and
/// whose `open(2)` would wait for a peer, so it is made non-blocking until
/// the type is known).
fn reopen_file(host: &std::path::Path, read: bool, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(read || !write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(host)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
    }
    if kind.is_fifo() || kind.is_socket() {
        return Err(std::io::Error::other(
            "it is a FIFO or a socket now, not a file whose position can be resumed",
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the duration (borrowed from `file`);
    // F_GETFL/F_SETFL only read and set its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn plain(fd: u32, rights: u64, kind: FdKind) -> FdSnapshot {
    FdSnapshot {
        fd,
        rights_base: rights,
        rights_inheriting: rights,
        fdflags: 0,
        kind,
    }
}

fn invalid(fd: u32, problem: &'static str) -> WasiError {
    WasiError::InvalidSnapshot { fd, problem }
}

#[cfg(test)]
#[path = "snapshot_fuzz.rs"]
mod fuzz;
