//! wmig's own unwind/rewind transform (rewriter 3), in place of Asyncify.
//!
//! Asyncify makes one copy of each pausable function serve both normal
//! execution and rewinding: every stretch of code is guarded by a state
//! check so that a rewind can skip to the call it stopped in. Those guards
//! and the flattening they need are paid on every instruction, all the task's
//! life, to support a rewind that happens once per migration. Measured on the
//! benchmark corpus, they were almost the whole of wmig's run-time overhead.
//!
//! Here each function that can be on the stack at a pause gets **two
//! bodies**:
//!
//! - the **fast body** replaces the original: the original code, plus after
//!   each call that can pause a single `if (state) { save; return }`. Values
//!   the call leaves on the operand stack below its arguments go through
//!   locals, which the code generator turns back into registers, so the
//!   normal path is the program's own code plus one load and a
//!   never-taken branch per call that can pause.
//! - the **rewind body** (a new function, `F$rw`) runs only after a restore:
//!   it reloads the frame's locals and skips, with guards like Asyncify's, to
//!   the call the frame was paused in, and finishes the function. Guarded
//!   code is slow (an interpreter's dispatch loop ran 2.7× slower in it), and
//!   a frame that never returns — a main loop, an interpreter — would stay in
//!   it for good; so each loop that contains a call that can pause also gets
//!   a **fast copy** in the rewind body, and the guarded loop's back edges
//!   branch to it: after at most one more iteration per enclosing loop, a
//!   resumed frame runs the program's own code again.
//!
//! A rewind enters the rewind bodies from the outermost frame in: a rewind
//! body calls its callee's rewind body directly while rewinding, and
//! functions reachable from outside (exports and table entries) check the
//! state on entry and hand over to their rewind body (through a table, as
//! [`crate::split`] moves the rewind bodies into a module of their own that
//! is compiled only when a task first resumes). The innermost frame re-calls
//! the import it paused in; the host ends the rewind there.
//!
//! Each call site saves only the locals live after it (a backward liveness
//! pass over the fast body): saving every local from every site would keep
//! all of them alive across every call that can pause, and the register
//! pressure showed in hot loops.
//!
//! A frame is every local the function uses (parameters, its own locals,
//! the stack spills), 8 bytes each (16 for `v128`), then the index of the
//! call it paused in; frames are pushed into the `wmig:stack` memory, the
//! innermost first, and popped outermost first. The module keeps Asyncify's
//! control exports (`asyncify_start_unwind` and so on, same header layout)
//! so that the host drives both rewriters the same way.
//!
//! Validation has already refused what no call site could resume
//! (tail calls, `call_ref`, exception handling). What bytes cannot hold —
//! a reference-typed local, result or stack value in a function that can
//! pause, or passive data in one (see [`crate::split`]) — is reported as
//! [`UnwindError::Unsupported`]; the rewrite then falls back to Asyncify
//! for that module.

use std::collections::{HashMap, HashSet};

use walrus::ir::{self, BinaryOp, Instr, InstrLocId, InstrSeqId, InstrSeqType, Value};
use walrus::{
    ExportItem, FunctionBuilder, FunctionId, FunctionKind, GlobalId, LocalId, MemoryId, TypeId,
    ValType,
};

use crate::build::{bin, get, gget, i32c, op, set};
use crate::callgraph::{all_seqs, table_functions};
use crate::STACK_PAGES;

/// Why the transform did not produce a module.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    /// The module uses something this transform does not cover; Asyncify can.
    #[error("not supported by wmig's unwind transform: {0}")]
    Unsupported(String),
    /// A bug: the transform produced or met something invalid.
    #[error("wmig's unwind transform failed: {0}")]
    Failed(String),
}

/// What the transform did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Functions given a rewind body.
    pub functions: usize,
    /// Calls after which a frame may unwind.
    pub pause_calls: usize,
    /// Mutable globals exported for capture.
    pub mutable_globals: usize,
}

type Code = Vec<(Instr, InstrLocId)>;
type Sig = (Vec<ValType>, Vec<ValType>);

