//! `wmig up`: the embedded local cluster. Registry, coordinator and workers
//! run as separate `wmig` processes on 127.0.0.1 (ports chosen by the OS),
//! exactly as they would on separate machines; this process only starts
//! them, waits until every worker is online, prints `ready`, and stops them
//! all on Ctrl-C or SIGTERM.
//!
//! Each child's output goes to `CLUSTER/logs/NAME.log`. Children are tied to
//! this process (`PR_SET_PDEATHSIG` on Linux), so even a `kill -9` of
//! `wmig up` leaves no orphans behind.
//!
//! Once ready, `wmig up` supervises: a child that dies is started again
//! with the same arguments (the registry and the coordinator on the
//! addresses they had, so nobody has to learn new ones) after a backoff of
//! 1 s, doubling to 32 s while it keeps dying within a minute of its start.
//! `--no-restart` leaves dead children dead (the tests that kill nodes on
//! purpose and start them by hand use it).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wmig_coordinator::Liveness;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

use crate::cmd::control::{shutdown_signal, ControlTarget};
use crate::cmd::registry::{parse_duration, runtime};

#[derive(clap::Args)]
pub struct UpCommand {
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Number of worker processes.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    /// Task slots per worker.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// A node silent this long is declared offline.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    offline_timeout: Duration,
    /// The coordinator's crash budget: losses of its worker a task may
    /// cause before it fails (0: no limit).
    #[arg(long, default_value_t = wmig_coordinator::state::DEFAULT_CRASH_BUDGET)]
    crash_budget: u32,
    /// Workers' checkpoint period for tasks that do not set their own.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_every: Duration,
    /// Once ready, print the web dashboard's URL (with the operator token)
    /// and open it when there is a desktop (`$BROWSER`, `$DISPLAY`).
    #[arg(long)]
    dashboard: bool,
    /// How long to wait for every node to come up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// Do not start a child again when it dies.
    #[arg(long)]
    no_restart: bool,
    /// Coordinators: 1 is the embedded coordinator with its local event
    /// log; more start that many etcd members (Debian's `etcd`, data under
    /// CLUSTER/etcd) and as many coordinators replicated on them, one of
    /// which leads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
    coordinators: u32,
    /// Registry nodes: 1 is one standalone registry; more start that many
    /// nodes of a ring (`registry-1`…, each with its own store under
    /// CLUSTER/registry-N), which keep each chunk on two of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    registries: u32,
    /// The registry nodes store objects in this S3-compatible bucket
    /// (s3://BUCKET[/PREFIX]; see `wmig registry serve --help`) instead of
    /// local directories.
    #[arg(long)]
    s3: Option<String>,
    /// The coordinators' budget of check-ins per second (see `wmig
    /// coordinator --help`).
    #[arg(long, default_value_t = wmig_coordinator::server::CHECK_INS_PER_SEC)]
    check_ins_per_sec: f64,
}

/// One supervised child: how to start it again, and its current process.
struct Node {
    name: String,
    /// The program (`wmig` itself unless set, e.g. `etcd`).
    program: Option<PathBuf>,
    args: Vec<String>,
    /// Prints `listening on ADDR` on stdout (the registry, the coordinator).
    listens: bool,
    pid: u32,
    started: Instant,
    /// Not running (exited, or not started yet).
    dead: bool,
    /// Restarts in a row: reset once the child stays up for a minute.
    restarts: u32,
    /// When a dead child is to be started again.
    due: Option<Instant>,
}

impl Node {
    fn new(name: &str, args: &[&str], listens: bool) -> Node {
        Node {
            name: name.to_owned(),
            program: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            listens,
            pid: 0,
            started: Instant::now(),
            dead: true,
            restarts: 0,
            due: None,
        }
    }

    /// Pin `flag`'s value (an address first chosen by the OS) for restarts.
    fn pin(&mut self, flag: &str, value: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            if let Some(v) = self.args.get_mut(i + 1) {
                *v = value.to_owned();
            }
        }
    }
}

/// How long a child stays up before its next death counts as a new series.
const STABLE: Duration = Duration::from_secs(60);

