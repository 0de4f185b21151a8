//! `cargo bench -p wmig --bench failover`: coordinators replicated on etcd
//! against the embedded single coordinator, on real `wmig up` clusters
//! (etcd members, coordinators, registry and 3 workers as processes).
//!
//! 1. Submissions per second (up to 64 in flight, trivial tasks; the answer
//!    comes once the submission is durable: fsync of the local log, or an
//!    etcd transaction committed by a majority of 3 members).
//! 2. Failover: from `kill -9` of the leader to the first submission a new
//!    leader accepts, through a client that knows every coordinator. Median
//!    of `WMIG_BENCH_ROUNDS` (default 10). `wmig up` starts each killed
//!    coordinator again, so every round has three.
//!
//! Needs etcd (`scripts/deps` installs Debian's etcd-server).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wmig_coordinator::wire::{ControlRequest, ControlResponse};
use wmig_coordinator::{ControlClient, Placement, Role, TaskOptions, TaskSpec};
use wmig_net::{ClusterDir, Credentials, OPERATOR};
use wmig_registry::{ClientConfig, RegistryClient};

const TRIVIAL: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
const SUBMISSIONS: usize = 1000;
const IN_FLIGHT: usize = 64;

struct Up {
    child: Child,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(extra: &[&str]) -> anyhow::Result<Up> {
    let tmp = tempfile::TempDir::new()?;
    let dir = tmp.path().join("cluster");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wmig"))
        .env("WMIG_CLUSTER", &dir)
        .env("WMIG_CACHE_DIR", tmp.path().join("cache"))
        .env("WMIG_LOG", "warn")
        .args(["up", "--workers", "3", "--slots", "16"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let up = Up {
        child,
        _tmp: tmp,
        dir,
    };
    let mut lines = BufReader::new(out).lines();
    anyhow::ensure!(
        matches!(lines.next(), Some(Ok(l)) if l == "ready"),
        "wmig up {extra:?} did not get ready"
    );
    Ok(up)
}

struct Cluster {
    addrs: Vec<SocketAddr>,
    creds: Credentials,
    bundle: wmig_proto::Hash,
}

async fn cluster(up: &Up) -> anyhow::Result<Cluster> {
    let dir = ClusterDir::new(&up.dir);
    let config = dir.config()?;
    let creds = dir.credentials(OPERATOR)?;
    let reg: SocketAddr = config
        .registry
        .ok_or_else(|| anyhow::anyhow!("no registry"))?
        .parse()?;
    let addrs = config
        .coordinator
        .ok_or_else(|| anyhow::anyhow!("no coordinator"))?
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    let registry = RegistryClient::connect(reg, &creds, ClientConfig::default()).await?;
    let bundle = registry
        .upload_bundle(&wat::parse_str(TRIVIAL)?, None)
        .await?
        .hash;
    Ok(Cluster {
        addrs,
        creds,
        bundle,
    })
}

fn trivial(bundle: wmig_proto::Hash) -> ControlRequest {
    ControlRequest::Submit {
        spec: TaskSpec {
            bundle,
            args: vec!["trivial".into()],
            env: Default::default(),
        },
        options: TaskOptions::default(),
        placement: Placement::LeastLoaded,
    }
}

async fn submit(client: &ControlClient, bundle: wmig_proto::Hash) -> anyhow::Result<()> {
    match client.ask(&trivial(bundle)).await? {
        ControlResponse::Submitted { .. } => Ok(()),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

/// Submissions per second with `IN_FLIGHT` outstanding.
async fn submissions_per_second(c: &Cluster) -> anyhow::Result<f64> {
    let client =
        Arc::new(ControlClient::connect_cluster(&c.addrs, &c.creds, Duration::from_secs(5)).await?);
    submit(&client, c.bundle).await?;
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..SUBMISSIONS {
        let permit = gate.clone().acquire_owned().await?;
        let (client, bundle) = (client.clone(), c.bundle);
        all.spawn(async move {
            let r = submit(&client, bundle).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = all.join_next().await {
        r??;
    }
    let rate = SUBMISSIONS as f64 / start.elapsed().as_secs_f64();
    client.close();
    Ok(rate)
}

/// The leader's pid, once three coordinators are listed and one leads.
async fn leader_of_three(c: &Cluster) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(client) =
            ControlClient::connect_cluster(&c.addrs, &c.creds, Duration::from_secs(5)).await
        {
            let nodes = client.nodes().await.unwrap_or_default();
            client.close();
            let coordinators: Vec<_> = nodes
                .iter()
                .filter(|n| n.role == Role::Coordinator)
                .collect();
            if coordinators.len() == 3 {
                if let Some(l) = coordinators.iter().find(|n| n.leader) {
                    return Ok(l.pid);
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leader among three coordinators"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Milliseconds from SIGKILL of the leader to an accepted submission.
async fn failover_ms(c: &Cluster) -> anyhow::Result<f64> {
    let pid = leader_of_three(c).await?;
    // SAFETY: kill(2) on a process of our own cluster; no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let killed = Instant::now();
    loop {
        if let Ok(client) =
            ControlClient::connect_cluster(&c.addrs, &c.creds, Duration::from_secs(2)).await
        {
            let ok = submit(&client, c.bundle).await.is_ok();
            client.close();
            if ok {
                return Ok(killed.elapsed().as_secs_f64() * 1000.0);
            }
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no leader a minute after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("WMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let local = up(&["--no-restart"])?;
        let local_rate = submissions_per_second(&cluster(&local).await?).await?;
        drop(local);
        let etcd = up(&["--coordinators", "3", "--offline-timeout", "5s"])?;
        let c = cluster(&etcd).await?;
        let etcd_rate = submissions_per_second(&c).await?;
        println!("| coordinator | submissions/s ({IN_FLIGHT} in flight) | ratio |");
        println!("|---|---:|---:|");
        println!("| one, local event log (fsync) | {local_rate:.0} | 1.00× |");
        println!(
            "| three on etcd (3 members) | {etcd_rate:.0} | {:.2}× |",
            etcd_rate / local_rate
        );
        let mut times = Vec::new();
        for round in 1..=rounds {
            let ms = failover_ms(&c).await?;
            eprintln!("round {round}: {ms:.0} ms");
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!();
        println!(
            "| failover (kill -9 of the leader → accepted submission), {rounds} rounds | ms |"
        );
        println!("|---|---:|");
        println!("| median | {median:.0} |");
        println!("| min | {:.0} |", times[0]);
        println!("| max | {:.0} |", times[times.len() - 1]);
        anyhow::Ok(())
    })
}
