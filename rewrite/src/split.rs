//! The rewind bodies move into a module of their own (rewriter 3).
//!
//! A rewind body runs only after a restore, yet it is as big as the
//! function it resumes plus its guards, and guarded code is slow to compile:
//! on the 2.9 MB Go program the rewind bodies were three quarters of
//! wasmtime's compile time. So [`split`] cuts the module in two:
//!
//! - the **main module** keeps everything else, with each rewind body
//!   replaced by a one-instruction stub (indices stay put). Functions that
//!   hand a rewind over to their rewind body do so through the table
//!   [`REWIND_TABLE_EXPORT`], empty until the rewind module fills it. It
//!   exports what the rewind module needs: every table, memory and global,
//!   and every function a rewind body calls (`wmig:f<index>` and so on).
//! - the **rewind module** imports those from [`MAIN_IMPORT_MODULE`] (all
//!   tables, memories and globals in index order, so their indices are the
//!   main module's), defines the rewind bodies, and an active element
//!   segment puts them into the rewind table when it is instantiated.
//!
//! The host compiles and instantiates the rewind module only when a task
//! first rewinds (or ahead of time in the background), so a module's first
//! run waits only for the main module.

use std::collections::{BTreeSet, HashMap};

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

use crate::unwind::UnwindError;

/// Import module name under which the rewind module finds the main module.
pub const MAIN_IMPORT_MODULE: &str = "wmig:main";
/// Export of the main module's table of rewind bodies.
pub const REWIND_TABLE_EXPORT: &str = "wmig:rw";
/// Temporary exports naming each rewind body by its slot (removed by [`split`]).
pub const REWIND_SLOT_PREFIX: &str = "wmig:rw:";

/// The two halves of a rewritten module.
#[derive(Debug, Clone)]
pub struct Split {
    pub main: Vec<u8>,
    pub rewind: Vec<u8>,
}

fn fail(e: impl std::fmt::Display) -> UnwindError {
    UnwindError::Failed(format!("splitting off the rewind bodies: {e}"))
}

