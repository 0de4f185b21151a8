//! A running task: one wasmtime `Store` + `Instance` of an instrumented
//! module, the yield import that pauses it, and the run loop.
//!
//! Pausing is cooperative and exact. When fuel runs out the guest calls
//! `wmig.yield_point`; if the host wants to pause, it starts an Asyncify
//! unwind from inside that call, every frame saves itself into `wmig:stack`
//! and `_start` returns. The instance is now quiescent: memory + globals +
//! WASI state are the whole task. To continue (in this store or a brand-new
//! one) the host starts a rewind and calls `_start` again; the frames rebuild
//! themselves, the yield import sees the rewind, stops it, and returns into
//! the code that called it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::{
    Caller, Global, Instance, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc,
    Val,
};
use wmig_proto::checkpoint::Counters;
use wmig_rewrite::{
    FUEL_EXPORT, GLOBAL_EXPORT_PREFIX, HOST_MODULE, STACK_HEADER_OFFSET, STACK_MEMORY_EXPORT,
    STACK_PAGES, TICK_IMPORT, YIELD_IMPORT,
};
use wmig_wasi::{I32Exit, WasiConfig, WasiCtx};

use crate::engine::{PreparedModule, Runtime};
use crate::HostError;

/// Default fuel between host-visible yields: a few milliseconds of guest work
/// (one unit = one loop iteration or recursive call passed).
pub const DEFAULT_YIELD_FUEL: u32 = 1_000_000;

/// Why a task stopped at a yield point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// The task's [`PausePolicy`] asked for it (e.g. every N-th yield).
    Policy,
    /// Someone set the pause flag (a migration, a checkpoint request).
    Requested,
    /// The guest called the SDK's `checkpoint_now`.
    GuestCheckpoint,
}

/// How a call to [`Task::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped at a yield point; [`Task::capture`] and [`Task::run`] are valid.
    Paused(PauseReason),
    /// The guest finished with this exit code (`_start` returned → 0).
    Exited(i32),
}

/// Decides, at each host-visible yield, whether to pause there.
pub type PausePolicy = Box<dyn FnMut(u64) -> bool + Send>;

/// Per-task settings.
pub struct TaskConfig {
    pub wasi: WasiConfig,
    /// Fuel between host-visible yields.
    pub yield_fuel: u32,
    /// Stop the task once it has used this much fuel.
    pub fuel_limit: Option<u64>,
    /// Largest size any memory of the task may grow to, in bytes.
    pub memory_limit: Option<usize>,
    /// Called with the yield count at every host-visible yield.
    pub policy: Option<PausePolicy>,
    /// Set from anywhere to pause the task at its next yield point.
    pub pause_flag: Arc<AtomicBool>,
    /// Pause when the guest asks for a checkpoint (SDK `checkpoint_now`).
    pub honor_guest_checkpoints: bool,
    /// Published at every yield point, for whoever watches the task.
    pub usage: Option<Arc<LiveUsage>>,
}

/// What a running task has used so far, readable from any thread while the
/// guest runs. Updated at yield points (a few relaxed stores per slice), so
/// it lags the guest by at most one slice.
#[derive(Debug, Default)]
pub struct LiveUsage {
    fuel: AtomicU64,
    memory_bytes: AtomicU64,
    /// `done + 1`, so that 0 means "never reported".
    progress_done: AtomicU64,
    progress_total: AtomicU64,
}

/// A reading of [`LiveUsage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageReading {
    pub fuel: u64,
    pub memory_bytes: u64,
    /// What the guest last reported through the SDK's `progress(done, total)`.
    pub progress: Option<(u64, u64)>,
}

impl LiveUsage {
    pub fn read(&self) -> UsageReading {
        let done = self.progress_done.load(Ordering::Relaxed);
        UsageReading {
            fuel: self.fuel.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            progress: done
                .checked_sub(1)
                .map(|d| (d, self.progress_total.load(Ordering::Relaxed))),
        }
    }

