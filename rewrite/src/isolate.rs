//! The rewrite in a child process with hard limits.
//!
//! Binaryen is C++: a module that makes it abort, throw `bad_alloc` or loop
//! would take the whole worker down with it (and every task on it) if it ran
//! in the worker's process. So a program that links this crate can name an
//! executable that performs one rewrite ([`child_main`]) and call
//! [`isolate`]; from then on every cache miss validates the module in
//! process (a refusal keeps its precise [`crate::ModuleError`]) and runs the
//! rest of the rewrite in a fresh child under `RLIMIT_AS` and `RLIMIT_CPU`,
//! killed after a wall-clock deadline and when its parent dies. A crash, an
//! exhausted limit or a timeout fails only the submission of that module,
//! with a reason that says which.
//!
//! The exchange is a private temporary directory: `in.wasm` and `version`
//! in; `main.wasm`, `rewind.wasm` (rewriter 3+ when not an Asyncify
//! fallback), `stats` out, or `error` with the rewrite's own message.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Instrumented, RewriteError, RewriteStats};

/// Bounds on one rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space of the child (`RLIMIT_AS`), bytes.
    pub memory: u64,
    /// CPU time (`RLIMIT_CPU`) and wall-clock time, each.
    pub time: Duration,
}

impl Limits {
    /// 8 GiB and 10 minutes. The largest module of our corpus (Go, 2.9 MB)
    /// peaks at 0.9 GiB resident and 8 s in a debug build of the rewrite;
    /// memory grows about linearly with code size, so this admits modules
    /// around 20 MB while still stopping a runaway long before the machine.
    pub const DEFAULT: Limits = Limits {
        memory: 8 << 30,
        time: Duration::from_secs(600),
    };

    /// [`Limits::DEFAULT`], overridden by `WMIG_REWRITE_MEMORY_MIB` and
    /// `WMIG_REWRITE_SECS` when set to a number.
    pub fn from_env() -> Limits {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Limits {
            memory: num("WMIG_REWRITE_MEMORY_MIB").map_or(Self::DEFAULT.memory, |m| m << 20),
            time: num("WMIG_REWRITE_SECS").map_or(Self::DEFAULT.time, Duration::from_secs),
        }
    }
}

/// How to start a child that runs [`child_main`].
#[derive(Debug, Clone)]
pub struct Isolation {
    pub program: PathBuf,
    /// Arguments before the exchange directory, which is passed last.
    pub args: Vec<OsString>,
    pub limits: Limits,
}

static ISOLATION: OnceLock<Isolation> = OnceLock::new();

/// Run every later rewrite of this process in a child (see the module
/// docs). Set once; a second call is ignored and returns false.
pub fn isolate(isolation: Isolation) -> bool {
    ISOLATION.set(isolation).is_ok()
}

pub(crate) fn configured() -> Option<&'static Isolation> {
    ISOLATION.get()
}

/// The child's side: rewrite `dir/in.wasm` as rewriter `dir/version` and
/// write the result beside it. Returns the process exit code.
pub fn child_main(dir: &Path) -> i32 {
    let run = || -> Result<Result<Instrumented, RewriteError>, std::io::Error> {
        let wasm = fs::read(dir.join("in.wasm"))?;
        // Fault injection for the end-to-end test of a crashing rewrite:
        // `WMIG_FAULT=rewrite-abort:HASH` aborts on modules whose blake3
        // starts with HASH.
        if let Some(prefix) = std::env::var("WMIG_FAULT")
            .ok()
            .and_then(|f| f.strip_prefix("rewrite-abort:").map(str::to_owned))
        {
            if blake3::hash(&wasm).to_hex().starts_with(prefix.as_str()) {
                std::process::abort();
            }
        }
        let version = fs::read_to_string(dir.join("version"))?
            .trim()
            .parse::<u32>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(crate::instrument_in_process(&wasm, version))
    };
    match run() {
        Ok(Ok(out)) => {
            let written = fs::write(dir.join("stats"), encode_stats(&out.stats))
                .and_then(|()| match &out.rewind {
                    Some(r) => fs::write(dir.join("rewind.wasm"), r),
                    None => Ok(()),
                })
                // Last, so that its presence means the rest is complete.
                .and_then(|()| fs::write(dir.join("main.wasm"), &out.bytes));
            match written {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("could not write the rewritten module: {e}");
                    2
                }
            }
        }
        Ok(Err(e)) => match fs::write(dir.join("error"), e.to_string()) {
            Ok(()) => 3,
            Err(_) => 2,
        },
        Err(e) => {
            eprintln!(
                "could not read the module to rewrite from {}: {e}",
                dir.display()
            );
            2
        }
    }
}

