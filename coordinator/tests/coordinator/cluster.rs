//! A simulated cluster driven through the `Coordinator` API, quinn-style:
//! workers heartbeat on their own schedules, the harness jumps straight to the
//! next heartbeat or deadline, and hours pass in milliseconds.

use wmig_coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorError, Event, Liveness, MembershipConfig,
    MembershipEvent, Outcome, Placement, PlacementError, Role, TaskState,
};
use wmig_proto::NodeId;

use crate::{id, node, spec};

struct Sim {
    c: Coordinator,
    now: u64,
    /// (name, heartbeat period, alive until)
    nodes: Vec<(NodeId, u64, u64)>,
    log: Vec<(u64, Event)>,
}

impl Sim {
    fn new(timeout: u64) -> Self {
        let config = CoordinatorConfig {
            membership: MembershipConfig {
                offline_timeout: timeout,
            },
            placement_seed: 1,
            ..CoordinatorConfig::default()
        };
        Sim {
            c: Coordinator::new(config),
            now: 0,
            nodes: Vec::new(),
            log: Vec::new(),
        }
    }

    fn join(&mut self, name: &str, role: Role, slots: u32, period: u64, until: u64) {
        let events = self
            .c
            .register(node(name, role, slots, 1), self.now)
            .unwrap();
        self.record(events);
        self.nodes.push((id(name), period, until));
    }

    fn record(&mut self, events: Vec<Event>) {
        let now = self.now;
        self.log.extend(events.into_iter().map(|e| (now, e)));
    }

    /// Advance to `end`, one heartbeat or deadline at a time.
    fn run_until(&mut self, end: u64) {
        loop {
            let next_beat = self
                .nodes
                .iter()
                .filter(|(_, _, until)| *until > self.now)
                .map(|(_, period, _)| (self.now / period + 1) * period)
                .min()
                .unwrap_or(u64::MAX);
            let next = next_beat.min(self.c.next_deadline().unwrap_or(u64::MAX));
            if next > end {
                self.now = end;
                let events = self.c.tick(end);
                self.record(events);
                return;
            }
            self.now = next;
            let events = self.c.tick(next);
            self.record(events);
            let due: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, period, until)| next % period == 0 && next <= *until)
                .map(|(n, _, _)| n.clone())
                .collect();
            for n in due {
                let events = self.c.heartbeat(&n, next).unwrap();
                self.record(events);
            }
        }
    }
}

#[test]
fn a_killed_worker_goes_offline_at_timeout_and_loses_placements() {
    let mut sim = Sim::new(5_000);
    sim.join("w1", Role::Worker, 4, 1_000, u64::MAX);
    sim.join("w2", Role::Worker, 4, 1_000, 30_000); // SIGKILLed at 30 s
    sim.join("w3", Role::Worker, 4, 700, u64::MAX);
    sim.join("mon", Role::Monitor, 0, 1_000, u64::MAX);
    sim.run_until(2 * 3_600_000);
    let offline: Vec<_> = sim
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Event::Node(MembershipEvent::Offline(_))))
        .collect();
    assert_eq!(
        offline,
        vec![&(35_000, Event::Node(MembershipEvent::Offline(id("w2"))))]
    );
    assert_eq!(sim.c.node(&id("w2")).unwrap().liveness, Liveness::Offline);

    // Placement skips the dead worker; pinning to it is a clear error.
    for n in 0..8 {
        let (task, events) = sim.c.submit(spec(n), &Placement::RoundRobin).unwrap();
        sim.record(events);
        assert_ne!(sim.c.task(task).unwrap().owner, Some(id("w2")));
    }
    let err = sim
        .c
        .submit(spec(9), &Placement::Pinned(id("w2")))
        .unwrap_err();
    assert_eq!(
        err,
        CoordinatorError::Placement(PlacementError::WorkerOffline { name: id("w2") })
    );
    assert_eq!(
        err.to_string(),
        "worker `w2` is offline; pick an online worker or omit --on"
    );
    // Both survivors are now full (4 + 4): the next submission waits as
    // pending; pinned to a full worker it is refused instead.
    let err = sim
        .c
        .submit(spec(10), &Placement::Pinned(id("w1")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::Placement(PlacementError::WorkerFull { .. })
        ),
        "{err}"
    );
    let (queued, events) = sim.c.submit(spec(10), &Placement::LeastLoaded).unwrap();
    assert_eq!(events.len(), 1, "submitted, not placed: {events:?}");
    assert_eq!(sim.c.task(queued).unwrap().state, TaskState::Pending);
    assert!(sim.c.place_pending().is_empty(), "still no free slot");
    assert_eq!(
        sim.c.tasks().count(),
        9,
        "the refused pinned submission left no task behind"
    );

    // The restarted w2 (new pid) re-registers and gets work again.
    let events = sim
        .c
        .register(node("w2", Role::Worker, 4, 2), sim.now)
        .unwrap();
    assert!(matches!(
        events[..],
        [Event::Node(MembershipEvent::Recovered { .. })]
    ));
    // The queued task goes to the worker that came back.
    let placed = sim.c.place_pending();
    assert_eq!(placed.len(), 1);
    assert_eq!(sim.c.task(queued).unwrap().owner, Some(id("w2")));
    let (task, _) = sim.c.submit(spec(11), &Placement::LeastLoaded).unwrap();
    assert_eq!(sim.c.task(task).unwrap().owner, Some(id("w2")));
}

