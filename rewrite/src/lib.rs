//! The rewrite that makes any wasm32-wasip1 module pausable.
//!
//! Wasmtime cannot serialize a running instance — a paused call keeps native
//! frames — so wmig changes the program instead:
//!
//! 1. [`validate`]: refuse what the rewrite cannot handle (not wasm, no
//!    `_start`, shared memory, table mutation, foreign imports) with an error
//!    that names the problem.
//! 2. [`yields`]: inject **fuel-based yield points**. A counter global is
//!    decremented at every loop header and at the entry of every function that
//!    can recurse; when it reaches zero the module calls the host import
//!    `wmig.yield_point`, which refills it and decides whether to pause.
//!    Functions that neither loop nor recurse run a bounded amount of work and
//!    get no check, which keeps hot leaf code untouched.
//! 3. [`unwind`] (rewriter 3): wmig's own unwind/rewind transform lets the
//!    host unwind every frame into a buffer and rewind it later: each function
//!    that can be on the stack at a pause keeps a fast body (its own code plus
//!    a check after each call that can pause) and gets a rewind body, which
//!    [`split`] moves into a second module compiled only when a task first
//!    resumes. The buffer lives in a secondary memory (`wmig:stack`) so the
//!    guest's own memory, `memory.size` and allocator never see it. Modules
//!    it does not cover (reference-typed locals or values across a pause,
//!    passive data in a function that can pause) fall back to
//!    [`asyncify`], Binaryen's Asyncify, which rewriters 1 and 2 used.
//! 4. [`exports`]: export every mutable global (Asyncify's and LLVM's
//!    `__stack_pointer` included) so the host can capture and restore them.
//!
//! The result is deterministic (same input bytes → same output bytes) and
//! cached on disk by (module blake3, [`REWRITER_VERSION`]) in [`cache`].

pub mod asyncify;
mod build;
pub mod cache;
pub mod callgraph;
pub mod exports;
pub mod isolate;
pub mod split;
pub mod unwind;
pub mod validate;
pub mod yields;

use std::time::Instant;

pub use cache::RewriteCache;
pub use validate::ModuleError;

/// Bump whenever the rewrite's output changes: checkpoints record it and only
/// restore into the same rewrite, and the cache keys on it.
pub const REWRITER_VERSION: u32 = 4;
/// Every version this build can still produce, so that a checkpoint taken by
/// an older wmig resumes in the exact rewrite it was taken in.
pub const SUPPORTED_REWRITERS: [u32; 4] = [1, 2, 3, 4];

/// Import module of every host function wmig provides besides WASI.
pub const HOST_MODULE: &str = "wmig";
/// The injected import called when fuel runs out.
pub const YIELD_IMPORT: &str = "yield_point";
/// The check in a loop-only leaf function (rewriter 2+) calls this instead:
/// the host accounts fuel and enforces limits but never pauses there, since
/// such functions are left out of Asyncify (a pause waits for the leaf to
/// return to a real yield point).
pub const TICK_IMPORT: &str = "tick";
/// WASI's import module.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// The blocking WASI call that is also a pause point from rewriter
/// [`SLEEP_PAUSES_SINCE`] on: a task asleep in it can be paused and moved.
pub const SLEEP_IMPORT: &str = "poll_oneoff";
/// First rewriter version that unwinds from inside [`SLEEP_IMPORT`].
pub const SLEEP_PAUSES_SINCE: u32 = 3;

/// The other blocking WASI call that is a pause point, from rewriter
/// [`READ_PAUSES_SINCE`] on: a task waiting for input on stdin can be paused
/// and moved (the read consumes nothing then and runs again on resume).
pub const READ_IMPORT: &str = "fd_read";
/// First rewriter version that unwinds from inside [`READ_IMPORT`].
pub const READ_PAUSES_SINCE: u32 = 4;

/// Whether the host may pause inside a call to import `module.name` in
/// rewriter `version`'s output.
pub fn is_pause_import(module: &str, name: &str, version: u32) -> bool {
    (module == HOST_MODULE && (name == YIELD_IMPORT || SDK_PAUSE_IMPORTS.contains(&name)))
        || (module == WASI_MODULE
            && ((version >= SLEEP_PAUSES_SINCE && name == SLEEP_IMPORT)
                || (version >= READ_PAUSES_SINCE && name == READ_IMPORT)))
}

