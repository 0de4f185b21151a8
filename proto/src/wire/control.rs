//! The control protocol: what workers, monitors and operators say to the
//! coordinator, carried by [`crate::frame`] like the registry's.
//!
//! Most requests are one [`ControlRequest`] per bidirectional stream answered
//! by one [`ControlResponse`]. Three are *subscriptions* that keep their
//! stream open and receive many responses:
//!
//! - [`ControlRequest::Attach`]: a worker's command channel. The coordinator
//!   sends [`ControlResponse::Command`]s down it; on (re)attach it first
//!   replays a `Run` for every task the worker owns, so a worker or a
//!   coordinator that restarted converges without extra bookkeeping.
//! - [`ControlRequest::Logs`] with `follow`: output frames until the task ends.
//! - [`ControlRequest::Events`] with `follow`: the monitor stream.
//!
//! The messages, and the records they carry (task specs and states, node
//! info, placement policies, the coordinator's logged [`Event`]s), live here
//! rather than in the coordinator so that the worker and the CLI can speak the
//! protocol without linking the coordinator server (axum, the dashboard).
//! The coordinator re-exports them under their old paths; its decisions
//! (task table, membership, placer) stay there.
//!
//! Postcard encodes fields and enum variants by position and the
//! coordinator's event log stores [`Event`]s on disk: never reorder or remove
//! a field or a variant here, only append.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{RemoteError, RevokedCert};
use crate::{Hash, NodeId, TaskId};

/// Which output stream of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Bytes of one output stream starting at `offset` (bytes the task wrote to
/// that stream before these). Offsets make output idempotent: a resend or a
/// replay after a restore overlaps what is stored and only the new tail
/// counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub task: TaskId,
    pub stream: Stream,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    // --- nodes -----------------------------------------------------------
    /// Join (or rejoin) the cluster.
    Register(NodeInfo),
    /// I am alive, and run these tasks (at these epochs). The answer names
    /// the ones this node no longer owns ([`ControlResponse::CheckedIn`]).
    Heartbeat {
        node: NodeId,
        tasks: Vec<TaskBeat>,
    },
    /// Open the worker's command stream (see the module docs).
    Attach {
        node: NodeId,
    },
    /// The task executes its first instruction now (`at_us`: unix µs).
    Started {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        at_us: u64,
        /// Checkpoint bytes fetched from the registry to resume it.
        fetched: u64,
    },
    /// Task output, from its owner.
    Output {
        node: NodeId,
        epoch: u64,
        chunk: OutputChunk,
    },
    /// A checkpoint is durable in the registry.
    Checkpointed {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        seq: u64,
        fuel_used: u64,
    },
    /// The task ended on its owner.
    Finished {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        outcome: Outcome,
        fuel_used: u64,
    },

    /// Migration target: the pre-copy checkpoint is in the local chunk
    /// cache (`bytes` fetched for it).
    Prefetched {
        node: NodeId,
        task: TaskId,
        seq: u64,
        bytes: u64,
    },
    /// Migration source: the task paused at unix µs `paused_at_us`, its final
    /// checkpoint `seq` is durable (`bytes` uploaded for it) and this node
    /// has forgotten the task.
    HandedOff {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        seq: u64,
        fuel_used: u64,
        paused_at_us: u64,
        bytes: u64,
    },
    /// Migration source: the final checkpoint could not be stored; the task
    /// carries on here.
    HandoffFailed {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        reason: String,
    },

    // --- operators -------------------------------------------------------
    Submit {
        spec: TaskSpec,
        options: TaskOptions,
        placement: Placement,
    },
    ListTasks,
    Inspect {
        task: TaskId,
    },
    ListNodes,
    Cancel {
        task: TaskId,
    },
    /// Ask the owner to checkpoint the task now.
    Checkpoint {
        task: TaskId,
    },
    /// Move a running task to another worker; answered when it runs there.
    /// Without `precopy` the source pauses at once and the target fetches
    /// the whole checkpoint during the downtime (a cold migration).
    Migrate {
        task: TaskId,
        to: NodeId,
        precopy: bool,
    },
    /// Stop placing tasks on the worker and migrate its tasks away;
    /// answered when they have moved.
    Drain {
        node: NodeId,
    },
    Uncordon {
        node: NodeId,
    },
    /// Output from the given offsets; with `follow`, until the task ends.
    Logs {
        task: TaskId,
        stdout_from: u64,
        stderr_from: u64,
        follow: bool,
    },
    /// Answer once the task is completed, failed or cancelled.
    Wait {
        task: TaskId,
    },
    /// Logged events from `from` (a sequence number); with `follow`, the live
    /// stream after them, including output and statistics (`monitor`).
    Events {
        from: u64,
        follow: bool,
    },
    /// Cluster counters.
    Stats,
    /// Forget an offline node that owns no tasks.
    Remove {
        node: NodeId,
    },

    // --- live migration (appended: postcard numbers variants by position) --
    /// Live-migration target: the final state of `task` (the source's
    /// `epoch`, paused for good at checkpoint `seq`) is applied here; place
    /// the task on this node.
    LiveReady {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        paused_at_us: u64,
        /// µs from the pause until the source had captured the final state.
        captured_us: u64,
        /// Unix µs at which the target had received, then applied, it all.
        received_at_us: u64,
        applied_at_us: u64,
        /// Page bytes received before the pause.
        precopy_bytes: u64,
        /// Page bytes received after it.
        delta_bytes: u64,
    },
    /// Live-migration source or target: the move failed before the target
    /// was ready (the reason says where).
    LiveFailed {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        reason: String,
    },
    // --- task input ---------------------------------------------------------
    /// Operator: append to the stdin of a task submitted with `stdin`,
    /// at `offset` (its stored end when `None`; a resend overlaps), and
    /// close it after these bytes when `eof`. Answered with
    /// [`ControlResponse::InputStored`] once durable.
    Input {
        task: TaskId,
        offset: Option<u64>,
        bytes: Vec<u8>,
        eof: bool,
    },
    /// The owner of `task` at `epoch`: up to `max` bytes of its input from
    /// `offset`, waiting a while for some if none are there yet. Answered
    /// with [`ControlResponse::Input`].
    ReadInput {
        node: NodeId,
        task: TaskId,
        epoch: u64,
        offset: u64,
        max: u32,
    },
    /// Operator: certificates revoked (`wmig cert revoke`). The coordinator
    /// adds them to its list and passes its whole list on to the registry
    /// and every worker.
    Revocations {
        revoked: Vec<RevokedCert>,
    },
    // --- replicated coordinators -----------------------------------------
    /// Which coordinator leads? Asked first on every connection, so a
    /// client given several coordinators ends up on the leader.
    WhoLeads,
}

