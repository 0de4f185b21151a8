//! `fileio [INPUT] [OUTPUT] [ROUNDS]`: reads INPUT (default `/data/input.txt`) line by
//! line ROUNDS times (default 200), counting words and checksumming lines, and writes
//! results to OUTPUT (default `/data/output.txt`) as it goes.
//!
//! OUTPUT is opened once and stays open for the whole run, flushed after every round,
//! while INPUT is reopened each round: a checkpoint taken between any two yield points
//! must carry both kinds of file state (an open descriptor with a write position, and
//! a preopened directory to reopen from) and the finished OUTPUT must be identical.
//!
//! Round 1 writes each line uppercased with its word count and checksum; every round
//! writes a summary line. Errors go to stderr with exit code 1.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "/data/input.txt".to_owned());
    let output = args.next().unwrap_or_else(|| "/data/output.txt".to_owned());
    let rounds: u32 = match args.next().map(|s| s.parse()) {
        None => 200,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("fileio: ROUNDS must be a number");
            return ExitCode::from(2);
        }
    };
    match run(&input, &output, rounds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fileio: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Totals of one pass over the input.
#[derive(Default)]
struct Round {
    lines: u64,
    words: u64,
    bytes: u64,
    checksum: u64,
}

fn run(input: &str, output: &str, rounds: u32) -> Result<(), String> {
    let out = File::create(output).map_err(|e| format!("cannot create {output}: {e}"))?;
    let mut out = BufWriter::new(out);
    let write_err = |e: io::Error| format!("cannot write {output}: {e}");
    writeln!(out, "# fileio {input} rounds={rounds}").map_err(write_err)?;

    let every = (rounds / 10).max(1);
    let mut freq: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut total = Round::default();
    for round in 1..=rounds {
        let file = File::open(input).map_err(|e| format!("cannot open {input}: {e}"))?;
        let mut reader = BufReader::new(file);
        let mut r = Round::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("cannot read {input}: {e}"))?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            r.lines += 1;
            r.bytes += n as u64;
            let sum = fnv1a(round, &line);
            r.checksum = r.checksum.rotate_left(1) ^ sum;
            let mut words = 0;
            for word in line
                .split(u8::is_ascii_whitespace)
                .filter(|w| !w.is_empty())
            {
                words += 1;
                *freq.entry(word.to_ascii_lowercase()).or_default() += 1;
            }
            r.words += words;
            if round == 1 {
                let upper = line.to_ascii_uppercase();
                write!(out, "{}\t{words}\t{sum:016x}\t", r.lines).map_err(write_err)?;
                out.write_all(&upper).map_err(write_err)?;
                out.write_all(b"\n").map_err(write_err)?;
            }
        }
        writeln!(
            out,
            "round {round}: lines={} words={} bytes={} checksum={:016x}",
            r.lines, r.words, r.bytes, r.checksum
        )
        .map_err(write_err)?;
        out.flush().map_err(write_err)?;

        total.lines += r.lines;
        total.words += r.words;
        total.bytes += r.bytes;
        total.checksum = total.checksum.rotate_left(7) ^ r.checksum;
        if round.is_multiple_of(every) {
            println!(
                "fileio round {round}/{rounds} lines={} words={} checksum={:016x}",
                total.lines, total.words, total.checksum
            );
        }
    }

    // Most frequent words, ties broken by the word itself: deterministic.
    let mut top: Vec<(&Vec<u8>, &u64)> = freq.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = top
        .iter()
        .take(5)
        .map(|(w, n)| format!("{}:{n}", String::from_utf8_lossy(w)))
        .collect();
    writeln!(out, "top {}", top.join(" ")).map_err(write_err)?;
    writeln!(out, "# done").map_err(write_err)?;
    out.flush().map_err(write_err)?;
    println!(
        "fileio done rounds={rounds} lines={} words={} bytes={} distinct={} checksum={:016x}",
        total.lines,
        total.words,
        total.bytes,
        freq.len(),
        total.checksum
    );
    println!("fileio top {}", top.join(" "));
    Ok(())
}

/// 64-bit FNV-1a of `bytes`, seeded with the round so every round's sums differ.
fn fnv1a(round: u32, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ u64::from(round);
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
