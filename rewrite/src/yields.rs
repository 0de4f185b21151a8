//! Inject fuel-based yield points.
//!
//! Every loop header, and the entry of every function that can take part in
//! recursion, gets:
//!
//! ```text
//! fuel = fuel - 1; if fuel < 1 { call wmig.yield_point }
//! ```
//!
//! That bounds the work between two checks: a function that neither loops nor
//! recurses runs a bounded number of instructions, so it needs no check.
//! Recursion is found on the call graph: indirect calls are edges to every
//! function in an element segment with the matching type (conservative, since
//! the validator guarantees tables never change). A loop check is placed at the
//! head of the loop body, so each iteration pays one decrement and one branch.

use std::collections::{HashMap, HashSet};

use walrus::ir::{self, BinaryOp, Instr, InstrLocId, InstrSeqId, Value};
use walrus::{ConstExpr, ElementItems, FunctionId, FunctionKind, LocalFunction, ValType};

use crate::{RewriteError, RewriteStats, FUEL_EXPORT, HOST_MODULE, YIELD_IMPORT};

/// Parse, inject the checks and the `wmig.yield_point` import, emit.
pub fn inject(wasm: &[u8]) -> Result<(Vec<u8>, RewriteStats), RewriteError> {
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

    let recursive = recursive_functions(&module);

    let ty = module.types.add(&[], &[]);
    let (yield_fn, _) = module.add_import_func(HOST_MODULE, YIELD_IMPORT, ty);
    let fuel = module
        .globals
        .add_local(ValType::I32, true, false, ConstExpr::Value(Value::I32(1)));
    module.exports.add(FUEL_EXPORT, fuel);

    let mut stats = RewriteStats::default();
    let ids: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
    stats.functions = ids.len();
    for id in ids {
        let tmp = module.locals.add(ValType::I32);
        let func = match &mut module.funcs.get_mut(id).kind {
            FunctionKind::Local(f) => f,
            _ => continue,
        };
        let mut heads = loop_bodies(func);
        stats.loop_checks += heads.len();
        if recursive.contains(&id) {
            heads.push(func.entry_block());
            stats.entry_checks += 1;
        }
        for seq in heads {
            prepend_check(func, seq, fuel, tmp, yield_fn);
        }
    }
    Ok((module.emit_wasm(), stats))
}

fn prepend_check(
    func: &mut LocalFunction,
    seq: InstrSeqId,
    fuel: walrus::GlobalId,
    tmp: walrus::LocalId,
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

/// Every instruction sequence reachable from the function's entry.
fn all_seqs(func: &LocalFunction) -> Vec<InstrSeqId> {
    let mut out = Vec::new();
    let mut stack = vec![func.entry_block()];
    while let Some(seq) = stack.pop() {
        out.push(seq);
        for (instr, _) in &func.block(seq).instrs {
            match instr {
                Instr::Block(b) => stack.push(b.seq),
                Instr::Loop(l) => stack.push(l.seq),
                Instr::IfElse(i) => {
                    stack.push(i.consequent);
                    stack.push(i.alternative);
                }
                _ => {}
            }
        }
    }
    out
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

/// Functions on a cycle of the call graph (including self-recursion).
fn recursive_functions(module: &walrus::Module) -> HashSet<FunctionId> {
    // Indirect-call targets by type.
    let mut by_type: HashMap<walrus::TypeId, Vec<FunctionId>> = HashMap::new();
    for elem in module.elements.iter() {
        let funcs: Vec<FunctionId> = match &elem.items {
            ElementItems::Functions(f) => f.clone(),
            ElementItems::Expressions(_, exprs) => exprs
                .iter()
                .filter_map(|e| match e {
                    ConstExpr::RefFunc(f) => Some(*f),
                    _ => None,
                })
                .collect(),
        };
        for f in funcs {
            by_type.entry(module.funcs.get(f).ty()).or_default().push(f);
        }
    }
    for v in by_type.values_mut() {
        v.sort_unstable();
        v.dedup();
    }

    let local: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
    let index: HashMap<FunctionId, usize> =
        local.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); local.len()];
    for (i, id) in local.iter().enumerate() {
        let FunctionKind::Local(func) = &module.funcs.get(*id).kind else {
            continue;
        };
        for seq in all_seqs(func) {
            for (instr, _) in &func.block(seq).instrs {
                match instr {
                    Instr::Call(c) => {
                        if let Some(&j) = index.get(&c.func) {
                            edges[i].push(j);
                        }
                    }
                    Instr::CallIndirect(c) => {
                        for f in by_type.get(&c.ty).into_iter().flatten() {
                            if let Some(&j) = index.get(f) {
                                edges[i].push(j);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = HashSet::new();
    for scc in tarjan(&edges) {
        let cyclic = scc.len() > 1 || scc.first().is_some_and(|&v| edges[v].contains(&v));
        if cyclic {
            out.extend(scc.into_iter().map(|v| local[v]));
        }
    }
    out
}

/// Strongly connected components, iteratively (call graphs can be deep).
fn tarjan(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut sccs = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut ei)) = work.last_mut() {
            if *ei == 0 && index[v] == UNSEEN {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*ei) {
                *ei += 1;
                if index[w] == UNSEEN {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                sccs.push(scc);
            }
        }
    }
    sccs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarjan_finds_cycles_only() {
        // 0 -> 1 -> 2 -> 0 (cycle), 3 -> 3 (self), 4 -> 0 (none)
        let edges = vec![vec![1], vec![2], vec![0], vec![3], vec![0]];
        let mut sccs: Vec<Vec<usize>> = tarjan(&edges)
            .into_iter()
            .map(|mut s| {
                s.sort();
                s
            })
            .collect();
        sccs.sort();
        assert_eq!(sccs, vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn checks_loops_and_recursion_but_not_leaves() {
        let wasm = wat::parse_str(
            r#"(module (memory 1)
                (func $leaf (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
                (func $rec (param i32) (result i32)
                  (if (result i32) (local.get 0)
                    (then (call $rec (i32.sub (local.get 0) (i32.const 1))))
                    (else (call $leaf (i32.const 0)))))
                (func (export "_start")
                  (local i32)
                  (loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                           (br_if $l (i32.lt_u (local.get 0) (i32.const 10))))
                  (drop (call $rec (i32.const 3)))))"#,
        )
        .expect("wat");
        let (_, stats) = inject(&wasm).expect("inject");
        assert_eq!(stats.loop_checks, 1);
        assert_eq!(stats.entry_checks, 1);
    }
}
