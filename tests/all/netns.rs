//! Every node on its own host: each in a network namespace of its own with
//! its own address, joined by a bridge in another namespace that the test
//! creates (as root) and removes. Nothing leaves these namespaces. Links
//! are cut by taking a host's port on the bridge down: a real partition,
//! not a signal.
//!
//! Hosts: 1–3 run an etcd member and a coordinator each, 4 the registry,
//! 5–6 a worker each, 7 the operator's `wmig` commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wmig_tests::artifacts;

use crate::cluster::{local_stdout, wait_until, Reaped};
use crate::support::{cache_dir, run, stderr, stdout};

const OPERATOR_HOST: usize = 7;
const HOSTS: usize = 7;

/// The namespaces, bridge and links of one test; removed on drop.
struct Net {
    prefix: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    // No `ip` at all is a reason to skip, not a failure.
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr(&o).trim()))
    }
}

impl Net {
    /// `None` (with the reason) where namespaces cannot be made: not root,
    /// no `ip`, or a sandbox that forbids them.
    fn create() -> Result<Net, String> {
        // Tests in one process run at once: a namespace set each.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let net = Net {
            prefix: format!("wm{}x{n}", std::process::id() % 100_000),
        };
        let switch = net.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for h in 1..=HOSTS {
            let ns = net.host(h);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{h}"),
                "netns",
                &switch,
            ])?;
            ip(&[
                "-n",
                &switch,
                "link",
                "set",
                &format!("p{h}"),
                "master",
                "br0",
            ])?;
            ip(&["-n", &switch, "link", "set", &format!("p{h}"), "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", addr(h)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn host(&self, h: usize) -> String {
        format!("{}-h{h}", self.prefix)
    }

    /// Cut host `h` off from every other host.
    fn cut(&self, h: usize) {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("p{h}"),
            "down",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `wmig ARGS` on host `h`.
    fn wmig(&self, h: usize, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(h), env!("CARGO_BIN_EXE_wmig")])
            .args(args)
            .env("WMIG_CLUSTER", dir)
            .env("WMIG_CACHE_DIR", cache_dir());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its ends of the links.
        for h in 1..=HOSTS {
            let _ = ip(&["netns", "del", &self.host(h)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

fn addr(h: usize) -> String {
    format!("10.231.0.{h}")
}

struct Hosts {
    net: Net,
    dir: PathBuf,
    /// (host, process): etcd members, coordinators, registry, workers.
    procs: Vec<(String, Reaped)>,
    _tmp: tempfile::TempDir,
    /// One set of hosts at a time: each runs three etcd members, three
    /// coordinators, a registry and two workers, too much to double on the
    /// test machine's two cores. Last, so it is released after the rest.
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Hosts {
    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.procs.push((name.to_owned(), Reaped(child)));
    }

    fn pid(&self, name: &str) -> u32 {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.0.id())
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `wmig ARGS` as the operator, from host 7.
    fn cmd(&self, args: &[&str]) -> Command {
        self.net.wmig(OPERATOR_HOST, &self.dir, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = run(&mut self.cmd(args));
        assert!(
            o.status.success(),
            "wmig {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed {text}: {e}"))
    }

    fn nodes(&self) -> Vec<Value> {
        let o = run(&mut self.cmd(&["nodes", "--json"]));
        serde_json::from_str::<Value>(&stdout(&o))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn leader(&self) -> Option<String> {
        self.nodes()
            .iter()
            .find(|n| n["role"] == "coordinator" && n["leader"] == true)
            .and_then(|n| n["name"].as_str().map(str::to_owned))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each node said, for the failure report.
            for (name, _) in &self.procs {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {name} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Start every node on its host and wait until both workers are online.
fn start() -> Option<Hosts> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let net = match Net::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({e}); run as root on Linux");
            return None;
        }
    };
    if !run(Command::new("etcd").arg("--version").stdout(Stdio::null()))
        .status
        .success()
    {
        eprintln!("SKIPPED: etcd is not installed (scripts/deps installs Debian's etcd-server)");
        return None;
    }
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let mut hosts = Hosts {
        _serial: serial,
        net,
        dir: dir.clone(),
        procs: Vec::new(),
        _tmp: tmp,
    };
    let o = run(&mut hosts.cmd(&["init"]));
    assert!(o.status.success(), "wmig init: {}", stderr(&o));
    // etcd over mutual TLS with the cluster's CA, as the README deploys it.
    let tls = dir.join("etcd-tls");
    let ips: Vec<String> = (1..=3).map(addr).collect();
    let o = run(hosts
        .cmd(&["cert", "etcd", "--ip", &ips.join(","), "--out"])
        .arg(&tls));
    assert!(o.status.success(), "wmig cert etcd: {}", stderr(&o));
    let peers: Vec<String> = (1..=3)
        .map(|h| format!("etcd-{h}=https://{}:2380", addr(h)))
        .collect();
    let peers = peers.join(",");
    let clients: Vec<String> = (1..=3)
        .map(|h| format!("https://{}:2379", addr(h)))
        .collect();
    let clients = clients.join(",");
    for h in 1..=3 {
        let data = dir.join(format!("etcd-{h}"));
        let (client, peer) = (
            format!("https://{}:2379", addr(h)),
            format!("https://{}:2380", addr(h)),
        );
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &hosts.net.host(h), "etcd"])
            .args(["--name", &format!("etcd-{h}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &peers,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--client-cert-auth", "--peer-client-cert-auth"]);
        for (flag, file) in [
            ("--trusted-ca-file", "ca.pem"),
            ("--cert-file", "etcd.pem"),
            ("--key-file", "etcd.key"),
            ("--peer-trusted-ca-file", "ca.pem"),
            ("--peer-cert-file", "etcd.pem"),
            ("--peer-key-file", "etcd.key"),
        ] {
            c.arg(flag).arg(tls.join(file));
        }
        hosts.spawn(&format!("etcd-{h}"), c);
    }
    let registry = format!("{}:7701", addr(4));
    let c = hosts
        .net
        .wmig(4, &dir, &["registry", "serve", "--listen", &registry]);
    hosts.spawn("registry", c);
    for h in 1..=3 {
        let listen = format!("{}:7700", addr(h));
        let name = format!("coordinator-{h}");
        let data = dir.join(&name).display().to_string();
        let c = hosts.net.wmig(
            h,
            &dir,
            &[
                "coordinator",
                "--listen",
                &listen,
                "--http",
                "off",
                "--etcd",
                &clients,
                "--name",
                &name,
                "--data",
                &data,
                "--offline-timeout",
                "2s",
                "--heartbeat",
                "500ms",
            ],
        );
        hosts.spawn(&name, c);
    }
    // Every machine dials every coordinator.
    let list: Vec<String> = (1..=3).map(|h| format!("{}:7700", addr(h))).collect();
    let config = dir.join("config.toml");
    wait_until(
        "the registry records its address",
        Duration::from_secs(30),
        || std::fs::read_to_string(&config).is_ok_and(|t| t.contains("registry =")),
    );
    let text = std::fs::read_to_string(&config).expect("config.toml");
    let mut text: String = text
        .lines()
        .filter(|l| !l.starts_with("coordinator"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("coordinator = \"{}\"\n", list.join(",")));
    std::fs::write(&config, text).expect("write config.toml");
    for (h, w) in [(5, "worker-1"), (6, "worker-2")] {
        let cache = dir.join(w).display().to_string();
        let c = hosts.net.wmig(
            h,
            &dir,
            &[
                "worker",
                "--name",
                w,
                "--slots",
                "2",
                "--checkpoint-every",
                "500ms",
                "--cache-dir",
                &cache,
            ],
        );
        hosts.spawn(w, c);
    }
    wait_until("both workers online", Duration::from_secs(60), || {
        let nodes = hosts.nodes();
        ["worker-1", "worker-2"].iter().all(|w| {
            nodes
                .iter()
                .any(|n| n["name"] == *w && n["state"] == "online")
        })
    });
    Some(hosts)
}

/// CPU ticks (user + system) a process has used, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    num(11) + num(12)
}

#[test]
fn partitions_and_kills_across_hosts_lose_nothing_and_run_nothing_twice() {
    let Some(hosts) = start() else { return };
    let args = ["3000000000"];
    let task = hosts.ok(&[
        "submit",
        artifacts::COUNTER,
        "--on",
        "worker-1",
        "--",
        args[0],
    ]);
    let task = task.trim().to_owned();
    wait_until("a checkpoint", Duration::from_secs(60), || {
        !hosts.json(&["inspect", &task, "--json"])["checkpoint_seq"].is_null()
    });

    // 1. Cut the leader's host off: its etcd member is in the minority, so
    //    its lease lapses; it stops, and the other two elect a leader.
    let old = hosts.leader().expect("a leader");
    let old_host: usize = old
        .trim_start_matches("coordinator-")
        .parse()
        .expect("host");
    hosts.net.cut(old_host);
    let cut = Instant::now();
    wait_until(
        "a new leader behind the partition",
        Duration::from_secs(30),
        || hosts.leader().is_some_and(|l| l != old),
    );
    eprintln!("new leader {:?} after {:?}", hosts.leader(), cut.elapsed());
    let pid = hosts.pid(&old);
    wait_until("the cut-off leader stops", Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
    });
    let log = hosts.log(&old);
    assert!(log.contains("lost"), "{old} log:\n{log}");
    let after_cut = hosts.ok(&["submit", artifacts::EXIT_CODE, "--", "5"]);
    assert_eq!(
        run(&mut hosts.cmd(&["wait", after_cut.trim(), "--timeout", "120s"]))
            .status
            .code(),
        Some(5)
    );

    // 2. Cut worker-1's host off: it fences itself (its task stops using
    //    the CPU) and the task recovers on worker-2 from its checkpoint.
    let owner = hosts.json(&["inspect", &task, "--json"]);
    assert_eq!(owner["owner"], "worker-1", "{owner}");
    let epoch = owner["epoch"].as_u64().unwrap_or(0);
    hosts.net.cut(5);
    wait_until(
        "the task recovered on worker-2",
        Duration::from_secs(30),
        || {
            let v = hosts.json(&["inspect", &task, "--json"]);
            v["owner"] == "worker-2" && v["epoch"].as_u64() > Some(epoch)
        },
    );
    let w1 = hosts.pid("worker-1");
    let before = cpu_ticks(w1);
    std::thread::sleep(Duration::from_secs(3));
    let burnt = cpu_ticks(w1) - before;
    // A running counter burns ~300 ticks in 3 s; a fenced worker idles.
    assert!(
        burnt < 60,
        "the cut-off worker kept running its task: {burnt} ticks in 3 s"
    );

    // 3. Kill -9 the current leader: the last coordinator takes over.
    let current = hosts.leader().expect("a leader");
    let pid = hosts.pid(&current);
    let o = run(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(o.status.success());
    wait_until(
        "the last coordinator leads",
        Duration::from_secs(30),
        || hosts.leader().is_some_and(|l| l != current && l != old),
    );

    // Nothing lost, nothing run twice: the output is exactly a local run's.
    hosts.ok(&["wait", &task, "--timeout", "300s"]);
    assert_eq!(
        hosts.ok(&["logs", &task]),
        local_stdout(artifacts::COUNTER, &args)
    );
}

/// A task's files cross hosts that share no network and no path: the
/// operator's directory is moved away once submitted, the task moves live
/// between the workers' hosts, then its host is cut off and it recovers on
/// the other from a checkpoint; its output and final files are wasmtime's.
#[test]
fn a_task_s_files_move_between_hosts_and_survive_a_partition() {
    let Some(hosts) = start() else { return };
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let input = tmp.path().join("input");
    crate::files::input_dir(&input);
    let reference = tmp.path().join("wasmtime");
    let args = ["80", "120"];
    let expected = crate::files::wasmtime_reference(&input, &reference, &args);

    let data = format!("{}::/data", input.display());
    let task = hosts.ok(&[
        "submit",
        artifacts::FILEWORK,
        "--dir",
        &data,
        "--on",
        "worker-1",
        "--",
        args[0],
        args[1],
    ]);
    let task = task.trim().to_owned();
    std::fs::rename(&input, tmp.path().join("gone")).expect("move the input away");
    wait_until("the task writes", Duration::from_secs(60), || {
        hosts.json(&["inspect", &task, "--json"])["stdout_bytes"].as_u64() > Some(0)
    });
    for to in ["worker-2", "worker-1", "worker-2"] {
        let r = hosts.json(&["migrate", &task, to, "--json"]);
        assert_eq!(r["to"], to, "{r}");
    }
    let t = hosts.json(&["inspect", &task, "--json"]);
    let epoch = t["epoch"].as_u64().unwrap_or(0);
    wait_until("a checkpoint on worker-2", Duration::from_secs(30), || {
        hosts.json(&["inspect", &task, "--json"])["checkpoint_seq"]
            .as_u64()
            .is_some_and(|s| s >> 32 == epoch)
    });
    hosts.net.cut(6);
    wait_until(
        "the task recovered on worker-1",
        Duration::from_secs(30),
        || {
            let v = hosts.json(&["inspect", &task, "--json"]);
            v["owner"] == "worker-1" && v["epoch"].as_u64() > Some(epoch)
        },
    );
    hosts.ok(&["wait", &task, "--timeout", "300s"]);
    assert_eq!(hosts.ok(&["logs", &task]), expected);
    let out = tmp.path().join("out");
    hosts.ok(&["files", &task, "-o", &out.display().to_string()]);
    crate::files::same_trees(&out, &reference);
}
