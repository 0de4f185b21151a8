//! Everything a worker tells the coordinator about its tasks goes through
//! one ordered queue, so a task's output always arrives before its end.
//!
//! The reporter sends each item until the coordinator accepts it, waiting
//! out disconnects (the main loop reconnects and publishes the new client).
//! Output is coalesced: consecutive chunks of the same stream become one
//! request. A refusal that says the task is no longer ours drops the task.
//! A failure of the coordinator's own (its disk, its log) is retried like a
//! disconnect: the report was not applied, and dropping it would lose it.
//!
//! The reporter also keeps the last [`RETAIN`] bytes it delivered of each
//! stream. A coordinator that finds a hole before a chunk (it lost a stored
//! tail) answers [`ControlResponse::Resend`], and the hole is filled from
//! that copy instead of being dropped with everything after it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use tokio::sync::{mpsc, watch};
use wmig_client::{ControlClient, ControlError};

use wmig_proto::wire::control::{ControlRequest, ControlResponse, OutputChunk, Stream};
use wmig_proto::wire::ErrorCode;
use wmig_proto::{NodeId, TaskId};

/// One report, in the order the task produced it.
pub type Report = ControlRequest;

/// Largest output request; larger writes are split by the reader anyway.
const MAX_OUTPUT: usize = 256 * 1024;

/// Delivered output kept per task stream to fill a hole the coordinator
/// reports (see the module docs).
pub const RETAIN: usize = 1 << 20;

/// The tail of one stream as delivered: bytes `[start, start + bytes.len())`.
#[derive(Debug, Default)]
struct Tail {
    start: u64,
    bytes: Vec<u8>,
}

impl Tail {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// `data` at `offset` was accepted. A restored task replays from its
    /// checkpoint, so a chunk may start before the end: it replaces what
    /// follows its offset.
    fn record(&mut self, offset: u64, data: &[u8]) {
        if offset < self.start || offset > self.end() {
            self.start = offset;
            self.bytes.clear();
        } else {
            self.bytes
                .truncate(usize::try_from(offset - self.start).unwrap_or(usize::MAX));
        }
        self.bytes.extend_from_slice(data);
        // Trim in steps of RETAIN so the move happens once per RETAIN bytes.
        if self.bytes.len() >= 2 * RETAIN {
            let cut = self.bytes.len() - RETAIN;
            self.bytes.drain(..cut);
            self.start += cut as u64;
        }
    }

    /// `chunk` preceded by the kept bytes from `from` up to its offset, if
    /// they are all here.
    fn fill(&self, from: u64, chunk: &OutputChunk) -> Option<OutputChunk> {
        if from < self.start || from > chunk.offset || chunk.offset > self.end() {
            return None;
        }
        let lo = usize::try_from(from - self.start).ok()?;
        let hi = usize::try_from(chunk.offset - self.start).ok()?;
        let mut bytes = self.bytes.get(lo..hi)?.to_vec();
        bytes.extend_from_slice(&chunk.bytes);
        Some(OutputChunk {
            task: chunk.task,
            stream: chunk.stream,
            offset: from,
            bytes,
        })
    }
}

#[derive(Debug, Default)]
struct Delivered(HashMap<(TaskId, Stream), Tail>);

impl Delivered {
    fn forget(&mut self, task: TaskId) {
        self.0.retain(|(t, _), _| *t != task);
    }
}

pub(crate) type ClientSlot = watch::Receiver<Option<Arc<ControlClient>>>;

/// Checkpoints stored in the registry whose report the coordinator has not
/// accepted yet. Each holds its task's `uploads_pending`, so the task takes
/// no new checkpoint until the coordinator knows this one: the registry
/// keeps only each epoch's newest few, and a worker cut off from the
/// coordinator that kept checkpointing would push out the one the
/// coordinator resumes the task from when it recovers it elsewhere.
#[derive(Debug, Default)]
pub struct Unreported(std::sync::Mutex<HashMap<(TaskId, u64), Arc<AtomicU32>>>);

impl Unreported {
    pub fn hold(&self, task: TaskId, seq: u64, pending: Arc<AtomicU32>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((task, seq), pending);
    }

    /// The report left the queue (accepted, or refused for good).
    fn release(&self, task: TaskId, seq: u64) {
        let held = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(task, seq));
        if let Some(pending) = held {
            release(&pending);
        }
    }
}

