//! The coordinator process: the sans-IO [`Coordinator`] driven over QUIC.
//!
//! One mutex guards the state ([`Core`]); it is never held across an
//! `.await`. A command applies its events to memory at once and queues them
//! for the log; the *committer* task writes every queued event with one
//! fsync (group commit, so a burst of submissions costs one disk flush, not
//! one each), then publishes the durable sequence number and carries out
//! the side effects (commands to workers, the monitor stream). A request is
//! answered only once its events are durable.
//!
//! Workers hold an attach stream open; placements and cancellations become
//! [`WorkerCommand`]s on it. When a worker (re)attaches it is sent a `Run`
//! for every task it owns, which is how both a restarted worker and a
//! restarted coordinator converge.

pub mod api;
mod authz;
mod follower;
pub mod gossip;
pub mod http;
pub mod input;
mod migrate;
pub mod output;
pub mod replica;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch, Notify};
use wmig_net::stream::{read_frame, timed, write_frame};
use wmig_net::{EndpointConfig, NetError};
use wmig_proto::frame::{FrameError, MAX_FRAME_LEN};
use wmig_proto::wire::{ErrorCode, RemoteError, RevokedCert, CONTROL_ALPN};
use wmig_proto::{NodeId, TaskId};

use crate::membership::{Liveness, MembershipEvent, Role};
use crate::migration::LiveReady;
use crate::placement::Placement;
use crate::tasks::{TaskEvent, TaskState};
use crate::wire::{
    ClusterStats, ControlRequest, ControlResponse, MonitorItem, NodeStatus, OutputChunk,
    RecoveryReport, Stream, TaskBeat, TaskView, WorkerCommand,
};
use crate::{Coordinator, CoordinatorConfig, CoordinatorError, Event, EventLog, LogError};
pub use follower::serve_follower;
pub use gossip::GossipRole;
use output::OutputStore;
use replica::{CoordinatorRecord, Replica};

/// Settings of a coordinator process.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub endpoint: EndpointConfig,
    /// Event log and task output live here.
    pub data_dir: PathBuf,
    pub coordinator: CoordinatorConfig,
    /// How often nodes are asked to heartbeat.
    pub heartbeat: Duration,
    /// Time for a request frame to arrive.
    pub request_timeout: Duration,
    /// How often monitors receive [`ClusterStats`].
    pub stats_interval: Duration,
    /// The HTTP API's token and the way to the registry.
    pub api: api::ApiConfig,
    /// This coordinator's control address as clients reach it (answers
    /// `WhoLeads`).
    pub advertise: Option<String>,
    /// The SWIM membership this coordinator takes part in (`None`: every
    /// node heartbeats, as before).
    pub gossip: Option<GossipRole>,
    /// Check-ins (heartbeats with task usage) the coordinator takes per
    /// second at most while nodes are members of the SWIM membership: each
    /// is told to check in every `nodes / check_ins_per_sec` seconds (never
    /// more often than `heartbeat`), so their cost stays flat however large
    /// the cluster grows. Liveness in between comes from the membership.
    pub check_ins_per_sec: f64,
}

/// Default of [`ServerConfig::check_ins_per_sec`].
pub const CHECK_INS_PER_SEC: f64 = 50.0;

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        let mut endpoint = EndpointConfig::new(CONTROL_ALPN);
        // Each worker holds an attach stream and each follower a logs or
        // events stream open for long; leave room for the short requests.
        endpoint.max_streams = 256;
        ServerConfig {
            endpoint,
            data_dir,
            coordinator: CoordinatorConfig::default(),
            heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            api: api::ApiConfig::default(),
            advertise: None,
            gossip: None,
            check_ins_per_sec: CHECK_INS_PER_SEC,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error(transparent)]
    Replica(#[from] replica::ReplicaError),
    #[error("could not clear {path} for the state kept in etcd: {source}")]
    Clear {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why [`Server::run`] returned.
#[derive(Debug)]
pub enum RunEnd {
    /// The shutdown future resolved.
    Shutdown,
    /// A replicated coordinator lost its leadership (or could not write to
    /// etcd): it decided nothing more and must be started again to follow.
    SteppedDown(String),
}

/// A logged event with its sequence number (its index in the log, from 0)
/// and the unix ms it was decided (0 if it was replayed).
#[derive(Clone, Debug)]
struct Logged {
    seq: u64,
    at_ms: u64,
    event: Event,
}

struct Core {
    coord: Coordinator,
    /// Every event since the log began, for `wmig events`.
    history: Vec<Logged>,
    /// Applied to memory, not yet durable.
    unflushed: Vec<Logged>,
    next_seq: u64,
    outputs: OutputStore,
    /// Command channel of each attached worker, with an attach generation so
    /// an old stream ending does not remove a newer one.
    attached: HashMap<NodeId, (u64, mpsc::UnboundedSender<WorkerCommand>)>,
    attach_gen: u64,
    started: HashMap<TaskId, u64>,
    checkpoints: u64,
    /// Migrations in flight (volatile; see [`crate::migration`]).
    migrations: migrate::Inflight,
    /// Each running task's latest heartbeat entry (volatile).
    usage: HashMap<TaskId, TaskBeat>,
    /// Tasks of dead workers not yet running elsewhere: the dead worker and
    /// the unix ms it was last heard from.
    recovering: HashMap<TaskId, (NodeId, u64)>,
    /// The latest migrations and recoveries, oldest first, for dashboards.
    timeline: VecDeque<MonitorItem>,
    /// Every coordinator holding an etcd lease (replicated mode), refreshed
    /// every second, for `wmig nodes`.
    coordinators: Vec<CoordinatorRecord>,
}

/// Migrations and recoveries kept for [`Core::timeline`].
const TIMELINE_LEN: usize = 200;

impl Core {
    fn remember(&mut self, item: MonitorItem) {
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.pop_front();
        }
        self.timeline.push_back(item);
    }
}

/// Durability progress published by the committer.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Events with `seq < next` are on disk.
    next: u64,
    /// Set once an append failed; the process must restart and replay.
    failed: Option<String>,
}

