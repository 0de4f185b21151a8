//! Test harness: a WAT "shim" guest that imports every preview1 function and
//! exports a wrapper for each, so tests can drive single WASI calls from
//! Rust against a real wasmtime instance and inspect guest memory.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use wasmtime::{Engine, Instance, Linker, Memory, Module, Store, Val};
use wmig_wasi::{BufferSink, Preopen, WasiConfig, WasiCtx};

/// Every preview1 import and its core-wasm parameter types (all return i32
/// except `proc_exit`).
pub const SIGS: &[(&str, &str)] = &[
    ("args_get", "ii"),
    ("args_sizes_get", "ii"),
    ("environ_get", "ii"),
    ("environ_sizes_get", "ii"),
    ("clock_res_get", "ii"),
    ("clock_time_get", "iIi"),
    ("fd_advise", "iIIi"),
    ("fd_allocate", "iII"),
    ("fd_close", "i"),
    ("fd_datasync", "i"),
    ("fd_fdstat_get", "ii"),
    ("fd_fdstat_set_flags", "ii"),
    ("fd_fdstat_set_rights", "iII"),
    ("fd_filestat_get", "ii"),
    ("fd_filestat_set_size", "iI"),
    ("fd_filestat_set_times", "iIIi"),
    ("fd_pread", "iiiIi"),
    ("fd_prestat_get", "ii"),
    ("fd_prestat_dir_name", "iii"),
    ("fd_pwrite", "iiiIi"),
    ("fd_read", "iiii"),
    ("fd_readdir", "iiiIi"),
    ("fd_renumber", "ii"),
    ("fd_seek", "iIii"),
    ("fd_sync", "i"),
    ("fd_tell", "ii"),
    ("fd_write", "iiii"),
    ("path_create_directory", "iii"),
    ("path_filestat_get", "iiiii"),
    ("path_filestat_set_times", "iiiiIIi"),
    ("path_link", "iiiiiii"),
    ("path_open", "iiiiiIIii"),
    ("path_readlink", "iiiiii"),
    ("path_remove_directory", "iii"),
    ("path_rename", "iiiiii"),
    ("path_symlink", "iiiii"),
    ("path_unlink_file", "iii"),
    ("poll_oneoff", "iiii"),
    ("proc_exit", "i"),
    ("proc_raise", "i"),
    ("sched_yield", ""),
    ("random_get", "ii"),
    ("sock_accept", "iii"),
    ("sock_recv", "iiiiii"),
    ("sock_send", "iiiii"),
    ("sock_shutdown", "ii"),
];

fn wat_type(c: char) -> &'static str {
    if c == 'I' {
        "i64"
    } else {
        "i32"
    }
}

/// The shim module's text.
pub fn shim_wat() -> String {
    let mut imports = String::new();
    let mut exports = String::new();
    for (name, params) in SIGS {
        let ps: Vec<&str> = params.chars().map(wat_type).collect();
        let result = if *name == "proc_exit" {
            ""
        } else {
            "(result i32)"
        };
        let param_list = if ps.is_empty() {
            String::new()
        } else {
            format!("(param {})", ps.join(" "))
        };
        imports.push_str(&format!(
            "(import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} {param_list} {result}))\n"
        ));
        let gets: String = (0..ps.len()).map(|i| format!("local.get {i} ")).collect();
        exports.push_str(&format!(
            "(func (export \"{name}\") {param_list} {result} {gets} call ${name})\n"
        ));
    }
    format!("(module\n{imports}(memory (export \"memory\") 2)\n{exports})")
}

/// Memory layout used by the helpers.
pub const OUT: u32 = 64;
pub const IOV: u32 = 128;
pub const STR: u32 = 1024;
pub const STR2: u32 = 2048;
pub const BUF: u32 = 8192;

/// Rights that make `path_open` open for reading / writing.
pub const R_READ: i64 = 1 << 1;
pub const R_WRITE: i64 = 1 << 6;
pub const O_CREAT: i64 = 1;
pub const O_DIRECTORY: i64 = 2;
pub const O_EXCL: i64 = 4;
pub const O_TRUNC: i64 = 8;

/// Build a config with a buffer stdout/stderr.
pub fn config(
    preopens: &[(&Path, &str)],
    stdin: impl Read + Send + 'static,
) -> (WasiConfig, Arc<Mutex<Vec<u8>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let cfg = WasiConfig {
        args: vec!["prog".into(), "a1".into(), "two words".into()],
        env: vec![("HOME".into(), "/data".into()), ("X".into(), "1".into())],
        preopens: preopens
            .iter()
            .map(|(h, g)| Preopen {
                host: h.to_path_buf(),
                guest: (*g).to_owned(),
            })
            .collect(),
        stdin: wmig_wasi::Stdin::reader(stdin),
        stdout: Box::new(BufferSink::new(out.clone())),
        stderr: Box::new(BufferSink::new(Arc::new(Mutex::new(Vec::new())))),
    };
    (cfg, out)
}

pub struct Harness<T: 'static = WasiCtx> {
    /// When set, a trap makes `call` return -1 and is logged in `traps`
    /// (differential tests); otherwise it fails the test.
    pub lenient: bool,
    pub traps: Vec<String>,
    pub store: Store<T>,
    pub instance: Instance,
    pub memory: Memory,
}

pub fn engine_and_linker() -> (Engine, Linker<WasiCtx>) {
    let engine = Engine::default();
    let mut linker = Linker::new(&engine);
    wmig_wasi::add_to_linker(&mut linker, |ctx| ctx).unwrap();
    (engine, linker)
}

