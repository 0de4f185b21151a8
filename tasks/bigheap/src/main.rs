//! `bigheap [MIB]`: grows the heap to MIB mebibytes (default 80, i.e. past 64 MiB) in
//! 1 MiB `Vec<u8>` blocks filled with a deterministic pattern, prints a checksum per
//! 8 MiB, then re-reads every block to verify it and prints a final checksum.
//!
//! The point is a large linear memory: checkpoints must carry every page, and a
//! restored task must see exactly the bytes it wrote. A wrong byte exits with code 1.

const MIB: usize = 1 << 20;
/// Blocks per progress line (8 MiB).
const REPORT_EVERY: usize = 8;

fn main() {
    let mib: usize = arg(1, 80);
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(mib);
    let mut running: u64 = 0;
    for i in 0..mib {
        let mut block = vec![0u8; MIB];
        fill(&mut block, i);
        blocks.push(block);
        let done = i + 1;
        if done.is_multiple_of(REPORT_EVERY) || done == mib {
            // Re-read the blocks of this report from memory rather than
            // checksumming while filling, so the line reflects what is stored.
            let first = (i / REPORT_EVERY) * REPORT_EVERY;
            let mut chunk = Checksum::new();
            for block in &blocks[first..done] {
                chunk.write(block);
            }
            running = (running ^ chunk.finish()).wrapping_mul(Checksum::PRIME);
            println!(
                "bigheap {done}/{mib} MiB chunk={:016x} running={:016x}",
                chunk.finish(),
                running
            );
        }
    }

    let mut all = Checksum::new();
    for (i, block) in blocks.iter().enumerate() {
        if let Some(at) = first_mismatch(block, i) {
            eprintln!("bigheap: block {i} corrupted at byte {at}");
            std::process::exit(1);
        }
        all.write(block);
    }
    println!(
        "bigheap done mib={mib} verified checksum={:016x}",
        all.finish()
    );
}

/// Word `k` of block `index`. Each word depends only on its position, so filling
/// and verifying are independent per word (fast, vectorisable) and a misplaced
/// page is as detectable as a flipped bit.
fn pattern(index: usize, k: usize) -> u64 {
    let v =
        splitmix64(index as u64 + 1).wrapping_add((k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    v ^ (v >> 29)
}

fn fill(block: &mut [u8], index: usize) {
    for (k, word) in block.as_chunks_mut::<8>().0.iter_mut().enumerate() {
        *word = pattern(index, k).to_le_bytes();
    }
}

/// Byte offset of the first word of `block` that differs from the pattern.
fn first_mismatch(block: &[u8], index: usize) -> Option<usize> {
    block
        .as_chunks::<8>()
        .0
        .iter()
        .enumerate()
        .position(|(k, word)| *word != pattern(index, k).to_le_bytes())
        .map(|k| k * 8)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a-style hash over 8-byte words in four interleaved lanes, so the
/// multiply chains overlap instead of running one after another.
struct Checksum([u64; 4]);

impl Checksum {
    const PRIME: u64 = 0x0100_0000_01b3;

    fn new() -> Self {
        Checksum([0xcbf2_9ce4_8422_2325; 4])
    }

    /// Hashes whole 32-byte groups; blocks are 1 MiB, so there is never a tail.
    fn write(&mut self, bytes: &[u8]) {
        for group in bytes.as_chunks::<32>().0 {
            for (lane, word) in self.0.iter_mut().zip(group.as_chunks::<8>().0) {
                *lane = (*lane ^ u64::from_le_bytes(*word)).wrapping_mul(Self::PRIME);
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |acc: u64, lane| (acc ^ lane).wrapping_mul(Self::PRIME))
    }
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("bigheap: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