/// A running task as its worker sees it, in every heartbeat: the epoch for
/// fencing, the rest so operators see live progress between checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBeat {
    pub task: TaskId,
    pub epoch: u64,
    pub fuel_used: u64,
    pub memory_bytes: u64,
    /// What the guest last reported through the SDK (`done`, `total`).
    pub progress: Option<(u64, u64)>,
    /// Bytes of the task's files at its last checkpoint here.
    pub files_bytes: u64,
}

/// What a worker is told to do, on its [`ControlRequest::Attach`] stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// `Run` is the common command and each is sent once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum WorkerCommand {
    /// Run `task` at `epoch`; from checkpoint `resume` if set, else from the
    /// start.
    Run {
        task: TaskId,
        epoch: u64,
        spec: TaskSpec,
        options: TaskOptions,
        resume: Option<u64>,
    },
    /// Stop and forget the task (cancelled, or no longer ours).
    Drop { task: TaskId, epoch: u64 },
    /// Checkpoint the task at its next yield point.
    Checkpoint { task: TaskId, epoch: u64 },
    /// Migration, source side, step 1: checkpoint now (the pre-copy) and
    /// keep running.
    Migrate { task: TaskId, epoch: u64 },
    /// Migration, target side: fetch checkpoint `seq` (and the module) into
    /// the local caches, then report [`ControlRequest::Prefetched`].
    Prefetch { task: TaskId, seq: u64 },
    /// Migration, source side, step 2: pause at the next yield point, store
    /// the final checkpoint, report [`ControlRequest::HandedOff`], forget
    /// the task.
    Handoff { task: TaskId, epoch: u64 },
    /// Live migration, source side: stream the task's memory straight to
    /// `to` at `addr` (rounds of written pages while it runs when
    /// `precopy`), then pause, send the rest, and wait for a decision: a
    /// `Drop` (it runs on `to` now) or a `Resume`.
    LiveMigrate {
        task: TaskId,
        epoch: u64,
        to: NodeId,
        addr: String,
        precopy: bool,
    },
    /// Live migration, target side: `task` (owned at `epoch` by its source)
    /// is about to arrive over the live protocol; prepare its module and
    /// accept it from the source, and only then.
    Expect {
        task: TaskId,
        epoch: u64,
        /// The source: only its certificate may deliver the task.
        from: NodeId,
        spec: TaskSpec,
        options: TaskOptions,
    },
    /// The live migration of `task` at `epoch` was abandoned: the source
    /// carries on, the target forgets what it received.
    Resume { task: TaskId, epoch: u64 },
    /// The cluster's revoked certificates (sent on attach and whenever the
    /// list grows): the worker's live-migration listener refuses them.
    Revocations { revoked: Vec<RevokedCert> },
}

