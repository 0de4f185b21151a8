//! `wmig registry serve | members | ls | get | stats | gc`, and how every
//! registry client command finds its registry.
//!
//! Lookup order for the cluster directory: `--cluster`, `WMIG_CLUSTER`,
//! `.wmig`; for the registry address: `--registry`, `WMIG_REGISTRY`, then
//! `registry = "..."` in the cluster's `config.toml`, which `serve` writes
//! once it is listening. Several comma-separated addresses name nodes of
//! one ring: a client connects to the first that answers and learns the
//! others from it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::control::{resolve, shutdown_signal};
use anyhow::Context;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR, REGISTRY_NODE};
use wmig_proto::wire::registry::BundleRef;
use wmig_registry::{
    ClientConfig, Cluster, ClusterConfig, FsStore, Registry, RegistryClient, RegistryConfig,
    ServerConfig,
};

#[derive(clap::Args)]
pub struct RegistryCommand {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Run the registry; prints `listening on ADDR` once ready.
    Serve(Serve),
    /// The registry nodes of a ring: state, share of the key space, chunks.
    Members(Stats),
    /// List stored bundles with their names.
    Ls(Target),
    /// Download a bundle by hash or NAME[:TAG].
    Get(Get),
    /// Object, byte and lease counts.
    Stats(Stats),
    /// Delete checkpoint chunks no kept checkpoint references.
    Gc(Target),
}

/// Where the registry is and which cluster's certificates to use.
#[derive(clap::Args)]
pub struct Target {
    /// Registry address (default: the cluster's config.toml).
    #[arg(long, env = "WMIG_REGISTRY")]
    registry: Option<String>,
    /// Cluster directory with the CA and the operator's certificate.
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
}

impl Target {
    pub fn new(registry: Option<String>, cluster: PathBuf) -> Self {
        Target { registry, cluster }
    }

    /// Connect as the operator (or, from a directory issued for another
    /// identity, as that one: the registry then decides what it may do).
    pub async fn connect(&self) -> anyhow::Result<RegistryClient> {
        self.connect_with(Duration::from_secs(5)).await
    }

    pub async fn connect_with(&self, timeout: Duration) -> anyhow::Result<RegistryClient> {
        let dir = ClusterDir::new(&self.cluster);
        let addr = match &self.registry {
            Some(a) => a.clone(),
            None => dir.config()?.registry.with_context(|| {
                format!(
                    "no registry address: pass --registry ADDR, set WMIG_REGISTRY, or start \
                     `wmig registry serve --cluster {}`, which records it in config.toml there",
                    self.cluster.display()
                )
            })?,
        };
        let socks = resolve_all(&addr, "registry").await?;
        let creds = dir.credentials(&dir.client_identity()?)?;
        let config = ClientConfig {
            connect_timeout: timeout,
            ..ClientConfig::default()
        };
        RegistryClient::connect_any(&socks, &creds, config)
            .await
            .with_context(|| format!("could not reach the registry at {addr}"))
    }
}

#[derive(clap::Args)]
struct Serve {
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Where objects are stored (default: CLUSTER/registry).
    #[arg(long, conflicts_with = "s3")]
    data: Option<PathBuf>,
    /// Store objects in S3-compatible object storage instead:
    /// s3://BUCKET[/PREFIX]. Credentials and a non-AWS endpoint come from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
    /// AWS_ENDPOINT_URL. Nodes of a ring may share one bucket: then each
    /// chunk is stored once, and the ring shards its leases.
    #[arg(long)]
    s3: Option<String>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// How long a granted lease stays exclusive (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Checkpoints kept per task.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Unreferenced chunks younger than this survive garbage collection.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    gc_grace: Duration,
    /// Collect garbage this often; 0 means only on `wmig registry gc`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gc_interval: Duration,
    /// Largest bundle accepted, in MiB.
    #[arg(long, default_value_t = 256)]
    max_bundle_mib: u64,
    /// Most chunk bytes this node keeps (e.g. 50G): past 90 % the oldest
    /// checkpoints of each task are evicted down to 80 %, never a task's
    /// newest; uploads that still do not fit are refused.
    #[arg(long, value_parser = crate::cmd::run::parse_size)]
    capacity: Option<usize>,
    /// Run as node NAME of a ring of registry nodes (unique among them;
    /// the ring places chunks by it). Without it the registry is
    /// standalone.
    #[arg(long)]
    name: Option<String>,
    /// Registry addresses of other nodes of the ring to join through
    /// (comma-separated; any one that answers will do).
    #[arg(long, requires = "name", value_delimiter = ',')]
    join: Vec<String>,
    /// UDP port of the ring's membership (0: any free port).
    #[arg(long, requires = "name", default_value_t = 0)]
    gossip_port: u16,
    /// A node silent this long is declared down and its share moves.
    #[arg(long, requires = "name", default_value = "5s", value_parser = parse_duration)]
    offline_timeout: Duration,
    /// Copies of each chunk on distinct nodes.
    #[arg(long, requires = "name", default_value_t = 2)]
    replicas: usize,
    /// How often a node checks that the chunks it holds are on their
    /// owners and catches up with the others' checkpoints.
    #[arg(long, requires = "name", default_value = "5s", value_parser = parse_duration)]
    repair_every: Duration,
}

