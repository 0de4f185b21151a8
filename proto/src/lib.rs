//! Types every wmig role shares: content hashes, task and node ids, the
//! persisted checkpoint format, and the messages of every wire protocol
//! ([`wire`]), including the control protocol's task and node records, so a
//! worker or the CLI can talk to the coordinator without linking its server.
//!
//! This crate does no IO and knows nothing of tokio, quinn or wasmtime, so the
//! formats can be unit-tested, fuzzed and read by any tool.

pub mod checkpoint;
pub mod files;
pub mod frame;
#[cfg(test)]
mod fuzzing;
pub mod hash;
pub mod ids;
pub mod wasi;
pub mod wire;

pub use hash::{Hash, HashParseError};
pub use ids::{NodeId, TaskId};
