//! One task on this worker: its OS thread running the guest, and the
//! checkpoints it hands to the uploader.
//!
//! The guest runs on its own thread (wasmtime calls are synchronous and the
//! guest needs a deep native stack); everything it produces — output,
//! checkpoints, its end — leaves as messages, so the thread never waits on
//! the network. A checkpoint pauses the guest only for the capture (hashing
//! and copying changed chunks); the upload to the registry happens while the
//! guest runs on.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use wmig_host::chunks::ChunkSink;
use wmig_host::wasi::{OutputSink, Preopen, WasiConfig};
use wmig_host::{
    CaptureMeta, LiveFinal, MemChunks, PageBuf, PreparedModule, Runtime, Task, TaskConfig,
};
use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::control::{
    ControlRequest, Outcome, OutputChunk, Stream, TaskOptions, TaskSpec,
};
use wmig_proto::{Hash, NodeId, TaskId};

use crate::report::Report;

/// Levers the worker holds on a running task.
#[derive(Default)]
pub struct TaskControl {
    /// Pause at the next yield point (the guest checks it there).
    pub pause: Arc<AtomicBool>,
    /// Stop for good at that pause (cancelled or fenced).
    pub drop: AtomicBool,
    /// Checkpoint at that pause.
    pub checkpoint: AtomicBool,
    /// At that pause, store the final checkpoint and forget the task (the
    /// last step of a migration).
    pub handoff: AtomicBool,
    /// Fuel, memory and progress so far, sent with every heartbeat.
    pub usage: Arc<wmig_host::LiveUsage>,
    /// Wakes the task out of a blocking WASI call (a long sleep): for good
    /// when it is dropped, so its thread and memory go at once, or to pause
    /// it there; set once it runs.
    pub interrupt: std::sync::Mutex<Option<Arc<wmig_host::wasi::Interrupt>>>,
    /// Live migration out: what the task thread does at the next pause
    /// ([`LIVE_ROUND`], [`LIVE_FINAL`], [`LIVE_END`]).
    pub live_step: AtomicU8,
    /// The task thread is done (ended, failed, dropped or moved).
    pub ended: AtomicBool,
    /// Where the task thread hands its rounds while a live migration runs.
    pub live_out: Mutex<Option<mpsc::UnboundedSender<LiveOut>>>,
    /// Round buffers the sender is done with. A round is captured while
    /// the task is paused; writing into memory already faulted in (not a
    /// fresh 64 MiB allocation) keeps that pause short.
    pub spare_bufs: Mutex<Vec<PageBuf>>,
    /// Signalled when a buffer returns to `spare_bufs`.
    pub spare_returned: std::sync::Condvar,
    /// Checkpoints of this task captured and not yet stored. While one is
    /// (the registry is away or slow), periodic checkpoints are skipped:
    /// their chunks would only pile up in memory behind it.
    pub uploads_pending: Arc<std::sync::atomic::AtomicU32>,
    /// Set while the task waits, paused for good, for the coordinator's
    /// decision on a live migration: `true` carries on here, `false`
    /// forgets the task (it runs on the target).
    pub decision: Mutex<Option<std::sync::mpsc::Sender<bool>>>,
    /// Wakes the live sender when the coordinator abandons the migration,
    /// so it does not wait on a peer that is gone.
    pub live_abort: tokio::sync::Notify,
    /// Unix µs of the task's next periodic checkpoint (0: not running yet)
    /// and of its wall-time limit (0: none). A task blocked in a WASI call
    /// passes no yield point to notice either; the worker's watchdog
    /// ([`TaskControl::overdue`]) pauses it there instead.
    pub next_checkpoint_us: AtomicU64,
    pub wall_due_us: AtomicU64,
    /// The module the task runs, once it runs (the live sender names it).
    pub module: std::sync::OnceLock<Arc<PreparedModule>>,
    /// Percent of its time the task sleeps at yield points (0: none). A live
    /// migration whose rounds stop shrinking (the task writes faster than
    /// the link carries) raises it, as QEMU's auto-converge throttles a
    /// vCPU: the task dirties less and leaves the copy more of the CPU.
    pub throttle: AtomicU8,
    /// Bytes of the task's files at the last scan.
    pub files_bytes: AtomicU64,
}

/// Most a live migration throttles a task (percent of its time asleep).
pub const MAX_THROTTLE: u8 = 80;