impl UpCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let dir = ClusterDir::new(&self.cluster);
        if !dir.is_initialized() {
            dir.init(false).with_context(|| {
                format!("could not create a cluster in {}", self.cluster.display())
            })?;
            eprintln!("initialized cluster in {}", self.cluster.display());
        }
        let logs = self.cluster.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("could not create {}", logs.display()))?;
        let exe = std::env::current_exe().context("could not find the wmig executable")?;
        let cluster = self.cluster.display().to_string();
        let (exited_tx, exited_rx) = mpsc::channel::<(String, String)>();
        let mut nodes: Vec<Node> = Vec::new();
        let result = (|| {
            let registries =
                self.start_registries(&exe, &logs, &cluster, &mut nodes, &exited_tx)?;
            // Clients and workers reach the ring through any of its nodes.
            dir.update_config(|c| c.registry = Some(registries.join(",")))?;
            let timeout = format!("{}ms", self.offline_timeout.as_millis());
            // A node should miss several heartbeats before it is declared
            // offline: one per second, or a quarter of a short timeout.
            let beat = (self.offline_timeout / 4).min(Duration::from_secs(1));
            let heartbeat = format!("{}ms", beat.as_millis().max(10));
            let budget = self.crash_budget.to_string();
            let check_ins = self.check_ins_per_sec.to_string();
            let coordinator_args = vec![
                "coordinator",
                "--cluster",
                &cluster,
                "--listen",
                "127.0.0.1:0",
                "--offline-timeout",
                &timeout,
                "--heartbeat",
                &heartbeat,
                "--crash-budget",
                &budget,
                "--check-ins-per-sec",
                &check_ins,
            ];
            if self.coordinators > 1 {
                let endpoints = start_etcd(
                    &logs,
                    &self.cluster,
                    self.coordinators,
                    &mut nodes,
                    &exited_tx,
                )?;
                let mut addrs = Vec::new();
                let mut https = Vec::new();
                for i in 1..=self.coordinators {
                    let name = format!("coordinator-{i}");
                    let http = format!("127.0.0.1:{}", free_port()?);
                    let mut args = coordinator_args.clone();
                    args.extend(["--http", &http, "--etcd", &endpoints, "--name", &name]);
                    let mut coordinator = Node::new(&name, &args, true);
                    let addr = start(&exe, &logs, &mut coordinator, &exited_tx, false)?
                        .unwrap_or_default();
                    eprintln!("{name} {addr} (pid {})", coordinator.pid);
                    coordinator.pin("--listen", &addr);
                    addrs.push(addr);
                    https.push(http);
                    nodes.push(coordinator);
                }
                // Clients and workers reach whichever coordinator leads.
                dir.update_config(|c| {
                    c.coordinator = Some(addrs.join(","));
                    c.http = https.first().cloned();
                })?;
            } else {
                let mut args = coordinator_args.clone();
                args.extend(["--http", "127.0.0.1:0"]);
                let mut coordinator = Node::new("coordinator", &args, true);
                let addr =
                    start(&exe, &logs, &mut coordinator, &exited_tx, false)?.unwrap_or_default();
                eprintln!("coordinator  {addr} (pid {})", coordinator.pid);
                coordinator.pin("--listen", &addr);
                if let Some(http) = dir.config().ok().and_then(|c| c.http) {
                    coordinator.pin("--http", &http);
                }
                nodes.push(coordinator);
            }
            let slots = self.slots.to_string();
            let every = format!("{}ms", self.checkpoint_every.as_millis());
            for i in 1..=self.workers {
                let name = format!("worker-{i}");
                let mut worker = Node::new(
                    &name,
                    &[
                        "worker",
                        "--cluster",
                        &cluster,
                        "--name",
                        &name,
                        "--slots",
                        &slots,
                        "--checkpoint-every",
                        &every,
                    ],
                    false,
                );
                start(&exe, &logs, &mut worker, &exited_tx, false)?;
                nodes.push(worker);
            }
            anyhow::Ok(())
        })();
        let code = match result {
            Ok(()) => runtime()?.block_on(self.serve(&exe, &exited_tx, &exited_rx, &mut nodes)),
            Err(e) => Err(e),
        };
        nodes.retain(|n| !n.dead);
        stop_all(&nodes, &exited_rx);
        code
    }

    /// Wait for readiness, then until a signal.
    async fn serve(
        &self,
        exe: &Path,
        exited_tx: &mpsc::Sender<(String, String)>,
        exited: &mpsc::Receiver<(String, String)>,
        nodes: &mut [Node],
    ) -> anyhow::Result<i32> {
        let target = ControlTarget {
            coordinator: None,
            cluster: self.cluster.clone(),
        };
        let deadline = Instant::now() + self.ready_timeout;
        let client = loop {
            if let Ok((name, how)) = exited.try_recv() {
                anyhow::bail!(
                    "{name} exited during start-up ({how}); see {}",
                    log_path(&self.cluster, &name).display()
                );
            }
            match target.connect().await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        if self.registries > 1 {
            self.await_ring(exited, deadline).await?;
        }
        let want: Vec<String> = (1..=self.workers).map(|i| format!("worker-{i}")).collect();
        loop {
            if let Ok((name, how)) = exited.try_recv() {
                anyhow::bail!(
                    "{name} exited during start-up ({how}); see {}",
                    log_path(&self.cluster, &name).display()
                );
            }
            let nodes = client.nodes().await?;
            let online = want
                .iter()
                .filter(|w| {
                    nodes
                        .iter()
                        .any(|n| n.name.0 == **w && n.liveness == Liveness::Online)
                })
                .count();
            if online == want.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {online} of {} workers came online within {:?}; see the logs in {}",
                want.len(),
                self.ready_timeout,
                self.cluster.join("logs").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.close();
        eprintln!("{} workers online: {}", want.len(), want.join(", "));
        if self.dashboard {
            let (_, url) = crate::cmd::dashboard::dashboard_url(&self.cluster)?;
            eprintln!("dashboard    {url}");
            // Open it where there is a desktop to open it on.
            let desktop = ["BROWSER", "DISPLAY", "WAYLAND_DISPLAY"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
            if desktop {
                crate::cmd::dashboard::open_browser(&url);
            }
        }
        println!("ready");
        std::io::stdout().flush()?;
        // Supervise: report children that die and start them again.
        let logs = self.cluster.join("logs");
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    while let Ok((name, how)) = exited.try_recv() {
                        let Some(n) = nodes.iter_mut().find(|n| n.name == name) else {
                            continue;
                        };
                        n.dead = true;
                        if self.no_restart {
                            eprintln!("{name} exited ({how})");
                            continue;
                        }
                        if n.started.elapsed() >= STABLE {
                            n.restarts = 0;
                        }
                        let wait = Duration::from_secs(1 << n.restarts.min(5));
                        n.restarts += 1;
                        n.due = Some(Instant::now() + wait);
                        eprintln!(
                            "{name} exited ({how}); starting it again in {} s (restart {} in a row)",
                            wait.as_secs(),
                            n.restarts
                        );
                    }
                    let now = Instant::now();
                    for n in nodes.iter_mut().filter(|n| n.due.is_some_and(|d| d <= now)) {
                        n.due = None;
                        match tokio::task::block_in_place(|| start(exe, &logs, n, exited_tx, true)) {
                            Ok(_) => eprintln!("{} restarted (pid {})", n.name, n.pid),
                            Err(e) => {
                                let wait = Duration::from_secs(1 << n.restarts.min(5));
                                n.restarts += 1;
                                n.due = Some(Instant::now() + wait);
                                eprintln!(
                                    "could not start {} again: {e:#}; next try in {} s",
                                    n.name,
                                    wait.as_secs()
                                );
                            }
                        }
                    }
                }
            }
        }
        eprintln!("stopping the cluster");
        Ok(0)
    }
}

