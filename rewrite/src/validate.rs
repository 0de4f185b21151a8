//! Refuse, with a clear reason, any module the rewrite cannot make pausable.
//!
//! The rewrite relies on a single unshared linear memory (so memory is the
//! whole heap), on tables never changing at run time (funcrefs cannot be
//! serialized), and on every import being one the host can re-provide after
//! a restore on another machine.

use std::collections::HashMap;

use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

use crate::{HOST_MODULE, SDK_OTHER_IMPORTS, SDK_PAUSE_IMPORTS};

/// What is wrong with a module, in terms a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not a WebAssembly module: the file does not start with the `\\0asm` header")]
    NotWasm,
    #[error("this is a WebAssembly component; wmig runs core modules built for wasm32-wasip1")]
    Component,
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("module has no `_start` export: build it as a wasm32-wasip1 command (a `fn main()` program), not a library")]
    NoStart,
    #[error("module's `_start` must take no parameters and return nothing")]
    BadStart,
    #[error("module uses shared memory or threads, which wmig cannot checkpoint; build without the `atomics` target feature")]
    Threads,
    #[error("module imports its memory; wmig needs the module to define its own single memory")]
    ImportedMemory,
    #[error("module defines {0} memories; wmig supports modules with exactly one linear memory")]
    MemoryCount(usize),
    #[error("module does not export its memory as `memory`, which WASI needs to pass data")]
    NoMemoryExport,
    #[error("module uses 64-bit memory (memory64), which wmig does not support yet")]
    Memory64,
    #[error("module imports `{module}.{name}`, which wmig cannot provide; only `wasi_snapshot_preview1` and the wmig guest SDK (`wmig.*`) are available")]
    ForeignImport { module: String, name: String },
    #[error("module imports a {kind} (`{module}.{name}`); wmig only provides functions")]
    NonFunctionImport {
        kind: &'static str,
        module: String,
        name: String,
    },
    #[error("module uses `{0}`, which changes a table at run time; wmig cannot checkpoint table contents")]
    TableMutation(&'static str),
    #[error("module uses {0}, which the pause/resume rewrite does not support")]
    Unsupported(&'static str),
    #[error("module has a mutable global of reference type; wmig cannot checkpoint references")]
    RefGlobal,
}

/// Check everything the rewrite relies on. Cheap: one pass over the bytes.
pub fn validate(wasm: &[u8]) -> Result<(), ModuleError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(ModuleError::NotWasm);
    }
    if wasm[4..8] != [1, 0, 0, 0] {
        return Err(ModuleError::Component);
    }
    wasmparser::Validator::new()
        .validate_all(wasm)
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;

    let mut func_types: Vec<(usize, usize)> = Vec::new(); // (params, results) per type index
    let mut func_type_of: Vec<u32> = Vec::new(); // type index per function index
    let mut memories = 0usize;
    let mut exports: HashMap<String, (ExternalKind, u32)> = HashMap::new();

    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| ModuleError::Invalid(e.to_string()))?;
        match payload {
            Payload::TypeSection(reader) => {
                for rec in reader {
                    let rec = rec.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    for sub in rec.types() {
                        match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                func_types.push((f.params().len(), f.results().len()))
                            }
                            _ => return Err(ModuleError::Unsupported("GC types")),
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    check_import(import.module, import.name, &import.ty)?;
                    if let TypeRef::Func(t) | TypeRef::FuncExact(t) = import.ty {
                        func_type_of.push(t);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    func_type_of.push(t.map_err(|e| ModuleError::Invalid(e.to_string()))?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    if m.shared {
                        return Err(ModuleError::Threads);
                    }
                    if m.memory64 {
                        return Err(ModuleError::Memory64);
                    }
                    memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for g in reader {
                    let g = g.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    if g.ty.shared {
                        return Err(ModuleError::Threads);
                    }
                    if g.ty.mutable && matches!(g.ty.content_type, ValType::Ref(_)) {
                        return Err(ModuleError::RefGlobal);
                    }
                }
            }
            Payload::TagSection(_) => return Err(ModuleError::Unsupported("exception handling")),
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    exports.insert(e.name.to_string(), (e.kind, e.index));
                }
            }
            Payload::CodeSectionEntry(body) => check_body(&body)?,
            _ => {}
        }
    }

    if memories != 1 {
        return Err(ModuleError::MemoryCount(memories));
    }
    if !matches!(exports.get("memory"), Some((ExternalKind::Memory, _))) {
        return Err(ModuleError::NoMemoryExport);
    }
    match exports.get("_start") {
        Some((ExternalKind::Func, idx)) => {
            let ty = func_type_of
                .get(*idx as usize)
                .and_then(|t| func_types.get(*t as usize));
            if ty != Some(&(0, 0)) {
                return Err(ModuleError::BadStart);
            }
        }
        _ => return Err(ModuleError::NoStart),
    }
    Ok(())
}

