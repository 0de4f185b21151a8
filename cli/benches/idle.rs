//! `cargo bench -p wmig --bench idle`: what idle workers cost the
//! coordinator. A real `wmig up` (registry, coordinator, one worker) plus N
//! more `wmig worker` processes with 2 slots each and nothing to run; once
//! all are online, the coordinator's CPU time (`/proc/PID/stat`) over 10 s,
//! as a share of one core, and per worker-second. Goal (issue #12): under
//! 10 % of a core at 200 workers.
//!
//! `WMIG_BENCH_WORKERS=50,100,200` (default) chooses the sizes.
//!
//! Then simulated members: `WMIG_BENCH_SIMULATED=1000` (default; 0 skips)
//! members from this one process, each registered over its own QUIC
//! connection with its own certificate, each a member of the SWIM
//! membership on its own UDP socket, each checking in when the coordinator
//! asks, exactly as a worker does; the coordinator cannot tell them apart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Reaped(Vec<Child>);
impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here 11 and 12.
    Ok(f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn online_workers(dir: &Path) -> usize {
    let out = Command::new(env!("CARGO_BIN_EXE_wmig"))
        .env("WMIG_CLUSTER", dir)
        .args(["nodes", "--json"])
        .output();
    let Ok(out) = out else { return 0 };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return 0;
    };
    v.as_array().map_or(0, |a| {
        a.iter()
            .filter(|n| n["role"] == "worker" && n["state"] == "online")
            .count()
    })
}

