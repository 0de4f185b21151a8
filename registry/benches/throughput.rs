//! Registry benchmark: chunk upload and download throughput over loopback
//! QUIC (mutual TLS, real servers, real stores), one node and a ring of
//! three (each chunk written to two of them), the `can_store` rate for
//! batches of 1,000 hashes, and the ring's balance. Prints a table: metric,
//! result, goal, ratio to goal.
//!
//! `cargo bench -p wmig-registry`; `WMIG_BENCH_MIB` changes the upload size
//! (default 256), `WMIG_BENCH_DIR` where the file store lives (default: the
//! system temp dir).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wmig_net::{ClusterCa, OPERATOR};
use wmig_proto::checkpoint::CHUNK_SIZE;
use wmig_proto::Hash;
use wmig_registry::{
    ClientConfig, Cluster, ClusterConfig, FsStore, MemStore, Registry, RegistryClient,
    RegistryConfig, ServerConfig, Store,
};

struct Row {
    metric: String,
    result: f64,
    unit: &'static str,
    goal: Option<f64>,
}

struct Server {
    addr: SocketAddr,
    ca: ClusterCa,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    udp: Option<u16>,
}

async fn serve(
    store: Arc<dyn Store>,
    udp: Option<u16>,
) -> Result<Server, Box<dyn std::error::Error>> {
    let registry = Arc::new(Registry::open(store, RegistryConfig::default())?);
    let ca = ClusterCa::generate()?;
    let mut config = ServerConfig::default();
    tune(&mut config.endpoint, udp);
    let endpoint = wmig_net::server_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &ca.credentials("registry")?,
        &config.endpoint,
    )?;
    let addr = endpoint.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wmig_registry::run(endpoint, registry, config, async move {
        let _ = stopped.await;
    }));
    Ok(Server {
        addr,
        ca,
        stop,
        task,
        udp,
    })
}

impl Server {
    async fn client(&self) -> Result<RegistryClient, Box<dyn std::error::Error>> {
        let creds = self.ca.credentials(OPERATOR)?;
        let mut config = ClientConfig::default();
        tune(&mut config.endpoint, self.udp);
        if let Some(n) = env("WMIG_BENCH_CPR") {
            config.chunks_per_request = n;
        }
        if let Some(n) = env("WMIG_BENCH_PAR") {
            config.parallel_requests = n;
        }
        Ok(RegistryClient::connect(self.addr, &creds, config).await?)
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn env(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Transport settings: `udp` overrides the maximum UDP payload; the
/// environment can override more for experiments (WMIG_BENCH_STREAMS).
fn tune(e: &mut wmig_net::EndpointConfig, udp: Option<u16>) {
    if let Some(n) = udp {
        e.max_udp_payload = n;
    }
    if let Some(n) = env("WMIG_BENCH_STREAMS") {
        e.max_streams = n as u32;
    }
}

/// `n` distinct pseudo-random chunks with their hashes.
fn chunks(n: usize, seed: u64) -> Vec<(Hash, Bytes)> {
    (0..n)
        .map(|i| {
            let mut x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut c = vec![0u8; CHUNK_SIZE];
            for word in c.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            (Hash::of(&c), Bytes::from(c))
        })
        .collect()
}

async fn upload(
    store: Arc<dyn Store>,
    mib: usize,
    udp: Option<u16>,
    label: &str,
) -> Result<Row, Box<dyn std::error::Error>> {
    let data = chunks(mib * 1024 * 1024 / CHUNK_SIZE, mib as u64);
    let server = serve(store, udp).await?;
    let client = server.client().await?;
    // Warm up the connection (congestion window, MTU discovery).
    client.put_chunks(chunks(64, 1 << 40)).await?;
    let start = Instant::now();
    let report = client.put_chunks(data).await?;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(report.written as usize, mib * 1024 * 1024 / CHUNK_SIZE);
    if let Some(s) = client.transport_stats() {
        eprintln!(
            "{label}: {secs:.2} s; path MTU {}, {} datagrams in {} sends, {} lost",
            s.path.current_mtu, s.udp_tx.datagrams, s.udp_tx.ios, s.path.lost_packets
        );
    }
    client.close().await;
    server.shutdown().await;
    Ok(Row {
        metric: format!("upload {mib} MiB of chunks, {label}"),
        result: (mib * 1024 * 1024) as f64 / secs / 1e9,
        unit: "GB/s",
        goal: Some(1.0),
    })
}

async fn can_store_rate(concurrency: usize) -> Result<Row, Box<dyn std::error::Error>> {
    let server = serve(Arc::new(MemStore::new()), None).await?;
    let client = server.client().await?;
    let batch = |round: u64| -> Vec<Hash> {
        (0..1000u64)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&round.to_le_bytes());
                h[8..16].copy_from_slice(&i.to_le_bytes());
                Hash(h)
            })
            .collect()
    };
    client.can_store(&batch(u64::MAX)).await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency as u64 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut round = t << 32;
            while Instant::now() < deadline {
                client.can_store(&batch(round)).await?;
                round += 1;
                done += 1000;
            }
            Ok::<u64, wmig_registry::ClientError>(done)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let secs = start.elapsed().as_secs_f64();
    client.close().await;
    server.shutdown().await;
    Ok(Row {
        metric: format!("can_store, 1,000 new hashes per request, {concurrency} in flight"),
        result: total as f64 / secs / 1e6,
        unit: "M hashes/s",
        goal: Some(1.0),
    })
}

