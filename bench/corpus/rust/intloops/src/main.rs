//! Tight integer loops: a byte sieve of Eratosthenes, a bitwise (table-free)
//! CRC-32, Collatz sequence lengths and an insertion sort.
//!
//! Usage: intloops [SCALE]

use std::env;

fn sieve(limit: usize) -> usize {
    let mut is_composite = vec![false; limit + 1];
    let mut count = 0;
    for n in 2..=limit {
        if !is_composite[n] {
            count += 1;
            let mut multiple = n * n;
            while multiple <= limit {
                is_composite[multiple] = true;
                multiple += n;
            }
        }
    }
    count
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            if crc & 1 != 0 {
                crc = (crc >> 1) ^ 0xEDB8_8320;
            } else {
                crc >>= 1;
            }
        }
    }
    !crc
}

fn collatz_len(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn insertion_sort(v: &mut [u32]) {
    for i in 1..v.len() {
        let key = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > key {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = key;
    }
}

/// A small xorshift generator so that the input data is the same on every run.
struct XorShift(u32);

impl XorShift {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

fn main() {
    let scale: usize = env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);

    let primes = sieve(2_000_000 * scale);
    println!("primes below {}: {}", 2_000_000 * scale, primes);

    let mut rng = XorShift(2463534242);
    let data: Vec<u8> = (0..1_000_000 * scale).map(|_| rng.next() as u8).collect();
    println!("crc32: {:08x}", crc32(&data));

    let (mut best, mut best_len) = (1, 0);
    for n in 1..(300_000 * scale as u64) {
        let len = collatz_len(n);
        if len > best_len {
            best = n;
            best_len = len;
        }
    }
    println!("longest collatz: {} ({} steps)", best, best_len);

    let mut checksum = 0u64;
    for _ in 0..20 * scale {
        let mut values: Vec<u32> = (0..2_000).map(|_| rng.next() % 100_000).collect();
        insertion_sort(&mut values);
        debug_assert!(values.windows(2).all(|w| w[0] <= w[1]));
        for (i, &v) in values.iter().enumerate() {
            checksum = checksum.wrapping_mul(31).wrapping_add(v as u64 ^ i as u64);
        }
    }
    println!("sorted {} arrays: checksum {:016x}", 20 * scale, checksum);
}