impl UpCommand {
    /// Start the registry, or the nodes of a registry ring; their addresses.
    fn start_registries(
        &self,
        exe: &Path,
        logs: &Path,
        cluster: &str,
        nodes: &mut Vec<Node>,
        exited_tx: &mpsc::Sender<(String, String)>,
    ) -> anyhow::Result<Vec<String>> {
        let mut addrs: Vec<String> = Vec::new();
        let serve = [
            "registry",
            "serve",
            "--cluster",
            cluster,
            "--listen",
            "127.0.0.1:0",
        ];
        if self.registries == 1 {
            let mut args = serve.to_vec();
            if let Some(url) = &self.s3 {
                args.extend(["--s3", url]);
            }
            let mut registry = Node::new("registry", &args, true);
            let addr = start(exe, logs, &mut registry, exited_tx, false)?.unwrap_or_default();
            eprintln!("registry     {addr} (pid {})", registry.pid);
            registry.pin("--listen", &addr);
            nodes.push(registry);
            addrs.push(addr);
            return Ok(addrs);
        }
        let timeout = format!("{}ms", self.offline_timeout.as_millis());
        for i in 1..=self.registries {
            let name = format!("registry-{i}");
            let data = self.cluster.join(&name).display().to_string();
            let store = match &self.s3 {
                Some(url) => ["--s3", url.as_str()],
                None => ["--data", data.as_str()],
            };
            let mut args = serve.to_vec();
            args.extend(store);
            args.extend(["--name", &name, "--offline-timeout", &timeout]);
            // Every node joins through the ones started before it (and a
            // restarted node through all of them).
            let join = addrs.join(",");
            if !addrs.is_empty() {
                args.extend(["--join", &join]);
            }
            let mut node = Node::new(&name, &args, true);
            let addr = start(exe, logs, &mut node, exited_tx, false)?.unwrap_or_default();
            eprintln!("{name:<12} {addr} (pid {})", node.pid);
            node.pin("--listen", &addr);
            addrs.push(addr);
            nodes.push(node);
        }
        // The first node, restarted, joins through the others too.
        let all = addrs.join(",");
        for n in nodes.iter_mut().filter(|n| n.name.starts_with("registry-")) {
            if let Some(value) = n
                .args
                .iter()
                .position(|a| a == "--join")
                .and_then(|i| n.args.get_mut(i + 1))
            {
                *value = all.clone();
            } else {
                n.args.extend(["--join".to_owned(), all.clone()]);
            }
        }
        Ok(addrs)
    }

