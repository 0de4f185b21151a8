//! `wmig run`: run a module locally with pausable yield points; flags follow
//! `wasmtime run` (`--dir HOST::GUEST`, `--env KEY=VALUE`, arguments after
//! the module go to the guest, the exit code is the guest's).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use wmig_host::local::{self, Finish, LocalOptions, RunStats, SinkFactory, WasiSpec};
use wmig_host::task::DEFAULT_YIELD_FUEL;
use wmig_host::wasi::OutputSink;
use wmig_host::{HostError, RuntimeConfig};

/// Options shared by `run` and `resume`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Grant access to a host directory: `HOST::GUEST`, or `DIR` for the same path in both.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    pub dirs: Vec<String>,
    /// Fuel between host-visible yields (one unit = a loop iteration or recursive call).
    #[arg(long, value_name = "F", default_value_t = DEFAULT_YIELD_FUEL)]
    pub yield_fuel: u32,
    /// Stop the task (as a trap) once it has used this much fuel in total.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Largest size the guest's memory may grow to, in bytes (suffixes K, M, G allowed).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory_size: Option<usize>,
    /// Checkpoint at every N-th host-visible yield.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// After each checkpoint, drop the instance and continue from the
    /// checkpoint in a fresh engine and store (a local migration).
    #[arg(long, requires = "checkpoint_every")]
    pub restore_each_checkpoint: bool,
    /// Write run statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Do not use the on-disk rewrite and compiled-module caches.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunCommand {
    /// Pass an environment variable to the guest: `KEY=VALUE`, or `KEY` to copy it from this process.
    #[arg(long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// At the N-th host-visible yield, write a checkpoint to --checkpoint-out and exit 0.
    #[arg(long, value_name = "N", requires = "checkpoint_out")]
    stop_at: Option<u64>,
    /// Where --stop-at writes its checkpoint.
    #[arg(long, value_name = "FILE", requires = "stop_at")]
    checkpoint_out: Option<PathBuf>,
    #[command(flatten)]
    opts: RunOptions,
    /// The module, then the arguments passed to the guest.
    #[arg(
        required = true,
        allow_hyphen_values = true,
        value_name = "MODULE [ARGS]..."
    )]
    module_and_args: Vec<String>,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let Some((module, args)) = self.module_and_args.split_first() else {
            bail!("no module given: usage is `wmig run [OPTIONS] MODULE [ARGS]...`");
        };
        let wasm = read_module(Path::new(module))?;
        let mut argv = vec![argv0(module)];
        argv.extend(args.iter().cloned());
        let spec = WasiSpec {
            args: argv,
            env: parse_env(&self.env)?,
            preopens: parse_dirs(&self.opts.dirs)?,
            inherit_stdin: true,
        };
        let mut options = self.opts.local_options();
        prepare(module, &wasm, &options.runtime)?;
        options.stop_at = self.stop_at;
        options.checkpoint_out = self.checkpoint_out;
        let stats_json = self.opts.stats_json.clone();
        let result = wmig_host::on_guest_thread(move || {
            local::run_local(&wasm, &spec, &passthrough(), &options)
        })?;
        finish(result, stats_json.as_deref())
    }
}

impl RunOptions {
    pub fn local_options(&self) -> LocalOptions {
        LocalOptions {
            yield_fuel: self.yield_fuel,
            fuel_limit: self.fuel,
            memory_limit: self.max_memory_size,
            checkpoint_every: self.checkpoint_every,
            restore_each_checkpoint: self.restore_each_checkpoint,
            stop_at: None,
            checkpoint_out: None,
            runtime: if self.no_cache {
                RuntimeConfig { cache_dir: None }
            } else {
                RuntimeConfig::default()
            },
        }
    }
}

/// A module seen for the first time is rewritten and compiled before its first
/// instruction (seconds for a large module); say so rather than sit silent.
/// The result lands in the on-disk caches, which the run then reads.
pub fn prepare(name: &str, wasm: &[u8], runtime: &RuntimeConfig) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if runtime.cache_dir.is_none() || wmig_host::Runtime::is_cached(runtime, wasm) {
        return Ok(());
    }
    let rt = wmig_host::Runtime::new(runtime.clone())?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner().with_message(format!(
            "preparing {name} ({:.1} MB) to be pausable: rewrite + compile, once per module",
            wasm.len() as f64 / 1e6
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let start = std::time::Instant::now();
    let loaded = rt.load(wasm);
    if let Some(bar) = bar {
        bar.finish_and_clear();
        if loaded.is_ok() {
            eprintln!(
                "prepared {name} in {:.1} s (cached for the next runs)",
                start.elapsed().as_secs_f64()
            );
        }
    }
    // An error here is reported by the run itself, with its usual wording.
    Ok(())
}

/// Turn a driver result into the process exit code, as `wasmtime run` does:
/// the guest's code, or 134 (SIGABRT's) after printing a trap.
pub fn finish(
    result: Result<(Finish, RunStats), HostError>,
    stats_json: Option<&Path>,
) -> anyhow::Result<i32> {
    let (finish, stats) = match result {
        Ok(r) => r,
        Err(e @ (HostError::Trap(_) | HostError::FuelExhausted { .. })) => {
            eprintln!("Error: {e}");
            return Ok(134);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = stats_json {
        let json = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing --stats-json to {}", path.display()))?;
    }
    Ok(match finish {
        Finish::Exited(code) => code,
        Finish::Stopped { path, yields } => {
            eprintln!("checkpoint at yield {yields} written to {}", path.display());
            0
        }
    })
}

/// Read a module; like `wasmtime run`, WebAssembly text is accepted too (it
/// is converted to binary, and the binary is what checkpoints name).
pub fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    match wat::parse_bytes(&bytes) {
        Ok(binary) => Ok(binary.into_owned()),
        // Neither binary nor text: let validation name the problem.
        Err(_) => Ok(bytes),
    }
}

/// `wasmtime run` passes the module's file name (not its path) as argv[0].
fn argv0(module: &str) -> String {
    Path::new(module)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| module.to_string())
}

pub fn parse_dirs(dirs: &[String]) -> anyhow::Result<Vec<(PathBuf, String)>> {
    dirs.iter()
        .map(|d| {
            let (host, guest) = match d.split_once("::") {
                Some((h, g)) => (h, g),
                None => (d.as_str(), d.as_str()),
            };
            let host = PathBuf::from(host);
            if !host.is_dir() {
                bail!("--dir {d}: {} is not a directory", host.display());
            }
            Ok((host, guest.to_string()))
        })
        .collect()
}

fn parse_env(env: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => std::env::var(e)
                .map(|v| (e.clone(), v))
                .with_context(|| format!("--env {e}: no such variable in this environment")),
        })
        .collect()
}

pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size: use bytes or a number with K, M or G"))
}

/// Guest output goes straight to this process's stdout and stderr.
pub fn passthrough() -> SinkFactory {
    Arc::new(|| {
        (
            Box::new(StdSink(false)) as Box<dyn OutputSink>,
            Box::new(StdSink(true)) as Box<dyn OutputSink>,
        )
    })
}

struct StdSink(bool);

impl OutputSink for StdSink {
    /// A guest on a real terminal sees a character device, as under wasmtime.
    fn is_terminal(&self) -> bool {
        use std::io::IsTerminal;
        if self.0 {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.0 {
            let mut e = std::io::stderr().lock();
            e.write_all(bytes)?;
            e.flush()
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(bytes)?;
            o.flush()
        }
    }
}