/// Start `wmig up` with one worker; the cluster directory and the
/// coordinator's pid.
fn start_up(tmp: &Path, children: &mut Reaped) -> anyhow::Result<(std::path::PathBuf, u32)> {
    let dir = tmp.join("cluster");
    let mut up = Command::new(env!("CARGO_BIN_EXE_wmig"))
        .env("WMIG_CLUSTER", &dir)
        .env("WMIG_CACHE_DIR", tmp.join("cache"))
        .env("WMIG_LOG", "warn")
        .args(["up", "--workers", "1", "--slots", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = up
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let err = up
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    children.0.push(up);
    let mut lines = BufReader::new(out).lines();
    anyhow::ensure!(
        matches!(lines.next(), Some(Ok(l)) if l == "ready"),
        "wmig up did not get ready"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(pid) = l
                .strip_prefix("coordinator")
                .and_then(|r| r.rsplit_once("(pid "))
                .and_then(|(_, p)| p.trim_end_matches(')').parse::<u32>().ok())
            {
                let _ = tx.send(pid);
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("wmig up did not report the coordinator's pid"))?;
    Ok((dir, pid))
}

/// `n` members registered and heartbeating from this process.
fn measure_simulated(n: usize) -> anyhow::Result<(f64, usize)> {
    use wmig_coordinator::wire::{ControlRequest, ControlResponse};
    use wmig_coordinator::{ControlClient, NodeInfo, Role};
    let tmp = tempfile::TempDir::new()?;
    let mut children = Reaped(Vec::new());
    let (dir, coordinator) = start_up(tmp.path(), &mut children)?;
    let cluster = wmig_net::ClusterDir::new(&dir);
    let addr: std::net::SocketAddr = cluster
        .config()?
        .coordinator
        .ok_or_else(|| anyhow::anyhow!("no coordinator address"))?
        .parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let share = rt.block_on(async {
        let mut members: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
        for i in 0..n {
            let name = format!("sim-{i}");
            let creds = cluster.credentials_as(&name, wmig_net::CertRole::Worker)?;
            members.spawn(async move {
                let client = ControlClient::connect(addr, &creds, Duration::from_secs(30)).await?;
                let info = NodeInfo {
                    name: wmig_proto::NodeId(name.clone()),
                    role: Role::Worker,
                    slots: 2,
                    labels: Default::default(),
                    addr: String::new(),
                    pid: std::process::id(),
                };
                let (join, timeout) = match client.ask(&ControlRequest::Register(info)).await? {
                    ControlResponse::Registered {
                        gossip,
                        offline_timeout_ms,
                        ..
                    } => (gossip, Duration::from_millis(offline_timeout_ms)),
                    other => anyhow::bail!("registration answered {other:?}"),
                };
                // A member of the SWIM membership, as `wmig worker` runs one
                // (here a task of this process's runtime, not a thread).
                let _member = match join {
                    Some(join) => {
                        let at = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                        Some(
                            wmig_gossip::Gossip::spawn(wmig_gossip::GossipConfig {
                                me: wmig_gossip::Peer::new(wmig_gossip::Kind::Worker, &name, at),
                                bind: at,
                                key: join.key,
                                offline_timeout: timeout,
                                seeds: join.seeds,
                            })
                            .await?,
                        )
                    }
                    None => None,
                };
                // Spread the check-ins over the second, as independent nodes are.
                tokio::time::sleep(Duration::from_millis((i * 997 % 1000) as u64)).await;
                loop {
                    // Check in when the coordinator asks to (every second
                    // without the membership).
                    let next = client
                        .heartbeat(&wmig_proto::NodeId(name.clone()), Vec::new())
                        .await
                        .map_or(Duration::from_secs(1), |c| c.next);
                    tokio::time::sleep(next).await;
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while online_workers(&dir) < n + 1 {
            if let Some(Ok(Err(e))) = members.try_join_next() {
                anyhow::bail!("a simulated member failed: {e:#}");
            }
            anyhow::ensure!(Instant::now() < deadline, "not all {n} members came online");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let window = Duration::from_secs(10);
        let before = cpu_ticks(coordinator)?;
        tokio::time::sleep(window).await;
        let ticks = cpu_ticks(coordinator)? - before;
        // Reported, not required: a thousand members on one runtime of a
        // 2-core machine can starve a few into a (correct) "down".
        let online = online_workers(&dir);
        members.abort_all();
        anyhow::Ok((ticks as f64 / clock_ticks() / window.as_secs_f64(), online))
    })?;
    Ok(share)
}

fn measure(n: usize) -> anyhow::Result<(f64, u64)> {
    let tmp = tempfile::TempDir::new()?;
    let exe = env!("CARGO_BIN_EXE_wmig");
    let mut children = Reaped(Vec::new());
    let (dir, coordinator) = start_up(tmp.path(), &mut children)?;

    for i in 0..n {
        let log = std::fs::File::create(tmp.path().join(format!("idle-{i}.log")))?;
        children.0.push(
            Command::new(exe)
                .env("WMIG_CLUSTER", &dir)
                .env("WMIG_CACHE_DIR", tmp.path().join("cache"))
                .env("WMIG_LOG", "warn")
                .args(["worker", "--name", &format!("idle-{i}"), "--slots", "2"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while online_workers(&dir) < n + 1 {
        anyhow::ensure!(Instant::now() < deadline, "not all {n} workers came online");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let joining settle, then measure a quiet window.
    std::thread::sleep(Duration::from_secs(3));
    let window = Duration::from_secs(10);
    let before = cpu_ticks(coordinator)?;
    std::thread::sleep(window);
    let ticks = cpu_ticks(coordinator)? - before;
    let online = online_workers(&dir);
    anyhow::ensure!(
        online == n + 1,
        "{online} of {} workers online at the end",
        n + 1
    );
    let share = ticks as f64 / clock_ticks() / window.as_secs_f64();
    Ok((share, ticks))
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("WMIG_BENCH_WORKERS")
        .unwrap_or_else(|_| "50,100,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "Coordinator CPU with idle workers (real `wmig worker` processes, 127.0.0.1, 10 s window)"
    );
    println!("| idle workers | coordinator CPU (share of one core) | per worker | goal at 200 |");
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let (share, _) = measure(n)?;
        let per = share * 1e3 / (n + 1) as f64;
        println!("| {n} | {:.1} % | {per:.2} ms/s | < 10 % |", share * 100.0);
    }
    let simulated: usize = std::env::var("WMIG_BENCH_SIMULATED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if simulated > 0 {
        let (share, online) = measure_simulated(simulated)?;
        let per = share * 1e3 / (simulated + 1) as f64;
        println!(
            "| {simulated} simulated (one process, a connection, certificate and gossip socket each; {online} of {} online at the end) | {:.1} % | {per:.2} ms/s | — |",
            simulated + 1,
            share * 100.0
        );
    }
    Ok(())
}