/// Make every function named in `pausable` unwindable and rewindable.
pub fn transform(
    wasm: &[u8],
    pausable: &[String],
    version: u32,
) -> Result<(Vec<u8>, UnwindStats), UnwindError> {
    let types_at = stack_types(wasm)?;
    let mut config = walrus::ModuleConfig::new();
    config.generate_producers_section(false);
    let mut module = config
        .parse(wasm)
        .map_err(|e| UnwindError::Failed(format!("parsing the instrumented module: {e}")))?;

    let wanted: HashSet<&str> = pausable.iter().map(String::as_str).collect();
    let mut funcs: Vec<FunctionId> = module
        .funcs
        .iter_local()
        .filter(|(id, _)| {
            module
                .funcs
                .get(*id)
                .name
                .as_deref()
                .is_some_and(|n| wanted.contains(n))
        })
        .map(|(id, _)| id)
        .collect();
    funcs.sort_unstable();
    if funcs.len() != wanted.len() {
        return Err(UnwindError::Failed(format!(
            "{} pausable functions named, {} found by name",
            wanted.len(),
            funcs.len()
        )));
    }

    let pause_imports: HashSet<FunctionId> = module
        .imports
        .iter()
        .filter(|i| crate::is_pause_import(&i.module, &i.name, version))
        .filter_map(|i| match i.kind {
            walrus::ImportKind::Function(f) => Some(f),
            _ => None,
        })
        .collect();
    let pausable_set: HashSet<FunctionId> = funcs.iter().copied().collect();
    let sigs: HashMap<FunctionId, Sig> = module
        .funcs
        .iter()
        .map(|f| {
            let (p, r) = module.types.params_results(f.ty());
            (f.id(), (p.to_vec(), r.to_vec()))
        })
        .collect();
    let table = table_functions(&module);
    let exported: HashSet<FunctionId> = module
        .exports
        .iter()
        .filter_map(|e| match e.item {
            ExportItem::Function(f) => Some(f),
            _ => None,
        })
        .collect();
    let entered_from_outside: HashSet<FunctionId> = table
        .iter()
        .copied()
        .chain(exported.iter().copied())
        .filter(|f| pausable_set.contains(f))
        .collect();

    let state = module.globals.add_local(
        ValType::I32,
        true,
        false,
        walrus::ConstExpr::Value(Value::I32(0)),
    );
    let data = module.globals.add_local(
        ValType::I32,
        true,
        false,
        walrus::ConstExpr::Value(Value::I32(0)),
    );
    let stack = module.memories.add_local(
        false,
        false,
        u64::from(STACK_PAGES),
        Some(u64::from(STACK_PAGES)),
        None,
    );

    // Rewind bodies first (empty), so that every body can call any other's.
    let mut rewind_of: HashMap<FunctionId, FunctionId> = HashMap::new();
    let mut call_ty: HashMap<FunctionId, InstrSeqType> = HashMap::new();
    for &f in &funcs {
        let (params, results) = sigs[&f].clone();
        let args: Vec<LocalId> = match &module.funcs.get(f).kind {
            FunctionKind::Local(l) => l.args.clone(),
            _ => continue,
        };
        let mut b = FunctionBuilder::new(&mut module.types, &params, &results);
        b.func_body().unreachable();
        let name = module.funcs.get(f).name.clone().unwrap_or_default();
        b.name(format!("{name}$rw"));
        let rid = b.finish(args, &mut module.funcs);
        rewind_of.insert(f, rid);
        call_ty.insert(f, InstrSeqType::new(&mut module.types, &params, &results));
    }
    // Rewind bodies are reached from outside through a table the rewind
    // module fills (see `split`); each is exported under its slot so that
    // `split` can find it.
    let slots = u64::try_from(funcs.len()).unwrap_or(u64::MAX);
    let rw_table = module
        .tables
        .add_local(false, slots, Some(slots), walrus::RefType::FUNCREF);
    module.exports.add(
        crate::split::REWIND_TABLE_EXPORT,
        ExportItem::Table(rw_table),
    );
    let mut slot_of: HashMap<FunctionId, i32> = HashMap::new();
    for (slot, f) in funcs.iter().enumerate() {
        let slot =
            i32::try_from(slot).map_err(|_| UnwindError::Failed("too many functions".into()))?;
        slot_of.insert(*f, slot);
        module.exports.add(
            &format!("{}{slot}", crate::split::REWIND_SLOT_PREFIX),
            ExportItem::Function(rewind_of[f]),
        );
    }
    // Every type, once the rewind bodies have added theirs.
    let type_sigs: HashMap<TypeId, Sig> = module
        .types
        .iter()
        .map(|t| (t.id(), (t.params().to_vec(), t.results().to_vec())))
        .collect();
    // An indirect call can pause if a pausable function with its signature
    // sits in a table (tables never change; see `callgraph`).
    let pausable_sigs: HashSet<&Sig> = table
        .iter()
        .filter(|f| pausable_set.contains(f))
        .filter_map(|f| sigs.get(f))
        .collect();
    let pausable_types: HashSet<TypeId> = type_sigs
        .iter()
        .filter(|(_, s)| pausable_sigs.contains(s))
        .map(|(t, _)| *t)
        .collect();

    let mut stats = UnwindStats::default();
    for &f in &funcs {
        let ctx = Ctx {
            types_at: &types_at,
            sigs: &sigs,
            type_sigs: &type_sigs,
            pause_imports: &pause_imports,
            pausable: &pausable_set,
            pausable_types: &pausable_types,
            rewind_of: &rewind_of,
            call_ty: &call_ty,
            rw_table,
            slot_of: &slot_of,
            state,
            data,
            stack,
        };
        let calls = rewrite_function(
            &mut module,
            &ctx,
            f,
            rewind_of[&f],
            entered_from_outside.contains(&f),
        )?;
        stats.pause_calls += calls;
        stats.functions += 1;
    }

    add_control_exports(&mut module, state, data);
    stats.mutable_globals = crate::exports::export_state_module(&mut module)
        .map_err(|e| UnwindError::Failed(e.to_string()))?;
    let bytes = module.emit_wasm();
    if cfg!(debug_assertions) {
        // wasmtime validates what it compiles; this names the culprit sooner.
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&bytes)
            .map_err(|e| UnwindError::Failed(format!("the transformed module is invalid: {e}")))?;
    }
    Ok((bytes, stats))
}

/// The operand stack of the current block (bottom first) just before every
/// call and block instruction, keyed by the instruction's offset in `wasm`
/// (walrus records the same offset in each instruction's `InstrLocId`).
/// `None` where a value is reference-typed.
fn stack_types(wasm: &[u8]) -> Result<HashMap<u32, Option<Vec<ValType>>>, UnwindError> {
    use wasmparser::{Operator, Parser, ValidPayload, Validator, WasmFeatures};
    let fail = |e: wasmparser::BinaryReaderError| {
        UnwindError::Failed(format!("validating the instrumented module: {e}"))
    };
    let mut out = HashMap::new();
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut allocs = wasmparser::FuncValidatorAllocations::default();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(fail)?;
        let ValidPayload::Func(to_validate, body) = validator.payload(&payload).map_err(fail)?
        else {
            continue;
        };
        let mut fv = to_validate.into_validator(std::mem::take(&mut allocs));
        let mut locals = body.get_locals_reader().map_err(fail)?;
        for _ in 0..locals.get_count() {
            let pos = locals.original_position();
            let (n, ty) = locals.read().map_err(fail)?;
            fv.define_locals(pos, n, ty).map_err(fail)?;
        }
        let mut ops = body.get_operators_reader().map_err(fail)?;
        while !ops.eof() {
            let pos = ops.original_position();
            let op = ops.read().map_err(fail)?;
            if matches!(
                op,
                Operator::Call { .. }
                    | Operator::CallIndirect { .. }
                    | Operator::Block { .. }
                    | Operator::Loop { .. }
                    | Operator::If { .. }
            ) {
                let height = fv.operand_stack_height() as usize;
                let base = fv.get_control_frame(0).map_or(height, |f| f.height);
                let mut types = Some(Vec::with_capacity(height.saturating_sub(base)));
                for depth in (0..height.saturating_sub(base)).rev() {
                    let ty = match fv.get_operand_type(depth) {
                        Some(Some(wasmparser::ValType::I32)) => Some(ValType::I32),
                        Some(Some(wasmparser::ValType::I64)) => Some(ValType::I64),
                        Some(Some(wasmparser::ValType::F32)) => Some(ValType::F32),
                        Some(Some(wasmparser::ValType::F64)) => Some(ValType::F64),
                        Some(Some(wasmparser::ValType::V128)) => Some(ValType::V128),
                        _ => None,
                    };
                    match (ty, types.as_mut()) {
                        (Some(t), Some(v)) => v.push(t),
                        _ => types = None,
                    }
                }
                if let Ok(pos) = u32::try_from(pos) {
                    out.insert(pos, types);
                }
            }
            fv.op(pos, &op).map_err(fail)?;
        }
        ops.finish().map_err(fail)?;
        allocs = fv.into_allocations();
    }
    Ok(out)
}

