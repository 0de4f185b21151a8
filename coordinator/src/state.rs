//! The coordinator's state as a fold over [`Event`]s.
//!
//! [`Coordinator::apply`] is the only way state changes. Each command method
//! (`register`, `heartbeat`, `tick`, `submit`, `place`, `report_*`, `cancel`,
//! `drain`, `uncordon`) validates against the current state, applies the
//! events it decides on, and returns them for the caller to append to the
//! [`EventLog`](crate::EventLog). Replaying that log into a fresh coordinator
//! ([`Coordinator::replay`]) therefore reaches an identical [`Snapshot`].
//!
//! The caller must append the returned events before acknowledging the
//! command to anyone; if the append fails, memory is ahead of the disk and the
//! only safe move is to stop and replay (the server treats it as fatal).

use wmig_proto::{NodeId, TaskId};

use crate::membership::{
    Membership, MembershipConfig, MembershipError, MembershipEvent, Node, NodeInfo, NodeView,
};
use crate::placement::{Placement, PlacementError, Placer};
use crate::tasks::{Outcome, Task, TaskError, TaskEvent, TaskOptions, TaskSpec, TaskTable};
use crate::Millis;

pub use wmig_proto::wire::control::Event;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub membership: MembershipConfig,
    /// Seed for the `Random` placement policy.
    pub placement_seed: u64,
    /// How many times a task's worker may go offline while running it
    /// before the task fails instead of moving on (0: no limit). A task that
    /// crashes its worker (a host bug it triggers, memory the OS kills for)
    /// would otherwise take down one worker after another.
    pub crash_budget: u32,
}

/// Default of [`CoordinatorConfig::crash_budget`].
pub const DEFAULT_CRASH_BUDGET: u32 = 3;

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            membership: MembershipConfig::default(),
            placement_seed: 0,
            crash_budget: DEFAULT_CRASH_BUDGET,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoordinatorError {
    #[error("{what}: {size} bytes, over the {limit}-byte limit per task; pass large inputs as a file (--dir) instead")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("the node's name, labels and address take {size} bytes, over the {limit}-byte limit; register with fewer or shorter labels")]
    NodeTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything a replay must reproduce (heartbeat times and placement cursors
/// are volatile and excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: Vec<NodeView>,
    pub tasks: Vec<Task>,
    pub next_task_id: TaskId,
}

/// The most a task's args, env, name and directory list may take together.
/// A submission becomes one event-log record, which is capped at
/// [`crate::log::MAX_RECORD`]; refusing here, before anything is applied,
/// keeps an oversized request from ever reaching the log.
pub const MAX_SUBMISSION_BYTES: usize = 256 * 1024;

/// The most a node's name, labels and address may take: a registration is
/// one event-log record too.
pub const MAX_NODE_INFO_BYTES: usize = 16 * 1024;

/// Failure reasons longer than this are cut (and say so) before they are
/// logged: they come from workers, and the end of a task must never be
/// refused for its wording.
pub const MAX_REASON_BYTES: usize = 8 * 1024;

/// `reason`, cut at [`MAX_REASON_BYTES`] on a character boundary.
pub fn clip_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = reason.len();
        reason.truncate(cut);
        reason.push_str(&format!(" … (cut: {total} bytes in all)"));
    }
    reason
}

