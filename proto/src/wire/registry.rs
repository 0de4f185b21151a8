//! The registry protocol: one [`RegistryRequest`] per bidirectional stream,
//! answered by one [`RegistryResponse`].
//!
//! Requests that upload bytes (`PutBundle`, `PutChunks`) and responses that
//! return them (`Bundle`, `Chunks`) announce a raw payload that follows the
//! frame on the same stream (see [`crate::frame`]); everything else is a
//! single frame each way. Bundle names are validated here so the CLI and the
//! server apply the same rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Manifest;
use crate::wire::{RemoteError, RevokedCert};
use crate::{Hash, TaskId};

/// A registry request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RegistryRequest {
    /// Store a wasm bundle; followed by `len` payload bytes whose blake3 is
    /// `hash`. With `name`, the name then points at it.
    PutBundle {
        hash: Hash,
        len: u64,
        name: Option<NameTag>,
    },
    /// Fetch a bundle by hash or name.
    GetBundle { bundle: BundleRef },
    /// Every bundle with its names.
    ListBundles,
    /// Ask, per chunk hash, whether the caller should store it.
    CanStore { hashes: Vec<Hash> },
    /// Store chunks; followed by their bytes back to back, in this order.
    PutChunks { chunks: Vec<ChunkHeader> },
    /// Fetch chunks; the response payload holds them in this order.
    GetChunks { hashes: Vec<Hash> },
    /// How many leading hashes of this list are stored.
    HasPrefix { hashes: Vec<Hash> },
    /// Commit a checkpoint manifest (its task and seq come from inside it).
    PutManifest { manifest: Box<Manifest> },
    /// A task's manifest by seq, or its latest with `seq: None`.
    GetManifest { task: TaskId, seq: Option<u64> },
    /// The seqs of a task's kept manifests, ascending.
    ListManifests { task: TaskId },
    /// Delete chunks no kept manifest references.
    Gc,
    /// Object, byte and lease counts.
    Stats,
    /// Coordinator or operator: certificates revoked in the cluster; the
    /// registry adds them to its own list.
    Revocations { revoked: Vec<RevokedCert> },
    /// The registry nodes this one knows, for clients to route by hash.
    Ring,
    /// Per chunk hash, whether this node holds it. Those held are spared
    /// from garbage collection for a while, as with `HasPrefix`.
    Holds { hashes: Vec<Hash> },
    /// Registry to registry: the manifests, bundles and names this node
    /// keeps, so a node that was away can fetch what it missed.
    Inventory,
    /// Registry to registry: a manifest another node accepted after
    /// checking its chunks across the ring; stored as it is.
    ReplicateManifest { manifest: Box<Manifest> },
}

/// A registry response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RegistryResponse {
    BundleStored(BundleStored),
    /// Followed by `len` payload bytes: the bundle.
    Bundle {
        hash: Hash,
        len: u64,
    },
    Bundles(Vec<BundleInfo>),
    /// One answer per requested hash, in request order.
    Leases(Vec<LeaseStatus>),
    ChunksStored(PutReport),
    /// Followed by the chunks' bytes back to back, in request order.
    Chunks {
        lens: Vec<u32>,
    },
    Prefix {
        stored: u64,
    },
    ManifestStored(ManifestStored),
    Manifest(Box<Manifest>),
    Manifests(Vec<u64>),
    Gc(GcReport),
    Stats(RegistryStats),
    Error(RemoteError),
    /// Answers `Revocations`: how many were new here.
    Revoked {
        added: u32,
    },
    Ring(RingInfo),
    /// One answer per requested hash, in request order.
    Held(Vec<bool>),
    Inventory(Inventory),
}

/// The registry nodes as one of them sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingInfo {
    /// Copies of each chunk kept on distinct nodes (with local disks).
    pub replicas: u32,
    /// Every node this one has heard of, alive or not; only alive ones
    /// are placed on the ring.
    pub members: Vec<RingMember>,
}

/// One registry node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub name: String,
    /// Where it serves the registry protocol (QUIC).
    pub addr: std::net::SocketAddr,
    /// Where it takes part in the membership (UDP).
    pub gossip: std::net::SocketAddr,
    /// Its points on the ring.
    pub vnodes: u32,
    pub pid: u32,
    pub alive: bool,
}

/// What a node keeps of the cluster-wide metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Kept checkpoint manifests, by task and seq.
    pub manifests: Vec<(TaskId, u64)>,
    pub bundles: Vec<Hash>,
    pub names: Vec<(NameTag, Hash)>,
}

/// One chunk announced by `PutChunks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub hash: Hash,
    pub len: u32,
}

