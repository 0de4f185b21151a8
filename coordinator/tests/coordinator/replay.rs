//! Replay equivalence: whatever sequence of commands ran, reopening the log
//! and replaying it reaches the identical state — including across restarts
//! in the middle of the sequence.

use proptest::prelude::*;
use wmig_coordinator::{
    Coordinator, CoordinatorConfig, Event, EventLog, Outcome, Placement, Role, TaskState,
};
use wmig_proto::TaskId;

use crate::{id, node, spec};

const NAMES: [&str; 4] = ["a", "b", "c", "mon"];

#[derive(Clone, Debug)]
enum Cmd {
    Register { node: usize, slots: u32, pid: u32 },
    Heartbeat { node: usize },
    Advance { ms: u64 },
    Submit { policy: usize, pin: usize },
    SubmitPending,
    Place { task: u64, policy: usize },
    Checkpoint { task: u64, seq: u64, honest: bool },
    Finish { task: u64, ok: bool, honest: bool },
    Cancel { task: u64 },
    Drain { node: usize, on: bool },
    Restart,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        (0..4usize, 0..3u32, 0..2u32).prop_map(|(node, slots, pid)| Cmd::Register {
            node,
            slots,
            pid
        }),
        (0..4usize).prop_map(|node| Cmd::Heartbeat { node }),
        (0..7_000u64).prop_map(|ms| Cmd::Advance { ms }),
        (0..4usize, 0..4usize).prop_map(|(policy, pin)| Cmd::Submit { policy, pin }),
        Just(Cmd::SubmitPending),
        (0..8u64, 0..4usize).prop_map(|(task, policy)| Cmd::Place { task, policy }),
        (0..8u64, 0..5u64, any::<bool>()).prop_map(|(task, seq, honest)| Cmd::Checkpoint {
            task,
            seq,
            honest
        }),
        (0..8u64, any::<bool>(), any::<bool>()).prop_map(|(task, ok, honest)| Cmd::Finish {
            task,
            ok,
            honest
        }),
        (0..8u64).prop_map(|task| Cmd::Cancel { task }),
        (0..4usize, any::<bool>()).prop_map(|(node, on)| Cmd::Drain { node, on }),
        Just(Cmd::Restart),
    ]
}

fn policy(i: usize, pin: usize) -> Placement {
    match i {
        0 => Placement::LeastLoaded,
        1 => Placement::RoundRobin,
        2 => Placement::Random,
        _ => Placement::Pinned(id(NAMES[pin % NAMES.len()])),
    }
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig::default()
}

/// Run one command; `Ok(events)` must be appended, errors change nothing.
fn step(c: &mut Coordinator, cmd: &Cmd, now: &mut u64) -> Vec<Event> {
    let task_id = |t: u64| TaskId(1 + t);
    let owner = |c: &Coordinator, t: u64| {
        c.task(task_id(t))
            .and_then(|t| t.owner.clone().map(|o| (o, t.epoch)))
            .unwrap_or((id("a"), 0))
    };
    let result = match cmd {
        Cmd::Register {
            node: n,
            slots,
            pid,
        } => {
            let role = if NAMES[*n] == "mon" {
                Role::Monitor
            } else {
                Role::Worker
            };
            c.register(node(NAMES[*n], role, *slots, *pid), *now)
        }
        Cmd::Heartbeat { node } => c.heartbeat(&id(NAMES[*node]), *now),
        Cmd::Advance { ms } => {
            *now += ms;
            Ok(c.tick(*now))
        }
        Cmd::Submit { policy: p, pin } => c.submit(spec(*now), &policy(*p, *pin)).map(|(_, e)| e),
        Cmd::SubmitPending => Ok(c.submit_pending(spec(*now)).1),
        Cmd::Place { task, policy: p } => c.place(task_id(*task), &policy(*p, *task as usize)),
        Cmd::Checkpoint { task, seq, honest } => {
            let (o, e) = owner(c, *task);
            let e = if *honest { e } else { e + 1 };
            c.report_checkpoint(task_id(*task), &o, e, *seq, *seq * 10)
        }
        Cmd::Finish { task, ok, honest } => {
            let (o, e) = owner(c, *task);
            let o = if *honest { o } else { id("intruder") };
            let outcome = if *ok {
                Outcome::Completed { exit_code: 0 }
            } else {
                Outcome::Failed {
                    reason: "trap".into(),
                    exit_code: Some(134),
                }
            };
            c.report_finished(task_id(*task), &o, e, outcome, 99)
        }
        Cmd::Cancel { task } => c.cancel(task_id(*task)),
        Cmd::Drain { node, on: true } => c.drain(&id(NAMES[*node])),
        Cmd::Drain { node, on: false } => c.uncordon(&id(NAMES[*node])),
        Cmd::Restart => unreachable!("handled by the driver"),
    };
    result.unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn reopening_the_log_reaches_the_identical_state(cmds in prop::collection::vec(cmd(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, _) = EventLog::open(&path).unwrap();
        let mut c = Coordinator::new(config());
        let mut now = 0;
        let mut all = Vec::new();
        for cmd in &cmds {
            if let Cmd::Restart = cmd {
                drop(log);
                let (l, replay) = EventLog::open(&path).unwrap();
                log = l;
                prop_assert_eq!(&replay.events, &all);
                let restarted = Coordinator::replay(config(), &replay.events, now);
                prop_assert_eq!(restarted.snapshot(), c.snapshot());
                c = restarted;
                continue;
            }
            let events = step(&mut c, cmd, &mut now);
            log.append(&events).unwrap();
            all.extend(events);
            // Invariants that must hold after every command.
            for t in c.tasks() {
                // Pending tasks have no owner; a requeued one (its worker
                // died with no free slot elsewhere) keeps its epoch, so the
                // next placement still fences the old owner.
                if t.state == TaskState::Pending {
                    prop_assert_eq!(&t.owner, &None);
                }
            }
            for (worker, load) in c.task_table().load() {
                let running = c.task_table().running_on(worker).count() as u32;
                prop_assert_eq!(*load, running);
            }
        }
        drop(log);
        let (_, replay) = EventLog::open(&path).unwrap();
        prop_assert_eq!(replay.torn, None);
        let reopened = Coordinator::replay(config(), &replay.events, now);
        prop_assert_eq!(reopened.snapshot(), c.snapshot());
        // The fold is the same in memory as through the file.
        let folded = Coordinator::replay(config(), &all, now);
        prop_assert_eq!(folded.snapshot(), c.snapshot());
    }
}

#[test]
fn task_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let mut c = Coordinator::new(config());
    let (mut log, _) = EventLog::open(&path).unwrap();
    log.append(&c.register(node("a", Role::Worker, 8, 1), 0).unwrap())
        .unwrap();
    for n in 0..3 {
        let (_, events) = c.submit(spec(n), &Placement::LeastLoaded).unwrap();
        log.append(&events).unwrap();
    }
    drop(log);
    let (_, replay) = EventLog::open(&path).unwrap();
    let mut c = Coordinator::replay(config(), &replay.events, 1_000_000);
    let (next, _) = c.submit(spec(9), &Placement::LeastLoaded).unwrap();
    assert_eq!(next, TaskId(4));
    assert_eq!(next.to_string(), "t-4");
}
