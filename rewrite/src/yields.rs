//! Inject fuel-based yield points.
//!
//! Every loop header, and the entry of every function that can take part in
//! recursion, decrements a fuel counter; when it runs out the guest calls the
//! host import `wmig.yield_point`, which accounts the fuel, refills it and
//! decides whether to pause. That bounds the work between two checks: a
//! function that neither loops nor recurses runs a bounded number of
//! instructions, so it needs no check.
//!
//! Rewriter version 2 (the current one) shapes the checks for the code
//! generator and for Asyncify:
//!
//! - **The counter lives in a local** of each checked function (a register),
//!   loaded from the `wmig:fuel` global on entry and written back only where
//!   someone else can look at it: before calls to functions that touch fuel,
//!   before returns, and around the yield call. A global decremented in a hot
//!   loop is a load, a store and a store-to-load forwarding stall per
//!   iteration; a local is one register decrement.
//! - **The yield call is out of line.** A checked loop becomes
//!
//!   ```text
//!   block $done
//!     loop $retry
//!       block $slow
//!         loop $l            ;; the original loop, its branches unchanged
//!           fuel -= 1; br_if $slow (fuel < 1)
//!           BODY
//!         end
//!         br $done            ;; the loop ended normally (with its results)
//!       end
//!       fuel → global; call yield_point; global → fuel; fuel += 1
//!       br $retry             ;; re-enter the loop at its header
//!     end
//!   end
//!   ```
//!
//!   so the loop itself contains no call. Asyncify, which must be able to
//!   unwind from the yield call, then leaves the loop as one block it skips
//!   while rewinding instead of threading state checks through every
//!   iteration. The `+= 1` refunds the check the interrupted iteration
//!   re-runs, so fuel accounting is the same whether or not it yielded.
//!
//! - **Loop-only leaves tick.** A function that loops but calls nothing
//!   (`memcpy`, hashing, a search in a node) calls `wmig.tick` instead of the
//!   yield: the host accounts fuel and enforces limits but never pauses
//!   there, so neither the leaf nor any call to it needs Asyncify. A pause
//!   requested meanwhile happens at the next real yield, after the leaf
//!   returns.
//! - **Asyncify gets an exact list**: the functions from which the yield
//!   import or an SDK pause import can be reached ([`Injected::pausable`]).
//!
//! Version 1 (a global decremented inline at each check, yield call inside
//! the loop) is kept so that checkpoints taken by an older wmig still resume.

use std::collections::HashSet;

use walrus::ir::{self, BinaryOp, Instr, InstrLocId, InstrSeqId, InstrSeqType, Value};
use walrus::{ConstExpr, FunctionId, FunctionKind, GlobalId, LocalFunction, LocalId, ValType};

use crate::build::{bin, get, i32c, op};
use crate::callgraph::{all_seqs, CallGraph};
use crate::{RewriteError, RewriteStats, FUEL_EXPORT, HOST_MODULE, TICK_IMPORT, YIELD_IMPORT};

/// The instrumented module and what Asyncify needs to know about it.
pub struct Injected {
    pub bytes: Vec<u8>,
    pub stats: RewriteStats,
    /// Names of the functions that can be on the stack when the task pauses
    /// (they reach a pause import); `None` for version 1, which lets Asyncify
    /// decide on its own.
    pub pausable: Option<Vec<String>>,
}

/// Parse, inject the checks and the `wmig.yield_point` import, emit.
pub fn inject(wasm: &[u8], version: u32) -> Result<Injected, RewriteError> {
    inject_with(wasm, version, true)
}