/// The parent's side: one rewrite in a child under `iso`'s limits.
pub(crate) fn rewrite(
    iso: &Isolation,
    wasm: &[u8],
    version: u32,
) -> Result<Instrumented, RewriteError> {
    let setup = |e: std::io::Error| RewriteError::Isolation(format!("could not prepare it: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("wmig-rewrite-")
        .tempdir()
        .map_err(setup)?;
    fs::write(dir.path().join("in.wasm"), wasm).map_err(setup)?;
    fs::write(dir.path().join("version"), version.to_string()).map_err(setup)?;
    let stderr = fs::File::create(dir.path().join("stderr")).map_err(setup)?;

    let mut cmd = Command::new(&iso.program);
    cmd.args(&iso.args)
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    limit(&mut cmd, iso.limits);
    let mut child = cmd.spawn().map_err(|e| {
        RewriteError::Isolation(format!(
            "could not start {} for it: {e}",
            iso.program.display()
        ))
    })?;

    let deadline = Instant::now() + iso.limits.time;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RewriteError::Crashed(format!(
                    "it ran past its {} s limit and was stopped; if the module is that large, raise WMIG_REWRITE_SECS where it is rewritten",
                    iso.limits.time.as_secs()
                )));
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                let _ = child.kill();
                return Err(RewriteError::Isolation(format!(
                    "could not wait for its process: {e}"
                )));
            }
        }
    };

    let read = |name: &str| fs::read(dir.path().join(name));
    if status.success() {
        let fail =
            |what: &str| RewriteError::Isolation(format!("its process ended without {what}"));
        let bytes = read("main.wasm").map_err(|_| fail("the rewritten module"))?;
        let stats = read("stats")
            .ok()
            .and_then(|s| decode_stats(&s))
            .ok_or_else(|| fail("its statistics"))?;
        return Ok(Instrumented {
            bytes,
            rewind: read("rewind.wasm").ok(),
            module_hash: blake3::hash(wasm),
            stats,
            version,
        });
    }
    if let Ok(message) = fs::read_to_string(dir.path().join("error")) {
        return Err(RewriteError::Isolated(message));
    }
    Err(RewriteError::Crashed(crash_reason(
        status,
        &read("stderr").unwrap_or_default(),
        iso.limits,
    )))
}

/// Which way the child died, what to do about it, and the end of what it
/// printed.
fn crash_reason(status: std::process::ExitStatus, stderr: &[u8], limits: Limits) -> String {
    use std::os::unix::process::ExitStatusExt;
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    let mib = limits.memory >> 20;
    let secs = limits.time.as_secs();
    let oom = text.contains("bad_alloc") || text.contains("memory allocation of");
    let report = "the module cannot run under wmig as it is; report it with the module attached";
    let how = match status.signal() {
        _ if oom => format!(
            "it ran out of memory at its {mib} MiB limit; if the module is that large, raise WMIG_REWRITE_MEMORY_MIB where it is rewritten"
        ),
        Some(libc::SIGXCPU) => format!(
            "it used up its {secs} s CPU limit; if the module is that large, raise WMIG_REWRITE_SECS where it is rewritten"
        ),
        Some(libc::SIGKILL) => format!("it was killed (SIGKILL, the system may be out of memory); {report}"),
        Some(libc::SIGABRT) => format!("it aborted (SIGABRT) within its limits of {mib} MiB and {secs} s; {report}"),
        Some(libc::SIGSEGV) => format!("it crashed (SIGSEGV) within its limits of {mib} MiB and {secs} s; {report}"),
        Some(sig) => format!("it died of signal {sig}; {report}"),
        None => format!("its process exited with {status}; {report}"),
    };
    if tail.is_empty() {
        how
    } else {
        format!("{how}. It printed: {tail}")
    }
}

