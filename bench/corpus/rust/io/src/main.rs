//! Heavy output: prints many formatted lines to stdout, one write per line
//! (stdout is line-buffered), like a program producing a log or a report.
//! Send stdout to /dev/null when timing it.
//!
//! Usage: io [LINES]

use std::env;
use std::io::{self, Write};

fn main() -> io::Result<()> {
    let lines: u64 = env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);

    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut total_bytes = 0usize;
    let mut value = 1u64;
    for i in 0..lines {
        value = value
            .wrapping_mul(2862933555777941757)
            .wrapping_add(3037000493);
        let level = ["DEBUG", "INFO", "WARN", "ERROR"][(value >> 62) as usize];
        let line = format!(
            "{:>8} {:<5} worker={:02} latency={:>7.3}ms key={:016x} msg=\"request {} done\"",
            i,
            level,
            (value >> 20) % 16,
            (value >> 40) as f64 / 65536.0,
            value,
            i * 7
        );
        total_bytes += line.len() + 1;
        writeln!(out, "{line}")?;
    }
    writeln!(out, "wrote {lines} lines, {total_bytes} bytes")?;
    Ok(())
}
