//! WASI preview1 (`wasi_snapshot_preview1`) over a descriptor table that can
//! be checkpointed and rebuilt on another machine.
//!
//! wasmtime-wasi keeps its preview1 table private, so a paused task's open
//! files could not be captured. This crate implements all 46 preview1
//! functions itself, with wasmtime-wasi as the reference for behaviour (same
//! errnos, same output), over state that [`WasiCtx::snapshot`] turns into a
//! [`wmig_proto::wasi::WasiSnapshot`] and [`WasiCtx::restore`] opens again.
//!
//! Layout: `table` (fds), `path` (sandboxed resolution), `fd`, `fdstat` and
//! `dir` (the `fd_*` and `path_*` calls), `clocks` (clocks, `poll_oneoff`),
//! `proc` (args, env, random, exit, sockets), `stat` (metadata), `memory`
//! (guest pointers), `errno`, `snapshot` (capture/restore), `linker`.
//! `tests/wasi/reference` runs the same call sequences against wasmtime-wasi
//! and requires identical results.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod clocks;
mod dir;
mod errno;
mod fd;
mod fdstat;
mod input;
mod linker;
mod memory;
mod path;
mod proc;
mod snapshot;
mod stat;
mod table;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use errno::Errno;
pub use input::{InputPipe, Stdin};
pub use linker::{add_to_linker, fd_read, poll_oneoff};

use table::{Desc, DirDesc, FdTable, PreopenDir};

/// A host directory made visible to the guest at `guest` (`--dir HOST::GUEST`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
}

/// Where the guest's stdout or stderr bytes go.
pub trait OutputSink: Send {
    /// Write all of `bytes`.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// Whether the sink is a terminal; the guest sees a character device
    /// then (as under wasmtime), which changes e.g. `isatty`.
    fn is_terminal(&self) -> bool {
        false
    }
}

/// The host process's stdout, flushed after every write so guest output
/// passes through unbuffered.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutSink;

/// The host process's stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrSink;

impl OutputSink for StdoutSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    }

    fn is_terminal(&self) -> bool {
        std::io::stdout().is_terminal()
    }
}

impl OutputSink for StderrSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stderr().lock();
        out.write_all(bytes)?;
        out.flush()
    }

    fn is_terminal(&self) -> bool {
        std::io::stderr().is_terminal()
    }
}

/// Appends to a shared buffer (tests, workers that forward output).
#[derive(Clone, Debug, Default)]
pub struct BufferSink(pub Arc<Mutex<Vec<u8>>>);

impl BufferSink {
    pub fn new(buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        BufferSink(buffer)
    }
}

impl OutputSink for BufferSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // A panic elsewhere while holding the lock leaves bytes that are
        // still worth keeping.
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Everything a new context needs.
pub struct WasiConfig {
    /// argv, argv[0] included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Become fds 3, 4, ... in order.
    pub preopens: Vec<Preopen>,
    pub stdin: Stdin,
    pub stdout: Box<dyn OutputSink>,
    pub stderr: Box<dyn OutputSink>,
}

/// `proc_exit(code)`: returned as the call's error; callers
/// `downcast_ref::<I32Exit>()` it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I32Exit(pub i32);

impl std::fmt::Display for I32Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exited with status {}", self.0)
    }
}

impl std::error::Error for I32Exit {}

/// Why a context could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum WasiError {
    #[error("cannot open directory {host} to preopen as `{guest}`: {source}")]
    PreopenOpen {
        host: PathBuf,
        guest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} is not a directory; only directories can be preopened (as `{guest}`)")]
    PreopenNotDirectory { host: PathBuf, guest: String },
    #[error("guest path `{guest}` is preopened twice; give each --dir a distinct guest path")]
    DuplicatePreopen { guest: String },
    #[error(
        "the checkpoint has files open under guest directory `{guest}` but no host directory \
         was given for it; pass --dir HOST::{guest}"
    )]
    MissingPreopen { guest: String },
    #[error(
        "cannot reopen `{path}` below guest directory `{guest}` while restoring (was it \
         removed or moved since the checkpoint?): {source}"
    )]
    Reopen {
        guest: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the checkpoint's WASI state is invalid at fd {fd}: {problem}")]
    InvalidSnapshot { fd: u32, problem: &'static str },
}

/// One guest's WASI state: descriptor table, stdio, args, env and clocks.
pub struct WasiCtx {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// In original order; `preopen` fields of descriptors index this.
    preopens: Vec<PreopenDir>,
    table: FdTable,
    stdin: Stdin,
    stdout: Box<dyn OutputSink>,
    stderr: Box<dyn OutputSink>,
    stdin_offset: u64,
    stdout_offset: u64,
    stderr_offset: u64,
    clock: clocks::MonotonicClock,
    interrupt: Arc<Interrupt>,
    /// `poll_oneoff` returned early because a pause was requested; the host
    /// unwinds from inside the call (see [`WasiCtx::take_paused_in_call`]).
    paused_in_call: bool,
    /// A read of an empty [`InputPipe`] may end for a pause (rewriter 4).
    reads_pause: bool,
}

/// Wakes a task that is blocked in a WASI call.
///
/// [`Interrupt::interrupt`] stops it for good: the sleep in `poll_oneoff`
/// wakes at once and that call, and every later one, traps with
/// [`Interrupted`] (cancellation and fencing, where the task's work is
/// abandoned anyway). A **pause** keeps the task: once the host has armed it
/// with the task's pause flag ([`Interrupt::arm_pause`], only for rewrites
/// that can unwind from inside `poll_oneoff`), setting that flag and calling
/// [`Interrupt::notify`] ends the sleep early with the time left recorded in
/// the guest's subscription, so the call continues after a restore.
#[derive(Debug, Default)]
pub struct Interrupt {
    /// Read on every WASI call: an atomic, not the lock.
    stopped: std::sync::atomic::AtomicBool,
    /// The task's pause flag, when a sleep may end for a pause.
    pause: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>>,
    /// Sleepers wait on `wake` under `lock`, so an interrupt between their
    /// check and their wait is never lost.
    lock: Mutex<()>,
    wake: std::sync::Condvar,
}

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Timeout,
    Stopped,
    Pause,
    /// What the waiter waited for happened.
    Ready,
}

