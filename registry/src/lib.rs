//! The registry: the cluster's shared memory. It keeps every wasm bundle and
//! every checkpoint chunk once, however many workers hold them, and hands out
//! leases so that a chunk many workers produce at once is written by one.
//!
//! Layers, bottom up:
//! - [`store`]: the [`Store`] trait (content-addressed objects + small keyed
//!   records) and its backends, [`FsStore`] (default) and [`MemStore`].
//! - [`lease`]: the sans-IO lease table (`now` is always an argument).
//! - [`Registry`] (`service.rs`, `manifests.rs`): the request logic —
//!   bundles and names, chunks and leases, manifests with retention, GC.
//! - [`server`]: QUIC in, `Registry` calls out; `run(endpoint, registry,
//!   config, shutdown)`.
//! - [`RegistryClient`]: the library workers and the CLI call; it routes
//!   by hash over the nodes of a ring.
//! - [`ring`] and [`cluster`]: several registry nodes as one registry
//!   (SWIM membership, consistent hashing with virtual nodes, R copies of
//!   each chunk, repair).
//!
//! # Why one file per object rather than redb
//!
//! Everything the registry stores in bulk is immutable and named by its
//! hash, so it needs no transactions, only an atomic publish — which temp
//! file + fsync + rename gives with nothing else in the way. Each object is
//! then independently readable, deletable (GC is `unlink`), and verifiable;
//! a crash can at worst leave a temp file that the next open removes; there
//! is no compaction and no single file whose corruption loses everything;
//! `ls` and `b3sum` are enough to inspect a store; and the layout maps 1:1
//! onto an S3 bucket later. The cost is one fsync per object, which on this
//! class of disk is the throughput limit; writing a batch from several
//! threads lets the journal group those flushes (see `store/fs.rs` and the
//! benchmark). A single-file B-tree would batch better but rewrite pages
//! for data that never changes.

pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
mod evict;
pub mod lease;
mod manifests;
pub mod ring;
pub mod server;
mod service;
pub mod store;

pub use client::{ClientConfig, NodeClient, RegistryClient};
pub use cluster::{Cluster, ClusterConfig};

/// Maps keyed by blake3 digests on the hot paths (lease table, object
/// index): foldhash is several times faster than SipHash on 32-byte keys
/// and still seeded per map; the keys come only from authenticated peers.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
pub use config::{Limits, RegistryConfig};
pub use error::{ClientError, RegistryError, StoreError};
pub use evict::EvictReport;
pub use manifests::{decode_manifest, encode_manifest};
pub use server::{run, ServerConfig};
pub use service::Registry;
pub use store::{FsStore, MemStore, S3Options, S3Store, Store};