/// One upload of a task's checkpoint is over: it may checkpoint again.
pub fn release(pending: &AtomicU32) {
    let _ = pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        Some(n.saturating_sub(1))
    });
}

/// Output bytes queued for the coordinator and not yet accepted, across
/// the worker's tasks. While the coordinator is away this is what grows;
/// past [`Backlog::MAX`] tasks wait at their yield points (see
/// `exec::throttle`) instead of filling the worker's memory.
#[derive(Debug, Default)]
pub struct Backlog(std::sync::atomic::AtomicU64);

impl Backlog {
    /// 64 MiB of output in flight at most; tasks go on below half of it.
    pub const MAX: u64 = 64 << 20;

    pub fn add(&self, n: usize) {
        self.0
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |b| Some(b.saturating_sub(n as u64)),
        );
    }

    pub fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) async fn reporter(
    mut rx: mpsc::UnboundedReceiver<Report>,
    mut client: ClientSlot,
    node: NodeId,
    fenced: mpsc::UnboundedSender<(TaskId, u64)>,
    backlog: Arc<Backlog>,
    unreported: Arc<Unreported>,
) {
    let mut pending: Option<ControlRequest> = None;
    let mut delivered = Delivered::default();
    loop {
        let req = match pending.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        // Coalesce output that is already queued behind this one.
        let req = match req {
            ControlRequest::Output {
                node: n,
                epoch,
                mut chunk,
            } => {
                while chunk.bytes.len() < MAX_OUTPUT {
                    match rx.try_recv() {
                        Ok(ControlRequest::Output {
                            epoch: e2,
                            chunk: c2,
                            ..
                        }) if e2 == epoch
                            && c2.task == chunk.task
                            && c2.stream == chunk.stream
                            && c2.offset == chunk.offset + chunk.bytes.len() as u64 =>
                        {
                            chunk.bytes.extend_from_slice(&c2.bytes);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                ControlRequest::Output {
                    node: n,
                    epoch,
                    chunk,
                }
            }
            other => other,
        };
        let queued = match &req {
            ControlRequest::Output { chunk, .. } => chunk.bytes.len(),
            _ => 0,
        };
        let checkpoint = match &req {
            ControlRequest::Checkpointed { task, seq, .. } => Some((*task, *seq)),
            _ => None,
        };
        deliver_filling(req, &mut client, &node, &fenced, &mut delivered).await;
        // Accepted or refused for good: either way it left the queue.
        backlog.sub(queued);
        if let Some((task, seq)) = checkpoint {
            unreported.release(task, seq);
        }
    }
}

/// [`deliver`], filling holes the coordinator reports from what was
/// delivered before, and keeping what it accepts.
async fn deliver_filling(
    mut req: ControlRequest,
    client: &mut ClientSlot,
    node: &NodeId,
    fenced: &mpsc::UnboundedSender<(TaskId, u64)>,
    delivered: &mut Delivered,
) {
    // A coordinator that keeps losing bytes while we fill is not helped by
    // more attempts.
    for _ in 0..4 {
        match deliver(&req, client, node, fenced).await {
            Some(ControlResponse::Resend { from }) => {
                let ControlRequest::Output { chunk, .. } = &mut req else {
                    tracing::warn!(%node, "coordinator asked to resend a report that is not output");
                    return;
                };
                let tail = delivered.0.get(&(chunk.task, chunk.stream));
                match tail.and_then(|t| t.fill(from, chunk)) {
                    Some(filled) => {
                        tracing::warn!(%node, task = %chunk.task, stream = chunk.stream.name(), from, to = chunk.offset, "the coordinator lost stored output; sending it again");
                        *chunk = filled;
                    }
                    None => {
                        tracing::error!(%node, task = %chunk.task, stream = chunk.stream.name(), from, to = chunk.offset, kept_from = tail.map(|t| t.start), "output lost: the coordinator no longer has these bytes and this worker keeps only the last {} KiB it delivered", RETAIN >> 10);
                        return;
                    }
                }
            }
            Some(_) => {
                match &req {
                    ControlRequest::Output { chunk, .. } => delivered
                        .0
                        .entry((chunk.task, chunk.stream))
                        .or_default()
                        .record(chunk.offset, &chunk.bytes),
                    ControlRequest::Finished { task, .. } => delivered.forget(*task),
                    _ => {}
                }
                return;
            }
            None => {
                if let Some((task, _)) = task_epoch(&req) {
                    delivered.forget(task);
                }
                return;
            }
        }
    }
}

fn task_epoch(req: &ControlRequest) -> Option<(TaskId, u64)> {
    match req {
        // A refused `LiveReady` (the migration was abandoned meanwhile):
        // the target forgets what arrived.
        ControlRequest::Started { task, epoch, .. }
        | ControlRequest::LiveReady { task, epoch, .. }
        | ControlRequest::Checkpointed { task, epoch, .. }
        | ControlRequest::Finished { task, epoch, .. } => Some((*task, *epoch)),
        ControlRequest::Output {
            epoch,
            chunk: OutputChunk { task, .. },
            ..
        } => Some((*task, *epoch)),
        _ => None,
    }
}

/// Send until accepted (the answer) or refused for good (`None`).
async fn deliver(
    req: &ControlRequest,
    client: &mut ClientSlot,
    node: &NodeId,
    fenced: &mpsc::UnboundedSender<(TaskId, u64)>,
) -> Option<ControlResponse> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let current = client.borrow_and_update().clone();
        let Some(c) = current else {
            if client.changed().await.is_err() {
                return None;
            }
            continue;
        };
        match c.ask(req).await {
            Ok(answer) => return Some(answer),
            Err(ControlError::Remote(e))
                if matches!(
                    e.code,
                    ErrorCode::Internal | ErrorCode::Timeout | ErrorCode::NotLeader
                ) =>
            {
                // Not applied (a failed append leaves nothing half done):
                // the coordinator's disk or log may recover, or (replicated)
                // the next leader takes it once the session reconnects.
                tracing::warn!(%node, reason = %e, retry_in = ?backoff, "the coordinator could not take a report; retrying");
                backoff = pause(client, backoff, Duration::from_secs(5)).await;
            }
            Err(ControlError::Remote(e)) => {
                match e.code {
                    ErrorCode::Conflict | ErrorCode::NotFound => {
                        if let Some(te) = task_epoch(req) {
                            tracing::warn!(%node, task = %te.0, reason = %e, "coordinator refused a report; dropping the task");
                            let _ = fenced.send(te);
                        }
                    }
                    _ => tracing::warn!(%node, reason = %e, "coordinator refused a report"),
                }
                return None;
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "report not delivered; retrying");
                backoff = pause(client, backoff, Duration::from_secs(1)).await;
            }
        }
    }
}

