//! `counter [N]`: runs N iterations (default 2,000,000) of a small integer loop and
//! prints a running checksum every N/10 iterations.
//!
//! The simplest migration subject: all state lives in two locals of one hot loop,
//! so a pause anywhere inside it must restore them exactly for the checksums to match.

use std::hint::black_box;

fn main() {
    let n: u64 = arg(1, 2_000_000);
    let step = (n / 10).max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut checksum: u64 = 0;
    for i in 0..black_box(n) {
        // A 64-bit LCG step plus a xorshift fold: cheap, but nothing LLVM can
        // reduce to a closed form, so the loop really runs N times.
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407 ^ i);
        checksum = checksum.rotate_left(5) ^ (x >> 29);
        if (i + 1).is_multiple_of(step) {
            println!("counter {}/{n} checksum={checksum:016x}", i + 1);
        }
    }
    println!("counter done n={n} checksum={checksum:016x}");
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("counter: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
