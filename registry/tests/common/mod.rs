//! Shared by the registry's integration tests: a real server on
//! 127.0.0.1 port 0 over a file store in a temp dir, with its own cluster CA.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use wmig_net::ClusterCa;
use wmig_proto::checkpoint::{Counters, Manifest, MemoryImage, CHUNK_SIZE};
use wmig_proto::wasi::WasiSnapshot;
use wmig_proto::wire::ErrorCode;
use wmig_proto::{Hash, TaskId};
use wmig_registry::{
    ClientConfig, ClientError, FsStore, Registry, RegistryClient, RegistryConfig, ServerConfig,
};

pub const EMPTY_WASM: &[u8] = b"\0asm\x01\0\0\0";

pub struct TestServer {
    pub addr: SocketAddr,
    pub ca: ClusterCa,
    pub registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(config: RegistryConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path().join("data")).expect("store");
        let registry = Arc::new(Registry::open(Arc::new(store), config).expect("registry"));
        let ca = ClusterCa::generate().expect("ca");
        let creds = ca.credentials("registry").expect("creds");
        let server_config = ServerConfig::default();
        let endpoint = wmig_net::server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &creds,
            &server_config.endpoint,
        )
        .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wmig_registry::run(
            endpoint,
            registry.clone(),
            server_config,
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            ca,
            registry,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn client(&self, name: &str) -> RegistryClient {
        let creds = self.ca.credentials(name).expect("creds");
        RegistryClient::connect(self.addr, &creds, ClientConfig::default())
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

pub fn chunk(i: u32) -> Bytes {
    let mut c = vec![(i % 251) as u8; CHUNK_SIZE];
    c[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(c)
}

pub fn manifest(task: u64, seq: u64, chunks: &[Hash]) -> Manifest {
    Manifest {
        module: Hash::of(EMPTY_WASM),
        rewriter: 1,
        instrumented: Hash::of(EMPTY_WASM),
        task: Some(TaskId(task)),
        seq,
        epoch: 1,
        memories: vec![MemoryImage {
            name: "memory".into(),
            byte_len: (chunks.len() * CHUNK_SIZE) as u64,
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(i, h)| (i as u32, *h))
                .collect(),
        }],
        globals: Vec::new(),
        wasi: WasiSnapshot::default(),
        counters: Counters::default(),
        files: Vec::new(),
        end: false,
    }
}

pub fn remote_code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Remote(e)) => e.code,
        other => panic!("expected a registry error, got {other:?}"),
    }
}

/// A registry node of a ring: a real server with its membership, over a
/// file store in `data` (kept across a restart of the node).
pub struct RingNode {
    pub name: String,
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub cluster: Arc<wmig_registry::Cluster>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RingNode {
    /// `creds`: the registry identity, which every node shares (clients
    /// check the name `registry`; the membership key derives from it).
    pub async fn start(
        creds: &wmig_net::Credentials,
        name: &str,
        data: &std::path::Path,
        seeds: Vec<SocketAddr>,
    ) -> RingNode {
        let store = FsStore::open(data).expect("store");
        let registry =
            Arc::new(Registry::open(Arc::new(store), RegistryConfig::default()).expect("registry"));
        let mut server_config = ServerConfig::default();
        let endpoint = wmig_net::server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            creds,
            &server_config.endpoint,
        )
        .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let mut cc = wmig_registry::ClusterConfig::new(name, addr);
        cc.seeds = seeds;
        cc.offline_timeout = Duration::from_millis(1500);
        cc.repair_every = Duration::from_millis(500);
        let cluster = wmig_registry::Cluster::start(cc, creds, registry.clone()).expect("cluster");
        server_config.cluster = Some(cluster.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wmig_registry::run(
            endpoint,
            registry.clone(),
            server_config,
            async move {
                let _ = stopped.await;
            },
        ));
        RingNode {
            name: name.to_owned(),
            addr,
            registry,
            cluster,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Alive members this node sees, itself included.
    pub fn alive(&self) -> usize {
        self.cluster
            .info()
            .members
            .iter()
            .filter(|m| m.alive)
            .count()
    }

    /// Stop serving and leave the membership without a word.
    pub async fn crash(mut self) {
        self.cluster.leave();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
