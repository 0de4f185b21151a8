//! The worker daemon: registers with the coordinator, heartbeats, runs the
//! tasks it is given and checkpoints them into the registry.
//!
//! ```text
//!   coordinator ──attach stream──▶ commands (Run / Drop / Checkpoint)
//!        ▲                              │
//!        │ reports (ordered queue)      ▼
//!   reporter ◀── output, started,   task threads (wasmtime, one per task)
//!                checkpointed,          │ captured checkpoints
//!                finished               ▼
//!                                   uploader ──▶ registry (chunks, manifest)
//! ```
//!
//! The connection to the coordinator is supervised: when it drops (or the
//! coordinator restarts) the worker reconnects, registers again as the same
//! process and re-attaches; the coordinator then replays a `Run` for every
//! task it believes this worker owns, and the worker ignores those it is
//! already running. Reports wait in their queue meanwhile, so nothing is
//! lost across a coordinator restart.

mod exec;
mod fence;
mod files;
mod gossip;
mod heartbeat;
mod input;
mod live;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use wmig_client::{ControlClient, ControlError};
use wmig_host::{MemChunks, PreparedModule, Runtime};
use wmig_net::Credentials;
use wmig_proto::wire::control::{
    ControlRequest, ControlResponse, NodeInfo, Outcome, Role, TaskBeat, TaskOptions, TaskSpec,
    WorkerCommand,
};
use wmig_proto::wire::registry::BundleRef;
use wmig_proto::wire::ErrorCode;
use wmig_proto::{Hash, NodeId, TaskId};
use wmig_registry::{ClientConfig, RegistryClient};

use exec::{ChunkCache, Job, KnownChunks, TaskControl, Upload, CHUNK_CACHE_MAX};
use report::Report;

/// Settings of one worker process.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub name: NodeId,
    pub creds: Credentials,
    /// Every coordinator's address (several when they are replicated on
    /// etcd): the worker talks to whichever leads.
    pub coordinators: Vec<SocketAddr>,
    /// Registry addresses: one standalone registry, or any nodes of a ring
    /// (the first that answers tells the client about the others).
    pub registry: Vec<SocketAddr>,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    /// Where this worker accepts live migrations from other workers.
    pub listen: Listen,
    /// Bundles fetched from the registry are kept here.
    pub cache_dir: PathBuf,
    /// Checkpoint period for tasks that do not set their own.
    pub checkpoint_every: Duration,
    pub yield_fuel: u32,
    /// Linear-memory limit of tasks that do not set their own, so that one
    /// runaway allocator cannot take the worker's memory.
    pub memory_limit: u64,
    /// The revocation list the live-migration listener honours (this
    /// worker's `revoked.toml`); the coordinator keeps it up to date.
    pub revocations: Option<Arc<wmig_net::revocation::Revocations>>,
    /// UDP port of this worker's member of the SWIM membership (0: any).
    pub gossip_port: u16,
}

/// Where a worker serves the live-migration protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// On the address it reaches the coordinator from, any free port.
    Auto,
    /// Here (port 0: any free port).
    At(SocketAddr),
    /// Nowhere: migrations to and from it go through the registry.
    Off,
}

/// Default of [`WorkerConfig::memory_limit`]: 1 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;

/// Tries at fetching a task's module and checkpoint (about 8 s in all).
const PREPARE_ATTEMPTS: u32 = 5;

struct Running {
    epoch: u64,
    control: Arc<TaskControl>,
}

