//! `tally`: reads lines from stdin as they arrive and, after each, prints the
//! line's number, its word count and a running checksum of everything read;
//! at end of input prints every word with its count, most frequent first.
//!
//! An interactive task: it spends its life blocked in `fd_read`, and its
//! state (the counts) is worth keeping across a move. Its output depends only
//! on its input, however the input is split into deliveries.

use std::collections::HashMap;
use std::io::{BufRead, Write};

fn main() {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut checksum: u64 = 0xcbf2_9ce4_8422_2325;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tally: cannot read stdin: {e}");
                std::process::exit(1);
            }
        };
        for b in line.bytes() {
            checksum = (checksum ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut words = 0;
        for w in line.split_whitespace() {
            *counts.entry(w.to_owned()).or_default() += 1;
            words += 1;
        }
        // Flushed per line: whoever feeds the task sees each answer at once.
        let _ = writeln!(out, "line {}: {words} words, checksum {checksum:016x}", n + 1);
        let _ = out.flush();
    }
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (w, c) in all {
        let _ = writeln!(out, "{c} {w}");
    }
}
