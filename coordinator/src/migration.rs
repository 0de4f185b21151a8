//! Strong migration: the handshake the coordinator runs between a task's
//! source and its target, as a sans-IO state machine.
//!
//! [`Migrations`] holds every migration in flight. Like the rest of the
//! core it reads no clock and touches no socket: each worker report and
//! each operator request is a method call (taking `now` where time
//! matters), and each call returns the [`Effect`]s the driver carries out —
//! commands to workers, the one durable step (logging `Placed` on the live
//! path) and the answer to whoever waits for the migration. Decisions that
//! need the cluster's state read it from a [`Coordinator`] passed in.
//! The server's driver is `server::migrate`.
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
//! Without pre-copy (a cold migration) the source is sent `Handoff` at once.
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
//! In [`Stage`]s: `PreCopy → Prefetch → Handoff → Resuming` on the registry
//! path (a cold one starts at `Handoff`), `Live → Placing → Resuming` on the
//! live path; `Started` from the target in `Resuming` completes the
//! migration ([`Effect::Done`] with its [`MigrationReport`]).
//!
//! Durability rule of the live path: `Placed` is logged only once the
//! target holds the whole state in memory ([`Migrations::live_ready`] is the
//! only source of [`Effect::Place`]), and until a decision (`Drop` or
//! `Resume`) reaches it the source keeps the task paused, so at every
//! moment someone holds it. A failure before the target is ready (either
//! side's `LiveFailed`, a node going offline, the timeout) sends `Resume`
//! to both: the source carries on, the target forgets. After `LiveReady` no
//! timeout or failure report may tell the source to carry on, because
//! `Placed` may be on its way to the log: only the outcome of logging it
//! ([`Migrations::placed`]) decides, `Drop` to the source if it was logged
//! and `Resume` to both if not. After the move the task's durable state is
//! its last checkpoint in the registry, as after any crash; the target is
//! asked for a checkpoint as soon as it runs, which bounds what a crash of
//! the target right after the move would recompute.
//!
//! On the registry path, chunks travel through the registry, over QUIC: the
//! final checkpoint has to be durable there before the source may forget the
//! task anyway, and the pre-copy means the target only pulls the chunks the
//! last few milliseconds changed. The driver logs the final checkpoint and
//! the move together when the source reports `HandedOff` (to
//! [`Migrations::handoff_target`]).
//!
//! The in-flight state is volatile on purpose: if the coordinator restarts
//! mid-migration, the log still says where the task is (the source until
//! `Placed` is logged) and the attach replay restarts it there from its last
//! checkpoint. A fresh [`Migrations`] refuses the old migration's late
//! `LiveReady` (so the target forgets what arrived) and ignores its other
//! reports. Ownership only ever changes through a logged `Placed` with a
//! higher epoch, so there is never a second owner.

use std::collections::BTreeMap;
use std::time::Duration;

use wmig_proto::{NodeId, TaskId};

use crate::placement::{Placement, PlacementError, Placer};
use crate::state::Coordinator;
use crate::tasks::TaskState;
use crate::wire::{MigrationReport, WorkerCommand};
use crate::Millis;

/// How long an operator waits for one migration, from its start.
pub const MIGRATION_TIMEOUT: Millis = 60_000;

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Registry path: waiting for the source's pre-copy checkpoint.
    PreCopy,
    /// Registry path: waiting for the target to fetch it.
    Prefetch,
    /// Registry path: waiting for the source to pause and store the delta.
    Handoff,
    /// Live path: the source streams to the target; waiting for the
    /// target's `LiveReady`.
    Live,
    /// Live path: the target holds the whole state; waiting for the outcome
    /// of logging `Placed` there. The source stays paused.
    Placing,
    /// Placed on the target; waiting for its first instruction.
    Resuming,
}

/// What a live target reports with `LiveReady`: unix µs on the workers'
/// clocks and the bytes moved, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveReady {
    /// When the source paused the task for good.
    pub paused_at_us: u64,
    /// µs from the pause until the source had captured the final state.
    pub captured_us: u64,
    /// When the target had received, then applied, the whole state.
    pub received_at_us: u64,
    pub applied_at_us: u64,
    /// Page bytes received before the pause.
    pub precopy_bytes: u64,
    /// Page bytes received after it.
    pub delta_bytes: u64,
}

/// One migration in flight.
#[derive(Clone, Debug)]
pub struct Migration {
    from: NodeId,
    to: NodeId,
    /// The source's epoch.
    epoch: u64,
    stage: Stage,
    began: Millis,
    precopy_bytes: u64,
    delta_bytes: u64,
    paused_at_us: u64,
    /// Moved over the live protocol (the target checkpoints when it starts).
    live: bool,
    /// Where the downtime went, so far (live path).
    phases: Vec<(String, f64)>,
    /// What the live target reported, until `Placed` is logged.
    ready: Option<LiveReady>,
    /// The target's `Started` (unix µs, bytes fetched, `now`) when it came
    /// before the outcome of logging `Placed` did.
    early_start: Option<(u64, u64, Millis)>,
}

impl Migration {
    pub fn from(&self) -> &NodeId {
        &self.from
    }

    /// The requested target, or on the registry path after the handoff the
    /// worker that got the task.
    pub fn to(&self) -> &NodeId {
        &self.to
    }

    /// The task's epoch on the source.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// When it started, on the caller's clock.
    pub fn began(&self) -> Millis {
        self.began
    }
}

/// The live move for the driver to log: `Placed` of `task` on `to`, with
/// the epoch after `epoch`, provided `from` still owns it at `epoch` (see
/// [`Place::check`]). Hand it back to [`Migrations::placed`] with the
/// outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub task: TaskId,
    pub from: NodeId,
    pub to: NodeId,
    pub epoch: u64,
}

impl Place {
    /// Whether `Placed` may still be logged: the task is still the source's
    /// at the migration's epoch. Call it in the same critical section that
    /// applies the move, so that nothing (a recovery) moved the task between
    /// `LiveReady` and the commit.
    pub fn check(&self, coord: &Coordinator) -> Result<(), Refusal> {
        match coord.task(self.task) {
            Some(t) if t.owner.as_ref() == Some(&self.from) && t.epoch == self.epoch => Ok(()),
            _ => Err(Refusal::NoLongerOnSource {
                task: self.task,
                from: self.from.clone(),
            }),
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send `command` to `node` (on its attach stream).
    Send {
        node: NodeId,
        command: WorkerCommand,
    },
    /// Log the live move (via `Coordinator::move_exactly`, after
    /// [`Place::check`]), then report the outcome to
    /// [`Migrations::placed`].
    Place(Place),
    /// The migration of `task` ended: answer everyone waiting for it.
    Done {
        task: TaskId,
        result: Result<MigrationReport, Failure>,
    },
}

fn send(node: &NodeId, command: WorkerCommand) -> Effect {
    Effect::Send {
        node: node.clone(),
        command,
    }
}

/// Why a migration cannot start, or a live target's report is refused
/// (the target then forgets what arrived).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown task {task}: see `wmig ps` for task ids")]
    UnknownTask { task: TaskId },
    #[error("task {task} is {state}; only a running task can migrate")]
    NotRunning { task: TaskId, state: TaskState },
    #[error("task {task} has no owner")]
    NoOwner { task: TaskId },
    #[error("task {task} is already migrating from {from} to {to}")]
    AlreadyMigrating {
        task: TaskId,
        from: NodeId,
        to: NodeId,
    },
    #[error("task {task} already runs on {to}")]
    AlreadyThere { task: TaskId, to: NodeId },
    #[error(
        "task {task} uses `{path}` of {from}'s machine (--host-dir), which does not travel; \
         submit it with --dir LOCAL::GUEST to have its files move with it"
    )]
    HostDir {
        task: TaskId,
        from: NodeId,
        path: String,
    },
    /// The target cannot take one more task now.
    #[error(transparent)]
    Target(#[from] PlacementError),
    #[error("task {task} is no longer on {from}; forget what arrived")]
    NoLongerOnSource { task: TaskId, from: NodeId },
    #[error("no live migration of {task} at epoch {epoch} to {node} is waiting (abandoned or timed out); forget what arrived")]
    NotWaiting {
        task: TaskId,
        epoch: u64,
        node: NodeId,
    },
}