struct Ctx<'a> {
    types_at: &'a HashMap<u32, Option<Vec<ValType>>>,
    sigs: &'a HashMap<FunctionId, Sig>,
    type_sigs: &'a HashMap<TypeId, Sig>,
    pause_imports: &'a HashSet<FunctionId>,
    pausable: &'a HashSet<FunctionId>,
    pausable_types: &'a HashSet<TypeId>,
    rewind_of: &'a HashMap<FunctionId, FunctionId>,
    call_ty: &'a HashMap<FunctionId, InstrSeqType>,
    rw_table: walrus::TableId,
    slot_of: &'a HashMap<FunctionId, i32>,
    state: GlobalId,
    data: GlobalId,
    stack: MemoryId,
}

impl Ctx<'_> {
    /// If `ins` is a call that can pause: its inputs (arguments and, for an
    /// indirect call, the table index), its results, and its direct callee.
    fn pause_call(&self, ins: &Instr) -> Option<(usize, Vec<ValType>, Option<FunctionId>)> {
        match ins {
            Instr::Call(c)
                if self.pausable.contains(&c.func) || self.pause_imports.contains(&c.func) =>
            {
                let (p, r) = self.sigs.get(&c.func)?;
                Some((p.len(), r.clone(), Some(c.func)))
            }
            Instr::CallIndirect(c) if self.pausable_types.contains(&c.ty) => {
                let (p, r) = self.type_sigs.get(&c.ty)?;
                Some((p.len() + 1, r.clone(), None))
            }
            _ => None,
        }
    }

    fn block_sig(&self, ty: InstrSeqType) -> Sig {
        match ty {
            InstrSeqType::Simple(None) => (vec![], vec![]),
            InstrSeqType::Simple(Some(t)) => (vec![], vec![t]),
            InstrSeqType::MultiValue(t) => self.type_sigs.get(&t).cloned().unwrap_or_default(),
        }
    }
}

/// One stretch of a block's code, as the two bodies treat it.
enum Piece {
    /// Runs in both bodies, rewinding or not.
    Plain(Code),
    /// Skipped by the rewind body while it rewinds. Leaves the operand stack
    /// as it found it, except for the block's last piece (never skipped: a
    /// rewind has reached its call before it gets there).
    Chunk(Code),
    /// A call that can pause. `pre` pushes its inputs from locals, `post`
    /// stores its results into locals.
    Call {
        pre: Code,
        call: (Instr, InstrLocId),
        index: u32,
        callee: Option<FunctionId>,
        post: Code,
    },
    /// A block, loop or if that contains calls that can pause, numbered
    /// `range`. For an `if`, `cond` is the local holding its condition and
    /// the range of its `then` arm.
    Structure {
        pre: Code,
        cond: Option<(LocalId, Option<(u32, u32)>)>,
        ins: (Instr, InstrLocId),
        range: (u32, u32),
        post: Code,
    },
}

fn as_i32(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

/// `k - lo <= hi - lo` (unsigned): whether call index `k` is in the range.
fn in_range(k: LocalId, (lo, hi): (u32, u32)) -> Code {
    vec![
        get(k),
        i32c(as_i32(lo)),
        bin(BinaryOp::I32Sub),
        i32c(as_i32(hi - lo)),
        bin(BinaryOp::I32LeU),
    ]
}

fn zero(t: ValType) -> Result<(Instr, InstrLocId), UnwindError> {
    let value = match t {
        ValType::I32 => Value::I32(0),
        ValType::I64 => Value::I64(0),
        ValType::F32 => Value::F32(0.0),
        ValType::F64 => Value::F64(0.0),
        ValType::V128 => Value::V128(0),
        ValType::Ref(_) => {
            return Err(UnwindError::Unsupported(
                "a pausable function returns a reference".into(),
            ))
        }
    };
    Ok(op(Instr::Const(ir::Const { value })))
}

/// Locals for spilled stack values, shared by every item at the same block
/// depth (items at one depth never overlap in time; a nested item's spills
/// happen while the outer item's are still live, hence the depth).
struct Pool<'m> {
    locals: &'m mut walrus::ModuleLocals,
    map: HashMap<(u32, u8, usize, ValType), LocalId>,
}

impl Pool<'_> {
    fn get(&mut self, depth: u32, role: u8, j: usize, t: ValType) -> LocalId {
        *self
            .map
            .entry((depth, role, j, t))
            .or_insert_with(|| self.locals.add(t))
    }
}

const BELOW: u8 = 0;
const RESULT: u8 = 1;
const PARAM: u8 = 2;

/// Numbering of the calls that can pause, in pre-order.
struct Numbering {
    /// Call index of each pausable call, by (block, position).
    calls: HashMap<(InstrSeqId, usize), u32>,
    /// Range of call indices inside each block, if any.
    ranges: HashMap<InstrSeqId, (u32, u32)>,
    depth: HashMap<InstrSeqId, u32>,
}

fn union(a: Option<(u32, u32)>, b: Option<(u32, u32)>) -> Option<(u32, u32)> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, None) => a,
        (None, b) => b,
    }
}

fn number(
    ctx: &Ctx,
    orig: &HashMap<InstrSeqId, (InstrSeqType, Code)>,
    entry: InstrSeqId,
) -> Numbering {
    let mut n = Numbering {
        calls: HashMap::new(),
        ranges: HashMap::new(),
        depth: HashMap::new(),
    };
    let mut next = 0u32;
    // Iterative pre-order walk. Each level: its block, the next position,
    // and the child blocks of the instruction just visited still to walk.
    let mut stack: Vec<(InstrSeqId, usize, Vec<InstrSeqId>)> = vec![(entry, 0, vec![])];
    n.depth.insert(entry, 0);
    while let Some(top) = stack.len().checked_sub(1) {
        let seq = stack[top].0;
        if let Some(child) = stack[top].2.pop() {
            n.depth.insert(child, n.depth[&seq] + 1);
            stack.push((child, 0, vec![]));
            continue;
        }
        let code = &orig[&seq].1;
        let i = stack[top].1;
        if i >= code.len() {
            stack.pop();
            if let (Some(parent), Some(r)) = (stack.last(), n.ranges.get(&seq).copied()) {
                let parent = parent.0;
                if let Some(m) = union(n.ranges.get(&parent).copied(), Some(r)) {
                    n.ranges.insert(parent, m);
                }
            }
            continue;
        }
        stack[top].1 += 1;
        match &code[i].0 {
            ins if ctx.pause_call(ins).is_some() => {
                n.calls.insert((seq, i), next);
                if let Some(m) = union(n.ranges.get(&seq).copied(), Some((next, next))) {
                    n.ranges.insert(seq, m);
                }
                next += 1;
            }
            Instr::Block(b) => stack[top].2.push(b.seq),
            Instr::Loop(l) => stack[top].2.push(l.seq),
            // Pushed in reverse so that `then` is numbered first.
            Instr::IfElse(e) => stack[top].2.extend([e.alternative, e.consequent]),
            _ => {}
        }
    }
    n
}