    fn set_progress(&self, done: u64, total: u64) {
        self.progress_total.store(total, Ordering::Relaxed);
        self.progress_done
            .store(done.saturating_add(1), Ordering::Relaxed);
    }
}

impl TaskConfig {
    pub fn new(wasi: WasiConfig) -> Self {
        TaskConfig {
            wasi,
            yield_fuel: DEFAULT_YIELD_FUEL,
            fuel_limit: None,
            memory_limit: None,
            policy: None,
            pause_flag: Arc::new(AtomicBool::new(false)),
            honor_guest_checkpoints: false,
            usage: None,
        }
    }
}

/// Handles into the instance that the yield import needs.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub fuel: Global,
    pub stack: Memory,
    /// The guest's own linear memory (`memory`), for [`LiveUsage`].
    pub memory: Memory,
    pub start_unwind: TypedFunc<i32, ()>,
    pub stop_unwind: TypedFunc<(), ()>,
    pub start_rewind: TypedFunc<i32, ()>,
    pub stop_rewind: TypedFunc<(), ()>,
}

/// Host-side state of one task (the `Store`'s data).
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    limits: StoreLimits,
    pub(crate) ctl: Control,
}

pub(crate) struct Control {
    pub yield_fuel: u32,
    pub fuel_limit: Option<u64>,
    /// Value written into the fuel global at the last refill.
    pub fuel_set: i32,
    pub counters: Counters,
    pub rewinding: bool,
    pub unwinding: bool,
    pub pause_reason: Option<PauseReason>,
    pub policy: Option<PausePolicy>,
    pub pause_flag: Arc<AtomicBool>,
    pub honor_guest_checkpoints: bool,
    pub progress: Option<(u64, u64)>,
    pub fuel_exhausted: bool,
    pub hooks: Option<Hooks>,
    pub usage: Option<Arc<LiveUsage>>,
}

