//! `wmig worker`: a worker daemon. It registers with the coordinator,
//! heartbeats, runs the tasks it is given in wasmtime and checkpoints them
//! into the registry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wmig_host::{Runtime, RuntimeConfig};
use wmig_net::{CertRole, ClusterDir};
use wmig_proto::NodeId;
use wmig_worker::{Listen, WorkerConfig};

use crate::cmd::control::{parse_key_value, shutdown_signal, ControlTarget};
use crate::cmd::registry::{parse_duration, runtime};

#[derive(clap::Args)]
pub struct WorkerCommand {
    /// This worker's name, unique in the cluster (default: the identity
    /// the cluster directory was issued for, else worker-<pid>).
    #[arg(long, env = "WMIG_NODE_NAME")]
    name: Option<String>,
    /// Tasks it runs at once.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// A label for placement, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// Registry address (default: the cluster's config.toml).
    #[arg(long, env = "WMIG_REGISTRY")]
    registry: Option<String>,
    /// Where fetched bundles are kept (default: CLUSTER/workers/NAME).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Checkpoint period of tasks that do not set their own.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_every: Duration,
    /// Fuel between host-visible yields (how often a task can pause).
    #[arg(long, default_value_t = wmig_host::task::DEFAULT_YIELD_FUEL)]
    yield_fuel: u32,
    /// Linear-memory limit of tasks submitted without `--max-memory-size`
    /// (bytes, or with a K/M/G suffix); a task that needs more fails with
    /// an out-of-memory reason and the worker carries on.
    #[arg(long, default_value = "1G", value_parser = crate::cmd::run::parse_size)]
    max_memory_size: usize,
    /// Where to accept live migrations from other workers: `auto` (the
    /// address this host reaches the coordinator from, a free port), an
    /// IP:PORT, or `off` (migrations then travel through the registry).
    #[arg(long, default_value = "auto", env = "WMIG_WORKER_LISTEN", value_parser = parse_listen)]
    listen: Listen,
    /// UDP port of this worker's member of the SWIM membership, which
    /// tells the coordinator it is alive (open it between all machines);
    /// 0: any free port.
    #[arg(long, default_value_t = 0, env = "WMIG_GOSSIP_PORT")]
    gossip_port: u16,
    #[command(flatten)]
    target: ControlTarget,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s {
        "auto" => Ok(Listen::Auto),
        "off" => Ok(Listen::Off),
        addr => addr.parse().map(Listen::At).map_err(|_| {
            format!("`{addr}` is not `auto`, `off` or an IP:PORT address (e.g. 10.0.0.5:7400)")
        }),
    }
}

impl WorkerCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(self.run())?;
        Ok(0)
    }

    async fn run(self) -> anyhow::Result<()> {
        let cluster = &self.target.cluster;
        let dir = ClusterDir::new(cluster);
        let name = match self.name.clone() {
            Some(n) => n,
            None => dir
                .config()?
                .identity
                .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        };
        let creds = dir
            .credentials_as(&name, CertRole::Worker)
            .with_context(|| format!("no certificate for worker `{name}`"))?;
        let coordinators = self.target.addrs().await?;
        let registry = match &self.registry {
            Some(a) => a.clone(),
            None => dir.config()?.registry.with_context(|| {
                format!(
                    "no registry address: pass --registry ADDR, set WMIG_REGISTRY, or start \
                     `wmig registry serve --cluster {}`",
                    cluster.display()
                )
            })?,
        };
        let registry = crate::cmd::registry::resolve_all(&registry, "registry").await?;
        let cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| cluster.join("workers").join(&name));
        let runtime = Runtime::new(RuntimeConfig::default())?;
        let config = WorkerConfig {
            name: NodeId(name.clone()),
            creds,
            coordinators: coordinators.clone(),
            registry,
            slots: self.slots.max(1),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            listen: self.listen,
            cache_dir,
            checkpoint_every: self.checkpoint_every,
            yield_fuel: self.yield_fuel.max(1),
            memory_limit: self.max_memory_size as u64,
            revocations: Some(dir.revocations()),
            gossip_port: self.gossip_port,
        };
        let list = |a: &[std::net::SocketAddr]| -> String {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        eprintln!(
            "worker {name} starting (coordinator {}, registry {})",
            list(&coordinators),
            list(&config.registry)
        );
        wmig_worker::run(config, runtime, shutdown_signal()).await?;
        eprintln!("worker {name} stopped");
        Ok(())
    }
}
