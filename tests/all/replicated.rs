//! Coordinators replicated on etcd, through real processes: `wmig up
//! --coordinators 3` starts three `etcd` members and three coordinators;
//! leaders are killed with SIGKILL, paused with SIGSTOP (a leader cut off
//! from everyone), and replaced by a coordinator with an empty disk.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use wmig_tests::artifacts;

use crate::cluster::{kill9, local_stdout, wait_until, Reaped, Up, OFFLINE_TIMEOUT};
use crate::support::run;

/// `wmig up --coordinators 3 --workers N`, or `None` (the test is skipped
/// with a message) where etcd is not installed: `scripts/test` installs it.
fn up3(workers: u32) -> Option<Up> {
    if run(std::process::Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null()))
    .status
    .success()
    {
        let timeout = format!("{}ms", OFFLINE_TIMEOUT.as_millis());
        Some(Up::start_with(
            workers,
            &[
                "--coordinators",
                "3",
                "--offline-timeout",
                &timeout,
                "--checkpoint-every",
                "500ms",
            ],
        ))
    } else {
        eprintln!("SKIPPED: etcd is not installed (scripts/deps installs Debian's etcd-server)");
        None
    }
}

fn coordinators(up: &Up) -> Vec<Value> {
    up.json(&["nodes", "--json"])
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["role"] == "coordinator")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The leader's name and pid, once exactly one coordinator leads.
fn leader(up: &Up) -> (String, u64) {
    let mut found = None;
    wait_until("exactly one leader", Duration::from_secs(30), || {
        let all = coordinators(up);
        let leaders: Vec<&Value> = all.iter().filter(|c| c["leader"] == true).collect();
        if let [l] = leaders[..] {
            found = Some((
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["pid"].as_u64().unwrap_or_default(),
            ));
        }
        found.is_some()
    });
    found.unwrap_or_default()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

fn signal(pid: u64, sig: &str) {
    let o = run(std::process::Command::new("kill").args([sig, &pid.to_string()]));
    assert!(o.status.success(), "kill {sig} {pid}");
}

/// Tasks as `wmig ps --json` lists them, reduced to what must not change
/// when the leader does.
fn tasks(up: &Up) -> Vec<Value> {
    up.json(&["ps", "--json"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            serde_json::json!([
                t["id"],
                t["state"],
                t["owner"],
                t["epoch"],
                t["exit_code"],
                t["stdout_bytes"]
            ])
        })
        .collect()
}

/// `task` (the counter with `args`) completes, with the output of a run of
/// the same module alone.
fn completes_as_alone(up: &Up, task: &str, args: &[&str]) {
    up.ok(&["wait", task, "--timeout", "300s"]);
    let view = up.json(&["inspect", task, "--json"]);
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(
        up.ok(&["logs", task]),
        local_stdout(artifacts::COUNTER, args)
    );
}

/// What the exit-code task prints alone (it exits non-zero on purpose).
fn exit_code_stdout(code: &str) -> String {
    crate::support::stdout(&run(crate::support::wmig()
        .arg("run")
        .arg(artifacts::EXIT_CODE)
        .arg(code)))
}

#[test]
fn a_killed_leader_is_replaced_and_running_tasks_finish_unchanged() {
    let Some(up) = up3(2) else { return };
    wait_until("three coordinators listed", Duration::from_secs(10), || {
        coordinators(&up).len() == 3
    });
    let (name, pid) = leader(&up);

    let args = ["3000000000"];
    let running = up.submit(artifacts::COUNTER, &[], &args);
    let done = up.submit(artifacts::EXIT_CODE, &[], &["3"]);
    assert_eq!(
        run(&mut up.cmd(&["wait", &done, "--timeout", "120s"]))
            .status
            .code(),
        Some(3)
    );
    wait_until(
        "a checkpoint of the running task",
        Duration::from_secs(60),
        || !up.json(&["inspect", &running, "--json"])["checkpoint_seq"].is_null(),
    );

    kill9(pid);
    let killed = Instant::now();
    let mut submitted = None;
    wait_until(
        "a submission accepted after the leader's kill",
        Duration::from_secs(30),
        || {
            let o = run(&mut up.cmd(&["submit", artifacts::EXIT_CODE, "--", "4"]));
            if o.status.success() {
                submitted = Some(String::from_utf8_lossy(&o.stdout).trim().to_owned());
            }
            submitted.is_some()
        },
    );
    let failover = killed.elapsed();
    eprintln!("failover: {failover:?} from kill -9 of {name} to an accepted submission");
    // Generous for a loaded CI machine; the benchmark measures it.
    assert!(
        failover < Duration::from_secs(15),
        "failover took {failover:?}"
    );
    let (new, _) = leader(&up);
    assert_ne!(new, name, "the killed coordinator still leads");

    // Nothing lost: the task that ended before the kill, with its output;
    // the running one to the end with the output of an uninterrupted run.
    assert_eq!(up.ok(&["logs", &done]), exit_code_stdout("3"));
    let submitted = submitted.unwrap_or_default();
    assert_eq!(
        run(&mut up.cmd(&["wait", &submitted, "--timeout", "120s"]))
            .status
            .code(),
        Some(4)
    );
    completes_as_alone(&up, &running, &args);
    // The dead coordinator's lease expired with it.
    wait_until(
        "the dead coordinator unlisted",
        Duration::from_secs(10),
        || coordinators(&up).len() == 2,
    );
}

/// GET /version from etcd member `port` over TLS, with the cluster's
/// certificate `identity` (a PEM with certificate and key) or none; the
/// answer's body, or the error (Python's ssl, so that nothing of wmig's is
/// on the client side).
fn etcd_get_version(
    ca: &std::path::Path,
    port: &str,
    identity: Option<&std::path::Path>,
) -> String {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3])
try:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5), server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        print(s.recv(4096).decode(errors="replace"))
except Exception as e:
    print("refused:", e)
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(ca).arg(port);
    if let Some(id) = identity {
        cmd.arg(id);
    }
    crate::support::stdout(&run(&mut cmd))
}