impl WorkerConfig {
    /// The address to pick this host's outward interface by.
    fn first_coordinator(&self) -> SocketAddr {
        self.coordinators
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A task the coordinator announced for a live migration here.
struct Expected {
    /// The source's epoch.
    epoch: u64,
    /// The source, the only node that may deliver it.
    from: NodeId,
    spec: TaskSpec,
    options: TaskOptions,
}

struct Worker {
    config: WorkerConfig,
    runtime: Arc<Runtime>,
    registry: RegistryClient,
    /// Prepared modules by bundle and rewriter version.
    modules: Mutex<HashMap<(Hash, u32), Arc<PreparedModule>>>,
    running: Mutex<HashMap<TaskId, Running>>,
    known: KnownChunks,
    cache: ChunkCache,
    reports: mpsc::UnboundedSender<Report>,
    uploads: mpsc::UnboundedSender<Upload>,
    /// Checkpoints stored and not yet reported (see [`report::Unreported`]).
    unreported: Arc<report::Unreported>,
    /// Where the live protocol is served (empty: not served).
    addr: String,
    /// Live migrations the coordinator announced, by task.
    expected: Mutex<HashMap<TaskId, Expected>>,
    expected_changed: tokio::sync::Notify,
    /// Tasks that arrived live, waiting for their `Run`; with the source's
    /// epoch.
    arrived: Mutex<HashMap<TaskId, (u64, Box<Job>)>>,
    /// The current coordinator connection (tasks' stdin fetches use it).
    clients: input::Clients,
    /// Output queued for the coordinator (tasks wait when it is full).
    backlog: Arc<report::Backlog>,
    /// Set while the coordinator is out of reach (tasks wait paused).
    fence: Arc<fence::Fence>,
    /// This worker's member of the SWIM membership, once it joined.
    gossip: gossip::Membership,
}

/// Run the worker until `shutdown` resolves.
pub async fn run(
    config: WorkerConfig,
    runtime: Runtime,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    files::clear_stale(&config.cache_dir);
    std::fs::create_dir_all(config.cache_dir.join("bundles"))
        .with_context(|| format!("creating {}", config.cache_dir.display()))?;
    let registry = connect_registry(&config).await?;
    let live_endpoint = match config.listen {
        Listen::Off => None,
        Listen::At(addr) => Some(addr),
        Listen::Auto => Some(local_addr_towards(config.first_coordinator())),
    }
    .map(|addr| {
        let mut live_config = live::endpoint_config();
        live_config.revocations = config.revocations.clone();
        wmig_net::server_endpoint(addr, &config.creds, &live_config)
            .with_context(|| format!("serving live migrations on {addr}"))
    })
    .transpose()?;
    let addr = match &live_endpoint {
        Some(ep) => {
            let mut bound = ep.local_addr().context("the live endpoint's address")?;
            // Bound to every interface: tell peers the one that reaches
            // the coordinator.
            if bound.ip().is_unspecified() {
                bound.set_ip(local_addr_towards(config.first_coordinator()).ip());
            }
            bound.to_string()
        }
        None => String::new(),
    };
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (upload_tx, upload_rx) = mpsc::unbounded_channel();
    let (client_tx, client_rx) = watch::channel(None::<Arc<ControlClient>>);
    let (fenced_tx, mut fenced_rx) = mpsc::unbounded_channel::<(TaskId, u64)>();
    let worker = Arc::new(Worker {
        runtime: Arc::new(runtime),
        registry,
        modules: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        known: Arc::new(Mutex::new(HashSet::new())),
        cache: Arc::new(Mutex::new(MemChunks::new())),
        reports: report_tx,
        uploads: upload_tx,
        unreported: Arc::default(),
        addr,
        expected: Mutex::new(HashMap::new()),
        expected_changed: tokio::sync::Notify::new(),
        arrived: Mutex::new(HashMap::new()),
        clients: client_rx.clone(),
        backlog: Arc::default(),
        fence: Arc::default(),
        gossip: gossip::Membership::default(),
        config,
    });
    let mut background = tokio::task::JoinSet::new();
    background.spawn(watchdog(worker.clone()));
    background.spawn(fence_watch(worker.clone()));
    if let Some(ep) = live_endpoint {
        tracing::info!(addr = %worker.addr, "serving live migrations");
        background.spawn(live::serve(worker.clone(), ep));
    }
    background.spawn(report::reporter(
        report_rx,
        client_rx,
        worker.config.name.clone(),
        fenced_tx,
        worker.backlog.clone(),
        worker.unreported.clone(),
    ));
    background.spawn(uploader(worker.clone(), upload_rx));
    {
        let w = worker.clone();
        background.spawn(async move {
            while let Some((task, epoch)) = fenced_rx.recv().await {
                w.drop_task(task, epoch);
                w.forget_incoming(task, epoch);
            }
        });
    }
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        r = supervise(worker.clone(), client_tx) => r?,
    }
    for r in worker.lock_running().values() {
        r.control.request_drop();
    }
    background.abort_all();
    Ok(())
}

/// Pause tasks that are overdue for a checkpoint or past their wall-time
/// limit without reaching a yield point (asleep or blocked in a WASI call):
/// a task that sleeps for an hour is still checkpointed on schedule, and
/// one that blocks past its wall limit still ends.
async fn watchdog(worker: Arc<Worker>) {
    const GRACE_US: u64 = 500_000;
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = exec::unix_us();
        for (task, r) in worker.lock_running().iter() {
            if r.control.overdue(now, GRACE_US) {
                tracing::debug!(%task, "overdue at no yield point; pausing it where it waits");
                r.control.request_checkpoint();
            }
        }
    }
}

