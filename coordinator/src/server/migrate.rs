//! Drives the migration core ([`crate::migration`], where the protocol and
//! its durability rule are described) for the server.
//!
//! Each worker report or operator request becomes a call on [`Migrations`]
//! with the server's clock (`Shared::now`, as for the coordinator core);
//! this module carries out the [`Effect`]s: commands go out on the workers'
//! attach streams, `Placed` of a live move is logged through the group
//! commit (and its outcome handed back), and a migration's end answers its
//! waiters (operators' `Migrate` and `Drain` requests) and, when it moved,
//! goes to monitors as [`MonitorItem::Migrated`]. The failure detector's
//! loop calls [`tick`] for the timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::{NodeId, TaskId};

use super::{coordinator_error, send_command, unix_us_now, Core, Shared};
use crate::migration::{Effect, Failure, LiveReady, Migrations, Place, Refusal, Stage};
use crate::wire::{MigrationReport, MonitorItem};
use crate::{CoordinatorError, Millis};

type Answer = Result<MigrationReport, RemoteError>;

pub(super) type Waiter = oneshot::Receiver<Answer>;

/// Whoever waits for one migration.
struct Waiting {
    /// When it started, on a finer clock than the core's milliseconds:
    /// the report's total time is measured on it.
    began: Instant,
    senders: Vec<oneshot::Sender<Answer>>,
}

/// The migrations in flight (volatile, see [`crate::migration`]) and their
/// waiters.
#[derive(Default)]
pub(super) struct Inflight {
    core: Migrations,
    waiters: HashMap<TaskId, Waiting>,
}

impl Inflight {
    pub fn contains(&self, task: TaskId) -> bool {
        self.core.contains(task)
    }
}

fn refused(e: Refusal) -> RemoteError {
    match e {
        Refusal::Target(e) => coordinator_error(CoordinatorError::Placement(e)),
        Refusal::UnknownTask { .. } => RemoteError::new(ErrorCode::NotFound, e.to_string()),
        _ => RemoteError::new(ErrorCode::Conflict, e.to_string()),
    }
}

fn failed(e: &Failure) -> RemoteError {
    let code = match e {
        Failure::TimedOut { .. } => ErrorCode::Timeout,
        _ => ErrorCode::Conflict,
    };
    RemoteError::new(code, e.to_string())
}

/// Carry out `effects`, except the moves to log, which are returned (only
/// [`live_ready`] yields one, and awaits it).
#[must_use]
fn execute(shared: &Shared, core: &mut Core, effects: Vec<Effect>) -> Vec<Place> {
    let mut places = Vec::new();
    for effect in effects {
        match effect {
            Effect::Send { node, command } => send_command(core, &node, command),
            Effect::Place(p) => places.push(p),
            Effect::Done { task, result } => {
                let waiting = core.migrations.waiters.remove(&task);
                let answer = match result {
                    Ok(mut report) => {
                        if let Some(w) = &waiting {
                            report.total_ms = w.began.elapsed().as_secs_f64() * 1000.0;
                        }
                        tracing::info!(
                            %task, from = %report.from, to = %report.to,
                            downtime_ms = report.downtime_ms, total_ms = report.total_ms,
                            "migration done"
                        );
                        shared.publish(core, MonitorItem::Migrated(report.clone()));
                        Ok(report)
                    }
                    Err(why) => {
                        tracing::warn!(%task, reason = %why, "migration abandoned");
                        Err(failed(&why))
                    }
                };
                for w in waiting.into_iter().flat_map(|w| w.senders) {
                    let _ = w.send(answer.clone());
                }
            }
        }
    }
    places
}

/// [`execute`] where no move can come up; one that did would still be
/// logged, in the background.
fn execute_now(shared: &Arc<Shared>, core: &mut Core, effects: Vec<Effect>) {
    for p in execute(shared, core, effects) {
        tokio::spawn(place(shared.clone(), p));
    }
}

/// Log a live move (if the task is still the source's), then hand the
/// outcome to the core. Returns why it was not logged.
async fn place(shared: Arc<Shared>, p: Place) -> Result<(), RemoteError> {
    let placed = shared
        .command(|c, _| match p.check(c) {
            Ok(()) => Ok((Ok(()), vec![c.move_exactly(p.task, &p.to)?])),
            Err(e) => Ok((Err(e), Vec::new())),
        })
        .await
        .and_then(|checked| checked.map_err(refused));
    let placed_at_us = unix_us_now();
    let mut core = shared.lock();
    let outcome = placed.clone().map_err(|e| e.to_string());
    let effects = core.migrations.core.placed(&p, outcome, placed_at_us);
    execute_now(&shared, &mut core, effects);
    placed
}

