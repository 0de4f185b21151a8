//! The checkpoint: a paused task's whole state, and its file encoding.
//!
//! A [`Manifest`] names memory by 64 KiB chunks (blake3 each, all-zero chunks
//! left out), lists every mutable global and the WASI state, and names the
//! exact module it belongs to. A [`CheckpointFile`] is a manifest plus the
//! bytes of the chunks it references, as written by `wmig run --checkpoint-out`.
//!
//! File layout: `MAGIC (8) | format version (u16 LE) | postcard body | blake3
//! of everything before it (32)`. The trailing hash catches truncation and bit
//! flips before any field is trusted; an unknown version is refused by number.

use serde::{Deserialize, Serialize};

use crate::files::PreopenTree;
use crate::wasi::WasiSnapshot;
use crate::{Hash, TaskId};

/// Memory is cut into chunks of this size; it equals the wasm page size.
pub const CHUNK_SIZE: usize = 64 * 1024;
pub const MAGIC: [u8; 8] = *b"\0wmigckp";
/// 2 added [`Manifest::files`] and [`Manifest::end`]; version 1 files
/// still read (with no files).
pub const FORMAT_VERSION: u16 = 2;

/// The checkpoint number after `prev` for an owner at `epoch`. Cluster
/// checkpoints carry the owner's epoch in their high 32 bits, so successive
/// owners of a task (after a migration or a recovery) never reuse a number,
/// and numbers always grow.
pub fn next_seq(prev: u64, epoch: u64) -> u64 {
    prev.saturating_add(1)
        .max(epoch.saturating_mul(1 << 32).saturating_add(1))
}

/// `EPOCH.N` for a cluster checkpoint number, plain `N` for a local one.
pub fn seq_label(seq: u64) -> String {
    match seq >> 32 {
        0 => seq.to_string(),
        epoch => format!("{epoch}.{}", seq & 0xffff_ffff),
    }
}

/// A paused task's state with memory referenced by chunk hashes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// blake3 of the module as the user supplied it.
    pub module: Hash,
    /// Version of the rewrite that instrumented it; a checkpoint only restores
    /// into the same rewrite because global and memory layout depend on it.
    pub rewriter: u32,
    /// blake3 of the instrumented module the state was captured from.
    pub instrumented: Hash,
    pub task: Option<TaskId>,
    /// 1 for a task's first checkpoint, then increasing.
    pub seq: u64,
    /// Ownership epoch of the node that captured it (fencing).
    pub epoch: u64,
    pub memories: Vec<MemoryImage>,
    /// Every mutable global, by the export name the rewrite gave it.
    pub globals: Vec<(String, GlobalValue)>,
    pub wasi: WasiSnapshot,
    pub counters: Counters,
    /// The task's preopened directories as trees, in preopen order (only
    /// those submitted as data; `--host-dir` paths are not captured).
    pub files: Vec<PreopenTree>,
    /// The record of a task's end: only `files` (its final tree) means
    /// anything; it is never restored.
    pub end: bool,
}

/// [`Manifest`] as format version 1 laid it out (before files).
#[derive(Serialize, Deserialize)]
pub struct ManifestV1 {
    module: Hash,
    rewriter: u32,
    instrumented: Hash,
    task: Option<TaskId>,
    seq: u64,
    epoch: u64,
    memories: Vec<MemoryImage>,
    globals: Vec<(String, GlobalValue)>,
    wasi: WasiSnapshot,
    counters: Counters,
}

impl From<ManifestV1> for Manifest {
    fn from(v: ManifestV1) -> Self {
        Manifest {
            module: v.module,
            rewriter: v.rewriter,
            instrumented: v.instrumented,
            task: v.task,
            seq: v.seq,
            epoch: v.epoch,
            memories: v.memories,
            globals: v.globals,
            wasi: v.wasi,
            counters: v.counters,
            files: Vec::new(),
            end: false,
        }
    }
}

/// One linear memory: its size and the non-zero chunks in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    /// Export name in the instrumented module (`memory`, `wmig:stack`).
    pub name: String,
    /// Size in bytes (a multiple of [`CHUNK_SIZE`]).
    pub byte_len: u64,
    /// Chunk index → content hash, ascending, zero chunks omitted.
    pub chunks: Vec<(u32, Hash)>,
}

/// The bit pattern of a global's value (floats as raw bits: exact, and NaN-safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// Accounting carried across restores so statistics and fuel limits stay whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Host-visible yields so far.
    pub yields: u64,
    /// Fuel consumed so far (yield points passed).
    pub fuel: u64,
}

