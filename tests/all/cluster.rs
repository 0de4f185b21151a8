//! The control plane through real processes: `wmig up` starts registry,
//! coordinator and workers as separate OS processes on 127.0.0.1; tasks are
//! submitted, followed and waited for with the `wmig` CLI; workers and the
//! coordinator are killed with SIGKILL for real.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use wmig_tests::artifacts;

use crate::support::{run, stderr, stdout, wmig};

/// Offline timeout the test clusters run with.
pub(crate) const OFFLINE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running `wmig up`; it and its children are killed on drop.
pub struct Up {
    child: Child,
    pub dir: PathBuf,
    /// `wmig up`'s stderr, line by line.
    log: mpsc::Receiver<String>,
    _tmp: TempDir,
}

/// A process the test started beside `wmig up`, killed when the test ends
/// (also when it fails, so nothing outlives it).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Up {
    pub fn start(workers: u32) -> Up {
        let timeout = format!("{}ms", OFFLINE_TIMEOUT.as_millis());
        Up::start_with(workers, &["--offline-timeout", &timeout])
    }

    /// `wmig up --workers N EXTRA...`.
    pub fn start_with(workers: u32, extra: &[&str]) -> Up {
        Up::start_env(workers, extra, &[])
    }

    /// `wmig up --workers N EXTRA...` with extra environment (inherited by
    /// its nodes).
    /// Tests kill nodes on purpose and start them again by hand, so these
    /// clusters do not restart children themselves (`--no-restart`).
    pub fn start_env(workers: u32, extra: &[&str], env: &[(&str, &str)]) -> Up {
        Up::launch(workers, extra, env, false)
    }

    /// A cluster whose `wmig up` starts dead children again, as by default.
    pub fn start_supervised(workers: u32, extra: &[&str]) -> Up {
        Up::launch(workers, extra, &[], true)
    }

    fn launch(workers: u32, extra: &[&str], env: &[(&str, &str)], supervised: bool) -> Up {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path().join("cluster");
        let mut child = wmig()
            .env("WMIG_CLUSTER", &dir)
            .envs(env.iter().copied())
            .args(["up", "--workers", &workers.to_string()])
            .args(if supervised {
                &[][..]
            } else {
                &["--no-restart"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wmig up");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (log_tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[wmig up] {line}");
                let _ = log_tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("wmig up did not print `ready`; logs in {}", dir.display()));
        assert_eq!(line, "ready");
        Up {
            child,
            dir,
            log,
            _tmp: tmp,
        }
    }

    /// Start a coordinator again on the address the cluster recorded (after
    /// the test killed it) and wait until it answers.
    pub fn restart_coordinator(&self) -> Reaped {
        self.restart_coordinator_with(OFFLINE_TIMEOUT)
    }

    /// [`Up::restart_coordinator`] with another offline timeout.
    pub fn restart_coordinator_with(&self, offline_timeout: Duration) -> Reaped {
        let addr = cluster_addr(&self.dir);
        let child = self
            .cmd(&[
                "coordinator",
                "--listen",
                &addr,
                "--http",
                "off",
                "--offline-timeout",
            ])
            .arg(format!("{}ms", offline_timeout.as_millis()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("restart the coordinator");
        wait_until("coordinator answers", Duration::from_secs(20), || {
            run(&mut self.cmd(&["ps"])).status.success()
        });
        Reaped(child)
    }

    /// `wmig ARGS` against this cluster.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = wmig();
        c.env("WMIG_CLUSTER", &self.dir).args(args);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = run(&mut self.cmd(args));
        assert!(
            o.status.success(),
            "wmig {args:?} failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let o = run(&mut self.cmd(args));
        assert!(
            !o.status.success(),
            "wmig {args:?} should fail: {}",
            stdout(&o)
        );
        stderr(&o)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed {text}: {e}"))
    }

    pub fn node(&self, name: &str) -> Value {
        let nodes = self.json(&["nodes", "--json"]);
        nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no node {name} in {nodes}"))
    }

    pub fn submit(&self, module: &str, extra: &[&str], args: &[&str]) -> String {
        let mut all = vec!["submit", module];
        all.extend_from_slice(extra);
        all.push("--");
        all.extend_from_slice(args);
        self.ok(&all).trim().to_owned()
    }

    /// The pid `wmig up` reported for a role (`registry`, `coordinator`).
    pub(crate) fn pid_of(&self, role: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with(role) {
                if let Some(pid) = line
                    .rsplit_once("(pid ")
                    .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
                {
                    return pid;
                }
            }
        }
        panic!("wmig up did not report the pid of the {role}")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGKILL: the children follow through PR_SET_PDEATHSIG.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kill9(pid: u64) {
    let o = run(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(o.status.success(), "kill -9 {pid}: {}", stderr(&o));
}

/// What `wmig run` prints for the same module and arguments.
pub fn local_stdout(module: &str, args: &[&str]) -> String {
    let o = run(wmig().arg("run").arg(module).args(args));
    assert!(o.status.success(), "wmig run {module}: {}", stderr(&o));
    stdout(&o)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn twenty_tasks_complete_with_the_output_of_a_local_run() {
    let up = Up::start(3);
    let jobs: Vec<(&str, Vec<&str>)> = (0..20)
        .map(|i| match i % 4 {
            0 => (artifacts::COUNTER, vec!["3000000"]),
            1 => (artifacts::SIEVE, vec!["1000000"]),
            2 => (artifacts::NBODY, vec!["20000"]),
            _ => (artifacts::ARGS_ENV, vec!["a b", "c"]),
        })
        .collect();
    let ids: Vec<String> = jobs
        .iter()
        .map(|(m, a)| up.submit(m, &["--env", "TASK_X=1"], a))
        .collect();
    for ((module, args), id) in jobs.iter().zip(&ids) {
        let o = run(&mut up.cmd(&["wait", id, "--timeout", "180s"]));
        assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
        let logs = up.ok(&["logs", id]);
        let mut want = local_stdout(module, args);
        if *module == artifacts::ARGS_ENV {
            want = local_stdout_env(module, args);
        }
        assert_eq!(logs, want, "{id} ({module} {args:?})");
    }
    let ps = up.json(&["ps", "--json"]);
    let tasks = ps.as_array().expect("ps --json is a list");
    assert_eq!(tasks.len(), 20);
    assert!(tasks.iter().all(|t| t["state"] == "completed"), "{ps}");
    // Least-loaded placement spread them over all three workers.
    for w in ["worker-1", "worker-2", "worker-3"] {
        assert!(
            tasks.iter().any(|t| t["owner"] == w),
            "no task on {w}: {ps}"
        );
    }
}

/// `wmig run` with the same `--env` the submissions used.
fn local_stdout_env(module: &str, args: &[&str]) -> String {
    let o = run(wmig()
        .args(["run", "--env", "TASK_X=1"])
        .arg(module)
        .args(args));
    assert!(o.status.success(), "wmig run {module}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn exit_codes_failures_and_cancellation_reach_the_operator() {
    let up = Up::start(1);
    let id = up.submit(artifacts::EXIT_CODE, &[], &["7"]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));

    // A memory limit the task exceeds fails it with a memory reason; the
    // worker carries on. Without a limit of its own a task gets the worker's
    // default (1 GiB): an allocator that wants 1.2 GiB fails the same way.
    for (flags, mib, reason) in [
        (
            &["--max-memory-size", "16M"][..],
            "80",
            "out of memory: the task needed more than its 16 MiB",
        ),
        (&[][..], "1200", "more than its 1024 MiB memory limit"),
    ] {
        let id = up.submit(artifacts::BIGHEAP, flags, &[mib]);
        let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
        assert_ne!(o.status.code(), Some(0));
        let t = up.json(&["inspect", &id, "--json"]);
        assert_eq!(t["state"], "failed", "{t}");
        assert!(t.to_string().contains(reason), "{t}");
    }

    // A wall-time limit ends a task even while it sleeps in one long call
    // (no yield point there): within the limit plus the watchdog's grace.
    let started = Instant::now();
    let id = up.submit(artifacts::HOLDMEM, &["--timeout", "2s"], &["1", "10", "60"]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "60s"]));
    assert_ne!(o.status.code(), Some(0));
    let t = up.json(&["inspect", &id, "--json"]);
    assert_eq!(t["state"], "failed", "{t}");
    assert!(
        t.to_string()
            .contains("wall-time limit of 2000 ms exceeded"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 2 s limit ended a 60 s sleep after {:?}",
        started.elapsed()
    );

    // A long task, followed live, then cancelled.
    let id = up.submit(artifacts::COUNTER, &[], &["4000000000"]);
    wait_until("counter prints", Duration::from_secs(30), || {
        up.json(&["inspect", &id, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });
    up.ok(&["cancel", &id]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_eq!(up.json(&["inspect", &id, "--json"])["state"], "cancelled");
    let id = up.submit(artifacts::EXIT_CODE, &[], &["0"]);
    assert!(run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
        .status
        .success());
    assert_eq!(up.node("worker-1")["state"], "online");
}

/// Binaryen runs in a child process of the worker with its own limits: a
/// module that crashes it fails its own task with a reason, and the worker
/// and the next task carry on.
#[test]
fn a_module_that_crashes_the_rewrite_fails_only_its_own_task() {
    // A module no other test has rewritten (the rewrite cache is shared): an
    // artifact with one custom section more, so it hashes differently.
    let tmp = TempDir::new().expect("tempdir");
    let mut wasm = std::fs::read(artifacts::EXIT_CODE).expect("artifact");
    let name = format!("wmig-test-{}", std::process::id());
    let nanos = format!("{:?}", std::time::SystemTime::now());
    let payload = [name.as_bytes(), nanos.as_bytes()].concat();
    wasm.push(0); // custom section
    wasm.push(u8::try_from(1 + name.len() + nanos.len()).expect("short"));
    wasm.push(u8::try_from(name.len()).expect("short"));
    wasm.extend_from_slice(&payload);
    let crashing = tmp.path().join("crashing.wasm");
    std::fs::write(&crashing, &wasm).expect("write module");
    let hash = blake3::hash(&wasm).to_hex().to_string();

    let timeout = format!("{}ms", OFFLINE_TIMEOUT.as_millis());
    let fault = format!("rewrite-abort:{hash}");
    let up = Up::start_env(
        1,
        &["--offline-timeout", &timeout],
        &[("WMIG_FAULT", &fault)],
    );
    let pid = up.node("worker-1")["pid"].clone();

    let id = up.submit(crashing.to_str().expect("utf-8 path"), &[], &["0"]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "120s"]));
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = up.json(&["inspect", &id, "--json"]);
    assert_eq!(t["state"], "failed", "{t}");
    let why = t["failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("failed in its own process") && why.contains("aborted (SIGABRT)"),
        "{why}"
    );

    // The same worker process, online, runs the next task.
    assert_eq!(up.node("worker-1")["state"], "online");
    assert_eq!(
        up.node("worker-1")["pid"],
        pid,
        "the worker did not restart"
    );
    let id = up.submit(artifacts::EXIT_CODE, &[], &["3"]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "120s"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

/// `wmig up` starts a node that dies again, on the address it had: a
/// killed worker comes back under its name, a killed coordinator comes back
/// with its tasks, and the cluster goes on taking work.
#[test]
fn wmig_up_starts_a_dead_node_again() {
    let up = Up::start_supervised(1, &["--offline-timeout", "2s"]);
    let first = up.node("worker-1")["pid"].clone();
    kill9(first.as_u64().expect("pid"));
    wait_until(
        "worker-1 runs again in a new process",
        Duration::from_secs(30),
        || {
            let n = up.node("worker-1");
            n["state"] == "online" && n["pid"] != first
        },
    );
    let id = up.submit(artifacts::EXIT_CODE, &[], &["4"]);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "60s"]));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));

    kill9(u64::from(up.pid_of("coordinator")));
    // As a user would: submit until the coordinator is back and its worker
    // has reconnected.
    let mut again = String::new();
    wait_until(
        "the cluster takes a task again",
        Duration::from_secs(30),
        || {
            let o = run(&mut up.cmd(&["submit", artifacts::EXIT_CODE, "--", "5"]));
            again = stdout(&o).trim().to_owned();
            o.status.success()
        },
    );
    let o = run(&mut up.cmd(&["wait", &again, "--timeout", "60s"]));
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(up.json(&["inspect", &id, "--json"])["state"], "completed");
}

#[test]
fn bad_requests_are_clear_errors() {
    let up = Up::start(1);
    let e = up.fails(&["inspect", "t-999"]);
    assert!(e.contains("unknown task t-999"), "{e}");
    let e = up.fails(&["logs", "t-999"]);
    assert!(e.contains("unknown task"), "{e}");
    let e = up.fails(&["submit", artifacts::COUNTER, "--on", "worker-9"]);
    assert!(e.contains("unknown worker `worker-9`"), "{e}");
    let e = up.fails(&["submit", "no-such-bundle:v1"]);
    assert!(e.contains("unknown bundle"), "{e}");
    let e = up.fails(&["drain", "nobody"]);
    assert!(e.contains("nobody"), "{e}");
    let e = up.fails(&["submit", "missing.wasm"]);
    assert!(e.contains("no file `missing.wasm`"), "{e}");
    let e = up.fails(&["submit", "not a name!"]);
    assert!(e.contains("neither a file nor"), "{e}");
    // Not wasm: the registry refuses the upload.
    let tmp = TempDir::new().expect("tempdir");
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").expect("write");
    let e = up.fails(&["submit", junk.to_str().expect("utf-8 path")]);
    assert!(e.to_lowercase().contains("wasm"), "{e}");
    // A second worker process with a name that is online.
    let o = run(&mut up.cmd(&["worker", "--name", "worker-1"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already registered"), "{}", stderr(&o));
    // A drained worker takes no new tasks.
    // A drained worker takes no new tasks: pinned is refused, unpinned waits.
    up.ok(&["drain", "worker-1"]);
    let e = up.fails(&["submit", artifacts::COUNTER, "--on", "worker-1"]);
    assert!(e.contains("draining"), "{e}");
    let id = up.submit(artifacts::COUNTER, &[], &["1000"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.json(&["inspect", &id, "--json"])["state"], "pending");
    up.ok(&["uncordon", "worker-1"]);
    assert!(run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
        .status
        .success());
    // An unreachable coordinator.
    let o = run(wmig()
        .env("WMIG_CLUSTER", &up.dir)
        .args(["ps", "--coordinator", "127.0.0.1:9"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("could not reach the coordinator"),
        "{}",
        stderr(&o)
    );
    // A client without a cluster certificate.
    let other = tmp.path().join("other");
    assert!(run(wmig().arg("init").arg("--cluster").arg(&other))
        .status
        .success());
    let addr = cluster_addr(&up.dir);
    let o = run(wmig()
        .env("WMIG_CLUSTER", &other)
        .args(["ps", "--coordinator", &addr]));
    assert!(!o.status.success(), "a foreign certificate was accepted");
}

fn cluster_addr(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
    let line = text
        .lines()
        .find(|l| l.starts_with("coordinator"))
        .expect("the coordinator recorded its address");
    line.split('"').nth(1).expect("quoted address").to_owned()
}

#[test]
fn a_killed_worker_is_offline_within_the_timeout() {
    let up = Up::start(3);
    let pid = up.node("worker-2")["pid"].as_u64().expect("pid");
    assert_eq!(up.node("worker-2")["state"], "online");
    kill9(pid);
    let took = wait_until(
        "worker-2 offline",
        OFFLINE_TIMEOUT + Duration::from_secs(3),
        || up.node("worker-2")["state"] == "offline",
    );
    assert!(
        took <= OFFLINE_TIMEOUT + Duration::from_secs(1),
        "offline after {took:?}, timeout {OFFLINE_TIMEOUT:?}"
    );
    // The others stay online, and new tasks avoid the dead worker.
    assert_eq!(up.node("worker-1")["state"], "online");
    let e = up.fails(&["submit", artifacts::COUNTER, "--on", "worker-2"]);
    assert!(e.contains("offline"), "{e}");
    let id = up.submit(artifacts::COUNTER, &[], &["1000"]);
    assert!(run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
        .status
        .success());
    // The same worker restarted comes back online.
    let mut w = up
        .cmd(&["worker", "--name", "worker-2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart worker-2");
    wait_until("worker-2 online again", Duration::from_secs(20), || {
        up.node("worker-2")["state"] == "online"
    });
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn a_killed_coordinator_restarts_with_its_tasks_and_nodes() {
    let up = Up::start(2);
    let coordinator = up.pid_of("coordinator");
    let ids: Vec<String> = (0..4)
        .map(|i| up.submit(artifacts::EXIT_CODE, &[], &[&i.to_string()]))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            run(&mut up.cmd(&["wait", id, "--timeout", "180s"]))
                .status
                .code(),
            Some(i as i32)
        );
    }
    let ps_before = up.json(&["ps", "--json"]);
    kill9(u64::from(coordinator));
    let o = run(&mut up.cmd(&["ps"]));
    assert!(!o.status.success(), "ps answered with the coordinator dead");

    // Restart it on the same address: the workers reconnect by themselves.
    let _restarted = up.restart_coordinator();
    let ps_after = up.json(&["ps", "--json"]);
    for (a, b) in ps_before
        .as_array()
        .into_iter()
        .flatten()
        .zip(ps_after.as_array().into_iter().flatten())
    {
        for key in [
            "id",
            "state",
            "owner",
            "epoch",
            "exit_code",
            "stdout_bytes",
            "bundle",
        ] {
            assert_eq!(a[key], b[key], "{key} of {}", a["id"]);
        }
    }
    assert_eq!(
        ps_before.as_array().map(Vec::len),
        ps_after.as_array().map(Vec::len)
    );
    assert_eq!(up.ok(&["logs", &ids[1]]), {
        let o = run(wmig().arg("run").arg(artifacts::EXIT_CODE).arg("1"));
        stdout(&o)
    });
    for w in ["worker-1", "worker-2"] {
        wait_until(
            &format!("{w} online after the restart"),
            Duration::from_secs(10),
            || up.node(w)["state"] == "online",
        );
    }
    // And it keeps working.
    let id = up.submit(artifacts::EXIT_CODE, &[], &["5"]);
    assert_eq!(
        run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
            .status
            .code(),
        Some(5)
    );
}

/// The worker's resident anonymous memory (guest memories live there; the
/// binary's and compiled modules' file-backed pages do not), from /proc.
fn rss_anon_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether the worker still has the thread that runs `task` (`wmig-<task>`).
fn has_task_thread(pid: u64, task: &str) -> bool {
    let name = format!("wmig-{task}");
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_cancelled_task_asleep_in_a_wasi_call_ends_its_thread_and_frees_its_memory() {
    let up = Up::start(1);
    // 96 MiB filled, then one `thread::sleep` of an hour.
    let id = up.submit(artifacts::HOLDMEM, &[], &["96", "1", "3600"]);
    wait_until("holdmem fills its memory", Duration::from_secs(60), || {
        up.json(&["inspect", &id, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });
    let pid = up.node("worker-1")["pid"].as_u64().expect("worker pid");
    assert!(
        has_task_thread(pid, &id),
        "the task runs on thread wmig-{id}"
    );
    let before = rss_anon_kib(pid);
    up.ok(&["cancel", &id]);
    // Without the interrupt the guest's thread sleeps on for the hour and
    // keeps its memory; with it the call wakes and the store is dropped.
    wait_until("the task's thread ends", Duration::from_secs(10), || {
        !has_task_thread(pid, &id)
    });
    wait_until(
        "the worker frees the task's memory",
        Duration::from_secs(10),
        || rss_anon_kib(pid) + 24 * 1024 < before,
    );
    assert_eq!(up.json(&["inspect", &id, "--json"])["state"], "cancelled");
    // The worker carries on.
    let id = up.submit(artifacts::EXIT_CODE, &[], &["0"]);
    assert!(run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
        .status
        .success());
}

/// The coordinator holds every request to the name and role in the
/// sender's certificate: a worker's certificate cannot heartbeat or take
/// the command stream of another worker, nor act as an operator, nor
/// register as a monitor; it may still read.
#[test]
fn a_worker_certificate_speaks_only_for_itself() {
    use wmig_coordinator::wire::ControlRequest;
    use wmig_coordinator::{ControlClient, ControlError};
    use wmig_proto::{NodeId, TaskId};

    let up = Up::start(2);
    let addr = cluster_addr(&up.dir).parse().expect("address");
    let creds = wmig_net::ClusterDir::new(&up.dir)
        .credentials("worker-1")
        .expect("worker-1's identity");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refusals = rt.block_on(async {
        let c = ControlClient::connect(addr, &creds, Duration::from_secs(5))
            .await
            .expect("connect as worker-1");
        let other = NodeId("worker-2".into());
        let mut refusals = Vec::new();
        for req in [
            ControlRequest::Heartbeat {
                node: other.clone(),
                tasks: Vec::new(),
            },
            ControlRequest::Attach { node: other },
            ControlRequest::Cancel { task: TaskId(1) },
            ControlRequest::Register(wmig_coordinator::NodeInfo {
                name: NodeId("worker-1".into()),
                role: wmig_coordinator::Role::Monitor,
                slots: 0,
                labels: Default::default(),
                addr: String::new(),
                pid: 1,
            }),
        ] {
            match c.ask(&req).await {
                Err(ControlError::Remote(e)) => refusals.push(e.message),
                other => panic!("{req:?} from worker-1's certificate: {other:?}"),
            }
        }
        c.ask(&ControlRequest::ListNodes)
            .await
            .expect("any cluster member may read");
        refusals
    });
    assert!(
        refusals[0].starts_with(
            "permission denied: worker-1 is a worker; a heartbeat for worker-2 needs worker-2's own certificate"
        ),
        "{refusals:?}"
    );
    assert!(
        refusals[1].contains(
            "attaching to the command stream for worker-2 needs worker-2's own certificate"
        ),
        "{refusals:?}"
    );
    assert_eq!(
        refusals[2], "permission denied: worker-1 is a worker; cancelling a task needs an operator",
        "{refusals:?}"
    );
    assert_eq!(
        refusals[3],
        "permission denied: worker-1 is a worker; registering as a monitor needs a monitor",
        "{refusals:?}"
    );
    // Nothing changed for the real worker-2.
    assert_eq!(up.node("worker-2")["state"], "online");
}

/// `wmig cert issue` gives another machine an identity without the CA key:
/// a worker started from that directory joins under that name, and the
/// directory can act as nothing else (not another node, not an operator).
#[test]
fn a_worker_joins_from_an_issued_directory_without_the_ca_key() {
    let up = Up::start(1);
    let other = up.dir.with_file_name("other-machine");
    let o = run(up.cmd(&["cert", "issue", "worker-7", "--out"]).arg(&other));
    assert!(o.status.success(), "cert issue: {}", stderr(&o));
    for file in ["ca.pem", "certs/worker-7.pem", "config.toml"] {
        assert!(other.join(file).exists(), "{file} was written");
    }
    assert!(!other.join("ca.key").exists(), "the CA key stays home");
    let again = run(up.cmd(&["cert", "issue", "worker-8", "--out"]).arg(&other));
    assert!(
        !again.status.success(),
        "an existing directory is not overwritten"
    );

    let mut worker = wmig()
        .env("WMIG_CLUSTER", &other)
        .args(["worker", "--name", "worker-7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker-7");
    wait_until("worker-7 joins", Duration::from_secs(30), || {
        up.json(&["nodes", "--json"]).as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["name"] == "worker-7" && n["state"] == "online")
        })
    });
    // It can be nobody else: not another worker, not the operator.
    let o = run(wmig()
        .env("WMIG_CLUSTER", &other)
        .args(["worker", "--name", "worker-8"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no certificate for `worker-8`")
            && stderr(&o).contains("wmig cert issue worker-8"),
        "{}",
        stderr(&o)
    );
    // Commands run there present worker-7's certificate: reading works,
    // acting is refused by the coordinator with the role message.
    let o = run(wmig().env("WMIG_CLUSTER", &other).arg("ps"));
    assert!(o.status.success(), "a worker reads: {}", stderr(&o));
    let o = run(wmig().env("WMIG_CLUSTER", &other).args(["cancel", "t-1"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "permission denied: worker-7 is a worker; cancelling a task needs an operator"
        ),
        "{}",
        stderr(&o)
    );
    // And it runs tasks like any worker.
    let id = up.submit(artifacts::EXIT_CODE, &["--on", "worker-7"], &["4"]);
    assert_eq!(
        run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
            .status
            .code(),
        Some(4)
    );

    // A revocation made at home reaches the other machine: the coordinator
    // passes it on, and worker-7's own list (which its live-migration
    // listener honours) gains it.
    let third = up.dir.with_file_name("third-machine");
    let o = run(up.cmd(&["cert", "issue", "worker-9", "--out"]).arg(&third));
    assert!(o.status.success(), "cert issue: {}", stderr(&o));
    let o = run(&mut up.cmd(&["cert", "revoke", "worker-9"]));
    assert!(o.status.success(), "cert revoke: {}", stderr(&o));
    assert!(stdout(&o).contains("passes it on"), "{}", stdout(&o));
    let serial = std::fs::read_to_string(up.dir.join("revoked.toml"))
        .expect("revoked.toml at home")
        .lines()
        .find_map(|l| {
            l.strip_prefix("serial = ")
                .map(|s| s.trim_matches('"').to_owned())
        })
        .expect("a serial");
    wait_until("worker-7's list has it", Duration::from_secs(10), || {
        std::fs::read_to_string(other.join("revoked.toml")).is_ok_and(|t| t.contains(&serial))
    });
    // And the registry took it (here it shares the directory, so it adds
    // nothing new, but the hand-over ran).
    let log = up.dir.join("logs").join("coordinator.log");
    wait_until("the registry has the list", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("revocations passed on to the registry"))
    });
    // Only an operator may add to the cluster's list.
    let o = run(wmig()
        .env("WMIG_CLUSTER", &other)
        .args(["cert", "revoke", "worker-1", "--serial", "abcdef"]));
    assert!(
        stderr(&o).contains("revoking certificates needs an operator"),
        "{}",
        stderr(&o)
    );
    let _ = worker.kill();
    let _ = worker.wait();
}

/// Output a task writes while the coordinator is killed and restarted
/// reaches the restarted one exactly once: the worker keeps what was not
/// acknowledged (acknowledged output is fsynced first) and resends it.
#[test]
fn output_written_across_a_coordinator_kill_has_no_gap_and_no_duplicate() {
    let up = Up::start(2);
    let coordinator = up.pid_of("coordinator");
    // Prints a line every ~10 % of a run of a few seconds.
    let args = ["600000000"];
    let id = up.submit(artifacts::COUNTER, &[], &args);
    wait_until("the first line is stored", Duration::from_secs(60), || {
        up.json(&["inspect", &id, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });
    kill9(u64::from(coordinator));
    std::thread::sleep(Duration::from_millis(1500));
    let _restarted = up.restart_coordinator();
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
    assert_eq!(
        up.ok(&["logs", &id]),
        local_stdout(artifacts::COUNTER, &args),
        "output differs from a local run"
    );
}

/// The coordinator's disk loses the tail of a task's stored output (here
/// cut by hand while it is down): the worker, which keeps the last MiB it
/// delivered, sends the hole again and the output is whole.
#[test]
fn output_the_coordinator_lost_is_sent_again_by_the_worker() {
    // Long enough that the worker reconnects and keeps its task (a recovery
    // elsewhere would replay the output from a checkpoint instead).
    let patient = Duration::from_secs(120);
    let up = Up::start_with(1, &["--offline-timeout", "120s"]);
    let coordinator = up.pid_of("coordinator");
    let args = ["600000000"];
    let id = up.submit(artifacts::COUNTER, &[], &args);
    let stored = up
        .dir
        .join("coordinator")
        .join("output")
        .join(format!("{id}.stdout"));
    wait_until("two lines are stored", Duration::from_secs(60), || {
        std::fs::read(&stored).is_ok_and(|b| b.iter().filter(|&&c| c == b'\n').count() >= 2)
    });
    kill9(u64::from(coordinator));
    let len = std::fs::metadata(&stored).expect("stored output").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .expect("open stored output");
    file.set_len(len / 3).expect("cut the stored output");
    drop(file);
    let _restarted = up.restart_coordinator_with(patient);
    let o = run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]));
    assert_eq!(o.status.code(), Some(0), "wait {id}: {}", stderr(&o));
    let t = up.json(&["inspect", &id, "--json"]);
    assert_eq!(t["epoch"], 1, "the task never left its worker: {t}");
    assert_eq!(
        up.ok(&["logs", &id]),
        local_stdout(artifacts::COUNTER, &args),
        "output differs from a local run"
    );
}