/// Why a migration in flight ended without moving the task (it stays where
/// the log says).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("task {task} did not finish migrating within {after:?}; see `wmig ps` for where it runs now")]
    TimedOut { task: TaskId, after: Duration },
    #[error("worker {node} went offline during the migration of {task}; it now runs on {now_on}")]
    NodeOffline {
        task: TaskId,
        node: NodeId,
        /// The task's owner after recovery, or that it waits as pending.
        now_on: String,
    },
    #[error(
        "{node} could not store the final checkpoint of {task} ({reason}); it carries on there"
    )]
    HandoffFailed {
        task: TaskId,
        node: NodeId,
        reason: String,
    },
    #[error("the live migration of {task} failed on {node}: {reason}; it carries on where it was")]
    LiveFailed {
        task: TaskId,
        node: NodeId,
        reason: String,
    },
    #[error("could not place {task} on {to}: {reason}; it carries on where it was")]
    PlaceFailed {
        task: TaskId,
        to: NodeId,
        reason: String,
    },
}

/// Every migration in flight, keyed by task (one at a time per task).
#[derive(Clone, Debug)]
pub struct Migrations {
    inflight: BTreeMap<TaskId, Migration>,
    timeout: Millis,
}

impl Default for Migrations {
    fn default() -> Self {
        Migrations::new(MIGRATION_TIMEOUT)
    }
}

impl Migrations {
    /// No migration in flight; each one started gets `timeout` to finish.
    pub fn new(timeout: Millis) -> Self {
        Migrations {
            inflight: BTreeMap::new(),
            timeout,
        }
    }

    pub fn get(&self, task: TaskId) -> Option<&Migration> {
        self.inflight.get(&task)
    }

