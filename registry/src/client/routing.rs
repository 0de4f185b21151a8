//! The client's view of the registry nodes: connections by address, the
//! ring they last reported, and the nodes that failed us since.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use wmig_net::{Credentials, NetError};
use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::registry::{
    BundleInfo, BundleRef, BundleStored, GcReport, ManifestStored, NameTag, RegistryStats,
    RingInfo, RingMember,
};
use wmig_proto::wire::ErrorCode;
use wmig_proto::{Hash, TaskId};

use super::batch::Batcher;
use super::node::NodeClient;
use super::ClientConfig;
use crate::error::ClientError;
use crate::ring::Ring;

/// How often a client of several nodes asks for the ring.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A node that failed a request is skipped this long, unless a fresher
/// ring lists it alive after it failed.
const SKIP_FAILED: Duration = Duration::from_secs(10);
/// Connecting to another ring member: a dead one must not hold a request
/// up for the whole connect timeout.
const MEMBER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    creds: Credentials,
    pub(crate) config: Arc<ClientConfig>,
    seeds: Vec<SocketAddr>,
    routes: Mutex<Routes>,
    pub(crate) batcher: Batcher,
    /// `close` was called: no connection is opened again.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Routes {
    /// The node connected first; a standalone registry gets everything.
    home: Option<SocketAddr>,
    info: RingInfo,
    /// Alive members of `info`, minus those that failed us.
    ring: Arc<Ring>,
    conns: HashMap<SocketAddr, NodeClient>,
    failed: HashMap<SocketAddr, Instant>,
}

/// A snapshot of the routes to plan one call with.
pub(crate) struct Plan {
    pub ring: Arc<Ring>,
    pub replicas: usize,
    pub home: Option<SocketAddr>,
}

impl Plan {
    /// No ring: one standalone node gets every request.
    pub fn standalone(&self) -> bool {
        self.ring.is_empty()
    }

    /// A chunk's owners, first owner first.
    pub fn owners(&self, hash: &Hash) -> Vec<SocketAddr> {
        if self.standalone() {
            return self.home.into_iter().collect();
        }
        let m = self.ring.members();
        self.ring
            .owners_of(hash, self.replicas)
            .into_iter()
            .map(|i| m[i].addr)
            .collect()
    }

    /// Where to look for a chunk: its owners, then every other node.
    pub fn candidates(&self, hash: &Hash) -> Vec<SocketAddr> {
        let mut out = self.owners(hash);
        for m in self.ring.members() {
            if !out.contains(&m.addr) {
                out.push(m.addr);
            }
        }
        out
    }

    /// Every node, the home node first.
    pub fn all(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.home.into_iter().collect();
        for m in self.ring.members() {
            if !out.contains(&m.addr) {
                out.push(m.addr);
            }
        }
        out
    }
}

impl Routes {
    /// The ring of the reported members minus those that failed us; the
    /// home moves off a node that is not on it. Returns the usable nodes.
    fn rebuild(&mut self) -> HashSet<SocketAddr> {
        let members: Vec<RingMember> = self
            .info
            .members
            .iter()
            .filter(|m| !self.failed.contains_key(&m.addr))
            .cloned()
            .collect();
        self.ring = Arc::new(Ring::new(&members));
        let alive: HashSet<SocketAddr> =
            members.iter().filter(|m| m.alive).map(|m| m.addr).collect();
        // A standalone registry (no members) stays home whatever happens.
        if !self.info.members.is_empty() && self.home.is_some_and(|h| !alive.contains(&h)) {
            self.home = members.iter().find(|m| m.alive).map(|m| m.addr);
        }
        alive
    }
}