/// At the next pause, send the pages written since the last round.
pub const LIVE_ROUND: u8 = 1;
/// At the next pause, stop for good and send the rest of the state.
pub const LIVE_FINAL: u8 = 2;
/// At the next pause, stop tracking writes (the migration was abandoned).
pub const LIVE_END: u8 = 3;
/// Pages per piece of a large final round (4 MiB).
pub const FINAL_PIECE_PAGES: u32 = 1024;
/// How long a cold move's capture waits for the sender to return a piece
/// buffer before it allocates one.
const SPARE_WAIT: Duration = Duration::from_secs(5);

/// What the task thread hands the live sender.
pub enum LiveOut {
    /// A round's pages, and its files' changes (empty without trees).
    Round(PageBuf, FileRound),
    /// Part of a large final round (a cold move), captured while the
    /// previous part is on the wire.
    Piece(PageBuf),
    Final(Box<LiveFinal>, u64, FileRound),
    Failed(String),
}

/// A task's trees as scanned at a live-migration pause, and the chunks of
/// them the target has not been sent.
#[derive(Default)]
pub struct FileRound {
    pub trees: Vec<wmig_proto::files::PreopenTree>,
    pub chunks: Vec<(Hash, Arc<[u8]>)>,
}

impl TaskControl {
    /// Hand a buffer back for the next round or piece.
    pub fn return_spare(&self, buf: PageBuf) {
        self.spare_bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf);
        self.spare_returned.notify_one();
    }

    /// A spare buffer, waiting up to `wait` for one to come back (a cold
    /// move cycles a few pre-faulted buffers rather than fault in fresh
    /// memory for every piece while the task is paused).
    fn spare_buf_within(&self, wait: Duration) -> PageBuf {
        let deadline = Instant::now() + wait;
        let mut spare = self.spare_bufs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(b) = spare.pop() {
                return b;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PageBuf::default();
            }
            spare = self
                .spare_returned
                .wait_timeout(spare, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn request_drop(&self) {
        self.drop.store(true, Ordering::SeqCst);
        self.pause.store(true, Ordering::SeqCst);
        self.decide(false);
        if let Some(i) = &*self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) {
            i.interrupt();
        }
    }

    /// Remember the running task's interrupt handle; a drop requested before
    /// it existed takes effect now.
    fn set_interrupt(&self, handle: Arc<wmig_host::wasi::Interrupt>) {
        let mut slot = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if self.drop.load(Ordering::SeqCst) {
            handle.interrupt();
        }
        *slot = Some(handle);
    }

    pub fn request_checkpoint(&self) {
        self.checkpoint.store(true, Ordering::SeqCst);
        self.request_pause();
    }

    pub fn request_handoff(&self) {
        self.handoff.store(true, Ordering::SeqCst);
        self.request_pause();
    }

    /// Whether the task is past a checkpoint or its wall limit by more than
    /// `grace` without having paused: it is blocked in a call.
    pub fn overdue(&self, now_us: u64, grace_us: u64) -> bool {
        let due = |at: u64| at != 0 && now_us > at.saturating_add(grace_us);
        due(self.next_checkpoint_us.load(Ordering::Relaxed))
            || due(self.wall_due_us.load(Ordering::Relaxed))
    }

    /// Ask the task thread for a live-migration step at its next pause.
    pub fn request_live(&self, step: u8) {
        self.live_step.store(step, Ordering::SeqCst);
        self.request_pause();
    }

    /// Answer a task that waits paused at the end of a live migration;
    /// false if none waits.
    pub fn decide(&self, carry_on: bool) -> bool {
        match self
            .decision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(tx) => tx.send(carry_on).is_ok(),
            None => false,
        }
    }

    /// Pause at the next yield point, or at once if the task is asleep in
    /// `poll_oneoff` (its sleep continues, with the time left, on resume).
    pub(crate) fn request_pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        if let Some(i) = &*self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) {
            i.notify();
        }
    }
}

/// The final checkpoint of a migration: the task thread waits on `done` to
/// learn whether it is durable (then it forgets the task) or not (then it
/// carries on).
pub struct Handoff {
    pub paused_at_us: u64,
    pub done: std::sync::mpsc::Sender<bool>,
}

