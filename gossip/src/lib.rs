//! SWIM membership among wmig nodes: who is alive, learnt from the members
//! themselves rather than from one coordinator answering every heartbeat.
//!
//! [foca] does the protocol (a probe each period, indirect probes through
//! k members when the direct one times out, suspicion refuted by raising
//! one's incarnation, updates piggybacked on every message and gossiped
//! periodically). It is sans-IO; this crate is its runtime: one UDP socket,
//! a timer queue, authentication of every packet, and what the rest of wmig
//! needs on top:
//!
//! - **Changes**: [`Change::Up`] / [`Change::Down`] per member, computed as
//!   differences of foca's active set (so renames, rejoins and restarts on a
//!   new port all come out as the same two events).
//! - **Beacons**: the coordinator that leads adds a small broadcast every
//!   tenth of the offline timeout. Every member relays the newest one, so a
//!   worker knows the leader is reachable *through the membership* without
//!   talking to it; the worker's self-fencing counts from the last new
//!   beacon (see `wmig_worker::fence`).
//! - **Timing from one number**: the offline timeout T (5 s by default).
//!   A member is probed within a period of T/5, and a suspect is declared
//!   down T − T/5 later, so a member that stops answering is down no sooner
//!   than T after it stopped; a worker fences itself at ¾ T without a new
//!   beacon, before anyone can have declared it down.
//!
//! Packets carry a keyed blake3 tag: the key is handed out by the
//! coordinator over mutual TLS at registration, so only nodes holding a
//! cluster certificate take part. Membership data is not secret (names and
//! addresses), so it is authenticated, not encrypted.
//!
//! [foca]: https://docs.rs/foca

use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use foca::{
    AccumulatingRuntime, BroadcastHandler, Config, Foca, Invalidates, OwnedNotification,
    PostcardCodec, Timer,
};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What a member is; only workers' liveness drives the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Coordinator,
    Worker,
    Registry,
    /// The placeholder identity of a seed we only know the address of.
    Seed,
}

/// A member's identity: foca's `Identity`. Unique by `addr` (one UDP socket
/// per process); `gen` lets a restarted or renewed member win over its old
/// self at the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub kind: Kind,
    pub name: String,
    pub addr: SocketAddr,
    /// Unix ms when the process started, +1 for each renewal.
    pub gen: u64,
    /// Where it serves its role's protocol, when others need to know (a
    /// registry node's QUIC address: the ring routes to it).
    pub serves: Option<SocketAddr>,
    pub pid: u32,
}

impl Peer {
    pub fn new(kind: Kind, name: impl Into<String>, addr: SocketAddr) -> Peer {
        let gen = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Peer {
            kind,
            name: name.into(),
            addr,
            gen,
            serves: None,
            pid: std::process::id(),
        }
    }

    /// The same member, announcing the address it serves on.
    pub fn serving(self, serves: SocketAddr) -> Peer {
        Peer {
            serves: Some(serves),
            ..self
        }
    }

    fn seed(addr: SocketAddr) -> Peer {
        Peer {
            kind: Kind::Seed,
            name: String::new(),
            addr,
            gen: 0,
            serves: None,
            pid: 0,
        }
    }
}

impl foca::Identity for Peer {
    type Addr = SocketAddr;

    /// Declared down by the others (a pause, a partition that healed):
    /// come back at once under a newer identity.
    fn renew(&self) -> Option<Self> {
        Some(Peer {
            gen: self.gen.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.gen > adversary.gen
    }
}

/// A member became active or stopped being active, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Up(Peer),
    Down(Peer),
    /// The others declared *this* node down; it rejoined under a new
    /// identity. Whatever it ran may have been given to someone else.
    Rejoined,
}

/// Membership settings.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This node's identity (its `addr` is what others send to).
    pub me: Peer,
    /// Where to bind the UDP socket (normally `me.addr`).
    pub bind: SocketAddr,
    /// The cluster's gossip key (from the coordinator).
    pub key: [u8; 32],
    /// The failure-detection budget all timings derive from.
    pub offline_timeout: Duration,
    /// Members to join through (their gossip addresses).
    pub seeds: Vec<SocketAddr>,
}