/// The same call without QUIC: what the lease table and index cost.
fn can_store_in_process() -> Row {
    let registry = match Registry::open(Arc::new(MemStore::new()), RegistryConfig::default()) {
        Ok(r) => r,
        Err(e) => panic!("open: {e}"),
    };
    let hashes: Vec<Hash> = (0..1_000_000u64)
        .map(|i| Hash::of(&i.to_le_bytes()))
        .collect();
    let now = Instant::now();
    let start = Instant::now();
    for batch in hashes.chunks(1000) {
        registry.can_store(1, batch, now);
    }
    Row {
        metric: "can_store in process (no network), 1,000 per call".into(),
        result: 1e6 / start.elapsed().as_secs_f64() / 1e6,
        unit: "M hashes/s",
        goal: None,
    }
}

/// Upload then download `mib` MiB through a ring of three registry nodes,
/// each over its own file store: (upload, download) rows.
async fn ring_transfer(mib: usize) -> Result<(Row, Row), Box<dyn std::error::Error>> {
    let ca = ClusterCa::generate()?;
    let id = ca.credentials("registry")?;
    let dir = tempfile::tempdir_in(bench_dir())?;
    let mut nodes = Vec::new();
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for i in 1..=3 {
        let store = Arc::new(FsStore::open(dir.path().join(i.to_string()))?);
        let registry = Arc::new(Registry::open(store, RegistryConfig::default())?);
        let mut config = ServerConfig::default();
        let endpoint = wmig_net::server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &id,
            &config.endpoint,
        )?;
        let addr = endpoint.local_addr()?;
        let mut cc = ClusterConfig::new(format!("registry-{i}"), addr);
        cc.seeds = seeds.clone();
        cc.offline_timeout = Duration::from_secs(2);
        // The bench measures transfers, not the repair.
        cc.repair_every = Duration::from_secs(3600);
        let cluster = Cluster::start(cc, &id, registry.clone())?;
        config.cluster = Some(cluster.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wmig_registry::run(endpoint, registry, config, async move {
            let _ = stopped.await;
        }));
        seeds.push(addr);
        nodes.push((cluster, stop, task));
    }
    let formed = Instant::now() + Duration::from_secs(20);
    while nodes
        .iter()
        .any(|(c, _, _)| c.info().members.iter().filter(|m| m.alive).count() < 3)
    {
        if Instant::now() > formed {
            return Err("the ring did not form within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = RegistryClient::connect(
        seeds[0],
        &ca.credentials(OPERATOR)?,
        ClientConfig::default(),
    )
    .await?;
    client.put_chunks(chunks(64, 1 << 41)).await?;
    let rows = round_trip(
        &client,
        mib,
        "3-node ring, 2 copies (file stores)",
        "3-node ring",
    )
    .await?;
    client.close().await;
    for (cluster, stop, task) in nodes {
        cluster.leave();
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(rows)
}

/// Upload `mib` MiB of fresh chunks, then download them: two rows.
async fn round_trip(
    client: &RegistryClient,
    mib: usize,
    up_label: &str,
    down_label: &str,
) -> Result<(Row, Row), Box<dyn std::error::Error>> {
    let data = chunks(mib * 1024 * 1024 / CHUNK_SIZE, 7 + mib as u64);
    let hashes: Vec<Hash> = data.iter().map(|(h, _)| *h).collect();
    let start = Instant::now();
    client.put_chunks(data).await?;
    let up = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let back = client.get_chunks(&hashes).await?;
    let down = start.elapsed().as_secs_f64();
    assert_eq!(back.len(), hashes.len());
    let bytes = (mib * 1024 * 1024) as f64;
    Ok((
        Row {
            metric: format!("upload {mib} MiB of chunks, {up_label}"),
            result: bytes / up / 1e9,
            unit: "GB/s",
            goal: Some(1.0),
        },
        Row {
            metric: format!("download {mib} MiB of chunks, {down_label}"),
            result: bytes / down / 1e9,
            unit: "GB/s",
            goal: None,
        },
    ))
}

/// Download what one node holds: `mib` MiB over one connection.
async fn download(mib: usize, label: &str) -> Result<Row, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(bench_dir())?;
    let server = serve(Arc::new(FsStore::open(dir.path())?), None).await?;
    let client = server.client().await?;
    let (_, down) = round_trip(&client, mib, label, label).await?;
    client.close().await;
    server.shutdown().await;
    Ok(down)
}

/// An `s3s-fs` S3 server on a free loopback port (from PATH or
/// ~/.cargo/bin, as `scripts/deps` installs it); None without one.
fn s3_server(root: &std::path::Path) -> Option<(std::process::Child, String)> {
    let bin = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())?;
    std::fs::create_dir_all(root.join("wmig")).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "bench-secret"])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((child, format!("http://127.0.0.1:{port}")))
}