/// Run a WASI call the rewrite can unwind from: resuming into it ends the
/// rewind first; a pause that ended its wait unwinds from inside it (the
/// call left its input such that running it again continues the wait).
fn blocking_call(
    caller: &mut Caller<'_, HostState>,
    call: impl FnOnce(&mut Caller<'_, HostState>) -> wasmtime::Result<i32>,
) -> wasmtime::Result<i32> {
    if caller.data().ctl.rewinding {
        // Resuming into the call: the frames are rebuilt up to here.
        let hooks = caller.data().ctl.hooks.clone();
        if let Some(hooks) = hooks {
            caller.data_mut().ctl.rewinding = false;
            hooks.stop_rewind.call(&mut *caller, ())?;
        }
    }
    let r = call(caller)?;
    if caller.data_mut().wasi.take_paused_in_call() {
        caller.data().ctl.pause_flag.store(false, Ordering::SeqCst);
        begin_unwind(caller, PauseReason::Requested)?;
    }
    Ok(r)
}

/// Let a requested pause end the blocking calls `rewriter` can unwind from.
pub(crate) fn arm_blocking_pauses(wasi: &mut WasiCtx, rewriter: u32, flag: &Arc<AtomicBool>) {
    if rewriter >= wmig_rewrite::SLEEP_PAUSES_SINCE {
        wasi.interrupt().arm_pause(flag.clone());
    }
    if rewriter >= wmig_rewrite::READ_PAUSES_SINCE {
        wasi.allow_read_pauses();
    }
}

/// Host functions under `wmig.*`: the injected yield point and the guest SDK.
pub(crate) fn add_host_functions(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wmig_wasi::add_to_linker(linker, |s: &mut HostState| &mut s.wasi)?;
    // Rewriter 3 makes `poll_oneoff` a pause point: a task asleep in it can
    // be paused, checkpointed and moved, and sleeps on for the time left.
    // Rewriter 4 adds `fd_read`: a task waiting for stdin input can move too.
    linker.allow_shadowing(true);
    linker.func_wrap(
        wmig_rewrite::WASI_MODULE,
        wmig_rewrite::SLEEP_IMPORT,
        |mut caller: Caller<'_, HostState>,
         subs: u32,
         events: u32,
         n: u32,
         out: u32|
         -> wasmtime::Result<i32> {
            blocking_call(&mut caller, |c| {
                wmig_wasi::poll_oneoff(c, |s| &mut s.wasi, subs, events, n, out)
            })
        },
    )?;
    linker.func_wrap(
        wmig_rewrite::WASI_MODULE,
        wmig_rewrite::READ_IMPORT,
        |mut caller: Caller<'_, HostState>,
         fd: u32,
         iovs: u32,
         n: u32,
         out: u32|
         -> wasmtime::Result<i32> {
            blocking_call(&mut caller, |c| {
                wmig_wasi::fd_read(c, |s| &mut s.wasi, fd, iovs, n, out)
            })
        },
    )?;
    linker.allow_shadowing(false);
    linker.func_wrap(
        HOST_MODULE,
        YIELD_IMPORT,
        |caller: Caller<'_, HostState>| on_yield(caller, YieldKind::Fuel),
    )?;
    linker.func_wrap(HOST_MODULE, TICK_IMPORT, |caller: Caller<'_, HostState>| {
        on_yield(caller, YieldKind::Tick)
    })?;
    linker.func_wrap(HOST_MODULE, "yield_now", |caller: Caller<'_, HostState>| {
        on_yield(caller, YieldKind::Voluntary)
    })?;
    linker.func_wrap(
        HOST_MODULE,
        "checkpoint_now",
        |caller: Caller<'_, HostState>| on_yield(caller, YieldKind::Checkpoint),
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "progress",
        |mut caller: Caller<'_, HostState>, done: i64, total: i64| {
            let (done, total) = (done.max(0) as u64, total.max(0) as u64);
            let ctl = &mut caller.data_mut().ctl;
            ctl.progress = Some((done, total));
            if let Some(u) = &ctl.usage {
                u.set_progress(done, total);
            }
        },
    )?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum YieldKind {
    Fuel,
    /// Fuel ran out in a loop-only leaf function, which Asyncify does not
    /// instrument: account and enforce limits, but a pause waits for the
    /// next real yield point (the leaf returns first).
    Tick,
    Voluntary,
    Checkpoint,
}

/// Raised out of the guest when the task's fuel limit is reached.
#[derive(Debug)]
pub(crate) struct FuelExhausted(pub u64);

impl std::fmt::Display for FuelExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task used its whole fuel limit of {}", self.0)
    }
}
impl std::error::Error for FuelExhausted {}

