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

use wmig_proto::NodeId;

use crate::membership::{Liveness, Membership, Node, Role};

pub use wmig_proto::wire::control::Placement;

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
    /// Last worker chosen by least-loaded (for its tie-break).
    ll_cursor: Option<NodeId>,
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
            ll_cursor: None,
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
            Placement::LeastLoaded => {
                // Rank workers after the last choice before those up to it.
                let after_last = |name: &NodeId| self.ll_cursor.as_ref().is_none_or(|c| name > c);
                eligible
                    .iter()
                    .min_by_key(|name| (running(name), !after_last(name), **name))
                    .copied()
            }
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
        match policy {
            Placement::RoundRobin => self.cursor = Some(chosen.clone()),
            Placement::LeastLoaded => self.ll_cursor = Some(chosen.clone()),
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MembershipConfig, NodeInfo};

    fn id(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    fn cluster(workers: &[(&str, u32)]) -> Membership {
        let mut m = Membership::new(MembershipConfig::default());
        for (name, slots) in workers {
            let info = NodeInfo {
                name: id(name),
                role: Role::Worker,
                slots: *slots,
                labels: BTreeMap::new(),
                addr: format!("127.0.0.1:1/{name}"),
                pid: 1,
            };
            m.register(info, 0).unwrap();
        }
        m
    }

    fn load(pairs: &[(&str, u32)]) -> BTreeMap<NodeId, u32> {
        pairs.iter().map(|(n, l)| (id(n), *l)).collect()
    }

    #[test]
    fn least_loaded_prefers_fewest_tasks_then_takes_turns() {
        let m = cluster(&[("c", 4), ("a", 4), ("b", 4)]);
        let mut p = Placer::default();
        let ll = Placement::LeastLoaded;
        assert_eq!(p.choose(&ll, &m, &load(&[])), Ok(id("a")));
        assert_eq!(p.choose(&ll, &m, &load(&[("a", 1)])), Ok(id("b")));
        assert_eq!(
            p.choose(&ll, &m, &load(&[("a", 2), ("b", 1), ("c", 1)])),
            Ok(id("c"))
        );
        // All idle (short tasks that finish between submissions): turns.
        let idle: Vec<_> = (0..4)
            .map(|_| p.choose(&ll, &m, &load(&[])).unwrap())
            .collect();
        assert_eq!(idle, vec![id("a"), id("b"), id("c"), id("a")]);
        // A full worker is skipped even if it sorts first.
        let m = cluster(&[("a", 1), ("b", 3)]);
        assert_eq!(p.choose(&ll, &m, &load(&[("a", 1), ("b", 2)])), Ok(id("b")));
    }

    #[test]
    fn round_robin_cycles_in_name_order_and_skips_ineligible() {
        let mut m = cluster(&[("a", 9), ("b", 9), ("c", 9)]);
        let mut p = Placer::default();
        let rr = Placement::RoundRobin;
        let picks: Vec<_> = (0..4)
            .map(|_| p.choose(&rr, &m, &load(&[])).unwrap())
            .collect();
        assert_eq!(picks, vec![id("a"), id("b"), id("c"), id("a")]);
        m.drain(&id("b")).unwrap();
        assert_eq!(p.choose(&rr, &m, &load(&[])), Ok(id("c")));
        assert_eq!(p.choose(&rr, &m, &load(&[])), Ok(id("a")));
        assert_eq!(p.choose(&rr, &m, &load(&[("c", 9)])), Ok(id("a")));
    }

    #[test]
    fn random_is_seeded_and_spreads() {
        let m = cluster(&[("a", 99), ("b", 99), ("c", 99)]);
        let run = |seed| {
            let mut p = Placer::new(seed);
            (0..60)
                .map(|_| p.choose(&Placement::Random, &m, &load(&[])).unwrap())
                .collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7), "same seed, same choices");
        assert_ne!(first, run(8));
        for w in ["a", "b", "c"] {
            assert!(first.contains(&id(w)), "{w} never chosen");
        }
    }

    #[test]
    fn pinned_and_every_refusal() {
        let mut m = cluster(&[("busy", 1), ("drained", 2), ("dead", 2), ("ok", 2)]);
        m.register(
            NodeInfo {
                name: id("mon"),
                role: Role::Monitor,
                slots: 0,
                labels: BTreeMap::new(),
                addr: "m".into(),
                pid: 2,
            },
            4_000,
        )
        .unwrap();
        m.drain(&id("drained")).unwrap();
        m.heartbeat(&id("busy"), 4_000).unwrap();
        m.heartbeat(&id("drained"), 4_000).unwrap();
        m.heartbeat(&id("ok"), 4_000).unwrap();
        m.poll_timeouts(5_000); // "dead" goes offline
        let mut p = Placer::default();
        let l = load(&[("busy", 1)]);
        let pin = |n: &str| Placement::Pinned(id(n));
        assert_eq!(p.choose(&pin("ok"), &m, &l), Ok(id("ok")));
        let cases = [
            ("nope", PlacementError::UnknownWorker { name: id("nope") }),
            ("mon", PlacementError::NotAWorker { name: id("mon") }),
            ("dead", PlacementError::WorkerOffline { name: id("dead") }),
            (
                "drained",
                PlacementError::WorkerDraining {
                    name: id("drained"),
                },
            ),
            (
                "busy",
                PlacementError::WorkerFull {
                    name: id("busy"),
                    running: 1,
                    slots: 1,
                },
            ),
        ];
        for (name, want) in cases {
            let err = p.choose(&pin(name), &m, &l).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert_eq!(err, want);
        }
        // With "ok" full too, nothing is eligible though workers are online.
        let l = load(&[("busy", 1), ("ok", 2)]);
        for policy in [
            Placement::LeastLoaded,
            Placement::RoundRobin,
            Placement::Random,
        ] {
            assert_eq!(
                p.choose(&policy, &m, &l),
                Err(PlacementError::NoFreeSlot { online: 3 })
            );
        }
    }

    #[test]
    fn no_workers_online() {
        let mut p = Placer::default();
        let empty = Membership::new(MembershipConfig::default());
        let err = p
            .choose(&Placement::LeastLoaded, &empty, &load(&[]))
            .unwrap_err();
        assert_eq!(err, PlacementError::NoWorkersOnline);
        let mut m = cluster(&[("a", 1)]);
        m.poll_timeouts(60_000);
        assert_eq!(
            p.choose(&Placement::RoundRobin, &m, &load(&[])),
            Err(PlacementError::NoWorkersOnline)
        );
    }
}