/// Wait `backoff` before the next try, or less if a new connection comes;
/// returns the next backoff (doubled, at most `cap`).
async fn pause(client: &mut ClientSlot, backoff: Duration, cap: Duration) -> Duration {
    tokio::select! {
        _ = tokio::time::sleep(backoff) => {}
        _ = client.changed() => {}
    }
    (backoff * 2).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, bytes: &[u8]) -> OutputChunk {
        OutputChunk {
            task: TaskId(1),
            stream: Stream::Stdout,
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_hole_is_filled_from_what_was_delivered() {
        let mut t = Tail::default();
        t.record(0, b"hello ");
        t.record(6, b"world\n");
        let filled = t.fill(3, &chunk(12, b"more")).expect("kept");
        assert_eq!(
            (filled.offset, filled.bytes.as_slice()),
            (3, &b"lo world\nmore"[..])
        );
        // Nothing before what is kept, nothing past it.
        assert!(t.fill(13, &chunk(12, b"x")).is_none());
        assert!(t.fill(3, &chunk(14, b"x")).is_none());
    }

    #[test]
    fn a_replay_from_a_checkpoint_replaces_the_tail() {
        let mut t = Tail::default();
        t.record(0, b"abcdef");
        t.record(2, b"XY");
        assert_eq!((t.start, t.bytes.as_slice()), (0, &b"abXY"[..]));
        // Discontinuous: start over.
        t.record(100, b"z");
        assert_eq!((t.start, t.end()), (100, 101));
    }

    #[test]
    fn only_the_last_mebibyte_or_so_is_kept() {
        let mut t = Tail::default();
        let block = vec![7u8; 64 << 10];
        for i in 0..100u64 {
            t.record(i * block.len() as u64, &block);
            assert!(t.bytes.len() < 2 * RETAIN);
            assert_eq!(t.end(), (i + 1) * block.len() as u64);
        }
        assert!(t.bytes.len() >= RETAIN);
        assert!(t.fill(0, &chunk(t.end(), b"")).is_none());
        assert!(t
            .fill(t.end() - RETAIN as u64, &chunk(t.end(), b""))
            .is_some());
    }
}
