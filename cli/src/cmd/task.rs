//! Operator commands about tasks: `submit`, `ps`, `inspect`, `logs`,
//! `wait`, `cancel`, `input`, `migrate`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use wmig_coordinator::wire::{ControlRequest, ControlResponse, Stream, TaskView};
use wmig_coordinator::{ControlClient, Placement, TaskOptions, TaskSpec, TaskState};
use wmig_proto::checkpoint::seq_label;
use wmig_proto::wire::registry::BundleRef;
use wmig_proto::{Hash, NodeId, TaskId};

use crate::cmd::control::{ago, parse_key_value, ControlTarget};
use crate::cmd::registry::{parse_duration, runtime, Target};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Policy {
    LeastLoaded,
    RoundRobin,
    Random,
}

#[derive(clap::Args)]
pub struct SubmitCommand {
    /// A wasm file (uploaded first), a bundle hash, or NAME[:TAG].
    bundle: String,
    /// Run it on this worker.
    #[arg(long)]
    on: Option<String>,
    /// How to choose a worker when --on is not given.
    #[arg(long, value_enum, default_value = "least-loaded")]
    policy: Policy,
    /// An environment variable for the guest, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Give the task a directory as data: LOCAL::GUEST or DIR. The local
    /// directory is uploaded; the task works on its own copy wherever it
    /// runs, and its changes travel with its checkpoints (`wmig files`).
    #[arg(long = "dir")]
    dirs: Vec<String>,
    /// Preopen a path of the worker's own machine instead: HOST::GUEST or
    /// DIR. Its files do not travel, so the task must be pinned (--on) and
    /// cannot be migrated.
    #[arg(long = "host-dir")]
    host_dirs: Vec<String>,
    /// Most bytes the task's --dir files may take, all directories
    /// together (default 1G).
    #[arg(long, value_parser = crate::cmd::run::parse_size)]
    files_limit: Option<usize>,
    /// Memory limit (bytes, or with K/M/G).
    #[arg(long, value_parser = crate::cmd::run::parse_size)]
    max_memory_size: Option<usize>,
    /// Total fuel before the task fails.
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock limit (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Checkpoint period (default: the worker's).
    #[arg(long, value_parser = parse_duration)]
    checkpoint_every: Option<Duration>,
    /// The task reads input on stdin, sent with `wmig input TASK` while it
    /// runs (it waits for it, wherever it runs); without this flag its
    /// stdin is empty.
    #[arg(long)]
    stdin: bool,
    /// Registry address for uploads and names (default: config.toml).
    #[arg(long, env = "WMIG_REGISTRY")]
    registry: Option<String>,
    #[command(flatten)]
    target: ControlTarget,
    /// Arguments for the guest (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

impl SubmitCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(self.run())
    }

    async fn run(self) -> anyhow::Result<i32> {
        anyhow::ensure!(
            self.host_dirs.is_empty() || self.on.is_some(),
            "--host-dir names a path on one worker's machine: pin the task there with --on WORKER, \
             or use --dir to have the directory travel with the task"
        );
        let (bundle, name) = self.resolve_bundle().await?;
        let mut dirs = Vec::new();
        for d in &self.host_dirs {
            let (host, guest) = d.split_once("::").unwrap_or((d.as_str(), d.as_str()));
            // The worker runs elsewhere: give it an absolute path.
            let host = std::fs::canonicalize(host)
                .with_context(|| format!("--host-dir {d}: no directory `{host}` here"))?;
            dirs.push((host.display().to_string(), guest.to_owned()));
        }
        let files_limit = self.files_limit.map(|b| b as u64);
        let trees = if self.dirs.is_empty() {
            Vec::new()
        } else {
            let registry = Target::new(self.registry.clone(), self.target.cluster.clone());
            let client = registry.connect().await?;
            let mut budget = files_limit.unwrap_or(wmig_proto::files::DEFAULT_FILES_LIMIT);
            let mut trees = Vec::new();
            for d in &self.dirs {
                let (local, guest) = d.split_once("::").unwrap_or((d.as_str(), d.as_str()));
                let up = crate::cmd::files::upload_tree(&client, Path::new(local), &mut budget)
                    .await
                    .with_context(|| format!("--dir {d}"));
                let (hash, tree) = match up {
                    Ok(t) => t,
                    Err(e) => {
                        client.close().await;
                        return Err(e);
                    }
                };
                eprintln!(
                    "uploaded {local} for {guest}: {} files, {}",
                    tree.files().count(),
                    crate::cmd::registry::human(tree.bytes())
                );
                trees.push((hash, guest.to_owned()));
            }
            client.close().await;
            trees
        };
        let mut args = vec![name.clone()];
        args.extend(self.args.iter().cloned());
        let placement = match (&self.on, self.policy) {
            (Some(w), _) => Placement::Pinned(NodeId(w.clone())),
            (None, Policy::LeastLoaded) => Placement::LeastLoaded,
            (None, Policy::RoundRobin) => Placement::RoundRobin,
            (None, Policy::Random) => Placement::Random,
        };
        let req = ControlRequest::Submit {
            spec: TaskSpec {
                bundle,
                args,
                env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            options: TaskOptions {
                name,
                dirs,
                memory_limit: self.max_memory_size.map(|b| b as u64),
                fuel_limit: self.fuel,
                wall_limit_ms: self.timeout.map(|d| d.as_millis() as u64),
                checkpoint_every_ms: self.checkpoint_every.map(|d| d.as_millis() as u64),
                stdin: self.stdin,
                trees,
                files_limit,
            },
            placement,
        };
        let client = self.target.connect().await?;
        let answer = client.ask(&req).await;
        client.close();
        match answer.context("the coordinator refused the task")? {
            ControlResponse::Submitted { task, worker } => {
                match worker {
                    Some(w) => eprintln!("submitted {task} to {w}"),
                    None => eprintln!(
                        "submitted {task}; every worker is busy, it starts when a slot frees up"
                    ),
                }
                println!("{task}");
                Ok(0)
            }
            other => anyhow::bail!("unexpected answer to Submit: {other:?}"),
        }
    }

    /// The bundle's hash and the name shown by `ps` (also the guest's argv[0]).
    async fn resolve_bundle(&self) -> anyhow::Result<(Hash, String)> {
        let registry = Target::new(self.registry.clone(), self.target.cluster.clone());
        let path = Path::new(&self.bundle);
        if path.is_file() {
            let wasm = std::fs::read(path)
                .with_context(|| format!("could not read {}", path.display()))?;
            let client = registry.connect().await?;
            let stored = client.upload_bundle(&wasm, None).await;
            client.close().await;
            let stored = stored.with_context(|| format!("could not upload {}", path.display()))?;
            let name = path
                .file_name()
                .map_or_else(|| self.bundle.clone(), |n| n.to_string_lossy().into_owned());
            if stored.created {
                // The worker's preparation happens out of sight of this
                // command: say that the first start takes longer, and why.
                eprintln!(
                    "uploaded {name} ({} KiB), new to the cluster: a worker prepares it once \
                     (rewrite + compile, seconds for a large module) before its first run there",
                    stored.len.div_ceil(1024)
                );
            }
            return Ok((stored.hash, name));
        }
        if self.bundle.ends_with(".wasm") || self.bundle.ends_with(".wat") {
            anyhow::bail!(
                "no file `{}`: pass a wasm file, a bundle hash or NAME[:TAG]",
                self.bundle
            );
        }
        let wanted: BundleRef = self.bundle.parse().map_err(|e| {
            anyhow::anyhow!(
                "`{}` is neither a file nor a bundle hash or NAME[:TAG]: {e}",
                self.bundle
            )
        })?;
        let client = registry.connect().await?;
        let bundles = client.list_bundles().await;
        client.close().await;
        let found = bundles?.into_iter().find(|b| match &wanted {
            BundleRef::Hash(h) => b.hash == *h,
            BundleRef::Name(n) => b.names.contains(n),
        });
        match found {
            Some(b) => Ok((b.hash, wanted.to_string())),
            None => anyhow::bail!(
                "unknown bundle `{wanted}`: upload it with `wmig upload FILE.wasm --name NAME`, \
                 or see `wmig registry ls`"
            ),
        }
    }
}

#[derive(clap::Args)]
pub struct PsCommand {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: ControlTarget,
}

pub(crate) use wmig_coordinator::server::api::task_json;

impl PsCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let tasks = self.target.with_client(async |c| Ok(c.tasks().await?))?;
        if self.json {
            let all: Vec<_> = tasks.iter().map(task_json).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(0);
        }
        if tasks.is_empty() {
            eprintln!("no tasks; `wmig submit FILE.wasm` starts one");
            return Ok(0);
        }
        println!(
            "{:<8} {:<10} {:<12} {:>5} {:>6} {:>12}  NAME",
            "TASK", "STATE", "WORKER", "EPOCH", "CKPT", "OUTPUT"
        );
        for t in &tasks {
            let state = match (t.state, t.exit_code) {
                (TaskState::Completed, Some(c)) if c != 0 => format!("exit {c}"),
                (s, _) => s.to_string(),
            };
            println!(
                "{:<8} {:<10} {:<12} {:>5} {:>6} {:>12}  {}",
                t.id.to_string(),
                state,
                t.owner.as_ref().map_or("-", |o| o.0.as_str()),
                t.epoch,
                t.checkpoint_seq.map_or("-".to_owned(), seq_label),
                crate::cmd::registry::human(t.stdout_bytes + t.stderr_bytes),
                t.name
            );
        }
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct InspectCommand {
    task: TaskId,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: ControlTarget,
}

impl InspectCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let t = self
            .target
            .with_client(async |c| Ok(c.task(self.task).await?))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&task_json(&t))?);
            return Ok(0);
        }
        println!("task        {}", t.id);
        println!("name        {}", t.name);
        println!("bundle      {}", t.bundle);
        println!("args        {}", t.args.join(" "));
        println!("state       {}", t.state);
        println!(
            "owner       {}",
            t.owner.as_ref().map_or("-", |o| o.0.as_str())
        );
        println!("epoch       {}", t.epoch);
        println!(
            "checkpoint  {}",
            t.checkpoint_seq
                .map_or("none yet".to_owned(), |s| format!("#{}", seq_label(s)))
        );
        println!("fuel used   {}", t.fuel_used);
        if let Some(m) = t.memory_bytes {
            println!("memory      {}", crate::cmd::registry::human(m));
        }
        if let (Some(b), Some(limit)) = (t.files_bytes, t.files_limit) {
            println!(
                "files       {} of {} limit",
                crate::cmd::registry::human(b),
                crate::cmd::registry::human(limit)
            );
        }
        if let Some((done, total)) = t.progress {
            println!("progress    {done} of {total}");
        }
        println!(
            "output      {} B stdout, {} B stderr",
            t.stdout_bytes, t.stderr_bytes
        );
        if let Some(c) = t.exit_code {
            println!("exit code   {c}");
        }
        if let Some(f) = &t.failure {
            println!("failure     {f}");
        }
        if let (Some(us), false) = (t.started_us, t.state.is_terminal()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            println!("running for {}", ago(now.saturating_sub(us) / 1000));
        }
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct LogsCommand {
    task: TaskId,
    /// Keep printing new output until the task ends.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    target: ControlTarget,
}

