//! Strong migration and fault tolerance through real processes: tasks moved
//! between `wmig worker` processes with `wmig migrate` and `wmig drain`,
//! workers killed with SIGKILL or frozen with SIGSTOP while tasks run. In
//! every case the task's output (from `wmig logs`) must be byte-identical to
//! running the same module alone with `wmig run`.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;
use wmig_tests::artifacts;

use crate::cluster::{kill9, local_stdout, wait_until, Up};
use crate::support::{run, stderr};

/// Cluster settings for fault tests: a fast failure detector and frequent
/// checkpoints, so recoveries happen within the test's patience.
const FAST: &[&str] = &["--offline-timeout", "1s", "--checkpoint-every", "300ms"];

/// A counter long enough to be migrated many times (a few seconds).
const LONG: &str = "800000000";

fn task(up: &Up, id: &str) -> Value {
    up.json(&["inspect", id, "--json"])
}

fn pid_of(up: &Up, worker: &str) -> u64 {
    up.node(worker)["pid"].as_u64().expect("pid")
}

/// Worker processes a test restarted by hand; killed on drop.
#[derive(Default)]
struct Restarted(Vec<Child>);

impl Restarted {
    fn worker(&mut self, up: &Up, name: &str) {
        let child = up
            .cmd(&["worker", "--name", name, "--checkpoint-every", "300ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart a worker");
        self.0.push(child);
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn assert_same_as_local(up: &Up, id: &str, module: &str, args: &[&str]) {
    let o = run(&mut up.cmd(&["wait", id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
    assert_eq!(
        up.ok(&["logs", id]),
        local_stdout(module, args),
        "{id}: output differs from a local run"
    );
}

#[test]
fn a_task_migrated_ten_times_round_robin_matches_a_local_run() {
    let up = Up::start(3);
    let id = up.submit(artifacts::COUNTER, &[], &[LONG]);
    wait_until("the task prints", Duration::from_secs(30), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let workers = ["worker-1", "worker-2", "worker-3"];
    let first = task(&up, &id)["owner"].as_str().expect("owner").to_owned();
    let mut at = workers
        .iter()
        .position(|w| *w == first)
        .expect("known owner");
    for hop in 1..=10 {
        at = (at + 1) % workers.len();
        let to = workers[at];
        let report = up.json(&["migrate", &id, to, "--json"]);
        assert_eq!(report["to"], to, "hop {hop}: {report}");
        assert!(report["downtime_ms"].as_f64() > Some(0.0), "{report}");
        let t = task(&up, &id);
        assert_eq!(t["owner"], to);
        assert_eq!(t["epoch"], hop + 1, "every move is a new epoch: {t}");
    }
    assert_same_as_local(&up, &id, artifacts::COUNTER, &[LONG]);
}

/// On the registry path (workers started with `--listen off`): every other
/// migration test moves tasks straight between workers.
#[test]
fn drain_moves_every_task_and_bad_migrations_are_refused() {
    let timeout = format!("{}ms", crate::cluster::OFFLINE_TIMEOUT.as_millis());
    let up = Up::start_env(
        3,
        &["--offline-timeout", &timeout],
        &[("WMIG_WORKER_LISTEN", "off")],
    );
    assert_eq!(up.node("worker-1")["addr"], "", "no live endpoint");
    let a = up.submit(artifacts::COUNTER, &["--on", "worker-1"], &[LONG]);
    let b = up.submit(artifacts::SIEVE, &["--on", "worker-1"], &["60000000"]);
    for id in [&a, &b] {
        wait_until("running", Duration::from_secs(30), || {
            task(&up, id)["state"] == "running"
        });
    }
    let e = up.fails(&["migrate", &a, "worker-9"]);
    assert!(e.contains("unknown worker `worker-9`"), "{e}");
    let e = up.fails(&["migrate", &a, "worker-1"]);
    assert!(e.contains("already runs on worker-1"), "{e}");
    let e = up.fails(&["migrate", "t-999", "worker-2"]);
    assert!(e.contains("unknown task t-999"), "{e}");

    let out = up.ok(&["drain", "worker-1"]);
    assert_eq!(out.matches("moved ").count(), 2, "{out}");
    let w1 = up.node("worker-1");
    assert_eq!(
        (w1["draining"].as_bool(), w1["tasks"].as_u64()),
        (Some(true), Some(0))
    );
    for id in [&a, &b] {
        assert_ne!(task(&up, id)["owner"], "worker-1");
    }
    let e = up.fails(&["migrate", &a, "worker-1"]);
    assert!(e.contains("draining"), "{e}");

    assert_same_as_local(&up, &a, artifacts::COUNTER, &[LONG]);
    assert_same_as_local(&up, &b, artifacts::SIEVE, &["60000000"]);
    let e = up.fails(&["migrate", &a, "worker-2"]);
    assert!(
        e.contains("is completed; only a running task can migrate"),
        "{e}"
    );
    up.ok(&["uncordon", "worker-1"]);

    // An offline target is refused; the task stays where it was (and runs
    // long enough to still be running after worker-3 is seen offline).
    let c = up.submit(artifacts::COUNTER, &["--on", "worker-2"], &["80000000000"]);
    kill9(pid_of(&up, "worker-3"));
    wait_until("worker-3 offline", Duration::from_secs(10), || {
        up.node("worker-3")["state"] == "offline"
    });
    let e = up.fails(&["migrate", &c, "worker-3"]);
    assert!(e.contains("offline"), "{e}");
    assert_eq!(task(&up, &c)["owner"], "worker-2");
    up.ok(&["cancel", &c]);
}

#[test]
fn a_killed_worker_s_task_resumes_elsewhere_from_its_checkpoint() {
    let up = Up::start_with(3, FAST);
    let id = up.submit(artifacts::COUNTER, &[], &[LONG]);
    wait_until("a checkpoint", Duration::from_secs(30), || {
        !task(&up, &id)["checkpoint_seq"].is_null()
    });
    let owner = task(&up, &id)["owner"].as_str().expect("owner").to_owned();
    kill9(pid_of(&up, &owner));
    wait_until("the task moves", Duration::from_secs(10), || {
        let t = task(&up, &id);
        t["owner"] != owner.as_str() && t["epoch"] == 2
    });
    assert_same_as_local(&up, &id, artifacts::COUNTER, &[LONG]);
}

#[test]
fn chaos_twenty_tasks_survive_workers_killed_and_restarted() {
    // Workers killed from outside, not by their tasks: no crash budget.
    let up = Up::start_with(3, &[FAST, &["--crash-budget", "0"]].concat());
    let mut restarted = Restarted::default();
    let jobs: Vec<(&str, &str)> = (0..20)
        .map(|i| match i % 3 {
            0 => (artifacts::COUNTER, "150000000"),
            1 => (artifacts::SIEVE, "8000000"),
            _ => (artifacts::NBODY, "300000"),
        })
        .collect();
    let ids: Vec<String> = jobs
        .iter()
        .map(|(m, arg)| up.submit(m, &[], &[arg]))
        .collect();
    // Kill a worker every ~2.5 s (a fixed pseudo-random order), restart it
    // right away, until every task has ended (at most 8 kills).
    let mut x: u32 = 7;
    let mut kills = 0;
    let all_done = |up: &Up| {
        let ps = up.json(&["ps", "--json"]);
        ps.as_array().is_some_and(|a| {
            a.iter()
                .all(|t| t["state"] == "completed" || t["state"] == "failed")
        })
    };
    while kills < 8 && !all_done(&up) {
        std::thread::sleep(Duration::from_millis(2500));
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        let victim = format!("worker-{}", 1 + x % 3);
        if up.node(&victim)["state"] != "online" {
            continue;
        }
        kill9(pid_of(&up, &victim));
        kills += 1;
        wait_until("victim offline", Duration::from_secs(10), || {
            up.node(&victim)["state"] == "offline"
        });
        restarted.worker(&up, &victim);
    }
    assert!(kills >= 1, "the tasks ended before any worker was killed");
    for ((module, arg), id) in jobs.iter().zip(&ids) {
        assert_same_as_local(&up, id, module, &[arg]);
    }
}

#[test]
fn a_frozen_worker_is_fenced_when_it_wakes_up() {
    let up = Up::start_with(3, FAST);
    let id = up.submit(artifacts::COUNTER, &[], &[LONG]);
    wait_until("a checkpoint", Duration::from_secs(30), || {
        !task(&up, &id)["checkpoint_seq"].is_null()
    });
    let owner = task(&up, &id)["owner"].as_str().expect("owner").to_owned();
    let pid = pid_of(&up, &owner).to_string();
    assert!(
        run(std::process::Command::new("kill").args(["-STOP", &pid]))
            .status
            .success()
    );
    wait_until(
        "the task moves off the frozen worker",
        Duration::from_secs(10),
        || task(&up, &id)["owner"] != owner.as_str(),
    );
    let new_owner = task(&up, &id)["owner"].clone();
    assert!(
        run(std::process::Command::new("kill").args(["-CONT", &pid]))
            .status
            .success()
    );
    wait_until(
        "the frozen worker is back online",
        Duration::from_secs(10),
        || up.node(&owner)["state"] == "online",
    );
    // The stale owner is told to drop the task: its log says so, and the
    // task stays with its new owner.
    let log = up.dir.join("logs").join(format!("{owner}.log"));
    wait_until(
        "the stale owner drops the task",
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("dropping")),
    );
    assert_eq!(task(&up, &id)["owner"], new_owner);
    assert_same_as_local(&up, &id, artifacts::COUNTER, &[LONG]);
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f[11] + f[12]
}

/// A worker that cannot reach the coordinator stops its tasks itself
/// before the coordinator could run them elsewhere: with the coordinator
/// frozen (SIGSTOP), the owner's task stops burning CPU within the offline
/// timeout. Once the coordinator wakes, the task finishes exactly once.
#[test]
fn a_worker_cut_off_from_the_coordinator_pauses_its_tasks_itself() {
    let up = Up::start(2);
    let coordinator = up.pid_of("coordinator").to_string();
    // CPU-bound for well over the time the coordinator is frozen.
    let args = ["3000000000"];
    let id = up.submit(artifacts::COUNTER, &[], &args);
    wait_until("the task prints", Duration::from_secs(60), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let owner = task(&up, &id)["owner"].as_str().expect("owner").to_owned();
    let pid = pid_of(&up, &owner);
    let signal = |sig: &str| {
        assert!(
            run(std::process::Command::new("kill").args([sig, &coordinator]))
                .status
                .success()
        )
    };
    signal("-STOP");
    // Offline timeout 2 s: fenced after 1.5 s without an answer.
    std::thread::sleep(Duration::from_millis(2500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let burnt = cpu_ticks(pid) - before;
    signal("-CONT");
    // One busy core would be ~300 ticks (at 100 per second).
    assert!(
        burnt < 60,
        "the cut-off worker kept running its task: {burnt} ticks in 3 s"
    );
    let log = up.dir.join("logs").join(format!("{owner}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("self-fencing"), "{owner}'s log says why");
    assert_same_as_local(&up, &id, artifacts::COUNTER, &args);
}

/// A task asleep in one long `thread::sleep` (blocked in `poll_oneoff`)
/// moves at once, and its sleep continues on the target with the time that
/// was left: the run takes as long as an unmigrated one, prints the same.
#[test]
fn a_task_asleep_in_a_wasi_call_migrates_at_once_and_sleeps_on_for_the_time_left() {
    let up = Up::start(2);
    // 8 MiB filled, then one 6 s sleep, then a short compute phase.
    let args = ["8", "2000", "6"];
    let submitted = std::time::Instant::now();
    let id = up.submit(artifacts::HOLDMEM, &["--on", "worker-1"], &args);
    wait_until("holdmem fills its memory", Duration::from_secs(60), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let asleep = submitted.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let report = up.json(&["migrate", &id, "worker-2", "--json"]);
    let took = started.elapsed();
    assert_eq!(report["to"], "worker-2", "{report}");
    assert!(
        took < Duration::from_secs(4),
        "migrating a sleeping task took {took:?}; it should not wait for the 6 s sleep"
    );
    assert_eq!(task(&up, &id)["owner"], "worker-2");
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
    let total = submitted.elapsed();
    // 6 s of sleep in all: not cut short by the move, not restarted by it.
    assert!(
        total >= asleep + Duration::from_millis(5500) && total < asleep + Duration::from_secs(9),
        "asleep after {asleep:?}, finished after {total:?}, for a 6 s sleep"
    );
    assert_eq!(
        up.ok(&["logs", &id]),
        local_stdout(artifacts::HOLDMEM, &args),
        "output differs from a local run"
    );
}

/// A task that keeps rewriting scattered pages moves live, straight from
/// worker to worker: the pre-copy carries its whole memory, the pause only
/// the pages written since the last round; a cold move carries it all in
/// the pause. A target that does not answer
/// (frozen) fails the move with an error naming it, and the task runs on
/// where it was; the output is the same as an unmoved run.
#[test]
fn a_task_that_keeps_writing_moves_live_and_a_frozen_target_leaves_it_running() {
    let up = Up::start(3);
    let addr = up.node("worker-2")["addr"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "workers serve live migrations where they reach the coordinator from: {addr:?}"
    );
    // 16 MiB, 60,000 scattered page writes at ~5,000 per second.
    let args = ["16", "60000", "0", "5000"];
    let id = up.submit(artifacts::HOLDMEM, &["--on", "worker-1"], &args);
    wait_until("holdmem fills its memory", Duration::from_secs(60), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let report = up.json(&["migrate", &id, "worker-2", "--json"]);
    assert_eq!(report["to"], "worker-2", "{report}");
    let before = report["precopy_bytes"].as_u64().expect("precopy bytes");
    let after = report["delta_bytes"].as_u64().expect("delta bytes");
    assert!(
        before >= 16 << 20,
        "the pre-copy sends the whole 16 MiB before the pause: {report}"
    );
    assert!(
        after < before / 2,
        "the pause carries only the pages written since the last round: {report}"
    );
    let phases: Vec<&str> = report["phases_ms"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        ["captured", "transferred", "applied", "placed", "running"],
        "the report says where the downtime went: {report}"
    );
    assert_eq!(task(&up, &id)["owner"], "worker-2");
    let cold = up.json(&["migrate", &id, "worker-1", "--no-precopy", "--json"]);
    assert_eq!(cold["precopy_bytes"], 0, "{cold}");
    assert!(
        cold["delta_bytes"].as_u64() >= Some(16 << 20),
        "a cold move carries all of memory in the pause (in pieces): {cold}"
    );

    let frozen = pid_of(&up, "worker-3").to_string();
    let signal = |sig: &str| {
        assert!(run(std::process::Command::new("kill").args([sig, &frozen]))
            .status
            .success());
    };
    signal("-STOP");
    let o = run(&mut up.cmd(&["migrate", &id, "worker-3"]));
    signal("-KILL");
    assert_ne!(
        o.status.code(),
        Some(0),
        "a frozen target cannot take the task"
    );
    assert!(
        stderr(&o).contains("worker-3"),
        "the error names the target: {}",
        stderr(&o)
    );
    assert_eq!(
        task(&up, &id)["owner"],
        "worker-1",
        "the task stays where it was"
    );
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &args);
}

/// A cluster whose workers stall at a live-migration fault point
/// (`WMIG_FAULT`, see `worker/src/live.rs`).
fn up_with_fault(workers: u32, fault: &str) -> Up {
    let timeout = format!("{}ms", crate::cluster::OFFLINE_TIMEOUT.as_millis());
    Up::start_env(
        workers,
        &["--offline-timeout", &timeout],
        &[("WMIG_FAULT", fault)],
    )
}

/// Start `wmig migrate ID TO` in the background and wait until `stalled`
/// (a worker) has reached its fault point.
fn migrate_until_stalled(up: &Up, id: &str, to: &str, stalled: &str) -> Child {
    let child = up
        .cmd(&["migrate", id, to])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wmig migrate");
    let log = up.dir.join("logs").join(format!("{stalled}.log"));
    wait_until(
        &format!("{stalled} stalls at its fault point"),
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("fault injection: stalling")),
    );
    child
}

/// 16 MiB, 40,000 scattered page writes at ~5,000 per second (~8 s).
const WRITER: [&str; 4] = ["16", "40000", "0", "5000"];

fn submit_writer(up: &Up) -> String {
    let id = up.submit(artifacts::HOLDMEM, &["--on", "worker-1"], &WRITER);
    wait_until("holdmem fills its memory", Duration::from_secs(60), || {
        task(up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    id
}

/// The target dies (SIGKILL) in the middle of the pre-copy: the move fails
/// with an error naming it, the task runs on at the source, unharmed.
#[test]
fn a_target_killed_mid_transfer_leaves_the_task_running_at_the_source() {
    let up = up_with_fault(3, "live-target-after-round");
    let id = submit_writer(&up);
    let migrate = migrate_until_stalled(&up, &id, "worker-2", "worker-2");
    kill9(pid_of(&up, "worker-2"));
    let o = migrate.wait_with_output().expect("wmig migrate");
    assert!(!o.status.success(), "the move cannot succeed");
    assert!(stderr(&o).contains("worker-2"), "{}", stderr(&o));
    assert_eq!(task(&up, &id)["owner"], "worker-1");
    assert_eq!(task(&up, &id)["epoch"], 1, "ownership never changed");
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &WRITER);
}

/// The source dies (SIGKILL) after pausing for good, before the target has
/// the final state: the move fails, the task is recovered from its last
/// checkpoint on another worker, and its output is still that of an
/// unmoved run: nothing lost, nothing twice.
#[test]
fn a_source_killed_after_the_pause_is_recovered_with_nothing_lost() {
    let up = up_with_fault(3, "live-source-after-pause");
    let id = submit_writer(&up);
    let migrate = migrate_until_stalled(&up, &id, "worker-2", "worker-1");
    kill9(pid_of(&up, "worker-1"));
    let o = migrate.wait_with_output().expect("wmig migrate");
    assert!(!o.status.success(), "the move cannot succeed");
    assert!(stderr(&o).contains("worker-1"), "{}", stderr(&o));
    wait_until("the task is recovered", Duration::from_secs(30), || {
        let t = task(&up, &id);
        t["owner"] != "worker-1" && t["state"] == "running"
    });
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &WRITER);
}

/// The coordinator dies (SIGKILL) while the source is paused for good and
/// the move is undecided. Restarted, it knows nothing of the migration:
/// the source carries on with the task (its replayed `Run`), the target's
/// `LiveReady` is refused and it forgets what arrived; one owner, the same
/// output.
#[test]
fn a_coordinator_killed_mid_migration_leaves_one_owner() {
    let up = up_with_fault(3, "live-source-after-pause:5");
    let id = submit_writer(&up);
    let migrate = migrate_until_stalled(&up, &id, "worker-2", "worker-1");
    kill9(u64::from(up.pid_of("coordinator")));
    let o = migrate.wait_with_output().expect("wmig migrate");
    assert!(
        !o.status.success(),
        "the operator learns the move did not finish"
    );
    let _restarted = up.restart_coordinator();
    let target_log = up.dir.join("logs").join("worker-2.log");
    wait_until(
        "the target's LiveReady is refused",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&target_log)
                .is_ok_and(|l| l.contains("coordinator refused a report"))
        },
    );
    assert_eq!(task(&up, &id)["owner"], "worker-1");
    assert_eq!(task(&up, &id)["epoch"], 1, "ownership never changed");
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &WRITER);
}

/// Draining a worker whose tasks are all asleep in one long call moves
/// them at once (it does not wait for them to wake up), and each sleeps on
/// elsewhere for the time it had left.
#[test]
fn draining_a_worker_whose_tasks_all_sleep_moves_them_at_once() {
    let up = Up::start(2);
    let args = ["4", "1000", "8"];
    let ids: Vec<String> = (0..2)
        .map(|_| up.submit(artifacts::HOLDMEM, &["--on", "worker-1"], &args))
        .collect();
    for id in &ids {
        wait_until("holdmem is asleep", Duration::from_secs(60), || {
            task(&up, id)["stdout_bytes"].as_u64() > Some(0)
        });
    }
    let started = std::time::Instant::now();
    let o = run(&mut up.cmd(&["drain", "worker-1"]));
    let took = started.elapsed();
    assert!(o.status.success(), "drain: {}", stderr(&o));
    assert!(
        took < Duration::from_secs(5),
        "draining two sleeping tasks took {took:?}; it should not wait for their 8 s sleeps"
    );
    for id in &ids {
        assert_eq!(task(&up, id)["owner"], "worker-2");
        assert_same_as_local(&up, id, artifacts::HOLDMEM, &args);
    }
}

/// A task asleep in one long call is still checkpointed on schedule (the
/// worker's watchdog pauses it inside the call), so when its worker is
/// killed mid-sleep the recovered task sleeps only what was left.
#[test]
fn a_sleeping_task_is_checkpointed_on_schedule_and_recovers_mid_sleep() {
    let up = Up::start_with(3, FAST);
    // 4 MiB filled, then one 8 s sleep, then a short compute phase.
    let args = ["4", "1000", "8"];
    let id = up.submit(artifacts::HOLDMEM, &["--on", "worker-1"], &args);
    wait_until("holdmem falls asleep", Duration::from_secs(60), || {
        task(&up, &id)["stdout_bytes"].as_u64() > Some(0)
    });
    let asleep = std::time::Instant::now();
    let seq = |up: &Up| task(up, &id)["checkpoint_seq"].clone();
    let first = seq(&up);
    wait_until(
        "checkpoints while it sleeps",
        Duration::from_secs(5),
        || seq(&up) != first,
    );
    std::thread::sleep(Duration::from_secs(4).saturating_sub(asleep.elapsed()));
    kill9(pid_of(&up, "worker-1"));
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
    let total = asleep.elapsed();
    // Recovered from a checkpoint taken during the sleep: ~8 s of sleep in
    // all plus the offline timeout, not 4 s + 8 s again.
    assert!(
        total >= Duration::from_millis(7500) && total < Duration::from_secs(11),
        "finished {total:?} after falling asleep, for an 8 s sleep"
    );
    assert_ne!(task(&up, &id)["owner"], "worker-1");
    assert_eq!(
        up.ok(&["logs", &id]),
        local_stdout(artifacts::HOLDMEM, &args),
        "output differs from a local run"
    );
}

/// A task waiting for input on stdin (blocked in `fd_read`) moves at once
/// and reads on from the byte where it stopped; when its worker is killed it
/// recovers elsewhere and still reads every byte exactly once. Input is
/// sent with `wmig input` while it runs; the output is what `wmig run`
/// prints for the same input.
#[test]
fn a_task_waiting_for_stdin_migrates_at_once_and_reads_on_after_a_kill() {
    let up = Up::start_with(3, FAST);
    let id = up.submit(artifacts::TALLY, &["--on", "worker-1", "--stdin"], &[]);
    let parts = [
        "the quick brown fox\njumps over the lazy dog\n",
        "and the dog sleeps\n",
        "the end of the story\n",
    ];
    let inputs = tempfile::tempdir().expect("tempdir");
    let send = |i: usize, more: &[&str]| {
        let path = inputs.path().join(format!("part-{i}"));
        std::fs::write(&path, parts[i]).expect("write input");
        let mut args = vec!["input", id.as_str(), path.to_str().expect("utf-8 path")];
        args.extend_from_slice(more);
        up.ok(&args);
    };
    let lines_out = |up: &Up| up.ok(&["logs", &id]).lines().count();

    send(0, &["--keep-open"]);
    wait_until(
        "tally reads the first lines",
        Duration::from_secs(60),
        || lines_out(&up) == 2,
    );
    // Blocked in fd_read, waiting for more: it moves without waiting.
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let report = up.json(&["migrate", &id, "worker-2", "--json"]);
    let took = started.elapsed();
    assert_eq!(report["to"], "worker-2", "{report}");
    assert!(
        took < Duration::from_secs(4),
        "migrating a task waiting for input took {took:?}"
    );
    send(1, &["--keep-open"]);
    wait_until(
        "tally reads on after the move",
        Duration::from_secs(30),
        || lines_out(&up) == 3,
    );

    // Checkpointed while it waits (the watchdog pauses it in the call),
    // then its worker dies: the new owner reads on from the checkpoint.
    let seq = |up: &Up| task(up, &id)["checkpoint_seq"].clone();
    let first = seq(&up);
    wait_until(
        "a checkpoint while it waits",
        Duration::from_secs(10),
        || seq(&up) != first,
    );
    kill9(pid_of(&up, "worker-2"));
    wait_until("the task is recovered", Duration::from_secs(30), || {
        let t = task(&up, &id);
        t["owner"] != "worker-2" && t["state"] == "running"
    });
    send(2, &[]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "60s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));

    let all = inputs.path().join("all");
    std::fs::write(&all, parts.concat()).expect("write input");
    let local = run(crate::support::wmig()
        .arg("run")
        .arg(artifacts::TALLY)
        .stdin(std::fs::File::open(&all).expect("open input")));
    assert!(local.status.success(), "wmig run tally: {}", stderr(&local));
    assert_eq!(
        up.ok(&["logs", &id]),
        crate::support::stdout(&local),
        "output differs from a local run on the same input"
    );
}

/// A task whose workers keep dying under it (as a task that crashes its
/// worker would make them) fails at the third loss with a reason naming
/// them, instead of being handed to one worker after another.
#[test]
fn a_task_that_keeps_losing_its_worker_fails_after_three() {
    let up = Up::start_with(3, FAST);
    let mut restarted = Restarted::default();
    let id = up.submit(artifacts::COUNTER, &[], &[LONG]);
    let mut owners = Vec::new();
    for loss in 1..=3 {
        wait_until("the task runs", Duration::from_secs(60), || {
            task(&up, &id)["state"] == "running"
        });
        let owner = task(&up, &id)["owner"].as_str().expect("owner").to_owned();
        kill9(pid_of(&up, &owner));
        wait_until("the owner is offline", Duration::from_secs(10), || {
            up.node(&owner)["state"] == "offline"
        });
        owners.push(owner.clone());
        if loss < 3 {
            wait_until("the task moves on", Duration::from_secs(10), || {
                let t = task(&up, &id);
                t["owner"] != owner.as_str() || t["state"] != "running"
            });
            assert_eq!(task(&up, &id)["state"], "running", "after loss {loss}");
        }
        restarted.worker(&up, &owner);
    }
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "60s"]));
    assert_eq!(o.status.code(), Some(1), "wait {id}: {}", stderr(&o));
    let t = task(&up, &id);
    assert_eq!(t["state"], "failed", "{t}");
    let why = t["failure"].as_str().unwrap_or_default();
    assert!(why.contains("went offline 3 times"), "{why}");
    for owner in &owners {
        assert!(why.contains(owner.as_str()), "{why} names {owner}");
    }
}
