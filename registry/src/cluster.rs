//! Several registry nodes as one registry: membership, the ring, and the
//! repair that keeps every chunk on its owners.
//!
//! - **Membership** is SWIM (`wmig-gossip`, the same as the control
//!   plane's), among registry nodes only. Each node announces the address
//!   it serves on; the key is derived from the registry identity's private
//!   key, which every node holds and nobody else does, so there is no key to
//!   hand out. A node joins through any other node's registry address: it
//!   asks that node for the ring over QUIC and announces itself to the
//!   gossip addresses it learns.
//! - **Placement**: chunks on their R ring owners (clients write them
//!   there); manifests, bundles and names on every node. Those are small
//!   next to the chunks, and a node that knows every manifest can collect
//!   its own garbage without asking anyone (a chunk's references live in
//!   manifests of any task).
//! - **Writes of metadata**: the node that accepts a manifest checks its
//!   chunks here and on their owners, stores it, and copies it to every
//!   alive node before answering; a bundle likewise.
//! - **Repair** (every `repair_every`, and soon after the ring changes):
//!   pull the manifests, bundles and names other nodes have and this one
//!   lacks (a node that was away catches up), then for every local chunk
//!   ask its owners whether they hold it and give them a copy if not
//!   (hinted handoff: a chunk written while an owner was down reaches it
//!   when it is back; a joining node receives its share). Once every owner
//!   holds a chunk this node no longer owns, and the ring has been stable
//!   for an offline timeout, the copy here is deleted: the ring moved it.
//!   Until a node has pulled every peer's manifests once, it does not
//!   collect garbage.
//! - **Shared storage** (all nodes on one S3 bucket): one copy of each
//!   chunk, written through its owner, whose lease it is; the repair only
//!   catches up metadata, since every node reads every object.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wmig_gossip::{Change, Gossip, GossipConfig, Kind, Peer};
use wmig_net::Credentials;
use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::registry::{BundleRef, NameTag, RingInfo, RingMember};
use wmig_proto::Hash;

use crate::client::{ClientConfig, NodeClient};
use crate::error::{ClientError, RegistryError};
use crate::ring::{Ring, DEFAULT_REPLICAS, DEFAULT_VNODES};
use crate::service::Registry;
use crate::store::ObjectKind;

/// Context of the key derived from the registry identity.
const GOSSIP_KEY_CONTEXT: &str = "wmig registry membership 2026-12 gossip key";
/// Hashes per `Holds` request of the repair.
const HOLDS_BATCH: usize = 8192;
/// Chunks per `PutChunks` request of the repair.
const PUSH_BATCH: usize = 64;

/// How one node takes part.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Unique among the registry nodes (the ring is placed by name).
    pub name: String,
    /// The registry address clients reach this node at.
    pub serves: SocketAddr,
    /// Where to bind the membership's UDP socket (port 0: any).
    pub gossip_bind: SocketAddr,
    /// Other nodes' registry addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// A node silent this long is declared down.
    pub offline_timeout: Duration,
    pub replicas: usize,
    pub repair_every: Duration,
    /// The nodes share one object store (S3): its bytes are everyone's, so
    /// there is one copy of each chunk and nothing for the repair to move;
    /// the ring shards the leases and the nodes' indexes.
    pub shared_storage: bool,
}

impl ClusterConfig {
    pub fn new(name: impl Into<String>, serves: SocketAddr) -> Self {
        ClusterConfig {
            name: name.into(),
            serves,
            gossip_bind: SocketAddr::new(serves.ip(), 0),
            seeds: Vec::new(),
            offline_timeout: Duration::from_secs(5),
            replicas: DEFAULT_REPLICAS,
            repair_every: Duration::from_secs(5),
            shared_storage: false,
        }
    }
}

/// What the repair did since the node started.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairStats {
    pub rounds: u64,
    pub chunks_pushed: u64,
    pub chunks_handed_off: u64,
    pub manifests_pulled: u64,
    pub bundles_pulled: u64,
}

struct State {
    members: BTreeMap<String, RingMember>,
    ring: Arc<Ring>,
    changed_at: Instant,
}

