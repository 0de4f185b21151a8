//! SWIM membership through real processes: the coordinator learns who is
//! alive from the membership, so workers check in rarely, and a frozen
//! worker is declared down by its peers' probes rather than by silence.

use std::time::{Duration, Instant};

use wmig_tests::artifacts;

use crate::cluster::{local_stdout, wait_until, Up};
use crate::support::run;

/// One counter of the coordinator's `/metrics`.
fn metric(up: &Up, name: &str) -> u64 {
    let config = std::fs::read_to_string(up.dir.join("config.toml")).expect("config.toml");
    let http = config
        .lines()
        .find_map(|l| l.strip_prefix("http = "))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("http address in config.toml");
    let token = std::fs::read_to_string(up.dir.join("operator.token")).expect("token");
    let text = ureq::get(format!("http://{http}/metrics?token={}", token.trim()))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("wmig_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wmig_{name} in:\n{text}"))
}

fn online(up: &Up, worker: &str) -> bool {
    up.node(worker)["state"] == "online"
}

#[test]
fn workers_that_seldom_check_in_stay_online_and_a_frozen_one_is_found_by_its_peers() {
    // Three workers and a budget of one check-in every 2 s: each is told to
    // check in every 6 s, three times the 2 s offline timeout. Only the
    // membership can keep them online.
    let up = Up::start_with(3, &["--check-ins-per-sec", "0.5"]);
    wait_until("every member seen", Duration::from_secs(10), || {
        metric(&up, "gossip_members") >= 3
    });
    // The first check-ins come every heartbeat, until the first beacon.
    std::thread::sleep(Duration::from_secs(2));
    let before = metric(&up, "check_ins_total");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(8) {
        for w in ["worker-1", "worker-2", "worker-3"] {
            assert!(
                online(&up, w),
                "{w} went offline while it seldom checked in"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let check_ins = metric(&up, "check_ins_total") - before;
    // Heartbeating every 500 ms would be 48.
    assert!(
        check_ins <= 9,
        "{check_ins} check-ins in 8 s from 3 workers told to check in every 6 s"
    );

    // A frozen worker answers no probe: its peers declare it down and its
    // task resumes elsewhere; woken, it rejoins and drops the stale copy.
    let args = ["800000000"];
    let id = up.submit(artifacts::COUNTER, &["--checkpoint-every", "300ms"], &args);
    wait_until("a checkpoint", Duration::from_secs(30), || {
        !up.json(&["inspect", &id, "--json"])["checkpoint_seq"].is_null()
    });
    let owner = up.json(&["inspect", &id, "--json"])["owner"]
        .as_str()
        .expect("owner")
        .to_owned();
    let pid = up.node(&owner)["pid"].as_u64().expect("pid").to_string();
    let signal = |sig: &str| {
        assert!(run(std::process::Command::new("kill").args([sig, &pid]))
            .status
            .success())
    };
    signal("-STOP");
    wait_until(
        "the task moves off the frozen worker",
        Duration::from_secs(15),
        || up.json(&["inspect", &id, "--json"])["owner"] != owner.as_str(),
    );
    let log =
        std::fs::read_to_string(up.dir.join("logs").join("coordinator.log")).unwrap_or_default();
    assert!(
        log.contains("the SWIM membership declared it down"),
        "the coordinator's log does not say the membership found {owner} down"
    );
    signal("-CONT");
    wait_until(
        "the frozen worker is back online",
        Duration::from_secs(15),
        || online(&up, &owner),
    );
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        up.ok(&["logs", &id]),
        local_stdout(artifacts::COUNTER, &args)
    );
}