/// Split `wasm` (the output of the unwind transform, which exports each
/// rewind body as `wmig:rw:<slot>` and the rewind table as `wmig:rw`).
pub fn split(wasm: &[u8]) -> Result<Split, UnwindError> {
    let mut func_types: Vec<u32> = Vec::new();
    let mut imported_funcs = 0u32;
    let mut tables: Vec<wasmparser::TableType> = Vec::new();
    let mut memories: Vec<wasmparser::MemoryType> = Vec::new();
    let mut globals: Vec<wasmparser::GlobalType> = Vec::new();
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut bodies: Vec<std::ops::Range<usize>> = Vec::new();
    let mut types_section: Option<std::ops::Range<usize>> = None;

    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(fail)? {
            Payload::TypeSection(r) => types_section = Some(r.range()),
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    match imp.map_err(fail)?.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                            func_types.push(t);
                            imported_funcs += 1;
                        }
                        TypeRef::Table(t) => tables.push(t),
                        TypeRef::Memory(m) => memories.push(m),
                        TypeRef::Global(g) => globals.push(g),
                        _ => return Err(fail("an import of an unexpected kind")),
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t.map_err(fail)?);
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    tables.push(t.map_err(fail)?.ty);
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    memories.push(m.map_err(fail)?);
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    globals.push(g.map_err(fail)?.ty);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(fail)?;
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body.range()),
            _ => {}
        }
    }

    // Rewind bodies by slot, and the rewind table.
    let mut slots: Vec<(u32, u32)> = exports
        .iter()
        .filter_map(|(name, kind, index)| {
            let slot = name.strip_prefix(REWIND_SLOT_PREFIX)?.parse::<u32>().ok()?;
            (*kind == ExternalKind::Func).then_some((slot, *index))
        })
        .collect();
    slots.sort_unstable();
    if slots.iter().enumerate().any(|(i, (s, _))| *s as usize != i) {
        return Err(fail("rewind slots are not 0..n"));
    }
    let rw_table = exports
        .iter()
        .find(|(n, k, _)| n == REWIND_TABLE_EXPORT && *k == ExternalKind::Table)
        .map(|e| e.2)
        .ok_or_else(|| fail("no rewind table"))?;
    let rewind: Vec<u32> = slots.iter().map(|s| s.1).collect();
    let is_rewind: HashMap<u32, usize> = rewind.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let body_of = |f: u32| -> Result<&[u8], UnwindError> {
        let i = f
            .checked_sub(imported_funcs)
            .and_then(|i| bodies.get(i as usize))
            .ok_or_else(|| fail("a rewind body that is not a defined function"))?;
        Ok(&wasm[i.clone()])
    };

    // Functions the rewind bodies call that live in the main module.
    let mut called: BTreeSet<u32> = BTreeSet::new();
    for &f in &rewind {
        let body = wasmparser::FunctionBody::new(wasmparser::BinaryReader::new(body_of(f)?, 0));
        let mut ops = body.get_operators_reader().map_err(fail)?;
        while !ops.eof() {
            match ops.read().map_err(fail)? {
                Operator::Call { function_index } | Operator::RefFunc { function_index }
                    if !is_rewind.contains_key(&function_index) =>
                {
                    called.insert(function_index);
                }
                Operator::MemoryInit { .. } | Operator::DataDrop { .. } => {
                    return Err(UnwindError::Unsupported(
                        "a function that can pause uses passive data segments".into(),
                    ))
                }
                _ => {}
            }
        }
    }
    let called: Vec<u32> = called.into_iter().collect();
    let fname = |f: u32| format!("wmig:f{f}");
    let tname = |i: usize| format!("wmig:t{i}");
    let mname = |i: usize| format!("wmig:m{i}");
    let gname = |i: usize| format!("wmig:g{i}");

    // The rewind module.
    let mut re = RoundtripReencoder;
    let mut module = wasm_encoder::Module::new();
    if let Some(r) = &types_section {
        module.section(&wasm_encoder::RawSection {
            id: wasm_encoder::SectionId::Type as u8,
            data: &wasm[r.clone()],
        });
    }
    let mut imports = wasm_encoder::ImportSection::new();
    let ty_of = |f: u32| -> Result<u32, UnwindError> {
        func_types
            .get(f as usize)
            .copied()
            .ok_or_else(|| fail("a function without a type"))
    };
    for &f in &called {
        imports.import(
            MAIN_IMPORT_MODULE,
            &fname(f),
            wasm_encoder::EntityType::Function(ty_of(f)?),
        );
    }
    for (i, t) in tables.iter().enumerate() {
        let t = re.table_type(*t).map_err(fail)?;
        imports.import(MAIN_IMPORT_MODULE, &tname(i), t);
    }
    for (i, m) in memories.iter().enumerate() {
        imports.import(
            MAIN_IMPORT_MODULE,
            &mname(i),
            re.memory_type(*m).map_err(fail)?,
        );
    }
    for (i, g) in globals.iter().enumerate() {
        imports.import(
            MAIN_IMPORT_MODULE,
            &gname(i),
            re.global_type(*g).map_err(fail)?,
        );
    }
    module.section(&imports);
    let mut functions = wasm_encoder::FunctionSection::new();
    for &f in &rewind {
        functions.function(ty_of(f)?);
    }
    module.section(&functions);
    // WASI finds the guest's memory through the calling instance's `memory`
    // export, and a rewind body calls WASI too.
    let mut reexports = wasm_encoder::ExportSection::new();
    for (name, kind, index) in &exports {
        if name == "memory" && *kind == ExternalKind::Memory {
            reexports.export(name, wasm_encoder::ExportKind::Memory, *index);
        }
    }
    module.section(&reexports);
    let first_rewind = u32::try_from(called.len()).map_err(fail)?;
    let mut elements = wasm_encoder::ElementSection::new();
    let indices: Vec<u32> = (0..rewind.len()).map(|i| first_rewind + i as u32).collect();
    elements.active(
        Some(rw_table),
        &wasm_encoder::ConstExpr::i32_const(0),
        wasm_encoder::Elements::Functions(indices.into()),
    );
    module.section(&elements);
    let mut remap = Remap {
        called: called
            .iter()
            .enumerate()
            .map(|(i, f)| (*f, i as u32))
            .collect(),
        rewind: is_rewind
            .iter()
            .map(|(f, i)| (*f, first_rewind + *i as u32))
            .collect(),
    };
    let mut code = wasm_encoder::CodeSection::new();
    for &f in &rewind {
        let body = wasmparser::FunctionBody::new(wasmparser::BinaryReader::new(body_of(f)?, 0));
        remap.parse_function_body(&mut code, body).map_err(fail)?;
    }
    module.section(&code);
    let rewind_bytes = module.finish();

    // The main module: stubs for the rewind bodies, exports for the rewind
    // module, every other section as it was.
    let mut main = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(fail)?;
        match &payload {
            Payload::ExportSection(_) => {
                let mut out = wasm_encoder::ExportSection::new();
                for (name, kind, index) in &exports {
                    if name.starts_with(REWIND_SLOT_PREFIX) {
                        continue;
                    }
                    out.export(name, re.export_kind(*kind).map_err(fail)?, *index);
                }
                for &f in &called {
                    out.export(&fname(f), wasm_encoder::ExportKind::Func, f);
                }
                for i in 0..tables.len() {
                    out.export(&tname(i), wasm_encoder::ExportKind::Table, i as u32);
                }
                for i in 0..memories.len() {
                    out.export(&mname(i), wasm_encoder::ExportKind::Memory, i as u32);
                }
                for i in 0..globals.len() {
                    out.export(&gname(i), wasm_encoder::ExportKind::Global, i as u32);
                }
                main.section(&out);
            }
            Payload::CodeSectionStart { .. } => {
                let mut out = wasm_encoder::CodeSection::new();
                for (i, range) in bodies.iter().enumerate() {
                    let index = imported_funcs + i as u32;
                    if is_rewind.contains_key(&index) {
                        let mut stub = wasm_encoder::Function::new([]);
                        stub.instruction(&wasm_encoder::Instruction::Unreachable);
                        stub.instruction(&wasm_encoder::Instruction::End);
                        out.function(&stub);
                    } else {
                        out.raw(&wasm[range.clone()]);
                    }
                }
                main.section(&out);
            }
            Payload::CodeSectionEntry(_) | Payload::End(_) | Payload::Version { .. } => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    main.section(&wasm_encoder::RawSection {
                        id,
                        data: &wasm[range],
                    });
                }
            }
        }
    }
    Ok(Split {
        main: main.finish(),
        rewind: rewind_bytes,
    })
}

