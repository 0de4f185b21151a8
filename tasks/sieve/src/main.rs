//! `sieve [N]`: counts the primes up to N (default 2,000,000) with a segmented sieve of
//! Eratosthenes, printing one progress line per tenth of the range, then the count and
//! the largest prime.
//!
//! Exercises a mix of heap state (the small-prime table and a reused segment buffer)
//! and tight inner loops; the per-block lines make a resumed run easy to compare.

/// Sub-segment length: small enough to stay in cache, large enough that the
/// per-segment setup is negligible.
const SEGMENT: u64 = 1 << 16;

fn main() {
    let n: u64 = arg(1, 2_000_000);
    let small = small_primes(n.isqrt());
    let block = (n + 1).div_ceil(10).max(1);
    let mut seg = Vec::with_capacity(SEGMENT as usize);
    let mut total: u64 = 0;
    let mut last: u64 = 0;
    for b in 0..10 {
        let lo = b * block;
        let hi = (lo + block).min(n + 1);
        if lo >= hi {
            break;
        }
        let mut count = 0;
        let mut s = lo;
        while s < hi {
            let e = (s + SEGMENT).min(hi);
            sieve_segment(s, e, &small, &mut seg);
            for (k, &is_prime) in seg.iter().enumerate() {
                if is_prime {
                    count += 1;
                    last = s + k as u64;
                }
            }
            s = e;
        }
        total += count;
        println!("sieve block {b}: [{lo}, {hi}) primes={count} total={total} last={last}");
    }
    println!("sieve done n={n} count={total} last={last}");
}

/// Primes up to and including `limit`, by a plain sieve.
fn small_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    for p in 2..=limit {
        if !composite[p] {
            primes.push(p as u64);
            let mut m = p * p;
            while m <= limit {
                composite[m] = true;
                m += p;
            }
        }
    }
    primes
}

/// Fills `seg` so that `seg[k]` says whether `s + k` is prime, for `s + k < e`.
/// `small` must hold every prime up to `sqrt(e - 1)`.
fn sieve_segment(s: u64, e: u64, small: &[u64], seg: &mut Vec<bool>) {
    seg.clear();
    seg.resize((e - s) as usize, true);
    for v in s..e.min(2) {
        seg[(v - s) as usize] = false;
    }
    for &p in small {
        if p * p >= e {
            break;
        }
        let mut m = (p * p).max(s.div_ceil(p) * p);
        while m < e {
            seg[(m - s) as usize] = false;
            m += p;
        }
    }
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("sieve: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
