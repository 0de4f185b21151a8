//! The live-migration protocol: a source worker streams a running task's
//! memory straight to the target worker, page by page, while the task keeps
//! running; the target builds the instance as the pages arrive.
//!
//! ```text
//! source ──Offer──────────────▶ target   module ready? instance built
//! source ◀─Accepted─────────── target
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
pub const LIVE_ALPN: &[u8] = b"wmig-live/1";

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
    /// Cut into pieces of at most `max_pages` pages (zero runs count too),
    /// each with the byte range of its payload in this delta's payload.
    pub fn split(&self, max_pages: u32) -> Vec<(PageDelta, std::ops::Range<usize>)> {
        let max_pages = max_pages.max(1);
        let mut pieces = Vec::new();
        let mut cur = PageDelta {
            memory_len: self.memory_len,
            runs: Vec::new(),
        };
        let (mut pages, mut start, mut at) = (0u32, 0usize, 0usize);
        for r in &self.runs {
            let (mut first, mut left) = (r.first, r.count);
            while left > 0 {
                let take = left.min(max_pages - pages);
                cur.runs.push(PageRun {
                    first,
                    count: take,
                    zero: r.zero,
                });
                if !r.zero {
                    at += take as usize * PAGE_SIZE;
                }
                pages += take;
                first += take;
                left -= take;
                if pages == max_pages {
                    pieces.push((std::mem::take(&mut cur.runs), start..at));
                    start = at;
                    pages = 0;
                }
            }
        }
        if !cur.runs.is_empty() {
            pieces.push((cur.runs, start..at));
        }
        pieces
            .into_iter()
            .map(|(runs, range)| {
                (
                    PageDelta {
                        memory_len: self.memory_len,
                        runs,
                    },
                    range,
                )
            })
            .collect()
    }

    /// Bytes of the non-zero runs, which follow the header on the stream.
    pub fn payload_len(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| !r.zero)
            .map(|r| u64::from(r.count) * PAGE_SIZE as u64)
            .sum()
    }

    /// Check the runs against the memory size and a byte budget before
    /// anything is read or written.
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
        for r in &self.runs {
            let end = u64::from(r.first) + u64::from(r.count);
            if r.count == 0 || end > pages {
                return Err(format!(
                    "page run {}+{} lies outside a memory of {pages} pages",
                    r.first, r.count
                ));
            }
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

    #[test]
    fn split_pieces_cover_the_delta_in_order() {
        let d = PageDelta {
            memory_len: 64 * PAGE_SIZE as u64,
            runs: vec![
                PageRun {
                    first: 0,
                    count: 5,
                    zero: false,
                },
                PageRun {
                    first: 5,
                    count: 3,
                    zero: true,
                },
                PageRun {
                    first: 10,
                    count: 4,
                    zero: false,
                },
            ],
        };
        let pieces = d.split(4);
        let pages: Vec<u32> = pieces
            .iter()
            .map(|(p, _)| p.runs.iter().map(|r| r.count).sum())
            .collect();
        assert_eq!(pages, [4, 4, 4]);
        let mut at = 0;
        for (p, range) in &pieces {
            assert_eq!(range.start, at);
            assert_eq!((range.end - range.start) as u64, p.payload_len());
            at = range.end;
        }
        assert_eq!(at as u64, d.payload_len());
        let runs: Vec<PageRun> = pieces.into_iter().flat_map(|(p, _)| p.runs).collect();
        assert_eq!(runs.iter().map(|r| r.count).sum::<u32>(), 12);
        assert_eq!(
            runs[0],
            PageRun {
                first: 0,
                count: 4,
                zero: false
            }
        );
        assert_eq!(
            runs[1],
            PageRun {
                first: 4,
                count: 1,
                zero: false
            }
        );
    }
}
