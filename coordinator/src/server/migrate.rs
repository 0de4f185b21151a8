//! Strong migration, driven by the coordinator.
//!
//! ```text
//! operator ─Migrate─▶ coordinator ─Migrate──────▶ source   checkpoint now (pre-copy), keep running
//!                     coordinator ◀─Checkpointed─ source   durable in the registry
//!                     coordinator ─Prefetch─────▶ target   chunks + module into its caches
//!                     coordinator ◀─Prefetched── target
//!                     coordinator ─Handoff──────▶ source   pause, store the delta, forget
//!                     coordinator ◀─HandedOff─── source   (pause time, final seq)
//!                     log: Checkpointed, Placed(target, epoch + 1)
//!                     coordinator ─Run(resume)──▶ target   fetch what it lacks, restore
//! operator ◀─Migrated─ coordinator ◀─Started──── target   downtime = start − pause
//! ```
//!
//! When both workers serve the live protocol (they advertise an address),
//! the memory goes straight from source to target instead, at page grain:
//!
//! ```text
//! operator ─Migrate─▶ coordinator ─Expect───────▶ target   prepare the module, accept the task
//!                     coordinator ─LiveMigrate──▶ source   rounds of written pages ──▶ target
//!                                                          pause, final state ──────▶ target
//!                     coordinator ◀─LiveReady─── target    whole state applied, waiting
//!                     log: Placed(target, epoch + 1)       ─Run──▶ target: runs the instance it built
//!                     coordinator ─Drop─────────▶ source   forget the paused task
//! operator ◀─Migrated─ coordinator ◀─Started──── target
//! ```
//!
//! Durability rule of the live path: `Placed` is logged only once the
//! target holds the whole state in memory, and until a decision (`Drop` or
//! `Resume`) reaches it the source keeps the task paused, so at every
//! moment someone holds it. After the move the task's durable state is its
//! last checkpoint in the registry, as after any crash; the target is asked
//! for a checkpoint as soon as it runs, which bounds what a crash of the
//! target right after the move would recompute.
//!
//! On the registry path, chunks travel through the registry, over QUIC: the final checkpoint has
//! to be durable there before the source may forget the task anyway, and
//! the pre-copy means the target only pulls the chunks the last few
//! milliseconds changed.
//!
//! The in-flight state is volatile on purpose: if the coordinator restarts
//! mid-migration, the log still says where the task is (the source until
//! `Placed` is logged) and the attach replay restarts it there from its last
//! checkpoint. Ownership only ever changes through a logged `Placed` with a
//! higher epoch, so there is never a second owner.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::{NodeId, TaskId};

use super::{coordinator_error, send_command, Core, Shared};
use crate::placement::Placement;
use crate::tasks::TaskState;
use crate::wire::{MigrationReport, WorkerCommand};

/// How long an operator waits for one migration.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for the source's pre-copy checkpoint.
    PreCopy,
    /// Waiting for the target to fetch it.
    Prefetch,
    /// Waiting for the source to pause and store the delta.
    Handoff,
    /// Placed on the target; waiting for its first instruction.
    Resuming,
    /// Live path: the source streams to the target; waiting for the
    /// target's `LiveReady`.
    Live,
}

pub(super) struct Migration {
    pub from: NodeId,
    pub to: NodeId,
    /// The source's epoch.
    pub epoch: u64,
    pub stage: Stage,
    began: Instant,
    precopy_bytes: u64,
    delta_bytes: u64,
    paused_at_us: u64,
    /// Moved over the live protocol (the target checkpoints when it starts).
    live: bool,
    /// Where the downtime went, so far (live path).
    phases: Vec<(String, f64)>,
    waiters: Vec<oneshot::Sender<Result<MigrationReport, RemoteError>>>,
}

pub(super) type Waiter = oneshot::Receiver<Result<MigrationReport, RemoteError>>;

fn conflict(message: String) -> RemoteError {
    RemoteError::new(ErrorCode::Conflict, message)
}