/// This node's part in the registry ring.
pub struct Cluster {
    me: RingMember,
    config: ClusterConfig,
    /// Taken by [`Cluster::leave`].
    gossip: Mutex<Option<Gossip>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    endpoint: quinn::Endpoint,
    creds: Credentials,
    client_config: Arc<ClientConfig>,
    peers: tokio::sync::Mutex<HashMap<SocketAddr, NodeClient>>,
    started: Instant,
    rounds: AtomicU64,
    pushed: AtomicU64,
    handed_off: AtomicU64,
    manifests_pulled: AtomicU64,
    bundles_pulled: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me.name)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

impl Cluster {
    /// Join the registry nodes (call inside a tokio runtime). `creds` is
    /// the registry identity: it talks to the other nodes and keys the
    /// membership.
    pub fn start(
        config: ClusterConfig,
        creds: &Credentials,
        registry: Arc<Registry>,
    ) -> std::io::Result<Arc<Cluster>> {
        let socket = std::net::UdpSocket::bind(config.gossip_bind)?;
        let mut gossip_addr = socket.local_addr()?;
        if gossip_addr.ip().is_unspecified() {
            gossip_addr.set_ip(config.serves.ip());
        }
        let me = RingMember {
            name: config.name.clone(),
            addr: config.serves,
            gossip: gossip_addr,
            vnodes: DEFAULT_VNODES,
            pid: std::process::id(),
            alive: true,
        };
        let (gossip, changes) = Gossip::start_on(
            socket,
            GossipConfig {
                me: Peer::new(Kind::Registry, &config.name, gossip_addr).serving(config.serves),
                bind: gossip_addr,
                key: creds.derive_secret(GOSSIP_KEY_CONTEXT),
                offline_timeout: config.offline_timeout,
                seeds: Vec::new(),
            },
        )?;
        let client_config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let endpoint = wmig_net::client_endpoint(
            wmig_net::endpoint::any_addr_for(config.serves),
            creds,
            &client_config.endpoint,
        )
        .map_err(std::io::Error::other)?;
        let members = BTreeMap::from([(me.name.clone(), me.clone())]);
        let ring = Arc::new(Ring::new(std::slice::from_ref(&me)));
        // Until it has seen the others' manifests, this node cannot tell
        // which of its chunks are garbage.
        registry.allow_gc(false);
        let cluster = Arc::new(Cluster {
            me,
            config,
            gossip: Mutex::new(Some(gossip)),
            tasks: Mutex::new(Vec::new()),
            state: Mutex::new(State {
                members,
                ring,
                changed_at: Instant::now(),
            }),
            changed: tokio::sync::Notify::new(),
            endpoint,
            creds: creds.clone(),
            client_config: Arc::new(client_config),
            peers: tokio::sync::Mutex::new(HashMap::new()),
            started: Instant::now(),
            rounds: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            manifests_pulled: AtomicU64::new(0),
            bundles_pulled: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(cluster.clone().watch(changes)),
            tokio::spawn(cluster.clone().join()),
            tokio::spawn(cluster.clone().repair_loop(registry)),
        ];
        *cluster.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(cluster)
    }

    /// Stop taking part, as abruptly as a crash: the others find out
    /// through the membership.
    pub fn leave(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.gossip.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn me(&self) -> &RingMember {
        &self.me
    }

    /// Every node heard of, alive or not.
    pub fn info(&self) -> RingInfo {
        RingInfo {
            replicas: u32::try_from(self.config.replicas).unwrap_or(u32::MAX),
            members: self.lock().members.values().cloned().collect(),
        }
    }

    /// Started with seeds and has met nobody yet (for up to two offline
    /// timeouts): its ring of one is not the ring, and a client routing by
    /// it would look for every chunk here.
    pub fn joining(&self) -> bool {
        !self.config.seeds.iter().all(|s| *s == self.me.addr)
            && self.peers_alive().is_empty()
            && self.started.elapsed() < self.config.offline_timeout * 2
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.lock().ring.clone()
    }

    /// The alive nodes other than this one.
    pub fn peers_alive(&self) -> Vec<RingMember> {
        self.lock()
            .members
            .values()
            .filter(|m| m.alive && m.name != self.me.name)
            .cloned()
            .collect()
    }

    pub fn repair_stats(&self) -> RepairStats {
        RepairStats {
            rounds: self.rounds.load(Ordering::Relaxed),
            chunks_pushed: self.pushed.load(Ordering::Relaxed),
            chunks_handed_off: self.handed_off.load(Ordering::Relaxed),
            manifests_pulled: self.manifests_pulled.load(Ordering::Relaxed),
            bundles_pulled: self.bundles_pulled.load(Ordering::Relaxed),
        }
    }

    async fn peer(&self, addr: SocketAddr) -> Result<NodeClient, ClientError> {
        let mut peers = self.peers.lock().await;
        if let Some(c) = peers.get(&addr).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = NodeClient::connect(
            &self.endpoint,
            addr,
            &self.creds,
            self.client_config.clone(),
        )
        .await?;
        peers.insert(addr, c.clone());
        Ok(c)
    }

    /// Follow the membership: alive nodes are on the ring.
    async fn watch(self: Arc<Self>, mut changes: tokio::sync::mpsc::UnboundedReceiver<Change>) {
        while let Some(change) = changes.recv().await {
            let Some(stale) = self.apply(change) else {
                continue;
            };
            if !stale.is_empty() {
                let mut peers = self.peers.lock().await;
                for addr in stale {
                    if let Some(c) = peers.remove(&addr) {
                        c.close();
                    }
                }
            }
            self.changed.notify_one();
        }
    }

    /// Take a membership change into the ring. `None`: nothing changed;
    /// else the addresses whose connections belong to a dead process.
    fn apply(&self, change: Change) -> Option<Vec<SocketAddr>> {
        let mut stale = Vec::new();
        let mut st = self.lock();
        match change {
            Change::Up(p) if p.kind == Kind::Registry && p.name != self.me.name => {
                let addr = p.serves?;
                tracing::info!(node = %p.name, %addr, "registry node up");
                // A restart: the connection to the old process is dead.
                if let Some(old) = st.members.get(&p.name) {
                    if old.pid != p.pid || old.gossip != p.addr {
                        stale.push(old.addr);
                    }
                }
                st.members.insert(
                    p.name.clone(),
                    RingMember {
                        name: p.name,
                        addr,
                        gossip: p.addr,
                        vnodes: DEFAULT_VNODES,
                        pid: p.pid,
                        alive: true,
                    },
                );
            }
            Change::Down(p) if p.kind == Kind::Registry => {
                // Only the process that went down: a restart of the same
                // node may have come up already.
                let m = st
                    .members
                    .get_mut(&p.name)
                    .filter(|m| m.gossip == p.addr && m.pid == p.pid && m.alive)?;
                tracing::warn!(node = %p.name, "registry node down");
                m.alive = false;
                stale.push(m.addr);
            }
            _ => return None,
        }
        let members: Vec<RingMember> = st.members.values().cloned().collect();
        st.ring = Arc::new(Ring::new(&members));
        st.changed_at = Instant::now();
        Some(stale)
    }

    /// While alone, ask the seeds for the ring and announce to its members.
    async fn join(self: Arc<Self>) {
        loop {
            let alone = self.peers_alive().is_empty();
            if alone {
                for &seed in &self.config.seeds {
                    if seed == self.me.addr {
                        continue;
                    }
                    let info = match self.peer(seed).await {
                        Ok(n) => n.ring().await,
                        Err(e) => Err(e),
                    };
                    match info {
                        Ok(info) => {
                            let to: Vec<SocketAddr> = info
                                .members
                                .iter()
                                .filter(|m| m.alive && m.name != self.me.name)
                                .map(|m| m.gossip)
                                .collect();
                            if let Some(g) = self
                                .gossip
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .as_ref()
                                .filter(|_| !to.is_empty())
                            {
                                g.announce(to);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%seed, error = %e, "registry seed not reachable yet")
                        }
                    }
                }
            }
            let pause = if alone { 1 } else { 5 };
            tokio::time::sleep(Duration::from_secs(pause)).await;
        }
    }

    /// Of `hashes` (chunks this node lacks), those no other node holds.
    /// Asks each chunk's owners, then every other node for what is left.
    pub async fn not_anywhere(&self, hashes: Vec<Hash>) -> Vec<Hash> {
        if hashes.is_empty() {
            return hashes;
        }
        let ring = self.ring();
        let members = ring.members();
        let mut by_owner: HashMap<SocketAddr, Vec<Hash>> = HashMap::new();
        for h in &hashes {
            for i in ring.owners_of(h, self.config.replicas) {
                if members[i].name != self.me.name {
                    by_owner.entry(members[i].addr).or_default().push(*h);
                }
            }
        }
        let mut found = std::collections::HashSet::new();
        for (addr, ask) in by_owner {
            self.ask_holds(addr, &ask, &mut found).await;
        }
        let mut left: Vec<Hash> = hashes.into_iter().filter(|h| !found.contains(h)).collect();
        if !left.is_empty() {
            for p in self.peers_alive() {
                self.ask_holds(p.addr, &left, &mut found).await;
            }
            left.retain(|h| !found.contains(h));
        }
        left
    }

    async fn ask_holds(
        &self,
        addr: SocketAddr,
        ask: &[Hash],
        found: &mut std::collections::HashSet<Hash>,
    ) {
        let Ok(n) = self.peer(addr).await else {
            return;
        };
        for batch in ask.chunks(HOLDS_BATCH) {
            match n.holds(batch).await {
                Ok(held) => {
                    found.extend(batch.iter().zip(held).filter(|(_, y)| *y).map(|(h, _)| *h))
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "could not ask a registry node what it holds");
                    return;
                }
            }
        }
    }

    /// Copy an accepted manifest to every alive node; how many took it.
    pub async fn replicate_manifest(&self, m: &Manifest) -> usize {
        let mut ok = 0;
        for p in self.peers_alive() {
            let r = match self.peer(p.addr).await {
                Ok(n) => n.replicate_manifest(m).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::warn!(node = %p.name, error = %e, "could not copy a manifest; the repair will")
                }
            }
        }
        ok
    }