/// How one migration went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub task: TaskId,
    pub from: NodeId,
    /// Where the task runs now (the requested target unless it failed in
    /// between).
    pub to: NodeId,
    /// From the pause on the source to the first instruction on the target.
    pub downtime_ms: f64,
    /// From the request to the first instruction on the target.
    pub total_ms: f64,
    /// Bytes the target fetched ahead of the pause (pre-copy).
    pub precopy_bytes: u64,
    /// Bytes of the final checkpoint the source stored after the pause.
    pub delta_bytes: u64,
    /// Bytes the target fetched after the pause (what its caches lacked).
    pub resume_bytes: u64,
    /// Unix ms the migration ended (the target's first instruction).
    pub at_ms: u64,
    /// Where the downtime went (live path): the milliseconds after the pause
    /// at which each step ended — `captured` (source), `transferred` and
    /// `applied` (target), `placed` (logged), `running` (first instruction).
    pub phases_ms: Vec<(String, f64)>,
}

/// A task as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub name: String,
    pub bundle: Hash,
    pub args: Vec<String>,
    pub state: TaskState,
    pub owner: Option<NodeId>,
    pub epoch: u64,
    pub checkpoint_seq: Option<u64>,
    pub fuel_used: u64,
    pub exit_code: Option<i32>,
    pub failure: Option<String>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Unix µs when the current owner started it (not kept across restarts).
    pub started_us: Option<u64>,
    /// Linear memory of the running task, from its owner's last heartbeat.
    pub memory_bytes: Option<u64>,
    /// Progress the guest reported (`done`, `total`), from the last heartbeat.
    pub progress: Option<(u64, u64)>,
    /// Bytes of the task's files (`--dir` trees) at its owner's last scan.
    pub files_bytes: Option<u64>,
    /// The limit of those files; `None` for a task without trees.
    pub files_limit: Option<u64>,
    /// The trees it was submitted with: (tree bundle, guest path).
    pub trees: Vec<(Hash, String)>,
}

impl TaskView {
    pub fn new(task: &Task, stdout_bytes: u64, stderr_bytes: u64, started_us: Option<u64>) -> Self {
        TaskView {
            id: task.id,
            name: task.options.name.clone(),
            bundle: task.spec.bundle,
            args: task.spec.args.clone(),
            state: task.state,
            owner: task.owner.clone(),
            epoch: task.epoch,
            checkpoint_seq: task.checkpoint_seq,
            fuel_used: task.fuel_used,
            exit_code: task.exit_code,
            failure: task.failure.clone(),
            stdout_bytes,
            stderr_bytes,
            started_us,
            memory_bytes: None,
            progress: None,
            files_bytes: None,
            files_limit: (!task.options.trees.is_empty()).then(|| task.options.files_limit()),
            trees: task.options.trees.clone(),
        }
    }
}

/// A node as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: NodeId,
    pub role: Role,
    pub liveness: Liveness,
    pub draining: bool,
    pub addr: String,
    pub pid: u32,
    pub slots: u32,
    /// Tasks running there now.
    pub tasks: u32,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms: u64,
    /// A coordinator that holds the leader lease (exactly one does).
    pub leader: bool,
}