/// Guest-SDK imports at which the host may pause (Asyncify must treat them as
/// unwind points). `progress` is informational and never pauses.
pub const SDK_PAUSE_IMPORTS: [&str; 2] = ["yield_now", "checkpoint_now"];
/// Guest-SDK imports that never pause.
pub const SDK_OTHER_IMPORTS: [&str; 1] = ["progress"];
/// Export name of the fuel counter global.
pub const FUEL_EXPORT: &str = "wmig:fuel";
/// Export name of the secondary memory holding Asyncify's unwound stack.
pub const STACK_MEMORY_EXPORT: &str = "wmig:stack";
/// Prefix of the exports naming every mutable global: `wmig:global:<index>`.
pub const GLOBAL_EXPORT_PREFIX: &str = "wmig:global:";
/// Size of the unwind buffer in 64 KiB pages. Each unwound frame stores its
/// live locals (tens of bytes), so 16 MiB holds hundreds of thousands of
/// frames; untouched pages cost no memory.
pub const STACK_PAGES: u32 = 256;
/// Where the Asyncify data header (current, end pointers) sits in `wmig:stack`.
pub const STACK_HEADER_OFFSET: u32 = 0;

/// Why a module could not be made pausable.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("could not instrument the module with yield points: {0}")]
    Yields(String),
    #[error("Binaryen Asyncify failed on this module: {0}")]
    Asyncify(String),
    #[error(transparent)]
    Unwind(#[from] unwind::UnwindError),
    #[error("could not export the module's globals after Asyncify: {0}")]
    Exports(String),
    #[error("this wmig cannot produce rewriter version {0} (it supports {SUPPORTED_REWRITERS:?}); resume the checkpoint with the wmig release that wrote it")]
    UnknownVersion(u32),
    /// The rewrite's child process reported this error (see [`isolate`]).
    #[error("{0}")]
    Isolated(String),
    #[error(
        "the rewrite of this module failed in its own process (nothing else was affected): {0}"
    )]
    Crashed(String),
    #[error("could not run the rewrite in a separate process: {0}")]
    Isolation(String),
    #[error("rewrite cache at {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The instrumented module and what the rewrite saw.
#[derive(Debug, Clone)]
pub struct Instrumented {
    pub bytes: Vec<u8>,
    /// Rewriter 3: the rewind bodies, a module of their own that imports the
    /// main one (see [`split`]); the host needs it only to resume.
    pub rewind: Option<Vec<u8>>,
    /// blake3 of the original module.
    pub module_hash: blake3::Hash,
    pub stats: RewriteStats,
    /// The rewriter version that produced `bytes`.
    pub version: u32,
}

/// What the rewrite did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    pub functions: usize,
    pub loop_checks: usize,
    pub entry_checks: usize,
    pub mutable_globals: usize,
    /// Loop-only leaf functions whose checks tick instead of yielding.
    pub leaf_functions: usize,
    /// Functions Asyncify instruments (those that can be on the stack at a pause).
    pub pausable_functions: usize,
    /// Rewriter 3 fell back to Asyncify (the module uses something wmig's
    /// own unwind transform does not cover).
    pub asyncify_fallback: bool,
    pub millis: u64,
}

/// Validate and rewrite `wasm` with the current rewriter (no caching; see
/// [`RewriteCache`]).
pub fn instrument(wasm: &[u8]) -> Result<Instrumented, RewriteError> {
    instrument_version(wasm, REWRITER_VERSION)
}

/// Validate and rewrite `wasm` exactly as rewriter `version` did: in a
/// bounded child process when this process asked for it
/// ([`isolate::isolate`]), else here.
pub fn instrument_version(wasm: &[u8], version: u32) -> Result<Instrumented, RewriteError> {
    match isolate::configured() {
        Some(iso) => {
            if !SUPPORTED_REWRITERS.contains(&version) {
                return Err(RewriteError::UnknownVersion(version));
            }
            // Validation is ours, pure Rust and fuzzed: a refusal keeps its
            // precise error. Only what follows runs in the child.
            validate::validate(wasm)?;
            isolate::rewrite(iso, wasm, version)
        }
        None => instrument_in_process(wasm, version),
    }
}

