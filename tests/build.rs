//! Builds the example guest programs in `tasks/` for `wasm32-wasip1` and generates
//! `$OUT_DIR/artifacts.rs`, one `pub const` per task naming its `.wasm` by absolute
//! path (included by `src/lib.rs` as `wmig_tests::artifacts`).
//!
//! `tasks/` is its own Cargo workspace, built by a nested `cargo` into
//! `<target dir>/wasm-tasks`: a separate target dir has its own lock, so the nested
//! build never waits on the outer one, and the `.wasm` files survive `OUT_DIR`
//! hash changes. The nested cargo must not inherit the outer build's settings
//! (rustflags meant for the host, the host target, profile overrides, clippy's
//! wrapper), so those variables are removed from its environment.

use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir
        .parent()
        .expect("tests/ sits inside the repository");
    let tasks_dir = repo.join("tasks");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wasm_target_dir = workspace_target_dir(&out_dir).join("wasm-tasks");

    let tasks = discover_tasks(&tasks_dir);
    rerun_if_changed(repo, &tasks);
    check_target_installed();
    build_tasks(&tasks_dir, &wasm_target_dir);

    let wasm_dir = wasm_target_dir.join(TARGET).join("release");
    let generated = generate(&wasm_dir, &tasks);
    fs::write(out_dir.join("artifacts.rs"), generated).expect("write artifacts.rs");
}

/// Task crates: every directory of `tasks/` with a `Cargo.toml`, sorted. Each is a
/// bin crate whose binary is named after its directory.
fn discover_tasks(tasks_dir: &Path) -> Vec<String> {
    let entries = fs::read_dir(tasks_dir)
        .unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", tasks_dir.display())));
    let mut tasks: Vec<String> = entries
        .map(|entry| entry.expect("read tasks/ entry").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .map(|path| {
            let name = path.file_name().and_then(|n| n.to_str());
            name.expect("task directory names are UTF-8").to_owned()
        })
        .collect();
    tasks.sort();
    assert!(
        !tasks.is_empty(),
        "no task crates under {}",
        tasks_dir.display()
    );
    tasks
}

/// Lists exactly the inputs of the nested build, not whole directories: a
/// `tasks/target` left by someone building there by hand must not trigger reruns.
fn rerun_if_changed(repo: &Path, tasks: &[String]) {
    let mut paths = vec![
        repo.join("tasks/Cargo.toml"),
        repo.join("tasks/Cargo.lock"),
        repo.join("guest-sdk/Cargo.toml"),
        repo.join("guest-sdk/src"),
    ];
    for task in tasks {
        paths.push(repo.join("tasks").join(task).join("Cargo.toml"));
        paths.push(repo.join("tasks").join(task).join("src"));
    }
    // Adding a task means a new directory: watch the listing too.
    paths.push(repo.join("tasks"));
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The outer build's target directory, found from `OUT_DIR` by Cargo's
/// `CACHEDIR.TAG` marker, so custom profiles and any `CARGO_TARGET_DIR` work. With
/// `--target`, `<target>/<triple>` is tagged too: take the outermost of the run of
/// tagged ancestors, so every host triple shares one `wasm-tasks`. Failing that, an
/// absolute `CARGO_TARGET_DIR`, else the profile dir.
fn workspace_target_dir(out_dir: &Path) -> PathBuf {
    let tagged = |dir: &Path| dir.join("CACHEDIR.TAG").is_file();
    if let Some(mut dir) = out_dir.ancestors().find(|dir| tagged(dir)) {
        while let Some(parent) = dir.parent().filter(|p| tagged(p)) {
            dir = parent;
        }
        return dir.to_owned();
    }
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    // OUT_DIR is <profile dir>/build/<pkg>-<hash>/out.
    out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <profile>/build/<pkg>-<hash>/out")
        .to_owned()
}

/// Fails early, with the fix, when the toolchain lacks the wasm target; the
/// nested cargo's own error ("can't find crate for `std`") does not say what to do.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(&rustc).args(["--print", "sysroot"]).output() else {
        return; // let the build itself report a missing rustc
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        fail(&format!(
            "the Rust target {TARGET} is not installed (no {}).\n\
             The example tasks are built for it; install it with:\n\n    \
             rustup target add {TARGET}",
            sysroot.join("lib/rustlib").join(TARGET).display()
        ));
    }
}

fn build_tasks(tasks_dir: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args: Vec<OsString> = ["build", "--release", "--target", TARGET, "--manifest-path"]
        .map(OsString::from)
        .into();
    args.push(tasks_dir.join("Cargo.toml").into());
    args.push("--target-dir".into());
    args.push(target_dir.into());
    // For messages: `{cmd:?}` would also list every `env -u`.
    let shown = format!(
        "cargo {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut cmd = Command::new(&cargo);
    cmd.args(&args);
    for (key, _) in env::vars_os() {
        if key.to_str().is_some_and(leaks_outer_config) {
            cmd.env_remove(key);
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", Path::new(&cargo).display())));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "building the example tasks failed ({}):\n    {shown}\n\
             If the error above mentions `std` or the target, run:\n\n    \
             rustup target add {TARGET}",
            output.status
        ));
    }
}

/// Stops the build with `message` and no backtrace: these failures are about the
/// environment, not bugs in this script.
fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    std::process::exit(1)
}

/// Environment variables through which the outer build's configuration would reach
/// the nested one. `CARGO_CFG_*`/`CARGO_FEATURE_*` describe the host build;
/// `RUSTC_WORKSPACE_WRAPPER` is how `cargo clippy` runs, and would lint the tasks.
fn leaks_outer_config(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
    ];
    EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The contents of `artifacts.rs`.
fn generate(wasm_dir: &Path, tasks: &[String]) -> String {
    let mut code = String::from("// @generated by tests/build.rs\n\n");
    let mut all = String::new();
    for task in tasks {
        let wasm = wasm_dir.join(format!("{task}.wasm"));
        assert!(
            wasm.is_file(),
            "the tasks build succeeded but {} is missing",
            wasm.display()
        );
        let path = wasm.to_str().expect("target dir path is UTF-8");
        let konst = task.to_ascii_uppercase();
        writeln!(code, "/// `tasks/{task}`, built for {TARGET} (release).").expect("fmt");
        writeln!(code, "pub const {konst}: &str = {path:?};").expect("fmt");
        writeln!(all, "    ({task:?}, {konst}),").expect("fmt");
    }
    writeln!(code, "\n/// Every task as `(name, path)`, sorted by name.").expect("fmt");
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[\n{all}];").expect("fmt");
    code
}
