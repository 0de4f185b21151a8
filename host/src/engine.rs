//! The wasmtime engine and the module pipeline: original bytes → validated,
//! rewritten module (cached by blake3 + rewriter version) → compiled module
//! (cached by instrumented blake3 + engine settings) → `InstancePre` ready to
//! instantiate in microseconds.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash as _, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::{Config, Engine, InstancePre, Linker, Module, OptLevel};
use wmig_proto::Hash;
use wmig_rewrite::{RewriteCache, RewriteStats};

use crate::task::{add_host_functions, HostState};
use crate::HostError;

/// How deep guest recursion may go, in bytes of native stack. The rewrite
/// makes frames larger, so this is 16× wasmtime's default (512 KiB): every
/// program `wasmtime run` can run, wmig can run rewritten.
pub const MAX_WASM_STACK: usize = 8 << 20;
/// Native stack of the thread that runs guests: the wasm stack plus room for
/// the host functions beneath it.
pub const GUEST_THREAD_STACK: usize = MAX_WASM_STACK + (8 << 20);

/// Settings of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Root of the rewrite and compiled-module caches; `None` = in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: Some(wmig_rewrite::cache::cache_root()),
        }
    }
}

/// A module ready to run: what it was, what it became, and how to instantiate it.
pub struct PreparedModule {
    /// blake3 of the module as supplied: what checkpoints name.
    pub module_hash: Hash,
    /// blake3 of the instrumented module.
    pub instrumented_hash: Hash,
    /// The rewriter version that instrumented it.
    pub rewriter: u32,
    pub rewrite: RewriteStats,
    pub(crate) pre: InstancePre<HostState>,
    /// Rewriter 3's rewind bodies (a module of their own, see
    /// `wmig_rewrite::split`), compiled the first time a task resumes.
    pub(crate) rewind: Option<Arc<RewindModule>>,
}