/// Function indices of the main module → the rewind module's.
struct Remap {
    called: HashMap<u32, u32>,
    rewind: HashMap<u32, u32>,
}

impl Reencode for Remap {
    type Error = std::convert::Infallible;

    fn function_index(
        &mut self,
        func: u32,
    ) -> Result<u32, wasm_encoder::reencode::Error<Self::Error>> {
        Ok(self
            .rewind
            .get(&func)
            .or_else(|| self.called.get(&func))
            .copied()
            .unwrap_or(func))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(wasm: &[u8]) -> Vec<(String, ExternalKind)> {
        let mut out = Vec::new();
        for p in Parser::new(0).parse_all(wasm) {
            if let Ok(Payload::ExportSection(r)) = p {
                for e in r.into_iter().flatten() {
                    out.push((e.name.to_string(), e.kind));
                }
            }
        }
        out
    }

    fn imports(wasm: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in Parser::new(0).parse_all(wasm) {
            if let Ok(Payload::ImportSection(r)) = p {
                for i in r.into_imports().flatten() {
                    out.push((i.module.to_string(), i.name.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn main_and_rewind_modules_are_valid_and_fit_together() {
        let wasm = wat::parse_str(
            r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (global $sp (mut i32) (i32.const 1024))
            (table 2 funcref) (elem (i32.const 0) $rec $rec)
            (type $t (func (param i32) (result i32)))
            (func $rec (param i32) (result i32)
              (if (result i32) (local.get 0)
                (then (i32.add (i32.const 1)
                  (call_indirect (type $t) (i32.sub (local.get 0) (i32.const 1)) (i32.const 1))))
                (else (global.get $sp))))
            (func (export "_start") (local i32)
              (loop $l (local.set 0 (i32.add (local.get 0) (call $rec (i32.const 3))))
                       (br_if $l (i32.lt_u (local.get 0) (i32.const 100))))
              (call $exit (local.get 0))))"#,
        )
        .expect("wat");
        let out = crate::instrument(&wasm).expect("rewrite");
        assert!(!out.stats.asyncify_fallback);
        let rewind = out.rewind.expect("rewriter 3 splits off the rewind bodies");
        let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        v.validate_all(&out.bytes).expect("main module valid");
        let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        v.validate_all(&rewind).expect("rewind module valid");

        let main_exports = exports(&out.bytes);
        assert!(main_exports
            .iter()
            .any(|(n, k)| n == REWIND_TABLE_EXPORT && *k == ExternalKind::Table));
        assert!(
            !main_exports
                .iter()
                .any(|(n, _)| n.starts_with(REWIND_SLOT_PREFIX)),
            "slot exports are internal to the rewrite"
        );
        // Every import of the rewind module is an export of the main one.
        for (module, name) in imports(&rewind) {
            assert_eq!(module, MAIN_IMPORT_MODULE);
            assert!(
                main_exports.iter().any(|(n, _)| *n == name),
                "rewind module imports {name}, which the main module does not export"
            );
        }
        assert!(exports(&rewind).iter().any(|(n, _)| n == "memory"));
    }

    #[test]
    fn reference_typed_locals_fall_back_to_asyncify() {
        // A funcref cannot be written to the unwind buffer as bytes.
        let wasm = wat::parse_str(
            r#"(module
            (memory (export "memory") 1)
            (func $f (export "_start") (local funcref) (local i32)
              (local.set 0 (ref.func $f))
              (loop $l (local.set 1 (i32.add (local.get 1) (call $g)))
                       (br_if $l (i32.lt_u (local.get 1) (i32.const 10))))
              (drop (local.get 0)))
            (func $g (result i32) (i32.const 1)))"#,
        )
        .expect("wat");
        let out = crate::instrument(&wasm).expect("rewrite");
        assert!(out.stats.asyncify_fallback);
        assert!(out.rewind.is_none());
        assert!(exports(&out.bytes)
            .iter()
            .any(|(n, _)| n == "asyncify_start_unwind"));
    }
}