/// The answer to `CanStore` for one hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseStatus {
    /// The caller holds the lease: store it now.
    Granted,
    /// Already stored: skip it.
    AlreadyStored,
    /// Someone else is storing it: skip it, or ask again later.
    Leased,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStored {
    pub hash: Hash,
    pub len: u64,
    /// False when the registry already held these bytes.
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub hash: Hash,
    pub len: u64,
    pub names: Vec<NameTag>,
}

/// What a `PutChunks` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReport {
    /// Chunks written by this request.
    pub written: u64,
    /// Chunks that were already stored and were not written again.
    pub already_stored: u64,
}

impl PutReport {
    pub fn add(&mut self, other: PutReport) {
        self.written += other.written;
        self.already_stored += other.already_stored;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStored {
    pub task: TaskId,
    pub seq: u64,
    /// Older seqs dropped by retention.
    pub pruned: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    /// Unreferenced chunks spared because a lease or their recent upload
    /// protects them (a checkpoint may be about to reference them).
    pub chunks_protected: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCount {
    pub count: u64,
    pub bytes: u64,
}

/// Counters of the lease table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStats {
    /// Leases held right now.
    pub active: u64,
    /// Leases ever granted.
    pub granted: u64,
    /// Leases that ran out before their chunk was stored.
    pub expired: u64,
    /// Leases released because their chunk was stored.
    pub completed: u64,
    /// Leases dropped because their holder disconnected.
    pub released: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    pub bundles: ObjectCount,
    pub chunks: ObjectCount,
    pub manifests: ObjectCount,
    pub names: u64,
    pub tasks: u64,
    pub leases: LeaseStats,
    /// Chunks written since the server started.
    pub chunks_written: u64,
    /// Chunk uploads or claims answered "already stored" since start.
    pub chunks_deduplicated: u64,
    /// Chunks the checkpoints stored since start refer to: what writing
    /// every checkpoint whole would have written. Against `chunks_written`
    /// this counts every chunk not written again, including those a worker
    /// did not even offer because it knew the registry held them.
    pub chunks_referenced: u64,
}

/// A bundle reference: its hash, or a `name:tag`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleRef {
    Hash(Hash),
    Name(NameTag),
}

impl FromStr for BundleRef {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s.parse::<Hash>() {
            Ok(h) => Ok(BundleRef::Hash(h)),
            Err(_) => s.parse().map(BundleRef::Name),
        }
    }
}

impl fmt::Display for BundleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleRef::Hash(h) => write!(f, "{h}"),
            BundleRef::Name(n) => write!(f, "{n}"),
        }
    }
}

/// A bundle name with its tag, written `name:tag` (`latest` when omitted).
/// Names are 1–128 of `[A-Za-z0-9._/-]`, tags 1–64 of `[A-Za-z0-9._-]`,
/// neither starting with `.`, `-` or `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NameTag {
    name: String,
    tag: String,
}

pub const DEFAULT_TAG: &str = "latest";

/// A name or tag that breaks the rules of [`NameTag`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid bundle name: {reason}")]
pub struct NameError {
    pub input: String,
    pub reason: &'static str,
}

impl NameTag {
    pub fn new(name: &str, tag: &str) -> Result<Self, NameError> {
        let n = NameTag {
            name: name.to_owned(),
            tag: tag.to_owned(),
        };
        n.validate()?;
        Ok(n)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Check the rules; a server calls this on every name a peer sends.
    pub fn validate(&self) -> Result<(), NameError> {
        let err = |reason| NameError {
            input: self.to_string().chars().take(200).collect(),
            reason,
        };
        check_part(&self.name, 128, true).map_err(err)?;
        check_part(&self.tag, 64, false).map_err(err)
    }
}

fn check_part(s: &str, max: usize, slash: bool) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("name and tag must not be empty");
    }
    if s.len() > max {
        return Err("names are at most 128 characters, tags at most 64");
    }
    if s.starts_with(['.', '-', '/']) {
        return Err("a name or tag must not start with `.`, `-` or `/`");
    }
    let ok =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/');
    if !s.chars().all(ok) {
        return Err("use only letters, digits, `.`, `_`, `-` (and `/` in names)");
    }
    Ok(())
}

impl FromStr for NameTag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (name, tag) = s.split_once(':').unwrap_or((s, DEFAULT_TAG));
        NameTag::new(name, tag).map_err(|e| NameError {
            input: s.chars().take(200).collect(),
            ..e
        })
    }
}

impl fmt::Display for NameTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
pub(super) mod tests;
