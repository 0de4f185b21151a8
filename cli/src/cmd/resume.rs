//! `wmig resume`: continue a checkpoint file in a new process. Only output
//! produced after the checkpoint is printed; the exit code is the guest's.

use std::path::PathBuf;

use wmig_host::local::{self, WasiSpec};

use super::run::{finish, parse_dirs, passthrough, read_module, RunOptions};

#[derive(clap::Args, Debug)]
pub struct ResumeCommand {
    /// The checkpoint file written by `wmig run --stop-at N --checkpoint-out FILE`.
    checkpoint: PathBuf,
    /// The module the checkpoint was taken from.
    #[arg(long, value_name = "MODULE")]
    module: PathBuf,
    #[command(flatten)]
    opts: RunOptions,
}

impl ResumeCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let file = local::read_checkpoint(&self.checkpoint)?;
        let wasm = read_module(&self.module)?;
        // Arguments and environment travel inside the checkpoint.
        let spec = WasiSpec {
            preopens: parse_dirs(&self.opts.dirs)?,
            inherit_stdin: true,
            ..WasiSpec::default()
        };
        let options = self.opts.local_options();
        let stats_json = self.opts.stats_json.clone();
        let result = wmig_host::on_guest_thread(move || {
            local::resume_local(&wasm, &file, &spec, &passthrough(), &options)
        })?;
        finish(result, stats_json.as_deref())
    }
}