impl LogsCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        self.target
            .with_client(async |c| stream_logs(c, self.task, self.follow).await)?;
        Ok(0)
    }
}

/// Copy a task's output to our stdout/stderr; returns the task as it was
/// when the stream ended.
pub(crate) async fn stream_logs(
    client: &ControlClient,
    task: TaskId,
    follow: bool,
) -> anyhow::Result<TaskView> {
    let mut sub = client
        .subscribe(&ControlRequest::Logs {
            task,
            stdout_from: 0,
            stderr_from: 0,
            follow,
        })
        .await?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    loop {
        match sub.next().await? {
            Some(ControlResponse::Output(chunk)) => {
                match chunk.stream {
                    Stream::Stdout => out.write_all(&chunk.bytes)?,
                    Stream::Stderr => err.write_all(&chunk.bytes)?,
                }
                out.flush()?;
            }
            Some(ControlResponse::Ended(view)) => return Ok(*view),
            Some(other) => anyhow::bail!("unexpected message on the logs stream: {other:?}"),
            None => anyhow::bail!("the coordinator closed the logs stream early"),
        }
    }
}

#[derive(clap::Args)]
pub struct WaitCommand {
    task: TaskId,
    /// Give up after this long (e.g. 30s, 10m); exit code 124, like timeout(1).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    target: ControlTarget,
}