fn on_yield(mut caller: Caller<'_, HostState>, kind: YieldKind) -> wasmtime::Result<()> {
    let Some(hooks) = caller.data().ctl.hooks.clone() else {
        return Err(wasmtime::Error::msg(
            "yield point reached before the task was set up",
        ));
    };
    if caller.data().wasi.is_interrupted() {
        // Cancelled or fenced: stop here even where no pause is possible (a
        // tick inside a loop-only leaf), so that a spinning leaf is no
        // reason for a cancelled task to keep its thread.
        return Err(wasmtime::Error::new(wmig_wasi::Interrupted));
    }
    if caller.data().ctl.rewinding {
        // Resuming: the frames are rebuilt up to this call; finish the rewind
        // and return into the guest as if the pause never happened.
        caller.data_mut().ctl.rewinding = false;
        return hooks.stop_rewind.call(&mut caller, ());
    }
    if matches!(kind, YieldKind::Fuel | YieldKind::Tick) {
        let left = hooks.fuel.get(&mut caller).i32().unwrap_or(0);
        let ctl = &mut caller.data_mut().ctl;
        ctl.counters.fuel += u64::try_from(i64::from(ctl.fuel_set) - i64::from(left)).unwrap_or(0);
        let mut refill = ctl.yield_fuel;
        if let Some(limit) = ctl.fuel_limit {
            let remaining = limit.saturating_sub(ctl.counters.fuel);
            if remaining == 0 {
                ctl.fuel_exhausted = true;
                return Err(wasmtime::Error::new(FuelExhausted(limit)));
            }
            refill = refill.min(u32::try_from(remaining).unwrap_or(u32::MAX));
        }
        let refill = i32::try_from(refill).unwrap_or(i32::MAX);
        ctl.fuel_set = refill;
        hooks.fuel.set(&mut caller, Val::I32(refill))?;
    }
    // Every yield passes here: borrow the usage cell rather than clone its Arc.
    if let Some(u) = &caller.data().ctl.usage {
        u.fuel
            .store(caller.data().ctl.counters.fuel, Ordering::Relaxed);
        let bytes = hooks.memory.data_size(&caller) as u64;
        u.memory_bytes.store(bytes, Ordering::Relaxed);
    }
    if kind == YieldKind::Tick {
        return Ok(());
    }
    let ctl = &mut caller.data_mut().ctl;
    ctl.counters.yields += 1;
    let yields = ctl.counters.yields;
    let reason = if kind == YieldKind::Checkpoint && ctl.honor_guest_checkpoints {
        Some(PauseReason::GuestCheckpoint)
    } else if ctl.pause_flag.swap(false, Ordering::AcqRel) {
        Some(PauseReason::Requested)
    } else if ctl.policy.as_mut().is_some_and(|p| p(yields)) {
        Some(PauseReason::Policy)
    } else {
        None
    };
    if let Some(reason) = reason {
        begin_unwind(&mut caller, reason)?;
    }
    Ok(())
}

/// Start unwinding from inside the current import call: every frame saves
/// itself into `wmig:stack` as the call returns, and `_start` returns.
fn begin_unwind(caller: &mut Caller<'_, HostState>, reason: PauseReason) -> wasmtime::Result<()> {
    let Some(hooks) = caller.data().ctl.hooks.clone() else {
        return Err(wasmtime::Error::msg(
            "pause requested before the task was set up",
        ));
    };
    let ctl = &mut caller.data_mut().ctl;
    ctl.pause_reason = Some(reason);
    ctl.unwinding = true;
    // The unwind buffer's header: where the saved frames go, and where they must end.
    let header = STACK_HEADER_OFFSET as usize;
    let start = STACK_HEADER_OFFSET + 8;
    let end = STACK_PAGES * 65536;
    let mem = hooks.stack.data_mut(&mut *caller);
    mem[header..header + 4].copy_from_slice(&start.to_le_bytes());
    mem[header + 4..header + 8].copy_from_slice(&end.to_le_bytes());
    hooks
        .start_unwind
        .call(&mut *caller, STACK_HEADER_OFFSET as i32)
}

/// Requests a pause of a running task (see [`Task::pauser`]).
#[derive(Clone)]
pub struct Pauser {
    flag: Arc<AtomicBool>,
    interrupt: Arc<wmig_wasi::Interrupt>,
}

impl Pauser {
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.interrupt.notify();
    }
}

/// One live task.
pub struct Task {
    pub(crate) store: Store<HostState>,
    pub(crate) module: Arc<PreparedModule>,
    start: TypedFunc<(), ()>,
    pub(crate) memory: Memory,
    pub(crate) globals: Vec<(String, Global)>,
    instance: Instance,
    pub(crate) memory_limit: Option<usize>,
    /// Dirty-page tracking while the task migrates out live.
    pub(crate) live: Option<crate::live::LiveSource>,
    /// Rewriter 3: the rewind module is instantiated in this store.
    rewind_linked: bool,
    /// The next `run` must rewind saved frames instead of starting afresh.
    resume_pending: bool,
    finished: bool,
}

