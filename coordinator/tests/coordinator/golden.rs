//! Golden event log: the version-1 format is frozen. If this test fails after
//! changing an event type, add a new record version instead of editing v1.

use std::collections::BTreeMap;
use std::path::PathBuf;

use wmig_coordinator::log::encode_record;
use wmig_coordinator::{Event, EventLog, MembershipEvent, Outcome, Role, TaskEvent};
use wmig_proto::TaskId;

use crate::{id, node, spec};

fn events() -> Vec<Event> {
    let mut labeled = node("w1", Role::Worker, 4, 7);
    labeled.labels = BTreeMap::from([("zone".to_string(), "eu".to_string())]);
    vec![
        Event::Node(MembershipEvent::Joined(labeled.clone())),
        Event::Node(MembershipEvent::Joined(node("mon", Role::Monitor, 0, 8))),
        Event::Task(TaskEvent::Submitted {
            id: TaskId(1),
            spec: spec(1),
        }),
        Event::Task(TaskEvent::Placed {
            id: TaskId(1),
            worker: id("w1"),
            epoch: 1,
        }),
        Event::Task(TaskEvent::Checkpointed {
            id: TaskId(1),
            seq: 3,
            fuel_used: 1_000_000,
        }),
        Event::Node(MembershipEvent::Offline(id("w1"))),
        Event::Node(MembershipEvent::Recovered {
            node: id("w1"),
            info: None,
        }),
        Event::Node(MembershipEvent::Recovered {
            node: id("w1"),
            info: Some(labeled),
        }),
        Event::Node(MembershipEvent::Drained(id("w1"))),
        Event::Node(MembershipEvent::Uncordoned(id("w1"))),
        Event::Task(TaskEvent::Finished {
            id: TaskId(1),
            outcome: Outcome::Completed { exit_code: 0 },
            fuel_used: 2_000_000,
        }),
        Event::Task(TaskEvent::Submitted {
            id: TaskId(2),
            spec: spec(2),
        }),
        Event::Task(TaskEvent::Finished {
            id: TaskId(2),
            outcome: Outcome::Failed {
                reason: "wall time limit".into(),
                exit_code: None,
            },
            fuel_used: 5,
        }),
        Event::Task(TaskEvent::Cancelled { id: TaskId(3) }),
    ]
}

#[test]
fn golden_v1_log_still_reads_and_encodes_identically() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-v1.log");
    let mut expected = b"WMIGLOG\x01".to_vec();
    for e in events() {
        expected.extend(encode_record(&e).unwrap());
    }
    if std::env::var_os("WMIG_BLESS").is_some() {
        // Only for creating a *new* golden file; never to paper over a change.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with WMIG_BLESS=1 once to create it",
            path.display()
        )
    });
    assert_eq!(golden, expected, "the v1 record encoding changed");
    let copy = tempfile::tempdir().unwrap();
    let copy = copy.path().join("events.log");
    std::fs::write(&copy, &golden).unwrap();
    let (_, replay) = EventLog::open(&copy).unwrap();
    assert_eq!(replay.events, events());
    assert_eq!(replay.torn, None);
}