/// Fence this worker when the coordinator has not answered a heartbeat for
/// most of its offline timeout (see [`fence`]): every task pauses at its
/// next yield point, or where it waits in a blocking call.
async fn fence_watch(worker: Arc<Worker>) {
    let mut every = tokio::time::interval(Duration::from_millis(50));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // A new beacon from the leader, relayed by the membership, is as
        // good as an answered heartbeat (but lifts no fence: only a
        // check-in can, after it dropped the tasks that moved on).
        if let Some(member) = worker.gossip.member() {
            worker
                .fence
                .heard_through_membership(member.view().beacon_seen_ms());
        }
        if worker.fence.raise_if_due(fence::now_ms()) {
            worker.pause_all(
                "no answer from the coordinator, directly or through the membership, for most of its offline timeout",
            );
        }
    }
}

/// The local address this host uses to reach `peer` (port 0): what other
/// nodes can reach it at, as far as this host can tell.
fn local_addr_towards(peer: SocketAddr) -> SocketAddr {
    let probe = std::net::UdpSocket::bind(wmig_net::any_addr_for(peer))
        .and_then(|s| s.connect(peer).and_then(|()| s.local_addr()));
    match probe {
        Ok(a) => SocketAddr::new(a.ip(), 0),
        Err(_) => wmig_net::any_addr_for(peer),
    }
}

