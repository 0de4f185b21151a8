//! Export the state the host must capture: every mutable global (LLVM's
//! `__stack_pointer` and Asyncify's `__asyncify_state`/`__asyncify_data` are
//! not exported by the toolchain) and Asyncify's secondary memory.

use walrus::{ExportItem, GlobalKind};

use crate::{RewriteError, GLOBAL_EXPORT_PREFIX, STACK_MEMORY_EXPORT};

/// Returns the module with the exports added and the number of mutable globals.
pub fn export_state(wasm: &[u8]) -> Result<(Vec<u8>, usize), RewriteError> {
    let mut config = walrus::ModuleConfig::new();
    config.generate_producers_section(false);
    let mut module = config
        .parse(wasm)
        .map_err(|e| RewriteError::Exports(e.to_string()))?;
    let n = export_state_module(&mut module)?;
    Ok((module.emit_wasm(), n))
}

/// [`export_state`] on a parsed module; returns the number of mutable globals.
pub fn export_state_module(module: &mut walrus::Module) -> Result<usize, RewriteError> {
    let mutable: Vec<(usize, walrus::GlobalId)> = module
        .globals
        .iter()
        .enumerate()
        .filter(|(_, g)| g.mutable && matches!(g.kind, GlobalKind::Local(_)))
        .map(|(i, g)| (i, g.id()))
        .collect();
    for (i, id) in &mutable {
        module.exports.add(
            &format!("{GLOBAL_EXPORT_PREFIX}{i}"),
            ExportItem::Global(*id),
        );
    }

    // The guest's memory is the one WASI sees as `memory`; Asyncify added the other.
    let guest = module.exports.iter().find_map(|e| match e.item {
        ExportItem::Memory(m) if e.name == "memory" => Some(m),
        _ => None,
    });
    let others: Vec<walrus::MemoryId> = module
        .memories
        .iter()
        .map(|m| m.id())
        .filter(|m| Some(*m) != guest)
        .collect();
    match (guest, others.as_slice()) {
        (Some(_), [stack]) => {
            module
                .exports
                .add(STACK_MEMORY_EXPORT, ExportItem::Memory(*stack));
        }
        _ => {
            return Err(RewriteError::Exports(format!(
                "expected the exported `memory` plus Asyncify's stack memory, found {} memories",
                module.memories.iter().count()
            )))
        }
    }
    Ok(mutable.len())
}
