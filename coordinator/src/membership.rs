//! The node table and failure detection: who is a member, and who is alive.
//!
//! Nodes (workers and monitors) register once, then heartbeat. A node silent
//! for `offline_timeout` or longer is declared offline exactly once; a
//! heartbeat or a re-registration from it later brings it back (recovery: the
//! same node, keeping its history and tasks). A second *live* node claiming a
//! name already in use is refused, because two processes answering to one name
//! would split a task's ownership between them.
//!
//! Sans-IO: every method takes `now` from the caller. Each state change is
//! expressed as a [`MembershipEvent`] and performed by [`Membership::apply`],
//! the same function the coordinator uses to replay its log, so live decisions
//! and replays cannot drift apart. Heartbeat times are *not* events (logging
//! one record per node per second buys nothing): they are volatile, and after
//! a replay [`Membership::resume`] gives every online node a fresh grace
//! period.

use std::collections::BTreeMap;

use wmig_proto::NodeId;

use crate::Millis;

pub use wmig_proto::wire::control::{Liveness, MembershipEvent, NodeInfo, Role};

/// One member, as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub info: NodeInfo,
    pub liveness: Liveness,
    /// A draining worker keeps its tasks but receives no new ones.
    pub draining: bool,
    /// Last time we heard from the node (volatile: not in the log).
    pub last_seen: Millis,
    /// Whether this coordinator process has heard from the node itself.
    /// Nodes replayed from the log are online on trust until the first
    /// timeout; until they speak, another process may take the name over
    /// (e.g. `wmig up` run again after a crash).
    pub heard: bool,
    /// What the SWIM membership says (volatile, like `last_seen`).
    pub swim: Swim,
}

/// A node's standing in the SWIM membership, as the coordinator last heard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Swim {
    /// Not (yet) a member: it must heartbeat, and silence for the offline
    /// timeout takes it offline.
    #[default]
    Unknown,
    /// An active member: the membership vouches for it, however rarely it
    /// checks in.
    Alive,
    /// The membership declared it down (it failed direct and indirect
    /// probes, then did not refute the suspicion): offline at once.
    Down,
}

/// A node without its volatile heartbeat time: what a replay must reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub info: NodeInfo,
    pub liveness: Liveness,
    pub draining: bool,
}

/// Failure-detector settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// A node silent this long (or longer) is declared offline.
    pub offline_timeout: Millis,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            offline_timeout: 5_000,
        }
    }
}

/// Why a membership command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("a live node named `{name}` is already registered (pid {pid} at {addr}); stop it or choose another name with --name")]
    DuplicateName {
        name: NodeId,
        pid: u32,
        addr: String,
    },
    #[error("unknown node `{name}`: it is not registered; register it again (workers re-register on reconnect)")]
    UnknownNode { name: NodeId },
    #[error("node `{name}` is a {role}, not a worker; only workers can be drained or uncordoned")]
    NotAWorker { name: NodeId, role: Role },
    #[error("node `{name}` was registered as a {was}; it cannot come back as a {now}: use a different name")]
    RoleChange { name: NodeId, was: Role, now: Role },
    #[error("invalid node name {name:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'")]
    InvalidName { name: String },
    #[error("node `{name}` is online; only an offline node can be removed: stop it first (or drain it to keep it out of placement)")]
    StillOnline { name: NodeId },
    #[error("node `{name}` still owns {tasks} task(s); wait for them to be recovered elsewhere, or cancel them")]
    HasTasks { name: NodeId, tasks: u32 },
}

