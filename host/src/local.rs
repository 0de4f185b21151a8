//! The single-process drivers behind `wmig run` and `wmig resume`.
//!
//! `--checkpoint-every N` pauses at every N-th host-visible yield and
//! captures the task; with `--restore-each-checkpoint` the instance is then
//! dropped and the task continues from the checkpoint in a brand-new
//! `Runtime` (engine), store and instance — a local migration at every
//! checkpoint. `--stop-at N` writes a self-contained checkpoint file at the
//! N-th yield and stops; [`resume_local`] continues such a file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use wmig_proto::checkpoint::{CheckpointFile, Manifest};
use wmig_wasi::{OutputSink, Preopen, WasiConfig};

use crate::chunks::MemChunks;
use crate::engine::{Runtime, RuntimeConfig};
use crate::snapshot::CaptureMeta;
use crate::task::{Outcome, Task, TaskConfig, DEFAULT_YIELD_FUEL};
use crate::HostError;

/// Builds the stdout and stderr sinks of a (re)started task.
pub type SinkFactory = Arc<dyn Fn() -> (Box<dyn OutputSink>, Box<dyn OutputSink>) + Send + Sync>;

/// The guest's view of the world, as on the `wasmtime run` command line.
#[derive(Clone, Debug, Default)]
pub struct WasiSpec {
    /// argv, argv[0] (the module's name) included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<(PathBuf, String)>,
    /// Pass the process's stdin to the guest (else the guest reads EOF).
    pub inherit_stdin: bool,
}

impl WasiSpec {
    pub fn config(&self, sinks: &SinkFactory) -> WasiConfig {
        let (stdout, stderr) = sinks();
        WasiConfig {
            args: self.args.clone(),
            env: self.env.clone(),
            preopens: self
                .preopens
                .iter()
                .map(|(host, guest)| Preopen {
                    host: host.clone(),
                    guest: guest.clone(),
                })
                .collect(),
            stdin: if self.inherit_stdin {
                wmig_wasi::Stdin::reader(std::io::stdin())
            } else {
                wmig_wasi::Stdin::empty()
            },
            stdout,
            stderr,
        }
    }
}

/// Options of a local run.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub yield_fuel: u32,
    pub fuel_limit: Option<u64>,
    pub memory_limit: Option<usize>,
    pub checkpoint_every: Option<u64>,
    pub restore_each_checkpoint: bool,
    /// Write a checkpoint at this yield and stop (needs `checkpoint_out`).
    pub stop_at: Option<u64>,
    pub checkpoint_out: Option<PathBuf>,
    pub runtime: RuntimeConfig,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            yield_fuel: DEFAULT_YIELD_FUEL,
            fuel_limit: None,
            memory_limit: None,
            checkpoint_every: None,
            restore_each_checkpoint: false,
            stop_at: None,
            checkpoint_out: None,
            runtime: RuntimeConfig::default(),
        }
    }
}

/// What `--stats-json` reports.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunStats {
    pub yields: u64,
    pub checkpoints: u64,
    pub restores: u64,
    pub fuel: u64,
    /// Bytes each checkpoint produced (manifest + chunks not already held).
    pub checkpoint_bytes: u64,
    /// Total time spent capturing, in ms.
    pub checkpoint_ms: f64,
    /// Total time spent restoring into fresh engines, in ms.
    pub restore_ms: f64,
    /// Which unwind transform the module runs under: `wmig` (rewriter 3's
    /// own) or `asyncify` (older rewriters, or a module rewriter 3 does not
    /// cover).
    pub unwind: String,
}

/// How a local run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The guest exited with this code.
    Exited(i32),
    /// Stopped at `--stop-at`; the checkpoint is in this file.
    Stopped { path: PathBuf, yields: u64 },
}

/// Run `wasm` from the start.
pub fn run_local(
    wasm: &[u8],
    spec: &WasiSpec,
    sinks: &SinkFactory,
    opts: &LocalOptions,
) -> Result<(Finish, RunStats), HostError> {
    let rt = Runtime::new(opts.runtime.clone())?;
    let module = rt.load(wasm)?;
    let task = Task::start(&rt, &module, task_config(spec.config(sinks), opts))?;
    let (finish, mut stats) = drive(task, wasm, spec, sinks, opts, 0)?;
    stats.unwind = module.unwind_transform().to_string();
    Ok((finish, stats))
}

