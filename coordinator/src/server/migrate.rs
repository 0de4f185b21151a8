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
//! Chunks travel through the registry, over QUIC: the final checkpoint has
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
    let (tx, rx) = oneshot::channel();
    core.migrations.insert(
        task,
        Migration {
            from: from.clone(),
            to: to.clone(),
            epoch: t.epoch,
            stage: if precopy {
                Stage::PreCopy
            } else {
                Stage::Handoff
            },
            began: Instant::now(),
            precopy_bytes: 0,
            delta_bytes: 0,
            paused_at_us: 0,
            waiters: vec![tx],
        },
    );
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
            shared.lock().migrations.remove(&task);
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
    let report = MigrationReport {
        task,
        from: m.from.clone(),
        to: m.to.clone(),
        downtime_ms: at_us.saturating_sub(m.paused_at_us) as f64 / 1000.0,
        total_ms: m.began.elapsed().as_secs_f64() * 1000.0,
        precopy_bytes: m.precopy_bytes,
        delta_bytes: m.delta_bytes,
        resume_bytes: fetched,
        at_ms: at_us / 1000,
    };
    tracing::info!(
        %task, from = %m.from, to = %m.to,
        downtime_ms = report.downtime_ms, total_ms = report.total_ms,
        "migration done"
    );
    for w in m.waiters {
        let _ = w.send(Ok(report.clone()));
    }
    Some(report)
}

/// End a migration with an error (the task stays where the log says).
pub(super) fn abort(core: &mut Core, task: TaskId, why: String) {
    if let Some(m) = core.migrations.remove(&task) {
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