    /// Copy an accepted bundle (and its name) to every alive node.
    pub async fn replicate_bundle(&self, bytes: Bytes, name: Option<NameTag>) {
        for p in self.peers_alive() {
            let r = match self.peer(p.addr).await {
                Ok(n) => n.upload_bundle(&bytes, name.as_ref(), &mut |_| {}).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(node = %p.name, error = %e, "could not copy a bundle; the repair will");
            }
        }
    }

    async fn repair_loop(self: Arc<Self>, registry: Arc<Registry>) {
        loop {
            // Soon after a change (once the membership has settled a
            // little), else every `repair_every`.
            tokio::select! {
                () = tokio::time::sleep(self.config.repair_every) => {}
                () = self.changed.notified() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if let Err(e) = self.repair(&registry).await {
                tracing::warn!(error = %e, "registry repair round failed");
            }
            self.rounds.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One round of repair (see the module docs).
    pub async fn repair(&self, registry: &Arc<Registry>) -> Result<(), RegistryError> {
        let peers = self.peers_alive();
        let mut everyone = true;
        for p in &peers {
            if let Err(e) = self.pull_metadata(p, registry).await {
                tracing::debug!(node = %p.name, error = %e, "could not catch up from a registry node");
                everyone = false;
            }
        }
        if everyone {
            registry.allow_gc(true);
        }
        if self.config.shared_storage {
            // Deleting "this node's copy" would delete everyone's.
            return Ok(());
        }
        let (ring, stable_since) = {
            let st = self.lock();
            (st.ring.clone(), st.changed_at)
        };
        let reg = registry.clone();
        let local: Vec<Hash> = tokio::task::spawn_blocking(move || {
            reg.store
                .objects(ObjectKind::Chunk)
                .into_iter()
                .map(|o| o.hash)
                .collect()
        })
        .await
        .map_err(|_| RegistryError::Internal("listing chunks panicked"))?;
        let members = ring.members();
        let mut to_check: HashMap<SocketAddr, Vec<Hash>> = HashMap::new();
        let mut not_mine: Vec<(Hash, usize)> = Vec::new();
        for h in &local {
            let owners = ring.owners_of(h, self.config.replicas);
            let mut mine = false;
            for &i in &owners {
                if members[i].name == self.me.name {
                    mine = true;
                } else {
                    to_check.entry(members[i].addr).or_default().push(*h);
                }
            }
            if !mine {
                not_mine.push((*h, owners.len()));
            }
        }
        let mut held_by: HashMap<Hash, usize> = HashMap::new();
        for (addr, hashes) in to_check {
            self.push_missing(addr, hashes, registry, &mut held_by)
                .await;
        }
        // Hand off: the copies the owners now all hold, once the ring has
        // been still long enough that it is not a passing suspicion.
        let still = Arc::ptr_eq(&ring, &self.ring())
            && stable_since.elapsed() >= self.config.offline_timeout;
        if still {
            let gone: Vec<Hash> = not_mine
                .into_iter()
                .filter(|(h, owners)| *owners > 0 && held_by.get(h) == Some(owners))
                .map(|(h, _)| h)
                .collect();
            if !gone.is_empty() {
                let reg = registry.clone();
                let n = tokio::task::spawn_blocking(move || {
                    let _gc = reg.gc_lock.write().unwrap_or_else(|e| e.into_inner());
                    gone.iter()
                        .filter(|h| {
                            matches!(reg.store.delete_object(ObjectKind::Chunk, h), Ok(Some(_)))
                        })
                        .count() as u64
                })
                .await
                .map_err(|_| RegistryError::Internal("handing chunks off panicked"))?;
                self.handed_off.fetch_add(n, Ordering::Relaxed);
                tracing::info!(chunks = n, "handed off chunks this node no longer owns");
            }
        }
        Ok(())
    }

    /// Give the node at `addr` those of `hashes` it lacks; count in
    /// `held_by` every chunk it holds afterwards.
    async fn push_missing(
        &self,
        addr: SocketAddr,
        hashes: Vec<Hash>,
        registry: &Arc<Registry>,
        held_by: &mut HashMap<Hash, usize>,
    ) {
        let n = match self.peer(addr).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "registry node unreachable for repair");
                return;
            }
        };
        for batch in hashes.chunks(HOLDS_BATCH) {
            let held = match n.holds(batch).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "repair: could not ask what a node holds");
                    return;
                }
            };
            let mut missing = Vec::new();
            for (h, yes) in batch.iter().zip(held) {
                if yes {
                    *held_by.entry(*h).or_default() += 1;
                } else {
                    missing.push(*h);
                }
            }
            for group in missing.chunks(PUSH_BATCH) {
                let reg = registry.clone();
                let group = group.to_vec();
                let read = tokio::task::spawn_blocking(move || {
                    group
                        .into_iter()
                        .filter_map(|h| {
                            let bytes = reg.store.object(ObjectKind::Chunk, &h).ok()?;
                            Some((h, Bytes::from(bytes)))
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                match n.put_chunks(&read).await {
                    Ok(_) => {
                        self.pushed.fetch_add(read.len() as u64, Ordering::Relaxed);
                        for (h, _) in &read {
                            *held_by.entry(*h).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "repair: could not copy chunks");
                        return;
                    }
                }
            }
        }
    }

    /// Fetch the manifests, bundles and names `peer` has and this node
    /// lacks.
    async fn pull_metadata(
        &self,
        peer: &RingMember,
        registry: &Arc<Registry>,
    ) -> Result<(), RegistryError> {
        let n = self.peer(peer.addr).await.map_err(unavailable)?;
        let inv = n.inventory().await.map_err(unavailable)?;
        let reg = registry.clone();
        let bundles: Vec<Hash> = inv
            .bundles
            .into_iter()
            .filter(|h| !reg.store.contains(ObjectKind::Bundle, h))
            .collect();
        for hash in bundles {
            let (_, bytes) = n
                .download_bundle(&BundleRef::Hash(hash))
                .await
                .map_err(unavailable)?;
            let reg = registry.clone();
            blocking(move || reg.put_bundle(hash, &bytes, None)).await?;
            self.bundles_pulled.fetch_add(1, Ordering::Relaxed);
        }
        let inv_names: Vec<(NameTag, Hash)> = inv
            .names
            .into_iter()
            .filter(|(name, _)| registry.resolve(&BundleRef::Name(name.clone())).is_err())
            .collect();
        for (name, hash) in inv_names {
            let reg = registry.clone();
            blocking(move || reg.put_name(&name, hash)).await?;
        }
        for (task, seq) in inv.manifests {
            if registry.has_manifest(task, seq) || registry.was_evicted(task, seq) {
                continue;
            }
            let m = match n.manifest(task, Some(seq)).await {
                Ok(m) => m,
                // Pruned there meanwhile.
                Err(e) if e.code() == Some(wmig_proto::wire::ErrorCode::NotFound) => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let reg = registry.clone();
            match blocking(move || reg.put_manifest_replica(&m)).await {
                Ok(_) => {
                    self.manifests_pulled.fetch_add(1, Ordering::Relaxed);
                }
                // Older than what retention keeps here: nothing to catch up.
                Err(RegistryError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(RegistryError::Internal("a repair step panicked")))
}