/// Cluster-wide counters, also exported on `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    pub workers_online: u32,
    pub workers_offline: u32,
    pub monitors_online: u32,
    pub slots: u32,
    pub tasks_pending: u32,
    pub tasks_running: u32,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    pub tasks_cancelled: u64,
    pub checkpoints: u64,
    pub output_bytes: u64,
    pub events: u64,
    /// Linear memory of every running task, from the last heartbeats.
    pub memory_bytes: u64,
    /// Fuel used by every task so far (live for running ones): its rate is
    /// the cluster's throughput.
    pub fuel_used: u64,
}

/// One item of the monitor stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MonitorItem {
    /// A logged decision, with its sequence number in the event log and the
    /// unix ms it was made (0 when replayed from before a restart).
    Event { seq: u64, at_ms: u64, event: Event },
    /// New task output (live only).
    Output(OutputChunk),
    /// Periodic counters (live only).
    Stats(ClusterStats),
    /// A migration finished (live only).
    Migrated(MigrationReport),
    /// A dead worker's task runs again elsewhere (live only).
    Recovered(RecoveryReport),
}

/// How one recovery went: a task of a worker declared offline resumed on
/// another from its last committed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub task: TaskId,
    pub from: NodeId,
    pub to: NodeId,
    /// The checkpoint it resumed from (`None`: it started over).
    pub checkpoint_seq: Option<u64>,
    /// From the last heartbeat of the dead worker to the first instruction
    /// on the new one: detection plus restore.
    pub downtime_ms: f64,
    /// Unix ms it ran again.
    pub at_ms: u64,
}

/// What a registered worker needs to join the SWIM membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipJoin {
    /// Authenticates every membership packet; handed out only over mutual
    /// TLS, so only holders of a cluster certificate take part.
    pub key: [u8; 32],
    /// Members to join through (the coordinators' gossip addresses).
    pub seeds: Vec<std::net::SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Ok,
    Registered {
        heartbeat_ms: u64,
        offline_timeout_ms: u64,
        /// How to join the cluster's SWIM membership (workers only; `None`
        /// when the coordinator runs without it: keep heartbeating).
        gossip: Option<GossipJoin>,
    },
    /// `worker` is `None` when every worker was busy: the task is pending
    /// and starts when a slot frees up.
    Submitted {
        task: TaskId,
        worker: Option<NodeId>,
    },
    Tasks(Vec<TaskView>),
    Task(Box<TaskView>),
    Nodes(Vec<NodeStatus>),
    Stats(ClusterStats),
    /// On an attach stream.
    Command(WorkerCommand),
    /// On a logs stream.
    Output(OutputChunk),
    /// Ends a logs stream (the task ended) and answers `Wait`.
    Ended(Box<TaskView>),
    /// On an events stream.
    Monitor(Box<MonitorItem>),
    /// Answers `Heartbeat`: drop the `stale` tasks, they are no longer
    /// yours; check in again within `next_ms` (the coordinator spreads
    /// check-ins so that their total rate stays flat as the cluster grows;
    /// liveness comes from the membership in between).
    CheckedIn {
        stale: Vec<(TaskId, u64)>,
        next_ms: u64,
    },
    Migrated(MigrationReport),
    /// Answers `Drain`: the tasks that moved, and why others did not.
    Drained {
        moved: Vec<MigrationReport>,
        failed: Vec<String>,
    },
    Error(RemoteError),
    /// The task's input is stored up to `len` bytes.
    InputStored {
        len: u64,
    },
    /// Input bytes; `eof` once they reach the end of a closed input. Empty
    /// and not `eof`: nothing arrived in the wait, ask again.
    Input {
        bytes: Vec<u8>,
        eof: bool,
    },
    /// Answers `Output` whose chunk starts past the stored end (the stored
    /// tail was lost, or an earlier report was refused): nothing was
    /// stored; send the stream again from byte `from`.
    Resend {
        from: u64,
    },
    /// Answers `WhoLeads`: `is_leader` when this coordinator leads (a
    /// single coordinator always does); otherwise `leader` is the leader's
    /// control address, `None` while an election is under way.
    Leader {
        is_leader: bool,
        leader: Option<String>,
    },
}

// --- tasks -----------------------------------------------------------------

/// What to run: everything a worker needs besides its own settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// blake3 of the wasm bundle in the registry.
    pub bundle: Hash,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Settings beyond [`TaskSpec`]. They were added after the v1 log format was
