//! Live migration, host side: the source hands out linear memory in rounds
//! of the pages written since the previous round while the task runs on; the
//! target writes them into an instance built ahead of the pause
//! ([`Incoming`]), so the pause only has to carry the last few pages, the
//! unwound stack, globals and WASI state.
//!
//! Pages travel at the host's 4 KiB grain ([`PAGE_SIZE`]): a guest that
//! writes scattered bytes dirties 16× less than with 64 KiB chunks. Which
//! pages were written comes from the page tables when the kernel can tell
//! (see [`crate::dirty`]), so a round costs the pages it sends, not a pass
//! over all of memory.

use std::sync::Arc;

use wasmtime::Memory;
use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::live::{PageDelta, PageRun, PAGE_SIZE};
use wmig_wasi::{WasiConfig, WasiCtx};

use crate::dirty::DirtyTracker;
use crate::engine::{PreparedModule, Runtime};
use crate::snapshot::{check_module, stack_used, CaptureMeta};
use crate::task::{split, Task, TaskConfig};
use crate::HostError;

/// One round's pages: the delta (runs) and the bytes of its non-zero runs.
#[derive(Debug, Default)]
pub struct PageBuf {
    pub delta: PageDelta,
    pub bytes: Vec<u8>,
}

impl PageBuf {
    /// Pages in this round (zero runs included).
    pub fn pages(&self) -> u64 {
        self.delta.runs.iter().map(|r| u64::from(r.count)).sum()
    }

    /// Fill from `pages` (ascending indices) of `memory`: neighbours merge
    /// into runs, all-zero pages travel as zero runs without bytes.
    fn fill(&mut self, memory: &[u8], pages: impl ExactSizeIterator<Item = u32>) {
        self.delta.memory_len = memory.len() as u64;
        self.delta.runs.clear();
        self.bytes.clear();
        // One allocation, not a doubling series of copies (a round can be
        // all of memory).
        self.bytes.reserve(pages.len() * PAGE_SIZE);
        for p in pages {
            let at = p as usize * PAGE_SIZE;
            let Some(page) = memory.get(at..at + PAGE_SIZE) else {
                continue;
            };
            let zero = is_zero(page);
            match self.delta.runs.last_mut() {
                Some(r) if r.zero == zero && r.first + r.count == p => r.count += 1,
                _ => self.delta.runs.push(PageRun {
                    first: p,
                    count: 1,
                    zero,
                }),
            }
            if !zero {
                self.bytes.extend_from_slice(page);
            }
        }
    }
}