impl GossipConfig {
    /// foca's settings for this offline timeout (see the module docs).
    fn foca(&self) -> Config {
        let t = self.offline_timeout.max(Duration::from_millis(500));
        let period = t / 5;
        Config {
            probe_period: period,
            probe_rtt: period / 3,
            num_indirect_probes: NonZeroUsize::MIN.saturating_add(2),
            max_transmissions: NonZeroU8::MIN.saturating_add(7),
            suspect_to_down_after: t - period,
            remove_down_after: Duration::from_secs(3600).into(),
            max_packet_size: NonZeroUsize::MIN.saturating_add(MAX_PACKET - TAG - 1),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::MIN,
            }),
            // Heals partitions: members on both sides find each other again.
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: t,
                num_members: NonZeroUsize::MIN.saturating_add(1),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: t / 10,
                num_members: NonZeroUsize::MIN.saturating_add(2),
            }),
        }
    }

    /// How often the leader sends a beacon.
    pub fn beacon_every(&self) -> Duration {
        (self.offline_timeout / 10).max(Duration::from_millis(50))
    }
}

/// UDP payloads stay under a typical MTU.
const MAX_PACKET: usize = 1400;
/// blake3 keyed hash of the rest of the packet.
const TAG: usize = 32;
/// First byte of every packet: a format version, so a mixed-version
/// cluster drops packets it cannot read instead of misreading them.
const VERSION: u8 = 1;

fn seal(key: &[u8; 32], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(blake3::keyed_hash(key, payload).as_bytes());
    out.extend_from_slice(payload);
}

/// The payload of an authentic packet, or why it is not one.
fn open<'a>(key: &[u8; 32], packet: &'a [u8]) -> Result<&'a [u8], &'static str> {
    if packet.len() < 1 + TAG {
        return Err("shorter than a tag");
    }
    if packet[0] != VERSION {
        return Err("unknown format version (another wmig release?)");
    }
    let mut tag = [0u8; TAG];
    tag.copy_from_slice(&packet[1..1 + TAG]);
    let payload = &packet[1 + TAG..];
    // blake3::Hash compares in constant time.
    if blake3::Hash::from_bytes(tag) != blake3::keyed_hash(key, payload) {
        return Err("bad tag (not this cluster's gossip key)");
    }
    Ok(payload)
}

/// Milliseconds on a monotonic clock shared by every member in the process.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The leader's beacon: its term (higher wins), then its wall clock in ms
/// (so a restarted single coordinator still counts up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Beacon {
    pub term: u64,
    pub at_ms: u64,
}

impl Invalidates for Beacon {
    fn invalidates(&self, other: &Self) -> bool {
        self >= other
    }
}

/// What every member shares with its owner.
#[derive(Debug, Default)]
pub struct View {
    alive: Mutex<BTreeMap<SocketAddr, Peer>>,
    newest_beacon: Mutex<Option<Beacon>>,
    /// [`now_ms`] when the newest beacon arrived (0: never).
    beacon_seen_ms: AtomicU64,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    rejected: AtomicU64,
}

impl View {
    /// Active members, this node excluded.
    pub fn alive(&self) -> Vec<Peer> {
        lock(&self.alive).values().cloned().collect()
    }

    /// [`now_ms`] when a newer leader beacon last arrived (0: never).
    pub fn beacon_seen_ms(&self) -> u64 {
        self.beacon_seen_ms.load(Ordering::SeqCst)
    }

    pub fn newest_beacon(&self) -> Option<Beacon> {
        *lock(&self.newest_beacon)
    }

    /// Packets received, sent, and dropped as not authentic.
    pub fn packets(&self) -> (u64, u64, u64) {
        (
            self.packets_in.load(Ordering::Relaxed),
            self.packets_out.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Beacons {
    view: Arc<View>,
}

#[derive(Debug)]
struct BadBeacon;

impl std::fmt::Display for BadBeacon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed leader beacon")
    }
}

impl std::error::Error for BadBeacon {}

impl BroadcastHandler<Peer> for Beacons {
    type Key = Beacon;
    type Error = BadBeacon;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Peer>,
    ) -> Result<Option<Beacon>, BadBeacon> {
        let beacon: Beacon = postcard::from_bytes(data).map_err(|_| BadBeacon)?;
        let mut newest = lock(&self.view.newest_beacon);
        if newest.is_some_and(|n| n >= beacon) {
            return Ok(None);
        }
        *newest = Some(beacon);
        self.view.beacon_seen_ms.store(now_ms(), Ordering::SeqCst);
        Ok(Some(beacon))
    }
}

enum Command {
    /// Lead: beacon with this term (None: stop beaconing).
    Lead(Option<u64>),
    Announce(Vec<SocketAddr>),
}