#[test]
fn etcd_admits_only_the_clusters_certificates() {
    let Some(up) = up3(1) else { return };
    let ports = std::fs::read_to_string(up.dir.join("etcd").join("ports")).expect("etcd ports");
    let port = ports
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .expect("a client port")
        .to_owned();
    let ca = up.dir.join("etcd").join("tls").join("ca.pem");
    let with_cert = etcd_get_version(
        &ca,
        &port,
        Some(&up.dir.join("certs").join("coordinator.pem")),
    );
    assert!(
        with_cert.contains("etcdserver"),
        "with the coordinator's certificate: {with_cert}"
    );
    let without = etcd_get_version(&ca, &port, None);
    assert!(
        without.starts_with("refused") && !without.contains("etcdserver"),
        "without a certificate: {without}"
    );
    // A certificate of another cluster's CA is no better.
    let other = tempfile::TempDir::new().expect("tempdir");
    let o = run(crate::support::wmig()
        .env("WMIG_CLUSTER", other.path())
        .arg("init"));
    assert!(o.status.success());
    let o = run(crate::support::wmig()
        .env("WMIG_CLUSTER", other.path())
        .args(["cert", "etcd", "--ip", "127.0.0.1", "--out"])
        .arg(other.path().join("tls")));
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    let foreign = std::fs::read_to_string(other.path().join("tls").join("etcd.pem"))
        .unwrap_or_default()
        + &std::fs::read_to_string(other.path().join("tls").join("etcd.key")).unwrap_or_default();
    let foreign_pem = other.path().join("foreign.pem");
    std::fs::write(&foreign_pem, foreign).expect("write foreign.pem");
    let foreign = etcd_get_version(&ca, &port, Some(&foreign_pem));
    assert!(
        foreign.starts_with("refused") && !foreign.contains("etcdserver"),
        "with another cluster's certificate: {foreign}"
    );
}

