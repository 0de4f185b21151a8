//! The worker's member of the SWIM membership.
//!
//! The coordinator hands out the gossip key and its members' addresses at
//! registration. From then on the membership tells the coordinator this
//! worker is alive (probes, answered on the member's own thread), and the
//! leader's beacons, relayed by any member, tell this worker the leader is
//! reachable: that keeps its fence down between check-ins, which the
//! coordinator spaces out as the cluster grows (see `heartbeat`).
//!
//! One member per process, kept across sessions (a reconnect to another
//! coordinator only announces again), so a coordinator failover does not
//! make every worker leave and rejoin.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wmig_gossip::{Change, Gossip, GossipConfig, Kind, Peer};
use wmig_proto::wire::control::GossipJoin;

use crate::Worker;

#[derive(Default)]
pub(crate) struct Membership {
    member: Mutex<Option<([u8; 32], Arc<Gossip>)>>,
}

impl Membership {
    /// The running member, if any.
    pub(crate) fn member(&self) -> Option<Arc<Gossip>> {
        self.lock().as_ref().map(|(_, g)| g.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<([u8; 32], Arc<Gossip>)>> {
        self.member.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Join (or rejoin through) the membership the coordinator described.
pub(crate) fn join(worker: &Arc<Worker>, join: GossipJoin, offline_timeout: Duration) {
    let mut slot = worker.gossip.lock();
    if let Some((key, member)) = slot.as_ref() {
        if *key == join.key {
            member.announce(join.seeds);
            return;
        }
        // A new key: the cluster was set up anew. Leave the old one.
    }
    let ip = worker.gossip_ip();
    let bind = SocketAddr::new(ip, worker.config.gossip_port);
    let started = Gossip::start(GossipConfig {
        me: Peer::new(Kind::Worker, worker.config.name.0.clone(), bind),
        bind,
        key: join.key,
        offline_timeout,
        seeds: join.seeds,
    });
    match started {
        Ok((member, mut changes)) => {
            tracing::info!(addr = %member.addr(), "joined the SWIM membership");
            *slot = Some((join.key, Arc::new(member)));
            let w = worker.clone();
            tokio::spawn(async move {
                while let Some(change) = changes.recv().await {
                    if change == Change::Rejoined {
                        // The others gave up on us: the coordinator may
                        // have recovered our tasks elsewhere already.
                        w.raise_fence("the membership declared this worker down");
                    }
                }
            });
        }
        // Without a member the worker heartbeats every period instead,
        // which the coordinator accepts as before.
        Err(e) => {
            tracing::warn!(%bind, error = %e, "could not join the SWIM membership; heartbeating instead")
        }
    }
}