/// The node table plus the failure detector.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    config: MembershipConfig,
    nodes: BTreeMap<NodeId, Node>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Membership {
    pub fn new(config: MembershipConfig) -> Self {
        Membership {
            config,
            nodes: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// A node announces itself. `Ok(None)` means the same process (same pid
    /// and address) registered again with nothing new, e.g. after the
    /// coordinator restarted: it is accepted and counts as a heartbeat.
    pub fn register(
        &mut self,
        info: NodeInfo,
        now: Millis,
    ) -> Result<Option<MembershipEvent>, MembershipError> {
        if !valid_name(&info.name.0) {
            return Err(MembershipError::InvalidName {
                name: info.name.0.chars().take(80).collect(),
            });
        }
        let event = match self.nodes.get(&info.name) {
            None => MembershipEvent::Joined(info),
            Some(node) => {
                if node.info.role != info.role {
                    return Err(MembershipError::RoleChange {
                        name: info.name,
                        was: node.info.role,
                        now: info.role,
                    });
                }
                let same_process = node.info.pid == info.pid && node.info.addr == info.addr;
                if node.liveness == Liveness::Online && node.heard && !same_process {
                    return Err(MembershipError::DuplicateName {
                        name: info.name,
                        pid: node.info.pid,
                        addr: node.info.addr.clone(),
                    });
                }
                if node.liveness == Liveness::Online && node.info == info {
                    self.touch(&info.name, now);
                    return Ok(None);
                }
                MembershipEvent::Recovered {
                    node: info.name.clone(),
                    info: Some(info),
                }
            }
        };
        self.apply(&event, now);
        Ok(Some(event))
    }

    /// A node says it is alive. An offline node's heartbeat recovers it.
    pub fn heartbeat(
        &mut self,
        name: &NodeId,
        now: Millis,
    ) -> Result<Option<MembershipEvent>, MembershipError> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| MembershipError::UnknownNode { name: name.clone() })?;
        if node.liveness == Liveness::Online {
            self.touch(name, now);
            return Ok(None);
        }
        let event = MembershipEvent::Recovered {
            node: name.clone(),
            info: None,
        };
        self.apply(&event, now);
        Ok(Some(event))
    }

    /// The membership says `name` is an active member: like a heartbeat, and
    /// from now on silence alone does not take it offline. Names that never
    /// registered are ignored (they register next).
    pub fn swim_up(&mut self, name: &NodeId, now: Millis) -> Option<MembershipEvent> {
        let node = self.nodes.get_mut(name)?;
        node.swim = Swim::Alive;
        self.heartbeat(name, now).ok().flatten()
    }

    /// The membership declared `name` down: the next
    /// [`Self::poll_timeouts`] takes it offline (once).
    pub fn swim_down(&mut self, name: &NodeId) {
        if let Some(node) = self.nodes.get_mut(name) {
            node.swim = Swim::Down;
        }
    }

    /// When an online node is due to be declared offline.
    fn due(&self, n: &Node) -> Option<Millis> {
        if n.liveness != Liveness::Online {
            return None;
        }
        match n.swim {
            Swim::Alive => None,
            Swim::Down => Some(0),
            Swim::Unknown => Some(n.last_seen.saturating_add(self.config.offline_timeout)),
        }
    }

    /// Declare offline every online node silent for `offline_timeout` or
    /// longer, or declared down by the membership. Each produces exactly
    /// one event.
    pub fn poll_timeouts(&mut self, now: Millis) -> Vec<MembershipEvent> {
        let expired: Vec<MembershipEvent> = self
            .nodes
            .values()
            .filter(|n| self.due(n).is_some_and(|d| d <= now))
            .map(|n| MembershipEvent::Offline(n.info.name.clone()))
            .collect();
        for event in &expired {
            self.apply(event, now);
        }
        expired
    }

    /// The earliest time at which [`Self::poll_timeouts`] may have work to do;
    /// `None` when no node is online.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.nodes.values().filter_map(|n| self.due(n)).min()
    }

    /// Forget an offline node. If its process comes back it is told it is
    /// unknown and registers anew.
    pub fn remove(&mut self, name: &NodeId) -> Result<MembershipEvent, MembershipError> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| MembershipError::UnknownNode { name: name.clone() })?;
        if node.liveness == Liveness::Online {
            return Err(MembershipError::StillOnline { name: name.clone() });
        }
        let event = MembershipEvent::Removed(name.clone());
        self.apply(&event, 0);
        Ok(event)
    }

    /// Stop placing new tasks on a worker. `Ok(None)` if it already drains.
    pub fn drain(&mut self, name: &NodeId) -> Result<Option<MembershipEvent>, MembershipError> {
        self.set_draining(name, true)
    }

    /// Place new tasks on a drained worker again. `Ok(None)` if it was not draining.
    pub fn uncordon(&mut self, name: &NodeId) -> Result<Option<MembershipEvent>, MembershipError> {
        self.set_draining(name, false)
    }

    fn set_draining(
        &mut self,
        name: &NodeId,
        draining: bool,
    ) -> Result<Option<MembershipEvent>, MembershipError> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| MembershipError::UnknownNode { name: name.clone() })?;
        if node.info.role != Role::Worker {
            return Err(MembershipError::NotAWorker {
                name: name.clone(),
                role: node.info.role,
            });
        }
        if node.draining == draining {
            return Ok(None);
        }
        let event = if draining {
            MembershipEvent::Drained(name.clone())
        } else {
            MembershipEvent::Uncordoned(name.clone())
        };
        let last_seen = node.last_seen;
        self.apply(&event, last_seen);
        Ok(Some(event))
    }

    /// Perform one state change. `now` becomes the heartbeat time of a node
    /// that joins or recovers. Events naming unknown nodes are ignored: the
    /// log only holds events that were valid when written.
    pub fn apply(&mut self, event: &MembershipEvent, now: Millis) {
        match event {
            MembershipEvent::Joined(info) => {
                self.nodes.insert(
                    info.name.clone(),
                    Node {
                        info: info.clone(),
                        liveness: Liveness::Online,
                        draining: false,
                        last_seen: now,
                        heard: true,
                        swim: Swim::Unknown,
                    },
                );
            }
            MembershipEvent::Recovered { node, info } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    if let Some(info) = info {
                        n.info = info.clone();
                    }
                    n.liveness = Liveness::Online;
                    n.last_seen = now;
                    n.heard = true;
                    // Back by its own word: what the membership said
                    // before no longer stands.
                    if n.swim == Swim::Down || info.is_some() {
                        n.swim = Swim::Unknown;
                    }
                }
            }
            MembershipEvent::Offline(node) => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.liveness = Liveness::Offline;
                }
            }
            MembershipEvent::Drained(node) => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.draining = true;
                }
            }
            MembershipEvent::Uncordoned(node) => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.draining = false;
                }
            }
            MembershipEvent::Removed(node) => {
                self.nodes.remove(node);
            }
        }
    }

    /// After replaying the log: heartbeat times were not persisted, so every
    /// node believed online gets two timeouts from `now` to prove it. One is
    /// the usual allowance; the other is for finding out that the
    /// coordinator is back (a worker notices a dead connection, then dials
    /// again). Declaring a live worker offline is expensive (every task on
    /// it restarts from its last checkpoint elsewhere), and a restart is
    /// exactly when every worker is reconnecting at once.
    pub fn resume(&mut self, now: Millis) {
        let grace = now.saturating_add(self.config.offline_timeout);
        for node in self.nodes.values_mut() {
            node.last_seen = grace;
            node.heard = false;
            node.swim = Swim::Unknown;
        }
    }

    fn touch(&mut self, name: &NodeId, now: Millis) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.last_seen = n.last_seen.max(now);
            n.heard = true;
            // A check-in is direct evidence of life: a "down" from the
            // membership that it answers no longer stands.
            if n.swim == Swim::Down {
                n.swim = Swim::Unknown;
            }
        }
    }

    pub fn node(&self, name: &NodeId) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All nodes in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The replayable part of the table, in name order.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|n| NodeView {
                info: n.info.clone(),
                liveness: n.liveness,
                draining: n.draining,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn info(name: &str, role: Role, slots: u32) -> NodeInfo {
        NodeInfo {
            name: NodeId(name.to_string()),
            role,
            slots,
            labels: BTreeMap::new(),
            addr: format!("127.0.0.1:{}", 4000 + name.len()),
            pid: 100,
        }
    }

    fn id(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    fn table() -> Membership {
        Membership::new(MembershipConfig::default())
    }

    #[test]
    fn register_then_duplicate_live_name_is_refused() {
        let mut m = table();
        let ev = m.register(info("w1", Role::Worker, 2), 0);
        assert_eq!(
            ev,
            Ok(Some(MembershipEvent::Joined(info("w1", Role::Worker, 2))))
        );
        let mut other = info("w1", Role::Worker, 2);
        other.pid = 999;
        let err = m.register(other, 10).unwrap_err();
        assert!(matches!(err, MembershipError::DuplicateName { .. }));
        assert!(err.to_string().contains("already registered"), "{err}");
        // The original registration is untouched.
        assert_eq!(m.node(&id("w1")).map(|n| n.info.pid), Some(100));
    }

    #[test]
    fn same_process_re_registering_is_idempotent() {
        let mut m = table();
        m.register(info("w1", Role::Worker, 2), 0).unwrap();
        assert_eq!(m.register(info("w1", Role::Worker, 2), 3_000), Ok(None));
        // Counted as a heartbeat: not offline at 5 000.
        assert!(m.poll_timeouts(5_000).is_empty());
        // Same process with new labels: recorded as an update.
        let mut relabeled = info("w1", Role::Worker, 2);
        relabeled.labels.insert("gpu".into(), "no".into());
        let ev = m.register(relabeled.clone(), 3_500).unwrap();
        assert!(matches!(
            ev,
            Some(MembershipEvent::Recovered { info: Some(_), .. })
        ));
        assert_eq!(m.node(&id("w1")).map(|n| &n.info), Some(&relabeled));
    }

    #[test]
    fn offline_node_re_registering_is_a_recovery() {
        let mut m = table();
        m.register(info("w1", Role::Worker, 2), 0).unwrap();
        assert_eq!(
            m.poll_timeouts(5_000),
            vec![MembershipEvent::Offline(id("w1"))]
        );
        let mut restarted = info("w1", Role::Worker, 4);
        restarted.pid = 200;
        let ev = m.register(restarted.clone(), 6_000).unwrap();
        assert_eq!(
            ev,
            Some(MembershipEvent::Recovered {
                node: id("w1"),
                info: Some(restarted)
            })
        );
        let node = m.node(&id("w1")).unwrap();
        assert_eq!(
            (node.liveness, node.info.pid, node.info.slots),
            (Liveness::Online, 200, 4)
        );
    }

    #[test]
    fn role_change_and_bad_names_are_refused() {
        let mut m = table();
        m.register(info("n", Role::Worker, 1), 0).unwrap();
        m.poll_timeouts(10_000);
        let err = m.register(info("n", Role::Monitor, 0), 10_001).unwrap_err();
        assert!(matches!(err, MembershipError::RoleChange { .. }), "{err}");
        for bad in ["", "a b", "x/y", &"z".repeat(65)] {
            let err = m.register(info(bad, Role::Worker, 1), 0).unwrap_err();
            assert!(
                matches!(err, MembershipError::InvalidName { .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_memberships_word_replaces_silence_both_ways() {
        let mut m = table();
        m.register(info("w", Role::Worker, 1), 0).expect("register");
        assert_eq!(m.swim_up(&id("w"), 100), None, "online already");
        // Vouched for by the membership: no timeout however long it is quiet.
        assert_eq!(m.next_deadline(), None);
        assert!(m.poll_timeouts(1_000_000).is_empty());
        // Declared down: offline at the next poll, once.
        m.swim_down(&id("w"));
        assert_eq!(m.next_deadline(), Some(0));
        assert_eq!(
            m.poll_timeouts(1_000_001),
            vec![MembershipEvent::Offline(id("w"))]
        );
        assert!(m.poll_timeouts(1_000_002).is_empty());
        // Back in the membership: online again.
        assert!(matches!(
            m.swim_up(&id("w"), 1_000_003),
            Some(MembershipEvent::Recovered { .. })
        ));
        // A check-in overrides a "down" it answers; silence counts again.
        m.swim_down(&id("w"));
        m.heartbeat(&id("w"), 1_000_004).expect("heartbeat");
        assert_eq!(m.next_deadline(), Some(1_000_004 + 5_000));
        // Names that never registered are not taken in.
        assert_eq!(m.swim_up(&id("stranger"), 0), None);
        assert!(m.node(&id("stranger")).is_none());
    }

    #[test]
    fn heartbeat_from_unknown_node_says_re_register() {
        let mut m = table();
        let err = m.heartbeat(&id("ghost"), 0).unwrap_err();
        assert_eq!(err, MembershipError::UnknownNode { name: id("ghost") });
        assert!(err.to_string().contains("register it again"), "{err}");
    }

    /// Hours of simulated time: a steady node never goes offline, a node that
    /// stops heartbeating goes offline at exactly `last + timeout` (not one
    /// millisecond before), once, and recovers on its next heartbeat.
    #[test]
    fn simulated_hours_of_heartbeats() {
        let mut m = table();
        m.register(info("steady", Role::Worker, 1), 0).unwrap();
        m.register(info("flaky", Role::Worker, 1), 0).unwrap();
        m.register(info("mon", Role::Monitor, 0), 0).unwrap();
        let hours = 3 * 3_600_000;
        let silent_from = 3_600_000; // flaky's last heartbeat
        let back_at = 7_200_000;
        let mut offline_events = Vec::new();
        let mut now = 0;
        let mut next_beat = 1_000;
        while now < hours {
            // Step to whichever comes first: a heartbeat round or a deadline.
            let deadline = m.next_deadline().unwrap_or(u64::MAX);
            now = next_beat.min(deadline);
            for ev in m.poll_timeouts(now) {
                offline_events.push((now, ev));
            }
            if now == next_beat {
                m.heartbeat(&id("steady"), now).unwrap();
                m.heartbeat(&id("mon"), now).unwrap();
                if now <= silent_from || now >= back_at {
                    let ev = m.heartbeat(&id("flaky"), now).unwrap();
                    if now == back_at {
                        assert_eq!(
                            ev,
                            Some(MembershipEvent::Recovered {
                                node: id("flaky"),
                                info: None
                            })
                        );
                    } else {
                        assert_eq!(ev, None, "at {now}");
                    }
                }
                next_beat += 1_000;
            }
            let flaky = m.node(&id("flaky")).unwrap().liveness;
            let expect_offline = now >= silent_from + 5_000 && now < back_at;
            assert_eq!(flaky == Liveness::Offline, expect_offline, "at {now}");
        }
        assert_eq!(
            offline_events,
            vec![(silent_from + 5_000, MembershipEvent::Offline(id("flaky")))]
        );
        assert!(m.nodes().all(|n| n.liveness == Liveness::Online));
    }

    #[test]
    fn offline_exactly_at_timeout_and_deadlines() {
        let mut m = Membership::new(MembershipConfig {
            offline_timeout: 300,
        });
        assert_eq!(m.next_deadline(), None);
        m.register(info("a", Role::Worker, 1), 100).unwrap();
        m.register(info("b", Role::Worker, 1), 150).unwrap();
        assert_eq!(m.next_deadline(), Some(400));
        assert!(m.poll_timeouts(399).is_empty());
        assert_eq!(
            m.poll_timeouts(400),
            vec![MembershipEvent::Offline(id("a"))]
        );
        assert!(m.poll_timeouts(401).is_empty(), "offline is reported once");
        assert_eq!(m.next_deadline(), Some(450));
        // A late heartbeat timestamp never moves last_seen backwards.
        m.heartbeat(&id("b"), 200).unwrap();
        m.heartbeat(&id("b"), 120).unwrap();
        assert_eq!(m.next_deadline(), Some(500));
        m.poll_timeouts(10_000);
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn drain_and_uncordon() {
        let mut m = table();
        m.register(info("w", Role::Worker, 1), 0).unwrap();
        m.register(info("mon", Role::Monitor, 0), 0).unwrap();
        assert_eq!(
            m.drain(&id("w")),
            Ok(Some(MembershipEvent::Drained(id("w"))))
        );
        assert_eq!(m.drain(&id("w")), Ok(None));
        assert!(m.node(&id("w")).unwrap().draining);
        assert_eq!(
            m.uncordon(&id("w")),
            Ok(Some(MembershipEvent::Uncordoned(id("w"))))
        );
        assert_eq!(m.uncordon(&id("w")), Ok(None));
        assert!(matches!(
            m.drain(&id("mon")),
            Err(MembershipError::NotAWorker { .. })
        ));
        assert!(matches!(
            m.uncordon(&id("x")),
            Err(MembershipError::UnknownNode { .. })
        ));
    }

    #[test]
    fn resume_gives_a_fresh_grace_period() {
        // Two timeouts (5 s each here): one to notice the restart, one as usual.
        let mut m = table();
        m.register(info("w", Role::Worker, 1), 0).unwrap();
        m.resume(1_000_000);
        assert!(m.poll_timeouts(1_009_999).is_empty());
        assert_eq!(m.poll_timeouts(1_010_000).len(), 1);
        // A heartbeat after the restart counts from then, as always.
        let mut m = table();
        m.register(info("w", Role::Worker, 1), 0).unwrap();
        m.resume(1_000_000);
        m.heartbeat(&id("w"), 1_001_000).unwrap();
        assert!(
            m.poll_timeouts(1_009_999).is_empty(),
            "the grace is not cut short"
        );
        m.heartbeat(&id("w"), 1_012_000).unwrap();
        assert!(m.poll_timeouts(1_016_999).is_empty());
        assert_eq!(m.poll_timeouts(1_017_000).len(), 1);
    }

    #[test]
    fn after_resume_an_unheard_name_can_be_taken_over() {
        let mut m = table();
        m.register(info("w1", Role::Worker, 2), 0).unwrap();
        m.register(info("w2", Role::Worker, 2), 0).unwrap();
        m.resume(10_000);
        // w1 comes back as the same process: fine, and now it is heard.
        assert_eq!(m.register(info("w1", Role::Worker, 2), 10_100), Ok(None));
        // A new process named w2 before the old one spoke: it takes over.
        let mut fresh = info("w2", Role::Worker, 2);
        fresh.pid = 999;
        assert!(matches!(
            m.register(fresh, 10_200),
            Ok(Some(MembershipEvent::Recovered { .. }))
        ));
        // But w1 has spoken since the restart: a second process is refused.
        let mut dup = info("w1", Role::Worker, 2);
        dup.pid = 998;
        assert!(matches!(
            m.register(dup, 10_300),
            Err(MembershipError::DuplicateName { .. })
        ));
    }
}
