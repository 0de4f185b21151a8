//! Everything a worker tells the coordinator about its tasks goes through
//! one ordered queue, so a task's output always arrives before its end.
//!
//! The reporter sends each item until the coordinator accepts it, waiting
//! out disconnects (the main loop reconnects and publishes the new client).
//! Output is coalesced: consecutive chunks of the same stream become one
//! request. A refusal that says the task is no longer ours drops the task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use wmig_client::{ControlClient, ControlError};
use wmig_proto::wire::control::{ControlRequest, OutputChunk};
use wmig_proto::wire::ErrorCode;
use wmig_proto::{NodeId, TaskId};

/// One report, in the order the task produced it.
pub type Report = ControlRequest;

/// Largest output request; larger writes are split by the reader anyway.
const MAX_OUTPUT: usize = 256 * 1024;

pub(crate) type ClientSlot = watch::Receiver<Option<Arc<ControlClient>>>;

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
) {
    let mut pending: Option<ControlRequest> = None;
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
        deliver(&req, &mut client, &node, &fenced).await;
        if let ControlRequest::Output { chunk, .. } = &req {
            // Accepted or refused for good: either way it left the queue.
            backlog.sub(chunk.bytes.len());
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

/// Send until accepted or refused for good.
async fn deliver(
    req: &ControlRequest,
    client: &mut ClientSlot,
    node: &NodeId,
    fenced: &mpsc::UnboundedSender<(TaskId, u64)>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let current = client.borrow_and_update().clone();
        let Some(c) = current else {
            if client.changed().await.is_err() {
                return;
            }
            continue;
        };
        match c.ask(req).await {
            Ok(_) => return,
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
                return;
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "report not delivered; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = client.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
