//! Task records and their lifecycle.
//!
//! ```text
//! pending ──place──▶ running ──finish──▶ completed | failed
//!    │                  │
//!    └──── cancel ──────┴──────────────▶ cancelled
//! ```
//! `Migrating` is defined for the migration issue and not entered yet.
//!
//! Every placement bumps the task's `epoch`; reports from a worker must carry
//! the current owner and epoch, so a stale owner (one that was declared dead
//! and whose task moved on) cannot overwrite the new owner's progress.
//!
//! As in [`crate::membership`], commands validate and build a [`TaskEvent`],
//! and [`TaskTable::apply`] is the only code that changes a record.

use std::collections::{BTreeMap, BTreeSet};

use wmig_proto::{NodeId, TaskId};

pub use wmig_proto::wire::control::{Outcome, Task, TaskEvent, TaskOptions, TaskSpec, TaskState};

/// Why a task command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    #[error("unknown task {id}: see `wmig ps` for task ids")]
    UnknownTask { id: TaskId },
    #[error("task {id} is {state}; it cannot be {action}")]
    IllegalTransition {
        id: TaskId,
        state: TaskState,
        action: &'static str,
    },
    #[error("report for task {id} from `{from}` epoch {epoch} is stale: the task is owned by {owner} at epoch {current}")]
    StaleOwner {
        id: TaskId,
        from: NodeId,
        epoch: u64,
        owner: String,
        current: u64,
    },
    #[error("checkpoint {seq} of task {id} is not newer than checkpoint {latest}; checkpoint sequence numbers must increase")]
    CheckpointOutOfOrder { id: TaskId, seq: u64, latest: u64 },
}

/// All tasks, plus the next id and the per-worker load placement needs.
#[derive(Clone, Debug)]
pub struct TaskTable {
    tasks: BTreeMap<TaskId, Task>,
    next_id: u64,
    /// Running/migrating tasks per owner, maintained by `apply`.
    load: BTreeMap<NodeId, u32>,
    /// Tasks waiting for a slot, oldest first, maintained by `apply`.
    pending: BTreeSet<TaskId>,
    /// Workers that went offline while running each task, in order
    /// (maintained by [`TaskTable::note_owner_lost`]; the crash budget).
    lost: BTreeMap<TaskId, Vec<NodeId>>,
}

impl Default for TaskTable {
    fn default() -> Self {
        TaskTable {
            tasks: BTreeMap::new(),
            next_id: 1,
            load: BTreeMap::new(),
            pending: BTreeSet::new(),
            lost: BTreeMap::new(),
        }
    }
}

impl TaskTable {
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// The id the next submission gets. Ids never repeat, across restarts too,
    /// because `apply(Submitted)` moves this past every id in the log.
    pub fn next_id(&self) -> TaskId {
        TaskId(self.next_id)
    }

    pub fn load(&self) -> &BTreeMap<NodeId, u32> {
        &self.load
    }

