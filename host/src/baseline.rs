//! The same module under plain wasmtime + wasmtime-wasi (preview1), with no
//! rewrite and no fuel: the reference wmig's behaviour is compared against
//! in tests and the baseline its overhead is measured against in benchmarks.

use std::path::PathBuf;

use wasmtime::{Config, Engine, Linker, Module, OptLevel, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::HostError;

/// An engine configured like `wasmtime run`'s defaults.
pub struct Baseline {
    engine: Engine,
}

/// What a plain run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRun {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The trap message, if the guest trapped.
    pub trap: Option<String>,
}

impl Baseline {
    pub fn new() -> Result<Self, HostError> {
        let mut config = Config::new();
        config.cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(Baseline { engine })
    }

    /// An engine with wmig's own settings (multi-memory, the larger wasm
    /// stack), for running instrumented variants of a module with
    /// [`Baseline::run_instrumented`].
    pub fn like_wmig() -> Result<Self, HostError> {
        let engine = Engine::new(&crate::engine::engine_config())
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(Baseline { engine })
    }

    pub fn compile(&self, wasm: &[u8]) -> Result<Module, HostError> {
        Module::new(&self.engine, wasm).map_err(|e| HostError::Engine(format!("{e:#}")))
    }

    /// Run `module` to completion with output captured in memory.
    pub fn run(
        &self,
        module: &Module,
        args: &[String],
        env: &[(String, String)],
        preopens: &[(PathBuf, String)],
    ) -> Result<PlainRun, HostError> {
        self.run_linked(module, args, env, preopens, |_| Ok(()))
    }

    /// Run a module with wmig's instrumentation (any stage of the rewrite)
    /// under wasmtime-wasi, with a yield import that only refills the fuel
    /// counter and never pauses: what the instrumentation costs by itself,
    /// without wmig's host.
    pub fn run_instrumented(
        &self,
        module: &Module,
        args: &[String],
    ) -> Result<PlainRun, HostError> {
        use wasmtime::{Caller, Val};
        self.run_linked(module, args, &[], &[], |linker| {
            for import in [wmig_rewrite::YIELD_IMPORT, wmig_rewrite::TICK_IMPORT] {
                linker.func_wrap(
                    wmig_rewrite::HOST_MODULE,
                    import,
                    |mut caller: Caller<'_, WasiP1Ctx>| {
                        let fuel = caller
                            .get_export(wmig_rewrite::FUEL_EXPORT)
                            .and_then(|e| e.into_global());
                        match fuel {
                            Some(g) => g.set(
                                &mut caller,
                                Val::I32(crate::task::DEFAULT_YIELD_FUEL as i32),
                            ),
                            None => Ok(()),
                        }
                    },
                )?;
            }
            for name in wmig_rewrite::SDK_PAUSE_IMPORTS {
                linker.func_wrap(wmig_rewrite::HOST_MODULE, name, || {})?;
            }
            linker.func_wrap(wmig_rewrite::HOST_MODULE, "progress", |_: i64, _: i64| {})?;
            Ok(())
        })
    }

    fn run_linked(
        &self,
        module: &Module,
        args: &[String],
        env: &[(String, String)],
        preopens: &[(PathBuf, String)],
        extra: impl FnOnce(&mut Linker<WasiP1Ctx>) -> wasmtime::Result<()>,
    ) -> Result<PlainRun, HostError> {
        let stdout = MemoryOutputPipe::new(usize::MAX);
        let stderr = MemoryOutputPipe::new(usize::MAX);
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(args)
            .envs(env)
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        for (host, guest) in preopens {
            builder
                .preopened_dir(host, guest, FsPerms::ReadWrite)
                .map_err(|e| HostError::Engine(format!("preopening {}: {e:#}", host.display())))?;
        }
        let mut store = Store::new(&self.engine, builder.build_p1());
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&self.engine);
        p1::add_to_linker_sync(&mut linker, |s| s)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        extra(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let (exit_code, trap) = match start.call(&mut store, ()) {
            Ok(()) => (0, None),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => (exit.0, None),
                None => (134, Some(format!("{e:?}"))),
            },
        };
        drop(store);
        Ok(PlainRun {
            exit_code,
            stdout: stdout.contents().to_vec(),
            stderr: stderr.contents().to_vec(),
            trap,
        })
    }
}