fn is_zero(page: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: any byte pattern is a valid u64.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// The last of a task on the source: everything the target still lacks.
#[derive(Debug)]
pub struct LiveFinal {
    /// Globals, WASI state, counters; no memory images.
    pub manifest: Manifest,
    pub memory: PageBuf,
    pub stack: PageBuf,
}

/// Dirty tracking of a task that is migrating out.
pub(crate) struct LiveSource {
    tracker: DirtyTracker,
    scratch: Vec<u32>,
}

impl Task {
    /// Start a live migration at a pause: from now on writes to linear
    /// memory are tracked; `out` gets every page (round 0). Returns the
    /// tracking method (`pagemap` or `compare`).
    pub fn live_begin(&mut self, out: &mut PageBuf) -> Result<&'static str, HostError> {
        let kind = self.live_track()?;
        self.live_copy(0..self.live_pages(), out)?;
        Ok(kind)
    }

    /// Start a live migration at a pause without copying anything yet (a
    /// cold move sends memory in pieces with [`Task::live_copy`]).
    pub fn live_track(&mut self) -> Result<&'static str, HostError> {
        if !self.is_paused() {
            return Err(HostError::NotPaused);
        }
        let tracker = DirtyTracker::start(self.memory.data(&self.store));
        let kind = tracker.kind();
        self.live = Some(LiveSource {
            tracker,
            scratch: Vec::new(),
        });
        Ok(kind)
    }

    /// 4 KiB pages of linear memory now.
    pub fn live_pages(&self) -> u32 {
        (self.memory.data_size(&self.store) / PAGE_SIZE) as u32
    }

    /// Copy `pages` of linear memory (whatever their state) into `out`.
    pub fn live_copy(
        &mut self,
        pages: std::ops::Range<u32>,
        out: &mut PageBuf,
    ) -> Result<(), HostError> {
        if !self.is_paused() {
            return Err(HostError::NotPaused);
        }
        let data = self.memory.data(&self.store);
        let end = pages.end.min((data.len() / PAGE_SIZE) as u32);
        out.fill(data, pages.start.min(end)..end);
        Ok(())
    }

    /// At a later pause: the pages written since the previous round.
    pub fn live_round(&mut self, out: &mut PageBuf) -> Result<(), HostError> {
        if !self.is_paused() {
            return Err(HostError::NotPaused);
        }
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| HostError::Engine("no live migration in progress".into()))?;
        let data = self.memory.data(&self.store);
        live.tracker
            .take(data, &mut live.scratch)
            .map_err(|e| HostError::Engine(format!("tracking written pages: {e}")))?;
        out.fill(data, live.scratch.iter().copied());
        Ok(())
    }

    /// At the final pause: the pages written since the last round (into
    /// `memory`, a buffer to reuse; all of memory if no migration was
    /// started), the saved frames and the rest of the state. Tracking ends;
    /// the task stays paused and intact (it carries on here if the move
    /// fails).
    pub fn live_final(
        &mut self,
        meta: CaptureMeta,
        mut memory: PageBuf,
    ) -> Result<LiveFinal, HostError> {
        if !self.is_paused() {
            return Err(HostError::NotPaused);
        }
        if self.live.is_some() {
            self.live_round(&mut memory)?;
            self.live = None;
        } else {
            let data = self.memory.data(&self.store);
            memory.fill(data, 0..(data.len() / PAGE_SIZE) as u32);
        }
        let hooks = self.hooks()?;
        let mut stack = PageBuf::default();
        let data = hooks.stack.data(&self.store);
        let used = stack_used(data).div_ceil(PAGE_SIZE) as u32;
        stack.fill(data, 0..used);
        let manifest = self.state_manifest(meta, Vec::new())?;
        Ok(LiveFinal {
            manifest,
            memory,
            stack,
        })
    }

    /// Whether a live migration out is tracking this task's writes.
    pub fn live_active(&self) -> bool {
        self.live.is_some()
    }

    /// Stop tracking (the migration was abandoned).
    pub fn live_end(&mut self) {
        self.live = None;
    }
}

/// A task arriving by live migration: an instance of its module whose
/// memory fills as pages arrive, before the source has even paused.
pub struct Incoming {
    task: Task,
    /// Bytes of memory the fresh instance started with: its data segments
    /// live there, so zero pages in that range must really be zeroed.
    fresh_len: usize,
}

impl Incoming {
    /// Instantiate `module` to receive a task. `config.wasi` is not used:
    /// the WASI state arrives with the final message ([`Incoming::finish`]).
    pub fn new(
        rt: &Runtime,
        module: &Arc<PreparedModule>,
        config: TaskConfig,
    ) -> Result<Incoming, HostError> {
        let (_, control) = split(config);
        // Never run: replaced by the task's own context before the first instruction.
        let placeholder = WasiCtx::new(WasiConfig {
            args: Vec::new(),
            env: Vec::new(),
            preopens: Vec::new(),
            stdin: wmig_wasi::Stdin::empty(),
            stdout: Box::new(wmig_wasi::BufferSink::default()),
            stderr: Box::new(wmig_wasi::BufferSink::default()),
        })?;
        let task = Task::instantiate(rt, module, placeholder, control)?;
        let fresh_len = task.memory.data_size(&task.store);
        Ok(Incoming { task, fresh_len })
    }

    /// Write one round of linear-memory pages.
    /// Grow memory to the source's `memory_len` and fault it all in now,
    /// before the pause, so that applying pages during the pause writes to
    /// memory that is already there (a cold move of 64 MiB would otherwise
    /// take 16,384 page faults in its downtime). Bounded by the task's
    /// memory limit; a failure to prefault only costs speed.
    pub fn prefault(&mut self, memory_len: u64) -> Result<(), HostError> {
        let limit = self
            .task
            .memory_limit
            .map_or(u64::MAX, |l| l as u64)
            .min(1 << 32);
        let memory = self.task.memory;
        let have = memory.data_size(&self.task.store) as u64;
        let want = memory_len.min(limit);
        if want > have {
            let grow = (want - have).div_ceil(64 * 1024);
            memory
                .grow(&mut self.task.store, grow)
                .map_err(|e| HostError::Engine(format!("growing memory to {want} bytes: {e:#}")))?;
        }
        let data = memory.data_mut(&mut self.task.store);
        populate_write(data);
        Ok(())
    }