#[derive(clap::Args)]
struct Get {
    /// 64-hex hash or NAME[:TAG].
    bundle: String,
    /// Output file (`-` for stdout).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
struct Stats {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// `500ms`, `30s`, `10m`, `1h`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 10m, 1h)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

impl RegistryCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let rt = runtime()?;
        rt.block_on(async {
            match self.command {
                Sub::Serve(s) => s.run().await,
                Sub::Members(s) => members(s).await,
                Sub::Ls(t) => ls(t).await,
                Sub::Get(g) => get(g).await,
                Sub::Stats(s) => stats(s).await,
                Sub::Gc(t) => gc(t).await,
            }
        })?;
        Ok(0)
    }
}

impl Serve {
    async fn run(self) -> anyhow::Result<()> {
        let dir = ClusterDir::new(&self.cluster);
        let creds = dir.credentials(REGISTRY_NODE)?;
        let store: Arc<dyn wmig_registry::Store> = match &self.s3 {
            Some(url) => Arc::new(wmig_registry::S3Store::open(url).with_context(|| {
                format!(
                    "could not open the object storage at {url} (credentials and endpoint \
                         come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and \
                         AWS_ENDPOINT_URL; the bucket must exist)"
                )
            })?),
            None => {
                let data = self
                    .data
                    .clone()
                    .unwrap_or_else(|| self.cluster.join("registry"));
                Arc::new(FsStore::open(&data).with_context(|| {
                    format!("could not open the registry store in {}", data.display())
                })?)
            }
        };
        let mut config = RegistryConfig {
            lease_ttl: self.lease_ttl,
            keep_checkpoints: self.keep.max(1),
            gc_grace: self.gc_grace,
            gc_interval: (!self.gc_interval.is_zero()).then_some(self.gc_interval),
            ..RegistryConfig::default()
        };
        config.limits.max_bundle = self.max_bundle_mib << 20;
        config.capacity = self.capacity.map(|c| c as u64);
        let registry = Arc::new(Registry::open(store, config)?);
        let mut server_config = ServerConfig::default();
        // `wmig cert revoke` takes effect here without a restart.
        server_config.endpoint.revocations = Some(dir.revocations());
        let endpoint = wmig_net::server_endpoint(self.listen, &creds, &server_config.endpoint)?;
        let addr = crate::cmd::control::loopback_if_unspecified(endpoint.local_addr()?);
        if let Some(name) = &self.name {
            wmig_net::certs::validate_node_name(name)
                .map_err(|e| anyhow::anyhow!("--name {name}: {e}"))?;
            let mut cc = ClusterConfig::new(name.clone(), addr);
            cc.gossip_bind = SocketAddr::new(self.listen.ip(), self.gossip_port);
            for j in &self.join {
                cc.seeds.extend(resolve_all(j, "registry").await?);
            }
            cc.offline_timeout = self.offline_timeout;
            cc.shared_storage = self.s3.is_some();
            cc.replicas = if cc.shared_storage {
                1
            } else {
                self.replicas.max(1)
            };
            cc.repair_every = self.repair_every;
            let cluster = Cluster::start(cc, &creds, registry.clone())
                .context("could not join the registry ring")?;
            eprintln!(
                "registry node {name}: membership on {}",
                cluster.me().gossip
            );
            server_config.cluster = Some(cluster);
        }
        // Clients find every node of a ring through any of them; keep the
        // addresses that are already listed, so any can be the entry.
        dir.update_config(|c| {
            let mut list: Vec<String> = match (&self.name, c.registry.as_deref()) {
                (Some(_), Some(old)) => old.split(',').map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            if !list.contains(&addr.to_string()) {
                list.push(addr.to_string());
            }
            c.registry = Some(list.join(","));
        })?;
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        wmig_registry::run(endpoint, registry, server_config, shutdown_signal()).await;
        eprintln!("registry stopped");
        Ok(())
    }
}

async fn ls(t: Target) -> anyhow::Result<()> {
    let client = t.connect().await?;
    let bundles = client.list_bundles().await?;
    client.close().await;
    if bundles.is_empty() {
        eprintln!("no bundles stored; `wmig upload FILE.wasm` adds one");
        return Ok(());
    }
    println!("{:<64}  {:>10}  NAMES", "HASH", "SIZE");
    for b in bundles {
        let names: Vec<String> = b.names.iter().map(ToString::to_string).collect();
        println!("{}  {:>10}  {}", b.hash, human(b.len), names.join(", "));
    }
    Ok(())
}

async fn get(g: Get) -> anyhow::Result<()> {
    let bundle: BundleRef = g.bundle.parse()?;
    let client = g.target.connect().await?;
    let (hash, bytes) = client.download_bundle(&bundle).await?;
    client.close().await;
    if g.output.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    std::fs::write(&g.output, &bytes)
        .with_context(|| format!("could not write {}", g.output.display()))?;
    eprintln!(
        "wrote {} ({hash}) to {}",
        human(bytes.len() as u64),
        g.output.display()
    );
    Ok(())
}

async fn stats(s: Stats) -> anyhow::Result<()> {
    let client = s.target.connect().await?;
    let st = client.stats().await?;
    client.close().await;
    if s.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    let l = st.leases;
    println!(
        "bundles    {:>8}  {}",
        st.bundles.count,
        human(st.bundles.bytes)
    );
    println!(
        "chunks     {:>8}  {}",
        st.chunks.count,
        human(st.chunks.bytes)
    );
    println!(
        "manifests  {:>8}  {} for {} task(s)",
        st.manifests.count,
        human(st.manifests.bytes),
        st.tasks
    );
    println!("names      {:>8}", st.names);
    println!(
        "leases     {:>8}  active; {} granted, {} completed, {} expired, {} released",
        l.active, l.granted, l.completed, l.expired, l.released
    );
    println!(
        "since start: {} chunks written, {} deduplicated; checkpoints referred to {} chunks ({:.0} % not written again)",
        st.chunks_written,
        st.chunks_deduplicated,
        st.chunks_referenced,
        dedup_saving(st.chunks_written, st.chunks_referenced) * 100.0
    );
    Ok(())
}

/// Every address of a comma-separated list.
pub(crate) async fn resolve_all(list: &str, role: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        out.push(resolve(a, role).await?);
    }
    anyhow::ensure!(!out.is_empty(), "no {role} address in `{list}`");
    Ok(out)
}

