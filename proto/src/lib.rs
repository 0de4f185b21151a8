//! Types every wmig role shares: content hashes, task and node ids, and the
//! persisted checkpoint format.
//!
//! This crate does no IO and knows nothing of tokio, quinn or wasmtime, so the
//! formats can be unit-tested, fuzzed and read by any tool.

pub mod checkpoint;
pub mod frame;
pub mod hash;
pub mod ids;
pub mod wasi;
pub mod wire;

pub use hash::{Hash, HashParseError};
pub use ids::{NodeId, TaskId};