/// The range of call indices inside the block, loop or if `ins`.
fn structure_range(n: &Numbering, ins: &Instr) -> Option<(u32, u32)> {
    match ins {
        Instr::Block(b) => n.ranges.get(&b.seq).copied(),
        Instr::Loop(l) => n.ranges.get(&l.seq).copied(),
        Instr::IfElse(e) => union(
            n.ranges.get(&e.consequent).copied(),
            n.ranges.get(&e.alternative).copied(),
        ),
        _ => None,
    }
}

/// Split one block into pieces, spilling the operand stack around every
/// item (a call that can pause, or a structure containing one).
fn pieces(
    ctx: &Ctx,
    n: &Numbering,
    pool: &mut Pool,
    orig: &HashMap<InstrSeqId, (InstrSeqType, Code)>,
    seq: InstrSeqId,
) -> Result<Vec<Piece>, UnwindError> {
    let (ty, code) = &orig[&seq];
    let ty = *ty;
    let child_ty = |child: InstrSeqId| {
        orig.get(&child)
            .map(|(t, _)| *t)
            .ok_or_else(|| UnwindError::Failed("a block outside the function".into()))
    };
    let mut out = Vec::new();
    let depth = n.depth.get(&seq).copied().unwrap_or(0);
    let mut cur: Code = Vec::new();
    if !n.ranges.contains_key(&seq) {
        out.push(Piece::Chunk(code.clone()));
        return Ok(out);
    }
    let (params, _) = ctx.block_sig(ty);
    if !params.is_empty() {
        // The block starts with its parameters on the stack: park them so
        // that the first chunk can be skipped as a whole.
        let locals: Vec<LocalId> = params
            .iter()
            .enumerate()
            .map(|(j, t)| pool.get(depth, PARAM, j, *t))
            .collect();
        out.push(Piece::Plain(locals.iter().rev().map(|l| set(*l)).collect()));
        cur.extend(locals.iter().map(|l| get(*l)));
    }
    for (i, (ins, loc)) in code.iter().enumerate() {
        let call = n.calls.get(&(seq, i)).copied();
        let range = if call.is_none() {
            structure_range(n, ins)
        } else {
            None
        };
        if call.is_none() && range.is_none() {
            cur.push((ins.clone(), *loc));
            continue;
        }
        // Every instruction here was parsed, so it carries its offset.
        let at = (!loc.is_default())
            .then(|| loc.data())
            .ok_or_else(|| UnwindError::Failed("an instruction without an offset".into()))?;
        let stack = ctx
            .types_at
            .get(&at)
            .ok_or_else(|| {
                UnwindError::Failed(format!("no operand types recorded at offset {at}"))
            })?
            .clone()
            .ok_or_else(|| {
                UnwindError::Unsupported(
                    "a reference-typed value is on the stack across a call that can pause".into(),
                )
            })?;
        let (inputs, results, callee, cond) = match (call, ins) {
            (Some(_), _) => {
                let (inputs, results, callee) = ctx
                    .pause_call(ins)
                    .ok_or_else(|| UnwindError::Failed("pausable call lost its type".into()))?;
                (inputs, results, callee, false)
            }
            (None, Instr::Block(b)) => {
                let (p, r) = ctx.block_sig(child_ty(b.seq)?);
                (p.len(), r, None, false)
            }
            (None, Instr::Loop(l)) => {
                let (p, r) = ctx.block_sig(child_ty(l.seq)?);
                (p.len(), r, None, false)
            }
            (None, Instr::IfElse(e)) => {
                let (p, r) = ctx.block_sig(child_ty(e.consequent)?);
                (p.len() + 1, r, None, true)
            }
            _ => return Err(UnwindError::Failed("unexpected item".into())),
        };
        if stack.len() < inputs {
            return Err(UnwindError::Failed(format!(
                "operand stack at offset {at} holds {} values, the instruction takes {inputs}",
                stack.len()
            )));
        }
        let spill: Vec<LocalId> = stack
            .iter()
            .enumerate()
            .map(|(j, t)| pool.get(depth, BELOW, j, *t))
            .collect();
        cur.extend(spill.iter().rev().map(|l| set(*l)));
        out.push(Piece::Chunk(std::mem::take(&mut cur)));
        let below = stack.len() - inputs;
        let mut pre: Code = spill[below..].iter().map(|l| get(*l)).collect();
        let res: Vec<LocalId> = results
            .iter()
            .enumerate()
            .map(|(j, t)| pool.get(depth, RESULT, j, *t))
            .collect();
        let post: Code = res.iter().rev().map(|l| set(*l)).collect();
        if let Some(index) = call {
            out.push(Piece::Call {
                pre,
                call: (ins.clone(), *loc),
                index,
                callee,
                post,
            });
        } else {
            let cond = if cond {
                pre.pop();
                let then_range = match ins {
                    Instr::IfElse(e) => n.ranges.get(&e.consequent).copied(),
                    _ => None,
                };
                Some((spill[stack.len() - 1], then_range))
            } else {
                None
            };
            out.push(Piece::Structure {
                pre,
                cond,
                ins: (ins.clone(), *loc),
                range: range.unwrap_or((0, 0)),
                post,
            });
        }
        cur.extend(spill[..below].iter().map(|l| get(*l)));
        cur.extend(res.iter().map(|l| get(*l)));
    }
    out.push(Piece::Chunk(cur));
    Ok(out)
}

fn local_mut(
    module: &mut walrus::Module,
    f: FunctionId,
) -> Result<&mut walrus::LocalFunction, UnwindError> {
    match &mut module.funcs.get_mut(f).kind {
        FunctionKind::Local(l) => Ok(l),
        _ => Err(UnwindError::Failed(
            "a pausable function is an import".into(),
        )),
    }
}

fn mem_arg(t: ValType, offset: u32) -> ir::MemArg {
    let natural = match t {
        ValType::I32 | ValType::F32 => 4,
        _ => 8,
    };
    ir::MemArg {
        align: natural,
        offset: u64::from(offset),
    }
}

fn load(memory: MemoryId, t: ValType, offset: u32) -> (Instr, InstrLocId) {
    let kind = match t {
        ValType::I32 => ir::LoadKind::I32 { atomic: false },
        ValType::I64 => ir::LoadKind::I64 { atomic: false },
        ValType::F32 => ir::LoadKind::F32,
        ValType::F64 => ir::LoadKind::F64,
        _ => ir::LoadKind::V128,
    };
    op(Instr::Load(ir::Load {
        memory,
        kind,
        arg: mem_arg(t, offset),
    }))
}