/// A running member. Dropping it leaves the cluster abruptly (as a crash
/// would); [`Gossip::leave`] leaves politely.
pub struct Gossip {
    commands: mpsc::UnboundedSender<Command>,
    view: Arc<View>,
    addr: SocketAddr,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gossip {
    /// Bind the socket and run the member on a thread of its own (so that
    /// big transfers on the node's main runtime cannot delay a probe's ack
    /// into a false suspicion). Changes arrive on the receiver.
    pub fn start(
        config: GossipConfig,
    ) -> std::io::Result<(Gossip, mpsc::UnboundedReceiver<Change>)> {
        let socket = std::net::UdpSocket::bind(config.bind)?;
        Self::start_on(socket, config)
    }

    /// [`Self::start`] on a socket bound already (`config.bind` unused):
    /// its address can be published before the key is known.
    pub fn start_on(
        socket: std::net::UdpSocket,
        config: GossipConfig,
    ) -> std::io::Result<(Gossip, mpsc::UnboundedReceiver<Change>)> {
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let sender = socket.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (member, changes) = Member::new(config, addr);
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let gossip = member.handle(Some(stop_tx));
        std::thread::Builder::new()
            .name("wmig-gossip".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let socket = match UdpSocket::from_std(socket) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "gossip socket");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stop => {}
                        () = member.run(socket, sender) => {}
                    }
                });
            })?;
        Ok((gossip, changes))
    }

    /// Run the member as a task on the current runtime instead (many
    /// simulated members in one process, as the idle benchmark does).
    pub async fn spawn(
        config: GossipConfig,
    ) -> std::io::Result<(Gossip, mpsc::UnboundedReceiver<Change>)> {
        let socket = std::net::UdpSocket::bind(config.bind)?;
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let sender = socket.try_clone()?;
        let socket = UdpSocket::from_std(socket)?;
        let (member, changes) = Member::new(config, addr);
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let gossip = member.handle(Some(stop_tx));
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                () = member.run(socket, sender) => {}
            }
        });
        Ok((gossip, changes))
    }

    /// The address members reach this one at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Beacon as the leader of `term` (None: stop).
    pub fn lead(&self, term: Option<u64>) {
        let _ = self.commands.send(Command::Lead(term));
    }

    /// Join (again) through these members.
    pub fn announce(&self, seeds: Vec<SocketAddr>) {
        let _ = self.commands.send(Command::Announce(seeds));
    }
}

/// A scheduled foca timer; the heap pops the earliest first.
struct Due {
    at: Instant,
    seq: u64,
    timer: Timer<Peer>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Sender {
    recv: UdpSocket,
    send: std::net::UdpSocket,
}

type Swim = Foca<Peer, PostcardCodec, rand::rngs::StdRng, Beacons>;

struct Member {
    config: GossipConfig,
    foca: Swim,
    runtime: AccumulatingRuntime<Peer>,
    timers: BinaryHeap<Due>,
    seq: u64,
    view: Arc<View>,
    changes: mpsc::UnboundedSender<Change>,
    commands_tx: mpsc::UnboundedSender<Command>,
    commands: mpsc::UnboundedReceiver<Command>,
    addr: SocketAddr,
    term: Option<u64>,
    sealed: Vec<u8>,
}

impl Member {
    fn new(
        mut config: GossipConfig,
        bound: SocketAddr,
    ) -> (Member, mpsc::UnboundedReceiver<Change>) {
        // Bound to port 0: others reach us at the port we got.
        if config.me.addr.port() == 0 {
            config.me.addr.set_port(bound.port());
        }
        if config.me.addr.ip().is_unspecified() {
            config.me.addr.set_ip(bound.ip());
        }
        let view = Arc::new(View::default());
        let foca = Foca::with_custom_broadcast(
            config.me.clone(),
            config.foca(),
            rand::make_rng(),
            PostcardCodec,
            Beacons { view: view.clone() },
        );
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let addr = config.me.addr;
        (
            Member {
                config,
                foca,
                runtime: AccumulatingRuntime::new(),
                timers: BinaryHeap::new(),
                seq: 0,
                view,
                changes,
                commands_tx,
                commands,
                addr,
                term: None,
                sealed: Vec::with_capacity(MAX_PACKET),
            },
            changes_rx,
        )
    }

    fn handle(&self, stop: Option<tokio::sync::oneshot::Sender<()>>) -> Gossip {
        Gossip {
            commands: self.commands_tx.clone(),
            view: self.view.clone(),
            addr: self.addr,
            _stop: stop,
        }
    }