/// A captured checkpoint on its way to the registry.
pub struct Upload {
    pub task: TaskId,
    pub epoch: u64,
    pub manifest: Manifest,
    /// Chunks the registry may lack (the rest it is known to hold).
    pub chunks: Vec<(Hash, Arc<[u8]>)>,
    pub fuel_used: u64,
    pub handoff: Option<Handoff>,
    /// The task's final files: stored, not reported as a checkpoint;
    /// `true` is sent once they are durable.
    pub end: Option<std::sync::mpsc::Sender<bool>>,
    /// The task's count of uploads not yet done (decremented once stored
    /// or given up).
    pub pending: Arc<std::sync::atomic::AtomicU32>,
}

/// Hashes this worker knows the registry holds; capture skips copying them.
pub type KnownChunks = Arc<Mutex<HashSet<Hash>>>;

/// Chunk bytes this worker holds (captured here, prefetched or restored),
/// so a task migrating here again fetches only what changed.
pub type ChunkCache = Arc<Mutex<MemChunks>>;

/// Past this many chunks (1 GiB) the cache starts over.
pub const CHUNK_CACHE_MAX: usize = 16 * 1024;

/// A capture sink that copies only chunks not known to be stored.
struct NewChunks<'a> {
    known: &'a HashSet<Hash>,
    new: Vec<(Hash, Arc<[u8]>)>,
    seen: HashSet<Hash>,
}

impl ChunkSink for NewChunks<'_> {
    fn contains(&self, hash: &Hash) -> bool {
        self.known.contains(hash) || self.seen.contains(hash)
    }
    fn put(&mut self, hash: Hash, bytes: &[u8]) {
        if self.seen.insert(hash) {
            self.new.push((hash, Arc::from(bytes)));
        }
    }
}

/// Output of one stream, forwarded with its byte offset.
struct ReportSink {
    task: TaskId,
    epoch: u64,
    node: NodeId,
    stream: Stream,
    offset: u64,
    tx: mpsc::UnboundedSender<Report>,
    backlog: Arc<crate::report::Backlog>,
}

impl OutputSink for ReportSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.backlog.add(bytes.len());
        let chunk = OutputChunk {
            task: self.task,
            stream: self.stream,
            offset: self.offset,
            bytes: bytes.to_vec(),
        };
        self.offset += bytes.len() as u64;
        // If the worker is shutting down the bytes have nowhere to go; the
        // task resumes elsewhere from a checkpoint and writes them again.
        let _ = self.tx.send(ControlRequest::Output {
            node: self.node.clone(),
            epoch: self.epoch,
            chunk,
        });
        Ok(())
    }
}

/// Everything the task thread needs.
pub struct Job {
    pub node: NodeId,
    pub task: TaskId,
    pub epoch: u64,
    pub spec: TaskSpec,
    pub options: TaskOptions,
    pub module: Arc<PreparedModule>,
    pub runtime: Arc<Runtime>,
    /// Restore from this checkpoint instead of starting fresh.
    pub resume: Option<(Manifest, MemChunks)>,
    /// Checkpoint bytes fetched from the registry for `resume`.
    pub resume_fetched: u64,
    /// A task that arrived by live migration, ready to run, and the seq of
    /// the state it holds.
    pub arrived: Option<(Task, u64)>,
    pub checkpoint_every: Duration,
    pub yield_fuel: u32,
    /// For tasks that set no memory limit of their own.
    pub memory_limit: u64,
    pub control: Arc<TaskControl>,
    pub known: KnownChunks,
    pub cache: ChunkCache,
    pub reports: mpsc::UnboundedSender<Report>,
    pub uploads: mpsc::UnboundedSender<Upload>,
    /// The task's stdin, for tasks submitted with `stdin`.
    pub stdin: Option<crate::input::StdinFeed>,
    /// Working copies of the task's trees (tasks submitted with `--dir`).
    pub files: Option<crate::files::TaskFiles>,
    /// Memory to free once the task runs (a live move's receive buffer).
    pub release_after_start: Option<Vec<u8>>,
    /// The worker's output not yet accepted by the coordinator.
    pub backlog: Arc<crate::report::Backlog>,
    /// Set while the worker cannot reach the coordinator.
    pub fence: Arc<crate::fence::Fence>,
}