#[test]
fn full_lifecycle_through_the_coordinator() {
    let mut sim = Sim::new(5_000);
    sim.join("w", Role::Worker, 1, 1_000, u64::MAX);
    let (t, _) = sim.c.submit(spec(1), &Placement::LeastLoaded).unwrap();
    let w = id("w");
    sim.c.report_checkpoint(t, &w, 1, 1, 10).unwrap();
    sim.run_until(60_000);
    sim.c
        .report_finished(t, &w, 1, Outcome::Completed { exit_code: 7 }, 20)
        .unwrap();
    let task = sim.c.task(t).unwrap();
    assert_eq!(
        (task.state, task.exit_code, task.fuel_used),
        (TaskState::Completed, Some(7), 20)
    );
    // The slot is free again; a pending task can now be placed.
    let (p, _) = sim.c.submit_pending(spec(2));
    let drained = sim.c.drain(&w).unwrap();
    assert_eq!(drained.len(), 1);
    let err = sim.c.place(p, &Placement::LeastLoaded).unwrap_err();
    assert_eq!(
        err,
        CoordinatorError::Placement(PlacementError::NoFreeSlot { online: 1 })
    );
    sim.c.uncordon(&w).unwrap();
    sim.c.place(p, &Placement::LeastLoaded).unwrap();
    assert!(
        sim.c.place(p, &Placement::LeastLoaded).is_err(),
        "already running"
    );
    sim.c.cancel(p).unwrap();
    assert_eq!(sim.c.task(p).unwrap().state, TaskState::Cancelled);
    assert!(sim.c.task_table().load().is_empty());
}

#[test]
fn an_offline_worker_s_tasks_move_with_the_next_epoch_or_wait() {
    let mut sim = Sim::new(5_000);
    sim.join("w1", Role::Worker, 1, 1_000, 10_000);
    sim.join("w2", Role::Worker, 1, 1_000, u64::MAX);
    sim.join("w3", Role::Worker, 1, 1_000, u64::MAX);
    let (a, _) = sim.c.submit(spec(1), &Placement::Pinned(id("w1"))).unwrap();
    let (b, _) = sim.c.submit(spec(2), &Placement::Pinned(id("w2"))).unwrap();
    let (c, _) = sim.c.submit(spec(3), &Placement::Pinned(id("w3"))).unwrap();
    sim.c.report_checkpoint(a, &id("w1"), 1, 7, 70).unwrap();
    sim.run_until(20_000);
    // w1 went silent; w2 and w3 are full, so its task waits as pending
    // with its checkpoint, and w1 is fenced out.
    let t = sim.c.task(a).unwrap();
    assert_eq!(
        (t.state, t.owner.clone(), t.epoch, t.checkpoint_seq),
        (TaskState::Pending, None, 1, Some(7))
    );
    assert!(sim.c.report_checkpoint(a, &id("w1"), 1, 8, 80).is_err());
    // A slot frees up: the task resumes there at the next epoch.
    sim.c
        .report_finished(b, &id("w2"), 1, Outcome::Completed { exit_code: 0 }, 1)
        .unwrap();
    assert_eq!(sim.c.place_pending().len(), 1);
    let t = sim.c.task(a).unwrap();
    assert_eq!((t.owner.clone(), t.epoch), (Some(id("w2")), 2));
    // The other tasks never moved.
    assert_eq!(sim.c.task(c).unwrap().owner, Some(id("w3")));
    assert_eq!(sim.c.task(c).unwrap().epoch, 1);
}