    pub fn contains(&self, task: TaskId) -> bool {
        self.inflight.contains_key(&task)
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Validate against `coord` and start moving `task` to `to`: over the
    /// live protocol when both workers serve it, else through the registry
    /// (with a pre-copy if `precopy`).
    pub fn start(
        &mut self,
        coord: &Coordinator,
        task: TaskId,
        to: &NodeId,
        precopy: bool,
        now: Millis,
    ) -> Result<Vec<Effect>, Refusal> {
        let t = coord.task(task).ok_or(Refusal::UnknownTask { task })?;
        if t.state != TaskState::Running {
            return Err(Refusal::NotRunning {
                task,
                state: t.state,
            });
        }
        let from = t.owner.clone().ok_or(Refusal::NoOwner { task })?;
        if let Some(m) = self.inflight.get(&task) {
            return Err(Refusal::AlreadyMigrating {
                task,
                from: m.from.clone(),
                to: m.to.clone(),
            });
        }
        if from == *to {
            return Err(Refusal::AlreadyThere {
                task,
                to: to.clone(),
            });
        }
        if let Some((path, _)) = t.options.dirs.first() {
            return Err(Refusal::HostDir {
                task,
                from,
                path: path.clone(),
            });
        }
        // The target must be able to take one more task right now. A pinned
        // choice reads the cluster only, so a throwaway placer will do.
        Placer::default().choose(
            &Placement::Pinned(to.clone()),
            coord.membership(),
            coord.task_table().load(),
        )?;
        let live_addr = |n: &NodeId| {
            coord
                .node(n)
                .map(|n| n.info.addr.clone())
                .filter(|a| !a.is_empty())
        };
        let live = live_addr(&from).and(live_addr(to));
        let epoch = t.epoch;
        let (stage, effects) = match live {
            Some(addr) => (
                Stage::Live,
                vec![
                    send(
                        to,
                        WorkerCommand::Expect {
                            task,
                            epoch,
                            from: from.clone(),
                            spec: t.spec.clone(),
                            options: t.options.clone(),
                        },
                    ),
                    send(
                        &from,
                        WorkerCommand::LiveMigrate {
                            task,
                            epoch,
                            to: to.clone(),
                            addr,
                            precopy,
                        },
                    ),
                ],
            ),
            None if precopy => (
                Stage::PreCopy,
                vec![send(&from, WorkerCommand::Migrate { task, epoch })],
            ),
            None => (
                Stage::Handoff,
                vec![send(&from, WorkerCommand::Handoff { task, epoch })],
            ),
        };
        self.inflight.insert(
            task,
            Migration {
                from,
                to: to.clone(),
                epoch,
                stage,
                began: now,
                precopy_bytes: 0,
                delta_bytes: 0,
                paused_at_us: 0,
                live: false,
                phases: Vec::new(),
                ready: None,
                early_start: None,
            },
        );
        Ok(effects)
    }

    /// `node` logged checkpoint `seq` of `task` at `epoch`: the pre-copy,
    /// if one was due (the driver logs the checkpoint first).
    pub fn checkpointed(
        &mut self,
        node: &NodeId,
        task: TaskId,
        epoch: u64,
        seq: u64,
    ) -> Vec<Effect> {
        let Some(m) = self.inflight.get_mut(&task) else {
            return Vec::new();
        };
        if m.stage != Stage::PreCopy || m.from != *node || m.epoch != epoch {
            return Vec::new();
        }
        m.stage = Stage::Prefetch;
        vec![send(&m.to, WorkerCommand::Prefetch { task, seq })]
    }

    /// The target fetched the pre-copy (`bytes` of it): tell the source to
    /// hand over.
    pub fn prefetched(&mut self, node: &NodeId, task: TaskId, bytes: u64) -> Vec<Effect> {
        let Some(m) = self.inflight.get_mut(&task) else {
            return Vec::new();
        };
        if m.stage != Stage::Prefetch || m.to != *node {
            return Vec::new();
        }
        m.stage = Stage::Handoff;
        m.precopy_bytes = bytes;
        vec![send(
            &m.from,
            WorkerCommand::Handoff {
                task,
                epoch: m.epoch,
            },
        )]
    }

    /// The registry-path migration of `task` from `node`, if there is one
    /// (a handoff from `node` completes it).
    fn handing_off(&self, node: &NodeId, task: TaskId) -> Option<&Migration> {
        self.inflight.get(&task).filter(|m| {
            m.from == *node && matches!(m.stage, Stage::PreCopy | Stage::Prefetch | Stage::Handoff)
        })
    }

    /// Where a task `node` handed off should go: the migration's target, or
    /// back to where it was if no migration is waiting for it any more. The
    /// driver logs the final checkpoint and this move together, then calls
    /// [`Self::handed_off`].
    pub fn handoff_target(&self, node: &NodeId, task: TaskId) -> NodeId {
        self.handing_off(node, task)
            .map_or_else(|| node.clone(), |m| m.to.clone())
    }

    /// The handoff from `node` is logged (the task paused at unix µs
    /// `paused_at_us`; `bytes` of final checkpoint): the task belongs to its
    /// new owner in `coord`, whose first instruction ends the migration.
    pub fn handed_off(
        &mut self,
        coord: &Coordinator,
        node: &NodeId,
        task: TaskId,
        paused_at_us: u64,
        bytes: u64,
    ) -> Vec<Effect> {
        if self.handing_off(node, task).is_none() {
            return Vec::new();
        }
        let owner = coord.task(task).and_then(|t| t.owner.clone());
        if let Some(m) = self.inflight.get_mut(&task) {
            m.stage = Stage::Resuming;
            m.paused_at_us = paused_at_us;
            m.delta_bytes = bytes;
            // The pinned target may have been unable to take it.
            if let Some(owner) = owner {
                m.to = owner;
            }
        }
        Vec::new()
    }

    /// The source could not store the final checkpoint: it carries on.
    pub fn handoff_failed(
        &mut self,
        node: &NodeId,
        task: TaskId,
        epoch: u64,
        reason: &str,
    ) -> Vec<Effect> {
        let ours = self
            .inflight
            .get(&task)
            .is_some_and(|m| m.stage == Stage::Handoff && m.from == *node && m.epoch == epoch);
        if !ours {
            return Vec::new();
        }
        self.abort(
            task,
            Failure::HandoffFailed {
                task,
                node: node.clone(),
                reason: reason.to_owned(),
            },
        )
    }

    /// The live target `node` holds the whole state of `task` (the source's
    /// `epoch`): have the move logged. Refused (the target forgets what
    /// arrived) if no such migration waits or the task moved meanwhile.
    pub fn live_ready(
        &mut self,
        coord: &Coordinator,
        node: &NodeId,
        task: TaskId,
        epoch: u64,
        ready: LiveReady,
    ) -> Result<Vec<Effect>, Refusal> {
        let owner = coord.task(task).and_then(|t| t.owner.as_ref());
        match self.inflight.get_mut(&task) {
            Some(m) if m.stage == Stage::Live && m.to == *node && m.epoch == epoch => {
                if owner != Some(&m.from) {
                    return Err(Refusal::NoLongerOnSource {
                        task,
                        from: m.from.clone(),
                    });
                }
                // From here on a timeout or failure report must not tell the
                // source to carry on: `Placed` may be on its way to the log.
                m.stage = Stage::Placing;
                m.ready = Some(ready);
                Ok(vec![Effect::Place(Place {
                    task,
                    from: m.from.clone(),
                    to: m.to.clone(),
                    epoch,
                })])
            }
            _ => Err(Refusal::NotWaiting {
                task,
                epoch,
                node: node.clone(),
            }),
        }
    }

    /// The outcome of logging `place` (`Err` says why it was not), at unix
    /// µs `placed_at_us`. Logged: the source drops the task, and the
    /// migration waits for the target's first instruction. Not logged:
    /// nothing moved, the source carries on and the target forgets. Either
    /// way the source is told, even if the migration ended meanwhile (it
    /// waits paused for exactly this decision).
    pub fn placed(
        &mut self,
        place: &Place,
        outcome: Result<(), String>,
        placed_at_us: u64,
    ) -> Vec<Effect> {
        let task = place.task;
        let ours = self.inflight.get(&task).is_some_and(|m| {
            m.stage == Stage::Placing
                && m.from == place.from
                && m.to == place.to
                && m.epoch == place.epoch
        });
        match outcome {
            Ok(()) => {
                let mut effects = vec![send(
                    &place.from,
                    WorkerCommand::Drop {
                        task,
                        epoch: place.epoch,
                    },
                )];
                let early = match self.inflight.get_mut(&task).filter(|_| ours) {
                    Some(m) => {
                        m.stage = Stage::Resuming;
                        m.live = true;
                        if let Some(r) = m.ready.take() {
                            let since_pause =
                                |at_us: u64| at_us.saturating_sub(r.paused_at_us) as f64 / 1000.0;
                            m.paused_at_us = r.paused_at_us;
                            m.precopy_bytes = r.precopy_bytes;
                            m.delta_bytes = r.delta_bytes;
                            m.phases = vec![
                                ("captured".to_owned(), r.captured_us as f64 / 1000.0),
                                ("transferred".to_owned(), since_pause(r.received_at_us)),
                                ("applied".to_owned(), since_pause(r.applied_at_us)),
                                ("placed".to_owned(), since_pause(placed_at_us)),
                            ];
                        }
                        m.early_start.take()
                    }
                    None => None,
                };
                if let Some((at_us, fetched, now)) = early {
                    effects.extend(self.finish(task, at_us, fetched, now));
                }
                effects
            }
            Err(reason) => {
                let mut effects = resume_both(task, &place.from, &place.to, place.epoch);
                let removed = if ours {
                    self.inflight.remove(&task)
                } else {
                    None
                };
                if let Some(m) = removed {
                    effects.push(Effect::Done {
                        task,
                        result: Err(Failure::PlaceFailed {
                            task,
                            to: m.to,
                            reason,
                        }),
                    });
                }
                effects
            }
        }
    }

    /// A live migration failed on `node` (source or target) before the
    /// target was ready: the source carries on, the target forgets. Ignored
    /// once the target is ready (only the outcome of `Placed` decides then).
    pub fn live_failed(
        &mut self,
        node: &NodeId,
        task: TaskId,
        epoch: u64,
        reason: &str,
    ) -> Vec<Effect> {
        let ours = self.inflight.get(&task).is_some_and(|m| {
            m.stage == Stage::Live && m.epoch == epoch && (m.from == *node || m.to == *node)
        });
        if !ours {
            return Vec::new();
        }
        self.abort(
            task,
            Failure::LiveFailed {
                task,
                node: node.clone(),
                reason: reason.to_owned(),
            },
        )
    }

    /// The task's new owner `node` executes its first instruction (at unix
    /// µs `at_us`, having fetched `fetched` bytes): the migration is done.
    /// The driver has checked that `node` owns the task at its epoch.
    pub fn started(
        &mut self,
        node: &NodeId,
        task: TaskId,
        at_us: u64,
        fetched: u64,
        now: Millis,
    ) -> Vec<Effect> {
        let Some(m) = self.inflight.get_mut(&task) else {
            return Vec::new();
        };
        if m.to != *node {
            return Vec::new();
        }
        match m.stage {
            Stage::Resuming => self.finish(task, at_us, fetched, now),
            // `Placed` is applied (the target got its `Run`) but the outcome
            // of logging it has not reached us yet: finish then.
            Stage::Placing => {
                m.early_start = Some((at_us, fetched, now));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// `node` went offline: end every migration it takes part in. Recovery
    /// (in `coord`) has already moved its tasks.
    pub fn node_offline(&mut self, coord: &Coordinator, node: &NodeId) -> Vec<Effect> {
        let hit: Vec<TaskId> = self
            .inflight
            .iter()
            .filter(|(_, m)| m.from == *node || m.to == *node)
            .map(|(t, _)| *t)
            .collect();
        let mut effects = Vec::new();
        for task in hit {
            let now_on = coord
                .task(task)
                .and_then(|t| t.owner.clone())
                .map_or_else(|| "no worker yet (pending)".to_owned(), |o| o.0);
            effects.extend(self.abort(
                task,
                Failure::NodeOffline {
                    task,
                    node: node.clone(),
                    now_on,
                },
            ));
        }
        effects
    }

    /// End every migration started `timeout` or longer before `now`. Call
    /// at [`Self::next_deadline`].
    pub fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let timeout = self.timeout;
        let due: Vec<TaskId> = self
            .inflight
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.began) >= timeout)
            .map(|(t, _)| *t)
            .collect();
        let mut effects = Vec::new();
        for task in due {
            effects.extend(self.abort(
                task,
                Failure::TimedOut {
                    task,
                    after: Duration::from_millis(timeout),
                },
            ));
        }
        effects
    }

    /// When [`Self::tick`] next has work to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.inflight
            .values()
            .map(|m| m.began.saturating_add(self.timeout))
            .min()
    }