impl PreparedModule {
    /// `wmig` when the module runs under rewriter 3's own unwind transform,
    /// `asyncify` under Binaryen's (rewriters 1 and 2, and modules rewriter 3
    /// does not cover).
    pub fn unwind_transform(&self) -> &'static str {
        if self.rewind.is_some() {
            "wmig"
        } else {
            "asyncify"
        }
    }

    /// Compile the rewind module now (or load it from the cache), so that
    /// no resume waits for it.
    pub fn prepare_rewind(&self) -> Result<(), HostError> {
        match &self.rewind {
            Some(rw) => rw.module().map(|_| ()),
            None => Ok(()),
        }
    }

    /// Compile the rewind module now, on another thread, so that the first
    /// checkpoint of a task does not wait for it (workers checkpoint every
    /// task; a plain `wmig run` rarely needs it).
    pub fn prefetch_rewind(&self) {
        if let Some(rw) = &self.rewind {
            let rw = rw.clone();
            let spawned = std::thread::Builder::new()
                .name("wmig-rewind-compile".into())
                .spawn(move || {
                    if let Err(e) = rw.module() {
                        tracing::warn!(error = %e, "compiling the rewind module failed");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start compiling the rewind module");
            }
        }
    }
}

/// The rewind half of a module, compiled on first use.
pub(crate) struct RewindModule {
    engine: Engine,
    compiled_dir: Option<PathBuf>,
    bytes: Vec<u8>,
    module: std::sync::OnceLock<Result<Module, String>>,
}

impl RewindModule {
    pub(crate) fn module(&self) -> Result<&Module, HostError> {
        self.module
            .get_or_init(|| {
                let start = Instant::now();
                let m = compile_cached(
                    &self.engine,
                    self.compiled_dir.as_deref(),
                    &self.bytes,
                    &Hash::of(&self.bytes),
                )
                .map_err(|e| format!("the module's rewind bodies: {e}"));
                tracing::debug!(
                    ms = start.elapsed().as_millis() as u64,
                    "rewind module ready"
                );
                m
            })
            .as_ref()
            .map_err(|e| HostError::Engine(e.clone()))
    }
}

/// One engine and its caches; share it between all tasks of a process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    rewrite: Option<RewriteCache>,
    compiled_dir: Option<PathBuf>,
    modules: Mutex<HashMap<(Hash, u32), Arc<PreparedModule>>>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, HostError> {
        let engine =
            Engine::new(&engine_config()).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        add_host_functions(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(Runtime {
            engine,
            linker,
            rewrite: config
                .cache_dir
                .as_ref()
                .map(|d| RewriteCache::new(d.join("rewrite"))),
            compiled_dir: config.cache_dir.map(|d| d.join("compiled")),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the on-disk cache of `config` already holds the current
    /// rewrite of `wasm`, without building an engine (cheap enough to ask on
    /// every `wmig run`).
    pub fn is_cached(config: &RuntimeConfig, wasm: &[u8]) -> bool {
        config
            .cache_dir
            .as_ref()
            .is_some_and(|d| RewriteCache::new(d.join("rewrite")).contains(wasm))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Validate, rewrite and compile `wasm`, or return the cached result.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<PreparedModule>, HostError> {
        self.load_version(wasm, wmig_rewrite::REWRITER_VERSION)
    }

    /// Like [`Runtime::load`], with the rewrite of an older wmig: a checkpoint
    /// resumes only in the exact rewrite it was taken in (its manifest names
    /// the version), so a task checkpointed before an upgrade still resumes.
    pub fn load_version(
        &self,
        wasm: &[u8],
        version: u32,
    ) -> Result<Arc<PreparedModule>, HostError> {
        let module_hash = Hash::of(wasm);
        if let Some(m) = self.lock_modules().get(&(module_hash, version)) {
            return Ok(m.clone());
        }
        let instrumented = match &self.rewrite {
            Some(cache) => cache.instrument_version(wasm, version)?,
            None => wmig_rewrite::instrument_version(wasm, version)?,
        };
        let instrumented_hash = Hash::of(&instrumented.bytes);
        let module = self.compile(&instrumented.bytes, &instrumented_hash)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Engine(format!("linking the module failed: {e:#}")))?;
        let prepared = Arc::new(PreparedModule {
            module_hash,
            instrumented_hash,
            rewriter: version,
            rewrite: instrumented.stats,
            pre,
            rewind: instrumented.rewind.map(|bytes| {
                Arc::new(RewindModule {
                    engine: self.engine.clone(),
                    compiled_dir: self.compiled_dir.clone(),
                    bytes,
                    module: std::sync::OnceLock::new(),
                })
            }),
        });
        self.lock_modules()
            .insert((module_hash, version), prepared.clone());
        Ok(prepared)
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<(Hash, u32), Arc<PreparedModule>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compile(&self, bytes: &[u8], hash: &Hash) -> Result<Module, HostError> {
        compile_cached(&self.engine, self.compiled_dir.as_deref(), bytes, hash)
    }
}

/// Compile `bytes`, or load what an earlier compile left in `compiled_dir`.
fn compile_cached(
    engine: &Engine,
    compiled_dir: Option<&Path>,
    bytes: &[u8],
    hash: &Hash,
) -> Result<Module, HostError> {
    let path = compiled_dir.map(|d| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        d.join(format!("{}-{:016x}.cwasm", hash.to_hex(), h.finish()))
    });
    if let Some(path) = &path {
        if let Some(module) = load_compiled(engine, path) {
            return Ok(module);
        }
    }
    let start = Instant::now();
    let module = Module::new(engine, bytes).map_err(|e| {
        HostError::Engine(format!("compiling the instrumented module failed: {e:#}"))
    })?;
    tracing::debug!(ms = start.elapsed().as_millis() as u64, "compiled module");
    if let Some(path) = &path {
        if let Err(e) = store_compiled(path, &module) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled module");
        }
    }
    Ok(module)
}

fn load_compiled(engine: &Engine, path: &Path) -> Option<Module> {
    let data = fs::read(path).ok()?;
    if data.len() < 32 {
        return None;
    }
    let (sum, bytes) = data.split_at(32);
    if blake3::hash(bytes).as_bytes() != sum {
        tracing::warn!(path = %path.display(), "compiled-module cache entry is corrupt; recompiling");
        return None;
    }
    // SAFETY: these bytes are exactly what `Module::serialize` wrote for an
    // engine with the same compatibility hash (it is in the file name), as
    // the blake3 recorded beside them proves; wasmtime checks the header too.
    unsafe { Module::deserialize(engine, bytes) }.ok()
}

fn store_compiled(path: &Path, module: &Module) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = module.serialize()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(blake3::hash(&bytes).as_bytes())?;
    tmp.write_all(&bytes)?;
    tmp.persist(path)?;
    Ok(())
}

pub(crate) fn engine_config() -> Config {
    let mut config = Config::new();
    config
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_multi_memory(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // wasmtime is built with async support (wasmtime-wasi needs it), which
        // requires the async stack to hold the whole wasm stack; we run sync.
        .async_stack_size(MAX_WASM_STACK + (1 << 20));
    config
}

/// Run `f` on a thread whose native stack can hold [`MAX_WASM_STACK`] of
/// guest frames.
pub fn on_guest_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, HostError> {
    std::thread::Builder::new()
        .name("wmig-guest".into())
        .stack_size(GUEST_THREAD_STACK)
        .spawn(f)
        .map_err(|e| HostError::Engine(format!("could not start the guest thread: {e}")))?
        .join()
        .map_err(|_| HostError::Engine("the guest thread panicked".into()))
}
