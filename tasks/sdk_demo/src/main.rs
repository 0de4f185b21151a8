//! `sdk_demo [N]`: computes Collatz chain lengths for 1..=N (default 300,000) in four
//! phases, using the optional wmig guest SDK: it reports progress, offers voluntary
//! yield points inside the loop, and requests a checkpoint after each phase.
//!
//! This module imports `wmig.progress`, `wmig.checkpoint_now` and `wmig.yield_now`,
//! so it runs only under a host that provides them (wmig does; for a plain
//! `wasmtime run`, preload a module named `wmig` that exports no-op functions).
//! Its output does not depend on what the host does at those calls.

/// Numbers between two progress reports / voluntary yields.
const BATCH: u64 = 10_000;
const PHASES: u64 = 4;

fn main() {
    let n: u64 = arg(1, 300_000);
    let per_phase = n.div_ceil(PHASES).max(1);
    let mut longest = (0u32, 0u64);
    let mut total_steps: u64 = 0;
    wmig_guest::progress(0, n);
    for phase in 0..PHASES {
        let lo = phase * per_phase + 1;
        let hi = ((phase + 1) * per_phase).min(n);
        let mut phase_steps = 0;
        for x in lo..=hi {
            let len = collatz_len(x);
            phase_steps += u64::from(len);
            if len > longest.0 {
                longest = (len, x);
            }
            if x.is_multiple_of(BATCH) {
                wmig_guest::progress(x, n);
                wmig_guest::yield_now();
            }
        }
        total_steps += phase_steps;
        wmig_guest::progress(hi.max(lo - 1), n);
        println!(
            "sdk_demo phase {}/{PHASES}: [{lo}, {hi}] steps={phase_steps} longest={} at {}",
            phase + 1,
            longest.0,
            longest.1
        );
        // A phase boundary is a natural checkpoint: everything before it is done.
        wmig_guest::checkpoint_now();
    }
    println!(
        "sdk_demo done n={n} steps={total_steps} longest={} at {}",
        longest.0, longest.1
    );
}

/// Steps for `x` to reach 1 under the Collatz map.
fn collatz_len(mut x: u64) -> u32 {
    let mut steps = 0;
    while x != 1 {
        x = if x.is_multiple_of(2) {
            x / 2
        } else {
            3 * x + 1
        };
        steps += 1;
    }
    steps
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("sdk_demo: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