/// Sleep the share of the last slice that the task's throttle asks for, in
/// steps short enough that a pause request is not kept waiting.
fn throttle(control: &TaskControl, slice_began: &mut Instant) {
    let pct = u32::from(control.throttle.load(Ordering::Relaxed).min(MAX_THROTTLE));
    if pct > 0 {
        let ran = slice_began.elapsed();
        let mut rest = ran * pct / (100 - pct);
        const STEP: Duration = Duration::from_millis(1);
        while !rest.is_zero() && !control.pause.load(Ordering::Relaxed) {
            let nap = rest.min(STEP);
            std::thread::sleep(nap);
            rest -= nap;
        }
    }
    *slice_began = Instant::now();
}

/// While the worker's output backlog is over its limit (the coordinator is
/// away or slow), hold the task here at its yield point until half of it
/// has left: the task pauses instead of queueing output without bound. A
/// pause request (migration, cancel) ends the wait.
fn wait_for_backlog(control: &TaskControl, backlog: &crate::report::Backlog) {
    use crate::report::Backlog;
    if backlog.bytes() <= Backlog::MAX {
        return;
    }
    tracing::debug!(
        bytes = backlog.bytes(),
        "output backlog full; the task waits"
    );
    while backlog.bytes() > Backlog::MAX / 2 && !control.pause.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long [`release_later`] holds on.
const RELEASE_DELAY: Duration = Duration::from_millis(200);

/// Free `what` on a thread of its own, a little later. Unmapping hundreds of
/// MiB takes a core for milliseconds; at the end of a live move that would
/// compete with the target's resumption (on a shared host) and with the
/// messages that complete the move.
pub fn release_later<T: Send + 'static>(what: T) {
    let spawned = std::thread::Builder::new()
        .name("wmig-release".into())
        .spawn(move || {
            std::thread::sleep(RELEASE_DELAY);
            drop(what);
            trim_heap();
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no thread to free memory later; freeing it now");
    }
}

/// Give the allocator's free pages back to the system. A checkpoint of a
/// big memory is copied through many 64 KiB buffers on worker threads;
/// glibc keeps what those threads freed in their arenas, so a worker whose
/// task ended would otherwise go on holding the task's size in RSS.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it takes its locks and touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Job {
    fn sink(&self, stream: Stream, offset: u64) -> Box<dyn OutputSink> {
        Box::new(ReportSink {
            task: self.task,
            epoch: self.epoch,
            node: self.node.clone(),
            stream,
            offset,
            tx: self.reports.clone(),
            backlog: self.backlog.clone(),
        })
    }

    /// The largest linear memory this task may have.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.options
            .memory_limit
            .unwrap_or(self.memory_limit)
            .min(1 << 32)
    }

    fn fail(&self, reason: String, fuel_used: u64) {
        self.finish(
            Outcome::Failed {
                reason,
                exit_code: None,
            },
            fuel_used,
        );
    }

    fn finish(&self, outcome: Outcome, fuel_used: u64) {
        let _ = self.reports.send(ControlRequest::Finished {
            node: self.node.clone(),
            task: self.task,
            epoch: self.epoch,
            outcome,
            fuel_used,
        });
    }

    /// Run the task to its end (or until it is dropped). Call on a guest thread.
    pub fn run(mut self) {
        let instantiated = match self.arrived.take() {
            Some(arrived) => Ok(arrived),
            None => self.instantiate(),
        };
        let (task, mut seq) = match instantiated {
            Ok(t) => t,
            Err(reason) => {
                self.fail(reason, 0);
                return;
            }
        };
        self.control.set_interrupt(task.interrupt());
        let _ = self.control.module.set(task.module().clone());
        // Input continues from the byte the task has read (0, or its
        // checkpoint's offset); the fetch stops when the run ends.
        let _feeding = self.stdin.as_ref().map(|f| f.start(task.stdin_offset()));
        let control = self.control.clone();
        self.drive(task, &mut seq);
        // The task is over here: a live sender waiting for a round learns
        // it at once, not after its step timeout.
        control.ended.store(true, Ordering::SeqCst);
        control
            .live_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn instantiate(&self) -> Result<(Task, u64), String> {
        let (out_at, err_at) = match &self.resume {
            Some((m, _)) => (m.wasi.stdout_offset, m.wasi.stderr_offset),
            None => (0, 0),
        };
        let config = self.task_config(self.wasi_config(out_at, err_at));
        match &self.resume {
            Some((manifest, chunks)) => {
                let t = Task::restore(&self.runtime, &self.module, config, manifest, chunks)
                    .map_err(|e| format!("could not restore checkpoint {}: {e}", manifest.seq))?;
                Ok((t, manifest.seq))
            }
            None => {
                let t = Task::start(&self.runtime, &self.module, config)
                    .map_err(|e| format!("could not start: {e}"))?;
                Ok((t, 0))
            }
        }
    }

    /// The task's WASI context settings, its output continuing at the given
    /// offsets.
    pub fn wasi_config(&self, out_at: u64, err_at: u64) -> WasiConfig {
        WasiConfig {
            args: self.spec.args.clone(),
            env: self
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // Trees first, then host directories (as `wmig submit` lists
            // them in the task's options).
            preopens: self
                .files
                .iter()
                .flat_map(|f| f.preopens())
                .chain(self.options.dirs.iter().map(|(host, guest)| Preopen {
                    host: PathBuf::from(host),
                    guest: guest.clone(),
                }))
                .collect(),
            stdin: self
                .stdin
                .as_ref()
                .map_or_else(wmig_host::wasi::Stdin::empty, |f| f.stdin()),
            stdout: self.sink(Stream::Stdout, out_at),
            stderr: self.sink(Stream::Stderr, err_at),
        }
    }

    /// Limits, pause policy and levers of the task, around `wasi`.
    pub fn task_config(&self, wasi: WasiConfig) -> TaskConfig {
        let mut config = TaskConfig::new(wasi);
        config.yield_fuel = self.yield_fuel;
        config.fuel_limit = self.options.fuel_limit;
        config.memory_limit = Some(
            usize::try_from(self.options.memory_limit.unwrap_or(self.memory_limit))
                .unwrap_or(usize::MAX),
        );
        config.pause_flag = self.control.pause.clone();
        config.usage = Some(self.control.usage.clone());
        // Pause at the first yield past the checkpoint period or the wall
        // limit; both are checked in `drive`.
        let every = self
            .options
            .checkpoint_every_ms
            .map_or(self.checkpoint_every, Duration::from_millis);
        let wall = self.options.wall_limit_ms.map(Duration::from_millis);
        let started = Instant::now();
        let control = self.control.clone();
        let every_us = every.as_micros() as u64;
        control
            .next_checkpoint_us
            .store(unix_us() + every_us, Ordering::Relaxed);
        if let Some(w) = wall {
            control
                .wall_due_us
                .store(unix_us() + w.as_micros() as u64, Ordering::Relaxed);
        }
        let mut slice_began = Instant::now();
        let backlog = self.backlog.clone();
        config.policy = Some(Box::new(move |_| {
            throttle(&control, &mut slice_began);
            wait_for_backlog(&control, &backlog);
            let now = unix_us();
            if now >= control.next_checkpoint_us.load(Ordering::Relaxed) {
                control
                    .next_checkpoint_us
                    .store(now + every_us, Ordering::Relaxed);
                return true;
            }
            wall.is_some_and(|w| started.elapsed() >= w)
        }));
        config
    }

    fn drive(mut self, mut task: Task, seq: &mut u64) {
        let _ = self.reports.send(ControlRequest::Started {
            node: self.node.clone(),
            task: self.task,
            epoch: self.epoch,
            at_us: unix_us(),
            fetched: self.resume_fetched,
        });
        if let Some(buf) = self.release_after_start.take() {
            release_later(buf);
        }
        let wall = self.options.wall_limit_ms.map(Duration::from_millis);
        let started = Instant::now();
        loop {
            let result = task.run();
            let paused_at_us = unix_us();
            let fuel = task.counters().fuel;
            match result {
                Ok(wmig_host::Outcome::Exited(code)) => {
                    self.store_final_files(&mut task, *seq);
                    self.finish(Outcome::Completed { exit_code: code }, fuel);
                    return;
                }
                // Dropped while blocked in a WASI call: the interrupt ended
                // the run; nothing to report, as for a drop at a pause.
                Err(_) if self.control.drop.load(Ordering::SeqCst) => {
                    tracing::info!(task = %self.task, "task dropped inside a blocking call");
                    return;
                }
                Err(e) => {
                    self.store_final_files(&mut task, *seq);
                    self.fail(e.to_string(), fuel);
                    return;
                }
                Ok(wmig_host::Outcome::Paused(_)) => {}
            }
            if self.control.drop.load(Ordering::SeqCst) {
                tracing::info!(task = %self.task, "task dropped");
                return;
            }
            // Self-fenced: wait here, paused, until the coordinator answers
            // (and says whether the task is still ours).
            if self.fence.wait(|| self.control.drop.load(Ordering::SeqCst)) {
                if self.control.drop.load(Ordering::SeqCst) {
                    tracing::info!(task = %self.task, "task dropped while fenced");
                    return;
                }
                let asked = self.control.live_step.load(Ordering::SeqCst) != 0
                    || self.control.checkpoint.load(Ordering::SeqCst)
                    || self.control.handoff.load(Ordering::SeqCst);
                if !asked {
                    self.control.pause.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            if let Some(w) = wall.filter(|w| started.elapsed() >= *w) {
                self.fail(
                    format!("wall-time limit of {} ms exceeded", w.as_millis()),
                    fuel,
                );
                return;
            }
            match self.control.live_step.swap(0, Ordering::SeqCst) {
                0 => {}
                step => {
                    self.control.pause.store(false, Ordering::SeqCst);
                    if self.live_step(&mut task, step, seq, paused_at_us) {
                        tracing::info!(task = %self.task, "moved live; forgotten here");
                        let spare = std::mem::take(
                            &mut *self
                                .control
                                .spare_bufs
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()),
                        );
                        release_later((task, spare));
                        return;
                    }
                    if !self.control.checkpoint.load(Ordering::SeqCst)
                        && !self.control.handoff.load(Ordering::SeqCst)
                    {
                        continue;
                    }
                }
            }
            // Whatever paused it, this checkpoint restarts the period.
            let every_us = self
                .options
                .checkpoint_every_ms
                .map_or(self.checkpoint_every, Duration::from_millis)
                .as_micros() as u64;
            self.control
                .next_checkpoint_us
                .store(unix_us() + every_us, Ordering::Relaxed);
            let handoff = self.control.handoff.swap(false, Ordering::SeqCst);
            self.control.pause.store(false, Ordering::SeqCst);
            self.control.checkpoint.store(false, Ordering::SeqCst);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let handoff = handoff.then_some(Handoff {
                paused_at_us,
                done: done_tx,
            });
            let handing_off = handoff.is_some();
            if !handing_off && self.control.uploads_pending.load(Ordering::SeqCst) > 0 {
                tracing::debug!(task = %self.task, "the last checkpoint is still on its way to the registry; skipping this one");
                continue;
            }
            *seq = wmig_proto::checkpoint::next_seq(*seq, self.epoch);
            match self.checkpoint(&mut task, *seq, fuel, handoff) {
                Ok(()) if handing_off => {
                    // Durable in the registry: the task is the target's now.
                    if done_rx.recv() == Ok(true) {
                        tracing::info!(task = %self.task, seq = *seq, "handed off");
                        return;
                    }
                    tracing::warn!(task = %self.task, "handoff failed; carrying on here");
                }
                Ok(()) => {}
                Err(CaptureError::Files(e @ wmig_host::files::FilesError::OverLimit { .. })) => {
                    if handing_off {
                        let _ = self.reports.send(ControlRequest::HandoffFailed {
                            node: self.node.clone(),
                            task: self.task,
                            epoch: self.epoch,
                            reason: format!("capture failed: {e}"),
                        });
                    }
                    self.fail(e.to_string(), fuel);
                    return;
                }
                Err(e) => {
                    // The task itself is fine; the next period tries again.
                    tracing::warn!(task = %self.task, error = %e, "checkpoint capture failed");
                    if handing_off {
                        let _ = self.reports.send(ControlRequest::HandoffFailed {
                            node: self.node.clone(),
                            task: self.task,
                            epoch: self.epoch,
                            reason: format!("capture failed: {e}"),
                        });
                    }
                }
            }
        }
    }

    /// A round buffer the sender is done with, or a new one.
    fn spare_buf(&self) -> PageBuf {
        self.control
            .spare_bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// One live-migration step at a pause. Returns true when the task has
    /// moved and must be forgotten here.
    fn live_step(&mut self, task: &mut Task, step: u8, seq: &mut u64, paused_at_us: u64) -> bool {
        let out = self
            .control
            .live_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(out) = out.filter(|_| step != LIVE_END) else {
            task.live_end();
            return false;
        };
        if step == LIVE_ROUND {
            let mut buf = self.spare_buf();
            let r = if task.live_active() {
                task.live_round(&mut buf)
            } else {
                if let Some(f) = &mut self.files {
                    // A new migration: its target has been sent nothing.
                    f.sent.clear();
                }
                task.live_begin(&mut buf).map(|kind| {
                    tracing::debug!(task = %self.task, tracker = kind, "live migration: tracking written pages");
                })
            };
            let files = self.files_for_target();
            let _ = out.send(match (r, files) {
                (Ok(()), Ok(files)) => LiveOut::Round(buf, files),
                (Err(e), _) => {
                    task.live_end();
                    LiveOut::Failed(format!("capturing memory pages: {e}"))
                }
                (_, Err(e)) => {
                    task.live_end();
                    LiveOut::Failed(format!("capturing the task's files: {e}"))
                }
            });
            return false;
        }
        // The final step: everything not sent yet, then wait, paused, for
        // the coordinator to say where the task lives on. A cold move sends
        // all of memory now, in pieces, so that copying one overlaps
        // sending the one before.
        if !task.live_active() {
            if let Some(f) = &mut self.files {
                f.sent.clear();
            }
            if let Err(e) = task.live_track() {
                let _ = out.send(LiveOut::Failed(format!("capturing memory pages: {e}")));
                return false;
            }
            let pages = task.live_pages();
            let mut start = 0;
            while start < pages {
                let end = pages.min(start + FINAL_PIECE_PAGES);
                let mut buf = self.control.spare_buf_within(SPARE_WAIT);
                let sent = task
                    .live_copy(start..end, &mut buf)
                    .is_ok_and(|()| out.send(LiveOut::Piece(buf)).is_ok());
                if !sent {
                    // The sender gave up (and will not send the final
                    // state): carry on here.
                    task.live_end();
                    return false;
                }
                start = end;
            }
        }
        let next = wmig_proto::checkpoint::next_seq(*seq, self.epoch);
        let fin = task.live_final(
            CaptureMeta {
                task: Some(self.task),
                seq: next,
                epoch: self.epoch,
            },
            self.spare_buf(),
        );
        let mut fin = match fin {
            Ok(f) => f,
            Err(e) => {
                let _ = out.send(LiveOut::Failed(format!("capturing the final state: {e}")));
                return false;
            }
        };
        let files = match self.files_for_target() {
            Ok(f) => f,
            Err(e) => {
                let _ = out.send(LiveOut::Failed(format!("capturing the task's files: {e}")));
                return false;
            }
        };
        fin.manifest.files = files.trees.clone();
        *seq = next;
        let (tx, rx) = std::sync::mpsc::channel();
        *self
            .control
            .decision
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        if self.control.drop.load(Ordering::SeqCst) {
            return true;
        }
        if out
            .send(LiveOut::Final(Box::new(fin), paused_at_us, files))
            .is_err()
        {
            // The sender is gone before it had the final state: no one else
            // can hold it, so carry on here without waiting for a decision.
            self.control
                .decision
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return false;
        }
        drop(out);
        // Only the coordinator decides (through `Drop` or `Resume`); if it
        // is away, the task waits here, paused, until it is back.
        let carry_on = rx.recv().unwrap_or(false);
        if carry_on {
            tracing::info!(task = %self.task, "live migration abandoned; carrying on here");
        }
        !carry_on
    }

    fn checkpoint(
        &mut self,
        task: &mut Task,
        seq: u64,
        fuel: u64,
        handoff: Option<Handoff>,
    ) -> Result<(), CaptureError> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut sink = NewChunks {
            known: &known,
            new: Vec::new(),
            seen: HashSet::new(),
        };
        let mut captured = task.capture(
            &mut sink,
            CaptureMeta {
                task: Some(self.task),
                seq,
                epoch: self.epoch,
            },
        )?;
        if let Some(f) = &mut self.files {
            captured.manifest.files = f.scan(&mut sink)?;
            self.control.files_bytes.store(f.bytes(), Ordering::Relaxed);
        }
        let chunks = sink.new;
        drop(known);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + chunks.len() > CHUNK_CACHE_MAX {
                cache.clear();
            }
            for (h, b) in &chunks {
                cache.insert_shared(*h, b.clone());
            }
        }
        tracing::debug!(task = %self.task, seq, new_chunks = chunks.len(), ms = captured.millis, "captured");
        self.control.uploads_pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.uploads.send(Upload {
            task: self.task,
            epoch: self.epoch,
            manifest: captured.manifest,
            chunks,
            fuel_used: fuel,
            handoff,
            end: None,
            pending: self.control.uploads_pending.clone(),
        });
        Ok(())
    }
}