/// [`instrument_version`] in this process, whatever [`isolate`] says.
pub fn instrument_in_process(wasm: &[u8], version: u32) -> Result<Instrumented, RewriteError> {
    if !SUPPORTED_REWRITERS.contains(&version) {
        return Err(RewriteError::UnknownVersion(version));
    }
    let start = Instant::now();
    validate::validate(wasm)?;
    let injected = yields::inject(wasm, version)?;
    let mut stats = injected.stats;
    let own = match (version, injected.pausable.as_deref()) {
        (3.., Some(pausable)) => {
            match unwind::transform(&injected.bytes, pausable, version)
                .and_then(|(bytes, u)| split::split(&bytes).map(|s| (s, u.mutable_globals)))
            {
                Ok(done) => Some(done),
                Err(unwind::UnwindError::Unsupported(why)) => {
                    tracing::info!("{why}; using Binaryen Asyncify for this module");
                    stats.asyncify_fallback = true;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };
    let (bytes, rewind) = match own {
        Some((split, mutable_globals)) => {
            stats.mutable_globals = mutable_globals;
            (split.main, Some(split.rewind))
        }
        None => {
            let asyncified = asyncify::run(&injected.bytes, injected.pausable.as_deref(), version)?;
            let (bytes, mutable_globals) = exports::export_state(&asyncified)?;
            stats.mutable_globals = mutable_globals;
            (bytes, None)
        }
    };
    stats.millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Instrumented {
        bytes,
        rewind,
        module_hash: blake3::hash(wasm),
        stats,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP: &str = r#"(module
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 1024))
        (func $f (param i32) (result i32)
          (if (result i32) (local.get 0)
            (then (call $f (i32.sub (local.get 0) (i32.const 1))))
            (else (global.set $sp (i32.add (global.get $sp) (i32.const 16))) (global.get $sp))))
        (func (export "_start")
          (local i32)
          (loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get 0) (i32.const 100))))
          (drop (call $f (i32.const 5)))))"#;

    #[test]
    fn rewrite_is_deterministic_and_exports_state() {
        let wasm = wat::parse_str(LOOP).expect("wat");
        let a = instrument(&wasm).expect("first rewrite");
        let b = instrument(&wasm).expect("second rewrite");
        assert_eq!(a.bytes, b.bytes, "same input must give the same bytes");
        assert_eq!(a.stats.loop_checks, 1);
        assert_eq!(a.stats.entry_checks, 1);
        // The guest's global, the fuel counter and Asyncify's two globals.
        assert!(a.stats.mutable_globals >= 4, "{:?}", a.stats);

        let exports: Vec<String> = wasmparser::Parser::new(0)
            .parse_all(&a.bytes)
            .filter_map(|p| match p {
                Ok(wasmparser::Payload::ExportSection(r)) => Some(r),
                _ => None,
            })
            .flat_map(|r| {
                r.into_iter()
                    .filter_map(|e| e.ok().map(|e| e.name.to_string()))
            })
            .collect();
        for name in [
            FUEL_EXPORT,
            STACK_MEMORY_EXPORT,
            "asyncify_start_unwind",
            "_start",
            "memory",
        ] {
            assert!(
                exports.iter().any(|e| e == name),
                "missing export {name}: {exports:?}"
            );
        }
    }

    #[test]
    fn cache_returns_the_same_bytes() {
        let wasm = wat::parse_str(LOOP).expect("wat");
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = RewriteCache::new(dir.path());
        let fresh = cache.instrument(&wasm).expect("rewrite");
        let cached = cache.instrument(&wasm).expect("cached");
        assert_eq!(fresh.bytes, cached.bytes);
        // A corrupt entry is ignored and rewritten, never used.
        for entry in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            std::fs::write(entry.path(), b"garbage").expect("corrupt");
        }
        assert_eq!(
            cache.instrument(&wasm).expect("rewritten").bytes,
            fresh.bytes
        );
    }
}
