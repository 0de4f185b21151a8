//! Optional guest-side API for wmig tasks.
//!
//! **You do not need this crate to be migratable.** The wmig host rewrites any
//! ordinary `wasm32-wasip1` program: it inserts fuel-based yield points into
//! loops and function entries and applies Binaryen's Asyncify, so the program
//! can be paused, checkpointed and resumed on another node at almost any
//! point. A program that never links this crate behaves exactly the same.
//!
//! The SDK only lets a task *cooperate* with the host when it knows something
//! the instrumentation cannot:
//!
//! - [`progress`] reports how far the task is (`done` of `total` units, in
//!   whatever unit the task likes). The host records the latest value and
//!   shows it to operators; it never pauses here. Call it as often as is
//!   convenient — it is cheap, but not free, so once per batch of work rather
//!   than per element.
//! - [`checkpoint_now`] asks the host to take a checkpoint at this exact point,
//!   for example right after an expensive phase whose result you do not want to
//!   recompute after a crash. The host may pause the task here (to migrate it)
//!   and resume it later; from the task's point of view the call simply returns.
//! - [`yield_now`] is a voluntary yield point: a cheap place where the host may
//!   pause the task if it wants to (e.g. for a requested migration), without
//!   forcing a checkpoint. Useful inside a long-running loop that makes calls
//!   the instrumentation treats as opaque, or to make pause latency predictable.
//!
//! On wasm32 these functions call imports from the `wmig` module
//! (`progress(i64, i64)`, `checkpoint_now()`, `yield_now()`). On every other
//! target they are no-ops, so code using the SDK still compiles, runs and is
//! testable natively.
//!
//! A module that imports from `wmig` can only be instantiated by a host that
//! provides those imports (wmig does; a plain `wasmtime run` does not).

// No `std`: the SDK must not force an allocator or WASI imports on a guest.
#![cfg_attr(not(test), no_std)]

/// Reports that `done` of `total` units of work are complete.
///
/// The host stores the most recent report; it is purely informational and
/// never pauses the task. Values larger than `i64::MAX` are clamped.
pub fn progress(done: u64, total: u64) {
    imp::progress(clamp(done), clamp(total));
}

/// Asks the host to take a checkpoint here.
///
/// The host may pause the task inside this call and resume it later, possibly
/// on another machine; when the call returns the task continues as if nothing
/// happened. Checkpoints cost time proportional to the task's memory, so call
/// this at meaningful milestones, not in tight loops.
pub fn checkpoint_now() {
    imp::checkpoint_now();
}

/// A voluntary yield point: the host may pause the task here.
///
/// Cheap when the host has nothing to do (it returns at once). Unlike
/// [`checkpoint_now`] it does not request a checkpoint.
pub fn yield_now() {
    imp::yield_now();
}

/// The wire type is `i64`; saturate rather than wrap so a huge count never
/// reaches the host as a negative number.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    #[link(wasm_import_module = "wmig")]
    unsafe extern "C" {
        #[link_name = "progress"]
        fn wmig_progress(done: i64, total: i64);
        #[link_name = "checkpoint_now"]
        fn wmig_checkpoint_now();
        #[link_name = "yield_now"]
        fn wmig_yield_now();
    }

    pub(crate) fn progress(done: i64, total: i64) {
        // SAFETY: the import takes two plain integers and touches no guest memory.
        unsafe { wmig_progress(done, total) }
    }

    pub(crate) fn checkpoint_now() {
        // SAFETY: the import takes no arguments and touches no guest memory; a
        // pause inside it is transparent to the guest (Asyncify restores the stack).
        unsafe { wmig_checkpoint_now() }
    }

    pub(crate) fn yield_now() {
        // SAFETY: as for `checkpoint_now`.
        unsafe { wmig_yield_now() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub(crate) fn progress(_done: i64, _total: i64) {}
    pub(crate) fn checkpoint_now() {}
    pub(crate) fn yield_now() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_saturates() {
        assert_eq!(clamp(0), 0);
        assert_eq!(clamp(42), 42);
        assert_eq!(clamp(i64::MAX as u64), i64::MAX);
        assert_eq!(clamp(u64::MAX), i64::MAX);
    }

    #[test]
    fn host_calls_are_noops() {
        progress(1, 2);
        checkpoint_now();
        yield_now();
    }
}