    /// Tasks waiting for a free slot, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.pending.iter().copied()
    }

    /// Tasks currently occupying a slot on `worker`.
    pub fn running_on<'a>(&'a self, worker: &'a NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.state.occupies_slot() && t.owner.as_ref() == Some(worker))
    }

    pub fn submit(&self, spec: TaskSpec, options: TaskOptions) -> TaskEvent {
        TaskEvent::SubmittedV4 {
            id: self.next_id(),
            spec,
            options,
        }
    }

    fn get(&self, id: TaskId) -> Result<&Task, TaskError> {
        self.tasks.get(&id).ok_or(TaskError::UnknownTask { id })
    }

    /// Whether `id` exists and is pending, i.e. may be placed.
    pub fn check_placeable(&self, id: TaskId) -> Result<&Task, TaskError> {
        let task = self.get(id)?;
        if task.state != TaskState::Pending {
            return Err(illegal(task, "placed"));
        }
        Ok(task)
    }

    /// Hand a pending task to `worker` (eligibility is the placer's job).
    pub fn place(&self, id: TaskId, worker: NodeId) -> Result<TaskEvent, TaskError> {
        let task = self.check_placeable(id)?;
        Ok(TaskEvent::Placed {
            id,
            worker,
            epoch: task.epoch + 1,
        })
    }

    /// Move a running task to another worker (migration or recovery): a
    /// placement with the next epoch, which fences the old owner.
    pub fn reassign(&self, id: TaskId, worker: NodeId) -> Result<TaskEvent, TaskError> {
        let task = self.get(id)?;
        if !task.state.occupies_slot() {
            return Err(illegal(task, "moved"));
        }
        Ok(TaskEvent::Placed {
            id,
            worker,
            epoch: task.epoch + 1,
        })
    }

    /// Take a running task off its worker and queue it as pending.
    pub fn requeue(&self, id: TaskId) -> Result<TaskEvent, TaskError> {
        let task = self.get(id)?;
        if !task.state.occupies_slot() {
            return Err(illegal(task, "requeued"));
        }
        Ok(TaskEvent::Requeued { id })
    }

    fn check_owner(&self, id: TaskId, from: &NodeId, epoch: u64) -> Result<&Task, TaskError> {
        let task = self.get(id)?;
        if task.owner.as_ref() != Some(from) || task.epoch != epoch {
            return Err(TaskError::StaleOwner {
                id,
                from: from.clone(),
                epoch,
                owner: task
                    .owner
                    .as_ref()
                    .map_or_else(|| "nobody".to_string(), |o| format!("`{o}`")),
                current: task.epoch,
            });
        }
        Ok(task)
    }

    pub fn checkpoint(
        &self,
        id: TaskId,
        from: &NodeId,
        epoch: u64,
        seq: u64,
        fuel_used: u64,
    ) -> Result<TaskEvent, TaskError> {
        let task = self.check_owner(id, from, epoch)?;
        if !task.state.occupies_slot() {
            return Err(illegal(task, "checkpointed"));
        }
        if let Some(latest) = task.checkpoint_seq.filter(|latest| seq <= *latest) {
            return Err(TaskError::CheckpointOutOfOrder { id, seq, latest });
        }
        Ok(TaskEvent::Checkpointed { id, seq, fuel_used })
    }

    pub fn finish(
        &self,
        id: TaskId,
        from: &NodeId,
        epoch: u64,
        outcome: Outcome,
        fuel_used: u64,
    ) -> Result<TaskEvent, TaskError> {
        let task = self.check_owner(id, from, epoch)?;
        if !task.state.occupies_slot() {
            return Err(illegal(task, "finished"));
        }
        Ok(TaskEvent::Finished {
            id,
            outcome,
            fuel_used,
        })
    }

    /// `worker` was declared offline: every task running on it lost its
    /// worker once more.
    pub fn note_owner_lost(&mut self, worker: &NodeId) {
        let ids: Vec<TaskId> = self.running_on(worker).map(|t| t.id).collect();
        for id in ids {
            self.lost.entry(id).or_default().push(worker.clone());
        }
    }

    /// The workers that went offline while running `id`, oldest first.
    pub fn owners_lost(&self, id: TaskId) -> &[NodeId] {
        self.lost.get(&id).map_or(&[], Vec::as_slice)
    }

    /// End a task whose worker is gone, with `reason` (the crash budget).
    pub fn give_up(&self, id: TaskId, reason: String) -> Result<TaskEvent, TaskError> {
        let task = self.get(id)?;
        if task.state.is_terminal() {
            return Err(illegal(task, "failed"));
        }
        Ok(TaskEvent::Finished {
            id,
            outcome: Outcome::Failed {
                reason,
                exit_code: None,
            },
            fuel_used: task.fuel_used,
        })
    }

    pub fn cancel(&self, id: TaskId) -> Result<TaskEvent, TaskError> {
        let task = self.get(id)?;
        if task.state.is_terminal() {
            return Err(illegal(task, "cancelled"));
        }
        Ok(TaskEvent::Cancelled { id })
    }

    fn release_slot(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        if !task.state.occupies_slot() {
            return;
        }
        if let Some(owner) = &task.owner {
            if let Some(n) = self.load.get_mut(owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.load.remove(owner);
                }
            }
        }
    }

    /// Perform one state change. Events that do not fit the current state
    /// are ignored: the log only holds events that were valid when written.
    fn insert(&mut self, id: TaskId, spec: &TaskSpec, options: &TaskOptions) {
        self.next_id = self.next_id.max(id.0.saturating_add(1));
        self.pending.insert(id);
        self.tasks.insert(
            id,
            Task {
                id,
                spec: spec.clone(),
                options: options.clone(),
                owner: None,
                epoch: 0,
                state: TaskState::Pending,
                checkpoint_seq: None,
                fuel_used: 0,
                exit_code: None,
                failure: None,
            },
        );
    }

    pub fn apply(&mut self, event: &TaskEvent) {
        match event {
            TaskEvent::Submitted { id, spec } => {
                self.insert(*id, spec, &TaskOptions::default());
            }
            TaskEvent::SubmittedWith { id, spec, options }
            | TaskEvent::SubmittedV3 { id, spec, options }
            | TaskEvent::SubmittedV4 { id, spec, options } => {
                self.insert(*id, spec, options);
            }
            TaskEvent::Placed { id, worker, epoch } => {
                self.release_slot(*id);
                self.pending.remove(id);
                if let Some(t) = self.tasks.get_mut(id) {
                    t.owner = Some(worker.clone());
                    t.epoch = *epoch;
                    t.state = TaskState::Running;
                    *self.load.entry(worker.clone()).or_insert(0) += 1;
                }
            }
            TaskEvent::Checkpointed { id, seq, fuel_used } => {
                if let Some(t) = self.tasks.get_mut(id) {
                    t.checkpoint_seq = Some(*seq);
                    t.fuel_used = *fuel_used;
                }
            }
            TaskEvent::Finished {
                id,
                outcome,
                fuel_used,
            } => {
                self.release_slot(*id);
                self.pending.remove(id);
                if let Some(t) = self.tasks.get_mut(id) {
                    t.fuel_used = *fuel_used;
                    match outcome {
                        Outcome::Completed { exit_code } => {
                            t.state = TaskState::Completed;
                            t.exit_code = Some(*exit_code);
                        }
                        Outcome::Failed { reason, exit_code } => {
                            t.state = TaskState::Failed;
                            t.exit_code = *exit_code;
                            t.failure = Some(reason.clone());
                        }
                    }
                }
            }
            TaskEvent::Requeued { id } => {
                self.release_slot(*id);
                if let Some(t) = self.tasks.get_mut(id) {
                    t.owner = None;
                    t.state = TaskState::Pending;
                    self.pending.insert(*id);
                }
            }
            TaskEvent::Cancelled { id } => {
                self.release_slot(*id);
                self.pending.remove(id);
                if let Some(t) = self.tasks.get_mut(id) {
                    t.state = TaskState::Cancelled;
                }
            }
        }
    }
}