    pub fn apply(&mut self, delta: &PageDelta, bytes: &[u8]) -> Result<(), HostError> {
        let memory = self.task.memory;
        write_pages(&mut self.task, memory, self.fresh_len, delta, bytes)
    }

    /// Apply the final state: the last pages, the saved frames, globals and
    /// WASI (rebuilt from the snapshot with `wasi`'s sinks and preopens).
    /// The task is then ready to [`Task::run`] from where the source paused.
    pub fn finish(
        mut self,
        wasi: WasiConfig,
        manifest: &Manifest,
        memory: (&PageDelta, &[u8]),
        stack: (&PageDelta, &[u8]),
    ) -> Result<Task, HostError> {
        check_module(&self.task.module, manifest)?;
        self.apply(memory.0, memory.1)?;
        let hooks = self.task.hooks()?;
        let stack_fresh = hooks.stack.data_size(&self.task.store);
        write_pages(&mut self.task, hooks.stack, stack_fresh, stack.0, stack.1)?;
        let mut ctx = WasiCtx::restore(wasi, &manifest.wasi)?;
        let flag = self.task.store.data().ctl.pause_flag.clone();
        crate::task::arm_blocking_pauses(&mut ctx, self.task.module.rewriter, &flag);
        self.task.store.data_mut().wasi = ctx;
        self.task.apply_state(manifest)?;
        Ok(self.task)
    }
}

/// Fault `data` in writable without changing it: one `MADV_POPULATE_WRITE`
/// (Linux ≥ 5.14), else a write of each page's first byte as it is.
fn populate_write(data: &mut [u8]) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    if data.is_empty() {
        return;
    }
    // SAFETY: the range is this memory's mapping, borrowed mutably; the
    // advice only faults pages in and never changes their contents.
    let r = unsafe { libc::madvise(data.as_mut_ptr().cast(), data.len(), MADV_POPULATE_WRITE) };
    if r != 0 {
        for page in data.chunks_mut(PAGE_SIZE) {
            // A volatile write of the byte that is there: the fault happens,
            // the contents stay.
            let p = page.as_mut_ptr();
            // SAFETY: `p` points into `page`, valid for reads and writes.
            unsafe { p.write_volatile(p.read_volatile()) };
        }
    }
}

/// Write `delta` into `memory`, growing it first if the source's grew.
fn write_pages(
    task: &mut Task,
    memory: Memory,
    fresh_len: usize,
    delta: &PageDelta,
    bytes: &[u8],
) -> Result<(), HostError> {
    let limit = task
        .memory_limit
        .map_or(u64::MAX, |l| l as u64)
        .min(1 << 32);
    delta.validate(limit).map_err(HostError::corrupt)?;
    if delta.payload_len() != bytes.len() as u64 {
        return Err(HostError::corrupt(format!(
            "page delta announces {} bytes but carries {}",
            delta.payload_len(),
            bytes.len()
        )));
    }
    let have = memory.data_size(&task.store) as u64;
    if delta.memory_len > have {
        let wasm_page = 64 * 1024;
        let grow = (delta.memory_len - have).div_ceil(wasm_page);
        memory.grow(&mut task.store, grow).map_err(|e| {
            HostError::Engine(format!(
                "growing memory to {} bytes: {e:#}",
                delta.memory_len
            ))
        })?;
    }
    let data = memory.data_mut(&mut task.store);
    let mut at = 0usize;
    for r in &delta.runs {
        let start = r.first as usize * PAGE_SIZE;
        let len = r.count as usize * PAGE_SIZE;
        let dst = &mut data[start..start + len];
        if r.zero {
            // Pages the fresh instance never wrote are zero already; testing
            // first keeps untouched pages unfaulted.
            for (i, page) in dst.chunks_exact_mut(PAGE_SIZE).enumerate() {
                if start + i * PAGE_SIZE < fresh_len || !is_zero(page) {
                    page.fill(0);
                }
            }
        } else {
            dst.copy_from_slice(&bytes[at..at + len]);
            at += len;
        }
    }
    Ok(())
}
