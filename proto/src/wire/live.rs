//! The live-migration protocol: a source worker streams a running task's
//! memory straight to the target worker, page by page, while the task keeps
//! running; the target builds the instance as the pages arrive.
//!
//! ```text
//! source ──Offer──────────────▶ target   module ready? instance built
//! source ◀─Accepted─────────── target
//! source ──Files (round k)────▶ target   changed files (tasks with trees)
//! source ──Pages (round k)────▶ target   written into the waiting instance
//! source ◀─Applied(k)───────── target   (then round k + 1 is taken)
//! source ──Final──────────────▶ target   last dirty pages, stack, globals, WASI
//! source ◀─Ready────────────── target   (the target tells the coordinator too)
//! ```
//!
//! One bidirectional stream per migration; each message is a frame
//! ([`crate::frame`]) whose page bytes follow it raw on the stream, so the
//! bulk of a transfer is never copied through the serializer.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Manifest;
use crate::{Hash, NodeId, TaskId};

/// ALPN of the worker-to-worker live-migration protocol.
pub const LIVE_ALPN: &[u8] = b"wmig-live/3";

/// Dirty tracking and transfer grain: the host's page, not wasm's 64 KiB.
pub const PAGE_SIZE: usize = 4096;

/// A run of consecutive pages of one memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Index of the first page (`byte offset / PAGE_SIZE`).
    pub first: u32,
    pub count: u32,
    /// All-zero pages: no bytes travel for them.
    pub zero: bool,
}

/// Pages of one memory that changed, and the size the memory has now. The
/// bytes of the non-zero runs, in run order, travel after the header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageDelta {
    pub memory_len: u64,
    pub runs: Vec<PageRun>,
}

impl PageDelta {
    /// Bytes of the non-zero runs, which follow the header on the stream.
    /// Saturates instead of overflowing on a delta that was not validated
    /// (after [`PageDelta::validate`] it is at most `memory_len`).
    pub fn payload_len(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| !r.zero)
            .map(|r| u64::from(r.count) * PAGE_SIZE as u64)
            .fold(0, u64::saturating_add)
    }

    /// Check the runs against the memory size and a byte budget before
    /// anything is read or written. Runs must be ascending and disjoint (as
    /// a source builds them from sorted page indices), so the payload a
    /// target sizes its buffer by never exceeds the memory: overlapping runs
    /// would let a few bytes of header announce terabytes.
    pub fn validate(&self, max_memory: u64) -> Result<(), String> {
        if self.memory_len > max_memory {
            return Err(format!(
                "memory of {} bytes exceeds the limit of {max_memory}",
                self.memory_len
            ));
        }
        if !self.memory_len.is_multiple_of(PAGE_SIZE as u64) {
            return Err(format!(
                "memory size {} is not a whole number of pages",
                self.memory_len
            ));
        }
        let pages = self.memory_len / PAGE_SIZE as u64;
        let mut next = 0u64;
        for r in &self.runs {
            let end = u64::from(r.first) + u64::from(r.count);
            if r.count == 0 || end > pages {
                return Err(format!(
                    "page run {}+{} lies outside a memory of {pages} pages",
                    r.first, r.count
                ));
            }
            if u64::from(r.first) < next {
                return Err(format!(
                    "page run {}+{} overlaps or precedes the run before it, which ends \
                     at page {next}; runs must be ascending and disjoint",
                    r.first, r.count
                ));
            }
            next = end;
        }
        Ok(())
    }
}

/// Source → target messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LiveMessage {
    /// The task that is coming, so the target can prepare its module and an
    /// instance. `epoch` is the source's; the target will own the task at a
    /// higher one once the coordinator has logged the move.
    Offer {
        task: TaskId,
        from: NodeId,
        epoch: u64,
        /// The task's module as submitted (its bundle hash).
        module: Hash,
        rewriter: u32,
        instrumented: Hash,
        /// The task's linear memory size now: the target grows and faults
        /// in that much before the pause.
        memory_len: u64,
    },
    /// Pages of linear memory written since the previous round (round 0:
    /// every page); raw bytes follow. `paused`: sent after the final pause
    /// (a large final round travels in pieces the target applies as they
    /// come, ahead of the `Final` message).
    Pages {
        round: u32,
        delta: PageDelta,
        paused: bool,
    },
    /// The task's file trees as they are now, and the chunks of them the
    /// target has not been sent yet (`chunks.len()` × 64 KiB of raw bytes
    /// follow, in this order). Sent before a round's or the final pages;
    /// the target brings its working copy up to these trees.
    Files {
        trees: Vec<crate::files::PreopenTree>,
        chunks: Vec<Hash>,
    },
    /// The task is paused for good on the source: its last pages (raw bytes
    /// of `memory`, then of `stack`, follow), and everything else the
    /// checkpoint holds (`manifest.memories` is empty).
    Final {
        manifest: Box<Manifest>,
        memory: PageDelta,
        stack: PageDelta,
        /// Unix µs at which the source paused.
        paused_at_us: u64,
        /// µs from the pause until this state was captured.
        captured_us: u64,
    },
}

