//! `wmig`: the one binary for every role and every operator command.
//!
//! Each subcommand is a clap `Args` struct in `cmd/` with an `execute()` that
//! returns the process exit code, so `wmig run` can exit with the guest's code.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "wmig",
    version,
    about = "WebAssembly task migration",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a wasm32-wasip1 module with pausable yield points (flags follow `wasmtime run`).
    Run(cmd::run::RunCommand),
    /// Continue a checkpoint written by `wmig run --checkpoint-out`.
    Resume(cmd::resume::ResumeCommand),
    /// Create a cluster: a CA and certificates for the registry and the operator.
    Init(cmd::init::InitCommand),
    /// Issue, renew, revoke and list the cluster's certificates (`wmig cert issue NAME --role ROLE --out DIR`).
    Cert(cmd::cert::CertCommand),
    /// Serve and inspect the registry of bundles and checkpoints.
    Registry(cmd::registry::RegistryCommand),
    /// Upload a wasm module to the registry and print its hash.
    Upload(cmd::upload::UploadCommand),
    /// Start an embedded local cluster: registry, coordinator and workers as separate processes.
    Up(cmd::up::UpCommand),
    /// Run the coordinator (control plane).
    Coordinator(cmd::coordinator::CoordinatorCommand),
    /// Run a worker daemon.
    Worker(cmd::worker::WorkerCommand),
    /// Submit a task (a wasm file is uploaded first); prints the task id.
    Submit(cmd::task::SubmitCommand),
    /// List tasks.
    Ps(cmd::task::PsCommand),
    /// Show one task: owner, epoch, checkpoints, fuel used.
    Inspect(cmd::task::InspectCommand),
    /// List or download a task's files (its `--dir` directories).
    Files(cmd::files::FilesCommand),
    /// Print a task's output.
    Logs(cmd::task::LogsCommand),
    /// Wait for a task to end; exits with its exit code.
    Wait(cmd::task::WaitCommand),
    /// Cancel a task.
    Cancel(cmd::task::CancelCommand),
    /// Send input to a task submitted with --stdin (a file, or this command's stdin).
    Input(cmd::task::InputCommand),
    /// Move a running task to another worker; it continues where it stopped.
    Migrate(cmd::task::MigrateCommand),
    /// List nodes: role, state, last heartbeat, tasks, pid.
    Nodes(cmd::nodes::NodesCommand),
    /// Stop placing new tasks on a worker and migrate its tasks away.
    Drain(cmd::nodes::CordonCommand),
    /// Place new tasks on a drained worker again.
    Uncordon(cmd::nodes::CordonCommand),
    /// Forget an offline node (see `wmig nodes`).
    Remove(cmd::nodes::RemoveCommand),
    /// Print the URL of the web dashboard (served by the coordinator).
    Dashboard(cmd::dashboard::DashboardCommand),
    /// Print the coordinator's event log.
    Events(cmd::events::EventsCommand),
    /// Watch the live stream of events, output and statistics (a monitor node).
    Monitor(cmd::events::MonitorCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(cmd::docs::CompletionsCommand),
    /// Print the man page, or write one per command with --out DIR.
    Man(cmd::docs::ManCommand),
}

impl Command {
    fn execute(self) -> anyhow::Result<i32> {
        match self {
            Command::Run(c) => c.execute(),
            Command::Resume(c) => c.execute(),
            Command::Init(c) => c.execute(),
            Command::Cert(c) => c.execute(),
            Command::Registry(c) => c.execute(),
            Command::Upload(c) => c.execute(),
            Command::Up(c) => c.execute(),
            Command::Coordinator(c) => c.execute(),
            Command::Worker(c) => c.execute(),
            Command::Submit(c) => c.execute(),
            Command::Ps(c) => c.execute(),
            Command::Inspect(c) => c.execute(),
            Command::Files(c) => c.execute(),
            Command::Logs(c) => c.execute(),
            Command::Wait(c) => c.execute(),
            Command::Cancel(c) => c.execute(),
            Command::Input(c) => c.execute(),
            Command::Migrate(c) => c.execute(),
            Command::Nodes(c) => c.execute(),
            Command::Drain(c) => c.execute(true),
            Command::Uncordon(c) => c.execute(false),
            Command::Remove(c) => c.execute(),
            Command::Dashboard(c) => c.execute(),
            Command::Events(c) => c.execute(),
            Command::Monitor(c) => c.execute(),
            Command::Completions(c) => c.execute(<Cli as clap::CommandFactory>::command()),
            Command::Man(c) => c.execute(<Cli as clap::CommandFactory>::command()),
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WMIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One module rewrite in a bounded child process that wmig started
    // itself (see `wmig_rewrite::isolate`); not a user command, so it is
    // not in the parser, the help, the completions or the man pages.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, cmd, dir] = argv.as_slice() {
        if cmd == REWRITE_CHILD {
            std::process::exit(wmig_rewrite::isolate::child_main(std::path::Path::new(dir)));
        }
    }
    // Binaryen must not be able to take a worker (or `wmig run`) down.
    wmig_rewrite::isolate::isolate(wmig_rewrite::isolate::Isolation {
        program: self_exe(),
        args: vec![REWRITE_CHILD.into()],
        limits: wmig_rewrite::isolate::Limits::from_env(),
    });
    let cli = Cli::parse();
    match cli.command.execute() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The first argument of a rewrite child (see `main`).
const REWRITE_CHILD: &str = "__wmig-rewrite-child";

/// This executable, even after the file was replaced (a rebuild under a
/// running worker): on Linux `/proc/self/exe` still opens the running image.
fn self_exe() -> std::path::PathBuf {
    let proc = std::path::PathBuf::from("/proc/self/exe");
    if proc.exists() {
        return proc;
    }
    std::env::current_exe().unwrap_or_else(|_| "wmig".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
