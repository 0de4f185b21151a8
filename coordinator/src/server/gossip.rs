//! The coordinator's part in the SWIM membership (see `wmig_gossip`):
//! every coordinator is a member, the leader beacons and turns what the
//! membership learns about workers into node-table changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wmig_gossip::{Change, Gossip, GossipConfig, Kind, Peer};
use wmig_proto::NodeId;

use super::Shared;

/// This coordinator's member of the SWIM membership. It outlives a
/// leadership: a follower is a member too, so that when it is elected it
/// already knows who is alive.
#[derive(Clone)]
pub struct GossipRole {
    pub member: Arc<Gossip>,
    /// Taken by the leader while it leads.
    pub changes: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Change>>>,
    /// The cluster's gossip key, handed to workers when they register.
    pub key: [u8; 32],
}

impl std::fmt::Debug for GossipRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipRole")
            .field("addr", &self.member.addr())
            .finish_non_exhaustive()
    }
}

impl GossipRole {
    /// Join the membership on `socket` as coordinator `name`, reachable at
    /// `advertise` (the socket's port on a routable IP), through `seeds`.
    pub fn start(
        socket: std::net::UdpSocket,
        name: &str,
        advertise: SocketAddr,
        key: [u8; 32],
        offline_timeout: Duration,
        seeds: Vec<SocketAddr>,
    ) -> std::io::Result<GossipRole> {
        let (member, changes) = Gossip::start_on(
            socket,
            GossipConfig {
                me: Peer::new(Kind::Coordinator, name, advertise),
                bind: advertise,
                key,
                offline_timeout,
                seeds,
            },
        )?;
        Ok(GossipRole {
            member: Arc::new(member),
            changes: Arc::new(tokio::sync::Mutex::new(changes)),
            key,
        })
    }
}

/// A new random gossip key.
pub fn fresh_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(key)
}

/// The single coordinator's gossip key, kept beside its event log so that
/// workers that joined before a restart stay members after it.
pub fn key_file(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a gossip key (32 bytes); delete it and a new one is made (workers rejoin with it)",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = fresh_key()?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f = options.open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Feed what the SWIM membership learns into the node table: a worker
/// that becomes an active member counts as heard from (and comes back if it
/// was offline); one declared down goes offline at the next tick of the
/// failure detector, which recovers its tasks as for a silent node.
pub(super) async fn watch(shared: Arc<Shared>, gossip: GossipRole) {
    let mut changes = gossip.changes.lock().await;
    // What piled up while this coordinator followed is stale; the view is
    // current. Changes after the drain arrive below (twice at worst: both
    // operations are idempotent).
    while changes.try_recv().is_ok() {}
    // The gossip address each worker is a member at, so that the late
    // "down" of a restarted worker's old process cannot take the new one
    // offline.
    let mut at: HashMap<String, SocketAddr> = HashMap::new();
    let up = |peer: Peer, at: &mut HashMap<String, SocketAddr>| {
        if peer.kind != Kind::Worker {
            return;
        }
        at.insert(peer.name.clone(), peer.addr);
        let now = shared.now();
        let mut core = shared.lock();
        let events = core.coord.swim_up(&NodeId(peer.name.clone()), now);
        for e in &events {
            tracing::info!(event = ?e, "membership (the SWIM membership vouches for it)");
        }
        shared.queue(&mut core, events);
    };
    for peer in gossip.member.view().alive() {
        up(peer, &mut at);
    }
    while let Some(change) = changes.recv().await {
        match change {
            Change::Up(peer) => up(peer, &mut at),
            Change::Down(peer)
                if peer.kind == Kind::Worker && at.get(&peer.name) == Some(&peer.addr) =>
            {
                at.remove(&peer.name);
                tracing::info!(node = %peer.name, "the SWIM membership declared it down");
                shared.lock().coord.swim_down(&NodeId(peer.name));
            }
            _ => {}
        }
    }
}
