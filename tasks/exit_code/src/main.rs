//! `exit_code [CODE]`: does a few steps of work, printing a line per step, and calls
//! `std::process::exit(CODE)` (default 3) halfway through, with work still pending.
//!
//! Checks that a task's exit status survives migration and that output written
//! before the exit (to stdout and stderr) is delivered, while nothing after it runs.

use std::io::Write;

const STEPS: u64 = 10;
const EXIT_AT: u64 = 5;
/// Work per step, so the exit happens after many yield points.
const SPIN: u64 = 200_000;

fn main() {
    let code: i32 = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 3,
        Some(Ok(c)) => c,
        Some(Err(_)) => {
            eprintln!("exit_code: CODE must be a number");
            std::process::exit(2)
        }
    };
    let mut acc: u64 = 1;
    for step in 1..=STEPS {
        for i in 0..std::hint::black_box(SPIN) {
            acc = acc.wrapping_mul(31).wrapping_add(i ^ step);
        }
        println!("exit_code step {step}/{STEPS} acc={acc:016x}");
        if step == EXIT_AT {
            eprintln!("exit_code: exiting with {code} at step {step}");
            // `process::exit` skips destructors; flush explicitly so nothing is lost.
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
    }
    println!("exit_code: unreachable end");
}
