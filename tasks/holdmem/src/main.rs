//! `holdmem [MIB=64] [ROUNDS=20000] [SLEEP_S=0] [RATE=0]`: fills MIB
//! mebibytes with pseudo-random bytes (so no chunk is all zeros), sleeps
//! SLEEP_S seconds in one `thread::sleep` (a task blocked in `poll_oneoff`
//! while holding memory), then:
//!
//! - RATE = 0: for ROUNDS rounds reads one 64 KiB block into a checksum and
//!   writes one byte into one of the first 16 blocks. At most 1 MiB ever
//!   changes after the fill, however long a pre-copy takes.
//! - RATE > 0: ROUNDS times rewrites 8 bytes of a random 4 KiB page
//!   anywhere in the MIB, about RATE pages per second (it sleeps 1 ms when
//!   ahead): a store under load, which keeps dirtying memory while it is
//!   copied. The output does not depend on the timing.
//!
//! A line per tenth either way.

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
    let rate: u64 = arg(4, 0);
    if rate > 0 {
        scatter(&mut data, rounds, rate, x);
        return;
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

/// ROUNDS scattered page writes at about RATE per second.
fn scatter(data: &mut [u8], rounds: u64, rate: u64, mut x: u64) {
    const PAGE: usize = 4096;
    let pages = (data.len() / PAGE) as u64;
    let started = std::time::Instant::now();
    let mut sum: u64 = 0;
    let tenth = (rounds / 10).max(1);
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % pages) as usize * PAGE + ((x >> 40) as usize % (PAGE / 8)) * 8;
        let old = u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
        sum = sum.wrapping_mul(31).wrapping_add(old);
        data[at..at + 8].copy_from_slice(&(x | 1).to_le_bytes());
        if round % 64 == 63 {
            while round * 1_000_000 / rate > started.elapsed().as_micros() as u64 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if (round + 1) % tenth == 0 {
            println!("holdmem round {} sum={sum:016x}", round + 1);
        }
    }
    println!("holdmem done mib={} rounds={rounds} rate={rate} sum={sum:016x}", data.len() >> 20);
}

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