#[test]
fn a_paused_leader_is_deposed_and_commits_nothing_after_it_wakes() {
    let Some(up) = up3(1) else { return };
    let (name, pid) = leader(&up);
    let args = ["3000000000"];
    let running = up.submit(artifacts::COUNTER, &[], &args);
    wait_until("the task runs", Duration::from_secs(60), || {
        up.json(&["inspect", &running, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });

    // SIGSTOP: the leader is cut off from etcd and from every node, and
    // will wake up believing it still leads.
    signal(pid, "-STOP");
    let mut new = String::new();
    wait_until("another coordinator leads", Duration::from_secs(30), || {
        new = leader(&up).0;
        new != name
    });
    let during = up.submit(artifacts::EXIT_CODE, &[], &["7"]);
    wait_until(
        "worker-1 online at the new leader",
        Duration::from_secs(30),
        || up.node("worker-1")["state"] == "online",
    );
    let before = tasks(&up);

    // Woken, it sees every worker silent for seconds: it would declare them
    // offline and move their tasks. etcd refuses its writes (its term is
    // over) and it stops.
    signal(pid, "-CONT");
    wait_until("the deposed leader exits", Duration::from_secs(20), || {
        !alive(pid)
    });
    let log = std::fs::read_to_string(up.dir.join("logs").join(format!("{name}.log")))
        .unwrap_or_default();
    assert!(log.contains("stopped leading"), "{name}'s log:\n{log}");

    // What it might have committed would show once its successor's own
    // successor replays etcd: kill the current leader too.
    let (current, current_pid) = leader(&up);
    assert_eq!(current, new);
    kill9(current_pid);
    wait_until(
        "the third coordinator leads",
        Duration::from_secs(30),
        || {
            let (l, _) = leader(&up);
            l != current && l != name
        },
    );
    let after = tasks(&up);
    assert_eq!(after.len(), before.len(), "{after:?} vs {before:?}");
    for (a, b) in after.iter().zip(&before) {
        // Same task, same owner and epoch: nobody moved it (the deposed
        // leader would have, had etcd taken its writes).
        assert_eq!((&a[0], &a[2], &a[3]), (&b[0], &b[2], &b[3]));
    }
    assert_eq!(
        run(&mut up.cmd(&["wait", &during, "--timeout", "120s"]))
            .status
            .code(),
        Some(7)
    );
    completes_as_alone(&up, &running, &args);
}

#[test]
fn a_coordinator_on_a_fresh_disk_takes_over_with_every_task_and_node() {
    let Some(up) = up3(2) else { return };
    let ids: Vec<String> = (0..3)
        .map(|i| up.submit(artifacts::EXIT_CODE, &[], &[&i.to_string()]))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            run(&mut up.cmd(&["wait", id, "--timeout", "120s"]))
                .status
                .code(),
            Some(i as i32)
        );
    }
    let args = ["3000000000"];
    let running = up.submit(artifacts::COUNTER, &[], &args);
    wait_until("the task runs", Duration::from_secs(60), || {
        up.json(&["inspect", &running, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });

    // coordinator-1's machine dies with its disk; a new machine takes its
    // address with an empty data directory.
    // Listed from its presence in etcd, which a loaded machine may let
    // lapse for a moment: wait for it.
    let mut one = Value::Null;
    wait_until("coordinator-1 is listed", Duration::from_secs(30), || {
        one = coordinators(&up)
            .into_iter()
            .find(|c| c["name"] == "coordinator-1")
            .unwrap_or(Value::Null);
        !one.is_null()
    });
    let addr = one["addr"].as_str().unwrap_or_default().to_owned();
    kill9(one["pid"].as_u64().unwrap_or_default());
    // (A follower keeps nothing there; a former leader keeps its cache.)
    let data = up.dir.join("coordinators").join("coordinator-1");
    if data.exists() {
        std::fs::remove_dir_all(&data).expect("remove coordinator-1's data");
    }
    let ports = std::fs::read_to_string(up.dir.join("etcd").join("ports")).expect("etcd ports");
    let endpoints: Vec<String> = ports
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let fresh = tempfile::TempDir::new().expect("tempdir");
    let timeout = format!("{}ms", OFFLINE_TIMEOUT.as_millis());
    let _replacement = Reaped(
        up.cmd(&[
            "coordinator",
            "--listen",
            &addr,
            "--http",
            "off",
            "--offline-timeout",
        ])
        .arg(&timeout)
        .args(["--name", "replacement", "--etcd", &endpoints.join(",")])
        .arg("--data")
        .arg(fresh.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the replacement"),
    );
    wait_until("the replacement joins", Duration::from_secs(30), || {
        coordinators(&up).iter().any(|c| c["name"] == "replacement")
    });
    // The other two go: the replacement must lead, from etcd alone.
    let before = tasks(&up);
    for c in coordinators(&up) {
        if c["name"] != "replacement" && c["name"] != "coordinator-1" {
            kill9(c["pid"].as_u64().unwrap_or_default());
        }
    }
    wait_until("the replacement leads", Duration::from_secs(30), || {
        leader(&up).0 == "replacement"
    });
    let after = tasks(&up);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!((&a[0], &a[2], &a[3], &a[4]), (&b[0], &b[2], &b[3], &b[4]));
    }
    for w in ["worker-1", "worker-2"] {
        wait_until(&format!("{w} online"), Duration::from_secs(20), || {
            up.node(w)["state"] == "online"
        });
    }
    // Output of ended tasks came from etcd, not from a disk.
    assert_eq!(up.ok(&["logs", &ids[2]]), exit_code_stdout("2"));
    completes_as_alone(&up, &running, &args);
}
