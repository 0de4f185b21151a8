//! Real members on real UDP sockets on 127.0.0.1.

use super::*;

const KEY: [u8; 32] = [7; 32];
const T: Duration = Duration::from_millis(1000);

async fn member(
    name: &str,
    key: [u8; 32],
    seeds: Vec<SocketAddr>,
) -> (Gossip, mpsc::UnboundedReceiver<Change>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    Gossip::spawn(GossipConfig {
        me: Peer::new(Kind::Worker, name, addr),
        bind: addr,
        key,
        offline_timeout: T,
        seeds,
    })
    .await
    .expect("bind")
}

/// Wait for a change matching `want`, up to `within`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    within: Duration,
    want: impl Fn(&Change) -> bool,
) -> Option<Change> {
    tokio::time::timeout(within, async {
        while let Some(c) = rx.recv().await {
            if want(&c) {
                return Some(c);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

async fn converge(members: &[&Gossip], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while members.iter().any(|g| g.view().alive().len() != n - 1) {
        assert!(
            Instant::now() < deadline,
            "no convergence: {:?}",
            members
                .iter()
                .map(|g| (g.view().alive().len(), g.view().packets()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_through_one_seed_and_see_everyone() {
    let (seed, _s) = member("seed", KEY, vec![]).await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(member(&format!("w{i}"), KEY, vec![seed.addr()]).await);
    }
    let all: Vec<&Gossip> = std::iter::once(&seed)
        .chain(others.iter().map(|(g, _)| g))
        .collect();
    converge(&all, 5).await;
    let names: Vec<String> = seed.view().alive().into_iter().map(|p| p.name).collect();
    for i in 0..4 {
        assert!(names.contains(&format!("w{i}")), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_down_no_sooner_than_the_offline_timeout() {
    let (a, mut changes) = member("a", KEY, vec![]).await;
    let (b, _b) = member("b", KEY, vec![a.addr()]).await;
    let (c, _c) = member("c", KEY, vec![a.addr()]).await;
    converge(&[&a, &b, &c], 3).await;
    let c_addr = c.addr();
    let stopped = Instant::now();
    drop(c);
    let down = wait_for(
        &mut changes,
        6 * T,
        |ch| matches!(ch, Change::Down(p) if p.addr == c_addr),
    )
    .await;
    let after = stopped.elapsed();
    assert!(down.is_some(), "c never declared down");
    // Safety: workers fence at 3/4 T without news, so nobody may be
    // declared down before T has passed since it went silent.
    assert!(
        after >= T - Duration::from_millis(50),
        "declared down after only {after:?}"
    );
    assert_eq!(a.view().alive().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_key_cannot_join() {
    let (a, _a) = member("a", KEY, vec![]).await;
    let (intruder, _i) = member("intruder", [9; 32], vec![a.addr()]).await;
    tokio::time::sleep(T).await;
    assert!(a.view().alive().is_empty());
    assert!(intruder.view().alive().is_empty());
    let (_, _, rejected) = a.view().packets();
    assert!(rejected > 0, "the intruder's announce was not even seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_beacon_reaches_every_member_and_a_newer_term_wins() {
    let (leader, _l) = member("leader", KEY, vec![]).await;
    let (b, _b) = member("b", KEY, vec![leader.addr()]).await;
    let (c, _c) = member("c", KEY, vec![b.addr()]).await;
    converge(&[&leader, &b, &c], 3).await;
    leader.lead(Some(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.view().newest_beacon().map(|x| x.term) != Some(5) {
        assert!(Instant::now() < deadline, "no beacon reached c");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = c.view().beacon_seen_ms();
    tokio::time::sleep(T / 2).await;
    assert!(c.view().beacon_seen_ms() > first, "beacons keep coming");
    // A deposed leader (older term) beaconing still is ignored.
    b.lead(Some(6));
    leader.lead(Some(5));
    tokio::time::sleep(T / 2).await;
    assert_eq!(c.view().newest_beacon().map(|x| x.term), Some(6));
    assert_eq!(leader.view().newest_beacon().map(|x| x.term), Some(6));
}

#[test]
fn tampered_packets_are_refused() {
    let mut sealed = Vec::new();
    seal(&KEY, b"hello", &mut sealed);
    assert_eq!(open(&KEY, &sealed), Ok(&b"hello"[..]));
    assert!(open(&[1; 32], &sealed).is_err());
    let mut bad = sealed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(open(&KEY, &bad).is_err());
    assert!(open(&KEY, &sealed[..10]).is_err());
    let mut v2 = sealed;
    v2[0] = 2;
    assert!(open(&KEY, &v2).is_err_and(|e| e.contains("version")));
}