impl Manifest {
    /// Check what the format promises about memory images and nothing
    /// decoding can: every size is a whole number of chunks, and chunk
    /// indices are strictly ascending and inside their memory. Says what is
    /// wrong, for a peer or an operator to read.
    pub fn validate(&self) -> Result<(), String> {
        for m in &self.memories {
            if !m.byte_len.is_multiple_of(CHUNK_SIZE as u64) {
                return Err(format!(
                    "memory `{}` is {} bytes, not a whole number of {CHUNK_SIZE}-byte chunks",
                    m.name, m.byte_len
                ));
            }
            let max_chunks = m.byte_len / CHUNK_SIZE as u64;
            let mut prev: Option<u32> = None;
            for (idx, _) in &m.chunks {
                if u64::from(*idx) >= max_chunks {
                    return Err(format!(
                        "memory `{}` has chunk {idx} beyond its size of {} bytes",
                        m.name, m.byte_len
                    ));
                }
                if prev.is_some_and(|p| p >= *idx) {
                    return Err(format!(
                        "memory `{}` lists chunk {idx} out of order or twice; \
                         chunk indices must be strictly ascending",
                        m.name
                    ));
                }
                prev = Some(*idx);
            }
        }
        for p in &self.files {
            p.tree
                .validate()
                .map_err(|e| format!("the tree of `{}`: {e}", p.guest))?;
        }
        Ok(())
    }

    /// Bytes of the task's files (all trees).
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|p| p.tree.bytes()).sum()
    }

    /// Every distinct chunk hash the manifest references, memory and files.
    pub fn chunk_hashes(&self) -> Vec<Hash> {
        let mut all: Vec<Hash> = self
            .memories
            .iter()
            .flat_map(|m| m.chunks.iter().map(|(_, h)| *h))
            .chain(self.files.iter().flat_map(|p| p.tree.chunk_hashes()))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// A manifest with the bytes of every chunk it references: a self-contained
/// checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub manifest: Manifest,
    /// Each distinct chunk once, ascending by hash.
    pub chunks: Vec<(Hash, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFileV1 {
    manifest: ManifestV1,
    chunks: Vec<(Hash, Vec<u8>)>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a wmig checkpoint: the file does not start with the checkpoint magic bytes")]
    NotACheckpoint,
    #[error("checkpoint is empty (0 bytes): it was never completely written")]
    Empty,
    #[error("checkpoint is truncated: {len} bytes is shorter than any valid checkpoint")]
    Truncated { len: usize },
    #[error(
        "checkpoint format version {found} is not supported (this wmig reads version {supported}); \
         resume it with the wmig release that wrote it"
    )]
    UnknownVersion { found: u16, supported: u16 },
    #[error(
        "checkpoint is corrupt: its integrity hash does not match its contents \
         (expected {expected}, computed {actual}); it was truncated or modified"
    )]
    IntegrityMismatch { expected: Hash, actual: Hash },
    #[error("checkpoint is corrupt: {0}")]
    Malformed(String),
    #[error("checkpoint is corrupt: chunk {claimed} holds data whose blake3 is {actual}")]
    ChunkMismatch { claimed: Hash, actual: Hash },
    #[error("checkpoint is incomplete: chunk {0} is referenced but missing")]
    MissingChunk(Hash),
    #[error("could not encode checkpoint: {0}")]
    Encode(String),
}

const HEADER_LEN: usize = MAGIC.len() + 2;
const TRAILER_LEN: usize = 32;

