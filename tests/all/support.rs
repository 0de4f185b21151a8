//! Helpers for starting `wmig` processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `wmig` command sharing one rewrite/compile cache across all tests, so
/// each module is rewritten and compiled once per test run.
pub fn wmig() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmig"));
    cmd.env("WMIG_CACHE_DIR", cache_dir());
    cmd
}

pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("wmig-cache")
}

/// Run to completion and return the output, failing the test with full
/// context if the process could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parse a `--stats-json` file.
pub fn stats(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("stats file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON {text}: {e}"))
}

pub fn stat_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats lack `{key}`: {v}"))
}