/// frozen, so they travel in [`TaskEvent::SubmittedWith`]; tasks submitted
/// with plain [`TaskEvent::Submitted`] have the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// What the operator submitted (`NAME:TAG`, a file name or a hash), shown
    /// by `wmig ps`.
    pub name: String,
    /// Preopened directories of the worker's own machine (`--host-dir`):
    /// (host path, guest path). They do not travel with the task.
    pub dirs: Vec<(String, String)>,
    /// Largest linear memory, in bytes.
    pub memory_limit: Option<u64>,
    /// Total fuel (yield points passed) before the task fails.
    pub fuel_limit: Option<u64>,
    /// Wall-clock time before the task fails, in milliseconds.
    pub wall_limit_ms: Option<u64>,
    /// Checkpoint period, in milliseconds (the worker's default when unset).
    pub checkpoint_every_ms: Option<u64>,
    /// The task reads what `wmig input` sends it on stdin, waiting for it
    /// as it arrives; without it stdin is empty. (Added after
    /// [`TaskEvent::SubmittedWith`]: logged in [`TaskEvent::SubmittedV3`].)
    pub stdin: bool,
    /// Preopened directories as data (`--dir LOCAL::GUEST`): (tree bundle
    /// in the registry, guest path). Each worker that runs the task builds
    /// its own working copy, and checkpoints carry what changed. (Added
    /// after `stdin`: logged in [`TaskEvent::SubmittedV4`].)
    pub trees: Vec<(Hash, String)>,
    /// Most bytes the task's files may take, all trees together (default
    /// [`crate::files::DEFAULT_FILES_LIMIT`]).
    pub files_limit: Option<u64>,
}

impl TaskOptions {
    /// The limit of the task's files, in bytes.
    pub fn files_limit(&self) -> u64 {
        self.files_limit
            .unwrap_or(crate::files::DEFAULT_FILES_LIMIT)
    }
}

/// [`TaskOptions`] as [`TaskEvent::SubmittedV3`] stores it: without
/// `trees` and `files_limit`.
mod options_v3 {
    use super::TaskOptions;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct V3 {
        name: String,
        dirs: Vec<(String, String)>,
        memory_limit: Option<u64>,
        fuel_limit: Option<u64>,
        wall_limit_ms: Option<u64>,
        checkpoint_every_ms: Option<u64>,
        stdin: bool,
    }

