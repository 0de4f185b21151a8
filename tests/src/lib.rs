//! Support library for wmig's end-to-end tests and benchmarks.
//!
//! The build script (`tests/build.rs`) compiles every example task in `tasks/` for
//! `wasm32-wasip1` (release) into `<target dir>/wasm-tasks`, and [`artifacts`]
//! names the resulting `.wasm` files by absolute path, so tests read them directly
//! instead of building anything at run time.
//!
//! | task        | arguments (defaults)                                  | notes |
//! |-------------|-------------------------------------------------------|-------|
//! | `counter`   | `[N=2000000]`                                         | integer loop, line per N/10 |
//! | `sieve`     | `[N=2000000]`                                         | segmented sieve, line per tenth |
//! | `nbody`     | `[STEPS=200000]`                                      | f64 energies `{:.9}` per STEPS/10 |
//! | `bigheap`   | `[MIB=80]`                                            | heap past 64 MiB, line per 8 MiB |
//! | `recursion` | `[DEPTH=5000] [REPS=500]`                             | deep non-tail recursion |
//! | `fileio`    | `[IN=/data/input.txt] [OUT=/data/output.txt] [ROUNDS=200]` | needs a preopened dir; see [`inputs::fileio_input`] |
//! | `sdk_demo`  | `[N=300000]`                                          | imports `wmig.*`; see [`inputs::WMIG_STUB_WAT`] |
//! | `exit_code` | `[CODE=3]`                                            | exits with CODE halfway |
//! | `args_env`  | `[--cat PATH] [ARGS...]`                              | prints args, `TASK_*` env vars, PATH |
//! | `holdmem`   | `[MIB=64] [ROUNDS=20000] [SLEEP_S=0] [RATE=0]`        | MIB live; ≤ 1 MiB rewritten after the fill, or RATE scattered page writes per second |
//! | `filework`  | `[touch] [ROUNDS=40] [SLEEP_MS=50]`                   | creates, appends, renames, deletes, rewrites and re-reads files under `/data` (needs `input.txt` there); `touch` appends to one file only |
//!
//! All tasks are deterministic: the same arguments, environment and input files
//! give byte-identical stdout (and output files), however often the run is paused.

/// Paths of the built task modules: one `pub const` per task (`COUNTER`, `SIEVE`,
/// `NBODY`, `BIGHEAP`, `RECURSION`, `FILEIO`, `SDK_DEMO`, `EXIT_CODE`, `ARGS_ENV`, `HOLDMEM`,
/// `FILEWORK`)
/// and [`artifacts::ALL`] listing `(name, path)` pairs.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Deterministic inputs that some tasks need.
pub mod inputs {
    /// A module named `wmig` exporting no-op versions of the guest SDK's imports,
    /// for running `sdk_demo` on a host that does not provide them (e.g. a plain
    /// wasmtime `Linker`, or `wasmtime run --preload wmig=stub.wat`).
    pub const WMIG_STUB_WAT: &str = r#"(module
  (func (export "progress") (param i64 i64))
  (func (export "checkpoint_now"))
  (func (export "yield_now")))
"#;

    /// The standard `fileio` input: 200 numbered lines of 3–11 words (about 9 KB),
    /// always the same bytes. Write it as `input.txt` in the dir preopened as `/data`.
    pub fn fileio_input() -> String {
        let words: Vec<&str> =
            "the quick brown fox jumps over lazy dog wasm task migrate checkpoint resume yield fuel stack"
                .split(' ')
                .collect();
        let mut text = String::new();
        let mut x: u32 = 1;
        for i in 0..200 {
            text.push_str(&format!("{:03}", i + 1));
            for _ in 0..3 + i % 9 {
                // A 31-bit LCG: fixed, platform-independent word choice.
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
                text.push(' ');
                text.push_str(words[x as usize % words.len()]);
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_artifact_exists() {
        assert_eq!(artifacts::ALL.len(), 12);
        for (name, path) in artifacts::ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert_eq!(&bytes[..4], b"\0asm", "{name} is not a wasm module");
        }
    }

    #[test]
    fn fileio_input_is_stable() {
        let text = inputs::fileio_input();
        assert_eq!(text.lines().count(), 200);
        assert!(text.starts_with("001 "));
        assert_eq!(text, inputs::fileio_input());
    }

    #[test]
    fn stub_parses() {
        wat::parse_str(inputs::WMIG_STUB_WAT).expect("stub is valid WAT");
    }
}
