//! Cutting linear memory into content-addressed 64 KiB chunks, and writing
//! them back.
//!
//! Capture hashes straight from the instance's memory (no intermediate copy)
//! on every core, skips all-zero chunks, and copies out only chunks the
//! destination does not already hold — so a second checkpoint of a task that
//! changed little copies little.

use std::collections::HashMap;
use std::sync::Arc;

use wmig_proto::checkpoint::{MemoryImage, CHUNK_SIZE};
use wmig_proto::Hash;

/// Where captured chunk bytes go (a checkpoint file, a registry client, a
/// migration stream).
pub trait ChunkSink {
    /// True if the sink already holds `hash` (its bytes need not be copied).
    fn contains(&self, hash: &Hash) -> bool;
    fn put(&mut self, hash: Hash, bytes: &[u8]);
}

/// Where a restore reads chunk bytes from.
pub trait ChunkSource {
    fn chunk(&self, hash: &Hash) -> Option<&[u8]>;
}

/// An in-memory chunk store: the local `--restore-each-checkpoint` loop and
/// checkpoint files use it.
#[derive(Default, Debug, Clone)]
pub struct MemChunks {
    map: HashMap<Hash, Arc<[u8]>>,
}

impl MemChunks {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Keep only the chunks `keep` references (drop those of older checkpoints).
    pub fn retain(&mut self, keep: &[Hash]) {
        let keep: std::collections::HashSet<&Hash> = keep.iter().collect();
        self.map.retain(|h, _| keep.contains(h));
    }
    /// The chunks `hashes` names, in that order, for a checkpoint file.
    pub fn export(&self, hashes: &[Hash]) -> Vec<(Hash, Vec<u8>)> {
        hashes
            .iter()
            .filter_map(|h| self.map.get(h).map(|b| (*h, b.to_vec())))
            .collect()
    }
    pub fn insert_owned(&mut self, hash: Hash, bytes: Vec<u8>) {
        self.map.insert(hash, bytes.into());
    }
    pub fn insert_shared(&mut self, hash: Hash, bytes: Arc<[u8]>) {
        self.map.insert(hash, bytes);
    }
    pub fn shared(&self, hash: &Hash) -> Option<Arc<[u8]>> {
        self.map.get(hash).cloned()
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

impl ChunkSink for MemChunks {
    fn contains(&self, hash: &Hash) -> bool {
        self.map.contains_key(hash)
    }
    fn put(&mut self, hash: Hash, bytes: &[u8]) {
        self.map.insert(hash, Arc::from(bytes));
    }
}

impl ChunkSource for MemChunks {
    fn chunk(&self, hash: &Hash) -> Option<&[u8]> {
        self.map.get(hash).map(|b| &b[..])
    }
}

impl ChunkSource for wmig_proto::checkpoint::CheckpointFile {
    fn chunk(&self, hash: &Hash) -> Option<&[u8]> {
        wmig_proto::checkpoint::CheckpointFile::chunk(self, hash)
    }
}

/// What one capture cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureCost {
    /// Bytes copied out because the sink lacked them.
    pub copied: u64,
    /// Non-zero chunks seen.
    pub chunks: u64,
}

/// Hash every chunk of `data` (which must be a multiple of [`CHUNK_SIZE`],
/// except that only the first `used` bytes are looked at) and hand the new
/// ones to `sink`.
pub fn capture(
    name: &str,
    data: &[u8],
    used: usize,
    sink: &mut dyn ChunkSink,
    cost: &mut CaptureCost,
) -> MemoryImage {
    let used = used.min(data.len());
    let n = used.div_ceil(CHUNK_SIZE);
    let hashes = hash_chunks(&data[..(n * CHUNK_SIZE).min(data.len())]);
    let mut chunks = Vec::with_capacity(hashes.len());
    for (i, h) in hashes.into_iter().enumerate() {
        let Some(h) = h else { continue };
        cost.chunks += 1;
        if !sink.contains(&h) {
            let start = i * CHUNK_SIZE;
            sink.put(h, &data[start..start + CHUNK_SIZE]);
            cost.copied += CHUNK_SIZE as u64;
        }
        // Chunk indices fit in u32: a 32-bit memory has at most 65536 pages.
        chunks.push((i as u32, h));
    }
    MemoryImage {
        name: name.to_string(),
        byte_len: data.len() as u64,
        chunks,
    }
}

/// `None` for an all-zero chunk, else its blake3. Runs on every core: at
/// 64 MiB this is the bulk of a capture.
fn hash_chunks(data: &[u8]) -> Vec<Option<Hash>> {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK_SIZE).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(chunks.len().div_ceil(16).max(1));
    if threads <= 1 {
        return chunks.iter().map(|c| hash_one(c)).collect();
    }
    let per = chunks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|c| hash_one(c)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn hash_one(chunk: &[u8]) -> Option<Hash> {
    if is_zero(chunk) {
        None
    } else {
        Some(Hash::of(chunk))
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    // 16 bytes per comparison; chunks_exact lets the compiler vectorise it.
    let mut words = bytes.chunks_exact(16);
    words
        .by_ref()
        .all(|w| w.iter().fold(0u8, |acc, b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_chunks_are_skipped_and_known_chunks_not_copied() {
        let mut mem = vec![0u8; 8 * CHUNK_SIZE];
        mem[CHUNK_SIZE + 5] = 1;
        mem[5 * CHUNK_SIZE] = 9;
        let mut sink = MemChunks::new();
        let mut cost = CaptureCost::default();
        let img = capture("memory", &mem, mem.len(), &mut sink, &mut cost);
        assert_eq!(
            img.chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![1, 5]
        );
        assert_eq!(cost.copied, 2 * CHUNK_SIZE as u64);
        let mut cost2 = CaptureCost::default();
        let again = capture("memory", &mem, mem.len(), &mut sink, &mut cost2);
        assert_eq!(again, img);
        assert_eq!(cost2.copied, 0, "unchanged chunks are not copied twice");
    }

    #[test]
    fn parallel_hashing_matches_serial() {
        let mem: Vec<u8> = (0..64 * CHUNK_SIZE).map(|i| (i / 4093) as u8).collect();
        let par = hash_chunks(&mem);
        let ser: Vec<_> = mem.chunks(CHUNK_SIZE).map(hash_one).collect();
        assert_eq!(par, ser);
    }
}