impl Harness<WasiCtx> {
    pub fn new(ctx: WasiCtx) -> Harness {
        Harness::with_wat(ctx, &shim_wat())
    }

    pub fn with_wat(ctx: WasiCtx, wat: &str) -> Harness {
        let (engine, linker) = engine_and_linker();
        Harness::instantiate(&engine, &linker, ctx, wat)
    }

    pub fn ctx(&self) -> &WasiCtx {
        self.store.data()
    }
}

impl<T: 'static> Harness<T> {
    /// Instantiate `wat` against any preview1 implementation's linker.
    pub fn instantiate(engine: &Engine, linker: &Linker<T>, data: T, wat: &str) -> Harness<T> {
        let module = Module::new(engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = Store::new(engine, data);
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        Harness {
            lenient: false,
            traps: Vec::new(),
            store,
            instance,
            memory,
        }
    }

    /// Call a shim export; integer args are converted per signature.
    pub fn try_call(&mut self, name: &str, args: &[i64]) -> wasmtime::Result<i32> {
        let sig = SIGS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(sig.len(), args.len(), "arity of {name}");
        let vals: Vec<Val> = sig
            .chars()
            .zip(args)
            .map(|(c, a)| {
                if c == 'I' {
                    Val::I64(*a)
                } else {
                    Val::I32(*a as i32)
                }
            })
            .collect();
        let func = self.instance.get_func(&mut self.store, name).unwrap();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        func.call(&mut self.store, &vals, &mut results)?;
        Ok(results.first().and_then(Val::i32).unwrap_or(0))
    }

    pub fn call(&mut self, name: &str, args: &[i64]) -> i32 {
        match self.try_call(name, args) {
            Ok(errno) => errno,
            Err(e) if self.lenient => {
                eprintln!("{name} trapped: {e:#}");
                self.traps.push(format!("{name}: trap"));
                -1
            }
            Err(e) => panic!("{name} trapped: {e:?}"),
        }
    }

    pub fn write(&mut self, ptr: u32, bytes: &[u8]) {
        self.memory
            .write(&mut self.store, ptr as usize, bytes)
            .unwrap();
    }

    pub fn read(&self, ptr: u32, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.memory.read(&self.store, ptr as usize, &mut v).unwrap();
        v
    }

    pub fn u32_at(&self, ptr: u32) -> u32 {
        u32::from_le_bytes(self.read(ptr, 4).try_into().unwrap())
    }

    pub fn u64_at(&self, ptr: u32) -> u64 {
        u64::from_le_bytes(self.read(ptr, 8).try_into().unwrap())
    }

    /// Put a string at `at`; returns (ptr, len) as call arguments.
    pub fn str_at(&mut self, at: u32, s: &str) -> (i64, i64) {
        self.write(at, s.as_bytes());
        (at as i64, s.len() as i64)
    }

    pub fn open(
        &mut self,
        dirfd: u32,
        path: &str,
        oflags: i64,
        rights: i64,
        fdflags: i64,
    ) -> Result<u32, i32> {
        let (p, l) = self.str_at(STR, path);
        match self.call(
            "path_open",
            &[
                dirfd as i64,
                1,
                p,
                l,
                oflags,
                rights,
                rights,
                fdflags,
                OUT as i64,
            ],
        ) {
            0 => Ok(self.u32_at(OUT)),
            e => Err(e),
        }
    }

    fn set_iov(&mut self, ptr: u32, len: u32) {
        let mut iov = ptr.to_le_bytes().to_vec();
        iov.extend_from_slice(&len.to_le_bytes());
        self.write(IOV, &iov);
    }

    pub fn write_fd(&mut self, fd: u32, data: &[u8]) -> Result<u32, i32> {
        self.write(BUF, data);
        self.set_iov(BUF, data.len() as u32);
        match self.call("fd_write", &[fd as i64, IOV as i64, 1, OUT as i64]) {
            0 => Ok(self.u32_at(OUT)),
            e => Err(e),
        }
    }

    pub fn read_fd(&mut self, fd: u32, len: u32) -> Result<Vec<u8>, i32> {
        self.set_iov(BUF, len);
        match self.call("fd_read", &[fd as i64, IOV as i64, 1, OUT as i64]) {
            0 => {
                let n = self.u32_at(OUT) as usize;
                Ok(self.read(BUF, n))
            }
            e => Err(e),
        }
    }

    pub fn seek(&mut self, fd: u32, delta: i64, whence: i64) -> Result<u64, i32> {
        match self.call("fd_seek", &[fd as i64, delta, whence, OUT as i64]) {
            0 => Ok(self.u64_at(OUT)),
            e => Err(e),
        }
    }

    pub fn close(&mut self, fd: u32) -> i32 {
        self.call("fd_close", &[fd as i64])
    }

    /// Call a `path_*` function taking (fd, path_ptr, path_len).
    pub fn path_call(&mut self, name: &str, fd: u32, path: &str) -> i32 {
        let (p, l) = self.str_at(STR, path);
        self.call(name, &[fd as i64, p, l])
    }
}

/// Errno values the tests compare against.
pub mod errno {
    pub const BADF: i32 = 8;
    pub const EXIST: i32 = 20;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const ISDIR: i32 = 31;
    pub const NOENT: i32 = 44;
    pub const NOTDIR: i32 = 54;
    pub const NOTEMPTY: i32 = 55;
    pub const NOTSOCK: i32 = 57;
    pub const NOTSUP: i32 = 58;
    pub const PERM: i32 = 63;
    pub const SPIPE: i32 = 70;
}