/// Continue the checkpoint `file` of `wasm`. Output already produced before
/// the checkpoint is not repeated.
pub fn resume_local(
    wasm: &[u8],
    file: &CheckpointFile,
    spec: &WasiSpec,
    sinks: &SinkFactory,
    opts: &LocalOptions,
) -> Result<(Finish, RunStats), HostError> {
    let start = Instant::now();
    let rt = Runtime::new(opts.runtime.clone())?;
    let module = rt.load_version(wasm, file.manifest.rewriter)?;
    let task = Task::restore(
        &rt,
        &module,
        task_config(spec.config(sinks), opts),
        &file.manifest,
        file,
    )?;
    let mut stats_base = RunStats {
        restores: 1,
        restore_ms: start.elapsed().as_secs_f64() * 1e3,
        ..RunStats::default()
    };
    let (finish, stats) = drive(task, wasm, spec, sinks, opts, file.manifest.seq)?;
    stats_base.yields = stats.yields;
    stats_base.fuel = stats.fuel;
    stats_base.checkpoints = stats.checkpoints;
    stats_base.checkpoint_bytes = stats.checkpoint_bytes;
    stats_base.checkpoint_ms = stats.checkpoint_ms;
    stats_base.restores += stats.restores;
    stats_base.restore_ms += stats.restore_ms;
    stats_base.unwind = module.unwind_transform().to_string();
    Ok((finish, stats_base))
}

fn task_config(wasi: WasiConfig, opts: &LocalOptions) -> TaskConfig {
    let every = opts.checkpoint_every.filter(|n| *n > 0);
    let stop_at = opts.stop_at;
    let mut config = TaskConfig::new(wasi);
    config.yield_fuel = opts.yield_fuel;
    config.fuel_limit = opts.fuel_limit;
    config.memory_limit = opts.memory_limit;
    config.honor_guest_checkpoints = every.is_some();
    config.policy = Some(Box::new(move |yields| {
        every.is_some_and(|n| yields % n == 0) || stop_at == Some(yields)
    }));
    config
}

/// Run `task` to the end, applying the checkpoint options. A `Task` owns
/// everything it runs on (its store holds the engine, it holds its module), so
/// each restore simply replaces it.
fn drive(
    mut task: Task,
    wasm: &[u8],
    spec: &WasiSpec,
    sinks: &SinkFactory,
    opts: &LocalOptions,
    mut seq: u64,
) -> Result<(Finish, RunStats), HostError> {
    let mut stats = RunStats::default();
    let mut chunks = MemChunks::new();
    loop {
        let outcome = task.run();
        let counters = task.counters();
        stats.yields = counters.yields;
        stats.fuel = counters.fuel;
        match outcome? {
            Outcome::Exited(code) => {
                if let Some(n) = opts.stop_at {
                    tracing::warn!(
                        "the task finished after {} yields, before --stop-at {n}; no checkpoint was written",
                        counters.yields
                    );
                }
                return Ok((Finish::Exited(code), stats));
            }
            Outcome::Paused(_) => {
                seq += 1;
                let captured = task.capture(
                    &mut chunks,
                    CaptureMeta {
                        task: None,
                        seq,
                        epoch: 0,
                    },
                )?;
                let hashes = captured.manifest.chunk_hashes();
                chunks.retain(&hashes);
                let encoded = postcard::to_allocvec(&captured.manifest).map_err(|e| {
                    HostError::Engine(format!("encoding the checkpoint manifest: {e}"))
                })?;
                stats.checkpoints += 1;
                stats.checkpoint_ms += captured.millis;
                stats.checkpoint_bytes += captured.cost.copied + encoded.len() as u64;

                if opts.stop_at == Some(counters.yields) {
                    let path = opts.checkpoint_out.clone().ok_or_else(|| {
                        HostError::Engine("--stop-at needs --checkpoint-out FILE".into())
                    })?;
                    let file = CheckpointFile {
                        manifest: captured.manifest,
                        chunks: chunks.export(&hashes),
                    };
                    write_checkpoint(&path, &file)?;
                    return Ok((
                        Finish::Stopped {
                            path,
                            yields: counters.yields,
                        },
                        stats,
                    ));
                }
                if opts.restore_each_checkpoint {
                    let start = Instant::now();
                    // Round-trip the manifest through its encoding and start
                    // over with a new engine: nothing survives but the checkpoint.
                    let manifest: Manifest = postcard::from_bytes(&encoded)
                        .map_err(|e| HostError::corrupt(format!("manifest did not decode: {e}")))?;
                    drop(task);
                    let rt = Runtime::new(opts.runtime.clone())?;
                    let module = rt.load_version(wasm, manifest.rewriter)?;
                    task = Task::restore(
                        &rt,
                        &module,
                        task_config(spec.config(sinks), opts),
                        &manifest,
                        &chunks,
                    )?;
                    stats.restores += 1;
                    stats.restore_ms += start.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
    }
}

/// Write a checkpoint file atomically (temp file + fsync + rename).
pub fn write_checkpoint(path: &std::path::Path, file: &CheckpointFile) -> Result<(), HostError> {
    use std::io::Write;
    let io = |source| HostError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = file.encode()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    // A checkpoint is a user's file: readable like any other output, not 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Read and fully verify a checkpoint file.
pub fn read_checkpoint(path: &std::path::Path) -> Result<CheckpointFile, HostError> {
    let bytes = std::fs::read(path).map_err(|source| HostError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(CheckpointFile::decode(&bytes)?)
}