impl WaitCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let t = runtime()?.block_on(async {
            let client = self.target.connect().await?;
            let t = match self.timeout {
                Some(limit) => match tokio::time::timeout(limit, client.wait(self.task)).await {
                    Ok(t) => t.map(Some),
                    Err(_) => Ok(None),
                },
                None => client.wait(self.task).await.map(Some),
            };
            client.close();
            anyhow::Ok(t?)
        })?;
        match t {
            Some(t) => Ok(exit_code_of(&t)),
            None => {
                eprintln!(
                    "{} has not ended after {:?}; `wmig inspect {}` shows where it is",
                    self.task,
                    self.timeout.unwrap_or_default(),
                    self.task
                );
                Ok(124)
            }
        }
    }
}

/// What `wmig wait` exits with: the guest's code, 1 for a failure without
/// one, 130 for a cancelled task (as a shell reports an interrupted job).
pub(crate) fn exit_code_of(t: &TaskView) -> i32 {
    match t.state {
        TaskState::Completed => t.exit_code.unwrap_or(0),
        TaskState::Failed => {
            eprintln!(
                "{} failed: {}",
                t.id,
                t.failure.as_deref().unwrap_or("no reason given")
            );
            t.exit_code.unwrap_or(1)
        }
        TaskState::Cancelled => {
            eprintln!("{} was cancelled", t.id);
            130
        }
        _ => 1,
    }
}