impl CheckpointFile {
    /// Encode with magic, version and integrity hash.
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + TRAILER_LEN + 1024 + self.chunks.len() * (CHUNK_SIZE + 40),
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let out =
            postcard::to_extend(self, out).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        let mut out = out;
        let digest = Hash::of(&out);
        out.extend_from_slice(digest.as_bytes());
        Ok(out)
    }

    /// Decode and verify: magic, version, integrity hash, then every chunk's
    /// hash and that every referenced chunk is present.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.is_empty() {
            return Err(CheckpointError::Empty);
        }
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
                return Err(CheckpointError::Truncated { len: bytes.len() });
            }
            return Err(CheckpointError::NotACheckpoint);
        }
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return Err(CheckpointError::Truncated { len: bytes.len() });
        }
        let version = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if version != FORMAT_VERSION && version != 1 {
            return Err(CheckpointError::UnknownVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (signed, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        let mut expected = [0u8; 32];
        expected.copy_from_slice(trailer);
        let expected = Hash(expected);
        let actual = Hash::of(signed);
        if expected != actual {
            return Err(CheckpointError::IntegrityMismatch { expected, actual });
        }
        let body = &signed[HEADER_LEN..];
        let malformed = |e: postcard::Error| CheckpointError::Malformed(e.to_string());
        let (file, rest) = if version == 1 {
            let (v1, rest): (CheckpointFileV1, _) =
                postcard::take_from_bytes(body).map_err(malformed)?;
            let file = CheckpointFile {
                manifest: v1.manifest.into(),
                chunks: v1.chunks,
            };
            (file, rest)
        } else {
            postcard::take_from_bytes::<CheckpointFile>(body).map_err(malformed)?
        };
        if !rest.is_empty() {
            return Err(CheckpointError::Malformed(format!(
                "{} bytes follow the checkpoint body",
                rest.len()
            )));
        }
        file.verify()?;
        Ok(file)
    }

    /// Check chunk contents against their names, that the chunks are listed
    /// once each in ascending hash order (lookups rely on it), that none is
    /// missing, and the manifest's own invariants ([`Manifest::validate`]).
    pub fn verify(&self) -> Result<(), CheckpointError> {
        if let Some(w) = self.chunks.windows(2).find(|w| w[0].0 >= w[1].0) {
            return Err(CheckpointError::Malformed(format!(
                "chunk {} is listed after chunk {} (or twice); chunks must be in \
                 strictly ascending hash order",
                w[1].0, w[0].0
            )));
        }
        for (claimed, data) in &self.chunks {
            if data.len() != CHUNK_SIZE {
                return Err(CheckpointError::Malformed(format!(
                    "chunk {claimed} is {} bytes, expected {CHUNK_SIZE}",
                    data.len()
                )));
            }
            let actual = Hash::of(data);
            if actual != *claimed {
                return Err(CheckpointError::ChunkMismatch {
                    claimed: *claimed,
                    actual,
                });
            }
        }
        for h in self.manifest.chunk_hashes() {
            if self.chunks.binary_search_by(|(c, _)| c.cmp(&h)).is_err() {
                return Err(CheckpointError::MissingChunk(h));
            }
        }
        self.manifest.validate().map_err(CheckpointError::Malformed)
    }

    /// The bytes of chunk `hash`, if present.
    pub fn chunk(&self, hash: &Hash) -> Option<&[u8]> {
        self.chunks
            .binary_search_by(|(c, _)| c.cmp(hash))
            .ok()
            .map(|i| self.chunks[i].1.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointFile {
        let chunk = vec![7u8; CHUNK_SIZE];
        let h = Hash::of(&chunk);
        CheckpointFile {
            manifest: Manifest {
                module: Hash::of(b"module"),
                rewriter: 1,
                instrumented: Hash::of(b"instrumented"),
                task: Some(TaskId(3)),
                seq: 2,
                epoch: 1,
                memories: vec![MemoryImage {
                    name: "memory".into(),
                    byte_len: 4 * CHUNK_SIZE as u64,
                    chunks: vec![(0, h), (3, h)],
                }],
                globals: vec![("wmig:global:0".into(), GlobalValue::I32(-5))],
                wasi: WasiSnapshot::default(),
                counters: Counters {
                    yields: 4,
                    fuel: 400,
                },
                files: Vec::new(),
                end: false,
            },
            chunks: vec![(h, chunk)],
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let bytes = f.encode().expect("encodes");
        assert_eq!(CheckpointFile::decode(&bytes).expect("decodes"), f);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode().expect("encodes");
        for len in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
            assert!(CheckpointFile::decode(&bytes[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn bit_flips_are_refused() {
        let bytes = sample().encode().expect("encodes");
        for pos in (0..bytes.len()).step_by(1013) {
            let mut b = bytes.clone();
            b[pos] ^= 0x10;
            assert!(CheckpointFile::decode(&b).is_err(), "flip at {pos}");
        }
    }

    #[test]
    fn a_version_1_file_still_reads_with_no_files() {
        let f = sample();
        let m = &f.manifest;
        let v1 = CheckpointFileV1 {
            manifest: ManifestV1 {
                module: m.module,
                rewriter: m.rewriter,
                instrumented: m.instrumented,
                task: m.task,
                seq: m.seq,
                epoch: m.epoch,
                memories: m.memories.clone(),
                globals: m.globals.clone(),
                wasi: m.wasi.clone(),
                counters: m.counters,
            },
            chunks: f.chunks.clone(),
        };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        let mut out = postcard::to_extend(&v1, out).expect("encodes");
        let digest = Hash::of(&out);
        out.extend_from_slice(digest.as_bytes());
        assert_eq!(CheckpointFile::decode(&out).expect("decodes"), f);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = sample().encode().expect("encodes");
        bytes[8] = 9;
        match CheckpointFile::decode(&bytes) {
            Err(CheckpointError::UnknownVersion { found: 9, .. }) => {}
            other => panic!("expected UnknownVersion, got {other:?}"),
        }
    }
}

#[cfg(test)]
#[path = "checkpoint_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod seq_tests {
    use super::*;

    #[test]
    fn cluster_seqs_grow_across_owners_and_read_as_epoch_dot_n() {
        let first = next_seq(0, 1);
        assert_eq!(seq_label(first), "1.1");
        assert_eq!(seq_label(next_seq(first, 1)), "1.2");
        // The next owner continues above every number of the previous one.
        let moved = next_seq(next_seq(first, 1), 2);
        assert_eq!(seq_label(moved), "2.1");
        assert!(moved > next_seq(first, 1));
        // Local checkpoints (epoch 0) stay plain.
        assert_eq!(next_seq(4, 0), 5);
        assert_eq!(seq_label(5), "5");
    }
}