impl Interrupt {
    pub fn interrupt(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
    }

    pub fn is_interrupted(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Let a requested pause end a sleep (see the type's docs).
    pub fn arm_pause(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.pause.set(flag);
    }

    /// Wake a sleeper to look at the pause flag again (call after setting it).
    pub fn notify(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
    }

    fn pause_requested(&self) -> bool {
        self.pause
            .get()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Sleep for `d` unless stopped or paused first.
    pub(crate) fn sleep(&self, d: std::time::Duration) -> Wake {
        self.wait(d, || false, true)
    }

    /// Wait up to `d` for `ready`, unless stopped first, or paused first
    /// when `pausable`. `ready` is evaluated under the lock that
    /// [`Interrupt::notify`] takes, so a producer that makes it true and
    /// then notifies is never missed.
    pub(crate) fn wait(
        &self,
        d: std::time::Duration,
        ready: impl Fn() -> bool,
        pausable: bool,
    ) -> Wake {
        let paused = || pausable && self.pause_requested();
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .wait_timeout_while(guard, d, |_| {
                !self.is_interrupted() && !ready() && !paused()
            })
            .unwrap_or_else(|p| p.into_inner());
        if self.is_interrupted() {
            Wake::Stopped
        } else if ready() {
            Wake::Ready
        } else if paused() {
            Wake::Pause
        } else {
            Wake::Timeout
        }
    }
}

/// The trap a WASI call, or a yield point, raises once its task was
/// interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the task was stopped for good (cancelled or fenced)")
    }
}

impl std::error::Error for Interrupted {}

impl WasiCtx {
    /// The handle that stops this task inside a blocking call.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// Whether the task was interrupted (cheap: one atomic load).
    pub fn is_interrupted(&self) -> bool {
        self.interrupt.is_interrupted()
    }

    /// True once after `poll_oneoff` ended its sleep early for a pause: the
    /// host must unwind from inside that call. The guest's clock
    /// subscriptions now hold absolute deadlines, so the call, run again
    /// after the restore, sleeps only the time that was left.
    pub fn take_paused_in_call(&mut self) -> bool {
        std::mem::take(&mut self.paused_in_call)
    }

    /// Let a read of an empty stdin pipe end for a pause, like a sleep (the
    /// host can unwind from inside `fd_read`: rewriter 4). Nothing is
    /// consumed then, so the read runs again where the task resumes.
    pub fn allow_read_pauses(&mut self) {
        self.reads_pause = true;
    }

    /// A fresh context: fds 0-2 are stdio, preopens follow from fd 3.
    pub fn new(config: WasiConfig) -> Result<Self, WasiError> {
        let mut ctx = WasiCtx::empty(
            config.args,
            config.env,
            config.stdin,
            config.stdout,
            config.stderr,
        );
        for desc in [Desc::Stdin, Desc::Stdout, Desc::Stderr] {
            // Cannot fail on an empty table.
            let _ = ctx.table.push(desc);
        }
        for (index, p) in config.preopens.iter().enumerate() {
            if ctx.preopens.iter().any(|q| q.guest == p.guest) {
                return Err(WasiError::DuplicatePreopen {
                    guest: p.guest.clone(),
                });
            }
            let (root, handle) = open_preopen(p)?;
            ctx.preopens.push(PreopenDir {
                guest: p.guest.clone(),
                root: Some(root),
            });
            let desc = Desc::Dir(preopen_desc(index as u32, handle));
            let _ = ctx.table.push(desc);
        }
        Ok(ctx)
    }