impl Task {
    /// Instantiate `module` fresh, ready to run from `_start`.
    pub fn start(
        rt: &Runtime,
        module: &Arc<PreparedModule>,
        config: TaskConfig,
    ) -> Result<Task, HostError> {
        let (wasi, rest) = split(config);
        let wasi = WasiCtx::new(wasi)?;
        let mut task = Task::instantiate(rt, module, wasi, rest)?;
        task.publish_usage();
        Ok(task)
    }

    pub(crate) fn instantiate(
        rt: &Runtime,
        module: &Arc<PreparedModule>,
        mut wasi: WasiCtx,
        cfg: ControlConfig,
    ) -> Result<Task, HostError> {
        let mut limits = StoreLimitsBuilder::new();
        let memory_limit = cfg.memory_limit;
        if let Some(bytes) = cfg.memory_limit {
            limits = limits.memory_size(bytes).trap_on_grow_failure(true);
        }
        arm_blocking_pauses(&mut wasi, module.rewriter, &cfg.pause_flag);
        let state = HostState {
            wasi,
            limits: limits.build(),
            ctl: Control {
                yield_fuel: cfg.yield_fuel.max(1),
                fuel_limit: cfg.fuel_limit,
                fuel_set: 0,
                counters: Counters::default(),
                rewinding: false,
                unwinding: false,
                pause_reason: None,
                policy: cfg.policy,
                pause_flag: cfg.pause_flag,
                honor_guest_checkpoints: cfg.honor_guest_checkpoints,
                progress: None,
                fuel_exhausted: false,
                hooks: None,
                usage: cfg.usage,
            },
        };
        let mut store = Store::new(rt.engine(), state);
        store.limiter(|s| &mut s.limits);
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Engine(format!("instantiating the module failed: {e:#}")))?;
        let missing = |what: &str| HostError::Engine(format!("instrumented module lacks `{what}`"));
        let hooks = Hooks {
            fuel: instance
                .get_global(&mut store, FUEL_EXPORT)
                .ok_or_else(|| missing(FUEL_EXPORT))?,
            stack: instance
                .get_memory(&mut store, STACK_MEMORY_EXPORT)
                .ok_or_else(|| missing(STACK_MEMORY_EXPORT))?,
            memory: instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| missing("memory"))?,
            start_unwind: export_func(&instance, &mut store, "asyncify_start_unwind")?,
            stop_unwind: export_func(&instance, &mut store, "asyncify_stop_unwind")?,
            start_rewind: export_func(&instance, &mut store, "asyncify_start_rewind")?,
            stop_rewind: export_func(&instance, &mut store, "asyncify_stop_rewind")?,
        };
        let start = export_func(&instance, &mut store, "_start")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| missing("memory"))?;
        let mut globals: Vec<(String, Global)> = instance
            .exports(&mut store)
            .filter(|e| e.name().starts_with(GLOBAL_EXPORT_PREFIX))
            .filter_map(|e| {
                let name = e.name().to_string();
                e.into_global().map(|g| (name, g))
            })
            .collect();
        globals.sort_by(|a, b| a.0.cmp(&b.0));

        let fuel = i32::try_from(store.data().ctl.yield_fuel).unwrap_or(i32::MAX);
        let fuel = match store.data().ctl.fuel_limit {
            Some(limit) => fuel.min(i32::try_from(limit.max(1)).unwrap_or(i32::MAX)),
            None => fuel,
        };
        hooks
            .fuel
            .set(&mut store, Val::I32(fuel))
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        store.data_mut().ctl.fuel_set = fuel;
        store.data_mut().ctl.hooks = Some(hooks);
        Ok(Task {
            store,
            module: module.clone(),
            start,
            memory,
            globals,
            instance,
            memory_limit,
            live: None,
            rewind_linked: false,
            resume_pending: false,
            finished: false,
        })
    }

    /// Run until the guest exits or pauses at a yield point.
    pub fn run(&mut self) -> Result<Outcome, HostError> {
        if self.finished {
            return Err(HostError::Finished);
        }
        if self.resume_pending {
            self.link_rewind()?;
            let hooks = self.hooks()?;
            self.store.data_mut().ctl.rewinding = true;
            hooks
                .start_rewind
                .call(&mut self.store, STACK_HEADER_OFFSET as i32)
                .map_err(|e| self.trap(e))?;
            self.resume_pending = false;
        }
        let result = self.start.call(&mut self.store, ());
        match result {
            Ok(()) if self.store.data().ctl.unwinding => {
                let hooks = self.hooks()?;
                hooks
                    .stop_unwind
                    .call(&mut self.store, ())
                    .map_err(|e| self.trap(e))?;
                let ctl = &mut self.store.data_mut().ctl;
                ctl.unwinding = false;
                let reason = ctl.pause_reason.take().unwrap_or(PauseReason::Requested);
                self.resume_pending = true;
                Ok(Outcome::Paused(reason))
            }
            Ok(()) => {
                self.finished = true;
                Ok(Outcome::Exited(0))
            }
            Err(e) => {
                self.finished = true;
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    return Ok(Outcome::Exited(exit.0));
                }
                Err(self.trap(e))
            }
        }
    }

    /// Instantiate the rewind bodies beside the task's instance (rewriter 3
    /// keeps them in a module of their own, compiled on first use): their
    /// element segment fills the table the main module rewinds through.
    fn link_rewind(&mut self) -> Result<(), HostError> {
        if self.rewind_linked {
            return Ok(());
        }
        let Some(rw) = self.module.rewind.clone() else {
            return Ok(());
        };
        let module = rw.module()?;
        let engine = self.store.engine().clone();
        let mut linker: wasmtime::Linker<HostState> = wasmtime::Linker::new(&engine);
        let err = |e: wasmtime::Error| {
            HostError::Engine(format!("linking the module's rewind bodies failed: {e:#}"))
        };
        linker
            .instance(
                &mut self.store,
                wmig_rewrite::split::MAIN_IMPORT_MODULE,
                self.instance,
            )
            .map_err(err)?;
        linker.instantiate(&mut self.store, module).map_err(err)?;
        self.rewind_linked = true;
        Ok(())
    }

    fn trap(&mut self, e: wasmtime::Error) -> HostError {
        self.finished = true;
        if let Some(f) = e.downcast_ref::<FuelExhausted>() {
            return HostError::FuelExhausted { limit: f.0 };
        }
        if let Some(limit) = self.memory_limit {
            // wasmtime's words for a `memory.grow` the store limiter refused.
            if format!("{e:#}").contains("forcing trap when growing memory") {
                return HostError::Trap(format!(
                    "out of memory: the task needed more than its {} MiB memory limit \
                     (raise it with --max-memory-size)\n\n{e:?}",
                    limit >> 20
                ));
            }
        }
        HostError::Trap(format!("{}\n\n{e:?}", trap_headline(&e)))
    }

    pub(crate) fn hooks(&self) -> Result<Hooks, HostError> {
        self.store
            .data()
            .ctl
            .hooks
            .clone()
            .ok_or_else(|| HostError::Engine("task hooks missing".into()))
    }

    /// True after a pause until the next `run`.
    pub fn is_paused(&self) -> bool {
        self.resume_pending && !self.finished
    }

    pub(crate) fn set_resume_pending(&mut self) {
        self.resume_pending = true;
    }

    /// Yields and fuel so far (fuel includes the part of the current slice used).
    pub fn counters(&mut self) -> Counters {
        let mut c = self.store.data().ctl.counters;
        if let Some(h) = self.store.data().ctl.hooks.clone() {
            let left = h.fuel.get(&mut self.store).i32().unwrap_or(0);
            let set = self.store.data().ctl.fuel_set;
            c.fuel += u64::try_from(i64::from(set) - i64::from(left)).unwrap_or(0);
        }
        c
    }

    pub fn progress(&self) -> Option<(u64, u64)> {
        self.store.data().ctl.progress
    }

    pub fn module(&self) -> &Arc<PreparedModule> {
        &self.module
    }

    pub fn wasi(&self) -> &WasiCtx {
        &self.store.data().wasi
    }

    /// Refresh [`LiveUsage`] outside a yield point (after a restore, so
    /// watchers see the restored task's size before its first slice ends).
    pub(crate) fn publish_usage(&mut self) {
        let bytes = self.memory_bytes() as u64;
        let fuel = self.counters().fuel;
        if let Some(u) = &self.store.data().ctl.usage {
            u.memory_bytes.store(bytes, Ordering::Relaxed);
            u.fuel.store(fuel, Ordering::Relaxed);
        }
    }

    /// Pages of the guest's memory currently in use.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// The flag that pauses this task at its next yield point.
    pub fn pause_flag(&self) -> Arc<AtomicBool> {
        self.store.data().ctl.pause_flag.clone()
    }

    /// A handle that pauses this task from another thread: at its next
    /// yield point, or at once if it is asleep in `poll_oneoff` (rewriter 3).
    pub fn pauser(&self) -> Pauser {
        Pauser {
            flag: self.pause_flag(),
            interrupt: self.interrupt(),
        }
    }

    /// Bytes the guest has read from stdin so far (across restores).
    pub fn stdin_offset(&self) -> u64 {
        self.store.data().wasi.stdin_offset()
    }

    /// The handle that stops this task for good, even inside a blocking WASI
    /// call (a sleep ends at once; the run returns an error). For
    /// cancellation and fencing: the task cannot continue afterwards.
    pub fn interrupt(&self) -> Arc<wmig_wasi::Interrupt> {
        self.store.data().wasi.interrupt()
    }
}