#[derive(clap::Args)]
pub struct CancelCommand {
    task: TaskId,
    #[command(flatten)]
    target: ControlTarget,
}

impl CancelCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        self.target.with_client(async |c| {
            c.call(&ControlRequest::Cancel { task: self.task }, "Cancel")
                .await
                .with_context(|| format!("could not cancel {}", self.task))
        })?;
        eprintln!("cancelled {}", self.task);
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct InputCommand {
    /// A task submitted with `--stdin`.
    task: TaskId,
    /// Send this file (default: this command's own stdin, as it arrives).
    file: Option<std::path::PathBuf>,
    /// Leave the task's input open afterwards (more may follow); by default
    /// the task reads end of file after these bytes.
    #[arg(long)]
    keep_open: bool,
    #[command(flatten)]
    target: ControlTarget,
}

/// Bytes per input message.
const INPUT_CHUNK: usize = 64 * 1024;

impl InputCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let mut source: Box<dyn std::io::Read + Send> = match &self.file {
            Some(path) => Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("could not open {}", path.display()))?,
            ),
            None => Box::new(std::io::stdin()),
        };
        // Reads block; they happen on a thread of their own so that a slow
        // producer (a pipe) streams to the task as it writes.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        std::thread::spawn(move || loop {
            let mut buf = vec![0; INPUT_CHUNK];
            match source.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        });
        let task = self.task;
        let close = !self.keep_open;
        let sent = self.target.with_client(async |c| {
            let mut at: Option<u64> = None;
            let mut sent = 0u64;
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk.context("could not read the input to send")?;
                sent += chunk.len() as u64;
                let len = c
                    .send_input(task, at, chunk, false)
                    .await
                    .with_context(|| format!("could not send input to {task}"))?;
                at = Some(len);
            }
            if close {
                c.send_input(task, at, Vec::new(), true)
                    .await
                    .with_context(|| format!("could not close the input of {task}"))?;
            }
            anyhow::Ok(sent)
        })?;
        eprintln!(
            "sent {sent} bytes to {task}{}",
            if close { "; its input is closed" } else { "" }
        );
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct MigrateCommand {
    task: TaskId,
    /// The worker to move it to (see `wmig nodes`).
    worker: String,
    /// Pause at once and move the whole checkpoint during the downtime
    /// (by default the target pre-copies while the task runs).
    #[arg(long)]
    no_precopy: bool,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: ControlTarget,
}

impl MigrateCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let r = self.target.with_client(async |c| {
            c.migrate(self.task, NodeId(self.worker.clone()), !self.no_precopy)
                .await
                .with_context(|| format!("could not migrate {} to {}", self.task, self.worker))
        })?;
        if self.json {
            println!("{}", wmig_coordinator::server::api::migration_json(&r));
        } else {
            println!(
                "migrated {} from {} to {}: downtime {:.1} ms, total {:.1} ms; moved {} before the pause, {} after it",
                r.task,
                r.from,
                r.to,
                r.downtime_ms,
                r.total_ms,
                crate::cmd::registry::human(r.precopy_bytes),
                crate::cmd::registry::human(r.delta_bytes + r.resume_bytes),
            );
            if !r.phases_ms.is_empty() {
                let steps: Vec<String> = r
                    .phases_ms
                    .iter()
                    .map(|(phase, ms)| format!("{phase} {ms:.1}"))
                    .collect();
                println!("  ms after the pause: {}", steps.join(", "));
            }
        }
        Ok(0)
    }
}