async fn connect_registry(config: &WorkerConfig) -> anyhow::Result<RegistryClient> {
    let mut delay = Duration::from_millis(100);
    loop {
        match RegistryClient::connect_any(&config.registry, &config.creds, ClientConfig::default())
            .await
        {
            Ok(c) => return Ok(c),
            // Expired or revoked: no retry helps until the certificate is replaced.
            Err(wmig_registry::ClientError::Net(
                e @ wmig_net::NetError::CertificateRefused { .. },
            )) => {
                return Err(anyhow::Error::new(e).context("the registry refused this worker"));
            }
            Err(e) => {
                tracing::warn!(registry = ?config.registry, error = %e, "registry unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Keep a registered, attached connection to the coordinator, forever.
async fn supervise(
    worker: Arc<Worker>,
    client_slot: watch::Sender<Option<Arc<ControlClient>>>,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    loop {
        match session(&worker, &client_slot).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Retry(e)) => {
                tracing::warn!(coordinators = ?worker.config.coordinators, error = %e, "lost the coordinator; reconnecting");
            }
        }
        client_slot.send_replace(None);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

enum SessionError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<ControlError> for SessionError {
    fn from(e: ControlError) -> Self {
        match e {
            // Expired or revoked: no retry helps until the certificate is replaced.
            ControlError::Net(wmig_net::NetError::CertificateRefused { .. }) => {
                SessionError::Fatal(
                    anyhow::Error::new(e).context("the coordinator refused this worker"),
                )
            }
            e => SessionError::Retry(e.into()),
        }
    }
}

/// One connection's life: register, attach, heartbeat, obey.
async fn session(
    worker: &Arc<Worker>,
    client_slot: &watch::Sender<Option<Arc<ControlClient>>>,
) -> Result<(), SessionError> {
    let cfg = &worker.config;
    let client = Arc::new(
        ControlClient::connect_cluster(
            &cfg.coordinators,
            &cfg.creds,
            worker.fence.connect_timeout(),
        )
        .await?,
    );
    let info = NodeInfo {
        name: cfg.name.clone(),
        role: Role::Worker,
        slots: cfg.slots,
        labels: cfg.labels.clone(),
        addr: worker.addr.clone(),
        pid: std::process::id(),
    };
    let asked = fence::now_ms();
    let (heartbeat, patience) = match client.ask(&ControlRequest::Register(info.clone())).await {
        Ok(ControlResponse::Registered {
            heartbeat_ms,
            offline_timeout_ms,
            gossip,
        }) => {
            worker.fence.registered(offline_timeout_ms, asked);
            if let Some(join) = gossip {
                gossip::join(worker, join, Duration::from_millis(offline_timeout_ms));
            }
            // A heartbeat unanswered for half the offline timeout is lost:
            // waiting longer only delays the next one.
            (
                Duration::from_millis(heartbeat_ms.max(50)),
                Duration::from_millis((offline_timeout_ms / 2).max(200)),
            )
        }
        Ok(_) => {
            return Err(SessionError::Fatal(anyhow::anyhow!(
                "the coordinator answered registration unexpectedly; run the same wmig release everywhere"
            )))
        }
        Err(ControlError::Remote(e)) if e.code != ErrorCode::Internal => {
            return Err(SessionError::Fatal(anyhow::anyhow!(
                "the coordinator refused to register `{}`: {e}",
                cfg.name
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let mut commands = client
        .subscribe(&ControlRequest::Attach {
            node: cfg.name.clone(),
        })
        .await?;
    client_slot.send_replace(Some(client.clone()));
    tracing::info!(node = %cfg.name, coordinator = %client.remote_address(), "registered and attached");
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    // Stops with the session (dropped on every return below).
    let _pulse = heartbeat::start(
        worker.clone(),
        client.remote_address(),
        heartbeat,
        patience,
        ended_tx,
    )
    .map_err(|e| {
        SessionError::Retry(anyhow::Error::new(e).context("could not start the heartbeat thread"))
    })?;
    loop {
        tokio::select! {
            Some(why) = ended.recv() => return Err(SessionError::Retry(why)),
            next = commands.next() => match next? {
                Some(ControlResponse::Command(cmd)) => worker.obey(cmd),
                Some(other) => tracing::warn!(?other, "unexpected message on the attach stream"),
                None => return Err(SessionError::Retry(anyhow::anyhow!("the coordinator closed the attach stream"))),
            },
        }
    }
}

impl Worker {
    /// Fence now (see [`fence`]), whatever the clock says.
    fn raise_fence(&self, why: &str) {
        if self.fence.raise() {
            self.pause_all(why);
        }
    }

    fn pause_all(&self, why: &str) {
        let running = self.lock_running();
        tracing::warn!(
            tasks = running.len(),
            "{why}: pausing every task until the coordinator answers (self-fencing), so none can run here and elsewhere at once"
        );
        for r in running.values() {
            r.control.request_pause();
        }
    }

    /// The IP this host's gossip member is reached at.
    fn gossip_ip(&self) -> std::net::IpAddr {
        match self.config.listen {
            Listen::At(a) if !a.ip().is_unspecified() => a.ip(),
            _ => local_addr_towards(self.config.first_coordinator()).ip(),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_tasks(&self) -> Vec<TaskBeat> {
        self.lock_running()
            .iter()
            .map(|(t, r)| {
                let usage = r.control.usage.read();
                TaskBeat {
                    task: *t,
                    epoch: r.epoch,
                    fuel_used: usage.fuel,
                    memory_bytes: usage.memory_bytes,
                    progress: usage.progress,
                    files_bytes: r.control.files_bytes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, MemChunks> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn obey(self: &Arc<Self>, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Run {
                task,
                epoch,
                spec,
                options,
                resume,
            } => {
                if let Some(job) = self.take_arrived(task, epoch) {
                    self.run_arrived(task, epoch, job);
                    return;
                }
                let control = {
                    let mut running = self.lock_running();
                    match running.get(&task) {
                        Some(r) if r.epoch >= epoch => {
                            // Already ours. One that waits, paused, at the
                            // end of a live migration the coordinator lost
                            // track of (it restarted) carries on.
                            if r.epoch == epoch && r.control.decide(true) {
                                tracing::info!(%task, "still ours after a live migration; carrying on");
                            }
                            return;
                        }
                        Some(r) => r.control.request_drop(),
                        None => {}
                    }
                    let control = Arc::new(TaskControl::default());
                    running.insert(
                        task,
                        Running {
                            epoch,
                            control: control.clone(),
                        },
                    );
                    control
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.start(task, epoch, spec, options, resume, control).await;
                });
            }
            WorkerCommand::Drop { task, epoch } => self.drop_task(task, epoch),
            // A migration's pre-copy is an ordinary checkpoint.
            WorkerCommand::Checkpoint { task, epoch } | WorkerCommand::Migrate { task, epoch } => {
                if let Some(r) = self.lock_running().get(&task).filter(|r| r.epoch == epoch) {
                    r.control.request_checkpoint();
                }
            }
            WorkerCommand::Handoff { task, epoch } => {
                match self.lock_running().get(&task).filter(|r| r.epoch == epoch) {
                    Some(r) => r.control.request_handoff(),
                    None => {
                        let _ = self.reports.send(ControlRequest::HandoffFailed {
                            node: self.config.name.clone(),
                            task,
                            epoch,
                            reason: "the task is not running here".into(),
                        });
                    }
                }
            }
            WorkerCommand::LiveMigrate {
                task,
                epoch,
                to,
                addr,
                precopy,
            } => {
                let control = self
                    .lock_running()
                    .get(&task)
                    .filter(|r| r.epoch == epoch)
                    .map(|r| r.control.clone());
                match control {
                    Some(control) => {
                        tokio::spawn(live::send(
                            self.clone(),
                            task,
                            epoch,
                            to,
                            addr,
                            precopy,
                            control,
                        ));
                    }
                    None => {
                        let _ = self.reports.send(ControlRequest::LiveFailed {
                            node: self.config.name.clone(),
                            task,
                            epoch,
                            reason: "the task is not running here".into(),
                        });
                    }
                }
            }
            WorkerCommand::Expect {
                task,
                epoch,
                from,
                spec,
                options,
            } => {
                let bundle = spec.bundle;
                self.expected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        task,
                        Expected {
                            epoch,
                            from,
                            spec,
                            options,
                        },
                    );
                self.expected_changed.notify_waiters();
                // Have the module ready by the time the source offers it.
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.module(&bundle).await {
                        tracing::warn!(%task, error = %format!("{e:#}"), "could not prepare an expected task's module");
                    }
                });
            }
            WorkerCommand::Revocations { revoked } => {
                let Some(list) = self.config.revocations.clone() else {
                    return;
                };
                tokio::spawn(async move {
                    match wmig_net::revocation::merge_received(list, revoked).await {
                        Ok(0) => {}
                        Ok(added) => tracing::info!(
                            added,
                            "revoked certificates received from the coordinator"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "could not store revocations from the coordinator")
                        }
                    }
                });
            }
            WorkerCommand::Resume { task, epoch } => {
                self.forget_incoming(task, epoch);
                if let Some(r) = self.lock_running().get(&task).filter(|r| r.epoch == epoch) {
                    r.control.decide(true);
                    r.control.live_abort.notify_waiters();
                    r.control.request_live(exec::LIVE_END);
                }
            }
            WorkerCommand::Prefetch { task, seq } => {
                let me = self.clone();
                tokio::spawn(async move {
                    let bytes = match me.prefetch(task, seq).await {
                        Ok(b) => b,
                        Err(e) => {
                            // Not fatal: the resume fetches what is missing.
                            tracing::warn!(%task, seq, error = %format!("{e:#}"), "prefetch failed");
                            0
                        }
                    };
                    let _ = me.reports.send(ControlRequest::Prefetched {
                        node: me.config.name.clone(),
                        task,
                        seq,
                        bytes,
                    });
                });
            }
        }
    }

    fn drop_task(&self, task: TaskId, epoch: u64) {
        let mut running = self.lock_running();
        if running.get(&task).is_some_and(|r| r.epoch <= epoch) {
            if let Some(r) = running.remove(&task) {
                r.control.request_drop();
            }
        }
    }

    fn finish_local(&self, task: TaskId, epoch: u64) {
        let mut running = self.lock_running();
        if running.get(&task).is_some_and(|r| r.epoch == epoch) {
            running.remove(&task);
        }
    }

    async fn start(
        self: Arc<Self>,
        task: TaskId,
        epoch: u64,
        spec: TaskSpec,
        options: TaskOptions,
        resume: Option<u64>,
        control: Arc<TaskControl>,
    ) {
        // A registry that is briefly unreachable must not fail a task that
        // is being recovered or migrated here: retry before giving up.
        let mut attempt = 0;
        let prepared = loop {
            let prepared = async {
                let resume = match resume {
                    Some(seq) => Some(self.fetch_checkpoint(task, seq).await?),
                    None => None,
                };
                let version = resume
                    .as_ref()
                    .map_or(wmig_host::REWRITER_VERSION, |(m, _, _)| m.rewriter);
                let module = self.module_version(&spec.bundle, version).await?;
                // The task's files: its checkpoint's trees, or those it was
                // submitted with, built into a working copy here.
                let files = if options.trees.is_empty() {
                    None
                } else {
                    let trees = match &resume {
                        Some((m, _, _)) => m.files.clone(),
                        None => self.submitted_trees(&options.trees).await?,
                    };
                    // Built from the registry's chunks: the first checkpoint
                    // here need not read or offer any of them again.
                    let stored: Vec<Hash> =
                        trees.iter().flat_map(|p| p.tree.chunk_hashes()).collect();
                    let files = self
                        .materialize(task, epoch, trees, options.files_limit())
                        .await?;
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(stored);
                    Some(files)
                };
                anyhow::Ok((module, resume, files))
            }
            .await;
            attempt += 1;
            match prepared {
                // A module the runtime refuses (HostError) stays refused.
                Err(e)
                    if attempt < PREPARE_ATTEMPTS
                        && !control.drop.load(Ordering::SeqCst)
                        && !e.chain().any(|c| c.is::<wmig_host::HostError>()) =>
                {
                    tracing::warn!(%task, attempt, error = %format!("{e:#}"), "could not prepare the task; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                }
                done => break done,
            }
        };
        let (module, resume, files) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = self.reports.send(ControlRequest::Finished {
                    node: self.config.name.clone(),
                    task,
                    epoch,
                    outcome: Outcome::Failed {
                        reason: format!("{e:#}"),
                        exit_code: None,
                    },
                    fuel_used: 0,
                });
                self.finish_local(task, epoch);
                return;
            }
        };
        let mut job = self.job(task, epoch, spec, options, module, control);
        job.files = files;
        job.resume_fetched = resume.as_ref().map_or(0, |r| r.2);
        job.resume = resume.map(|(m, c, _)| (m, c));
        self.spawn_job(task, epoch, job);
    }

    /// A task's job on this worker, to start fresh unless told otherwise.
    fn job(
        &self,
        task: TaskId,
        epoch: u64,
        spec: TaskSpec,
        options: TaskOptions,
        module: Arc<PreparedModule>,
        control: Arc<TaskControl>,
    ) -> Job {
        let stdin = options
            .stdin
            .then(|| {
                input::StdinFeed::new(self.clients.clone(), self.config.name.clone(), task, epoch)
            })
            .flatten();
        Job {
            node: self.config.name.clone(),
            task,
            epoch,
            spec,
            options,
            module,
            runtime: self.runtime.clone(),
            resume_fetched: 0,
            resume: None,
            arrived: None,
            checkpoint_every: self.config.checkpoint_every,
            yield_fuel: self.config.yield_fuel,
            memory_limit: self.config.memory_limit,
            control,
            known: self.known.clone(),
            cache: self.cache.clone(),
            reports: self.reports.clone(),
            uploads: self.uploads.clone(),
            stdin,
            files: None,
            release_after_start: None,
            backlog: self.backlog.clone(),
            fence: self.fence.clone(),
        }
    }

    /// Run `job` on a guest thread of its own.
    fn spawn_job(self: &Arc<Self>, task: TaskId, epoch: u64, job: Job) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wmig-{task}"))
            .stack_size(wmig_host::engine::GUEST_THREAD_STACK)
            .spawn(move || {
                job.run();
                me.finish_local(task, epoch);
                crate::exec::trim_heap();
            });
        if let Err(e) = spawned {
            tracing::error!(%task, error = %e, "could not start a task thread");
        }
    }

    /// The coordinator's announcement of a live migration of `task` from
    /// the source's `epoch`, waiting up to `timeout` for it.
    async fn wait_expected(
        &self,
        task: TaskId,
        epoch: u64,
        timeout: Duration,
    ) -> Option<(NodeId, TaskSpec, TaskOptions)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.expected_changed.notified();
            if let Some(e) = self
                .expected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&task)
                .filter(|e| e.epoch == epoch)
            {
                return Some((e.from.clone(), e.spec.clone(), e.options.clone()));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// A task arrived live: hold it until the coordinator's `Run`.
    fn arrive(&self, task: TaskId, epoch: u64, job: Job) {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task);
        self.arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task, (epoch, Box::new(job)));
    }

    /// The arrived task `Run` at `epoch` should start, if any. One that
    /// arrived from an epoch other than the one just before is stale.
    fn take_arrived(&self, task: TaskId, epoch: u64) -> Option<Box<Job>> {
        let (from_epoch, job) = self
            .arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task)?;
        if from_epoch + 1 == epoch {
            Some(job)
        } else {
            tracing::warn!(%task, from_epoch, epoch, "dropping a live arrival for another epoch");
            None
        }
    }

    fn run_arrived(self: &Arc<Self>, task: TaskId, epoch: u64, job: Box<Job>) {
        {
            let mut running = self.lock_running();
            if let Some(r) = running.get(&task) {
                r.control.request_drop();
            }
            running.insert(
                task,
                Running {
                    epoch,
                    control: job.control.clone(),
                },
            );
        }
        self.spawn_job(task, epoch, *job);
    }

    /// Forget what arrived or was announced for a live migration of `task`
    /// from `epoch` (abandoned).
    fn forget_incoming(&self, task: TaskId, epoch: u64) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        if expected.get(&task).is_some_and(|e| e.epoch == epoch) {
            expected.remove(&task);
        }
        drop(expected);
        let mut arrived = self.arrived.lock().unwrap_or_else(|p| p.into_inner());
        if arrived.get(&task).is_some_and(|(e, _)| *e == epoch) {
            arrived.remove(&task);
        }
    }

    /// The prepared module for `bundle`: memory, then the disk cache, then
    /// the registry.
    async fn module(&self, bundle: &Hash) -> anyhow::Result<Arc<PreparedModule>> {
        self.module_version(bundle, wmig_host::REWRITER_VERSION)
            .await
    }

    /// The bundle as rewriter `version` prepares it: a checkpoint resumes only
    /// in the rewrite it was taken in, so one taken by an older wmig resumes
    /// in that older rewrite.
    async fn module_version(
        &self,
        bundle: &Hash,
        version: u32,
    ) -> anyhow::Result<Arc<PreparedModule>> {
        if let Some(m) = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*bundle, version))
        {
            return Ok(m.clone());
        }
        let path = self
            .config
            .cache_dir
            .join("bundles")
            .join(format!("{bundle}.wasm"));
        let wasm = match tokio::fs::read(&path).await {
            Ok(bytes) if Hash::of(&bytes) == *bundle => bytes,
            _ => {
                let (_, bytes) = self
                    .registry
                    .download_bundle(&BundleRef::Hash(*bundle))
                    .await
                    .with_context(|| format!("fetching bundle {bundle} from the registry"))?;
                let tmp = path.with_extension("tmp");
                if tokio::fs::write(&tmp, &bytes).await.is_ok() {
                    let _ = tokio::fs::rename(&tmp, &path).await;
                }
                bytes
            }
        };
        let rt = self.runtime.clone();
        let module = tokio::task::spawn_blocking(move || rt.load_version(&wasm, version))
            .await
            .context("module preparation panicked")?
            .with_context(|| format!("preparing bundle {bundle}"))?;
        // Every task here is checkpointed, and a checkpoint resumes through
        // the rewind bodies: have them compiled by then.
        module.prefetch_rewind();
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((*bundle, version), module.clone());
        Ok(module)
    }

    /// Fetch checkpoint `seq` of `task`: its manifest, and the chunks the
    /// local cache lacks. Returns the manifest, the chunks it names and the
    /// bytes fetched.
    async fn fetch_checkpoint(
        &self,
        task: TaskId,
        seq: u64,
    ) -> anyhow::Result<(wmig_proto::checkpoint::Manifest, MemChunks, u64)> {
        let manifest = self
            .registry
            .manifest(task, Some(seq))
            .await
            .with_context(|| format!("fetching checkpoint {seq} of {task}"))?;
        let mut hashes: Vec<Hash> = manifest
            .memories
            .iter()
            .flat_map(|m| m.chunks.iter().map(|(_, h)| *h))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let mut chunks = MemChunks::new();
        let missing: Vec<Hash> = {
            let cache = self.lock_cache();
            hashes
                .iter()
                .filter(|h| match cache.shared(h) {
                    Some(b) => {
                        chunks.insert_shared(**h, b);
                        false
                    }
                    None => true,
                })
                .copied()
                .collect()
        };
        let mut fetched = 0u64;
        if !missing.is_empty() {
            let bytes =
                self.registry.get_chunks(&missing).await.with_context(|| {
                    format!("fetching the chunks of checkpoint {seq} of {task}")
                })?;
            let mut cache = self.lock_cache();
            if cache.len() + missing.len() > CHUNK_CACHE_MAX {
                cache.clear();
            }
            for (h, b) in missing.iter().zip(bytes) {
                fetched += b.len() as u64;
                let b: Arc<[u8]> = b.into();
                cache.insert_shared(*h, b.clone());
                chunks.insert_shared(*h, b);
            }
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(hashes);
        Ok((manifest, chunks, fetched))
    }

    /// A migration is coming: pull its pre-copy checkpoint into the chunk
    /// cache and get the module ready, so the resume after the pause only
    /// fetches what changed. Returns the bytes fetched.
    async fn prefetch(&self, task: TaskId, seq: u64) -> anyhow::Result<u64> {
        let (manifest, _, fetched) = self.fetch_checkpoint(task, seq).await?;
        self.module(&manifest.module).await?;
        Ok(fetched)
    }
}

/// Make captured checkpoints durable in the registry, then report them.
async fn uploader(worker: Arc<Worker>, mut rx: mpsc::UnboundedReceiver<Upload>) {
    while let Some(up) = rx.recv().await {
        let (task, seq) = (up.task, up.manifest.seq);
        let stored = store_checkpoint(&worker, &up).await;
        if let Some(done) = &up.end {
            // A task's final files: nothing to report, nothing after it.
            report::release(&up.pending);
            if let Err(e) = &stored {
                tracing::warn!(%task, error = %format!("{e:#}"), "final files not stored");
                worker
                    .known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            let _ = done.send(stored.is_ok());
            continue;
        }
        if stored.is_ok() && up.handoff.is_none() {
            // The task may checkpoint again once the coordinator knows of
            // this one (the reporter releases it).
            worker.unreported.hold(task, seq, up.pending.clone());
        } else {
            // Handed off, or given up: the task may checkpoint again.
            report::release(&up.pending);
        }
        let node = worker.config.name.clone();
        match (stored, up.handoff) {
            (Ok(bytes), Some(h)) => {
                let _ = worker.reports.send(ControlRequest::HandedOff {
                    node,
                    task,
                    epoch: up.epoch,
                    seq,
                    fuel_used: up.fuel_used,
                    paused_at_us: h.paused_at_us,
                    bytes,
                });
                let _ = h.done.send(true);
            }
            (Ok(_), None) => {
                let _ = worker.reports.send(ControlRequest::Checkpointed {
                    node,
                    task,
                    epoch: up.epoch,
                    seq,
                    fuel_used: up.fuel_used,
                });
            }
            (Err(e), handoff) => {
                tracing::warn!(%task, seq, error = %format!("{e:#}"), "checkpoint not stored");
                // Our idea of what the registry holds may be stale (gc):
                // the next capture copies every chunk again.
                worker
                    .known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                if let Some(h) = handoff {
                    let _ = worker.reports.send(ControlRequest::HandoffFailed {
                        node,
                        task,
                        epoch: up.epoch,
                        reason: format!("{e:#}"),
                    });
                    let _ = h.done.send(false);
                }
            }
        }
    }
}

/// Store the chunks the registry lacks, then the manifest; returns the
/// chunk bytes uploaded.
async fn store_checkpoint(worker: &Worker, up: &Upload) -> anyhow::Result<u64> {
    let reg = &worker.registry;
    // Shares the captured bytes; no second copy of a chunk.
    let chunks: Vec<(Hash, Bytes)> = up
        .chunks
        .iter()
        .map(|(h, b)| (*h, Bytes::from_owner(b.clone())))
        .collect();
    let uploaded = reg.store_chunks(&chunks).await?;
    reg.put_manifest(&up.manifest).await?;
    worker
        .known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(up.manifest.chunk_hashes());
    Ok(uploaded)
}