fn store(memory: MemoryId, t: ValType, offset: u32) -> (Instr, InstrLocId) {
    let kind = match t {
        ValType::I32 => ir::StoreKind::I32 { atomic: false },
        ValType::I64 => ir::StoreKind::I64 { atomic: false },
        ValType::F32 => ir::StoreKind::F32,
        ValType::F64 => ir::StoreKind::F64,
        _ => ir::StoreKind::V128,
    };
    op(Instr::Store(ir::Store {
        memory,
        kind,
        arg: mem_arg(t, offset),
    }))
}

/// Where each saved local sits in a frame, and the frame's size.
struct Frame {
    slots: Vec<(LocalId, ValType, u32)>,
    index_at: u32,
    size: u32,
}

fn frame(module: &walrus::Module, locals: &[LocalId]) -> Result<Frame, UnwindError> {
    let mut slots = Vec::with_capacity(locals.len());
    let mut at = 0u32;
    for &l in locals {
        let t = module.locals.get(l).ty();
        let size = match t {
            ValType::V128 => 16,
            ValType::Ref(_) => {
                return Err(UnwindError::Unsupported(
                    "a function that can pause has a reference-typed local".into(),
                ))
            }
            _ => 8,
        };
        slots.push((l, t, at));
        at += size;
    }
    Ok(Frame {
        slots,
        index_at: at,
        size: at + 8,
    })
}

fn collect_locals(code: &Code, out: &mut HashSet<LocalId>) {
    for (ins, _) in code {
        match ins {
            Instr::LocalGet(g) => {
                out.insert(g.local);
            }
            Instr::LocalSet(s) => {
                out.insert(s.local);
            }
            Instr::LocalTee(t) => {
                out.insert(t.local);
            }
            _ => {}
        }
    }
}

fn piece_locals(p: &Piece, out: &mut HashSet<LocalId>) {
    match p {
        Piece::Plain(c) | Piece::Chunk(c) => collect_locals(c, out),
        Piece::Call { pre, post, .. } => {
            collect_locals(pre, out);
            collect_locals(post, out);
        }
        Piece::Structure {
            pre, post, cond, ..
        } => {
            collect_locals(pre, out);
            collect_locals(post, out);
            if let Some((c, _)) = cond {
                out.insert(*c);
            }
        }
    }
}

/// Branch targets through `map` (blocks of the original body to the blocks
/// of the body being built).
fn remap(code: &Code, map: &dyn Fn(InstrSeqId) -> InstrSeqId) -> Code {
    remap2(code, map, map)
}

/// [`remap`] with branch targets (`labels`) and nested blocks (`blocks`)
/// mapped apart: in a rewind body a branch back to a loop's header may
/// leave for the loop's fast copy while the loop itself stays guarded.
fn remap2(
    code: &Code,
    labels: &dyn Fn(InstrSeqId) -> InstrSeqId,
    blocks: &dyn Fn(InstrSeqId) -> InstrSeqId,
) -> Code {
    code.iter()
        .map(|(ins, loc)| {
            let mut ins = ins.clone();
            match &mut ins {
                Instr::Br(b) => b.block = labels(b.block),
                Instr::BrIf(b) => b.block = labels(b.block),
                Instr::BrTable(t) => {
                    for b in t.blocks.iter_mut() {
                        *b = labels(*b);
                    }
                    t.default = labels(t.default);
                }
                Instr::Block(b) => b.seq = blocks(b.seq),
                Instr::Loop(l) => l.seq = blocks(l.seq),
                Instr::IfElse(e) => {
                    e.consequent = blocks(e.consequent);
                    e.alternative = blocks(e.alternative);
                }
                _ => {}
            }
            (ins, *loc)
        })
        .collect()
}

/// One block's pieces the fast way: the code as is, an unwind check after
/// each call that can pause (recorded in `sites`, branching to `save`).
#[allow(clippy::too_many_arguments)]
fn fast_code(
    func: &mut walrus::LocalFunction,
    ctx: &Ctx,
    ps: &[Piece],
    labels: &dyn Fn(InstrSeqId) -> InstrSeqId,
    blocks: &dyn Fn(InstrSeqId) -> InstrSeqId,
    sites: &mut Vec<(InstrSeqId, u32)>,
) -> Code {
    let mut code = Vec::new();
    for p in ps {
        match p {
            Piece::Plain(c) | Piece::Chunk(c) => code.extend(remap2(c, labels, blocks)),
            Piece::Call {
                pre,
                call,
                index,
                post,
                ..
            } => {
                code.extend(pre.iter().cloned());
                code.push(call.clone());
                code.extend(unwind_check(func, ctx, *index, sites));
                code.extend(post.iter().cloned());
            }
            Piece::Structure {
                pre,
                cond,
                ins,
                post,
                ..
            } => {
                code.extend(pre.iter().cloned());
                if let Some((c, _)) = cond {
                    code.push(get(*c));
                }
                code.extend(remap2(&vec![ins.clone()], labels, blocks));
                code.extend(post.iter().cloned());
            }
        }
    }
    code
}