    /// Wait until every registry node sees all the others alive.
    async fn await_ring(
        &self,
        exited: &mpsc::Receiver<(String, String)>,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let target = crate::cmd::registry::Target::new(None, self.cluster.clone());
        loop {
            if let Ok((name, how)) = exited.try_recv() {
                anyhow::bail!(
                    "{name} exited during start-up ({how}); see {}",
                    log_path(&self.cluster, &name).display()
                );
            }
            let alive = match target.connect_with(Duration::from_secs(2)).await {
                Ok(c) => {
                    let n = c.ring().members.iter().filter(|m| m.alive).count();
                    c.close().await;
                    n
                }
                Err(_) => 0,
            };
            if alive == self.registries as usize {
                eprintln!("registry ring of {alive} nodes formed");
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {alive} of {} registry nodes formed a ring within {:?}; see the logs in {}",
                self.registries,
                self.ready_timeout,
                self.cluster.join("logs").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A port free on loopback now (for children that must be told theirs).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("could not find a free port")?
        .local_addr()?
        .port())
}

/// Start an etcd cluster of `members` processes under CLUSTER/etcd and
/// return its client URLs, comma-separated. The ports are kept in
/// CLUSTER/etcd/ports, because a member's data remembers its peers'
/// addresses: a later `wmig up` on the same directory reuses them.
fn start_etcd(
    logs: &Path,
    cluster: &Path,
    members: u32,
    nodes: &mut Vec<Node>,
    exited: &mpsc::Sender<(String, String)>,
) -> anyhow::Result<String> {
    let etcd = which("etcd").context(
        "`wmig up --coordinators N` runs etcd, which is not installed: install Debian's \
         etcd-server (`apt-get install etcd-server`, or run scripts/deps)",
    )?;
    let root = cluster.join("etcd");
    std::fs::create_dir_all(&root)
        .with_context(|| format!("could not create {}", root.display()))?;
    let ports_file = root.join("ports");
    let saved: Vec<(u16, u16)> = std::fs::read_to_string(&ports_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (c, p) = l.split_once(' ')?;
            Some((c.parse().ok()?, p.parse().ok()?))
        })
        .collect();
    let ports: Vec<(u16, u16)> = if saved.len() == members as usize {
        saved
    } else {
        let mut fresh = Vec::new();
        for _ in 0..members {
            fresh.push((free_port()?, free_port()?));
        }
        let text: String = fresh.iter().map(|(c, p)| format!("{c} {p}\n")).collect();
        std::fs::write(&ports_file, text)
            .with_context(|| format!("could not write {}", ports_file.display()))?;
        fresh
    };
    // Members and coordinators speak TLS with certificates of this
    // cluster's CA, both ways (`--client-cert-auth`): nothing else on the
    // machine can read or write the cluster's state.
    let tls_dir = root.join("tls");
    // A fresh one at every start, so it never expires under a cluster.
    let tls = ClusterDir::new(cluster)
        .etcd_tls(
            &[std::net::Ipv4Addr::LOCALHOST.into()],
            wmig_net::certs::Validity::days(wmig_net::certs::DEFAULT_DAYS),
            &tls_dir,
        )
        .context("could not issue etcd's certificate")?;
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("etcd-{}=https://127.0.0.1:{p}", i + 1))
        .collect();
    let initial = initial.join(",");
    let token = format!("wmig-{}", cluster.display());
    let mut clients = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let name = format!("etcd-{}", i + 1);
        let data = root.join(&name);
        let client_url = format!("https://127.0.0.1:{client}");
        let peer_url = format!("https://127.0.0.1:{peer}");
        let data_s = data.display().to_string();
        let mut node = Node::new(
            &name,
            &[
                "--name",
                &name,
                "--data-dir",
                &data_s,
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                &ca,
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
            ],
            false,
        );
        node.program = Some(etcd.clone());
        start(&etcd, logs, &mut node, exited, false)?;
        eprintln!("{name}       {client_url} (pid {})", node.pid);
        nodes.push(node);
        clients.push(client_url);
    }
    Ok(clients.join(","))
}