/// One readable line for a trap: what happened and in which guest
/// function (the innermost with a name); wasmtime's full report follows it.
fn trap_headline(e: &wasmtime::Error) -> String {
    let kind = e.downcast_ref::<wasmtime::Trap>().map(|t| {
        let t = t.to_string();
        t.strip_prefix("wasm trap: ")
            .map_or(t.clone(), str::to_owned)
    });
    let func = e.downcast_ref::<wasmtime::WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .find_map(|f| f.func_name().map(str::to_owned))
    });
    match (kind, func) {
        (Some(k), Some(f)) => format!("the task trapped: {k} (in `{f}`)"),
        (Some(k), None) => format!("the task trapped: {k}"),
        (None, _) => format!(
            "the task failed: {}",
            format!("{e:#}")
                .lines()
                .next()
                .unwrap_or("an error without a message")
        ),
    }
}

fn export_func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<TypedFunc<P, R>, HostError> {
    instance
        .get_typed_func(&mut *store, name)
        .map_err(|e| HostError::Engine(format!("instrumented module export `{name}`: {e:#}")))
}

/// The non-WASI part of a [`TaskConfig`].
pub(crate) struct ControlConfig {
    pub yield_fuel: u32,
    pub fuel_limit: Option<u64>,
    pub memory_limit: Option<usize>,
    pub policy: Option<PausePolicy>,
    pub pause_flag: Arc<AtomicBool>,
    pub honor_guest_checkpoints: bool,
    pub usage: Option<Arc<LiveUsage>>,
}

pub(crate) fn split(c: TaskConfig) -> (WasiConfig, ControlConfig) {
    (
        c.wasi,
        ControlConfig {
            yield_fuel: c.yield_fuel,
            fuel_limit: c.fuel_limit,
            memory_limit: c.memory_limit,
            policy: c.policy,
            pause_flag: c.pause_flag,
            honor_guest_checkpoints: c.honor_guest_checkpoints,
            usage: c.usage,
        },
    )
}