    /// Receive on `socket`; send on `sender`, a plain non-blocking clone of
    /// it (tokio's `try_send_to` refuses until the reactor has polled the
    /// socket once, which loses the first announce).
    async fn run(mut self, socket: UdpSocket, sender: std::net::UdpSocket) {
        let socket = Sender {
            recv: socket,
            send: sender,
        };
        let seeds = std::mem::take(&mut self.config.seeds);
        self.announce(&socket, seeds);
        let mut buf = vec![0u8; MAX_PACKET + 64];
        let mut beacon = tokio::time::interval(self.config.beacon_every());
        beacon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self
                .timers
                .peek()
                .map_or_else(|| Instant::now() + Duration::from_secs(3600), |d| d.at);
            tokio::select! {
                got = socket.recv.recv_from(&mut buf) => match got {
                    Ok((n, from)) => {
                        self.view.packets_in.fetch_add(1, Ordering::Relaxed);
                        match open(&self.config.key, &buf[..n]) {
                            Ok(payload) => {
                                if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
                                    tracing::debug!(%from, error = %e, "gossip packet refused");
                                }
                            }
                            Err(why) => {
                                self.view.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%from, why, "gossip packet dropped");
                            }
                        }
                    }
                    // ICMP errors from peers that went away surface here.
                    Err(e) => tracing::trace!(error = %e, "gossip receive"),
                },
                () = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    while self.timers.peek().is_some_and(|d| d.at <= now) {
                        if let Some(due) = self.timers.pop() {
                            if let Err(e) = self.foca.handle_timer(due.timer, &mut self.runtime) {
                                tracing::debug!(error = %e, "gossip timer");
                            }
                        }
                    }
                }
                _ = beacon.tick() => {
                    if let Some(term) = self.term {
                        let at_ms = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                        if let Ok(data) = postcard::to_stdvec(&Beacon { term, at_ms }) {
                            if let Err(e) = self.foca.add_broadcast(&data) {
                                tracing::debug!(error = %e, "beacon");
                            }
                            // Push it out now rather than waiting for the
                            // next probe or gossip round.
                            if let Err(e) = self.foca.broadcast(&mut self.runtime) {
                                tracing::debug!(error = %e, "beacon broadcast");
                            }
                        }
                    }
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::Lead(term) => self.term = term,
                    Command::Announce(seeds) => self.announce(&socket, seeds),
                },
            }
            self.drain(&socket);
        }
    }

    fn announce(&mut self, socket: &Sender, seeds: Vec<SocketAddr>) {
        for seed in seeds {
            if seed != self.addr {
                if let Err(e) = self.foca.announce(Peer::seed(seed), &mut self.runtime) {
                    tracing::debug!(%seed, error = %e, "announce");
                }
            }
        }
        self.drain(socket);
    }

    /// Carry out what foca asked for: packets, timers, notifications.
    fn drain(&mut self, socket: &Sender) {
        while let Some((to, data)) = self.runtime.to_send() {
            seal(&self.config.key, &data, &mut self.sealed);
            self.view.packets_out.fetch_add(1, Ordering::Relaxed);
            // UDP: a full socket buffer drops the packet, as the network
            // may; SWIM tolerates loss.
            if let Err(e) = socket.send.send_to(&self.sealed, to.addr) {
                tracing::trace!(to = %to.addr, error = %e, "gossip send");
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.seq += 1;
            self.timers.push(Due {
                at: now + after,
                seq: self.seq,
                timer,
            });
        }
        let mut changed = false;
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::Rejoin(me) => {
                    tracing::warn!(
                        gen = me.gen,
                        "the cluster declared this node down; rejoined"
                    );
                    let _ = self.changes.send(Change::Rejoined);
                    changed = true;
                }
                OwnedNotification::Defunct => {
                    // Renewal failed (cannot happen with our identity), so
                    // come back under the same one.
                    let _ = self.foca.reuse_down_identity();
                    let _ = self.changes.send(Change::Rejoined);
                }
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(..)
                | OwnedNotification::Idle => changed = true,
                _ => {}
            }
        }
        if changed {
            self.publish();
        }
    }

    /// Diff foca's active set against the last one published.
    fn publish(&mut self) {
        let now: BTreeMap<SocketAddr, Peer> = self
            .foca
            .iter_members()
            .map(|m| (m.id().addr, m.id().clone()))
            .collect();
        let mut alive = lock(&self.view.alive);
        for (addr, peer) in alive.iter() {
            if now.get(addr) != Some(peer) {
                let _ = self.changes.send(Change::Down(peer.clone()));
            }
        }
        for (addr, peer) in &now {
            if alive.get(addr) != Some(peer) {
                let _ = self.changes.send(Change::Up(peer.clone()));
            }
        }
        *alive = now;
    }
}

#[cfg(test)]
mod tests;