/// Target → source answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LiveReply {
    /// The instance is built; send pages.
    Accepted,
    /// Round `n` is written into the instance. The source requests the
    /// next round only then, so rounds pace with the whole path (link and
    /// target), and the final message never queues behind earlier rounds.
    Applied(u32),
    /// The final state is applied; the target waits for the coordinator.
    Ready,
    /// The target cannot take the task (names why and what to do).
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(memory_len: u64, runs: &[(u32, u32, bool)]) -> PageDelta {
        PageDelta {
            memory_len,
            runs: runs
                .iter()
                .map(|&(first, count, zero)| PageRun { first, count, zero })
                .collect(),
        }
    }

    #[test]
    fn a_delta_is_checked_before_anything_is_read_or_written() {
        let page = PAGE_SIZE as u64;
        let ok = delta(8 * page, &[(0, 2, false), (2, 3, true), (7, 1, false)]);
        assert_eq!(ok.validate(1 << 20), Ok(()));
        assert_eq!(ok.payload_len(), 3 * page, "zero runs carry no bytes");
        let outside = delta(8 * page, &[(6, 3, false)]).validate(1 << 20);
        assert!(outside.is_err_and(|e| e.contains("outside a memory of 8 pages")));
        let empty = delta(8 * page, &[(1, 0, false)]).validate(1 << 20);
        assert!(empty.is_err());
        let ragged = delta(8 * page + 1, &[]).validate(1 << 20);
        assert!(ragged.is_err_and(|e| e.contains("not a whole number of pages")));
        let big = delta(1 << 30, &[]).validate(1 << 20);
        assert!(big.is_err_and(|e| e.contains("exceeds the limit")));
        let overflow = delta(8 * page, &[(u32::MAX, u32::MAX, false)]).validate(1 << 20);
        assert!(overflow.is_err(), "no arithmetic overflow on hostile runs");
    }

    /// Fuzz finding: runs that repeat or overlap passed `validate`, so a
    /// delta of a 4 GiB memory could announce `runs × 4 GiB` of payload,
    /// and the live target sizes its round buffer by that before reading.
    #[test]
    fn overlapping_or_descending_runs_are_refused() {
        let page = PAGE_SIZE as u64;
        let found = delta(1 << 32, &[(0, 14, false), (0, 1, false)]).validate(1 << 32);
        assert!(found.is_err_and(|e| e.contains("overlaps or precedes")));
        let repeated = vec![(0, 1 << 20, false); 1000];
        let huge = delta(1 << 32, &repeated);
        assert!(huge.validate(1 << 32).is_err());
        let backwards = delta(8 * page, &[(4, 2, false), (1, 1, true)]).validate(1 << 20);
        assert!(backwards.is_err());
        let overlap = delta(8 * page, &[(0, 3, true), (2, 2, false)]).validate(1 << 20);
        assert!(overlap.is_err());
        // Adjacent runs (a zero run next to a data run) are what sources send.
        let adjacent = delta(8 * page, &[(0, 3, true), (3, 2, false), (7, 1, true)]);
        assert_eq!(adjacent.validate(1 << 20), Ok(()));
        assert_eq!(adjacent.payload_len(), 2 * page);
    }

    /// `payload_len` of a delta nobody validated (2^21 runs of `u32::MAX`
    /// pages each, ~15 MiB encoded, fits one frame) must not overflow.
    #[test]
    fn payload_len_of_an_unvalidated_delta_saturates() {
        let d = PageDelta {
            memory_len: 0,
            runs: vec![
                PageRun {
                    first: 0,
                    count: u32::MAX,
                    zero: false
                };
                1 << 21
            ],
        };
        assert_eq!(d.payload_len(), u64::MAX);
        assert!(d.validate(u64::MAX).is_err());
    }
}
