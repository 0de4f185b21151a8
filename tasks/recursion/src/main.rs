//! `recursion [DEPTH] [REPS]`: descends DEPTH levels (default 5,000) of non-tail
//! recursion, REPS times (default 500), printing a checksum every REPS/10 repetitions.
//!
//! Deep stacks are the hard case for Asyncify: a pause at the bottom must unwind and
//! later rewind every frame. `black_box` and the work after each call keep LLVM from
//! turning the recursion into a loop.
//!
//! Each level takes 64 bytes of native stack under Cranelift, so a plain
//! `wasmtime run` (512 KiB `max-wasm-stack`) manages depth 8182; the default leaves
//! room for the larger frames of instrumented code.

use std::hint::black_box;

fn main() {
    let depth: u32 = arg(1, 5_000);
    let reps: u32 = arg(2, 500);
    let every = (reps / 10).max(1);
    let mut checksum: u64 = 0;
    for rep in 1..=reps {
        let r = descend(black_box(depth), u64::from(rep));
        checksum = checksum.rotate_left(13) ^ r;
        if rep.is_multiple_of(every) {
            println!(
                "recursion rep {rep}/{reps} depth={depth} result={r:016x} checksum={checksum:016x}"
            );
        }
    }
    println!("recursion done depth={depth} reps={reps} checksum={checksum:016x}");
}

/// Recurses `depth` levels; each level mixes its depth into the seed on the way
/// down and into the result on the way back up.
#[inline(never)]
fn descend(depth: u32, seed: u64) -> u64 {
    if depth == 0 {
        return seed;
    }
    let next = seed
        .wrapping_mul(0x5851_f42d_4c95_7f2d)
        .wrapping_add(u64::from(depth));
    let below = descend(black_box(depth - 1), next);
    // Work after the call: the frame must stay live until the callee returns.
    black_box(below.rotate_left(7) ^ u64::from(depth))
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("recursion: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
