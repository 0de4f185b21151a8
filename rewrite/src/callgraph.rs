//! The module's call graph, as the rewrite needs it: which functions recurse
//! (they get an entry check) and which can be on the stack when the task
//! pauses (only those are given to Asyncify).
//!
//! Indirect calls are resolved by *structural* signature against the
//! functions in element segments: tables never change at run time (the
//! validator refuses `table.set`/`grow`/`fill`/`copy`/`init`), so those are
//! the only functions a `call_indirect` can reach, and only those whose
//! signature equals the call's (wasm compares signatures structurally; the
//! same signature may appear under several type indices).

use std::collections::{HashMap, HashSet};

use walrus::ir::Instr;
use walrus::{ConstExpr, ElementItems, FunctionId, FunctionKind, LocalFunction, ValType};

/// Parameter and result types: the identity of a signature.
pub type Signature = (Vec<ValType>, Vec<ValType>);

/// A function's parameter and result types.
pub fn signature(module: &walrus::Module, f: FunctionId) -> Signature {
    let (p, r) = module.types.params_results(module.funcs.get(f).ty());
    (p.to_vec(), r.to_vec())
}

/// Direct and indirect call edges between every function (imports included).
pub struct CallGraph {
    /// Callees of each function, by function id.
    callees: HashMap<FunctionId, Vec<FunctionId>>,
}

/// Every function an element segment puts in a table: the only functions a
/// `call_indirect` can reach.
pub fn table_functions(module: &walrus::Module) -> Vec<FunctionId> {
    let mut out = Vec::new();
    for elem in module.elements.iter() {
        match &elem.items {
            ElementItems::Functions(f) => out.extend(f.iter().copied()),
            ElementItems::Expressions(_, exprs) => {
                out.extend(exprs.iter().filter_map(|e| match e {
                    ConstExpr::RefFunc(f) => Some(*f),
                    _ => None,
                }))
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl CallGraph {
    pub fn new(module: &walrus::Module) -> CallGraph {
        let mut by_sig: HashMap<Signature, Vec<FunctionId>> = HashMap::new();
        for f in table_functions(module) {
            by_sig.entry(signature(module, f)).or_default().push(f);
        }
        for v in by_sig.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        let mut callees = HashMap::new();
        for (id, func) in module.funcs.iter_local() {
            let mut out = Vec::new();
            for seq in all_seqs(func) {
                for (instr, _) in &func.block(seq).instrs {
                    match instr {
                        Instr::Call(c) => out.push(c.func),
                        Instr::CallIndirect(c) => {
                            let (p, r) = module.types.params_results(c.ty);
                            if let Some(targets) = by_sig.get(&(p.to_vec(), r.to_vec())) {
                                out.extend(targets.iter().copied());
                            }
                        }
                        _ => {}
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            callees.insert(id, out);
        }
        CallGraph { callees }
    }

    pub fn callees(&self, f: FunctionId) -> &[FunctionId] {
        self.callees.get(&f).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every function from which one of `roots` can be reached through calls
    /// (the roots themselves included).
    pub fn reaching(&self, roots: &HashSet<FunctionId>) -> HashSet<FunctionId> {
        let mut callers: HashMap<FunctionId, Vec<FunctionId>> = HashMap::new();
        for (caller, callees) in &self.callees {
            for callee in callees {
                callers.entry(*callee).or_default().push(*caller);
            }
        }
        let mut seen: HashSet<FunctionId> = roots.clone();
        let mut work: Vec<FunctionId> = roots.iter().copied().collect();
        while let Some(f) = work.pop() {
            for caller in callers.get(&f).into_iter().flatten() {
                if seen.insert(*caller) {
                    work.push(*caller);
                }
            }
        }
        seen
    }

    /// Local functions on a cycle of the call graph (self-recursion included).
    pub fn recursive(&self, module: &walrus::Module) -> HashSet<FunctionId> {
        let local: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
        let index: HashMap<FunctionId, usize> =
            local.iter().enumerate().map(|(i, f)| (*f, i)).collect();
        let edges: Vec<Vec<usize>> = local
            .iter()
            .map(|f| {
                self.callees(*f)
                    .iter()
                    .filter_map(|c| index.get(c).copied())
                    .collect()
            })
            .collect();
        let mut out = HashSet::new();
        for scc in tarjan(&edges) {
            let cyclic = scc.len() > 1 || scc.first().is_some_and(|&v| edges[v].contains(&v));
            if cyclic {
                out.extend(scc.into_iter().map(|v| local[v]));
            }
        }
        out
    }
}

/// Every instruction sequence reachable from the function's entry.
pub fn all_seqs(func: &LocalFunction) -> Vec<walrus::ir::InstrSeqId> {
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

/// The local function behind `id`, if it is one.
pub fn local(module: &walrus::Module, id: FunctionId) -> Option<&LocalFunction> {
    match &module.funcs.get(id).kind {
        FunctionKind::Local(f) => Some(f),
        _ => None,
    }
}

/// Strongly connected components, iteratively (call graphs can be deep).
pub fn tarjan(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
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
    fn indirect_calls_match_signatures_structurally() {
        // Two type entries with the same signature: a call_indirect through
        // the second must still reach the function declared with the first.
        let wasm = wat::parse_str(
            r#"(module
                (type $a (func (param i32) (result i32)))
                (type $b (func (param i32) (result i32)))
                (type $c (func (result f64)))
                (table 2 funcref)
                (elem (i32.const 0) $t $u)
                (func $t (type $a) (local.get 0))
                (func $u (type $c) (f64.const 1))
                (func $caller (result i32)
                  (call_indirect (type $b) (i32.const 7) (i32.const 0))))"#,
        )
        .expect("wat");
        let module = walrus::Module::from_buffer(&wasm).expect("parse");
        let graph = CallGraph::new(&module);
        let id = |name: &str| {
            module
                .funcs
                .iter()
                .find(|f| f.name.as_deref() == Some(name))
                .map(|f| f.id())
                .expect("function")
        };
        assert_eq!(graph.callees(id("caller")), &[id("t")]);
        let reach = graph.reaching(&HashSet::from([id("t")]));
        assert!(reach.contains(&id("caller")));
        assert!(!reach.contains(&id("u")));
    }
}