/// `wmig registry members`.
async fn members(s: Stats) -> anyhow::Result<()> {
    let client = s.target.connect().await?;
    let nodes = client.node_stats().await;
    let info = client.ring();
    client.close().await;
    if info.members.is_empty() {
        eprintln!(
            "this registry is standalone (one node, no ring); `wmig registry serve --name NAME \
             --join ADDR` starts nodes of a ring"
        );
        return Ok(());
    }
    let ring = wmig_registry::ring::Ring::new(&info.members);
    let shares = ring.shares();
    let share_of = |name: &str| {
        ring.members()
            .iter()
            .position(|m| m.name == name)
            .map_or(0.0, |i| shares[i])
    };
    if s.json {
        let rows: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(m, st)| {
                serde_json::json!({
                    "name": m.name,
                    "role": "registry",
                    "state": if m.alive { "alive" } else { "down" },
                    "addr": m.addr.to_string(),
                    "gossip": m.gossip.to_string(),
                    "pid": m.pid,
                    "vnodes": m.vnodes,
                    "share": share_of(&m.name),
                    "chunks": st.as_ref().ok().map(|s| s.chunks.count),
                    "chunk_bytes": st.as_ref().ok().map(|s| s.chunks.bytes),
                    "manifests": st.as_ref().ok().map(|s| s.manifests.count),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "replicas": info.replicas,
                "members": rows,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<14} {:<6} {:>6} {:>7} {:>9} {:>10} {:>8}  ADDRESS",
        "NODE", "STATE", "VNODES", "SHARE", "CHUNKS", "BYTES", "PID"
    );
    for (m, st) in &nodes {
        let (chunks, bytes) = match st {
            Ok(s) => (s.chunks.count.to_string(), human(s.chunks.bytes)),
            Err(_) => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<14} {:<6} {:>6} {:>6.1}% {:>9} {:>10} {:>8}  {}",
            m.name,
            if m.alive { "alive" } else { "down" },
            m.vnodes,
            share_of(&m.name) * 100.0,
            chunks,
            bytes,
            m.pid,
            m.addr
        );
    }
    println!("each chunk is kept on {} node(s)", info.replicas);
    Ok(())
}

/// The share of checkpoint chunk references that did not cost a write.
pub(crate) fn dedup_saving(written: u64, referenced: u64) -> f64 {
    if referenced == 0 {
        0.0
    } else {
        1.0 - (written.min(referenced) as f64 / referenced as f64)
    }
}

async fn gc(t: Target) -> anyhow::Result<()> {
    let client = t.connect().await?;
    let r = client.gc().await?;
    client.close().await;
    println!(
        "removed {} chunk(s), freed {}",
        r.chunks_removed,
        human(r.bytes_freed)
    );
    if r.chunks_protected > 0 {
        println!(
            "kept {} unreferenced chunk(s) that are leased or recently uploaded",
            r.chunks_protected
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(human(10), "10 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
