//! The serializable image of a task's WASI preview1 state.
//!
//! wasmtime-wasi keeps its descriptor table private, so wmig implements
//! preview1 over its own table (crate `wmig-wasi`) whose state is exactly
//! this: enough to rebuild every descriptor on another machine. Host paths are
//! deliberately absent — a preopen is identified by its guest path and the
//! resuming side supplies the host directory again (`--dir HOST::GUEST`).

use serde::{Deserialize, Serialize};

/// Everything WASI-side a restored task needs to continue unnoticed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasiSnapshot {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Bytes the guest has consumed from stdin so far.
    pub stdin_offset: u64,
    /// Bytes the guest has written to stdout / stderr so far. Output is
    /// identified by these offsets so replayed bytes are never shown twice.
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    /// The guest's monotonic clock at capture, in ns: a restored task's clock
    /// continues from here instead of jumping to another host's boot time.
    pub monotonic_ns: u64,
    /// Guest paths of the preopens the task was started with, in their
    /// original order (the first was fd 3). `FdKind::{Dir, File}::preopen`
    /// indexes this list, so a descriptor stays resolvable even after the
    /// guest closed or renumbered the preopen's own fd.
    pub preopens: Vec<String>,
    /// Every open descriptor, in fd order. Stdio is included so a guest that
    /// closed or renumbered fds 0-2 resumes with the same table; closed
    /// numbers not yet reused appear as [`FdKind::Closed`].
    pub fds: Vec<FdSnapshot>,
}

/// One open descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdSnapshot {
    pub fd: u32,
    pub rights_base: u64,
    pub rights_inheriting: u64,
    /// `fdflags` (append, dsync, nonblock, rsync, sync) as the guest set them.
    pub fdflags: u16,
    pub kind: FdKind,
}

/// What a descriptor refers to. Paths are relative to a preopen (`/`
/// separated, symlinks already resolved) and never contain `..`, `.` or
/// absolute components; `preopen` indexes [`WasiSnapshot::preopens`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A preopened directory, named by its guest path (e.g. `/data`).
    Preopen { guest_path: String },
    /// A directory opened below a preopen (`path` is empty for the preopen's
    /// root opened again).
    Dir { preopen: u32, path: String },
    /// A file opened below a preopen, with its current position and the
    /// access mode it was opened with.
    File {
        preopen: u32,
        path: String,
        offset: u64,
        read: bool,
        write: bool,
    },
    /// The task's standard input (normally fd 0).
    Stdin,
    /// The task's standard output (normally fd 1).
    Stdout,
    /// The task's standard error (normally fd 2).
    Stderr,
    /// Not a descriptor: a number the guest closed that has not been handed
    /// out again. Like wasmtime-wasi, a new descriptor takes the highest such
    /// number before a fresh one, so these keep fd numbers after a restore
    /// identical to an uninterrupted run. (A variant rather than a new field
    /// so checkpoints written before it still decode.)
    Closed,
}