struct Shared {
    core: Mutex<Core>,
    config: ServerConfig,
    clock: Instant,
    /// Wakes the committer.
    queued: Notify,
    durable: watch::Sender<Durable>,
    monitor: broadcast::Sender<Arc<MonitorItem>>,
    /// The HTTP API's connection to the registry, made on first use.
    registry: tokio::sync::Mutex<Option<wmig_registry::RegistryClient>>,
    /// Task input, behind its own lock: appends fsync, which must not
    /// hold up every other request.
    inputs: Arc<Mutex<input::InputStore>>,
    /// Bumped after every stored input, for workers waiting for some.
    input_added: watch::Sender<u64>,
    /// Output group commit: appends bump `output_written` and wake the
    /// syncer, which fsyncs every dirty output file and publishes the
    /// generation it covered in `output_synced`.
    output_written: std::sync::atomic::AtomicU64,
    output_sync: Notify,
    /// `Err((covers, why))`: the pass meant to cover up to `covers` failed.
    output_synced: watch::Sender<Result<u64, (u64, String)>>,
    /// Replicated mode: etcd holds the log, output and input, and decides
    /// who leads.
    replica: Option<Arc<Replica>>,
    /// Set (with the reason) once a replicated coordinator must stop.
    step_down: watch::Sender<Option<String>>,
    /// Check-ins (heartbeats) answered, for `/metrics`.
    check_ins: std::sync::atomic::AtomicU64,
}

/// A coordinator with its log replayed, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    log: Log,
}

/// Where committed events go. The file sits behind a lock because its
/// appends run on the blocking pool.
enum Log {
    File(Arc<Mutex<EventLog>>),
    Etcd(Arc<Replica>),
}

fn unix_ms() -> u64 {
    unix_us_now() / 1000
}

