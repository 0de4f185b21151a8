//! Integration tests for `wmig-wasi`: real wasmtime, real files in
//! tempdirs, small WAT guests. One binary, one module per feature.

#![allow(clippy::unwrap_used)]

mod basic;
mod fs;
mod harness;
mod reference;
mod sandbox;
mod snapshot;
