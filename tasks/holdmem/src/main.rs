//! `holdmem [MIB=64] [ROUNDS=20000] [SLEEP_S=0]`: fills MIB mebibytes with
//! pseudo-random bytes (so no chunk is all zeros), sleeps SLEEP_S seconds in
//! one `thread::sleep` (a task blocked in `poll_oneoff` while holding
//! memory), then for ROUNDS rounds reads one 64 KiB
//! block into a checksum and writes one byte into one of the first 16
//! blocks; a line per tenth.
//!
//! The migration benchmark's workload: a large live memory of which at most
//! 1 MiB (16 blocks of 64 KiB) ever changes after the fill, however long
//! the pre-copy takes.

const MIB: usize = 1 << 20;
const TOUCH: usize = 64 * 1024;

fn main() {
    let mib: usize = arg(1, 64).max(1);
    let rounds: u64 = arg(2, 20_000);
    let mut data = vec![0u8; mib * MIB];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = (x >> (i * 8)) as u8 | 1;
        }
    }
    println!("holdmem filled {mib} MiB");
    let sleep_s: u64 = arg(3, 0);
    if sleep_s > 0 {
        std::thread::sleep(std::time::Duration::from_secs(sleep_s));
    }
    let mut sum: u64 = 0;
    let tenth = (rounds / 10).max(1);
    let blocks = (mib * MIB / TOUCH) as u64;
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let read = (x % blocks) as usize * TOUCH;
        for byte in &data[read..read + TOUCH] {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(*byte));
        }
        let write = (round % 16.min(blocks)) as usize * TOUCH + (x as usize % TOUCH);
        data[write] = (sum as u8) | 1;
        if (round + 1) % tenth == 0 {
            println!("holdmem round {} sum={sum:016x}", round + 1);
        }
    }
    println!("holdmem done mib={mib} rounds={rounds} sum={sum:016x}");
}

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