/// Validate and start moving `task` to `to`.
pub(super) fn start(
    core: &mut Core,
    task: TaskId,
    to: &NodeId,
    precopy: bool,
) -> Result<Waiter, RemoteError> {
    let t = core.coord.task(task).cloned().ok_or_else(|| {
        RemoteError::new(
            ErrorCode::NotFound,
            format!("unknown task {task}: see `wmig ps` for task ids"),
        )
    })?;
    if t.state != TaskState::Running {
        return Err(conflict(format!(
            "task {task} is {}; only a running task can migrate",
            t.state
        )));
    }
    let from = t
        .owner
        .clone()
        .ok_or_else(|| conflict(format!("task {task} has no owner")))?;
    if let Some(m) = core.migrations.get(&task) {
        return Err(conflict(format!(
            "task {task} is already migrating from {} to {}",
            m.from, m.to
        )));
    }
    if from == *to {
        return Err(conflict(format!("task {task} already runs on {to}")));
    }
    // The target must be able to take one more task right now.
    core.coord
        .choose_worker(&Placement::Pinned(to.clone()))
        .map_err(coordinator_error)?;
    let live_addr = |n: &NodeId| {
        core.coord
            .node(n)
            .map(|n| n.info.addr.clone())
            .filter(|a| !a.is_empty())
    };
    let live = live_addr(&from).and(live_addr(to));
    let (tx, rx) = oneshot::channel();
    core.migrations.insert(
        task,
        Migration {
            from: from.clone(),
            to: to.clone(),
            epoch: t.epoch,
            stage: if live.is_some() {
                Stage::Live
            } else if precopy {
                Stage::PreCopy
            } else {
                Stage::Handoff
            },
            began: Instant::now(),
            precopy_bytes: 0,
            delta_bytes: 0,
            paused_at_us: 0,
            live: false,
            phases: Vec::new(),
            waiters: vec![tx],
        },
    );
    if let Some(addr) = live {
        send_command(
            core,
            to,
            WorkerCommand::Expect {
                task,
                epoch: t.epoch,
                from: from.clone(),
                spec: t.spec.clone(),
                options: t.options.clone(),
            },
        );
        send_command(
            core,
            &from,
            WorkerCommand::LiveMigrate {
                task,
                epoch: t.epoch,
                to: to.clone(),
                addr,
                precopy,
            },
        );
        tracing::info!(%task, %from, %to, precopy, "live migration started");
        return Ok(rx);
    }
    let command = if precopy {
        WorkerCommand::Migrate {
            task,
            epoch: t.epoch,
        }
    } else {
        WorkerCommand::Handoff {
            task,
            epoch: t.epoch,
        }
    };
    send_command(core, &from, command);
    tracing::info!(%task, %from, %to, "migration started");
    Ok(rx)
}

/// Wait for a migration's end.
pub(super) async fn wait(
    shared: &Shared,
    task: TaskId,
    rx: Waiter,
) -> Result<MigrationReport, RemoteError> {
    match tokio::time::timeout(MIGRATION_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(RemoteError::new(
            ErrorCode::Internal,
            "the coordinator abandoned the migration; see `wmig ps` for where the task runs",
        )),
        Err(_) => {
            let mut core = shared.lock();
            if let Some(m) = core.migrations.remove(&task) {
                release_live(&mut core, task, &m);
            }
            drop(core);
            Err(RemoteError::new(
                ErrorCode::Timeout,
                format!(
                    "task {task} did not finish migrating within {MIGRATION_TIMEOUT:?}; \
                     see `wmig ps` for where it runs now"
                ),
            ))
        }
    }
}

/// The source's checkpoint `seq` is durable: the pre-copy, if one was due.
pub(super) fn checkpointed(core: &mut Core, node: &NodeId, task: TaskId, epoch: u64, seq: u64) {
    let Some(m) = core.migrations.get_mut(&task) else {
        return;
    };
    if m.stage != Stage::PreCopy || m.from != *node || m.epoch != epoch {
        return;
    }
    m.stage = Stage::Prefetch;
    let to = m.to.clone();
    send_command(core, &to, WorkerCommand::Prefetch { task, seq });
}

/// The target has the pre-copy: tell the source to hand over.
pub(super) fn prefetched(core: &mut Core, node: &NodeId, task: TaskId, bytes: u64) {
    let Some(m) = core.migrations.get_mut(&task) else {
        return;
    };
    if m.stage != Stage::Prefetch || m.to != *node {
        return;
    }
    m.stage = Stage::Handoff;
    m.precopy_bytes = bytes;
    let (from, epoch) = (m.from.clone(), m.epoch);
    send_command(core, &from, WorkerCommand::Handoff { task, epoch });
}

/// Where a handed-off task should go: the migration's target, or back to
/// where it was if no migration is waiting for it any more.
pub(super) fn handoff_target(core: &Core, node: &NodeId, task: TaskId) -> NodeId {
    match core.migrations.get(&task) {
        Some(m) if m.from == *node => m.to.clone(),
        _ => node.clone(),
    }
}

/// The handoff is logged; the task now belongs to its new owner.
pub(super) fn handed_off(core: &mut Core, task: TaskId, paused_at_us: u64, bytes: u64) {
    let owner = core.coord.task(task).and_then(|t| t.owner.clone());
    let Some(m) = core.migrations.get_mut(&task) else {
        return;
    };
    m.stage = Stage::Resuming;
    m.paused_at_us = paused_at_us;
    m.delta_bytes = bytes;
    if let Some(owner) = owner {
        m.to = owner;
    }
}

