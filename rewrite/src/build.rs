//! Building walrus instructions one at a time, for the passes that insert
//! code (the yield checks and the unwind transform).

use walrus::ir::{self, BinaryOp, Instr, InstrLocId, Value};
use walrus::{GlobalId, LocalId};

/// An inserted instruction (no source location).
pub(crate) fn op(i: Instr) -> (Instr, InstrLocId) {
    (i, InstrLocId::default())
}
pub(crate) fn get(local: LocalId) -> (Instr, InstrLocId) {
    op(Instr::LocalGet(ir::LocalGet { local }))
}
pub(crate) fn set(local: LocalId) -> (Instr, InstrLocId) {
    op(Instr::LocalSet(ir::LocalSet { local }))
}
pub(crate) fn i32c(v: i32) -> (Instr, InstrLocId) {
    op(Instr::Const(ir::Const {
        value: Value::I32(v),
    }))
}
pub(crate) fn bin(o: BinaryOp) -> (Instr, InstrLocId) {
    op(Instr::Binop(ir::Binop { op: o }))
}
pub(crate) fn gget(global: GlobalId) -> (Instr, InstrLocId) {
    op(Instr::GlobalGet(ir::GlobalGet { global }))
}
