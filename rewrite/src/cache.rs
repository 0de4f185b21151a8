//! On-disk cache of rewritten modules, keyed by (module blake3, rewriter
//! version): the rewrite costs a Binaryen run (tens to hundreds of ms), a
//! lookup costs one file read and one hash.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{instrument_version, Instrumented, RewriteError, RewriteStats, REWRITER_VERSION};

/// A directory of rewritten modules. Entries are written atomically (temp
/// file + rename) and verified on read, so a crash or a corrupt file costs a
/// rewrite, never a wrong module.
#[derive(Debug, Clone)]
pub struct RewriteCache {
    dir: PathBuf,
}

impl RewriteCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RewriteCache { dir: dir.into() }
    }

    /// `$WMIG_CACHE_DIR/rewrite`, else `$XDG_CACHE_HOME/wmig/rewrite`, else
    /// `~/.cache/wmig/rewrite`, else a directory under the system temp dir.
    pub fn default_dir() -> PathBuf {
        cache_root().join("rewrite")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the current rewrite of `wasm` is on disk (no rewrite needed).
    pub fn contains(&self, wasm: &[u8]) -> bool {
        self.entry(&blake3::hash(wasm), REWRITER_VERSION).is_file()
    }

    fn entry(&self, module_hash: &blake3::Hash, version: u32) -> PathBuf {
        self.dir
            .join(format!("{}-r{version}.wasm", module_hash.to_hex()))
    }

    /// The instrumented form of `wasm`, from cache or freshly rewritten.
    pub fn instrument(&self, wasm: &[u8]) -> Result<Instrumented, RewriteError> {
        self.instrument_version(wasm, REWRITER_VERSION)
    }

    /// The form rewriter `version` gives `wasm`, from cache or freshly rewritten.
    pub fn instrument_version(
        &self,
        wasm: &[u8],
        version: u32,
    ) -> Result<Instrumented, RewriteError> {
        let module_hash = blake3::hash(wasm);
        let path = self.entry(&module_hash, version);
        // Rewriter 3's rewind module sits beside the main one (empty when
        // the module fell back to Asyncify); it is written first, so a main
        // entry without it is a torn write and is redone.
        let rewind_path = path.with_extension("rw.wasm");
        if let Some(bytes) = read_verified(&path) {
            let rewind = if version >= 3 {
                read_verified(&rewind_path).map(|r| (!r.is_empty()).then_some(r))
            } else {
                Some(None)
            };
            if let Some(rewind) = rewind {
                return Ok(Instrumented {
                    bytes,
                    rewind,
                    module_hash,
                    stats: RewriteStats::default(),
                    version,
                });
            }
        }
        tracing::info!(
            module = %module_hash.to_hex(),
            bytes = wasm.len(),
            "preparing a module seen for the first time: rewriting it to be pausable (cached afterwards)"
        );
        let out = instrument_version(wasm, version)?;
        tracing::info!(
            module = %module_hash.to_hex(),
            ms = out.stats.millis,
            pausable = out.stats.pausable_functions,
            functions = out.stats.functions,
            "module rewritten"
        );
        // A cache that cannot be written is not an error: the rewrite stands.
        let written = if version >= 3 {
            write_entry(&rewind_path, out.rewind.as_deref().unwrap_or_default())
        } else {
            Ok(())
        };
        if let Err(e) = written.and_then(|()| write_entry(&path, &out.bytes)) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache rewritten module");
        }
        Ok(out)
    }
}

/// Root of wmig's caches (see [`RewriteCache::default_dir`]).
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("WMIG_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("wmig");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("wmig");
    }
    std::env::temp_dir().join("wmig-cache")
}

/// Entry layout: blake3 of the module bytes (32) followed by the bytes.
fn read_verified(path: &Path) -> Option<Vec<u8>> {
    let data = fs::read(path).ok()?;
    if data.len() < 32 {
        return None;
    }
    let (sum, bytes) = data.split_at(32);
    (blake3::hash(bytes).as_bytes() == sum).then(|| bytes.to_vec())
}

fn write_entry(path: &Path, bytes: &[u8]) -> Result<(), RewriteError> {
    let io = |source| RewriteError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(blake3::hash(bytes).as_bytes()).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
