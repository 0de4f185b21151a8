//! Alternates bursts of computation with short sleeps, like a polling service
//! or a job that waits on a timer between batches. The output does not depend
//! on how long anything took.
//!
//! Usage: sleeper [BATCHES] [SLEEP_MS] [WORK]

use std::env;
use std::thread;
use std::time::{Duration, Instant};

fn batch(seed: u64, work: u64) -> u64 {
    // Mix a sequence of numbers: enough work to take a few milliseconds.
    let mut h = seed;
    for i in 0..work {
        h ^= i;
        h = h.wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

fn main() {
    let mut args = env::args().skip(1).map(|s| s.parse::<u64>().ok());
    let batches = args.next().flatten().unwrap_or(20);
    let sleep_ms = args.next().flatten().unwrap_or(10);
    let work = args.next().flatten().unwrap_or(2_000_000);

    let start = Instant::now();
    let mut slept = Duration::ZERO;
    let mut acc = 0u64;
    for i in 0..batches {
        acc = acc.rotate_left(5) ^ batch(acc ^ i, work);
        println!("batch {i:>3}: {acc:016x}");
        let before = Instant::now();
        thread::sleep(Duration::from_millis(sleep_ms));
        slept += before.elapsed();
    }
    let asked = Duration::from_millis(sleep_ms * batches);
    // Timing goes to stderr so that stdout is the same on every run.
    eprintln!(
        "slept {:?} (asked {:?}), total {:?}",
        slept,
        asked,
        start.elapsed()
    );
    println!("slept at least as asked: {}", slept >= asked);
}