/// The new owner executes its first instruction: the migration is done.
pub(super) fn started(
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    at_us: u64,
    fetched: u64,
) -> Option<MigrationReport> {
    let done = core
        .migrations
        .get(&task)
        .is_some_and(|m| m.stage == Stage::Resuming && m.to == *node);
    if !done {
        return None;
    }
    let m = core.migrations.remove(&task)?;
    let downtime_ms = at_us.saturating_sub(m.paused_at_us) as f64 / 1000.0;
    let mut phases = m.phases.clone();
    if !phases.is_empty() {
        phases.push(("running".to_owned(), downtime_ms));
    }
    let report = MigrationReport {
        task,
        from: m.from.clone(),
        to: m.to.clone(),
        downtime_ms,
        total_ms: m.began.elapsed().as_secs_f64() * 1000.0,
        precopy_bytes: m.precopy_bytes,
        delta_bytes: m.delta_bytes,
        resume_bytes: fetched,
        at_ms: at_us / 1000,
        phases_ms: phases,
    };
    tracing::info!(
        %task, from = %m.from, to = %m.to,
        downtime_ms = report.downtime_ms, total_ms = report.total_ms,
        "migration done"
    );
    for w in m.waiters {
        let _ = w.send(Ok(report.clone()));
    }
    if m.live {
        // Until the target's first checkpoint, a crash there would resume
        // from the last one the source stored.
        let epoch = core.coord.task(task).map_or(0, |t| t.epoch);
        send_command(core, node, WorkerCommand::Checkpoint { task, epoch });
    }
    Some(report)
}

/// The live target holds the whole state: may the task be placed there?
/// Returns the source to drop it from once `Placed` is logged.
pub(super) fn live_ready(
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    epoch: u64,
) -> Result<NodeId, RemoteError> {
    let owner = core.coord.task(task).and_then(|t| t.owner.clone());
    match core.migrations.get_mut(&task) {
        Some(m) if m.stage == Stage::Live && m.to == *node && m.epoch == epoch => {
            if owner.as_ref() != Some(&m.from) {
                return Err(conflict(format!(
                    "task {task} is no longer on {}; forget what arrived",
                    m.from
                )));
            }
            // From here on a timeout or failure report must not tell the
            // source to carry on: `Placed` may be on its way to the log.
            m.stage = Stage::Resuming;
            Ok(m.from.clone())
        }
        _ => Err(conflict(format!(
            "no live migration of {task} at epoch {epoch} to {node} is waiting (abandoned or timed out); forget what arrived"
        ))),
    }
}

/// `Placed` on the live target is logged: wait for its first instruction.
pub(super) fn live_placed(
    core: &mut Core,
    task: TaskId,
    paused_at_us: u64,
    (precopy_bytes, delta_bytes): (u64, u64),
    phases: Vec<(String, f64)>,
) {
    if let Some(m) = core.migrations.get_mut(&task) {
        m.stage = Stage::Resuming;
        m.paused_at_us = paused_at_us;
        m.precopy_bytes = precopy_bytes;
        m.delta_bytes = delta_bytes;
        m.live = true;
        m.phases = phases;
    }
}

/// Logging `Placed` for a ready live target failed: nothing moved, so the
/// source carries on and the target forgets.
pub(super) fn live_unplaced(
    core: &mut Core,
    task: TaskId,
    (from, to, epoch): (&NodeId, &NodeId, u64),
    why: String,
) {
    send_command(core, from, WorkerCommand::Resume { task, epoch });
    send_command(core, to, WorkerCommand::Resume { task, epoch });
    abort(core, task, why);
}

/// A live migration that will not complete: the source carries on, the
/// target forgets. Harmless to a node that already moved past it.
fn release_live(core: &mut Core, task: TaskId, m: &Migration) {
    if m.stage == Stage::Live {
        let epoch = m.epoch;
        send_command(core, &m.from, WorkerCommand::Resume { task, epoch });
        send_command(core, &m.to, WorkerCommand::Resume { task, epoch });
    }
}

/// End a live migration that failed before the target was ready.
pub(super) fn live_failed(core: &mut Core, node: &NodeId, task: TaskId, epoch: u64, why: &str) {
    let ours = core
        .migrations
        .get(&task)
        .is_some_and(|m| m.stage == Stage::Live && m.epoch == epoch);
    if ours {
        abort(
            core,
            task,
            format!(
                "the live migration of {task} failed on {node}: {why}; it carries on where it was"
            ),
        );
    }
}

/// End a migration with an error (the task stays where the log says).
pub(super) fn abort(core: &mut Core, task: TaskId, why: String) {
    if let Some(m) = core.migrations.remove(&task) {
        release_live(core, task, &m);
        tracing::warn!(%task, reason = %why, "migration abandoned");
        for w in m.waiters {
            let _ = w.send(Err(conflict(why.clone())));
        }
    }
}

/// A node went offline: end every migration it takes part in. Recovery
/// (in the core) has already moved its tasks.
pub(super) fn node_offline(core: &mut Core, node: &NodeId) {
    let hit: Vec<TaskId> = core
        .migrations
        .iter()
        .filter(|(_, m)| m.from == *node || m.to == *node)
        .map(|(t, _)| *t)
        .collect();
    for task in hit {
        let now_on = core
            .coord
            .task(task)
            .and_then(|t| t.owner.clone())
            .map_or_else(|| "no worker yet (pending)".to_owned(), |o| o.0);
        abort(
            core,
            task,
            format!("worker {node} went offline during the migration of {task}; it now runs on {now_on}"),
        );
    }
}