/// Validate and start moving `task` to `to`.
pub(super) fn start(
    shared: &Arc<Shared>,
    core: &mut Core,
    task: TaskId,
    to: &NodeId,
    precopy: bool,
) -> Result<Waiter, RemoteError> {
    let now = shared.now();
    let effects = core
        .migrations
        .core
        .start(&core.coord, task, to, precopy, now)
        .map_err(refused)?;
    if let Some(m) = core.migrations.core.get(task) {
        if m.stage() == Stage::Live {
            tracing::info!(%task, from = %m.from(), %to, precopy, "live migration started");
        } else {
            tracing::info!(%task, from = %m.from(), %to, "migration started");
        }
    }
    let (tx, rx) = oneshot::channel();
    core.migrations
        .waiters
        .entry(task)
        .or_insert_with(|| Waiting {
            began: Instant::now(),
            senders: Vec::new(),
        })
        .senders
        .push(tx);
    execute_now(shared, core, effects);
    Ok(rx)
}

/// Wait for a migration's end (the core times it out).
pub(super) async fn wait(rx: Waiter) -> Result<MigrationReport, RemoteError> {
    rx.await.unwrap_or_else(|_| {
        Err(RemoteError::new(
            ErrorCode::Internal,
            "the coordinator abandoned the migration; see `wmig ps` for where the task runs",
        ))
    })
}

/// Time out migrations that took too long; called from the failure
/// detector's loop.
pub(super) fn tick(shared: &Arc<Shared>, core: &mut Core, now: Millis) {
    if core
        .migrations
        .core
        .next_deadline()
        .is_some_and(|d| d <= now)
    {
        let effects = core.migrations.core.tick(now);
        execute_now(shared, core, effects);
    }
}

/// The source's checkpoint `seq` is logged: the pre-copy, if one was due.
pub(super) fn checkpointed(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    epoch: u64,
    seq: u64,
) {
    let effects = core.migrations.core.checkpointed(node, task, epoch, seq);
    execute_now(shared, core, effects);
}

/// The target has the pre-copy: tell the source to hand over.
pub(super) fn prefetched(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    bytes: u64,
) {
    let effects = core.migrations.core.prefetched(node, task, bytes);
    execute_now(shared, core, effects);
}

/// Where a handed-off task should go: the migration's target, or back to
/// where it was if no migration is waiting for it any more.
pub(super) fn handoff_target(core: &Core, node: &NodeId, task: TaskId) -> NodeId {
    core.migrations.core.handoff_target(node, task)
}

/// The handoff is logged; the task now belongs to its new owner.
pub(super) fn handed_off(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    paused_at_us: u64,
    bytes: u64,
) {
    let effects = core
        .migrations
        .core
        .handed_off(&core.coord, node, task, paused_at_us, bytes);
    execute_now(shared, core, effects);
}

/// The source could not store the final checkpoint; it carries on.
pub(super) fn handoff_failed(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    epoch: u64,
    reason: &str,
) {
    let effects = core
        .migrations
        .core
        .handoff_failed(node, task, epoch, reason);
    execute_now(shared, core, effects);
}

/// The new owner executes its first instruction: the migration is done.
pub(super) fn started(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    at_us: u64,
    fetched: u64,
) {
    let now = shared.now();
    let effects = core
        .migrations
        .core
        .started(node, task, at_us, fetched, now);
    execute_now(shared, core, effects);
}

/// The live target holds the whole state: place the task there, and answer
/// the target with the outcome (refused: it forgets what arrived).
pub(super) async fn live_ready(
    shared: &Arc<Shared>,
    node: &NodeId,
    task: TaskId,
    epoch: u64,
    ready: LiveReady,
) -> Result<(), RemoteError> {
    let places = {
        let mut guard = shared.lock();
        let core = &mut *guard;
        let effects = core
            .migrations
            .core
            .live_ready(&core.coord, node, task, epoch, ready)
            .map_err(refused)?;
        execute(shared, core, effects)
    };
    let mut outcome = Ok(());
    for p in places {
        if let Err(e) = place(shared.clone(), p).await {
            outcome = Err(e);
        }
    }
    outcome
}

/// A live migration failed on `node` before the target was ready.
pub(super) fn live_failed(
    shared: &Arc<Shared>,
    core: &mut Core,
    node: &NodeId,
    task: TaskId,
    epoch: u64,
    reason: &str,
) {
    let effects = core.migrations.core.live_failed(node, task, epoch, reason);
    execute_now(shared, core, effects);
}

/// A node went offline: end every migration it takes part in. Recovery
/// (in the core) has already moved its tasks.
pub(super) fn node_offline(shared: &Arc<Shared>, core: &mut Core, node: &NodeId) {
    let effects = core.migrations.core.node_offline(&core.coord, node);
    execute_now(shared, core, effects);
}