/// `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn log_path(cluster: &Path, name: &str) -> PathBuf {
    cluster.join("logs").join(format!("{name}.log"))
}

/// A command for child `name`; its stderr goes to its log, which a restart
/// appends to.
fn command(
    exe: &Path,
    logs: &Path,
    name: &str,
    args: &[String],
    restart: bool,
) -> anyhow::Result<Command> {
    let path = logs.join(format!("{name}.log"));
    let log = File::options()
        .create(true)
        .write(true)
        .append(restart)
        .truncate(!restart)
        .open(&path)
        .with_context(|| format!("could not create the log of {name}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stderr(log).env(
        "WMIG_LOG",
        std::env::var("WMIG_LOG").unwrap_or_else(|_| "info".to_owned()),
    );
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it only asks the kernel to SIGKILL the child when this
        // thread (the main thread, which lives until exit) dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    Ok(cmd)
}

/// Start `node`'s process; for a child that prints `listening on ADDR`,
/// wait for it and return ADDR.
fn start(
    exe: &Path,
    logs: &Path,
    node: &mut Node,
    exited: &mpsc::Sender<(String, String)>,
    restart: bool,
) -> anyhow::Result<Option<String>> {
    let name = node.name.clone();
    let program = node.program.clone().unwrap_or_else(|| exe.to_path_buf());
    let mut cmd = command(&program, logs, &name, &node.args, restart)?;
    cmd.stdout(if node.listens {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {name}"))?;
    node.pid = child.id();
    node.started = Instant::now();
    node.dead = false;
    let Some(stdout) = child.stdout.take() else {
        watch(child, &name, exited);
        return Ok(None);
    };
    let (addr_tx, addr_rx) = mpsc::channel();
    // Keep draining stdout so the child never blocks on a full pipe.
    let log = logs.join(format!("{name}.log"));
    std::thread::spawn(move || {
        let mut sink = std::fs::OpenOptions::new().append(true).open(&log).ok();
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let (false, Some(addr)) = (sent, line.strip_prefix("listening on ")) {
                let _ = addr_tx.send(addr.to_owned());
                sent = true;
            }
            if let Some(f) = sink.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    watch(child, &name, exited);
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
        anyhow::anyhow!(
            "{name} did not start listening; see {}",
            logs.join(format!("{name}.log")).display()
        )
    })?;
    Ok(Some(addr))
}

/// Reap the child on its own thread and report how it ended.
fn watch(mut child: Child, name: &str, exited: &mpsc::Sender<(String, String)>) {
    let name = name.to_owned();
    let exited = exited.clone();
    std::thread::spawn(move || {
        let how = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = exited.send((name, how));
    });
}

/// SIGTERM every child (workers first, registry last), then SIGKILL what
/// is still there after a grace period.
fn stop_all(nodes: &[Node], exited: &mpsc::Receiver<(String, String)>) {
    let mut alive: Vec<&Node> = nodes.iter().rev().collect();
    for n in &alive {
        signal(n.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive.is_empty() && Instant::now() < deadline {
        match exited.recv_timeout(Duration::from_millis(100)) {
            Ok((name, _)) => alive.retain(|n| n.name != name),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for n in alive {
        signal(n.pid, libc::SIGKILL);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned; it has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