    pub fn serialize<S: Serializer>(o: &TaskOptions, s: S) -> Result<S::Ok, S::Error> {
        V3 {
            name: o.name.clone(),
            dirs: o.dirs.clone(),
            memory_limit: o.memory_limit,
            fuel_limit: o.fuel_limit,
            wall_limit_ms: o.wall_limit_ms,
            checkpoint_every_ms: o.checkpoint_every_ms,
            stdin: o.stdin,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TaskOptions, D::Error> {
        let v = V3::deserialize(d)?;
        Ok(TaskOptions {
            name: v.name,
            dirs: v.dirs,
            memory_limit: v.memory_limit,
            fuel_limit: v.fuel_limit,
            wall_limit_ms: v.wall_limit_ms,
            checkpoint_every_ms: v.checkpoint_every_ms,
            stdin: v.stdin,
            ..TaskOptions::default()
        })
    }
}

/// [`TaskOptions`] as [`TaskEvent::SubmittedWith`] stores it in logs written
/// before `stdin` existed: the same fields, in the same order, without it.
mod options_v1 {
    use super::TaskOptions;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct V1 {
        name: String,
        dirs: Vec<(String, String)>,
        memory_limit: Option<u64>,
        fuel_limit: Option<u64>,
        wall_limit_ms: Option<u64>,
        checkpoint_every_ms: Option<u64>,
    }

    pub fn serialize<S: Serializer>(o: &TaskOptions, s: S) -> Result<S::Ok, S::Error> {
        V1 {
            name: o.name.clone(),
            dirs: o.dirs.clone(),
            memory_limit: o.memory_limit,
            fuel_limit: o.fuel_limit,
            wall_limit_ms: o.wall_limit_ms,
            checkpoint_every_ms: o.checkpoint_every_ms,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TaskOptions, D::Error> {
        let v = V1::deserialize(d)?;
        Ok(TaskOptions {
            name: v.name,
            dirs: v.dirs,
            memory_limit: v.memory_limit,
            fuel_limit: v.fuel_limit,
            wall_limit_ms: v.wall_limit_ms,
            checkpoint_every_ms: v.checkpoint_every_ms,
            ..TaskOptions::default()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Running,
    /// Reserved for live migration (not entered yet).
    Migrating,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// States in which the task occupies a slot on its owner.
    pub fn occupies_slot(self) -> bool {
        matches!(self, TaskState::Running | TaskState::Migrating)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Migrating => "migrating",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        })
    }
}

/// How a task ended, as reported by its worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Completed {
        exit_code: i32,
    },
    /// A trap, a limit (memory, fuel, wall time) or a host error.
    Failed {
        reason: String,
        exit_code: Option<i32>,
    },
}

/// Everything the coordinator knows about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub options: TaskOptions,
    /// The worker that runs (or last ran) the task.
    pub owner: Option<NodeId>,
    /// Incremented at every placement; fences reports from stale owners.
    pub epoch: u64,
    pub state: TaskState,
    /// Sequence number of the latest checkpoint stored in the registry.
    pub checkpoint_seq: Option<u64>,
    pub fuel_used: u64,
    pub exit_code: Option<i32>,
    pub failure: Option<String>,
}

/// A change to the task table; persisted in the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    Submitted {
        id: TaskId,
        spec: TaskSpec,
    },
    Placed {
        id: TaskId,
        worker: NodeId,
        epoch: u64,
    },
    Checkpointed {
        id: TaskId,
        seq: u64,
        fuel_used: u64,
    },
    Finished {
        id: TaskId,
        outcome: Outcome,
        fuel_used: u64,
    },
    Cancelled {
        id: TaskId,
    },
    /// `Submitted` with [`TaskOptions`]. New variants go at the end: postcard
    /// numbers variants by position, and v1 logs must keep decoding.
    SubmittedWith {
        id: TaskId,
        spec: TaskSpec,
        #[serde(with = "options_v1")]
        options: TaskOptions,
    },
    /// A running task lost its worker and no other could take it: it waits
    /// as pending and resumes from its last checkpoint when placed.
    Requeued {
        id: TaskId,
    },
    /// `SubmittedWith` carrying `stdin` too (logs before file trees).
    SubmittedV3 {
        id: TaskId,
        spec: TaskSpec,
        #[serde(with = "options_v3")]
        options: TaskOptions,
    },
    /// Every option of today, file trees included: what a submission logs
    /// now.
    SubmittedV4 {
        id: TaskId,
        spec: TaskSpec,
        options: TaskOptions,
    },
}

// --- nodes -----------------------------------------------------------------

/// What a node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Runs tasks; has task slots and receives placements.
    Worker,
    /// Receives the live stream of events; never runs tasks.
    Monitor,
    /// One of several coordinators replicated on etcd: listed by `wmig
    /// nodes`, never registered as a member.
    Coordinator,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Monitor => "monitor",
            Role::Coordinator => "coordinator",
        })
    }
}

/// What a node says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique among live nodes; also the node's id.
    pub name: NodeId,
    pub role: Role,
    /// How many tasks the node runs at once (0 for monitors).
    pub slots: u32,
    /// Free-form `key=value` labels, for placement constraints later.
    pub labels: BTreeMap<String, String>,
    /// Where the node accepts QUIC connections.
    pub addr: String,
    /// The node's OS process id, shown by `wmig nodes`; with `addr` it tells a
    /// reconnecting process apart from a second process using the same name.
    pub pid: u32,
}

/// Whether the failure detector currently believes a node is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Online,
    Offline,
}

/// A change to the node table; persisted in the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipEvent {
    /// A new name joined.
    Joined(NodeInfo),
    /// A known node is online again: after a heartbeat (`info: None`) or a
    /// re-registration, which may update its address, pid, slots or labels.
    Recovered {
        node: NodeId,
        info: Option<NodeInfo>,
    },
    /// The node was silent past the offline timeout.
    Offline(NodeId),
    /// The worker takes no new tasks.
    Drained(NodeId),
    /// The worker takes new tasks again.
    Uncordoned(NodeId),
    /// An operator removed the (offline) node from the table.
    Removed(NodeId),
}

// --- placement and the event log ---------------------------------------------

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

/// One record of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Node(MembershipEvent),
    Task(TaskEvent),
}

mod describe;
