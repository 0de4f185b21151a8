//! Binaryen Asyncify through the `wasm-opt` crate.
//!
//! Chosen over a pass of our own because Asyncify is a mature, widely used
//! implementation of exactly the unwind/rewind transform wmig needs (every
//! control-flow shape, multi-value, indirect calls), and its cost is measured
//! in the README. Two Binaryen runs: Asyncify alone (with its internal local
//! optimisations), then the standard -O2 pipeline — the crate would otherwise
//! run the default passes *before* Asyncify and leave its output unoptimised.

use std::fs;

use wasm_opt::{Feature, OptimizationOptions, Pass};

use crate::{RewriteError, HOST_MODULE, SDK_PAUSE_IMPORTS, STACK_PAGES, YIELD_IMPORT};

/// Features the input may use and Binaryen must accept and preserve.
const FEATURES: [Feature; 8] = [
    Feature::MutableGlobals,
    Feature::TruncSat,
    Feature::Simd,
    Feature::BulkMemory,
    Feature::SignExt,
    Feature::ReferenceTypes,
    Feature::Multivalue,
    Feature::MultiMemory,
];

/// Run Asyncify (pausing at the yield import and the SDK's pause imports,
/// unwind buffer in a secondary memory) and then -O2.
///
/// `pausable`, when given, is the exact set of functions that can be on the
/// stack at a pause (computed by the rewrite with indirect calls resolved by
/// signature): Asyncify instruments only those. Left to itself it assumes
/// any `call_indirect` may pause, which drags every function that calls
/// through a pointer (formatting, trait objects) into the instrumentation.
pub fn run(
    wasm: &[u8],
    pausable: Option<&[String]>,
    version: u32,
) -> Result<Vec<u8>, RewriteError> {
    run_with(wasm, pausable, Levels::CURRENT, version)
}

/// Binaryen optimisation levels around Asyncify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// The level Asyncify itself runs at: above 0 it flattens, coalesces and
    /// re-optimises every function it instruments.
    pub asyncify: u32,
    /// A whole-module `-O<n>` pipeline over Asyncify's output, if any.
    pub after: Option<u32>,
}

impl Levels {
    pub const CURRENT: Levels = Levels {
        asyncify: 2,
        after: Some(2),
    };
}

fn options(level: u32) -> OptimizationOptions {
    match level {
        0 => OptimizationOptions::new_opt_level_0(),
        1 => OptimizationOptions::new_opt_level_1(),
        2 => OptimizationOptions::new_opt_level_2(),
        3 => OptimizationOptions::new_opt_level_3(),
        _ => OptimizationOptions::new_opt_level_4(),
    }
}

/// [`run`] at chosen levels (the benchmark's cost split measures each).
pub fn run_with(
    wasm: &[u8],
    pausable: Option<&[String]>,
    levels: Levels,
    version: u32,
) -> Result<Vec<u8>, RewriteError> {
    let err = |e: &dyn std::fmt::Display| RewriteError::Asyncify(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| err(&e))?;
    let input = dir.path().join("in.wasm");
    let mid = dir.path().join("mid.wasm");
    let out = dir.path().join("out.wasm");
    fs::write(&input, wasm).map_err(|e| err(&e))?;

    let mut imports = vec![format!("{HOST_MODULE}.{YIELD_IMPORT}")];
    imports.extend(
        SDK_PAUSE_IMPORTS
            .iter()
            .map(|n| format!("{HOST_MODULE}.{n}")),
    );
    if version >= crate::SLEEP_PAUSES_SINCE {
        // Rewriter 3's fallback: a sleep is a pause point there too.
        imports.push(format!("{}.{}", crate::WASI_MODULE, crate::SLEEP_IMPORT));
    }
    if version >= crate::READ_PAUSES_SINCE {
        imports.push(format!("{}.{}", crate::WASI_MODULE, crate::READ_IMPORT));
    }

    let mut asyncify = options(levels.asyncify);
    asyncify
        .add_default_passes(false)
        .add_pass(Pass::Asyncify)
        .set_pass_arg("asyncify-imports", &imports.join(","))
        .set_pass_arg("asyncify-in-secondary-memory", "")
        .set_pass_arg("asyncify-secondary-memory-size", &STACK_PAGES.to_string())
        .debug_info(true);
    if let Some(only) = pausable {
        asyncify.set_pass_arg("asyncify-ignore-indirect", "");
        if only.is_empty() {
            // An empty only-list means "no list" to Binaryen; with indirect
            // calls ignored and no function reaching a pause import, its own
            // analysis then instruments nothing, which is what we want.
        } else {
            asyncify.set_pass_arg("asyncify-onlylist", &only.join(","));
        }
    }
    enable(&mut asyncify);
    asyncify.run(&input, &mid).map_err(|e| err(&e))?;
    let Some(after) = levels.after else {
        return fs::read(&mid).map_err(|e| err(&e));
    };

    let mut optimize = options(after);
    optimize.debug_info(true);
    enable(&mut optimize);
    optimize.run(&mid, &out).map_err(|e| err(&e))?;

    fs::read(&out).map_err(|e| err(&e))
}

fn enable(opts: &mut OptimizationOptions) {
    opts.mvp_features_only();
    for f in FEATURES {
        opts.enable_feature(f);
    }
}