#[cfg(target_os = "linux")]
fn limit(cmd: &mut Command, limits: Limits) {
    use std::os::unix::process::CommandExt;
    let cpu = limits.time.as_secs().max(1);
    let memory = limits.memory;
    // SAFETY: the hook runs between fork and exec and calls only
    // async-signal-safe functions (setrlimit, prctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || apply_limits(memory, cpu));
    }
}

#[cfg(target_os = "linux")]
fn apply_limits(memory: u64, cpu: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| {
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit for the call's duration.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_AS, memory)?;
    set(libc::RLIMIT_CPU, cpu)?;
    // A worker killed mid-rewrite takes its rewrite with it.
    // SAFETY: PR_SET_PDEATHSIG takes one signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn limit(_cmd: &mut Command, _limits: Limits) {}

const STATS_FIELDS: usize = 8;

fn encode_stats(s: &RewriteStats) -> String {
    let f = [
        s.functions as u64,
        s.loop_checks as u64,
        s.entry_checks as u64,
        s.mutable_globals as u64,
        s.leaf_functions as u64,
        s.pausable_functions as u64,
        u64::from(s.asyncify_fallback),
        s.millis,
    ];
    f.map(|n| n.to_string()).join(" ")
}

fn decode_stats(bytes: &[u8]) -> Option<RewriteStats> {
    let text = std::str::from_utf8(bytes).ok()?;
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() != STATS_FIELDS {
        return None;
    }
    let u = |i: usize| usize::try_from(f[i]).ok();
    Some(RewriteStats {
        functions: u(0)?,
        loop_checks: u(1)?,
        entry_checks: u(2)?,
        mutable_globals: u(3)?,
        leaf_functions: u(4)?,
        pausable_functions: u(5)?,
        asyncify_fallback: f[6] != 0,
        millis: f[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_survive_the_exchange() {
        let s = RewriteStats {
            functions: 7,
            loop_checks: 3,
            entry_checks: 2,
            mutable_globals: 5,
            leaf_functions: 1,
            pausable_functions: 4,
            asyncify_fallback: true,
            millis: 1234,
        };
        assert_eq!(decode_stats(encode_stats(&s).as_bytes()), Some(s));
        assert_eq!(decode_stats(b"1 2 3"), None);
        assert_eq!(decode_stats(b"1 2 3 4 5 6 7 x"), None);
    }

    fn sh(script: &str, limits: Limits) -> Isolation {
        Isolation {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into()],
            limits,
        }
    }

    const TINY: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

    #[test]
    fn a_child_that_aborts_fails_only_that_rewrite() {
        let wasm = wat::parse_str(TINY).expect("wat");
        let err = rewrite(
            &sh("echo boom >&2; kill -ABRT $$", Limits::DEFAULT),
            &wasm,
            4,
        )
        .expect_err("an aborting child is an error");
        let msg = err.to_string();
        assert!(
            msg.contains("aborted (SIGABRT)") && msg.contains("boom"),
            "{msg}"
        );
    }

    #[test]
    fn a_child_past_its_time_is_stopped() {
        let wasm = wat::parse_str(TINY).expect("wat");
        let limits = Limits {
            memory: Limits::DEFAULT.memory,
            time: Duration::from_secs(1),
        };
        let start = Instant::now();
        let err = rewrite(&sh("sleep 30", limits), &wasm, 4).expect_err("stopped");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("past its 1 s limit"), "{err}");
    }

    #[test]
    fn a_child_s_own_error_is_passed_on_verbatim() {
        let wasm = wat::parse_str(TINY).expect("wat");
        let iso = sh(
            "printf 'no good reason' > \"$1/error\"; exit 3",
            Limits::DEFAULT,
        );
        let err = rewrite(&iso, &wasm, 4).expect_err("refused");
        assert_eq!(err.to_string(), "no good reason");
    }

    #[test]
    fn the_limits_apply_to_the_child() {
        let wasm = wat::parse_str(TINY).expect("wat");
        let limits = Limits {
            memory: 64 << 20,
            time: Duration::from_secs(30),
        };
        let iso = sh(
            "printf '%s %s' \"$(ulimit -v)\" \"$(ulimit -t)\" > \"$1/error\"; exit 3",
            limits,
        );
        let err = rewrite(&iso, &wasm, 4).expect_err("reported");
        assert_eq!(
            err.to_string(),
            "65536 30",
            "address space in KiB, CPU in s"
        );
    }
}
