//! A task's stdin, fetched from the coordinator while the task runs.
//!
//! The coordinator stores what `wmig input` sends (durably, before it
//! answers); the task's owner asks for it from the byte the task has read,
//! which after a restore or a migration is the checkpoint's stdin offset,
//! so every byte is read exactly once wherever the task runs. Bytes go into
//! the task's [`InputPipe`]; a guest waiting on an empty pipe can be paused
//! and moved there (rewriter 4).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use wmig_client::ControlClient;
use wmig_host::wasi::{InputPipe, Stdin};
use wmig_proto::wire::ErrorCode;
use wmig_proto::{NodeId, TaskId};

/// Input buffered on the worker beyond what the guest has read; the fetch
/// waits for the guest past this.
const BUFFERED_MAX: usize = 1 << 20;
/// Most bytes asked for at once.
const READ_MAX: u32 = 256 * 1024;

pub type Clients = watch::Receiver<Option<Arc<ControlClient>>>;

/// The stdin of one task run on this worker.
pub struct StdinFeed {
    pipe: Arc<InputPipe>,
    taken: Arc<Notify>,
    clients: Clients,
    runtime: tokio::runtime::Handle,
    node: NodeId,
    task: TaskId,
    epoch: u64,
}

/// Stops the fetch when the run ends.
pub struct Feeding(tokio::task::AbortHandle);

impl Drop for Feeding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl StdinFeed {
    /// None outside a tokio runtime (never the case in a worker).
    pub fn new(clients: Clients, node: NodeId, task: TaskId, epoch: u64) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pipe = InputPipe::new();
        let taken = Arc::new(Notify::new());
        let t = taken.clone();
        pipe.on_take(move || t.notify_one());
        Some(StdinFeed {
            pipe,
            taken,
            clients,
            runtime,
            node,
            task,
            epoch,
        })
    }

    /// What the guest reads.
    pub fn stdin(&self) -> Stdin {
        Stdin::Pipe(self.pipe.clone())
    }

    /// Fetch from byte `offset` (what the task has read so far) until the
    /// input ends or the returned guard is dropped.
    pub fn start(&self, offset: u64) -> Feeding {
        let pipe = self.pipe.clone();
        let taken = self.taken.clone();
        let mut clients = self.clients.clone();
        let (node, task, epoch) = (self.node.clone(), self.task, self.epoch);
        let fetch = async move {
            let mut offset = offset;
            let mut delay = Duration::from_millis(100);
            loop {
                while pipe.buffered() >= BUFFERED_MAX {
                    taken.notified().await;
                }
                let Ok(client) = clients.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return;
                };
                let Some(client) = client else { continue };
                match client
                    .read_input(&node, task, epoch, offset, READ_MAX)
                    .await
                {
                    Ok((bytes, eof)) => {
                        delay = Duration::from_millis(100);
                        offset += bytes.len() as u64;
                        pipe.push(&bytes);
                        if eof {
                            pipe.close();
                            return;
                        }
                    }
                    // This node no longer owns the task: its new owner reads.
                    Err(e)
                        if e.remote().is_some_and(|r| {
                            matches!(r.code, ErrorCode::Conflict | ErrorCode::NotFound)
                        }) =>
                    {
                        tracing::debug!(%task, error = %e, "stopped fetching input");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%task, error = %e, "could not fetch input; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        };
        Feeding(self.runtime.spawn(fetch).abort_handle())
    }
}
