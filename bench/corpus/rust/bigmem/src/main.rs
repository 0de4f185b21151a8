//! Touches a lot of memory: a byte sieve of Eratosthenes (16 MiB by default)
//! and a 64 MiB open-addressing hash table of u32 keys, filled and probed in
//! random order.
//!
//! Usage: bigmem [SIEVE_MIB] [ROUNDS]   (ROUNDS of 1.5M inserts + 1.5M lookups)

use std::env;

const TABLE_SLOTS: usize = 16 << 20; // u32 slots: 64 MiB
const EMPTY: u32 = 0;

fn sieve(limit: usize) -> Vec<bool> {
    let mut is_prime = vec![true; limit];
    is_prime[0] = false;
    is_prime[1] = false;
    let mut n = 2;
    while n * n < limit {
        if is_prime[n] {
            for multiple in (n * n..limit).step_by(n) {
                is_prime[multiple] = false;
            }
        }
        n += 1;
    }
    is_prime
}

struct HashSet32 {
    slots: Vec<u32>,
    len: usize,
}

impl HashSet32 {
    fn with_slots(slots: usize) -> Self {
        assert!(slots.is_power_of_two());
        HashSet32 {
            slots: vec![EMPTY; slots],
            len: 0,
        }
    }

    fn slot_of(&self, key: u32) -> usize {
        // Fibonacci hashing
        (key.wrapping_mul(0x9E37_79B9) as usize) & (self.slots.len() - 1)
    }

    /// Inserts a non-zero key; returns false if it was already there.
    fn insert(&mut self, key: u32) -> bool {
        debug_assert!(key != EMPTY);
        let mask = self.slots.len() - 1;
        let mut i = self.slot_of(key);
        loop {
            match self.slots[i] {
                EMPTY => {
                    self.slots[i] = key;
                    self.len += 1;
                    return true;
                }
                k if k == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn contains(&self, key: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.slot_of(key);
        loop {
            match self.slots[i] {
                EMPTY => return false,
                k if k == key => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

fn main() {
    let mut args = env::args().skip(1).map(|s| s.parse::<usize>().ok());
    let sieve_size = args.next().flatten().unwrap_or(16) << 20;
    let rounds = args.next().flatten().unwrap_or(2);

    let is_prime = sieve(sieve_size);
    let primes = is_prime.iter().filter(|&&p| p).count();
    let last = is_prime.iter().rposition(|&p| p).unwrap_or(0);
    println!("primes below {}: {} (largest {})", sieve_size, primes, last);

    let mut table = HashSet32::with_slots(TABLE_SLOTS);
    let mut state = 0x1234_5678u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut duplicates = 0;
    let mut hits = 0;
    for _ in 0..rounds {
        for _ in 0..1_500_000 {
            if !table.insert(next() | 1) {
                duplicates += 1;
            }
        }
        for _ in 0..1_500_000 {
            // Half of these are even, so never present.
            if table.contains(next()) {
                hits += 1;
            }
        }
    }
    let prime_keys = table
        .slots
        .iter()
        .filter(|&&k| k != EMPTY && is_prime[k as usize % sieve_size])
        .count();
    println!(
        "table: {} keys, {} duplicates, {} hits, {} keys prime modulo the sieve size",
        table.len, duplicates, hits, prime_keys
    );
}
