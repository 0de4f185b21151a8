//! Choosing the worker for a task.
//!
//! A worker is eligible when it is online, not draining and has a free slot
//! (running tasks < slots). Among eligible workers a [`Placement`] policy
//! picks one. Every choice is deterministic given the same inputs — ties go to
//! the smallest name and `Random` uses a seeded generator — so tests can
//! assert exact placements and two coordinators fed the same events agree.
//!
//! The choice itself is not replayed: the coordinator records the *result*
//! (`TaskPlaced { worker }`) in its log, so the round-robin cursor and the
//! random generator are volatile and may restart from scratch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wmig_proto::NodeId;

use crate::membership::{Liveness, Membership, Node, Role};

/// How to choose among eligible workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Fewest running tasks; ties broken by name.
    #[default]
    LeastLoaded,
    /// The next eligible worker after the last one chosen, in name order.
    RoundRobin,
    /// A uniformly random eligible worker (seeded, so reproducible).
    Random,
    /// Exactly this worker (`wmig submit --on WORKER`), or an error.
    Pinned(NodeId),
}

/// Why no worker could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("unknown worker `{name}`: see `wmig nodes` for registered workers")]
    UnknownWorker { name: NodeId },
    #[error("`{name}` is a monitor, not a worker; pick a worker from `wmig nodes`")]
    NotAWorker { name: NodeId },
    #[error("worker `{name}` is offline; pick an online worker or omit --on")]
    WorkerOffline { name: NodeId },
    #[error("worker `{name}` is full ({running}/{slots} slots busy); wait for a task to finish or omit --on")]
    WorkerFull {
        name: NodeId,
        running: u32,
        slots: u32,
    },
    #[error("worker `{name}` is draining and takes no new tasks; run `wmig uncordon {name}` or omit --on")]
    WorkerDraining { name: NodeId },
    #[error("no workers online: start a worker (`wmig worker` or `wmig up`) and retry")]
    NoWorkersOnline,
    #[error(
        "all {online} online workers are full or draining; wait for tasks to finish or add workers"
    )]
    NoFreeSlot { online: usize },
}

/// Holds the volatile state of the stateful policies.
#[derive(Clone, Debug)]
pub struct Placer {
    /// Last worker chosen by round-robin.
    cursor: Option<NodeId>,
    /// splitmix64 state for `Random`.
    rng: u64,
}

impl Default for Placer {
    fn default() -> Self {
        Placer::new(0x5eed)
    }
}

impl Placer {
    pub fn new(seed: u64) -> Self {
        Placer {
            cursor: None,
            rng: seed,
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, good enough for spreading load, no dependency.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Pick a worker for one task. `load` maps a worker to its running task
    /// count (absent = 0).
    pub fn choose(
        &mut self,
        policy: &Placement,
        members: &Membership,
        load: &BTreeMap<NodeId, u32>,
    ) -> Result<NodeId, PlacementError> {
        let running = |name: &NodeId| load.get(name).copied().unwrap_or(0);
        if let Placement::Pinned(name) = policy {
            let node = members
                .node(name)
                .ok_or_else(|| PlacementError::UnknownWorker { name: name.clone() })?;
            return check_eligible(node, running(name)).map(|()| name.clone());
        }
        let online: Vec<&Node> = members
            .nodes()
            .filter(|n| n.info.role == Role::Worker && n.liveness == Liveness::Online)
            .collect();
        if online.is_empty() {
            return Err(PlacementError::NoWorkersOnline);
        }
        // `nodes()` iterates in name order, so `eligible` is sorted by name.
        let eligible: Vec<&NodeId> = online
            .iter()
            .filter(|n| check_eligible(n, running(&n.info.name)).is_ok())
            .map(|n| &n.info.name)
            .collect();
        if eligible.is_empty() {
            return Err(PlacementError::NoFreeSlot {
                online: online.len(),
            });
        }
        let chosen = match policy {
            Placement::LeastLoaded => eligible
                .iter()
                .min_by_key(|name| (running(name), **name))
                .copied(),
            Placement::RoundRobin => {
                let after = self
                    .cursor
                    .as_ref()
                    .and_then(|c| eligible.iter().find(|name| **name > c));
                after.or(eligible.first()).copied()
            }
            Placement::Random => {
                let i = (self.next_random() % eligible.len() as u64) as usize;
                eligible.get(i).copied()
            }
            Placement::Pinned(_) => None, // handled above
        };
        let chosen = chosen.cloned().ok_or(PlacementError::NoFreeSlot {
            online: online.len(),
        })?;
        if *policy == Placement::RoundRobin {
            self.cursor = Some(chosen.clone());
        }
        Ok(chosen)
    }
}

/// Whether `node` may receive one more task, and if not, why.
fn check_eligible(node: &Node, running: u32) -> Result<(), PlacementError> {
    let name = || node.info.name.clone();
    if node.info.role != Role::Worker {
        return Err(PlacementError::NotAWorker { name: name() });
    }
    if node.liveness != Liveness::Online {
        return Err(PlacementError::WorkerOffline { name: name() });
    }
    if node.draining {
        return Err(PlacementError::WorkerDraining { name: name() });
    }
    if running >= node.info.slots {
        return Err(PlacementError::WorkerFull {
            name: name(),
            running,
            slots: node.info.slots,
        });
    }
    Ok(())
}