    /// End a migration with an error: the task stays where the log says.
    /// A live one not yet ready is released (`Resume` to both); one past
    /// `LiveReady` is left to the outcome of `Placed`.
    fn abort(&mut self, task: TaskId, why: Failure) -> Vec<Effect> {
        let Some(m) = self.inflight.remove(&task) else {
            return Vec::new();
        };
        let mut effects = if m.stage == Stage::Live {
            resume_both(task, &m.from, &m.to, m.epoch)
        } else {
            Vec::new()
        };
        effects.push(Effect::Done {
            task,
            result: Err(why),
        });
        effects
    }

    /// The target's first instruction: remove the migration and report.
    fn finish(&mut self, task: TaskId, at_us: u64, fetched: u64, now: Millis) -> Vec<Effect> {
        let Some(m) = self.inflight.remove(&task) else {
            return Vec::new();
        };
        let downtime_ms = at_us.saturating_sub(m.paused_at_us) as f64 / 1000.0;
        let mut phases = m.phases;
        if !phases.is_empty() {
            phases.push(("running".to_owned(), downtime_ms));
        }
        let report = MigrationReport {
            task,
            from: m.from,
            to: m.to.clone(),
            downtime_ms,
            total_ms: now.saturating_sub(m.began) as f64,
            precopy_bytes: m.precopy_bytes,
            delta_bytes: m.delta_bytes,
            resume_bytes: fetched,
            at_ms: at_us / 1000,
            phases_ms: phases,
        };
        let mut effects = vec![Effect::Done {
            task,
            result: Ok(report),
        }];
        if m.live {
            // Until the target's first checkpoint, a crash there would
            // resume from the last one the source stored. It runs at the
            // epoch `Placed` gave it.
            effects.push(send(
                &m.to,
                WorkerCommand::Checkpoint {
                    task,
                    epoch: m.epoch + 1,
                },
            ));
        }
        effects
    }
}