/// [`inject`], choosing whether loop-only leaf functions tick instead of
/// yielding (the benchmark measures both).
pub fn inject_with(wasm: &[u8], version: u32, leaf_ticks: bool) -> Result<Injected, RewriteError> {
    let mut config = walrus::ModuleConfig::new();
    // Keep the output a pure function of the input bytes.
    config.generate_producers_section(false);
    let mut module = config
        .parse(wasm)
        .map_err(|e| RewriteError::Yields(e.to_string()))?;

    // DWARF no longer describes the rewritten code; drop it rather than lie.
    let debug: Vec<_> = module
        .customs
        .iter()
        .filter(|(_, c)| c.name().starts_with(".debug"))
        .map(|(id, _)| id)
        .collect();
    for id in debug {
        module.customs.delete(id);
    }

    let graph = CallGraph::new(&module);
    let recursive = graph.recursive(&module);

    let ty = module.types.add(&[], &[]);
    let (yield_fn, _) = module.add_import_func(HOST_MODULE, YIELD_IMPORT, ty);
    let fuel = module
        .globals
        .add_local(ValType::I32, true, false, ConstExpr::Value(Value::I32(1)));
    module.exports.add(FUEL_EXPORT, fuel);

    let mut stats = RewriteStats::default();
    let ids: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
    stats.functions = ids.len();

    if version < 2 {
        for id in ids {
            let tmp = module.locals.add(ValType::I32);
            let FunctionKind::Local(func) = &mut module.funcs.get_mut(id).kind else {
                continue;
            };
            let mut heads = loop_bodies(func);
            stats.loop_checks += heads.len();
            if recursive.contains(&id) {
                heads.push(func.entry_block());
                stats.entry_checks += 1;
            }
            for seq in heads {
                prepend_v1_check(func, seq, fuel, tmp, yield_fn);
            }
        }
        return Ok(Injected {
            bytes: module.emit_wasm(),
            stats,
            pausable: None,
        });
    }

    // Functions that get checks, and every function that can reach one: only
    // calls into those need the counter written back and reloaded.
    let checked: HashSet<FunctionId> = ids
        .iter()
        .copied()
        .filter(|id| {
            recursive.contains(id)
                || crate::callgraph::local(&module, *id).is_some_and(|f| !loop_bodies(f).is_empty())
        })
        .collect();
    let pause_imports: HashSet<FunctionId> = module
        .imports
        .iter()
        .filter(|i| crate::is_pause_import(&i.module, &i.name, version))
        .filter_map(|i| match i.kind {
            walrus::ImportKind::Function(f) => Some(f),
            _ => None,
        })
        .collect();
    // Loop-only leaves (memcpy, hashing, searching a node): no calls at all,
    // no recursion. Their checks tick instead of yielding, so Asyncify leaves
    // them and, above all, every call to them, alone. A pause waits until the
    // leaf returns, which bounds the pause latency by the longest leaf call.
    let leaves: HashSet<FunctionId> = if leaf_ticks {
        checked
            .iter()
            .copied()
            .filter(|id| !recursive.contains(id))
            .filter(|id| crate::callgraph::local(&module, *id).is_some_and(|f| !calls_anything(f)))
            .collect()
    } else {
        HashSet::new()
    };
    let tick_fn = if leaves.is_empty() {
        None
    } else {
        Some(module.add_import_func(HOST_MODULE, TICK_IMPORT, ty).0)
    };
    stats.leaf_functions = leaves.len();
    let mut touching_roots = checked.clone();
    touching_roots.extend(pause_imports.iter().copied());
    let touches_fuel = graph.reaching(&touching_roots);
    // Call signatures through which an indirect call can reach a function
    // that touches fuel (only element-segment functions are reachable).
    let touching_types: HashSet<walrus::TypeId> = {
        let sigs: HashSet<_> = crate::callgraph::table_functions(&module)
            .into_iter()
            .filter(|f| touches_fuel.contains(f))
            .map(|f| crate::callgraph::signature(&module, f))
            .collect();
        module
            .types
            .iter()
            .filter(|t| sigs.contains(&(t.params().to_vec(), t.results().to_vec())))
            .map(|t| t.id())
            .collect()
    };

    for id in ids {
        if !checked.contains(&id) {
            continue;
        }
        let local = module.locals.add(ValType::I32);
        let (_, results) = crate::callgraph::signature(&module, id);
        let body_ty = InstrSeqType::new(&mut module.types, &[], &results);
        // Which callees touch fuel, by instruction: decided before borrowing
        // the function mutably.
        let mut targets_touch = |instr: &Instr| match instr {
            Instr::Call(c) => touches_fuel.contains(&c.func),
            Instr::CallIndirect(c) => touching_types.contains(&c.ty),
            Instr::CallRef(_) => true,
            _ => false,
        };
        let FunctionKind::Local(func) = &mut module.funcs.get_mut(id).kind else {
            continue;
        };
        let ctx = Ctx {
            fuel,
            local,
            yield_fn: match tick_fn {
                Some(tick) if leaves.contains(&id) => tick,
                _ => yield_fn,
            },
        };
        let (loops, entry) = instrument_v2(
            func,
            &ctx,
            recursive.contains(&id),
            body_ty,
            &mut targets_touch,
        );
        stats.loop_checks += loops;
        stats.entry_checks += usize::from(entry);
    }

    // What can be on the stack at a pause: whatever reaches the yield import
    // or a pause import of the SDK, in the instrumented module's call graph
    // (the checks added calls to the yield import).
    let mut roots = pause_imports;
    roots.insert(yield_fn);
    let pausable_ids = CallGraph::new(&module).reaching(&roots);
    let names = name_functions(&mut module);
    let mut pausable: Vec<String> = module
        .funcs
        .iter_local()
        .filter(|(id, _)| pausable_ids.contains(id))
        .filter_map(|(id, _)| names.get(&id).cloned())
        .collect();
    pausable.sort();
    stats.pausable_functions = pausable.len();
    Ok(Injected {
        bytes: module.emit_wasm(),
        stats,
        pausable: Some(pausable),
    })
}