fn check_import(module: &str, name: &str, ty: &TypeRef) -> Result<(), ModuleError> {
    let kind = match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => None,
        TypeRef::Memory(_) => return Err(ModuleError::ImportedMemory),
        TypeRef::Table(_) => Some("table"),
        TypeRef::Global(_) => Some("global"),
        TypeRef::Tag(_) => Some("tag"),
    };
    if let Some(kind) = kind {
        return Err(ModuleError::NonFunctionImport {
            kind,
            module: module.to_string(),
            name: name.to_string(),
        });
    }
    let known = module == "wasi_snapshot_preview1"
        || (module == HOST_MODULE
            && (SDK_PAUSE_IMPORTS.contains(&name) || SDK_OTHER_IMPORTS.contains(&name)));
    if !known {
        return Err(ModuleError::ForeignImport {
            module: module.to_string(),
            name: name.to_string(),
        });
    }
    Ok(())
}

fn check_body(body: &wasmparser::FunctionBody<'_>) -> Result<(), ModuleError> {
    let mut ops = body
        .get_operators_reader()
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;
    while !ops.eof() {
        let op = ops
            .read()
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let refused = match op {
            Operator::TableSet { .. } => ModuleError::TableMutation("table.set"),
            Operator::TableGrow { .. } => ModuleError::TableMutation("table.grow"),
            Operator::TableFill { .. } => ModuleError::TableMutation("table.fill"),
            Operator::TableCopy { .. } => ModuleError::TableMutation("table.copy"),
            Operator::TableInit { .. } => ModuleError::TableMutation("table.init"),
            Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => ModuleError::Unsupported("tail calls"),
            // The call graph cannot tell where a function reference leads,
            // so it cannot tell whether the call can pause.
            Operator::CallRef { .. } => {
                ModuleError::Unsupported("call_ref (typed function references)")
            }
            Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. } => ModuleError::Unsupported("exception handling"),
            Operator::MemoryAtomicNotify { .. }
            | Operator::MemoryAtomicWait32 { .. }
            | Operator::MemoryAtomicWait64 { .. }
            | Operator::AtomicFence => ModuleError::Threads,
            _ => continue,
        };
        return Err(refused);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(src: &str) -> Vec<u8> {
        wat::parse_str(src).expect("test WAT parses")
    }

    #[test]
    fn accepts_a_minimal_command() {
        let m = wat(r#"(module (memory (export "memory") 1) (func (export "_start")))"#);
        validate(&m).expect("valid");
    }

    #[test]
    fn names_each_problem() {
        assert!(matches!(
            validate(b"hello world!"),
            Err(ModuleError::NotWasm)
        ));
        let no_start = wat(r#"(module (memory (export "memory") 1) (func (export "main")))"#);
        assert!(matches!(validate(&no_start), Err(ModuleError::NoStart)));
        let shared =
            wat(r#"(module (memory (export "memory") 1 1 shared) (func (export "_start")))"#);
        assert!(matches!(validate(&shared), Err(ModuleError::Threads)));
        let foreign =
            wat(r#"(module (import "env" "f" (func)) (memory 1) (func (export "_start")))"#);
        let err = validate(&foreign).expect_err("foreign import refused");
        assert!(err.to_string().contains("env.f"), "{err}");
        let table = wat(r#"(module (memory 1) (table 1 funcref)
                 (func (export "_start") (table.set (i32.const 0) (ref.null func))))"#);
        assert!(matches!(
            validate(&table),
            Err(ModuleError::TableMutation("table.set"))
        ));
        let call_ref = wat(r#"(module (memory 1) (type $t (func))
                 (func $f (type $t)) (elem declare func $f)
                 (func (export "_start") (call_ref $t (ref.func $f))))"#);
        let err = validate(&call_ref).expect_err("call_ref refused");
        assert!(err.to_string().contains("call_ref"), "{err}");
        let truncated = &wat(r#"(module (memory 1) (func (export "_start")))"#)[..20];
        assert!(matches!(validate(truncated), Err(ModuleError::Invalid(_))));
    }
}
