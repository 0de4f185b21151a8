//! A real registry server on 127.0.0.1 port 0 with real clients: round
//! trips, concurrent dedup with leases, lease expiry, batched uploads,
//! manifests with retention, and garbage collection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{chunk, manifest, remote_code, TestServer, EMPTY_WASM};
use tokio::sync::Barrier;
use wmig_net::OPERATOR;
use wmig_proto::wire::registry::{BundleRef, LeaseStatus};
use wmig_proto::wire::ErrorCode;
use wmig_proto::{Hash, TaskId};
use wmig_registry::RegistryConfig;

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
    // Only the operator collects: a worker's certificate cannot delete.
    let refused = client.gc().await.expect_err("a worker may not collect");
    assert!(
        refused.to_string().contains(
            "permission denied: worker-1 is a worker; collecting garbage needs an operator"
        ),
        "{refused}"
    );
    let operator = server.client(OPERATOR).await;
    // Kept: seq 2 uses 10..110, seq 3 uses 20..120. Everything else goes.
    let report = operator.gc().await.expect("gc");
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