fn unix_us_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Server {
    /// Open (or create) the event log under `config.data_dir` and replay it.
    pub fn open(config: ServerConfig) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| LogError::Io {
            path: config.data_dir.clone(),
            action: "create",
            source,
        })?;
        let (log, replay) = EventLog::open(config.data_dir.join("events.log"))?;
        let outputs = OutputStore::open(&config.data_dir.join("output"))?;
        let inputs = input::InputStore::open(&config.data_dir.join("input"))?;
        Ok(Self::build(
            config,
            replay.events,
            Log::File(Arc::new(Mutex::new(log))),
            outputs,
            inputs,
        ))
    }

    /// The state of a newly elected leader: the event log, output and input
    /// as etcd holds them. Local output and input files are only a cache of
    /// etcd here, so they are cleared and rebuilt: this machine may have
    /// been a leader before, or never seen the cluster at all.
    pub async fn open_replicated(
        config: ServerConfig,
        replica: Arc<Replica>,
    ) -> Result<Server, ServerError> {
        let events = replica.load_log().await?;
        let output = replica.load_output().await?;
        let input = replica.load_input().await?;
        let dir = config.data_dir.clone();
        let (outputs, inputs) =
            tokio::task::spawn_blocking(move || rebuild_local(&dir, output, input))
                .await
                .map_err(|e| ServerError::Clear {
                    path: config.data_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        Ok(Self::build(
            config,
            events,
            Log::Etcd(replica),
            outputs,
            inputs,
        ))
    }

    fn build(
        config: ServerConfig,
        events: Vec<Event>,
        log: Log,
        outputs: OutputStore,
        inputs: input::InputStore,
    ) -> Server {
        let clock = Instant::now();
        let coord = Coordinator::replay(config.coordinator.clone(), &events, 0);
        let history: Vec<Logged> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Logged {
                seq: i as u64,
                at_ms: 0,
                event,
            })
            .collect();
        let next_seq = history.len() as u64;
        let checkpoints = history
            .iter()
            .filter(|l| matches!(l.event, Event::Task(TaskEvent::Checkpointed { .. })))
            .count() as u64;
        tracing::info!(
            events = next_seq,
            tasks = coord.tasks().count(),
            nodes = coord.nodes().count(),
            "replayed event log"
        );
        let (durable, _) = watch::channel(Durable {
            next: next_seq,
            failed: None,
        });
        let (monitor, _) = broadcast::channel(4096);
        let replica = match &log {
            Log::Etcd(r) => Some(r.clone()),
            Log::File(_) => None,
        };
        Server {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    coord,
                    history,
                    unflushed: Vec::new(),
                    next_seq,
                    outputs,
                    attached: HashMap::new(),
                    attach_gen: 0,
                    started: HashMap::new(),
                    checkpoints,
                    migrations: migrate::Inflight::default(),
                    usage: HashMap::new(),
                    recovering: HashMap::new(),
                    timeline: VecDeque::new(),
                    coordinators: Vec::new(),
                }),
                config,
                clock,
                queued: Notify::new(),
                durable,
                monitor,
                registry: tokio::sync::Mutex::new(None),
                inputs: Arc::new(Mutex::new(inputs)),
                input_added: watch::channel(0).0,
                output_written: std::sync::atomic::AtomicU64::new(0),
                output_sync: Notify::new(),
                output_synced: watch::channel(Ok(0)).0,
                replica,
                step_down: watch::channel(None).0,
                check_ins: std::sync::atomic::AtomicU64::new(0),
            }),
            log,
        }
    }

    /// Serve on `endpoint` (and `/metrics` on `http`, if given) until
    /// `shutdown` resolves or, replicated, until this coordinator must stop
    /// leading.
    pub async fn run(
        self,
        endpoint: quinn::Endpoint,
        http: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> RunEnd {
        let shared = self.shared;
        let mut background = tokio::task::JoinSet::new();
        background.spawn(committer(shared.clone(), self.log));
        background.spawn(output_syncer(shared.clone()));
        background.spawn(failure_detector(shared.clone()));
        background.spawn(stats_ticker(shared.clone()));
        if let Some(gossip) = shared.config.gossip.clone() {
            let term = shared.replica.as_ref().map_or(0, |r| r.term());
            gossip.member.lead(Some(u64::try_from(term).unwrap_or(0)));
            background.spawn(gossip::watch(shared.clone(), gossip));
        }
        if let Some(listener) = http {
            background.spawn(http::serve(listener, shared.clone()));
        }
        let mut lost = match &shared.replica {
            Some(r) => {
                background.spawn(watch_coordinators(shared.clone(), r.clone()));
                r.lost()
            }
            None => watch::channel(None).1,
        };
        let mut step_down = shared.step_down.subscribe();
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let end = loop {
            tokio::select! {
                _ = &mut shutdown => break RunEnd::Shutdown,
                Ok(why) = lost.wait_for(Option::is_some) => {
                    break RunEnd::SteppedDown(format!("lost the etcd lease: {}", why.clone().unwrap_or_default()));
                }
                Ok(why) = step_down.wait_for(Option::is_some) => {
                    break RunEnd::SteppedDown(why.clone().unwrap_or_default());
                }
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => { connections.spawn(serve_connection(incoming, shared.clone())); }
                    None => break RunEnd::Shutdown,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        };
        if let RunEnd::SteppedDown(why) = &end {
            // Nothing more may be decided or sent: refuse commands at once.
            tracing::error!(reason = %why, "stepping down: this coordinator no longer leads");
            shared
                .durable
                .send_modify(|d| d.failed = Some(format!("it stepped down ({why})")));
        }
        if let Some(gossip) = &shared.config.gossip {
            gossip.member.lead(None);
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"coordinator shutting down");
        connections.abort_all();
        if matches!(end, RunEnd::Shutdown) {
            // Let the committer flush what is queued.
            shared.queued.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            if let Some(r) = &shared.replica {
                // Hand over now rather than when the lease runs out.
                r.resign().await;
            }
        }
        background.abort_all();
        end
    }
}

/// Clear the local output and input files and write what etcd holds.
fn rebuild_local(
    dir: &std::path::Path,
    output: Vec<OutputChunk>,
    input: Vec<(TaskId, u64, Option<Vec<u8>>)>,
) -> Result<(OutputStore, input::InputStore), ServerError> {
    for sub in ["output", "input"] {
        let path = dir.join(sub);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ServerError::Clear { path, source }),
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| ServerError::Clear {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut outputs = OutputStore::open(&dir.join("output"))?;
    for chunk in output {
        if let Err(e) = outputs.append(&chunk) {
            // A piece after a write that never reached etcd: the worker is
            // asked to send the rest again when it reports next.
            tracing::warn!(task = %chunk.task, stream = chunk.stream.name(), offset = chunk.offset, error = %e, "output in etcd has a gap; keeping what comes before it");
        }
    }
    output::sync_paths(&outputs.take_dirty())?;
    let mut inputs = input::InputStore::open(&dir.join("input"))?;
    for (task, offset, bytes) in input {
        let result = match bytes {
            Some(b) => inputs.append(task, Some(offset), &b, false),
            None => inputs.append(task, None, &[], true),
        };
        if let Err(e) = result {
            tracing::warn!(%task, offset, error = %e, "input in etcd does not follow on; keeping what comes before it");
        }
    }
    Ok((outputs, inputs))
}

/// Keep [`Core::coordinators`] current for `wmig nodes`.
async fn watch_coordinators(shared: Arc<Shared>, replica: Arc<Replica>) {
    loop {
        match replica.members().await {
            Ok(members) => shared.lock().coordinators = members,
            Err(e) => tracing::warn!(error = %e, "could not list the coordinators in etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Shared {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug; the state is still the
        // fold of applied events, so keep serving rather than cascade.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue already-applied events for the log; returns the sequence number
    /// to wait for.
    fn queue(&self, core: &mut Core, events: Vec<Event>) -> u64 {
        let at_ms = unix_ms();
        for event in events {
            let seq = core.next_seq;
            core.next_seq += 1;
            core.unflushed.push(Logged { seq, at_ms, event });
        }
        if !core.unflushed.is_empty() {
            self.queued.notify_one();
        }
        core.next_seq
    }

    /// Wait until every event before `upto` is durable.
    async fn durable(&self, upto: u64) -> Result<(), RemoteError> {
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| d.next >= upto || d.failed.is_some())
            .await
            .map_err(|_| internal("the coordinator is shutting down"))?;
        match &state.failed {
            Some(why) => Err(internal(format!(
                "the coordinator could not write its event log ({why}); restart it to replay the log"
            ))),
            None => Ok(()),
        }
    }

    /// Run a state command, log its events and wait until they are durable.
    async fn command<T>(
        &self,
        f: impl FnOnce(&mut Coordinator, u64) -> Result<(T, Vec<Event>), CoordinatorError>,
    ) -> Result<T, RemoteError> {
        let now = self.now();
        let (value, upto) = {
            let mut core = self.lock();
            let (value, mut events) = f(&mut core.coord, now).map_err(coordinator_error)?;
            // Whatever freed a slot or added a worker lets queued tasks run.
            if core.coord.task_table().pending().next().is_some() {
                events.extend(core.coord.place_pending());
            }
            let upto = self.queue(&mut core, events);
            (value, upto)
        };
        self.durable(upto).await?;
        Ok(value)
    }

    /// A replicated write failed: this coordinator stops leading (see
    /// [`replica`]) and the client is told to retry, which reaches the next
    /// leader.
    fn replica_failed(&self, what: &str, e: replica::ReplicaError) -> RemoteError {
        tracing::error!(error = %e, "could not {what} in etcd");
        let _ = self
            .step_down
            .send(Some(format!("could not {what} in etcd: {e}")));
        RemoteError::new(
            ErrorCode::NotLeader,
            format!("this coordinator could not {what} in etcd and stops leading; retry, and the next leader answers"),
        )
    }

    /// Send a migration or recovery to monitors and keep it for dashboards.
    fn publish(&self, core: &mut Core, item: MonitorItem) {
        core.remember(item.clone());
        let _ = self.monitor.send(Arc::new(item));
    }

    fn stats(&self, core: &mut Core) -> ClusterStats {
        let mut s = ClusterStats {
            checkpoints: core.checkpoints,
            output_bytes: core.outputs.total(),
            events: core.next_seq,
            ..ClusterStats::default()
        };
        for n in core.coord.nodes() {
            match (n.info.role, n.liveness) {
                (Role::Worker, Liveness::Online) => {
                    s.workers_online += 1;
                    s.slots += n.info.slots;
                }
                (Role::Worker, Liveness::Offline) => s.workers_offline += 1,
                (Role::Monitor, Liveness::Online) => s.monitors_online += 1,
                (Role::Monitor, Liveness::Offline) | (Role::Coordinator, _) => {}
            }
        }
        for t in core.coord.tasks() {
            let live = core.usage.get(&t.id).filter(|_| t.state.occupies_slot());
            s.fuel_used += live.map_or(t.fuel_used, |u| u.fuel_used.max(t.fuel_used));
            s.memory_bytes += live.map_or(0, |u| u.memory_bytes);
            match t.state {
                TaskState::Pending => s.tasks_pending += 1,
                TaskState::Running | TaskState::Migrating => s.tasks_running += 1,
                TaskState::Completed => s.tasks_completed += 1,
                TaskState::Failed => s.tasks_failed += 1,
                TaskState::Cancelled => s.tasks_cancelled += 1,
            }
        }
        s
    }

    fn task_view(&self, core: &mut Core, id: TaskId) -> Result<TaskView, RemoteError> {
        let task = core.coord.task(id).cloned().ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("unknown task {id}: see `wmig ps` for task ids"),
            )
        })?;
        let out = core.outputs.len(id, Stream::Stdout);
        let err = core.outputs.len(id, Stream::Stderr);
        let mut view = TaskView::new(&task, out, err, core.started.get(&id).copied());
        if view.state == TaskState::Running && core.migrations.contains(id) {
            view.state = TaskState::Migrating;
        }
        if let Some(u) = core.usage.get(&id).filter(|_| task.state.occupies_slot()) {
            view.fuel_used = view.fuel_used.max(u.fuel_used);
            view.memory_bytes = Some(u.memory_bytes);
            view.progress = u.progress;
            if view.files_limit.is_some() {
                view.files_bytes = Some(u.files_bytes);
            }
        }
        Ok(view)
    }

    fn node_statuses(&self, core: &Core) -> Vec<NodeStatus> {
        let now = self.now();
        let load = core.coord.task_table().load();
        core.coord
            .nodes()
            .map(|n| NodeStatus {
                name: n.info.name.clone(),
                role: n.info.role,
                liveness: n.liveness,
                draining: n.draining,
                addr: n.info.addr.clone(),
                pid: n.info.pid,
                slots: n.info.slots,
                tasks: load.get(&n.info.name).copied().unwrap_or(0),
                last_seen_ms: now.saturating_sub(n.last_seen),
                leader: false,
            })
            .chain(self.coordinator_statuses(core))
            .collect()
    }
}

impl Shared {
    /// The coordinators, as nodes: this one alone, or every one holding an
    /// etcd lease with the leader (this one) marked.
    fn coordinator_statuses(&self, core: &Core) -> Vec<NodeStatus> {
        let status = |name: &str, addr: &str, pid: u32, leader: bool| NodeStatus {
            name: NodeId(name.to_owned()),
            role: Role::Coordinator,
            liveness: Liveness::Online,
            draining: false,
            addr: addr.to_owned(),
            pid,
            slots: 0,
            tasks: 0,
            last_seen_ms: 0,
            leader,
        };
        match &self.replica {
            None => vec![status(
                crate::COORDINATOR_NODE,
                self.config.advertise.as_deref().unwrap_or(""),
                std::process::id(),
                true,
            )],
            Some(r) => {
                let mut list: Vec<NodeStatus> = core
                    .coordinators
                    .iter()
                    .map(|c| status(&c.name, &c.addr, c.pid, c.name == r.me().name))
                    .collect();
                if !core.coordinators.iter().any(|c| c.name == r.me().name) {
                    let me = r.me();
                    list.push(status(&me.name, &me.addr, me.pid, true));
                }
                list
            }
        }
    }
}

fn internal(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::Internal, message)
}