/// Give every function a unique name that Binaryen's function lists can
/// carry (no `,` separator, no `*` wildcard, printable ASCII), keeping the
/// toolchain's name wherever it already is one so traps still name it.
fn name_functions(module: &mut walrus::Module) -> std::collections::HashMap<FunctionId, String> {
    let safe = |n: &str| {
        !n.is_empty()
            && !n.starts_with('@')
            && n.bytes()
                .all(|b| b.is_ascii_graphic() && b != b',' && b != b'*' && b != b'\\')
    };
    let mut used: HashSet<String> = HashSet::new();
    let mut out = std::collections::HashMap::new();
    let ids: Vec<FunctionId> = module.funcs.iter().map(|f| f.id()).collect();
    for (index, id) in ids.into_iter().enumerate() {
        let f = module.funcs.get_mut(id);
        let name = match f.name.as_deref() {
            Some(n) if safe(n) && !used.contains(n) => n.to_string(),
            _ => {
                let mut n = format!("wmig:f{index}");
                while used.contains(&n) {
                    n.push('_');
                }
                n
            }
        };
        used.insert(name.clone());
        f.name = Some(name.clone());
        out.insert(id, name);
    }
    out
}

struct Ctx {
    fuel: GlobalId,
    local: LocalId,
    yield_fn: FunctionId,
}

/// `global ← local` (stack-neutral).
fn write_back(c: &Ctx) -> [(Instr, InstrLocId); 2] {
    [
        get(c.local),
        op(Instr::GlobalSet(ir::GlobalSet { global: c.fuel })),
    ]
}

/// `local ← global` (stack-neutral).
fn reload(c: &Ctx) -> [(Instr, InstrLocId); 2] {
    [
        op(Instr::GlobalGet(ir::GlobalGet { global: c.fuel })),
        op(Instr::LocalSet(ir::LocalSet { local: c.local })),
    ]
}