/// Upload and download through one registry node whose store is an S3
/// server on loopback.
async fn s3_transfer(mib: usize) -> Result<Option<(Row, Row)>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(bench_dir())?;
    let Some((mut child, endpoint)) = s3_server(dir.path()) else {
        eprintln!("no s3s-fs (scripts/deps installs it): skipping the S3 rows");
        return Ok(None);
    };
    let options = wmig_registry::S3Options {
        endpoint: Some(endpoint),
        access_key: Some("bench".into()),
        secret_key: Some("bench-secret".into()),
        region: Some("us-east-1".into()),
    };
    let store = tokio::task::spawn_blocking(move || {
        wmig_registry::S3Store::open_with("s3://wmig/bench", &options)
    })
    .await??;
    let server = serve(Arc::new(store), None).await?;
    let client = server.client().await?;
    let rows = round_trip(&client, mib, "S3 store (s3s-fs on loopback)", "S3 store").await?;
    client.close().await;
    server.shutdown().await;
    let _ = child.kill();
    let _ = child.wait();
    Ok(Some(rows))
}

/// Keys per node at 128 virtual nodes each: the most loaded node's count
/// over the mean (1.0 is perfect balance).
fn ring_balance(nodes: usize) -> Row {
    use wmig_proto::wire::registry::RingMember;
    let members: Vec<RingMember> = (1..=nodes)
        .map(|i| RingMember {
            name: format!("registry-{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 7700 + i as u16)),
            gossip: SocketAddr::from(([127, 0, 0, 1], 7800 + i as u16)),
            vnodes: wmig_registry::ring::DEFAULT_VNODES,
            pid: 0,
            alive: true,
        })
        .collect();
    let ring = wmig_registry::ring::Ring::new(&members);
    let mut counts = vec![0u64; nodes];
    let keys = 1_000_000u64;
    for k in 0..keys {
        counts[ring.owners_of(&Hash::of(&k.to_le_bytes()), 1)[0]] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    Row {
        metric: format!("ring balance, {nodes} nodes x 128 vnodes: max/mean keys"),
        result: max / (keys as f64 / nodes as f64),
        unit: "x",
        goal: None,
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("WMIG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::var("WMIG_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    rt.block_on(async {
        let mem = || Arc::new(MemStore::new());
        rows.push(upload(mem(), mib, None, "memory store").await?);
        rows.push(upload(mem(), mib, Some(3000), "memory store, 3000 B UDP").await?);
        if std::env::var_os("WMIG_BENCH_ONLY_MEM").is_some() {
            return Ok(());
        }
        let dir = tempfile::tempdir_in(bench_dir())?;
        let store = Arc::new(FsStore::open(dir.path())?);
        rows.push(upload(store, mib, None, "file store (one syncfs per batch)").await?);
        rows.push(download(mib, "file store").await?);
        let (up, down) = ring_transfer(mib).await?;
        rows.push(up);
        rows.push(down);
        if let Some((up, down)) = s3_transfer(mib).await? {
            rows.push(up);
            rows.push(down);
        }
        rows.push(can_store_rate(4).await?);
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    rows.push(can_store_in_process());
    for n in [3, 4, 5, 10] {
        rows.push(ring_balance(n));
    }
    println!(
        "\n{:<62} {:>16} {:>14} {:>8}",
        "metric", "result", "goal", "ratio"
    );
    for r in &rows {
        let goal = r
            .goal
            .map_or("-".to_owned(), |g| format!("{g:.2} {}", r.unit));
        let ratio = r
            .goal
            .map_or("-".to_owned(), |g| format!("{:.2}", r.result / g));
        println!(
            "{:<62} {:>10.3} {:<5} {:>14} {:>8}",
            r.metric, r.result, r.unit, goal, ratio
        );
    }
    Ok(())
}