fn illegal(task: &Task, action: &'static str) -> TaskError {
    TaskError::IllegalTransition {
        id: task.id,
        state: task.state,
        action,
    }
}

#[cfg(test)]
mod tests {
    use wmig_proto::Hash;

    use super::*;

    fn spec(n: u8) -> TaskSpec {
        TaskSpec {
            bundle: Hash([n; 32]),
            args: vec![format!("arg{n}")],
            env: BTreeMap::from([("K".to_string(), n.to_string())]),
        }
    }

    fn w(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    /// Run a command and apply its event, as the coordinator does.
    fn run(
        t: &mut TaskTable,
        cmd: impl FnOnce(&TaskTable) -> Result<TaskEvent, TaskError>,
    ) -> Result<(), TaskError> {
        let ev = cmd(t)?;
        t.apply(&ev);
        Ok(())
    }

    fn submitted(t: &mut TaskTable, n: u8) -> TaskId {
        let id = t.next_id();
        let ev = t.submit(spec(n), TaskOptions::default());
        t.apply(&ev);
        id
    }

    #[test]
    fn happy_path_pending_running_completed() {
        let mut t = TaskTable::default();
        let id = submitted(&mut t, 1);
        assert_eq!(id, TaskId(1));
        assert_eq!(t.task(id).map(|t| t.state), Some(TaskState::Pending));
        run(&mut t, |t| t.place(id, w("a"))).unwrap();
        assert_eq!(t.load().get(&w("a")), Some(&1));
        run(&mut t, |t| t.checkpoint(id, &w("a"), 1, 1, 500)).unwrap();
        run(&mut t, |t| t.checkpoint(id, &w("a"), 1, 2, 900)).unwrap();
        run(&mut t, |t| {
            t.finish(id, &w("a"), 1, Outcome::Completed { exit_code: 0 }, 1000)
        })
        .unwrap();
        let task = t.task(id).unwrap();
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(
            (
                task.owner.clone(),
                task.epoch,
                task.checkpoint_seq,
                task.fuel_used,
                task.exit_code
            ),
            (Some(w("a")), 1, Some(2), 1000, Some(0))
        );
        assert!(t.load().is_empty(), "slot released");
    }

    #[test]
    fn failure_records_reason_and_exit_code() {
        let mut t = TaskTable::default();
        let id = submitted(&mut t, 1);
        run(&mut t, |t| t.place(id, w("a"))).unwrap();
        let out = Outcome::Failed {
            reason: "fuel limit".into(),
            exit_code: None,
        };
        run(&mut t, |t| t.finish(id, &w("a"), 1, out, 7)).unwrap();
        let task = t.task(id).unwrap();
        assert_eq!(
            (task.state, task.failure.as_deref()),
            (TaskState::Failed, Some("fuel limit"))
        );
    }

    #[test]
    fn cancel_pending_and_running_but_not_finished() {
        let mut t = TaskTable::default();
        let pending = submitted(&mut t, 1);
        let running = submitted(&mut t, 2);
        run(&mut t, |t| t.place(running, w("a"))).unwrap();
        run(&mut t, |t| t.cancel(pending)).unwrap();
        run(&mut t, |t| t.cancel(running)).unwrap();
        assert!(t.load().is_empty());
        for id in [pending, running] {
            assert_eq!(t.task(id).map(|t| t.state), Some(TaskState::Cancelled));
            let err = t.cancel(id).unwrap_err();
            assert!(
                err.to_string()
                    .contains("is cancelled; it cannot be cancelled"),
                "{err}"
            );
        }
    }

    #[test]
    fn illegal_transitions_are_errors() {
        let mut t = TaskTable::default();
        let id = submitted(&mut t, 1);
        let illegal = |e: Result<TaskEvent, TaskError>| {
            assert!(
                matches!(e, Err(TaskError::IllegalTransition { .. })),
                "{e:?}"
            )
        };
        // Pending: nobody owns it, so reports are stale rather than illegal.
        assert!(matches!(
            t.finish(id, &w("a"), 0, Outcome::Completed { exit_code: 0 }, 0),
            Err(TaskError::StaleOwner { .. })
        ));
        run(&mut t, |t| t.place(id, w("a"))).unwrap();
        illegal(t.place(id, w("b")));
        run(&mut t, |t| {
            t.finish(id, &w("a"), 1, Outcome::Completed { exit_code: 3 }, 0)
        })
        .unwrap();
        illegal(t.place(id, w("b")));
        illegal(t.finish(id, &w("a"), 1, Outcome::Completed { exit_code: 3 }, 0));
        illegal(t.checkpoint(id, &w("a"), 1, 9, 0));
        illegal(t.cancel(id));
        assert_eq!(
            t.place(TaskId(99), w("a")),
            Err(TaskError::UnknownTask { id: TaskId(99) })
        );
        assert!(TaskError::UnknownTask { id: TaskId(99) }
            .to_string()
            .contains("t-99"));
    }

    #[test]
    fn stale_owner_and_checkpoint_order_are_refused() {
        let mut t = TaskTable::default();
        let id = submitted(&mut t, 1);
        run(&mut t, |t| t.place(id, w("a"))).unwrap();
        let err = t.checkpoint(id, &w("b"), 1, 1, 0).unwrap_err();
        assert!(err.to_string().contains("owned by `a` at epoch 1"), "{err}");
        assert!(matches!(
            t.checkpoint(id, &w("a"), 0, 1, 0),
            Err(TaskError::StaleOwner { .. })
        ));
        run(&mut t, |t| t.checkpoint(id, &w("a"), 1, 5, 0)).unwrap();
        assert_eq!(
            t.checkpoint(id, &w("a"), 1, 5, 0),
            Err(TaskError::CheckpointOutOfOrder {
                id,
                seq: 5,
                latest: 5
            })
        );
    }

    #[test]
    fn ids_are_monotonic_even_when_replayed_out_of_band() {
        let mut t = TaskTable::default();
        t.apply(&TaskEvent::Submitted {
            id: TaskId(41),
            spec: spec(0),
        });
        assert_eq!(t.next_id(), TaskId(42));
        t.apply(&TaskEvent::Submitted {
            id: TaskId(7),
            spec: spec(0),
        });
        assert_eq!(t.next_id(), TaskId(42));
        assert_eq!(submitted(&mut t, 1), TaskId(42));
        assert!(TaskState::Migrating.occupies_slot() && !TaskState::Migrating.is_terminal());
    }
}