/// Blocks nested in `root` (itself included), in the original body.
fn subtree(orig: &HashMap<InstrSeqId, (InstrSeqType, Code)>, root: InstrSeqId) -> Vec<InstrSeqId> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(s) = stack.pop() {
        out.push(s);
        if let Some((_, code)) = orig.get(&s) {
            for (ins, _) in code {
                match ins {
                    Instr::Block(b) => stack.push(b.seq),
                    Instr::Loop(l) => stack.push(l.seq),
                    Instr::IfElse(e) => stack.extend([e.consequent, e.alternative]),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Helper locals of one function.
struct Helpers {
    /// The call index being saved or resumed.
    k: LocalId,
    /// Set while the rewind body skips to its call.
    rw: LocalId,
    /// Frame pointer in `wmig:stack`.
    p: LocalId,
}

fn if_then(func: &mut walrus::LocalFunction, then: Code) -> (Instr, InstrLocId) {
    let consequent = func.builder_mut().dangling_instr_seq(None).id();
    func.block_mut(consequent).instrs = then;
    let alternative = func.builder_mut().dangling_instr_seq(None).id();
    op(Instr::IfElse(ir::IfElse {
        consequent,
        alternative,
    }))
}

/// `if (state) { save the live locals; k = index; br save }` after a call
/// that can pause. The `then` arm is filled in by [`fill_site`] once
/// liveness is known; its block is recorded in `sites`.
fn unwind_check(
    func: &mut walrus::LocalFunction,
    ctx: &Ctx,
    index: u32,
    sites: &mut Vec<(InstrSeqId, u32)>,
) -> Code {
    let then = func.builder_mut().dangling_instr_seq(None).id();
    let alternative = func.builder_mut().dangling_instr_seq(None).id();
    sites.push((then, index));
    vec![
        gget(ctx.state),
        op(Instr::IfElse(ir::IfElse {
            consequent: then,
            alternative,
        })),
    ]
}

/// The unwind path of one call site: store the locals live after the call
/// (the rest of the frame is dead there: a rewind loads it but never reads
/// it), note the call index, and go to the shared tail.
fn fill_site(
    func: &mut walrus::LocalFunction,
    ctx: &Ctx,
    h: &Helpers,
    fr: &Frame,
    site: (InstrSeqId, u32),
    live: &Bits,
    save: InstrSeqId,
) {
    let mut c = vec![gget(ctx.data), load(ctx.stack, ValType::I32, 0), set(h.p)];
    for (slot, &(l, t, at)) in fr.slots.iter().enumerate() {
        if live.has(slot) {
            c.extend([get(h.p), get(l), store(ctx.stack, t, at)]);
        }
    }
    c.extend([
        i32c(as_i32(site.1)),
        set(h.k),
        op(Instr::Br(ir::Br { block: save })),
    ]);
    func.block_mut(site.0).instrs = c;
}

/// The shared end of every unwind path: write the call index, push the
/// frame, return zeros. (A frame past the end of `wmig:stack` traps on its
/// first store: the memory ends where the host puts the buffer's end.)
fn save_code(ctx: &Ctx, h: &Helpers, fr: &Frame, results: &[ValType]) -> Result<Code, UnwindError> {
    let mut c = vec![
        get(h.p),
        get(h.k),
        store(ctx.stack, ValType::I32, fr.index_at),
        gget(ctx.data),
        get(h.p),
        i32c(as_i32(fr.size)),
        bin(BinaryOp::I32Add),
        store(ctx.stack, ValType::I32, 0),
    ];
    for &t in results {
        c.push(zero(t)?);
    }
    Ok(c)
}

/// A set of frame slots.
#[derive(Clone, PartialEq, Eq)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn union(&mut self, o: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= *b;
        }
    }
}

/// Backward liveness of frame slots over one function's structured code,
/// recording the set live after each unwind check (`sites`: the check's
/// `then` block and its call index).
struct Liveness<'a> {
    func: &'a walrus::LocalFunction,
    slot_of: &'a HashMap<LocalId, usize>,
    sites: &'a HashMap<InstrSeqId, u32>,
    empty: Bits,
    labels: Vec<(InstrSeqId, Bits)>,
    out: HashMap<u32, Bits>,
}

impl Liveness<'_> {
    fn label(&self, b: InstrSeqId) -> Bits {
        self.labels
            .iter()
            .rev()
            .find(|(id, _)| *id == b)
            .map_or_else(|| self.empty.clone(), |(_, l)| l.clone())
    }

    fn seq(&mut self, seq: InstrSeqId, mut live: Bits) -> Bits {
        let func = self.func;
        for (ins, _) in func.block(seq).instrs.iter().rev() {
            match ins {
                Instr::LocalGet(g) => {
                    if let Some(&s) = self.slot_of.get(&g.local) {
                        live.insert(s);
                    }
                }
                Instr::LocalSet(x) => {
                    if let Some(&s) = self.slot_of.get(&x.local) {
                        live.remove(s);
                    }
                }
                Instr::LocalTee(x) => {
                    if let Some(&s) = self.slot_of.get(&x.local) {
                        live.remove(s);
                    }
                }
                Instr::Br(b) => live = self.label(b.block),
                Instr::BrIf(b) => live.union(&self.label(b.block)),
                Instr::BrTable(t) => {
                    let mut l = self.label(t.default);
                    for b in t.blocks.iter() {
                        l.union(&self.label(*b));
                    }
                    live = l;
                }
                Instr::Return(_) | Instr::Unreachable(_) => live = self.empty.clone(),
                Instr::Block(b) => {
                    self.labels.push((b.seq, live.clone()));
                    live = self.seq(b.seq, live);
                    self.labels.pop();
                }
                Instr::Loop(l) => {
                    // Iterate to the fixed point: what is live at the header
                    // is live at every branch back to it.
                    let mut head = self.empty.clone();
                    loop {
                        self.labels.push((l.seq, head.clone()));
                        let next = self.seq(l.seq, live.clone());
                        self.labels.pop();
                        if next == head {
                            break;
                        }
                        head.union(&next);
                    }
                    live = head;
                }
                Instr::IfElse(e) => {
                    if let Some(&index) = self.sites.get(&e.consequent) {
                        self.out.insert(index, live.clone());
                    }
                    self.labels.push((e.consequent, live.clone()));
                    self.labels.push((e.alternative, live.clone()));
                    let mut a = self.seq(e.consequent, live.clone());
                    let b = self.seq(e.alternative, live);
                    self.labels.pop();
                    self.labels.pop();
                    a.union(&b);
                    live = a;
                }
                _ => {}
            }
        }
        live
    }
}

/// Pop this frame back into the locals and start skipping to its call.
fn restore_code(ctx: &Ctx, h: &Helpers, fr: &Frame) -> Code {
    let mut c = vec![
        gget(ctx.data),
        load(ctx.stack, ValType::I32, 0),
        i32c(as_i32(fr.size)),
        bin(BinaryOp::I32Sub),
        set(h.p),
        gget(ctx.data),
        get(h.p),
        store(ctx.stack, ValType::I32, 0),
    ];
    for &(l, t, at) in &fr.slots {
        c.extend([get(h.p), load(ctx.stack, t, at), set(l)]);
    }
    c.extend([
        get(h.p),
        load(ctx.stack, ValType::I32, fr.index_at),
        set(h.k),
        i32c(1),
        set(h.rw),
    ]);
    c
}