/// Why a checkpoint was not captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Host(#[from] wmig_host::HostError),
    #[error("{0}")]
    Files(#[from] wmig_host::files::FilesError),
}

impl Job {
    /// Scan the task's trees for a live-migration target.
    fn files_for_target(&mut self) -> Result<FileRound, wmig_host::files::FilesError> {
        let Some(f) = &mut self.files else {
            return Ok(FileRound::default());
        };
        let round = f.scan_for_target()?;
        self.control.files_bytes.store(f.bytes(), Ordering::Relaxed);
        Ok(round)
    }

    /// The task has ended: store its final tree in the registry (as a
    /// manifest marked `end`, never restored) so `wmig files` gets it,
    /// before the end is reported. Waits for the upload.
    fn store_final_files(&mut self, task: &mut Task, seq: u64) {
        if self.files.is_none() {
            return;
        }
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut sink = NewChunks {
            known: &known,
            new: Vec::new(),
            seen: HashSet::new(),
        };
        let trees = match self.files.as_mut().map(|f| f.scan(&mut sink)) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::warn!(task = %self.task, error = %e, "could not capture the task's final files");
                return;
            }
            None => return,
        };
        let chunks = sink.new;
        drop(known);
        let counters = task.counters();
        let module = task.module();
        let manifest = Manifest {
            module: module.module_hash,
            rewriter: module.rewriter,
            instrumented: module.instrumented_hash,
            task: Some(self.task),
            seq: wmig_proto::checkpoint::next_seq(seq, self.epoch),
            epoch: self.epoch,
            memories: Vec::new(),
            globals: Vec::new(),
            wasi: Default::default(),
            counters,
            files: trees,
            end: true,
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.control.uploads_pending.fetch_add(1, Ordering::SeqCst);
        let sent = self.uploads.send(Upload {
            task: self.task,
            epoch: self.epoch,
            manifest,
            chunks,
            fuel_used: counters.fuel,
            handoff: None,
            end: Some(done_tx),
            pending: self.control.uploads_pending.clone(),
        });
        if sent.is_ok() && done_rx.recv_timeout(FINAL_FILES_WAIT) != Ok(true) {
            tracing::warn!(task = %self.task, "the task's final files were not stored; `wmig files` shows its last checkpoint's");
        }
    }
}

