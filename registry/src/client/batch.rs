//! Batched chunk uploads behind `RegistryClient::put_chunk`.
//!
//! A checkpoint produces chunks one at a time; one request per chunk would
//! pay a stream setup and a server round trip each. The batcher collects
//! them and sends a `PutChunks` request when `batch_size` chunks are queued
//! (default 100) or the oldest queued chunk has waited `batch_delay`
//! (default 10 ms), whichever comes first. At most `parallel_requests`
//! batches are in flight; `put_chunk` waits for one to finish beyond that,
//! so a fast producer cannot queue unbounded memory. Results are collected
//! and reported by `flush`, which also sends whatever is queued.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::task::JoinHandle;
use wmig_net::NetError;
use wmig_proto::wire::registry::PutReport;
use wmig_proto::Hash;

use super::RegistryClient;
use crate::error::ClientError;

type Pending = JoinHandle<Result<PutReport, ClientError>>;

#[derive(Default)]
struct State {
    items: Vec<(Hash, Bytes)>,
    /// Bumped whenever the queue is sent, so a stale timer does nothing.
    generation: u64,
    pending: VecDeque<Pending>,
    report: PutReport,
    error: Option<ClientError>,
}

pub(crate) struct Batcher {
    state: Mutex<State>,
    parallel: usize,
}

impl Batcher {
    pub(crate) fn new(parallel: usize) -> Self {
        Batcher {
            state: Mutex::new(State::default()),
            parallel: parallel.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send the queue as one request (registered as pending under the lock,
    /// so a concurrent `flush` always waits for it).
    fn send_queued(st: &mut State, client: &RegistryClient) {
        if st.items.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut st.items);
        st.generation += 1;
        let me = client.clone();
        st.pending
            .push_back(tokio::spawn(async move { me.put_chunks(batch).await }));
    }

    fn record(&self, r: Result<Result<PutReport, ClientError>, tokio::task::JoinError>) {
        let mut st = self.lock();
        match r {
            Ok(Ok(report)) => st.report.add(report),
            Ok(Err(e)) => {
                st.error.get_or_insert(e);
            }
            Err(_) => {
                st.error
                    .get_or_insert(ClientError::Net(NetError::StreamClosed));
            }
        }
    }

    pub(crate) async fn push(client: &RegistryClient, hash: Hash, bytes: Bytes) {
        let b = &client.inner.batcher;
        let cfg = &client.inner.config;
        {
            let mut st = b.lock();
            st.items.push((hash, bytes));
            if st.items.len() >= cfg.batch_size.max(1) {
                Self::send_queued(&mut st, client);
            } else if st.items.len() == 1 {
                let (me, generation, delay) = (client.clone(), st.generation, cfg.batch_delay);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut st = me.inner.batcher.lock();
                    if st.generation == generation {
                        Self::send_queued(&mut st, &me);
                    }
                });
            }
        }
        // Backpressure: wait while too many batches are in flight.
        loop {
            let oldest = {
                let mut st = b.lock();
                if st.pending.len() <= b.parallel {
                    break;
                }
                st.pending.pop_front()
            };
            if let Some(h) = oldest {
                b.record(h.await);
            }
        }
    }

    pub(crate) async fn flush(client: &RegistryClient) -> Result<PutReport, ClientError> {
        let b = &client.inner.batcher;
        Self::send_queued(&mut b.lock(), client);
        loop {
            let next = b.lock().pending.pop_front();
            match next {
                Some(h) => b.record(h.await),
                None => break,
            }
        }
        let mut st = b.lock();
        let report = std::mem::take(&mut st.report);
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}
