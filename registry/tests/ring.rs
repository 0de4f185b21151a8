//! Registry nodes on a ring, each a real server with its own store and its
//! own SWIM member on 127.0.0.1: chunks land on their two owners, survive
//! the loss of a node, reach it again when it is back, and move to a node
//! that joins.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{chunk, manifest, RingNode};
use wmig_net::ClusterCa;
use wmig_proto::wire::registry::LeaseStatus;
use wmig_proto::{Hash, TaskId};
use wmig_registry::ring::Ring;
use wmig_registry::{ClientConfig, RegistryClient};

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of `nodes` hold `h`.
fn copies(nodes: &[&RingNode], h: &Hash) -> usize {
    nodes
        .iter()
        .filter(|n| n.registry.holds(&[*h], false, Instant::now())[0])
        .count()
}

/// Store chunks as a worker does: lease, then put what was granted.
async fn checkpoint(client: &RegistryClient, data: &[Bytes]) {
    let hashes: Vec<Hash> = data.iter().map(|b| Hash::of(b)).collect();
    let answers = client.can_store(&hashes).await.expect("can_store");
    let put: Vec<(Hash, Bytes)> = hashes
        .iter()
        .zip(data)
        .zip(&answers)
        .filter(|(_, a)| **a == LeaseStatus::Granted)
        .map(|((h, b), _)| (*h, b.clone()))
        .collect();
    client.put_chunks(put).await.expect("put_chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_live_on_two_owners_through_a_crash_a_return_and_a_join() {
    let ca = ClusterCa::generate().expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = |n: &str| dir.path().join(n);
    let id = ca.credentials("registry").expect("registry identity");
    let a = RingNode::start(&id, "registry-1", &data("1"), vec![]).await;
    let b = RingNode::start(&id, "registry-2", &data("2"), vec![a.addr]).await;
    let c = RingNode::start(&id, "registry-3", &data("3"), vec![a.addr]).await;
    eventually(
        "three nodes see each other",
        Duration::from_secs(15),
        || [&a, &b, &c].iter().all(|n| n.alive() == 3),
    )
    .await;

    let creds = ca.credentials("worker-1").expect("creds");
    let client = RegistryClient::connect(a.addr, &creds, ClientConfig::default())
        .await
        .expect("connect");
    assert_eq!(client.ring().members.len(), 3, "the client learnt the ring");
    let first: Vec<Bytes> = (0..48).map(chunk).collect();
    let hashes: Vec<Hash> = first.iter().map(|b| Hash::of(b)).collect();
    checkpoint(&client, &first).await;
    for h in &hashes {
        assert_eq!(copies(&[&a, &b, &c], h), 2, "chunk {h} is on two nodes");
    }
    // Every node took a share.
    for n in [&a, &b, &c] {
        let mine = hashes.iter().filter(|h| copies(&[n], h) == 1).count();
        assert!(mine > 10, "{} holds only {mine} of 48 chunks", n.name);
    }
    // The manifest is checked across the ring and kept by every node.
    client
        .put_manifest(&manifest(7, 1, &hashes))
        .await
        .expect("manifest");
    for n in [&a, &b, &c] {
        assert!(n.registry.has_manifest(TaskId(7), 1), "{} has it", n.name);
    }
    // A manifest naming a chunk nobody holds is refused.
    let missing = Hash::of(b"nobody has this");
    let refused = client
        .put_manifest(&manifest(7, 2, &[hashes[0], missing]))
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // registry-2 crashes: every chunk is still readable.
    let b_data = data("2");
    b.crash().await;
    let back = client
        .get_chunks(&hashes)
        .await
        .expect("read without node 2");
    assert!(back.iter().zip(&first).all(|(x, y)| x[..] == y[..]));
    // A new checkpoint while it is down: the others take both copies.
    eventually("the ring drops registry-2", Duration::from_secs(15), || {
        a.alive() == 2 && c.alive() == 2
    })
    .await;
    let second: Vec<Bytes> = (100..148).map(chunk).collect();
    let hashes2: Vec<Hash> = second.iter().map(|b| Hash::of(b)).collect();
    checkpoint(&client, &second).await;
    for h in &hashes2 {
        assert_eq!(copies(&[&a, &c], h), 2, "chunk {h} on both survivors");
    }
    client
        .put_manifest(&manifest(7, 3, &hashes2))
        .await
        .expect("manifest while a node is down");

    // registry-2 comes back on its old data and catches up: the manifest
    // it missed, and the chunks it owns that were written meanwhile.
    let b = RingNode::start(&id, "registry-2", &b_data, vec![c.addr]).await;
    eventually("registry-2 rejoins", Duration::from_secs(15), || {
        [&a, &b, &c].iter().all(|n| n.alive() == 3)
    })
    .await;
    let all: Vec<Hash> = hashes.iter().chain(&hashes2).copied().collect();
    let nodes = [&a, &b, &c];
    eventually(
        "every chunk is on its owners again and extra copies are gone",
        Duration::from_secs(30),
        || b.registry.has_manifest(TaskId(7), 3) && all.iter().all(|h| on_owners_only(&nodes, h)),
    )
    .await;

    // A fourth node joins: it receives its share, the others let it go.
    let d = RingNode::start(&id, "registry-4", &data("4"), vec![a.addr]).await;
    let nodes = [&a, &b, &c, &d];
    eventually("the ring has four nodes", Duration::from_secs(15), || {
        nodes.iter().all(|n| n.alive() == 4)
    })
    .await;
    eventually("the ring rebalances", Duration::from_secs(30), || {
        all.iter().all(|h| on_owners_only(&nodes, h))
    })
    .await;
    let on_d = all.iter().filter(|h| copies(&[&d], h) == 1).count();
    assert!(
        on_d > 10,
        "the new node holds {on_d} of {} chunks",
        all.len()
    );
    assert!(d.registry.has_manifest(TaskId(7), 3));
    let back = client.get_chunks(&all).await.expect("read after rebalance");
    assert_eq!(back.len(), all.len());

    client.close().await;
    for n in [a, b, c, d] {
        n.crash().await;
    }
}

/// `h` is held by exactly its two owners on the ring of `nodes`.
fn on_owners_only(nodes: &[&RingNode], h: &Hash) -> bool {
    let ring = Ring::new(&nodes[0].cluster.info().members);
    let owners: Vec<&str> = ring
        .owners_of(h, 2)
        .into_iter()
        .map(|i| ring.members()[i].name.as_str())
        .collect();
    nodes
        .iter()
        .all(|n| copies(&[n], h) == usize::from(owners.contains(&n.name.as_str())))
}