fn lock(m: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether another node may succeed where this one failed: it is gone or
/// unreachable, or it is catching up and lacks what was asked.
pub(crate) fn worth_another_node(e: &ClientError) -> bool {
    match e {
        ClientError::Net(_) => true,
        ClientError::Remote(r) => matches!(
            r.code,
            ErrorCode::NotFound | ErrorCode::Unavailable | ErrorCode::Internal
        ),
        _ => false,
    }
}

impl RegistryClient {
    /// Connect to the registry at `addr` as the holder of `creds`.
    pub async fn connect(
        addr: SocketAddr,
        creds: &Credentials,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        Self::connect_any(&[addr], creds, config).await
    }

    /// Connect through the first of `seeds` that answers (any node of a
    /// ring will do: it tells the client about the others).
    pub async fn connect_any(
        seeds: &[SocketAddr],
        creds: &Credentials,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let first = *seeds.first().ok_or(ClientError::Unexpected {
            expected: "at least one registry address",
        })?;
        let bind = wmig_net::endpoint::any_addr_for(first);
        let endpoint = wmig_net::client_endpoint(bind, creds, &config.endpoint)?;
        let config = Arc::new(config);
        let mut last = None;
        let mut home = None;
        for &seed in seeds {
            match NodeClient::connect(&endpoint, seed, creds, config.clone()).await {
                Ok(n) => {
                    home = Some(n);
                    break;
                }
                // Expired or revoked: another node will say the same.
                Err(e @ ClientError::Net(NetError::CertificateRefused { .. })) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        let Some(home) = home else {
            return Err(last.unwrap_or(ClientError::Unexpected {
                expected: "a registry address",
            }));
        };
        let client = RegistryClient {
            inner: Arc::new(Inner {
                batcher: Batcher::new(config.parallel_requests),
                endpoint,
                creds: creds.clone(),
                config,
                seeds: seeds.to_vec(),
                closed: std::sync::atomic::AtomicBool::new(false),
                routes: Mutex::new(Routes {
                    home: Some(home.addr()),
                    conns: HashMap::from([(home.addr(), home.clone())]),
                    ..Routes::default()
                }),
            }),
        };
        match home.ring().await {
            Ok(info) => client.learn(info),
            // Joining its ring: another node knows the ring.
            Err(e) if worth_another_node(&e) => {
                tracing::debug!(error = %e, "asking another registry node for the ring");
                client.refresh().await?;
            }
            Err(e) => return Err(e),
        }
        if !client.plan().standalone() {
            tokio::spawn(refresh_loop(Arc::downgrade(&client.inner)));
        }
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Whether every connection is gone (then every request fails;
    /// connect anew).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.routes)
            .conns
            .values()
            .all(NodeClient::is_closed)
    }

    /// Transport counters of the connection to the first node.
    pub fn transport_stats(&self) -> Option<quinn::ConnectionStats> {
        let r = lock(&self.inner.routes);
        let home = r.home?;
        r.conns.get(&home).map(NodeClient::transport_stats)
    }

    /// The ring as last reported (no members: a standalone registry).
    pub fn ring(&self) -> RingInfo {
        lock(&self.inner.routes).info.clone()
    }

    pub(crate) fn plan(&self) -> Plan {
        let r = lock(&self.inner.routes);
        Plan {
            ring: r.ring.clone(),
            replicas: (r.info.replicas as usize).max(1),
            home: r.home,
        }
    }

    /// Take a ring a node reported.
    fn learn(&self, info: RingInfo) {
        let mut r = lock(&self.inner.routes);
        let now = Instant::now();
        // A node restarted on the same address is another process: the
        // connection to the old one would only time out.
        let restarted: Vec<SocketAddr> = info
            .members
            .iter()
            .filter(|m| {
                r.info
                    .members
                    .iter()
                    .any(|o| o.addr == m.addr && o.pid != m.pid)
            })
            .map(|m| m.addr)
            .collect();
        for addr in restarted {
            if let Some(c) = r.conns.remove(&addr) {
                tracing::debug!(%addr, "registry node restarted; connecting anew");
                c.close();
            }
            r.failed.remove(&addr);
        }
        r.failed
            .retain(|_, at| now.duration_since(*at) < SKIP_FAILED);
        r.info = info;
        let alive = r.rebuild();
        // Members the ring no longer lists alive lose their connections,
        // so requests hung on a dead node fail now, not at an idle timeout.
        if !r.info.members.is_empty() {
            r.conns.retain(|addr, c| {
                let keep = alive.contains(addr);
                if !keep {
                    c.close();
                }
                keep
            });
        }
    }

    /// A node failed a request: skip it until the ring says otherwise.
    pub(crate) fn failed(&self, addr: SocketAddr) {
        let mut r = lock(&self.inner.routes);
        if r.info.members.is_empty() {
            return;
        }
        tracing::debug!(%addr, "registry node failed a request; routing around it");
        r.failed.insert(addr, Instant::now());
        if let Some(c) = r.conns.remove(&addr) {
            c.close();
        }
        r.rebuild();
    }

    /// Ask any node for the ring.
    pub(crate) async fn refresh(&self) -> Result<(), ClientError> {
        let mut ask: Vec<SocketAddr> = self.plan().all();
        for a in lock(&self.inner.routes)
            .info
            .members
            .iter()
            .map(|m| m.addr)
            .chain(self.inner.seeds.iter().copied())
        {
            if !ask.contains(&a) {
                ask.push(a);
            }
        }
        let mut last = None;
        for addr in ask {
            match self.node(addr).await {
                Ok(n) => match n.ring().await {
                    Ok(info) => {
                        self.learn(info);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Unexpected {
            expected: "a reachable registry node",
        }))
    }

    /// The connection to `addr`, opened if needed.
    pub(crate) async fn node(&self, addr: SocketAddr) -> Result<NodeClient, ClientError> {
        if let Some(c) = lock(&self.inner.routes).conns.get(&addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        if self.inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ClientError::Net(NetError::StreamClosed));
        }
        let mut config = (*self.inner.config).clone();
        config.connect_timeout = config.connect_timeout.min(MEMBER_CONNECT_TIMEOUT);
        let c = NodeClient::connect(
            &self.inner.endpoint,
            addr,
            &self.inner.creds,
            Arc::new(config),
        )
        .await?;
        let mut r = lock(&self.inner.routes);
        // Another request may have connected meanwhile: keep one.
        let kept = r.conns.entry(addr).or_insert(c).clone();
        Ok(kept)
    }

    /// Try `f` on the nodes in `order` until one succeeds or fails in a
    /// way another node would not fix.
    pub(crate) async fn first_ok<T, F, Fut>(
        &self,
        order: Vec<SocketAddr>,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for addr in order {
            let result = match self.node(addr).await {
                Ok(n) => f(n).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if worth_another_node(&e) => {
                    if matches!(e, ClientError::Net(_)) {
                        self.failed(addr);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Unexpected {
            expected: "a reachable registry node",
        }))
    }

    /// `f` on every node; the answers of those that gave one.
    pub(crate) async fn on_all<T, F, Fut>(&self, f: F) -> Vec<(SocketAddr, Result<T, ClientError>)>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut out = Vec::new();
        for addr in self.plan().all() {
            let r = match self.node(addr).await {
                Ok(n) => f(n).await,
                Err(e) => Err(e),
            };
            if matches!(r, Err(ClientError::Net(_))) {
                self.failed(addr);
            }
            out.push((addr, r));
        }
        out
    }

    /// Upload a wasm bundle, optionally naming it.
    pub async fn upload_bundle(
        &self,
        wasm: &[u8],
        name: Option<&NameTag>,
    ) -> Result<BundleStored, ClientError> {
        self.upload_bundle_with_progress(wasm, name, &mut |_| {})
            .await
    }

    /// Upload a wasm bundle, reporting bytes sent so far to `progress`. The
    /// node that takes it copies it to the others.
    pub async fn upload_bundle_with_progress(
        &self,
        wasm: &[u8],
        name: Option<&NameTag>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<BundleStored, ClientError> {
        // Each try reports from zero again; one try at a time holds it.
        let progress = tokio::sync::Mutex::new(progress);
        self.first_ok(self.plan().all(), |n| {
            let progress = &progress;
            async move {
                let mut p = progress.lock().await;
                n.upload_bundle(wasm, name, &mut **p).await
            }
        })
        .await
    }

    /// Download a bundle by hash or name; verified against its hash.
    pub async fn download_bundle(
        &self,
        bundle: &BundleRef,
    ) -> Result<(Hash, Vec<u8>), ClientError> {
        self.first_ok(self.plan().all(), |n| async move {
            n.download_bundle(bundle).await
        })
        .await
    }

    pub async fn list_bundles(&self) -> Result<Vec<BundleInfo>, ClientError> {
        self.first_ok(self.plan().all(), |n| async move { n.list_bundles().await })
            .await
    }

    /// Commit a checkpoint manifest (all its chunks must be stored). The
    /// node that accepts it checks the chunks across the ring and copies it
    /// to the other nodes before answering.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<ManifestStored, ClientError> {
        self.first_ok(self.plan().all(), |n| async move {
            n.put_manifest(manifest).await
        })
        .await
    }

    /// A task's manifest by seq, or its newest with `None` (the newest any
    /// node has: one that was away may not have caught up yet).
    pub async fn manifest(&self, task: TaskId, seq: Option<u64>) -> Result<Manifest, ClientError> {
        if seq.is_some() || self.plan().standalone() {
            return self
                .first_ok(
                    self.plan().all(),
                    |n| async move { n.manifest(task, seq).await },
                )
                .await;
        }
        let mut best: Option<Manifest> = None;
        let mut last = None;
        for (_, r) in self
            .on_all(|n| async move { n.manifest(task, None).await })
            .await
        {
            match r {
                Ok(m) if best.as_ref().is_none_or(|b| m.seq > b.seq) => best = Some(m),
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
        }
        best.ok_or(last.unwrap_or(ClientError::Unexpected {
            expected: "a reachable registry node",
        }))
    }

    /// The seqs of a task's kept checkpoints, ascending, across the nodes.
    pub async fn manifests(&self, task: TaskId) -> Result<Vec<u64>, ClientError> {
        if self.plan().standalone() {
            return self
                .first_ok(
                    self.plan().all(),
                    |n| async move { n.manifests(task).await },
                )
                .await;
        }
        let mut seqs = Vec::new();
        let mut answered = false;
        let mut last = None;
        for (_, r) in self
            .on_all(|n| async move { n.manifests(task).await })
            .await
        {
            match r {
                Ok(s) => {
                    answered = true;
                    seqs.extend(s);
                }
                Err(e) => last = Some(e),
            }
        }
        if !answered {
            return Err(last.unwrap_or(ClientError::Unexpected {
                expected: "a reachable registry node",
            }));
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Collect garbage on every node.
    pub async fn gc(&self) -> Result<GcReport, ClientError> {
        let mut total = GcReport::default();
        for (_, r) in self.on_all(|n| async move { n.gc().await }).await {
            let r = r?;
            total.chunks_removed += r.chunks_removed;
            total.bytes_freed += r.bytes_freed;
            total.chunks_protected += r.chunks_protected;
        }
        Ok(total)
    }

    /// The first node's counters (each node counts what it holds; see
    /// [`Self::node_stats`]).
    pub async fn stats(&self) -> Result<RegistryStats, ClientError> {
        self.first_ok(self.plan().all(), |n| async move { n.stats().await })
            .await
    }

    /// Every known node with its counters, or why it did not answer.
    pub async fn node_stats(&self) -> Vec<(RingMember, Result<RegistryStats, ClientError>)> {
        let _ = self.refresh().await;
        let info = self.ring();
        let mut out = Vec::new();
        for m in info.members {
            let r = if m.alive {
                match self.node(m.addr).await {
                    Ok(n) => n.stats().await,
                    Err(e) => Err(e),
                }
            } else {
                Err(ClientError::Net(NetError::Connect {
                    addr: m.addr,
                    reason: "the membership declares this node down".into(),
                }))
            };
            out.push((m, r));
        }
        out
    }

    /// Pass revoked certificates on to every node; returns the most any
    /// node did not know yet.
    pub async fn revocations(
        &self,
        revoked: Vec<wmig_proto::wire::RevokedCert>,
    ) -> Result<u32, ClientError> {
        let mut added = 0;
        let mut last = None;
        let mut any = false;
        for (_, r) in self
            .on_all(|n| {
                let revoked = revoked.clone();
                async move { n.revocations(revoked).await }
            })
            .await
        {
            match r {
                Ok(a) => {
                    any = true;
                    added = added.max(a);
                }
                Err(e) => last = Some(e),
            }
        }
        match (any, last) {
            (true, _) | (false, None) => Ok(added),
            (false, Some(e)) => Err(e),
        }
    }

    /// Close the connections (the nodes release this client's leases)
    /// and give the close a moment to leave. Not the whole draining period
    /// `wait_idle` would wait (three probe timeouts, ~80 ms even on
    /// loopback, most of a short command's run time): a close that is lost
    /// costs only the registry an idle timeout before it frees the leases.
    pub async fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let conns: Vec<NodeClient> = lock(&self.inner.routes).conns.values().cloned().collect();
        let mut rtt = Duration::ZERO;
        for c in &conns {
            rtt = rtt.max(c.rtt());
            c.close();
        }
        let grace = (rtt * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let _ = tokio::time::timeout(grace, self.inner.endpoint.wait_idle()).await;
    }
}

/// Ask for the ring every second while the client lives.
async fn refresh_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let client = RegistryClient { inner };
        if let Err(e) = client.refresh().await {
            tracing::debug!(error = %e, "could not refresh the registry ring");
        }
    }
}