/// How long a task's end waits for its final files to be stored.
const FINAL_FILES_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice that ran 2 s long ago: a 50 % throttle would sleep as long.
    fn long_slice() -> Instant {
        Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or_else(Instant::now)
    }

    #[test]
    fn an_unthrottled_task_never_sleeps_and_a_pause_ends_a_throttle_nap() {
        let control = TaskControl::default();
        let t = Instant::now();
        let mut began = long_slice();
        throttle(&control, &mut began);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "no throttle, no sleep"
        );

        control.throttle.store(50, Ordering::SeqCst);
        control.pause.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let mut began = long_slice();
        throttle(&control, &mut began);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a requested pause is not kept waiting by a 2 s throttle nap"
        );
        assert!(
            began.elapsed() < Duration::from_millis(500),
            "the next slice starts now"
        );
    }

    #[test]
    fn a_full_output_backlog_holds_the_task_until_half_has_left() {
        use crate::report::Backlog;
        let control = Arc::new(TaskControl::default());
        let backlog = Arc::new(Backlog::default());
        backlog.add(Backlog::MAX as usize + 1);
        let (c, b) = (control.clone(), backlog.clone());
        let waiter = std::thread::spawn(move || wait_for_backlog(&c, &b));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the task waits while the backlog is full"
        );
        // Delivered down to just over half: still waiting.
        backlog.sub(Backlog::MAX as usize / 2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        backlog.sub(2);
        waiter.join().expect("the wait ends below half");

        // A pause request ends the wait at once.
        backlog.add(Backlog::MAX as usize);
        control.pause.store(true, Ordering::SeqCst);
        wait_for_backlog(&control, &backlog);
    }
}