/// A failure of the coordinator's own disk: logged here in full (it names
/// files), answered without local paths, which are nobody else's business.
fn storage_error(what: &str, e: impl std::fmt::Display) -> RemoteError {
    tracing::error!(error = %e, "{what}");
    internal(format!("the coordinator {what}; see its log"))
}

fn coordinator_error(e: CoordinatorError) -> RemoteError {
    use crate::membership::MembershipError as M;
    use crate::placement::PlacementError as P;
    use crate::tasks::TaskError as T;
    let code = match &e {
        CoordinatorError::Membership(M::UnknownNode { .. })
        | CoordinatorError::Placement(P::UnknownWorker { .. })
        | CoordinatorError::Task(T::UnknownTask { .. }) => ErrorCode::NotFound,
        CoordinatorError::Membership(M::InvalidName { .. }) => ErrorCode::Invalid,
        CoordinatorError::TooLarge { .. } | CoordinatorError::NodeTooLarge { .. } => {
            ErrorCode::TooLarge
        }
        _ => ErrorCode::Conflict,
    };
    RemoteError::new(code, e.to_string())
}

/// Writes queued events with one fsync (or one etcd transaction) per
/// batch, then applies their side effects.
async fn committer(shared: Arc<Shared>, log: Log) {
    loop {
        shared.queued.notified().await;
        loop {
            let batch = std::mem::take(&mut shared.lock().unflushed);
            if batch.is_empty() {
                break;
            }
            let events: Vec<Event> = batch.iter().map(|l| l.event.clone()).collect();
            let failure = match &log {
                Log::File(file) => {
                    let file = file.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        file.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .append(&events)
                    })
                    .await;
                    match written {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(format!("log writer panicked: {e}")),
                    }
                }
                Log::Etcd(replica) => {
                    let first = batch.first().map_or(0, |l| l.seq);
                    let failed = replica.append(first, &events).await.err();
                    failed.map(|e| {
                        // Nothing more may be decided here: the next
                        // leader replays what etcd holds.
                        let _ = shared
                            .step_down
                            .send(Some(format!("could not commit to etcd: {e}")));
                        e.to_string()
                    })
                }
            };
            if let Some(why) = failure {
                tracing::error!(error = %why, "event log append failed; refusing further commands");
                shared.durable.send_modify(|d| d.failed = Some(why));
                return;
            }
            let next = batch.last().map_or(0, |l| l.seq + 1);
            {
                let mut core = shared.lock();
                for logged in &batch {
                    effects(&mut core, &logged.event);
                }
                core.history.extend(batch.iter().cloned());
            }
            for logged in batch {
                let _ = shared.monitor.send(Arc::new(MonitorItem::Event {
                    seq: logged.seq,
                    at_ms: logged.at_ms,
                    event: logged.event,
                }));
            }
            shared.durable.send_modify(|d| d.next = next);
        }
    }
}

