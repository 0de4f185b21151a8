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
    /// Serve and inspect the registry of bundles and checkpoints.
    Registry(cmd::registry::RegistryCommand),
    /// Upload a wasm module to the registry and print its hash.
    Upload(cmd::upload::UploadCommand),
}

impl Command {
    fn execute(self) -> anyhow::Result<i32> {
        match self {
            Command::Run(c) => c.execute(),
            Command::Resume(c) => c.execute(),
            Command::Init(c) => c.execute(),
            Command::Registry(c) => c.execute(),
            Command::Upload(c) => c.execute(),
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
    let cli = Cli::parse();
    match cli.command.execute() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