fn check_submission_size(spec: &TaskSpec, options: &TaskOptions) -> Result<(), CoordinatorError> {
    let args: usize = spec.args.iter().map(|a| a.len() + 8).sum();
    let env: usize = spec.env.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    let dirs: usize = options
        .dirs
        .iter()
        .map(|(h, g)| h.len() + g.len() + 16)
        .sum();
    let size = args + env + dirs + options.name.len();
    if size > MAX_SUBMISSION_BYTES {
        let what = if args >= env.max(dirs) {
            "the task's args"
        } else if env >= dirs {
            "the task's environment"
        } else {
            "the task's directory list"
        };
        return Err(CoordinatorError::TooLarge {
            what,
            size,
            limit: MAX_SUBMISSION_BYTES,
        });
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Coordinator {
    membership: Membership,
    tasks: TaskTable,
    placer: Placer,
    crash_budget: u32,
    /// Latest `now` seen, used as the heartbeat time of replayed joins.
    now: Millis,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Self {
        Coordinator {
            membership: Membership::new(config.membership),
            tasks: TaskTable::default(),
            placer: Placer::new(config.placement_seed),
            crash_budget: config.crash_budget,
            now: 0,
        }
    }

    /// Rebuild from a log's events; every online node gets a fresh timeout
    /// from `now` to heartbeat or re-register.
    pub fn replay<'a>(
        config: CoordinatorConfig,
        events: impl IntoIterator<Item = &'a Event>,
        now: Millis,
    ) -> Self {
        let mut c = Coordinator::new(config);
        c.now = now;
        for event in events {
            c.apply(event);
        }
        c.membership.resume(now);
        c
    }

    /// Fold one event into the state.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Node(e) => {
                // As `tick` counts it live: the tasks this node ran when it
                // was declared offline lost their worker once more.
                if let MembershipEvent::Offline(node) = e {
                    self.tasks.note_owner_lost(node);
                }
                self.membership.apply(e, self.now)
            }
            Event::Task(e) => self.tasks.apply(e),
        }
    }

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn node_events(&mut self, events: impl IntoIterator<Item = MembershipEvent>) -> Vec<Event> {
        // Membership commands already applied their events to the node table.
        events.into_iter().map(Event::Node).collect()
    }

    fn task_event(&mut self, event: TaskEvent) -> Event {
        self.tasks.apply(&event);
        Event::Task(event)
    }

    pub fn register(
        &mut self,
        info: NodeInfo,
        now: Millis,
    ) -> Result<Vec<Event>, CoordinatorError> {
        let size = info.name.0.len()
            + info.addr.len()
            + info
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        if size > MAX_NODE_INFO_BYTES {
            return Err(CoordinatorError::NodeTooLarge {
                size,
                limit: MAX_NODE_INFO_BYTES,
            });
        }
        self.advance(now);
        let event = self.membership.register(info, now)?;
        Ok(self.node_events(event))
    }

    pub fn heartbeat(
        &mut self,
        node: &NodeId,
        now: Millis,
    ) -> Result<Vec<Event>, CoordinatorError> {
        self.advance(now);
        let event = self.membership.heartbeat(node, now)?;
        Ok(self.node_events(event))
    }

    /// The SWIM membership says `node` is active (see
    /// [`crate::membership::Membership::swim_up`]).
    pub fn swim_up(&mut self, node: &NodeId, now: Millis) -> Vec<Event> {
        self.advance(now);
        let event = self.membership.swim_up(node, now);
        self.node_events(event)
    }

    /// The SWIM membership declared `node` down: [`Self::tick`] takes it
    /// offline and recovers its tasks.
    pub fn swim_down(&mut self, node: &NodeId) {
        self.membership.swim_down(node);
    }

    /// Run the failure detector; call at [`Self::next_deadline`]. Tasks of a
    /// worker declared offline move to other workers with the next epoch
    /// (they resume there from their last checkpoint), or wait as pending
    /// when no worker has a free slot.
    pub fn tick(&mut self, now: Millis) -> Vec<Event> {
        self.advance(now);
        let offline = self.membership.poll_timeouts(now);
        let mut events = Vec::new();
        for e in offline {
            let node = match &e {
                MembershipEvent::Offline(n) => Some(n.clone()),
                _ => None,
            };
            events.push(Event::Node(e));
            if let Some(node) = node {
                events.extend(self.recover_tasks_of(&node));
            }
        }
        events
    }

    fn recover_tasks_of(&mut self, node: &NodeId) -> Vec<Event> {
        let ids: Vec<TaskId> = self.tasks.running_on(node).map(|t| t.id).collect();
        self.tasks.note_owner_lost(node);
        let mut events = Vec::new();
        for id in ids {
            let lost = self.tasks.owners_lost(id);
            let budget = usize::try_from(self.crash_budget).unwrap_or(usize::MAX);
            let event = if budget > 0 && lost.len() >= budget {
                let nodes: Vec<&str> = lost.iter().map(|n| n.0.as_str()).collect();
                self.tasks.give_up(
                    id,
                    format!(
                        "its worker went offline {} times while running it ({}): the task may be \
                         crashing its workers, so it was stopped before it takes down more; see its \
                         output (`wmig logs {id}`) and the workers' logs, then submit it again \
                         (the coordinator's --crash-budget sets how many losses a task may cause)",
                        lost.len(),
                        nodes.join(", ")
                    ),
                )
            } else {
                match self.choose_worker(&Placement::LeastLoaded) {
                    Ok(worker) => self.tasks.reassign(id, worker),
                    Err(_) => self.tasks.requeue(id),
                }
            };
            if let Ok(event) = event {
                events.push(self.task_event(event));
            }
        }
        events
    }

    /// Move a running task to `worker` (the last step of a migration). If
    /// `worker` cannot take it any more, another worker is chosen; if none
    /// can, the task waits as pending.
    pub fn hand_over(
        &mut self,
        id: TaskId,
        worker: &NodeId,
    ) -> Result<Vec<Event>, CoordinatorError> {
        let worker = match self.choose_worker(&Placement::Pinned(worker.clone())) {
            Ok(w) => Ok(w),
            Err(_) => self.choose_worker(&Placement::LeastLoaded),
        };
        let event = match worker {
            Ok(w) => self.tasks.reassign(id, w)?,
            Err(_) => self.tasks.requeue(id)?,
        };
        Ok(vec![self.task_event(event)])
    }

    /// Move a running task to exactly `worker` (a live migration's target,
    /// which holds its state): refused if `worker` cannot take it now.
    pub fn move_exactly(&mut self, id: TaskId, worker: &NodeId) -> Result<Event, CoordinatorError> {
        let w = self.choose_worker(&Placement::Pinned(worker.clone()))?;
        let event = self.tasks.reassign(id, w)?;
        Ok(self.task_event(event))
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.membership.next_deadline()
    }

    pub fn drain(&mut self, node: &NodeId) -> Result<Vec<Event>, CoordinatorError> {
        let event = self.membership.drain(node)?;
        Ok(self.node_events(event))
    }

    /// Forget an offline node that owns no task any more.
    pub fn remove_node(&mut self, node: &NodeId) -> Result<Vec<Event>, CoordinatorError> {
        let online = self
            .membership
            .node(node)
            .is_some_and(|n| n.liveness == crate::membership::Liveness::Online);
        if online {
            return Err(
                crate::membership::MembershipError::StillOnline { name: node.clone() }.into(),
            );
        }
        let tasks = self.task_table().load().get(node).copied().unwrap_or(0);
        if tasks > 0 && self.membership.node(node).is_some() {
            return Err(crate::membership::MembershipError::HasTasks {
                name: node.clone(),
                tasks,
            }
            .into());
        }
        let event = self.membership.remove(node)?;
        Ok(self.node_events(Some(event)))
    }

    pub fn uncordon(&mut self, node: &NodeId) -> Result<Vec<Event>, CoordinatorError> {
        let event = self.membership.uncordon(node)?;
        Ok(self.node_events(event))
    }

    /// Which worker `policy` would choose now (advances round-robin/random).
    pub fn choose_worker(&mut self, policy: &Placement) -> Result<NodeId, CoordinatorError> {
        Ok(self
            .placer
            .choose(policy, &self.membership, self.tasks.load())?)
    }

    /// Submit a task and place it at once. When every online worker is busy
    /// and the policy is not pinned, the task is queued as pending instead,
    /// and [`Self::place_pending`] places it when a slot frees up. Any other
    /// placement failure records nothing and the error says why.
    pub fn submit(
        &mut self,
        spec: TaskSpec,
        policy: &Placement,
    ) -> Result<(TaskId, Vec<Event>), CoordinatorError> {
        self.submit_with(spec, TaskOptions::default(), policy)
    }

    /// [`Self::submit`] with per-task options.
    pub fn submit_with(
        &mut self,
        spec: TaskSpec,
        options: TaskOptions,
        policy: &Placement,
    ) -> Result<(TaskId, Vec<Event>), CoordinatorError> {
        check_submission_size(&spec, &options)?;
        let worker = match self.choose_worker(policy) {
            Ok(w) => Some(w),
            Err(CoordinatorError::Placement(PlacementError::NoFreeSlot { .. }))
                if !matches!(policy, Placement::Pinned(_)) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let id = self.tasks.next_id();
        let event = self.tasks.submit(spec, options);
        let mut events = vec![self.task_event(event)];
        if let Some(worker) = worker {
            let placed = self.tasks.place(id, worker)?;
            events.push(self.task_event(placed));
        }
        Ok((id, events))
    }

    /// Place queued tasks, oldest first, while an online worker has a free
    /// slot. Call after anything that may free a slot or add a worker.
    pub fn place_pending(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let Some(id) = self.tasks.pending().next() else {
                break;
            };
            let Ok(worker) = self.choose_worker(&Placement::LeastLoaded) else {
                break;
            };
            match self.tasks.place(id, worker) {
                Ok(placed) => events.push(self.task_event(placed)),
                // Not placeable (cannot happen for a pending task): stop
                // rather than spin on it.
                Err(_) => break,
            }
        }
        events
    }

    /// Record a task as pending without placing it.
    pub fn submit_pending(&mut self, spec: TaskSpec) -> (TaskId, Vec<Event>) {
        let id = self.tasks.next_id();
        let event = self.tasks.submit(spec, TaskOptions::default());
        (id, vec![self.task_event(event)])
    }

    /// Place a pending task.
    pub fn place(
        &mut self,
        id: TaskId,
        policy: &Placement,
    ) -> Result<Vec<Event>, CoordinatorError> {
        // Validate the task first so an unknown or running task is reported
        // as such, and the placer's cursor does not move for nothing.
        self.tasks.check_placeable(id)?;
        let worker = self.choose_worker(policy)?;
        let event = self.tasks.place(id, worker)?;
        Ok(vec![self.task_event(event)])
    }

    pub fn report_checkpoint(
        &mut self,
        id: TaskId,
        from: &NodeId,
        epoch: u64,
        seq: u64,
        fuel_used: u64,
    ) -> Result<Vec<Event>, CoordinatorError> {
        let event = self.tasks.checkpoint(id, from, epoch, seq, fuel_used)?;
        Ok(vec![self.task_event(event)])
    }

    pub fn report_finished(
        &mut self,
        id: TaskId,
        from: &NodeId,
        epoch: u64,
        outcome: Outcome,
        fuel_used: u64,
    ) -> Result<Vec<Event>, CoordinatorError> {
        let outcome = match outcome {
            Outcome::Failed { reason, exit_code } => Outcome::Failed {
                reason: clip_reason(reason),
                exit_code,
            },
            done => done,
        };
        let event = self.tasks.finish(id, from, epoch, outcome, fuel_used)?;
        Ok(vec![self.task_event(event)])
    }

    /// Cancel a pending or running task. For a running task the caller tells
    /// its owner (in the returned event's task record) to stop it.
    pub fn cancel(&mut self, id: TaskId) -> Result<Vec<Event>, CoordinatorError> {
        let event = self.tasks.cancel(id)?;
        Ok(vec![self.task_event(event)])
    }

    pub fn node(&self, name: &NodeId) -> Option<&Node> {
        self.membership.node(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.membership.nodes()
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.task(id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.tasks()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn task_table(&self) -> &TaskTable {
        &self.tasks
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.membership.views(),
            tasks: self.tasks.tasks().cloned().collect(),
            next_task_id: self.tasks.next_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wmig_proto::Hash;

    use super::*;
    use crate::membership::Role;
    use crate::tasks::TaskState;

    fn worker(name: &str, slots: u32) -> NodeInfo {
        NodeInfo {
            name: NodeId(name.into()),
            role: Role::Worker,
            slots,
            labels: BTreeMap::new(),
            addr: "127.0.0.1:1".into(),
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

    #[test]
    fn commands_return_exactly_the_events_they_applied() {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        let mut log = Vec::new();
        log.extend(c.register(worker("w", 2), 0).unwrap());
        let (t1, ev) = c.submit(spec(), &Placement::LeastLoaded).unwrap();
        assert_eq!(ev.len(), 2, "submitted + placed");
        log.extend(ev);
        log.extend(
            c.report_checkpoint(t1, &NodeId("w".into()), 1, 1, 5)
                .unwrap(),
        );
        log.extend(c.drain(&NodeId("w".into())).unwrap());
        log.extend(c.tick(5_000));
        log.extend(c.heartbeat(&NodeId("w".into()), 6_000).unwrap());
        log.extend(c.cancel(t1).unwrap());
        let replayed = Coordinator::replay(CoordinatorConfig::default(), &log, 6_000);
        assert_eq!(replayed.snapshot(), c.snapshot());
    }

    /// A task whose worker goes offline under it again and again is failed
    /// at the budget's third loss, naming the workers, instead of being
    /// handed to the next one; a replay reaches the same decision.
    #[test]
    fn a_task_that_loses_its_worker_three_times_fails_instead_of_moving_on() {
        let config = CoordinatorConfig {
            membership: MembershipConfig {
                offline_timeout: 1_000,
            },
            ..CoordinatorConfig::default()
        };
        let mut c = Coordinator::new(config.clone());
        let mut log = Vec::new();
        let names = ["w1", "w2", "w3", "w4"];
        for n in names {
            log.extend(c.register(worker(n, 1), 0).unwrap());
        }
        let (t, ev) = c.submit(spec(), &Placement::LeastLoaded).unwrap();
        log.extend(ev);
        let mut now = 0;
        for loss in 1..=3 {
            let owner = c.task(t).unwrap().owner.clone().unwrap();
            // Everyone but the owner stays alive; the dead come back.
            now += 2_000;
            for n in names.iter().filter(|n| **n != owner.0) {
                let id = NodeId((*n).into());
                match c.heartbeat(&id, now - 500) {
                    Ok(ev) => log.extend(ev),
                    Err(_) => log.extend(c.register(worker(n, 1), now - 500).unwrap()),
                }
            }
            log.extend(c.tick(now));
            let task = c.task(t).unwrap();
            if loss < 3 {
                assert_eq!(task.state, TaskState::Running, "loss {loss}");
                assert_ne!(task.owner.as_ref(), Some(&owner));
            } else {
                assert_eq!(task.state, TaskState::Failed);
                let why = task.failure.clone().unwrap();
                assert!(why.contains("went offline 3 times"), "{why}");
                assert!(why.contains(&owner.0), "{why}");
            }
        }
        let replayed = Coordinator::replay(config, &log, now);
        assert_eq!(replayed.snapshot(), c.snapshot());

        // With no budget, the same task would just move on.
        let unlimited = CoordinatorConfig {
            crash_budget: 0,
            ..CoordinatorConfig::default()
        };
        let mut c = Coordinator::new(unlimited);
        c.register(worker("a", 1), 0).unwrap();
        c.register(worker("b", 1), 0).unwrap();
        let (t, _) = c.submit(spec(), &Placement::LeastLoaded).unwrap();
        let mut now = 0;
        for _ in 0..5 {
            let owner = c.task(t).unwrap().owner.clone().unwrap();
            let other = if owner.0 == "a" { "b" } else { "a" };
            now += 10_000;
            let _ = c.heartbeat(&NodeId(other.into()), now - 100);
            let _ = c.register(worker(other, 1), now - 100);
            c.tick(now);
            assert_eq!(c.task(t).unwrap().state, TaskState::Running);
        }
    }

    #[test]
    fn refused_commands_record_nothing() {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        let before = c.snapshot();
        assert!(matches!(
            c.submit(spec(), &Placement::LeastLoaded),
            Err(CoordinatorError::Placement(PlacementError::NoWorkersOnline))
        ));
        assert!(c.heartbeat(&NodeId("x".into()), 0).is_err());
        assert!(c.cancel(TaskId(1)).is_err());
        assert_eq!(c.snapshot(), before);
        // `place` reports the task problem before the placement problem.
        assert_eq!(
            c.place(TaskId(3), &Placement::LeastLoaded),
            Err(CoordinatorError::Task(TaskError::UnknownTask {
                id: TaskId(3)
            }))
        );
    }

    #[test]
    fn an_oversized_registration_is_refused_and_long_reasons_are_cut() {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        let before = c.snapshot();
        let mut big = worker("w", 1);
        for i in 0..100 {
            big.labels.insert(format!("label-{i}"), "v".repeat(200));
        }
        let e = c.register(big, 0).unwrap_err();
        assert!(matches!(e, CoordinatorError::NodeTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("fewer or shorter labels"), "{e}");
        assert_eq!(c.snapshot(), before, "nothing applied");

        c.register(worker("w", 1), 0).unwrap();
        let (t, _) = c.submit(spec(), &Placement::LeastLoaded).unwrap();
        let epoch = c.task(t).unwrap().epoch;
        let failed = Outcome::Failed {
            reason: "é".repeat(MAX_REASON_BYTES),
            exit_code: None,
        };
        let events = c
            .report_finished(t, &NodeId("w".into()), epoch, failed, 1)
            .unwrap();
        let reason = c.task(t).unwrap().failure.clone().unwrap();
        assert!(reason.len() < MAX_REASON_BYTES + 64, "{}", reason.len());
        assert!(reason.ends_with(&format!("(cut: {} bytes in all)", 2 * MAX_REASON_BYTES)));
        // What was applied is what is logged: a replay agrees.
        assert!(!events.is_empty());
    }

    #[test]
    fn an_oversized_submission_is_refused_before_anything_is_applied() {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        c.register(worker("w", 1), 0).unwrap();
        let before = c.snapshot();
        let mut big = spec();
        big.args = vec!["x".repeat(MAX_SUBMISSION_BYTES)];
        let e = c.submit(big, &Placement::LeastLoaded).unwrap_err();
        assert!(
            matches!(
                e,
                CoordinatorError::TooLarge {
                    what: "the task's args",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("limit"), "{e}");
        assert_eq!(c.snapshot(), before);
        // What fits under the limit also fits in one event-log record.
        let mut fits = spec();
        fits.args = vec!["x".repeat(MAX_SUBMISSION_BYTES - 1024)];
        let (_, events) = c.submit(fits, &Placement::LeastLoaded).unwrap();
        for e in &events {
            let len = postcard::to_allocvec(e).unwrap().len();
            assert!(len < crate::log::MAX_RECORD, "{len}");
        }
    }

    #[test]
    fn a_replayed_online_node_gets_a_grace_period_from_restart_time() {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        let log = c.register(worker("w", 1), 0).unwrap();
        let mut r = Coordinator::replay(CoordinatorConfig::default(), &log, 90_000);
        // Two offline timeouts (5 s each): noticing the restart, then as usual.
        assert_eq!(r.next_deadline(), Some(100_000));
        assert!(r.tick(99_999).is_empty());
        assert_eq!(
            r.tick(100_000),
            vec![Event::Node(MembershipEvent::Offline(NodeId("w".into())))]
        );
    }
}