/// Fsync the output files written so far, many reports at a time.
async fn output_syncer(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering;
    loop {
        shared.output_sync.notified().await;
        loop {
            let covers = shared.output_written.load(Ordering::SeqCst);
            if shared
                .output_synced
                .borrow()
                .as_ref()
                .is_ok_and(|&s| s >= covers)
            {
                break;
            }
            let dirty = shared.lock().outputs.take_dirty();
            let paths = dirty.clone();
            let synced = tokio::task::spawn_blocking(move || output::sync_paths(&paths))
                .await
                .map_err(|e| format!("output syncer panicked: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match synced {
                Ok(()) => {
                    let _ = shared.output_synced.send_replace(Ok(covers));
                }
                Err(why) => {
                    // Those files stay to sync; the waiting reports fail
                    // and their workers resend.
                    tracing::error!(error = %why, "could not make task output durable");
                    shared.lock().outputs.mark_dirty(dirty);
                    let _ = shared.output_synced.send_replace(Err((covers, why)));
                    break;
                }
            }
        }
    }
}

/// Wait until output appended so far is on disk.
async fn output_durable(shared: &Shared) -> Result<(), RemoteError> {
    use std::sync::atomic::Ordering;
    let mine = shared.output_written.fetch_add(1, Ordering::SeqCst) + 1;
    let mut synced = shared.output_synced.subscribe();
    shared.output_sync.notify_one();
    loop {
        match &*synced.borrow_and_update() {
            Ok(s) if *s >= mine => return Ok(()),
            // A failed pass that was to cover this report (an older failure
            // is not ours: the pass we asked for is still to come).
            Err((covers, _)) if *covers >= mine => {
                return Err(internal(
                    "the coordinator could not store output durably (see its log); resend it later",
                ))
            }
            Ok(_) | Err(_) => {}
        }
        if synced.changed().await.is_err() {
            return Err(internal("the coordinator is shutting down"));
        }
    }
}

/// What a durable event makes happen outside the coordinator.
fn effects(core: &mut Core, event: &Event) {
    match event {
        Event::Task(TaskEvent::Placed { id, worker, epoch }) => {
            if let Some(task) = core.coord.task(*id) {
                // A task that moved (migration, recovery) resumes from its
                // last durable checkpoint; a new one starts from scratch.
                let cmd = WorkerCommand::Run {
                    task: *id,
                    epoch: *epoch,
                    spec: task.spec.clone(),
                    options: task.options.clone(),
                    resume: task.checkpoint_seq,
                };
                send_command(core, worker, cmd);
            }
        }
        Event::Task(TaskEvent::Cancelled { id }) => {
            if let Some(task) = core.coord.task(*id) {
                if let Some(owner) = task.owner.clone() {
                    let cmd = WorkerCommand::Drop {
                        task: *id,
                        epoch: task.epoch,
                    };
                    send_command(core, &owner, cmd);
                }
            }
            core.usage.remove(id);
            core.recovering.remove(id);
        }
        Event::Task(TaskEvent::Checkpointed { .. }) => core.checkpoints += 1,
        Event::Task(TaskEvent::Finished { id, .. }) => {
            core.usage.remove(id);
            core.recovering.remove(id);
        }
        _ => {}
    }
}

/// Pass the whole revocation list on to every attached worker and to the
/// registry (retrying for a while if the registry is away), so servers on
/// other machines refuse the same certificates.
fn spread_revocations(shared: &Arc<Shared>, list: &Arc<wmig_net::revocation::Revocations>) {
    let revoked: Vec<RevokedCert> = list.all().into_iter().map(RevokedCert::from).collect();
    {
        let core = shared.lock();
        for (_, tx) in core.attached.values() {
            let _ = tx.send(WorkerCommand::Revocations {
                revoked: revoked.clone(),
            });
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        for _ in 0..8 {
            let sent = match api::registry_client(&shared).await {
                Ok(client) => client
                    .revocations(revoked.clone())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(added) => {
                    tracing::info!(added, "revocations passed on to the registry");
                    return;
                }
                Err(e) => {
                    api::registry_failed(&shared).await;
                    tracing::warn!(error = %e, retry_in = ?wait, "could not pass revocations on to the registry");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
        tracing::error!("gave up passing revocations on to the registry; copy revoked.toml to it or revoke again");
    });
}

fn send_command(core: &mut Core, worker: &NodeId, cmd: WorkerCommand) {
    match core.attached.get(worker) {
        Some((_, tx)) => {
            if tx.send(cmd).is_err() {
                tracing::debug!(%worker, "worker's attach stream is gone; it gets the task on reattach");
            }
        }
        None => tracing::debug!(%worker, "worker not attached; it gets the task on attach"),
    }
}

async fn failure_detector(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = shared.now();
        let mut core = shared.lock();
        if core.coord.next_deadline().is_some_and(|d| d <= now) {
            // Who owned what before the tick, to tell recoveries apart.
            let owners: HashMap<TaskId, NodeId> = core
                .coord
                .tasks()
                .filter(|t| t.state.occupies_slot())
                .filter_map(|t| Some((t.id, t.owner.clone()?)))
                .collect();
            let events = core.coord.tick(now);
            for e in &events {
                match e {
                    Event::Node(MembershipEvent::Offline(node)) => {
                        tracing::info!(%node, "offline");
                        migrate::node_offline(&shared, &mut core, node);
                        let silent_ms = core
                            .coord
                            .node(node)
                            .map_or(0, |n| now.saturating_sub(n.last_seen));
                        let last_heard = unix_ms().saturating_sub(silent_ms);
                        for (task, owner) in &owners {
                            if owner == node {
                                core.recovering.insert(*task, (node.clone(), last_heard));
                            }
                        }
                    }
                    Event::Task(t) => tracing::info!(event = ?t, "recovery"),
                    Event::Node(m) => tracing::info!(event = ?m, "membership"),
                }
            }
            shared.queue(&mut core, events);
        }
        migrate::tick(&shared, &mut core, now);
    }
}

async fn stats_ticker(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(shared.config.stats_interval);
    loop {
        every.tick().await;
        if shared.monitor.receiver_count() == 0 {
            continue;
        }
        let stats = {
            let mut core = shared.lock();
            shared.stats(&mut core)
        };
        let _ = shared.monitor.send(Arc::new(MonitorItem::Stats(stats)));
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let Some(conn) = wmig_net::accept(incoming).await else {
        return;
    };
    let peer = Arc::new(wmig_net::PeerIdentity::of(&conn));
    while let Ok((send, recv)) = conn.accept_bi().await {
        // A certificate revoked since the handshake loses its connection.
        let revocations = shared.config.endpoint.revocations.as_ref();
        if wmig_net::revocation::close_if_revoked(&conn, &peer, revocations) {
            break;
        }
        tokio::spawn(serve_stream(send, recv, shared.clone(), peer.clone()));
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    peer: Arc<wmig_net::PeerIdentity>,
) {
    let request = timed(
        shared.config.request_timeout,
        read_frame::<ControlRequest>(&mut recv, MAX_FRAME_LEN),
    )
    .await;
    let response = match request {
        Ok(req) => match authz::authorize(&peer, &req) {
            Err(e) => ControlResponse::Error(e),
            Ok(()) => match dispatch(req, &mut send, &shared).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => ControlResponse::Error(e),
            },
        },
        Err(NetError::Frame(e)) => {
            let code = match e {
                FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::Malformed,
            };
            ControlResponse::Error(RemoteError::new(code, format!("bad request: {e}")))
        }
        Err(NetError::Timeout(d)) => ControlResponse::Error(RemoteError::new(
            ErrorCode::Timeout,
            format!("the request did not arrive within {d:?}"),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "stream ended before a request arrived");
            return;
        }
    };
    if write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
}

fn fenced(core: &Core, node: &NodeId, task: TaskId, epoch: u64) -> Result<(), RemoteError> {
    let t = core.coord.task(task).ok_or_else(|| {
        RemoteError::new(ErrorCode::NotFound, format!("unknown task {task}; drop it"))
    })?;
    if t.owner.as_ref() != Some(node) || t.epoch != epoch || !t.state.occupies_slot() {
        return Err(RemoteError::new(
            ErrorCode::Conflict,
            format!(
                "{node} at epoch {epoch} no longer owns {task} (state {}, owner {}, epoch {}); drop it",
                t.state,
                t.owner.as_ref().map_or("nobody", |o| o.0.as_str()),
                t.epoch
            ),
        ));
    }
    Ok(())
}

/// Answer one request. `Ok(None)` means the handler already wrote its
/// responses (a subscription) and finished the stream.
async fn dispatch(
    req: ControlRequest,
    send: &mut quinn::SendStream,
    shared: &Arc<Shared>,
) -> Result<Option<ControlResponse>, RemoteError> {
    use ControlRequest as Q;
    match req {
        Q::Attach { node } => {
            attach(node, send, shared).await;
            Ok(None)
        }
        Q::Logs {
            task,
            stdout_from,
            stderr_from,
            follow,
        } => {
            logs(task, [stdout_from, stderr_from], follow, send, shared).await?;
            Ok(None)
        }
        Q::Events { from, follow } => {
            events(from, follow, send, shared).await;
            Ok(None)
        }
        other => answer(other, shared).await.map(Some),
    }
}

/// Answer a request that has one response (everything but the
/// subscriptions); the HTTP API goes through here too.
async fn answer(req: ControlRequest, shared: &Arc<Shared>) -> Result<ControlResponse, RemoteError> {
    use ControlRequest as Q;
    use ControlResponse as R;
    let reply = match req {
        Q::WhoLeads => R::Leader {
            is_leader: true,
            leader: shared.config.advertise.clone(),
        },
        Q::Register(info) => {
            let name = info.name.clone();
            shared
                .command(|c, now| Ok(((), c.register(info, now)?)))
                .await?;
            tracing::info!(node = %name, "registered");
            R::Registered {
                heartbeat_ms: shared.config.heartbeat.as_millis() as u64,
                offline_timeout_ms: shared.config.coordinator.membership.offline_timeout,
                gossip: shared.config.gossip.as_ref().map(|g| {
                    // This coordinator and every other one it knows of.
                    let mut seeds = vec![g.member.addr()];
                    seeds.extend(
                        g.member
                            .view()
                            .alive()
                            .into_iter()
                            .filter(|p| p.kind == wmig_gossip::Kind::Coordinator)
                            .map(|p| p.addr),
                    );
                    wmig_proto::wire::control::GossipJoin { key: g.key, seeds }
                }),
            }
        }
        Q::Heartbeat { node, tasks } => {
            shared
                .command(|c, now| Ok(((), c.heartbeat(&node, now)?)))
                .await?;
            // Tasks the node runs but no longer owns (it was cut off and
            // its tasks moved on): tell it to drop them.
            let mut core = shared.lock();
            let mut stale = Vec::new();
            for beat in tasks {
                if fenced(&core, &node, beat.task, beat.epoch).is_err() {
                    stale.push((beat.task, beat.epoch));
                } else {
                    core.usage.insert(beat.task, beat);
                }
            }
            shared
                .check_ins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let every = shared.config.heartbeat.as_millis() as u64;
            let next_ms = match &shared.config.gossip {
                Some(_) => {
                    let nodes = core.coord.nodes().count() as f64;
                    let spread = nodes * 1000.0 / shared.config.check_ins_per_sec.max(0.001);
                    every.max(spread as u64)
                }
                None => every,
            };
            R::CheckedIn { stale, next_ms }
        }
        Q::Attach { .. } | Q::Logs { .. } | Q::Events { .. } => {
            return Err(RemoteError::new(
                ErrorCode::Invalid,
                "a subscription needs its own stream",
            ));
        }
        Q::Started {
            node,
            task,
            epoch,
            at_us,
            fetched,
        } => {
            let mut core = shared.lock();
            fenced(&core, &node, task, epoch)?;
            core.started.insert(task, at_us);
            migrate::started(shared, &mut core, &node, task, at_us, fetched);
            if let Some((from, heard_ms)) = core.recovering.remove(&task) {
                let report = RecoveryReport {
                    task,
                    from,
                    to: node.clone(),
                    checkpoint_seq: core.coord.task(task).and_then(|t| t.checkpoint_seq),
                    downtime_ms: (at_us as f64 / 1000.0 - heard_ms as f64).max(0.0),
                    at_ms: at_us / 1000,
                };
                tracing::info!(%task, from = %report.from, to = %node, downtime_ms = report.downtime_ms, "recovered");
                shared.publish(&mut core, MonitorItem::Recovered(report));
            }
            R::Ok
        }
        Q::Output { node, epoch, chunk } => {
            let new = {
                let mut core = shared.lock();
                fenced(&core, &node, chunk.task, epoch)?;
                match core.outputs.append(&chunk) {
                    Ok(new) => new,
                    Err(output::OutputError::Gap { stored, .. }) => {
                        tracing::warn!(task = %chunk.task, stream = chunk.stream.name(), offset = chunk.offset, stored, "output would leave a hole; asking its worker to resend");
                        return Ok(R::Resend { from: stored });
                    }
                    Err(e @ output::OutputError::Io { .. }) => {
                        return Err(storage_error("could not store task output", e));
                    }
                }
            };
            if let Some(new) = new {
                if let Some(replica) = &shared.replica {
                    // Acknowledged only once etcd holds it. A failure leaves
                    // the local copy ahead of etcd, so this leader stops and
                    // the next one asks the worker for the rest again.
                    if let Err(e) = replica.put_output(&new).await {
                        return Err(shared.replica_failed("store task output", e));
                    }
                }
                let _ = shared.monitor.send(Arc::new(MonitorItem::Output(new)));
            }
            // Also for a resend that added nothing: what it overlaps may be
            // written and not yet durable.
            output_durable(shared).await?;
            R::Ok
        }
        Q::Checkpointed {
            node,
            task,
            epoch,
            seq,
            fuel_used,
        } => {
            shared
                .command(|c, _| Ok(((), c.report_checkpoint(task, &node, epoch, seq, fuel_used)?)))
                .await?;
            migrate::checkpointed(shared, &mut shared.lock(), &node, task, epoch, seq);
            R::Ok
        }
        Q::Prefetched {
            node,
            task,
            seq: _,
            bytes,
        } => {
            migrate::prefetched(shared, &mut shared.lock(), &node, task, bytes);
            R::Ok
        }
        Q::HandedOff {
            node,
            task,
            epoch,
            seq,
            fuel_used,
            paused_at_us,
            bytes,
        } => {
            let to = migrate::handoff_target(&shared.lock(), &node, task);
            shared
                .command(|c, _| {
                    let mut events = c.report_checkpoint(task, &node, epoch, seq, fuel_used)?;
                    events.extend(c.hand_over(task, &to)?);
                    Ok(((), events))
                })
                .await?;
            migrate::handed_off(shared, &mut shared.lock(), &node, task, paused_at_us, bytes);
            R::Ok
        }
        Q::HandoffFailed {
            node,
            task,
            epoch,
            reason,
        } => {
            let reason = crate::state::clip_reason(reason);
            migrate::handoff_failed(shared, &mut shared.lock(), &node, task, epoch, &reason);
            R::Ok
        }
        Q::LiveReady {
            node,
            task,
            epoch,
            paused_at_us,
            captured_us,
            received_at_us,
            applied_at_us,
            precopy_bytes,
            delta_bytes,
        } => {
            let ready = LiveReady {
                paused_at_us,
                captured_us,
                received_at_us,
                applied_at_us,
                precopy_bytes,
                delta_bytes,
            };
            migrate::live_ready(shared, &node, task, epoch, ready).await?;
            R::Ok
        }
        Q::LiveFailed {
            node,
            task,
            epoch,
            reason,
        } => {
            let reason = crate::state::clip_reason(reason);
            migrate::live_failed(shared, &mut shared.lock(), &node, task, epoch, &reason);
            R::Ok
        }
        Q::Revocations { revoked } => {
            let Some(list) = shared.config.endpoint.revocations.clone() else {
                return Err(RemoteError::new(
                    ErrorCode::Invalid,
                    "this coordinator keeps no revocation list (it was started without a \
                     cluster directory); copy revoked.toml to each server instead",
                ));
            };
            let added = wmig_net::revocation::merge_received(list.clone(), revoked)
                .await
                .map_err(|e| storage_error("could not store the revocations", e))?;
            tracing::info!(added, "revocations from an operator");
            spread_revocations(shared, &list);
            R::Ok
        }
        Q::Migrate { task, to, precopy } => {
            let rx = migrate::start(shared, &mut shared.lock(), task, &to, precopy)?;
            R::Migrated(migrate::wait(rx).await?)
        }
        Q::Finished {
            node,
            task,
            epoch,
            outcome,
            fuel_used,
        } => {
            shared
                .command(|c, _| {
                    Ok((
                        (),
                        c.report_finished(task, &node, epoch, outcome, fuel_used)?,
                    ))
                })
                .await?;
            R::Ok
        }
        Q::Submit {
            spec,
            options,
            placement,
        } => {
            let (task, worker) = shared
                .command(|c, _| {
                    let (id, events) = c.submit_with(spec, options, &placement)?;
                    let worker = c.task(id).and_then(|t| t.owner.clone());
                    Ok(((id, worker), events))
                })
                .await?;
            R::Submitted { task, worker }
        }
        Q::ListTasks => {
            let mut core = shared.lock();
            let ids: Vec<TaskId> = core.coord.tasks().map(|t| t.id).collect();
            let mut views = Vec::with_capacity(ids.len());
            for id in ids {
                views.push(shared.task_view(&mut core, id)?);
            }
            R::Tasks(views)
        }
        Q::Inspect { task } => R::Task(Box::new(shared.task_view(&mut shared.lock(), task)?)),
        Q::ListNodes => R::Nodes(shared.node_statuses(&shared.lock())),
        Q::Cancel { task } => {
            shared.command(|c, _| Ok(((), c.cancel(task)?))).await?;
            R::Ok
        }
        Q::Checkpoint { task } => {
            let mut core = shared.lock();
            let t = core.coord.task(task).cloned().ok_or_else(|| {
                RemoteError::new(
                    ErrorCode::NotFound,
                    format!("unknown task {task}: see `wmig ps`"),
                )
            })?;
            let owner = match (&t.owner, t.state.occupies_slot()) {
                (Some(o), true) => o.clone(),
                _ => {
                    return Err(RemoteError::new(
                        ErrorCode::Conflict,
                        format!(
                            "task {task} is {}; only a running task can be checkpointed",
                            t.state
                        ),
                    ))
                }
            };
            send_command(
                &mut core,
                &owner,
                WorkerCommand::Checkpoint {
                    task,
                    epoch: t.epoch,
                },
            );
            R::Ok
        }
        Q::Drain { node } => {
            shared.command(|c, _| Ok(((), c.drain(&node)?))).await?;
            // Move every task off it. Round-robin, not least-loaded: the load
            // only changes when each handoff is logged, so least-loaded would
            // send every task to the same worker.
            let mut moving = Vec::new();
            let mut failed = Vec::new();
            {
                let mut core = shared.lock();
                let tasks: Vec<TaskId> = core
                    .coord
                    .task_table()
                    .running_on(&node)
                    .map(|t| t.id)
                    .collect();
                for task in tasks {
                    let started = core
                        .coord
                        .choose_worker(&Placement::RoundRobin)
                        .map_err(coordinator_error)
                        .and_then(|to| migrate::start(shared, &mut core, task, &to, true));
                    match started {
                        Ok(rx) => moving.push((task, rx)),
                        Err(e) => failed.push(format!("{task}: {e}")),
                    }
                }
            }
            let mut moved = Vec::new();
            for (task, rx) in moving {
                match migrate::wait(rx).await {
                    Ok(r) => moved.push(r),
                    Err(e) => failed.push(format!("{task}: {e}")),
                }
            }
            R::Drained { moved, failed }
        }
        Q::Uncordon { node } => {
            shared.command(|c, _| Ok(((), c.uncordon(&node)?))).await?;
            R::Ok
        }
        Q::Remove { node } => {
            shared
                .command(|c, _| Ok(((), c.remove_node(&node)?)))
                .await?;
            tracing::info!(%node, "removed");
            R::Ok
        }
        Q::Input {
            task,
            offset,
            bytes,
            eof,
        } => {
            {
                let core = shared.lock();
                let t = core.coord.task(task).ok_or_else(|| {
                    RemoteError::new(
                        ErrorCode::NotFound,
                        format!("unknown task {task}: see `wmig ps` for task ids"),
                    )
                })?;
                if !t.options.stdin {
                    return Err(RemoteError::new(
                        ErrorCode::Invalid,
                        format!("task {task} was not submitted with --stdin, so it reads no input; submit it again with `wmig submit --stdin`"),
                    ));
                }
                if t.state.is_terminal() {
                    return Err(RemoteError::new(
                        ErrorCode::Conflict,
                        format!("task {task} is {}; it reads no more input", t.state),
                    ));
                }
            }
            // Replicated: the same bytes go to etcd once stored here.
            let stored = match shared.replica {
                Some(_) => bytes.clone(),
                None => Vec::new(),
            };
            let inputs = shared.inputs.clone();
            let len = tokio::task::spawn_blocking(move || {
                inputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(task, offset, &bytes, eof)
            })
            .await
            .map_err(|e| internal(format!("storing input: {e}")))?
            .map_err(|e| match e {
                input::InputError::Io { .. } => storage_error("could not store task input", e),
                _ => RemoteError::new(ErrorCode::Conflict, e.to_string()),
            })?;
            if let Some(replica) = &shared.replica {
                // Without an offset the bytes went to the stored end.
                let at = offset.unwrap_or(len.saturating_sub(stored.len() as u64));
                if let Err(e) = replica.put_input(task, at, &stored, eof).await {
                    return Err(shared.replica_failed("store task input", e));
                }
            }
            shared.input_added.send_modify(|n| *n += 1);
            R::InputStored { len }
        }
        Q::ReadInput {
            node,
            task,
            epoch,
            offset,
            max,
        } => {
            let mut added = shared.input_added.subscribe();
            let max = (max as usize).min(INPUT_READ);
            let deadline = tokio::time::Instant::now() + INPUT_WAIT;
            loop {
                fenced(&shared.lock(), &node, task, epoch)?;
                let read = shared
                    .inputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(task, offset, max)
                    .map_err(|e| storage_error("could not read stored task data", e))?;
                if !read.bytes.is_empty() || read.eof {
                    break R::Input {
                        bytes: read.bytes,
                        eof: read.eof,
                    };
                }
                // Nothing yet: wait for any input to arrive, then look again.
                match tokio::time::timeout_at(deadline, added.changed()).await {
                    Ok(Ok(())) => {}
                    _ => {
                        break R::Input {
                            bytes: Vec::new(),
                            eof: false,
                        }
                    }
                }
            }
        }
        Q::Wait { task } => {
            let mut rx = shared.monitor.subscribe();
            loop {
                let view = shared.task_view(&mut shared.lock(), task)?;
                if view.state.is_terminal() {
                    break R::Ended(Box::new(view));
                }
                // Any event may be the one; re-check on each (and on lag).
                if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                    return Err(internal("the coordinator is shutting down"));
                }
            }
        }
        Q::Stats => R::Stats(shared.stats(&mut shared.lock())),
    };
    Ok(reply)
}

/// A worker's command stream: replay its tasks, then forward commands until
/// either side goes away.
async fn attach(node: NodeId, send: &mut quinn::SendStream, shared: &Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // First what the worker's own listener must refuse: a worker on another
    // machine has only the revocations the coordinator passes on.
    if let Some(list) = &shared.config.endpoint.revocations {
        let revoked: Vec<RevokedCert> = list.all().into_iter().map(RevokedCert::from).collect();
        if !revoked.is_empty() {
            let _ = tx.send(WorkerCommand::Revocations { revoked });
        }
    }
    let generation = {
        let mut core = shared.lock();
        core.attach_gen += 1;
        let generation = core.attach_gen;
        let owned: Vec<WorkerCommand> = core
            .coord
            .task_table()
            .running_on(&node)
            .map(|t| WorkerCommand::Run {
                task: t.id,
                epoch: t.epoch,
                spec: t.spec.clone(),
                options: t.options.clone(),
                resume: t.checkpoint_seq,
            })
            .collect();
        for cmd in owned {
            let _ = tx.send(cmd);
        }
        core.attached.insert(node.clone(), (generation, tx));
        generation
    };
    tracing::info!(%node, "worker attached");
    while let Some(cmd) = rx.recv().await {
        if write_frame(send, &ControlResponse::Command(cmd))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut core = shared.lock();
    if core
        .attached
        .get(&node)
        .is_some_and(|(g, _)| *g == generation)
    {
        core.attached.remove(&node);
    }
    tracing::info!(%node, "worker detached");
}

const LOG_READ: usize = 256 * 1024;
/// Most input bytes in one answer to a worker.
const INPUT_READ: usize = 256 * 1024;
/// How long a worker's request for input waits for some to arrive.
const INPUT_WAIT: Duration = Duration::from_secs(10);

async fn logs(
    task: TaskId,
    mut from: [u64; 2],
    follow: bool,
    send: &mut quinn::SendStream,
    shared: &Arc<Shared>,
) -> Result<(), RemoteError> {
    let mut rx = shared.monitor.subscribe();
    let streams = [Stream::Stdout, Stream::Stderr];
    loop {
        // Read the state *before* the output: if the task had ended, all of
        // its output is already stored and this pass sends the rest.
        let (ended, chunks) = {
            let mut core = shared.lock();
            let view = shared.task_view(&mut core, task)?;
            let mut chunks = Vec::new();
            for (i, stream) in streams.into_iter().enumerate() {
                loop {
                    let bytes = core
                        .outputs
                        .read(task, stream, from[i], LOG_READ)
                        .map_err(|e| storage_error("could not read stored task data", e))?;
                    if bytes.is_empty() {
                        break;
                    }
                    let offset = from[i];
                    from[i] += bytes.len() as u64;
                    chunks.push(OutputChunk {
                        task,
                        stream,
                        offset,
                        bytes,
                    });
                }
            }
            let ended = (view.state.is_terminal() || !follow).then_some(view);
            (ended, chunks)
        };
        for chunk in chunks {
            if write_frame(send, &ControlResponse::Output(chunk))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        if let Some(view) = ended {
            if write_frame(send, &ControlResponse::Ended(Box::new(view)))
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
            return Ok(());
        }
        // Wait for something about this task (or anything, after a lag).
        loop {
            match rx.recv().await {
                Ok(item) => match &*item {
                    MonitorItem::Output(c) if c.task == task => break,
                    MonitorItem::Event {
                        event: Event::Task(e),
                        ..
                    } if e.task() == task => break,
                    _ => {}
                },
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

async fn events(from: u64, follow: bool, send: &mut quinn::SendStream, shared: &Arc<Shared>) {
    let mut rx = shared.monitor.subscribe();
    // History up to what is durable now; live items continue after it.
    let (past, mut next) = {
        let core = shared.lock();
        let past: Vec<Logged> = core
            .history
            .iter()
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let next = core.history.last().map_or(0, |l| l.seq + 1);
        (past, next)
    };
    for l in past {
        let item = MonitorItem::Event {
            seq: l.seq,
            at_ms: l.at_ms,
            event: l.event,
        };
        if write_frame(send, &ControlResponse::Monitor(Box::new(item)))
            .await
            .is_err()
        {
            return;
        }
    }
    if !follow {
        let _ = send.finish();
        return;
    }
    loop {
        let item = match rx.recv().await {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "monitor fell behind; items skipped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let MonitorItem::Event { seq, .. } = &*item {
            if *seq < next {
                continue; // already sent from history
            }
            next = seq + 1;
        }
        if write_frame(send, &ControlResponse::Monitor(Box::new((*item).clone())))
            .await
            .is_err()
        {
            return;
        }
    }
}