/// `local ← local - 1`, leaving `local < 1` on the stack.
fn decrement_and_test(c: &Ctx) -> [(Instr, InstrLocId); 6] {
    [
        get(c.local),
        i32c(1),
        bin(BinaryOp::I32Sub),
        op(Instr::LocalTee(ir::LocalTee { local: c.local })),
        i32c(1),
        bin(BinaryOp::I32LtS),
    ]
}

/// `global ← local; call yield; local ← global`.
fn yield_call(c: &Ctx) -> Vec<(Instr, InstrLocId)> {
    let mut v = write_back(c).to_vec();
    v.push(op(Instr::Call(ir::Call { func: c.yield_fn })));
    v.extend(reload(c));
    v
}

/// Version 2 placement in one function; returns (loop checks, entry check).
fn instrument_v2(
    func: &mut LocalFunction,
    c: &Ctx,
    recursive: bool,
    body_ty: InstrSeqType,
    touches: &mut dyn FnMut(&Instr) -> bool,
) -> (usize, bool) {
    let entry = func.entry_block();
    let original = all_seqs(func);
    let loops: Vec<(InstrSeqId, usize, InstrSeqId)> = original
        .iter()
        .flat_map(|&seq| {
            func.block(seq)
                .instrs
                .iter()
                .enumerate()
                .filter_map(move |(i, (ins, _))| match ins {
                    Instr::Loop(l) => Some((seq, i, l.seq)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();

    // The body moves into a block so that a branch to the function's own
    // label (an early return) passes the final write-back.
    let body = func.builder_mut().dangling_instr_seq(body_ty).id();

    // 1. Calls, returns and branches out of the function, in the original code.
    for &seq in &original {
        let old = std::mem::take(&mut func.block_mut(seq).instrs);
        let mut new = Vec::with_capacity(old.len());
        for (mut ins, loc) in old {
            let retarget = |b: &mut InstrSeqId| {
                if *b == entry {
                    *b = body;
                }
            };
            match &mut ins {
                Instr::Br(b) => retarget(&mut b.block),
                Instr::BrIf(b) => retarget(&mut b.block),
                Instr::BrTable(t) => {
                    t.blocks.iter_mut().for_each(retarget);
                    retarget(&mut t.default);
                }
                _ => {}
            }
            let call = matches!(ins, Instr::Call(_) | Instr::CallIndirect(_)) && touches(&ins);
            let leaves = matches!(
                ins,
                Instr::Return(_)
                    | Instr::ReturnCall(_)
                    | Instr::ReturnCallIndirect(_)
                    | Instr::ReturnCallRef(_)
            );
            if call || leaves {
                new.extend(write_back(c));
            }
            new.push((ins, loc));
            if call {
                new.extend(reload(c));
            }
        }
        func.block_mut(seq).instrs = new;
    }
    let moved = std::mem::take(&mut func.block_mut(entry).instrs);
    func.block_mut(body).instrs = moved;
    let mut prologue: Vec<(Instr, InstrLocId)> = reload(c).to_vec();
    if recursive {
        // fuel -= 1; if fuel < 1 { yield }
        let then = func.builder_mut().dangling_instr_seq(None).id();
        func.block_mut(then).instrs = yield_call(c);
        let otherwise = func.builder_mut().dangling_instr_seq(None).id();
        prologue.extend(decrement_and_test(c));
        prologue.push(op(Instr::IfElse(ir::IfElse {
            consequent: then,
            alternative: otherwise,
        })));
    }
    prologue.push(op(Instr::Block(ir::Block { seq: body })));
    prologue.extend(write_back(c));
    func.block_mut(entry).instrs = prologue;

    // 2. Loops. Positions were taken before step 1 inserted instructions, so
    //    find each loop again by its sequence id.
    for (parent, _, l) in &loops {
        let ty = func.block(*l).ty;
        if has_params(ty) {
            // A loop with parameters cannot be re-entered from outside
            // without its operands: keep the check inline at its head.
            let then = func.builder_mut().dangling_instr_seq(None).id();
            func.block_mut(then).instrs = yield_call(c);
            let otherwise = func.builder_mut().dangling_instr_seq(None).id();
            let mut head: Vec<(Instr, InstrLocId)> = decrement_and_test(c).to_vec();
            head.push(op(Instr::IfElse(ir::IfElse {
                consequent: then,
                alternative: otherwise,
            })));
            func.block_mut(*l).instrs.splice(0..0, head);
            continue;
        }
        let done = func.builder_mut().dangling_instr_seq(ty).id();
        let retry = func.builder_mut().dangling_instr_seq(None).id();
        let slow = func.builder_mut().dangling_instr_seq(None).id();

        let mut head: Vec<(Instr, InstrLocId)> = decrement_and_test(c).to_vec();
        head.push(op(Instr::BrIf(ir::BrIf { block: slow })));
        func.block_mut(*l).instrs.splice(0..0, head);

        func.block_mut(slow).instrs = vec![
            op(Instr::Loop(ir::Loop { seq: *l })),
            op(Instr::Br(ir::Br { block: done })),
        ];
        let mut slow_path = vec![op(Instr::Block(ir::Block { seq: slow }))];
        slow_path.extend(yield_call(c));
        slow_path.extend([
            get(c.local),
            i32c(1),
            bin(BinaryOp::I32Add),
            op(Instr::LocalSet(ir::LocalSet { local: c.local })),
            op(Instr::Br(ir::Br { block: retry })),
        ]);
        func.block_mut(retry).instrs = slow_path;
        func.block_mut(done).instrs = vec![
            op(Instr::Loop(ir::Loop { seq: retry })),
            op(Instr::Unreachable(ir::Unreachable {})),
        ];
        // The loop sits in `body` if it was at the top level of the function.
        let parent = if *parent == entry { body } else { *parent };
        let slot = func
            .block_mut(parent)
            .instrs
            .iter_mut()
            .find(|(ins, _)| matches!(ins, Instr::Loop(x) if x.seq == *l));
        if let Some((ins, _)) = slot {
            *ins = Instr::Block(ir::Block { seq: done });
        }
    }
    (loops.len(), recursive)
}

fn has_params(ty: InstrSeqType) -> bool {
    // Simple block types never take parameters; a multi-value type may.
    matches!(ty, InstrSeqType::MultiValue(_))
}

/// Version 1: `fuel = fuel - 1; if fuel < 1 { call yield }` on the global.
fn prepend_v1_check(
    func: &mut LocalFunction,
    seq: InstrSeqId,
    fuel: GlobalId,
    tmp: LocalId,
    yield_fn: FunctionId,
) {
    let builder = func.builder_mut();
    let mut then = builder.dangling_instr_seq(None);
    then.call(yield_fn);
    let consequent = then.id();
    let alternative = builder.dangling_instr_seq(None).id();
    let check = [
        Instr::GlobalGet(ir::GlobalGet { global: fuel }),
        Instr::Const(ir::Const {
            value: Value::I32(1),
        }),
        Instr::Binop(ir::Binop {
            op: BinaryOp::I32Sub,
        }),
        Instr::LocalTee(ir::LocalTee { local: tmp }),
        Instr::GlobalSet(ir::GlobalSet { global: fuel }),
        Instr::LocalGet(ir::LocalGet { local: tmp }),
        Instr::Const(ir::Const {
            value: Value::I32(1),
        }),
        Instr::Binop(ir::Binop {
            op: BinaryOp::I32LtS,
        }),
        Instr::IfElse(ir::IfElse {
            consequent,
            alternative,
        }),
    ];
    func.block_mut(seq)
        .instrs
        .splice(0..0, check.into_iter().map(|i| (i, InstrLocId::default())));
}

/// Whether the function calls anything (directly, indirectly or as a tail call).
fn calls_anything(func: &LocalFunction) -> bool {
    all_seqs(func).into_iter().any(|seq| {
        func.block(seq).instrs.iter().any(|(i, _)| {
            matches!(
                i,
                Instr::Call(_)
                    | Instr::CallIndirect(_)
                    | Instr::CallRef(_)
                    | Instr::ReturnCall(_)
                    | Instr::ReturnCallIndirect(_)
                    | Instr::ReturnCallRef(_)
            )
        })
    })
}

/// The body sequence of every `loop`, in a deterministic order.
fn loop_bodies(func: &LocalFunction) -> Vec<InstrSeqId> {
    let mut out = Vec::new();
    for seq in all_seqs(func) {
        for (instr, _) in &func.block(seq).instrs {
            if let Instr::Loop(l) = instr {
                out.push(l.seq);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = r#"(module (memory 1)
        (func $leaf (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
        (func $rec (param i32) (result i32)
          (if (result i32) (local.get 0)
            (then (call $rec (i32.sub (local.get 0) (i32.const 1))))
            (else (call $leaf (i32.const 0)))))
        (func $plain (result i32) (call $leaf (i32.const 2)))
        (func (export "_start")
          (local i32)
          (loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get 0) (i32.const 10))))
          (drop (call $rec (i32.const 3)))))"#;

    #[test]
    fn checks_loops_and_recursion_but_not_leaves() {
        let wasm = wat::parse_str(PROGRAM).expect("wat");
        for version in [1, 2] {
            let out = inject(&wasm, version).expect("inject");
            assert_eq!(out.stats.loop_checks, 1, "v{version}");
            assert_eq!(out.stats.entry_checks, 1, "v{version}");
            wasmparser::Validator::new()
                .validate_all(&out.bytes)
                .expect("valid output");
        }
    }

    #[test]
    fn only_functions_reaching_a_yield_are_pausable() {
        let wasm = wat::parse_str(PROGRAM).expect("wat");
        let out = inject(&wasm, 2).expect("inject");
        let mut pausable = out.pausable.expect("v2 lists them");
        pausable.sort();
        // `_start` loops, `$rec` recurses; `$leaf` and `$plain` never reach a
        // yield, so Asyncify leaves them alone.
        assert_eq!(pausable.len(), 2, "{pausable:?}");
        assert!(pausable.iter().any(|n| n == "rec"), "{pausable:?}");
        assert!(!pausable.iter().any(|n| n == "leaf" || n == "plain"));
    }

    #[test]
    fn loop_only_leaves_tick_and_stay_out_of_asyncify() {
        // `$fill` loops and calls nothing: its check ticks, so neither it nor
        // the call to it from `_start` needs Asyncify; `_start` loops around
        // a call, so it keeps a real yield point.
        let wasm = wat::parse_str(
            r#"(module (memory 1)
            (func $fill (param i32)
              (loop $l (i32.store8 (local.get 0) (i32.const 7))
                (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
                (br_if $l (local.get 0))))
            (func $main (export "_start") (local i32)
              (loop $m (call $fill (i32.const 100))
                (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                (br_if $m (i32.lt_u (local.get 0) (i32.const 10))))))"#,
        )
        .expect("wat");
        let out = inject(&wasm, 2).expect("inject");
        assert_eq!(out.stats.leaf_functions, 1);
        assert_eq!(
            out.pausable.expect("v2 lists them"),
            vec!["main".to_string()]
        );
        let text = String::from_utf8_lossy(&out.bytes);
        assert!(text.contains(TICK_IMPORT), "the tick import is added");
        wasmparser::Validator::new()
            .validate_all(&out.bytes)
            .expect("valid output");

        let without = inject_with(&wasm, 2, false).expect("inject");
        assert_eq!(without.stats.leaf_functions, 0);
        assert_eq!(without.pausable.expect("listed").len(), 2);
    }
}