    fn empty(
        args: Vec<String>,
        env: Vec<(String, String)>,
        stdin: Stdin,
        stdout: Box<dyn OutputSink>,
        stderr: Box<dyn OutputSink>,
    ) -> Self {
        let interrupt = Arc::<Interrupt>::default();
        if let Stdin::Pipe(p) = &stdin {
            p.attach(interrupt.clone());
        }
        WasiCtx {
            args,
            env,
            preopens: Vec::new(),
            table: FdTable::default(),
            stdin,
            stdout,
            stderr,
            stdin_offset: 0,
            stdout_offset: 0,
            stderr_offset: 0,
            clock: clocks::MonotonicClock::starting_at(0),
            interrupt,
            paused_in_call: false,
            reads_pause: false,
        }
    }

    /// Bytes the guest has written to stdout so far (across restores).
    pub fn stdout_offset(&self) -> u64 {
        self.stdout_offset
    }

    /// Bytes the guest has written to stderr so far (across restores).
    pub fn stderr_offset(&self) -> u64 {
        self.stderr_offset
    }

    /// Bytes the guest has read from stdin so far (across restores).
    pub fn stdin_offset(&self) -> u64 {
        self.stdin_offset
    }

    /// The canonical host root of preopen `index`.
    fn preopen_root(&self, index: u32) -> Result<&std::path::Path, Errno> {
        self.preopens
            .get(index as usize)
            .and_then(|p| p.root.as_deref())
            .ok_or(Errno::BADF)
    }
}

/// Canonicalise and open a preopen's host directory.
fn open_preopen(p: &Preopen) -> Result<(PathBuf, std::fs::File), WasiError> {
    let err = |source| WasiError::PreopenOpen {
        host: p.host.clone(),
        guest: p.guest.clone(),
        source,
    };
    let root = p.host.canonicalize().map_err(err)?;
    if !root.is_dir() {
        return Err(WasiError::PreopenNotDirectory {
            host: p.host.clone(),
            guest: p.guest.clone(),
        });
    }
    let handle = open_dir(&root).map_err(err)?;
    Ok((root, handle))
}

fn preopen_desc(index: u32, handle: std::fs::File) -> DirDesc {
    DirDesc {
        preopen: index,
        rel: Vec::new(),
        is_preopen: true,
        handle,
        rights_base: table::rights::PREOPEN_BASE,
        rights_inheriting: table::rights::PREOPEN_INHERITING,
    }
}

/// Open a directory handle (read-only, must be a directory, final symlink
/// not followed: paths reaching here are already resolved).
fn open_dir(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wmig_proto::wasi::FdKind;

    #[test]
    fn an_interrupt_ends_a_long_sleep_and_is_remembered() {
        let interrupt = Arc::new(Interrupt::default());
        let other = interrupt.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            other.interrupt();
        });
        // An hour, unless interrupted: the test would hang otherwise.
        assert_eq!(
            interrupt.sleep(std::time::Duration::from_secs(3600)),
            Wake::Stopped
        );
        waker.join().expect("waker");
        assert!(interrupt.is_interrupted());
        assert_eq!(
            interrupt.sleep(std::time::Duration::from_secs(3600)),
            Wake::Stopped
        );
    }

    fn config(preopens: Vec<Preopen>) -> WasiConfig {
        WasiConfig {
            args: vec!["prog".into()],
            env: Vec::new(),
            preopens,
            stdin: Stdin::empty(),
            stdout: Box::new(BufferSink::default()),
            stderr: Box::new(BufferSink::default()),
        }
    }

    #[test]
    fn ctx_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<WasiCtx>();
    }

    #[test]
    fn fresh_ctx_has_stdio_then_preopens() {
        let t = tempfile::tempdir().unwrap();
        let p = |g: &str| Preopen {
            host: t.path().to_path_buf(),
            guest: g.into(),
        };
        let ctx = WasiCtx::new(config(vec![p("/a"), p("/b")])).unwrap();
        let snap = ctx.snapshot();
        let fds: Vec<u32> = snap.fds.iter().map(|f| f.fd).collect();
        assert_eq!(fds, [0, 1, 2, 3, 4]);
        assert_eq!(snap.preopens, ["/a", "/b"]);
        assert!(snap.fds.iter().all(|f| f.kind != FdKind::Closed));
    }

    #[test]
    fn bad_preopens_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"").unwrap();
        let missing = t.path().join("missing");
        let err = WasiCtx::new(config(vec![Preopen {
            host: missing.clone(),
            guest: "/m".into(),
        }]))
        .err()
        .unwrap();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        let err = WasiCtx::new(config(vec![Preopen {
            host: t.path().join("file"),
            guest: "/f".into(),
        }]))
        .err()
        .unwrap();
        assert!(
            matches!(err, WasiError::PreopenNotDirectory { .. }),
            "{err}"
        );
        let dup = Preopen {
            host: t.path().to_path_buf(),
            guest: "/d".into(),
        };
        let err = WasiCtx::new(config(vec![dup.clone(), dup])).err().unwrap();
        assert!(matches!(err, WasiError::DuplicatePreopen { .. }), "{err}");
    }
}