fn resume_both(task: TaskId, from: &NodeId, to: &NodeId, epoch: u64) -> Vec<Effect> {
    vec![
        send(from, WorkerCommand::Resume { task, epoch }),
        send(to, WorkerCommand::Resume { task, epoch }),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wmig_proto::Hash;

    use super::*;
    use crate::membership::{MembershipEvent, NodeInfo, Role};
    use crate::state::{CoordinatorConfig, Event};
    use crate::tasks::{Outcome, TaskOptions, TaskSpec};

    fn n(name: &str) -> NodeId {
        NodeId(name.into())
    }

    fn worker(name: &str, live: bool) -> NodeInfo {
        NodeInfo {
            name: n(name),
            role: Role::Worker,
            slots: 2,
            labels: BTreeMap::new(),
            addr: if live {
                format!("{name}.example:7000")
            } else {
                String::new()
            },
            pid: 1,
        }
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            bundle: Hash([7; 32]),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// What the live target `b` reports (unix µs on the workers' clocks).
    const READY: LiveReady = LiveReady {
        paused_at_us: 1_000_000,
        captured_us: 500,
        received_at_us: 1_001_000,
        applied_at_us: 1_001_500,
        precopy_bytes: 4 << 20,
        delta_bytes: 8192,
    };

    /// Task t-1 running on worker `a` (epoch 1) in a cluster of `a`, `b`
    /// and `c` (2 slots each; with live endpoints if `live`), plus what the
    /// server's driver keeps: the log of every event applied and the clock.
    struct Sim {
        coord: Coordinator,
        log: Vec<Event>,
        m: Migrations,
        task: TaskId,
        now: Millis,
    }

    impl Sim {
        fn new(live: bool) -> Sim {
            let mut coord = Coordinator::new(CoordinatorConfig::default());
            let mut log = Vec::new();
            for w in ["a", "b", "c"] {
                log.extend(coord.register(worker(w, live), 0).unwrap());
            }
            let (task, events) = coord.submit(spec(), &Placement::Pinned(n("a"))).unwrap();
            log.extend(events);
            Sim {
                coord,
                log,
                m: Migrations::default(),
                task,
                now: 0,
            }
        }

        fn owner(&self) -> (NodeId, u64) {
            let t = self.coord.task(self.task).unwrap();
            (t.owner.clone().unwrap(), t.epoch)
        }

        fn stage(&self) -> Stage {
            self.m.get(self.task).unwrap().stage()
        }

        fn start(&mut self, to: &str, precopy: bool) -> Vec<Effect> {
            self.m
                .start(&self.coord, self.task, &n(to), precopy, self.now)
                .unwrap()
        }

        /// `node` stores checkpoint `seq`; the driver logs it, then tells
        /// the core.
        fn checkpointed(&mut self, node: &str, seq: u64) -> Vec<Effect> {
            let (task, epoch) = (self.task, self.owner().1);
            let events = self
                .coord
                .report_checkpoint(task, &n(node), epoch, seq, 0)
                .unwrap();
            self.log.extend(events);
            self.m.checkpointed(&n(node), task, epoch, seq)
        }

        /// `HandedOff` from `node`: the driver logs the final checkpoint and
        /// the move to the core's `handoff_target` together, then tells the
        /// core.
        fn handed_off(&mut self, node: &str, seq: u64, paused_at_us: u64) -> Vec<Effect> {
            let (task, epoch) = (self.task, self.owner().1);
            let to = self.m.handoff_target(&n(node), task);
            let mut events = self
                .coord
                .report_checkpoint(task, &n(node), epoch, seq, 0)
                .unwrap();
            events.extend(self.coord.hand_over(task, &to).unwrap());
            self.log.extend(events);
            self.m
                .handed_off(&self.coord, &n(node), task, paused_at_us, 512)
        }

        fn ready(&mut self, node: &str) -> Result<Vec<Effect>, Refusal> {
            self.m
                .live_ready(&self.coord, &n(node), self.task, 1, READY)
        }

        /// `LiveReady` from `b`: the one move to log.
        fn place(&mut self) -> Place {
            match self.ready("b").unwrap().as_slice() {
                [Effect::Place(p)] => p.clone(),
                other => panic!("{other:?}"),
            }
        }

        /// The driver's commit of a live move: check, apply, log.
        fn commit(&mut self, p: &Place) -> Result<(), String> {
            p.check(&self.coord).map_err(|e| e.to_string())?;
            let event = self
                .coord
                .move_exactly(p.task, &p.to)
                .map_err(|e| e.to_string())?;
            self.log.push(event);
            Ok(())
        }

        fn started(&mut self, node: &str, at_us: u64) -> Vec<Effect> {
            self.m.started(&n(node), self.task, at_us, 100, self.now)
        }

        /// `victim` falls silent: the failure detector declares it offline
        /// 5 s later (recovering its tasks), then the driver tells the core.
        fn offline(&mut self, victim: &str) -> Vec<Effect> {
            let t = self.now + 5_000;
            for w in ["a", "b", "c"].into_iter().filter(|w| *w != victim) {
                let events = self.coord.heartbeat(&n(w), t - 1).unwrap();
                self.log.extend(events);
            }
            self.now = t;
            let events = self.coord.tick(t);
            assert!(events.contains(&Event::Node(MembershipEvent::Offline(n(victim)))));
            self.log.extend(events);
            self.m.node_offline(&self.coord, &n(victim))
        }
    }

    fn to(node: &str, command: WorkerCommand) -> Effect {
        send(&n(node), command)
    }

    /// `Resume` at epoch 1 to the source `a` and the target `b`.
    fn resume_both(task: TaskId) -> Vec<Effect> {
        super::resume_both(task, &n("a"), &n("b"), 1)
    }

    /// The error the waiters get from `effects`' one `Done`.
    fn failure(effects: &[Effect]) -> &Failure {
        let done: Vec<&Failure> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Done { result: Err(f), .. } => Some(f),
                Effect::Done { result: Ok(r), .. } => panic!("moved: {r:?}"),
                _ => None,
            })
            .collect();
        assert_eq!(done.len(), 1, "{effects:?}");
        done[0]
    }

    fn places_or_drops(effects: &[Effect]) -> bool {
        effects.iter().any(|e| {
            matches!(
                e,
                Effect::Place(_)
                    | Effect::Send {
                        command: WorkerCommand::Drop { .. },
                        ..
                    }
            )
        })
    }

    #[test]
    fn the_registry_path_with_a_precopy_moves_the_task_and_reports_its_downtime() {
        let mut s = Sim::new(false);
        let t = s.task;
        s.now = 1_000;
        assert_eq!(
            s.start("b", true),
            vec![to("a", WorkerCommand::Migrate { task: t, epoch: 1 })]
        );
        assert_eq!(s.stage(), Stage::PreCopy);
        assert_eq!(s.m.next_deadline(), Some(61_000));
        // Only the source's checkpoint at its epoch is the pre-copy.
        assert!(s.m.checkpointed(&n("c"), t, 1, 1).is_empty());
        assert!(s.m.checkpointed(&n("a"), t, 2, 1).is_empty());
        assert_eq!(
            s.checkpointed("a", 1),
            vec![to("b", WorkerCommand::Prefetch { task: t, seq: 1 })]
        );
        assert_eq!(s.stage(), Stage::Prefetch);
        assert!(s.checkpointed("a", 2).is_empty(), "one pre-copy");
        assert!(s.m.prefetched(&n("c"), t, 1).is_empty());
        assert_eq!(
            s.m.prefetched(&n("b"), t, 4096),
            vec![to("a", WorkerCommand::Handoff { task: t, epoch: 1 })]
        );
        assert_eq!(s.stage(), Stage::Handoff);
        assert_eq!(s.m.handoff_target(&n("a"), t), n("b"));
        assert_eq!(s.m.handoff_target(&n("c"), t), n("c"), "not its migration");
        assert!(s.handed_off("a", 3, 5_000_000).is_empty());
        assert_eq!(s.owner(), (n("b"), 2));
        assert_eq!(s.stage(), Stage::Resuming);
        s.now = 1_750;
        assert!(s.started("a", 5_004_000).is_empty(), "not the new owner");
        assert_eq!(
            s.started("b", 5_004_250),
            vec![Effect::Done {
                task: t,
                result: Ok(MigrationReport {
                    task: t,
                    from: n("a"),
                    to: n("b"),
                    downtime_ms: 4.25,
                    total_ms: 750.0,
                    precopy_bytes: 4096,
                    delta_bytes: 512,
                    resume_bytes: 100,
                    at_ms: 5_004,
                    phases_ms: Vec::new(),
                }),
            }]
        );
        assert!(s.m.is_empty());
        assert_eq!(s.m.next_deadline(), None);
        assert!(s.started("b", 5_004_250).is_empty(), "done once");
    }

    #[test]
    fn a_cold_registry_migration_hands_off_at_once_and_follows_the_task_where_it_went() {
        let mut s = Sim::new(false);
        let t = s.task;
        assert_eq!(
            s.start("b", false),
            vec![to("a", WorkerCommand::Handoff { task: t, epoch: 1 })]
        );
        assert_eq!(s.stage(), Stage::Handoff);
        assert!(s.checkpointed("a", 1).is_empty(), "no pre-copy is due");
        // `b` fills up meanwhile: the handoff goes to another worker.
        for _ in 0..2 {
            let (_, events) = s.coord.submit(spec(), &Placement::Pinned(n("b"))).unwrap();
            s.log.extend(events);
        }
        assert!(s.handed_off("a", 2, 7_000_000).is_empty());
        assert_eq!(s.owner(), (n("c"), 2));
        assert_eq!(s.m.get(t).unwrap().to(), &n("c"));
        assert!(s.started("b", 7_001_000).is_empty());
        s.now = 40;
        let report = match s.started("c", 7_001_000).as_slice() {
            [Effect::Done {
                result: Ok(report), ..
            }] => report.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (report.to, report.downtime_ms, report.total_ms),
            (n("c"), 1.0, 40.0)
        );
        assert_eq!((report.precopy_bytes, report.delta_bytes), (0, 512));
    }

    #[test]
    fn the_live_path_places_only_once_the_target_is_ready_then_drops_the_source() {
        let mut s = Sim::new(true);
        let t = s.task;
        s.now = 1_000;
        assert_eq!(
            s.start("b", true),
            vec![
                to(
                    "b",
                    WorkerCommand::Expect {
                        task: t,
                        epoch: 1,
                        from: n("a"),
                        spec: spec(),
                        options: TaskOptions::default(),
                    }
                ),
                to(
                    "a",
                    WorkerCommand::LiveMigrate {
                        task: t,
                        epoch: 1,
                        to: n("b"),
                        addr: "b.example:7000".into(),
                        precopy: true,
                    }
                ),
            ]
        );
        assert_eq!(s.stage(), Stage::Live);
        // Only the target, at the source's epoch, may say it is ready.
        for (node, epoch) in [("c", 1), ("a", 1), ("b", 2)] {
            assert_eq!(
                s.m.live_ready(&s.coord, &n(node), t, epoch, READY),
                Err(Refusal::NotWaiting {
                    task: t,
                    epoch,
                    node: n(node)
                })
            );
        }
        assert!(s.started("b", 1).is_empty(), "not placed yet");
        s.now = 1_300;
        let place = Place {
            task: t,
            from: n("a"),
            to: n("b"),
            epoch: 1,
        };
        assert_eq!(s.ready("b").unwrap(), vec![Effect::Place(place.clone())]);
        assert_eq!(s.stage(), Stage::Placing);
        // A repeated `LiveReady` (a retried report) places nothing twice.
        assert!(matches!(s.ready("b"), Err(Refusal::NotWaiting { .. })));
        assert_eq!(
            s.owner(),
            (n("a"), 1),
            "nothing is logged before the commit"
        );
        s.commit(&place).unwrap();
        assert_eq!(s.owner(), (n("b"), 2));
        assert_eq!(
            s.m.placed(&place, Ok(()), 1_002_000),
            vec![to("a", WorkerCommand::Drop { task: t, epoch: 1 })]
        );
        assert_eq!(s.stage(), Stage::Resuming);
        s.now = 1_320;
        let report = MigrationReport {
            task: t,
            from: n("a"),
            to: n("b"),
            downtime_ms: 3.0,
            total_ms: 320.0,
            precopy_bytes: 4 << 20,
            delta_bytes: 8192,
            resume_bytes: 100,
            at_ms: 1_003,
            phases_ms: [
                ("captured", 0.5),
                ("transferred", 1.0),
                ("applied", 1.5),
                ("placed", 2.0),
                ("running", 3.0),
            ]
            .into_iter()
            .map(|(p, ms)| (p.to_owned(), ms))
            .collect(),
        };
        assert_eq!(
            s.started("b", 1_003_000),
            vec![
                Effect::Done {
                    task: t,
                    result: Ok(report),
                },
                // Checkpointed at once, at the epoch `Placed` gave it.
                to("b", WorkerCommand::Checkpoint { task: t, epoch: 2 }),
            ]
        );
        assert!(s.m.is_empty());

        // Back, cold: the source is told not to pre-copy.
        let effects = s.start("a", false);
        assert!(
            matches!(
                &effects[1],
                Effect::Send {
                    command: WorkerCommand::LiveMigrate {
                        epoch: 2,
                        precopy: false,
                        ..
                    },
                    ..
                }
            ),
            "{effects:?}"
        );
    }

    #[test]
    fn a_start_reported_before_the_outcome_of_placed_completes_the_migration_then() {
        let mut s = Sim::new(true);
        let t = s.task;
        s.start("b", true);
        let place = s.place();
        s.commit(&place).unwrap();
        // The target got its `Run` and started before the driver reported
        // the commit back.
        s.now = 30;
        assert!(s.started("b", 1_003_000).is_empty());
        s.now = 31;
        let effects = s.m.placed(&place, Ok(()), 1_002_000);
        assert_eq!(effects.len(), 3, "{effects:?}");
        assert_eq!(
            effects[0],
            to("a", WorkerCommand::Drop { task: t, epoch: 1 })
        );
        let Effect::Done {
            result: Ok(report), ..
        } = &effects[1]
        else {
            panic!("{effects:?}");
        };
        assert_eq!((report.downtime_ms, report.total_ms), (3.0, 30.0));
        assert_eq!(report.phases_ms.len(), 5);
        assert_eq!(
            effects[2],
            to("b", WorkerCommand::Checkpoint { task: t, epoch: 2 })
        );
        assert!(s.m.is_empty());
    }

    #[test]
    fn bad_migrations_are_refused_and_start_nothing() {
        let mut s = Sim::new(false);
        let t = s.task;
        let refused = |s: &mut Sim, task: TaskId, to: &str| {
            let e = s.m.start(&s.coord, task, &n(to), true, 0).unwrap_err();
            assert!(s.m.is_empty(), "{e}");
            e
        };
        let e = refused(&mut s, TaskId(99), "b");
        assert_eq!(e, Refusal::UnknownTask { task: TaskId(99) });
        assert_eq!(
            e.to_string(),
            "unknown task t-99: see `wmig ps` for task ids"
        );
        let e = refused(&mut s, t, "a");
        assert_eq!(e.to_string(), "task t-1 already runs on a");
        let e = refused(&mut s, t, "z");
        assert!(
            matches!(e, Refusal::Target(PlacementError::UnknownWorker { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("unknown worker `z`"), "{e}");
        let (done, events) = s.coord.submit(spec(), &Placement::Pinned(n("a"))).unwrap();
        s.log.extend(events);
        let outcome = Outcome::Completed { exit_code: 0 };
        let events = s
            .coord
            .report_finished(done, &n("a"), 1, outcome, 0)
            .unwrap();
        s.log.extend(events);
        assert_eq!(
            refused(&mut s, done, "b").to_string(),
            "task t-2 is completed; only a running task can migrate"
        );
        s.log.extend(s.coord.drain(&n("c")).unwrap());
        assert!(refused(&mut s, t, "c").to_string().contains("draining"));
        for _ in 0..2 {
            let (_, events) = s.coord.submit(spec(), &Placement::Pinned(n("b"))).unwrap();
            s.log.extend(events);
        }
        let e = refused(&mut s, t, "b");
        assert!(e.to_string().contains("is full (2/2 slots busy)"), "{e}");
        s.offline("b");
        let e = refused(&mut s, t, "b");
        assert!(e.to_string().contains("worker `b` is offline"), "{e}");
        s.log.extend(s.coord.uncordon(&n("c")).unwrap());
        s.start("c", true);
        assert_eq!(
            s.m.start(&s.coord, t, &n("b"), true, 0)
                .unwrap_err()
                .to_string(),
            "task t-1 is already migrating from a to c"
        );
        assert_eq!(s.m.len(), 1);
    }

    #[test]
    fn a_registry_migration_ends_when_its_source_or_target_goes_offline() {
        // The source, during the pre-copy: the task is recovered elsewhere.
        let mut s = Sim::new(false);
        let t = s.task;
        s.start("b", true);
        let effects = s.offline("a");
        let (owner, epoch) = s.owner();
        assert_eq!(epoch, 2, "recovered");
        assert_eq!(
            effects,
            vec![Effect::Done {
                task: t,
                result: Err(Failure::NodeOffline {
                    task: t,
                    node: n("a"),
                    now_on: owner.0.clone(),
                }),
            }]
        );
        assert_eq!(
            failure(&effects).to_string(),
            format!("worker a went offline during the migration of t-1; it now runs on {owner}")
        );
        assert!(s.m.is_empty());

        // The target, once the source was told to hand off: the handoff
        // that still comes goes back to the source.
        let mut s = Sim::new(false);
        s.start("b", true);
        s.checkpointed("a", 1);
        s.m.prefetched(&n("b"), t, 10);
        let effects = s.offline("b");
        assert_eq!(
            failure(&effects).to_string(),
            "worker b went offline during the migration of t-1; it now runs on a"
        );
        assert_eq!(effects.len(), 1, "nothing to release: {effects:?}");
        assert_eq!(s.m.handoff_target(&n("a"), t), n("a"));
        assert!(s.handed_off("a", 2, 1).is_empty());
        assert_eq!(s.owner(), (n("a"), 2));
    }

    #[test]
    fn a_live_migration_ends_when_either_side_goes_offline_and_both_are_released() {
        for (victim, now_on) in [("a", None), ("b", Some("a"))] {
            let mut s = Sim::new(true);
            let t = s.task;
            s.start("b", true);
            let effects = s.offline(victim);
            let now_on = now_on.map_or_else(|| s.owner().0 .0, str::to_owned);
            let mut expected = resume_both(t);
            expected.push(Effect::Done {
                task: t,
                result: Err(Failure::NodeOffline {
                    task: t,
                    node: n(victim),
                    now_on,
                }),
            });
            assert_eq!(effects, expected);
            assert!(s.m.is_empty());
            assert!(
                matches!(s.ready("b"), Err(Refusal::NotWaiting { .. })),
                "a late LiveReady is refused"
            );
        }
    }

    #[test]
    fn live_failed_from_either_side_releases_both() {
        for side in ["a", "b"] {
            let mut s = Sim::new(true);
            let t = s.task;
            s.start("b", true);
            // Not from this migration: a bystander, another epoch.
            assert!(s.m.live_failed(&n("c"), t, 1, "stale").is_empty());
            assert!(s.m.live_failed(&n(side), t, 2, "stale").is_empty());
            assert!(s.m.live_failed(&n(side), TaskId(9), 1, "stale").is_empty());
            let effects = s.m.live_failed(&n(side), t, 1, "connection lost");
            assert_eq!(effects[..2], resume_both(t)[..]);
            assert_eq!(
                failure(&effects).to_string(),
                format!(
                    "the live migration of t-1 failed on {side}: connection lost; it carries on where it was"
                )
            );
            assert!(s.m.is_empty());
            assert_eq!(s.owner(), (n("a"), 1));
        }
    }

    #[test]
    fn once_the_target_is_ready_only_the_outcome_of_placed_decides() {
        let mut s = Sim::new(true);
        let t = s.task;
        s.now = 1_000;
        s.start("b", true);
        let place = s.place();
        // Failure reports tell nobody to carry on.
        assert!(s.m.live_failed(&n("a"), t, 1, "late").is_empty());
        assert!(s.m.live_failed(&n("b"), t, 1, "late").is_empty());
        assert!(s.m.handoff_failed(&n("a"), t, 1, "late").is_empty());
        assert_eq!(s.stage(), Stage::Placing);
        // The timeout answers the operator, and resumes nobody.
        assert!(s.m.tick(60_999).is_empty());
        let effects = s.m.tick(61_000);
        assert_eq!(
            effects,
            vec![Effect::Done {
                task: t,
                result: Err(Failure::TimedOut {
                    task: t,
                    after: Duration::from_secs(60),
                }),
            }]
        );
        assert_eq!(
            failure(&effects).to_string(),
            "task t-1 did not finish migrating within 60s; see `wmig ps` for where it runs now"
        );
        // The commit lands after all: the source drops the task.
        s.commit(&place).unwrap();
        assert_eq!(
            s.m.placed(&place, Ok(()), 1_002_000),
            vec![to("a", WorkerCommand::Drop { task: t, epoch: 1 })]
        );
        assert!(s.started("b", 1_003_000).is_empty(), "answered once");
        assert_eq!(s.owner(), (n("b"), 2));

        // The target goes offline while `Placed` is being logged: no
        // `Resume` yet; the commit fails (it is offline), then both are.
        let mut s = Sim::new(true);
        s.start("b", true);
        let place = s.place();
        let effects = s.offline("b");
        assert_eq!(effects.len(), 1, "{effects:?}");
        assert!(matches!(failure(&effects), Failure::NodeOffline { .. }));
        let why = s.commit(&place).unwrap_err();
        assert!(why.contains("offline"), "{why}");
        assert_eq!(s.m.placed(&place, Err(why), 0), resume_both(t));
        assert_eq!(s.owner(), (n("a"), 1));

        // The source goes offline and its task is recovered before the
        // commit: the commit must not move it a second time.
        let mut s = Sim::new(true);
        s.start("b", true);
        let place = s.place();
        let effects = s.offline("a");
        assert_eq!(effects.len(), 1, "{effects:?}");
        let recovered = s.owner();
        assert_eq!(recovered.1, 2);
        assert_eq!(
            place.check(&s.coord),
            Err(Refusal::NoLongerOnSource {
                task: t,
                from: n("a")
            })
        );
        let why = s.commit(&place).unwrap_err();
        assert_eq!(s.m.placed(&place, Err(why), 0), resume_both(t));
        assert_eq!(s.owner(), recovered, "placed once");
    }

    #[test]
    fn a_commit_that_fails_resumes_both_and_names_the_target() {
        let mut s = Sim::new(true);
        let t = s.task;
        s.start("b", true);
        let place = s.place();
        let effects =
            s.m.placed(&place, Err("the event log is full".into()), 1_002_000);
        let mut expected = resume_both(t);
        expected.push(Effect::Done {
            task: t,
            result: Err(Failure::PlaceFailed {
                task: t,
                to: n("b"),
                reason: "the event log is full".into(),
            }),
        });
        assert_eq!(effects, expected);
        assert_eq!(
            failure(&effects).to_string(),
            "could not place t-1 on b: the event log is full; it carries on where it was"
        );
        assert_eq!(s.owner(), (n("a"), 1));
        assert!(s.m.is_empty());
        assert!(matches!(s.ready("b"), Err(Refusal::NotWaiting { .. })));
        assert!(s.started("b", 1).is_empty());

        // The outcome of an old migration's commit does not touch a newer
        // migration of the same task.
        s.start("c", true);
        let effects = s.m.placed(&place, Err("late".into()), 0);
        assert_eq!(effects, resume_both(t));
        assert_eq!(s.stage(), Stage::Live);
        assert_eq!(s.m.get(t).unwrap().to(), &n("c"));
    }

    #[test]
    fn the_timeout_releases_only_a_live_migration_not_yet_ready() {
        // Live, still streaming: both are released.
        let mut s = Sim::new(true);
        let t = s.task;
        s.now = 500;
        s.start("b", true);
        assert_eq!(s.m.next_deadline(), Some(60_500));
        let mut expected = resume_both(t);
        expected.push(Effect::Done {
            task: t,
            result: Err(Failure::TimedOut {
                task: t,
                after: Duration::from_secs(60),
            }),
        });
        assert_eq!(s.m.tick(60_500), expected);
        assert!(s.m.is_empty());

        // Registry path, at every stage: only the operator hears of it.
        let stages: [fn(&mut Sim); 4] = [
            |_| {},
            |s| {
                s.checkpointed("a", 1);
            },
            |s| {
                s.checkpointed("a", 1);
                s.m.prefetched(&n("b"), s.task, 1);
            },
            |s| {
                s.checkpointed("a", 1);
                s.m.prefetched(&n("b"), s.task, 1);
                s.handed_off("a", 2, 1);
            },
        ];
        for (i, reach) in stages.into_iter().enumerate() {
            let mut s = Sim::new(false);
            s.start("b", true);
            reach(&mut s);
            let effects = s.m.tick(MIGRATION_TIMEOUT);
            assert_eq!(effects.len(), 1, "stage {i}: {effects:?}");
            assert!(matches!(failure(&effects), Failure::TimedOut { .. }));
            assert!(s.m.is_empty());
        }

        // Each migration has its own deadline.
        let mut s = Sim::new(false);
        let (other, events) = s.coord.submit(spec(), &Placement::Pinned(n("a"))).unwrap();
        s.log.extend(events);
        s.start("b", true);
        s.m.start(&s.coord, other, &n("c"), true, 10_000).unwrap();
        assert_eq!(s.m.next_deadline(), Some(60_000));
        let effects = s.m.tick(60_000);
        assert!(matches!(
            failure(&effects),
            Failure::TimedOut { task, .. } if *task == s.task
        ));
        assert_eq!(s.m.next_deadline(), Some(70_000));
        assert!(s.m.contains(other));
    }

    #[test]
    fn a_failed_handoff_ends_only_the_migration_it_belongs_to() {
        let mut s = Sim::new(false);
        let t = s.task;
        s.start("b", true);
        assert!(
            s.m.handoff_failed(&n("a"), t, 1, "stale").is_empty(),
            "no handoff asked for yet"
        );
        s.checkpointed("a", 1);
        s.m.prefetched(&n("b"), t, 1);
        assert!(s.m.handoff_failed(&n("c"), t, 1, "stale").is_empty());
        assert!(s.m.handoff_failed(&n("a"), t, 2, "stale").is_empty());
        let effects = s.m.handoff_failed(&n("a"), t, 1, "registry unreachable");
        assert_eq!(
            effects,
            vec![Effect::Done {
                task: t,
                result: Err(Failure::HandoffFailed {
                    task: t,
                    node: n("a"),
                    reason: "registry unreachable".into(),
                }),
            }]
        );
        assert_eq!(
            failure(&effects).to_string(),
            "a could not store the final checkpoint of t-1 (registry unreachable); it carries on there"
        );
        assert!(s.m.is_empty());
        assert_eq!(s.owner(), (n("a"), 1));
    }

    /// The coordinator restarts: its state is the replay of what was logged
    /// and its migrations are gone. Exactly one worker owns the task, and
    /// every report of the old migration that still arrives is harmless.
    fn restart_and_check(s: &Sim, owner: &str, epoch: u64) {
        let t = s.task;
        let coord = Coordinator::replay(CoordinatorConfig::default(), &s.log, 100_000);
        assert_eq!(coord.snapshot(), s.coord.snapshot(), "the log holds it all");
        let task = coord.task(t).unwrap();
        assert_eq!(
            (task.state, task.owner.clone(), task.epoch),
            (TaskState::Running, Some(n(owner)), epoch)
        );
        let holders: Vec<NodeId> = coord
            .nodes()
            .map(|w| w.info.name.clone())
            .filter(|w| coord.task_table().running_on(w).any(|x| x.id == t))
            .collect();
        assert_eq!(holders, vec![n(owner)], "exactly one owner");

        let mut m = Migrations::default();
        let mut effects = Vec::new();
        effects.extend(m.checkpointed(&n("a"), t, 1, 9));
        effects.extend(m.prefetched(&n("b"), t, 1));
        assert_eq!(m.handoff_target(&n("a"), t), n("a"));
        effects.extend(m.handed_off(&coord, &n("a"), t, 1, 1));
        effects.extend(m.handoff_failed(&n("a"), t, 1, "late"));
        effects.extend(m.live_failed(&n("a"), t, 1, "late"));
        effects.extend(m.live_failed(&n("b"), t, 1, "late"));
        // The target must forget what arrived.
        assert_eq!(
            m.live_ready(&coord, &n("b"), t, 1, READY),
            Err(Refusal::NotWaiting {
                task: t,
                epoch: 1,
                node: n("b")
            })
        );
        effects.extend(m.started(&n("b"), t, 2_000_000, 0, 100_000));
        effects.extend(m.tick(10_000_000));
        assert!(!places_or_drops(&effects), "{effects:?}");
        assert!(effects.is_empty(), "{effects:?}");
        assert!(m.is_empty());
        // And the operator may start over.
        assert!(m.start(&coord, t, &n("c"), true, 100_000).is_ok());
    }

    #[test]
    fn a_coordinator_restart_at_any_stage_leaves_one_owner_the_log_names() {
        // Registry path: the source owns the task until the handoff is
        // logged.
        let mut s = Sim::new(false);
        let t = s.task;
        restart_and_check(&s, "a", 1);
        s.start("b", true);
        restart_and_check(&s, "a", 1);
        s.checkpointed("a", 1);
        restart_and_check(&s, "a", 1);
        s.m.prefetched(&n("b"), t, 1);
        restart_and_check(&s, "a", 1);
        {
            // The source was told to hand off; restarted, the coordinator
            // sends its handoff back to it.
            let mut r = Sim {
                coord: Coordinator::replay(CoordinatorConfig::default(), &s.log, 100_000),
                log: s.log.clone(),
                m: Migrations::default(),
                task: t,
                now: 0,
            };
            assert!(r.handed_off("a", 2, 1).is_empty());
            assert_eq!(r.owner(), (n("a"), 2));
            restart_and_check(&r, "a", 2);
        }
        s.handed_off("a", 2, 1);
        restart_and_check(&s, "b", 2);
        s.started("b", 2);
        restart_and_check(&s, "b", 2);

        // Live path: the source owns it until `Placed` is logged.
        let mut s = Sim::new(true);
        s.start("b", true);
        restart_and_check(&s, "a", 1);
        let place = s.place();
        restart_and_check(&s, "a", 1);
        s.commit(&place).unwrap();
        restart_and_check(&s, "b", 2);
        s.m.placed(&place, Ok(()), 1);
        restart_and_check(&s, "b", 2);
        s.started("b", 2);
        restart_and_check(&s, "b", 2);
    }
}
