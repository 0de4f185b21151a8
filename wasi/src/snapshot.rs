//! Capture and rebuild: `WasiCtx` <-> `wmig_proto::wasi::WasiSnapshot`.
//!
//! A snapshot holds no host paths: preopens are named by guest path and the
//! resuming side supplies host directories again. Files are reopened by
//! their normalised path below the preopen (through the same sandboxed
//! resolver the guest's own calls use), never created or truncated, and put
//! back at the same fd number with the same offset, flags and rights; the
//! closed numbers awaiting reuse (`FdKind::Closed`) come back too, so later
//! fds match as well.

use std::collections::BTreeSet;

use wmig_proto::wasi::{FdKind, FdSnapshot, WasiSnapshot};

use crate::path::{self, checkpoint_components};
use crate::table::{Desc, DirDesc, FileDesc, PreopenDir};
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

        // Match snapshot preopens to the given host directories by guest path.
        let mut handles = Vec::with_capacity(snapshot.preopens.len());
        for (index, guest) in snapshot.preopens.iter().enumerate() {
            let used = snapshot
                .fds
                .iter()
                .any(|f| uses_preopen(f, index as u32, guest));
            let given = config.preopens.iter().find(|p| &p.guest == guest);
            let (root, handle) = match (given, used) {
                (Some(p), _) => open_preopen(p).map(|(r, h)| (Some(r), Some(h)))?,
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
            let desc = ctx.rebuild(f, &mut handles, &config.preopens)?;
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
        given: &[Preopen],
    ) -> Result<Desc, WasiError> {
        let desc = match &f.kind {
            FdKind::Closed => return Err(invalid(f.fd, "a closed number cannot be reopened")),
            FdKind::Stdin => Desc::Stdin,
            FdKind::Stdout => Desc::Stdout,
            FdKind::Stderr => Desc::Stderr,
            FdKind::Preopen { guest_path } => {
                let index = self
                    .preopens
                    .iter()
                    .position(|p| &p.guest == guest_path)
                    .ok_or_else(|| {
                        invalid(
                            f.fd,
                            "a preopen fd names a guest path missing from the preopen list",
                        )
                    })?;
                // The first fd for a preopen takes the handle opened above;
                // a second one (dup via path_open of ".") opens it again.
                let handle = match handles.get_mut(index).and_then(Option::take) {
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
                let mut d = preopen_desc(index as u32, handle);
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
                use std::os::unix::fs::OpenOptionsExt;
                // Exactly the access mode it had; never create or truncate.
                let file = std::fs::OpenOptions::new()
                    .read(*read || !*write)
                    .write(*write)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&host)
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

fn plain(fd: u32, rights: u64, kind: FdKind) -> FdSnapshot {
    FdSnapshot {
        fd,
        rights_base: rights,
        rights_inheriting: rights,
        fdflags: 0,
        kind,
    }
}

fn uses_preopen(f: &FdSnapshot, index: u32, guest: &str) -> bool {
    match &f.kind {
        FdKind::Preopen { guest_path } => guest_path == guest,
        FdKind::Dir { preopen, .. } | FdKind::File { preopen, .. } => *preopen == index,
        FdKind::Stdin | FdKind::Stdout | FdKind::Stderr | FdKind::Closed => false,
    }
}

fn invalid(fd: u32, problem: &'static str) -> WasiError {
    WasiError::InvalidSnapshot { fd, problem }
}