/// Give `f` its fast body (in place) and its rewind body (`rid`); returns
/// the number of calls that can pause in it.
fn rewrite_function(
    module: &mut walrus::Module,
    ctx: &Ctx,
    f: FunctionId,
    rid: FunctionId,
    dispatch: bool,
) -> Result<usize, UnwindError> {
    let (entry, args, orig, order) = {
        let FunctionKind::Local(func) = &module.funcs.get(f).kind else {
            return Err(UnwindError::Failed(
                "a pausable function is an import".into(),
            ));
        };
        let order = all_seqs(func);
        let orig: HashMap<InstrSeqId, (InstrSeqType, Code)> = order
            .iter()
            .map(|&s| (s, (func.block(s).ty, func.block(s).instrs.clone())))
            .collect();
        (func.entry_block(), func.args.clone(), orig, order)
    };
    let results = ctx.sigs.get(&f).map(|s| s.1.clone()).unwrap_or_default();
    let fty = module.funcs.get(f).ty();
    let n = number(ctx, &orig, entry);

    let mut pool = Pool {
        locals: &mut module.locals,
        map: HashMap::new(),
    };
    let h = Helpers {
        k: pool.locals.add(ValType::I32),
        rw: pool.locals.add(ValType::I32),
        p: pool.locals.add(ValType::I32),
    };
    let mut all: Vec<(InstrSeqId, Vec<Piece>)> = Vec::with_capacity(order.len());
    for &seq in &order {
        all.push((seq, pieces(ctx, &n, &mut pool, &orig, seq)?));
    }

    let mut used: HashSet<LocalId> = args.iter().copied().collect();
    for (_, ps) in &all {
        for p in ps {
            piece_locals(p, &mut used);
        }
    }
    for helper in [h.k, h.rw, h.p] {
        used.remove(&helper);
    }
    let mut used: Vec<LocalId> = used.into_iter().collect();
    used.sort_by_key(|l| l.index());
    let fr = frame(module, &used)?;
    // The entry's own type is a function-entry type walrus never emits as a
    // block type; the blocks that take over the body need a real one.
    let entry_ty = InstrSeqType::new(&mut module.types, &[], &results);

    let slot_of: HashMap<LocalId, usize> =
        fr.slots.iter().enumerate().map(|(i, s)| (s.0, i)).collect();

    // The fast body, in place.
    let live = {
        let mut sites = Vec::new();
        let func = local_mut(module, f)?;
        let body = func.builder_mut().dangling_instr_seq(entry_ty).id();
        let save = func.builder_mut().dangling_instr_seq(None).id();
        let map = |s: InstrSeqId| if s == entry { body } else { s };
        for (seq, ps) in &all {
            let code = fast_code(func, ctx, ps, &map, &map, &mut sites);
            func.block_mut(map(*seq)).instrs = code;
        }
        let mut head = Vec::new();
        if dispatch {
            // Reached from outside (an export or a table): a rewind enters
            // here and continues in the rewind body.
            let mut then: Code = args.iter().map(|a| get(*a)).collect();
            let slot = ctx
                .slot_of
                .get(&f)
                .copied()
                .ok_or_else(|| UnwindError::Failed("a rewind body without a slot".into()))?;
            then.push(i32c(slot));
            then.push(op(Instr::CallIndirect(ir::CallIndirect {
                ty: fty,
                table: ctx.rw_table,
            })));
            then.push(op(Instr::Return(ir::Return {})));
            head.extend([gget(ctx.state), i32c(2), bin(BinaryOp::I32Eq)]);
            head.push(if_then(func, then));
        }
        func.block_mut(save).instrs = vec![
            op(Instr::Block(ir::Block { seq: body })),
            op(Instr::Return(ir::Return {})),
        ];
        head.push(op(Instr::Block(ir::Block { seq: save })));
        head.extend(save_code(ctx, &h, &fr, &results)?);
        func.block_mut(entry).instrs = head;

        let by_block: HashMap<InstrSeqId, u32> = sites.iter().copied().collect();
        let mut lv = Liveness {
            func,
            slot_of: &slot_of,
            sites: &by_block,
            empty: Bits::new(fr.slots.len()),
            labels: vec![(body, Bits::new(fr.slots.len()))],
            out: HashMap::new(),
        };
        lv.seq(body, Bits::new(fr.slots.len()));
        let mut live = lv.out;
        // A resume re-runs the call's `pre`: an indirect call needs its
        // table index again (arguments are ignored by a rewinding callee,
        // but saving them is cheaper than telling them apart).
        for (_, ps) in &all {
            for p in ps {
                if let Piece::Call { pre, index, .. } = p {
                    if let Some(bits) = live.get_mut(index) {
                        let mut reads = HashSet::new();
                        collect_locals(pre, &mut reads);
                        for l in reads {
                            if let Some(&slot) = slot_of.get(&l) {
                                bits.insert(slot);
                            }
                        }
                    }
                }
            }
        }
        for site in sites {
            let l = live
                .get(&site.1)
                .ok_or_else(|| UnwindError::Failed("a call site outside the body".into()))?;
            fill_site(func, ctx, &h, &fr, site, l, save);
        }
        live
    };

    // Loops that contain calls that can pause get a fast copy in the rewind
    // body: the guarded copy runs only until its first back edge, which
    // leaves for the fast copy, so a resumed frame does not run guarded
    // code for the rest of its life (an interpreter's dispatch loop never
    // returns). Types of the two wrapping blocks: params → results, params
    // → params.
    let mut loop_tys: HashMap<InstrSeqId, (InstrSeqType, InstrSeqType)> = HashMap::new();
    for (seq, ps) in &all {
        let _ = seq;
        for p in ps {
            if let Piece::Structure {
                ins: (Instr::Loop(l), _),
                ..
            } = p
            {
                let (params, res) = ctx.block_sig(orig[&l.seq].0);
                let done = InstrSeqType::new(&mut module.types, &params, &res);
                let to_fast = InstrSeqType::new(&mut module.types, &params, &params);
                loop_tys.insert(l.seq, (done, to_fast));
            }
        }
    }
    let pieces_of: HashMap<InstrSeqId, &Vec<Piece>> = all.iter().map(|(s, p)| (*s, p)).collect();

    // The rewind body: the same call sites, so the same live sets.
    {
        let mut sites = Vec::new();
        let func = local_mut(module, rid)?;
        let rentry = func.entry_block();
        let mut map_tbl: HashMap<InstrSeqId, InstrSeqId> = HashMap::new();
        for &seq in &order {
            let ty = if seq == entry { entry_ty } else { orig[&seq].0 };
            map_tbl.insert(seq, func.builder_mut().dangling_instr_seq(ty).id());
        }
        let save = func.builder_mut().dangling_instr_seq(None).id();
        let map = |s: InstrSeqId| map_tbl.get(&s).copied().unwrap_or(s);
        let mut wrappers: HashMap<InstrSeqId, (InstrSeqId, InstrSeqId)> = HashMap::new();
        for (l, (done_ty, to_fast_ty)) in &loop_tys {
            let done = func.builder_mut().dangling_instr_seq(*done_ty).id();
            let to_fast = func.builder_mut().dangling_instr_seq(*to_fast_ty).id();
            wrappers.insert(*l, (done, to_fast));
        }
        // In guarded code a branch back to such a loop's header goes to its
        // fast copy instead.
        let labels = |s: InstrSeqId| match wrappers.get(&s) {
            Some(&(_, to_fast)) => to_fast,
            None => map(s),
        };
        let mut wrapped: Vec<(InstrSeqId, InstrSeqId, InstrSeqId)> = Vec::new();
        for (seq, ps) in &all {
            let last = ps.len().saturating_sub(1);
            let mut code = Vec::new();
            for (pi, p) in ps.iter().enumerate() {
                match p {
                    Piece::Plain(c) => code.extend(remap2(c, &labels, &map)),
                    Piece::Chunk(c) if pi == last || c.is_empty() => {
                        code.extend(remap2(c, &labels, &map))
                    }
                    Piece::Chunk(c) => {
                        code.extend([
                            get(h.rw),
                            op(Instr::Unop(ir::Unop {
                                op: ir::UnaryOp::I32Eqz,
                            })),
                        ]);
                        let then = remap2(c, &labels, &map);
                        code.push(if_then(func, then));
                    }
                    Piece::Call {
                        pre,
                        call,
                        index,
                        callee,
                        post,
                    } => {
                        let mut body: Code = pre.clone();
                        match callee.and_then(|g| ctx.rewind_of.get(&g).map(|r| (g, *r))) {
                            Some((g, rg)) => {
                                // While rewinding, go straight to the callee's rewind body.
                                let ty = ctx.call_ty.get(&g).copied().ok_or_else(|| {
                                    UnwindError::Failed("callee type missing".into())
                                })?;
                                let t = func.builder_mut().dangling_instr_seq(ty).id();
                                func.block_mut(t).instrs =
                                    vec![op(Instr::Call(ir::Call { func: rg }))];
                                let e = func.builder_mut().dangling_instr_seq(ty).id();
                                func.block_mut(e).instrs = vec![call.clone()];
                                body.push(get(h.rw));
                                body.push(op(Instr::IfElse(ir::IfElse {
                                    consequent: t,
                                    alternative: e,
                                })));
                            }
                            None => body.push(call.clone()),
                        }
                        body.extend(unwind_check(func, ctx, *index, &mut sites));
                        body.extend([i32c(0), set(h.rw)]);
                        body.extend(post.iter().cloned());
                        code.extend([
                            get(h.rw),
                            op(Instr::Unop(ir::Unop {
                                op: ir::UnaryOp::I32Eqz,
                            })),
                            get(h.k),
                            i32c(as_i32(*index)),
                            bin(BinaryOp::I32Eq),
                            bin(BinaryOp::I32Or),
                        ]);
                        code.push(if_then(func, body));
                    }
                    Piece::Structure {
                        pre,
                        cond,
                        ins,
                        range,
                        post,
                    } => {
                        let mut body: Code = pre.clone();
                        if let Some((c, then_range)) = cond {
                            // While rewinding, take the arm holding the call.
                            match then_range {
                                Some(r) => body.extend(in_range(h.k, *r)),
                                None => body.push(i32c(0)),
                            }
                            body.extend([
                                get(*c),
                                get(h.rw),
                                op(Instr::Select(ir::Select { ty: None })),
                            ]);
                        }
                        match (&ins.0, ins.0.clone()) {
                            (Instr::Loop(l), _) if wrappers.contains_key(&l.seq) => {
                                // block $done { block $to_fast { guarded loop;
                                // br $done } fast loop }
                                let (done, to_fast) = wrappers[&l.seq];
                                wrapped.push((l.seq, done, to_fast));
                                body.push(op(Instr::Block(ir::Block { seq: done })));
                            }
                            _ => body.extend(remap(&vec![ins.clone()], &map)),
                        }
                        body.extend(post.iter().cloned());
                        code.extend([
                            get(h.rw),
                            op(Instr::Unop(ir::Unop {
                                op: ir::UnaryOp::I32Eqz,
                            })),
                        ]);
                        code.extend(in_range(h.k, *range));
                        code.push(bin(BinaryOp::I32Or));
                        code.push(if_then(func, body));
                    }
                }
            }
            func.block_mut(map(*seq)).instrs = code;
        }
        // The fast copies: every block inside the loop copied afresh, the
        // fast way; branches out of the loop land where guarded code would.
        for (l, done, to_fast) in wrapped {
            let inner = subtree(&orig, l);
            let mut copy: HashMap<InstrSeqId, InstrSeqId> = HashMap::new();
            for s in &inner {
                copy.insert(*s, func.builder_mut().dangling_instr_seq(orig[s].0).id());
            }
            let blocks = |s: InstrSeqId| copy.get(&s).copied().unwrap_or(s);
            let copy_labels = |s: InstrSeqId| copy.get(&s).copied().unwrap_or_else(|| labels(s));
            for s in &inner {
                let ps = pieces_of
                    .get(s)
                    .ok_or_else(|| UnwindError::Failed("a block without pieces".into()))?;
                let code = fast_code(func, ctx, ps, &copy_labels, &blocks, &mut sites);
                func.block_mut(copy[s]).instrs = code;
            }
            func.block_mut(to_fast).instrs = vec![
                op(Instr::Loop(ir::Loop { seq: map(l) })),
                op(Instr::Br(ir::Br { block: done })),
            ];
            func.block_mut(done).instrs = vec![
                op(Instr::Block(ir::Block { seq: to_fast })),
                op(Instr::Loop(ir::Loop { seq: copy[&l] })),
            ];
        }
        let mut head = restore_code(ctx, &h, &fr);
        func.block_mut(save).instrs = vec![
            op(Instr::Block(ir::Block { seq: map(entry) })),
            op(Instr::Return(ir::Return {})),
        ];
        head.push(op(Instr::Block(ir::Block { seq: save })));
        head.extend(save_code(ctx, &h, &fr, &results)?);
        func.block_mut(rentry).instrs = head;
        for site in sites {
            let l = live
                .get(&site.1)
                .ok_or_else(|| UnwindError::Failed("a call site outside the body".into()))?;
            fill_site(func, ctx, &h, &fr, site, l, save);
        }
    }
    Ok(n.calls.len())
}

/// Asyncify's control exports, so that the host drives both rewriters alike.
fn add_control_exports(module: &mut walrus::Module, state: GlobalId, data: GlobalId) {
    for (name, new_state, takes_ptr) in [
        ("asyncify_start_unwind", 1, true),
        ("asyncify_stop_unwind", 0, false),
        ("asyncify_start_rewind", 2, true),
        ("asyncify_stop_rewind", 0, false),
    ] {
        let params: &[ValType] = if takes_ptr { &[ValType::I32] } else { &[] };
        let ptr = module.locals.add(ValType::I32);
        let mut b = FunctionBuilder::new(&mut module.types, params, &[]);
        b.func_body().i32_const(new_state).global_set(state);
        if takes_ptr {
            b.func_body().local_get(ptr).global_set(data);
        }
        b.name(name.to_string());
        let args = if takes_ptr { vec![ptr] } else { vec![] };
        let id = b.finish(args, &mut module.funcs);
        module.exports.add(name, id);
    }
    let mut b = FunctionBuilder::new(&mut module.types, &[], &[ValType::I32]);
    b.func_body().global_get(state);
    b.name("asyncify_get_state".to_string());
    let id = b.finish(vec![], &mut module.funcs);
    module.exports.add("asyncify_get_state", id);
}
