//! Settings of the registry: size limits, lease and retention policy.
//! Transport settings live with the server and the client.

use std::time::Duration;

use wmig_proto::checkpoint::CHUNK_SIZE;

/// Upper bounds on what one upload may carry; exceeding one is a
/// `TooLarge` error naming the limit, before the bytes are read.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest wasm bundle.
    pub max_bundle: u64,
    /// Largest chunk; checkpoints cut memory into exactly this size.
    pub max_chunk: u32,
    /// Largest encoded checkpoint manifest.
    pub max_manifest: u64,
    /// Most chunks in one `PutChunks` / `GetChunks` request.
    pub max_chunks_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle: 256 << 20,
            max_chunk: CHUNK_SIZE as u32,
            // 64 Ki chunks (4 GiB of memory) at ~36 bytes each, with room.
            max_manifest: 8 << 20,
            max_chunks_per_request: 256,
        }
    }
}

/// The registry's policy.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub limits: Limits,
    /// How long a `Granted` lease stays exclusive.
    pub lease_ttl: Duration,
    /// How often the server sweeps expired leases.
    pub lease_cleanup_interval: Duration,
    /// Checkpoints kept per task; older ones are deleted when a newer one
    /// is committed.
    pub keep_checkpoints: usize,
    /// Unreferenced chunks younger than this (stored, or reported stored,
    /// this recently) survive garbage collection: a checkpoint may be about
    /// to reference them.
    pub gc_grace: Duration,
    /// Run garbage collection this often (`None`: only on request).
    pub gc_interval: Option<Duration>,
    /// Most chunk bytes this node stores (`None`: the disk's size); see
    /// `evict.rs`.
    pub capacity: Option<u64>,
    /// Eviction starts past this fraction of the capacity...
    pub high_water: f64,
    /// ...and stops under this one.
    pub low_water: f64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            limits: Limits::default(),
            lease_ttl: Duration::from_secs(30),
            lease_cleanup_interval: Duration::from_secs(5),
            keep_checkpoints: 3,
            gc_grace: Duration::from_secs(600),
            gc_interval: Some(Duration::from_secs(3600)),
            capacity: None,
            high_water: 0.9,
            low_water: 0.8,
        }
    }
}
