//! A real registry server on 127.0.0.1 port 0 with real clients: round trips,
//! concurrent dedup with leases, lease expiry, and every kind of bad input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Barrier};
use wmig_net::stream::{read_frame, write_frame};
use wmig_net::{ClusterCa, EndpointConfig, OPERATOR};
use wmig_proto::checkpoint::{Counters, Manifest, MemoryImage, CHUNK_SIZE};
use wmig_proto::frame::{self, PROTOCOL_VERSION};
use wmig_proto::wasi::WasiSnapshot;
use wmig_proto::wire::registry::{
    BundleRef, ChunkHeader, LeaseStatus, RegistryRequest, RegistryResponse,
};
use wmig_proto::wire::{ErrorCode, REGISTRY_ALPN};
use wmig_proto::{Hash, TaskId};
use wmig_registry::{
    ClientConfig, ClientError, FsStore, Registry, RegistryClient, RegistryConfig, ServerConfig,
};

const EMPTY_WASM: &[u8] = b"\0asm\x01\0\0\0";

struct TestServer {
    addr: SocketAddr,
    ca: ClusterCa,
    registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(config: RegistryConfig) -> TestServer {
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

    async fn client(&self, name: &str) -> RegistryClient {
        let creds = self.ca.credentials(name).expect("creds");
        RegistryClient::connect(self.addr, &creds, ClientConfig::default())
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
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

fn chunk(i: u32) -> Bytes {
    let mut c = vec![(i % 251) as u8; CHUNK_SIZE];
    c[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(c)
}

fn manifest(task: u64, seq: u64, chunks: &[Hash]) -> Manifest {
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
    }
}

fn remote_code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Remote(e)) => e.code,
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_round_trip_by_hash_and_name() {
    let server = TestServer::start(RegistryConfig::default()).await;
    let client = server.client(OPERATOR).await;
    let name = "hello:v1".parse().expect("name");
    let stored = client
        .upload_bundle(EMPTY_WASM, Some(&name))
        .await
        .expect("upload");
    assert!(stored.created);
    assert_eq!(stored.hash, Hash::of(EMPTY_WASM));
    let (h, bytes) = client
        .download_bundle(&BundleRef::Name(name))
        .await
        .expect("by name");
    assert_eq!((h, bytes.as_slice()), (stored.hash, EMPTY_WASM));
    let (_, bytes) = client
        .download_bundle(&BundleRef::Hash(h))
        .await
        .expect("by hash");
    assert_eq!(bytes, EMPTY_WASM);
    assert_eq!(client.list_bundles().await.expect("ls").len(), 1);
    assert!(
        !client
            .upload_bundle(EMPTY_WASM, None)
            .await
            .expect("again")
            .created
    );
    client.close().await;
    server.stop().await;
}

/// Eight workers store overlapping chunk sets at once: each chunk is written
/// exactly once; everyone else hears `AlreadyStored` or `Leased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_write_each_chunk_once() {
    let server = TestServer::start(RegistryConfig::default()).await;
    const CLIENTS: u32 = 8;
    const DISTINCT: u32 = 64;
    let barrier = Arc::new(Barrier::new(CLIENTS as usize));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = server.client(&format!("worker-{c}")).await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            // Client c holds 32 chunks starting at 8c: heavy overlap.
            let mine: Vec<Bytes> = (0..32).map(|k| chunk((c * 8 + k) % DISTINCT)).collect();
            let hashes: Vec<Hash> = mine.iter().map(|b| Hash::of(b)).collect();
            barrier.wait().await;
            let answers = client.can_store(&hashes).await.expect("can_store");
            let granted: Vec<(Hash, Bytes)> = hashes
                .iter()
                .zip(&mine)
                .zip(&answers)
                .filter(|(_, a)| **a == LeaseStatus::Granted)
                .map(|((h, b), _)| (*h, b.clone()))
                .collect();
            let report = client.put_chunks(granted).await.expect("put");
            client.close().await;
            (answers, report)
        }));
    }
    let (mut granted, mut written, mut others) = (0, 0, 0);
    for t in tasks {
        let (answers, report) = t.await.expect("client task");
        granted += answers
            .iter()
            .filter(|a| **a == LeaseStatus::Granted)
            .count() as u64;
        others += answers
            .iter()
            .filter(|a| **a != LeaseStatus::Granted)
            .count() as u64;
        written += report.written;
        assert_eq!(
            report.already_stored, 0,
            "a granted chunk was stored by someone else"
        );
    }
    let stats = server.registry.stats(std::time::Instant::now());
    assert_eq!(granted, u64::from(DISTINCT), "one grant per distinct chunk");
    assert_eq!(written, u64::from(DISTINCT));
    assert_eq!(
        stats.chunks_written,
        u64::from(DISTINCT),
        "each chunk written exactly once"
    );
    assert_eq!(stats.chunks.count, u64::from(DISTINCT));
    assert_eq!(others, u64::from(CLIENTS * 32 - DISTINCT));
    assert_eq!(stats.leases.active, 0);
    let check = server.client(OPERATOR).await;
    let all: Vec<Hash> = (0..DISTINCT).map(|i| Hash::of(&chunk(i))).collect();
    assert_eq!(
        check.get_chunks(&all).await.expect("read back").len(),
        DISTINCT as usize
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_expires_and_is_granted_again() {
    let config = RegistryConfig {
        lease_ttl: Duration::from_millis(300),
        lease_cleanup_interval: Duration::from_millis(50),
        ..RegistryConfig::default()
    };
    let server = TestServer::start(config).await;
    let a = server.client("worker-a").await;
    let b = server.client("worker-b").await;
    let h = [Hash::of(&chunk(1))];
    assert_eq!(
        a.can_store(&h).await.expect("a"),
        vec![LeaseStatus::Granted]
    );
    assert_eq!(b.can_store(&h).await.expect("b"), vec![LeaseStatus::Leased]);
    // `a` stays connected but never uploads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = b.stats().await.expect("stats");
    assert_eq!((stats.leases.expired, stats.leases.active), (1, 0));
    assert_eq!(
        b.can_store(&h).await.expect("b again"),
        vec![LeaseStatus::Granted]
    );
    assert_eq!(
        a.can_store(&h).await.expect("a again"),
        vec![LeaseStatus::Leased]
    );
    // A holder that disconnects gives its leases back at once.
    b.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        a.can_store(&h).await.expect("a after b left"),
        vec![LeaseStatus::Granted]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_chunks_manifests_prefix_and_gc() {
    let config = RegistryConfig {
        gc_grace: Duration::ZERO,
        keep_checkpoints: 2,
        ..RegistryConfig::default()
    };
    let server = TestServer::start(config).await;
    let client = server.client("worker-1").await;
    let chunks: Vec<Bytes> = (0..250).map(chunk).collect();
    let hashes: Vec<Hash> = chunks.iter().map(|c| Hash::of(c)).collect();
    for (h, c) in hashes.iter().zip(&chunks) {
        client.put_chunk(*h, c.clone()).await;
    }
    let report = client.flush().await.expect("flush");
    assert_eq!(report.written, 250);
    assert_eq!(client.has_prefix(&hashes).await.expect("prefix"), 250);
    let missing = Hash::of(b"missing");
    assert_eq!(
        client
            .has_prefix(&[hashes[0], missing])
            .await
            .expect("prefix"),
        1
    );
    let code = remote_code(
        client
            .put_manifest(&manifest(5, 1, &[hashes[0], missing]))
            .await,
    );
    assert_eq!(code, ErrorCode::MissingChunks);
    for seq in 1..=3 {
        let m = manifest(5, seq, &hashes[(seq as usize - 1) * 10..][..100]);
        client.put_manifest(&m).await.expect("commit");
    }
    assert_eq!(client.manifests(TaskId(5)).await.expect("list"), vec![2, 3]);
    let latest = client.manifest(TaskId(5), None).await.expect("latest");
    assert_eq!(latest.seq, 3);
    assert_eq!(
        remote_code(client.manifest(TaskId(5), Some(1)).await),
        ErrorCode::NotFound
    );
    // Kept: seq 2 uses 10..110, seq 3 uses 20..120. Everything else goes.
    let report = client.gc().await.expect("gc");
    assert_eq!(report.chunks_removed, 250 - 110, "{report:?}");
    assert_eq!(
        client.has_prefix(&hashes[10..120]).await.expect("kept"),
        110
    );
    let restored = client
        .get_chunks(&latest.chunk_hashes())
        .await
        .expect("restore");
    assert_eq!(restored.len(), 100);
    let stats = client.stats().await.expect("stats");
    assert_eq!(
        (stats.chunks.count, stats.manifests.count, stats.tasks),
        (110, 2, 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_store_nothing() {
    let mut config = RegistryConfig::default();
    config.limits.max_bundle = 1024;
    let server = TestServer::start(config).await;
    let client = server.client(OPERATOR).await;
    let e = client.upload_bundle(b"#!/bin/sh\n", None).await;
    assert_eq!(remote_code(e), ErrorCode::NotWasm);
    let e = client
        .upload_bundle(&vec![0u8; 4096], None)
        .await
        .expect_err("too big");
    assert!(
        e.to_string()
            .contains("bundle of 4096 bytes exceeds the registry's limit of 1024"),
        "{e}"
    );
    let unknown = BundleRef::Hash(Hash::of(b"unknown"));
    assert_eq!(
        remote_code(client.download_bundle(&unknown).await),
        ErrorCode::NotFound
    );
    let unknown = BundleRef::Name("ghost:v9".parse().expect("name"));
    let e = client
        .download_bundle(&unknown)
        .await
        .expect_err("unknown name");
    assert!(e.to_string().contains("no bundle named ghost:v9"), "{e}");
    // A chunk whose bytes do not match its hash.
    let lie = vec![(Hash::of(b"claimed"), chunk(1))];
    let e = client.put_chunks(lie).await.expect_err("mismatch");
    assert_eq!(e.code(), Some(ErrorCode::HashMismatch), "{e}");
    let big = Bytes::from(vec![1u8; CHUNK_SIZE + 1]);
    let e = client
        .put_chunks(vec![(Hash::of(&big), big)])
        .await
        .expect_err("big chunk");
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    let stats = client.stats().await.expect("the connection survives");
    assert_eq!((stats.bundles.count, stats.chunks.count), (0, 0));
    server.stop().await;
}

/// Send raw bytes on a fresh stream and return the server's answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> RegistryResponse {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    send.finish().expect("finish");
    read_frame(&mut recv, 1 << 20)
        .await
        .expect("an answer frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_answer() {
    let server = TestServer::start(RegistryConfig::default()).await;
    let creds = server.ca.credentials(OPERATOR).expect("creds");
    let ep = wmig_net::client_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &creds,
        &EndpointConfig::new(REGISTRY_ALPN),
    )
    .expect("client");
    let conn = wmig_net::connect(&ep, server.addr, "registry", Duration::from_secs(5))
        .await
        .expect("connect");
    let code = |r: RegistryResponse| match r {
        RegistryResponse::Error(e) => (e.code, e.message),
        other => panic!("expected an error, got {other:?}"),
    };
    let (c, m) = code(raw_exchange(&conn, &[3, 0, 0, 0, PROTOCOL_VERSION, 0xee, 0xff]).await);
    assert_eq!(c, ErrorCode::Malformed, "{m}");
    let mut future = frame::encode(&RegistryRequest::Stats).expect("encode");
    future[4] = PROTOCOL_VERSION + 1;
    let (c, m) = code(raw_exchange(&conn, &future).await);
    assert_eq!(c, ErrorCode::UnsupportedVersion, "{m}");
    let (c, m) = code(raw_exchange(&conn, &[0xff, 0xff, 0xff, 0x7f]).await);
    assert_eq!(c, ErrorCode::TooLarge, "{m}");
    let (c, m) = code(raw_exchange(&conn, &[9, 0, 0, 0, PROTOCOL_VERSION, 1]).await);
    assert!(c == ErrorCode::Malformed && m.contains("truncated"), "{m}");
    // A PutChunks that promises more payload than it sends.
    let h = Hash::of(&chunk(3));
    let req = RegistryRequest::PutChunks {
        chunks: vec![ChunkHeader {
            hash: h,
            len: CHUNK_SIZE as u32,
        }],
    };
    let mut bytes = frame::encode(&req).expect("encode");
    bytes.extend_from_slice(&[0u8; 100]);
    let (c, m) = code(raw_exchange(&conn, &bytes).await);
    assert!(
        c == ErrorCode::Malformed && m.contains("nothing was stored"),
        "{m}"
    );
    // The connection still serves well-formed requests.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &RegistryRequest::Stats)
        .await
        .expect("write");
    send.finish().expect("finish");
    let answer: RegistryResponse = read_frame(&mut recv, 1 << 20).await.expect("answer");
    assert!(matches!(answer, RegistryResponse::Stats(s) if s.chunks.count == 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_cluster_is_refused() {
    let server = TestServer::start(RegistryConfig::default()).await;
    let stranger = ClusterCa::generate().expect("ca");
    let mut creds = stranger.credentials(OPERATOR).expect("creds");
    // It even trusts the right CA; its own certificate is still foreign.
    creds.ca = server.ca.credentials("x").expect("x").ca;
    let outcome = async {
        let c = RegistryClient::connect(server.addr, &creds, ClientConfig::default()).await?;
        c.stats().await
    }
    .await;
    let e = outcome.expect_err("refused");
    assert!(e.to_string().contains("refused the TLS handshake"), "{e}");
    assert_eq!(
        server
            .registry
            .stats(std::time::Instant::now())
            .chunks
            .count,
        0
    );
    server.stop().await;
}
