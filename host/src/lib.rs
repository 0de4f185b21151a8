//! The wmig worker runtime core: run an instrumented wasm32-wasip1 module in
//! wasmtime, pause it at any host-visible yield point, capture it as a
//! checkpoint and restore it into a brand-new engine, store and instance.
//!
//! - [`engine`]: the wasmtime engine, rewrite and compiled-module caches.
//! - [`task`]: one running task and the yield import that pauses it.
//! - [`snapshot`]: capture to and restore from a checkpoint manifest.
//! - [`chunks`]: memory as content-addressed 64 KiB chunks.
//! - [`files`]: preopened directories as trees of the same chunks.
//! - [`live`]: live migration at page grain (dirty rounds out, an
//!   instance filled ahead of the pause in).
//! - [`local`]: the `wmig run` / `wmig resume` drivers (checkpoint every N
//!   yields, restore after each, stop and write a checkpoint file).
//! - [`baseline`]: the same module under plain wasmtime + wasmtime-wasi, the
//!   reference for behaviour and speed.

pub mod baseline;
pub mod chunks;
mod dirty;
pub mod engine;
pub mod files;
pub mod live;
pub mod local;
pub mod snapshot;
pub mod task;

pub use chunks::{ChunkSink, ChunkSource, MemChunks};
pub use engine::{on_guest_thread, PreparedModule, Runtime, RuntimeConfig};
pub use live::{Incoming, LiveFinal, PageBuf};
pub use snapshot::{CaptureMeta, Captured};
pub use task::{LiveUsage, Outcome, PauseReason, Pauser, Task, TaskConfig, UsageReading};
pub use wmig_rewrite::REWRITER_VERSION;
pub use wmig_wasi as wasi;

use wmig_proto::Hash;

/// Everything that can go wrong running, capturing or restoring a task.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Rewrite(#[from] wmig_rewrite::RewriteError),
    #[error(transparent)]
    Wasi(#[from] wmig_wasi::WasiError),
    #[error(transparent)]
    Checkpoint(#[from] wmig_proto::checkpoint::CheckpointError),
    #[error("{0}")]
    Engine(String),
    /// The guest trapped; the message is wasmtime's, with the wasm backtrace.
    #[error("{0}")]
    Trap(String),
    #[error("task ran out of fuel: it used its whole limit of {limit} (raise --fuel)")]
    FuelExhausted { limit: u64 },
    #[error("task has already finished")]
    Finished,
    #[error("task is not paused at a yield point, so it cannot be captured")]
    NotPaused,
    #[error(
        "checkpoint belongs to module {checkpoint}, not to {module}: resume it with the module it was taken from"
    )]
    WrongModule { checkpoint: Hash, module: Hash },
    #[error(
        "checkpoint was taken with rewriter version {checkpoint}, this wmig has version {ours}: resume it with the wmig release that wrote it"
    )]
    WrongRewriter { checkpoint: u32, ours: u32 },
    #[error("checkpoint was taken from a different instrumentation of this module (another wmig build): resume it with the wmig build that wrote it")]
    WrongInstrumentation,
    #[error("checkpoint is missing chunk {0}")]
    MissingChunk(Hash),
    #[error("checkpoint is corrupt: {0}")]
    Corrupt(String),
    /// The cause is the error's source, so `{:#}` prints it once.
    #[error("{}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl HostError {
    pub(crate) fn corrupt(msg: String) -> Self {
        HostError::Corrupt(msg)
    }
}
