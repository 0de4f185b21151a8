//! `filework [ROUNDS=40] [SLEEP_MS=50]`: a task whose state lives in files as
//! much as in memory. Under `/data` (which must hold `input.txt`) each round
//! appends a line to `log.txt`, writes `work/rN.tmp` and renames it to
//! `work/rN.txt`, deletes the file of two rounds before, rewrites 4 KiB in
//! the middle of `big.bin` (1 MiB, created at the start), writes through a
//! descriptor of `journal.bin` held open for the whole run (its offset must
//! survive a move), then re-reads `log.txt` and prints its size and a
//! checksum. It sleeps SLEEP_MS between rounds, so it can be caught both
//! running and asleep in a WASI call.
//!
//! `filework touch [ROUNDS=40] [SLEEP_MS=50]` changes one file only: it
//! appends a line to `/data/log.txt` each round and leaves the rest of
//! `/data` alone (the benchmark of what a checkpoint carries).
//!
//! Deterministic: the same input gives the same stdout and the same final
//! files, however often the task is paused, moved or recovered.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let touch = args.next_if(|a| a == "touch").is_some();
    let rounds: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(40);
    let sleep_ms: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let r = if touch {
        run_touch(rounds, sleep_ms)
    } else {
        run(rounds, sleep_ms)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filework: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn run_touch(rounds: u32, sleep_ms: u64) -> std::io::Result<()> {
    for r in 1..=rounds {
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .open("/data/log.txt")?;
        writeln!(log, "round {r}")?;
        println!("round {r}");
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    Ok(())
}

fn run(rounds: u32, sleep_ms: u64) -> std::io::Result<()> {
    let input = fs::read("/data/input.txt")?;
    fs::create_dir_all("/data/work")?;
    let mut big = vec![0u8; 1 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(2_654_435_761) as u8;
    }
    fs::write("/data/big.bin", &big)?;
    let mut journal = File::create("/data/journal.bin")?;
    for r in 1..=rounds {
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .open("/data/log.txt")?;
        writeln!(log, "round {r} input {:016x}", fnv(u64::from(r), &input))?;
        drop(log);

        let tmp = format!("/data/work/r{r}.tmp");
        let body: Vec<u8> = input
            .iter()
            .cycle()
            .skip(r as usize)
            .take(3000 + 97 * r as usize)
            .copied()
            .collect();
        fs::write(&tmp, &body)?;
        fs::rename(&tmp, format!("/data/work/r{r}.txt"))?;
        if r > 2 {
            fs::remove_file(format!("/data/work/r{}.txt", r - 2))?;
        }

        let mut f = OpenOptions::new().read(true).write(true).open("/data/big.bin")?;
        let at = (u64::from(r) * 40_961) % ((1 << 20) - 4096);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[r as u8; 4096])?;
        drop(f);

        journal.write_all(format!("{r}:{:08x};", fnv(7, &body) as u32).as_bytes())?;

        let mut back = Vec::new();
        File::open("/data/log.txt")?.read_to_end(&mut back)?;
        println!(
            "round {r}: log {} bytes {:016x}, work/r{r}.txt {} bytes",
            back.len(),
            fnv(0, &back),
            body.len()
        );
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    let mut all = Vec::new();
    File::open("/data/big.bin")?.read_to_end(&mut all)?;
    println!("done: big.bin {:016x}", fnv(1, &all));
    Ok(())
}
