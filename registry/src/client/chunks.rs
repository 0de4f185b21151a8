//! The chunk half of the client: lease queries, bulk and batched uploads,
//! verified downloads, and the stored-prefix query, routed by hash.
//!
//! Every bulk call plans with one snapshot of the ring, groups its hashes
//! by node, splits each group into requests of `chunks_per_request` and
//! keeps `parallel_requests` of them in flight. A node that fails is routed
//! around and what it was asked goes to the next owner: uploads go on
//! until each chunk has a copy on every owner of the refreshed ring (a
//! chunk with at least one copy is kept; the nodes' repair copies it on),
//! reads try each candidate in turn.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::task::JoinSet;
use wmig_proto::wire::registry::{LeaseStatus, PutReport};
use wmig_proto::Hash;

use super::batch::Batcher;
use super::node::NodeClient;
use super::routing::worth_another_node;
use super::RegistryClient;
use crate::error::ClientError;

/// Rounds of re-routing after nodes fail, before a call gives up.
const ROUNDS: usize = 4;

/// Indices of `items` grouped by the node `target` picks (None: skip).
fn group_by<T>(
    items: &[T],
    mut target: impl FnMut(usize, &T) -> Option<SocketAddr>,
) -> HashMap<SocketAddr, Vec<usize>> {
    let mut groups: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(addr) = target(i, item) {
            groups.entry(addr).or_default().push(i);
        }
    }
    groups
}

type Work<T> = (SocketAddr, Vec<usize>, Result<T, ClientError>);

impl RegistryClient {
    /// Run `f` on each (node, index slice) with at most
    /// `parallel_requests` in flight per call.
    async fn fan_out<T, F, Fut>(
        &self,
        groups: HashMap<SocketAddr, Vec<usize>>,
        f: F,
    ) -> Vec<Work<T>>
    where
        T: Send + 'static,
        F: Fn(NodeClient, Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let per = self.inner.config.chunks_per_request.max(1);
        let limit = self.inner.config.parallel_requests.max(1) * groups.len().max(1);
        let mut tasks = JoinSet::new();
        let mut out = Vec::new();
        for (addr, idx) in groups {
            let node = match self.node(addr).await {
                Ok(n) => n,
                Err(e) => {
                    out.push((addr, idx, Err(e)));
                    continue;
                }
            };
            for slice in idx.chunks(per) {
                let slice = slice.to_vec();
                if tasks.len() >= limit {
                    if let Some(Ok(w)) = tasks.join_next().await {
                        out.push(w);
                    }
                }
                let fut = f(node.clone(), slice.clone());
                tasks.spawn(async move { (addr, slice, fut.await) });
            }
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(w) => out.push(w),
                Err(_) => tracing::error!("a registry request task panicked"),
            }
        }
        out
    }

    /// Per hash: store it (`Granted`, you now hold its lease), skip it
    /// (`AlreadyStored`), or someone else is storing it (`Leased`). Asked of
    /// each chunk's first owner, which holds its lease.
    pub async fn can_store(&self, hashes: &[Hash]) -> Result<Vec<LeaseStatus>, ClientError> {
        let mut out: Vec<Option<LeaseStatus>> = vec![None; hashes.len()];
        let mut last = None;
        for _ in 0..ROUNDS {
            let plan = self.plan();
            let groups = group_by(hashes, |i, h| {
                out[i].is_none().then(|| plan.owners(h).first().copied())?
            });
            if groups.is_empty() {
                break;
            }
            let work = self
                .fan_out(groups, |n, idx| {
                    let ask: Vec<Hash> = idx.iter().map(|&i| hashes[i]).collect();
                    async move { n.can_store(&ask).await }
                })
                .await;
            for (addr, idx, r) in work {
                match r {
                    Ok(answers) => {
                        for (i, a) in idx.into_iter().zip(answers) {
                            out[i] = Some(a);
                        }
                    }
                    Err(e) if worth_another_node(&e) => {
                        self.failed(addr);
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        all_or(out, last)
    }

    /// Store chunks now on every owner, in parallel requests. Storing
    /// releases their leases. The report adds up every copy: with R owners
    /// a new chunk counts R times as written.
    pub async fn put_chunks(&self, chunks: Vec<(Hash, Bytes)>) -> Result<PutReport, ClientError> {
        let mut copies: Vec<Vec<SocketAddr>> = vec![Vec::new(); chunks.len()];
        let mut report = PutReport::default();
        let mut last = None;
        for round in 0..ROUNDS {
            let plan = self.plan();
            let owners: Vec<Vec<SocketAddr>> = chunks.iter().map(|(h, _)| plan.owners(h)).collect();
            let mut groups: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
            for (i, o) in owners.iter().enumerate() {
                for addr in o {
                    if !copies[i].contains(addr) {
                        groups.entry(*addr).or_default().push(i);
                    }
                }
            }
            if groups.is_empty() {
                break;
            }
            if round > 0 {
                tracing::debug!(round, "re-sending chunks to the owners that lack them");
            }
            let items = &chunks;
            let work = self
                .fan_out(groups, |n, idx| {
                    let group: Vec<(Hash, Bytes)> = idx.iter().map(|&i| items[i].clone()).collect();
                    async move { n.put_chunks(&group).await }
                })
                .await;
            for (addr, idx, r) in work {
                match r {
                    Ok(r) => {
                        report.add(r);
                        for i in idx {
                            copies[i].push(addr);
                        }
                    }
                    Err(e) if worth_another_node(&e) => {
                        self.failed(addr);
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(i) = copies.iter().position(Vec::is_empty) {
            let e = last.unwrap_or(ClientError::Unexpected {
                expected: "a reachable registry node",
            });
            tracing::warn!(chunk = %chunks[i].0, error = %e, "no registry node stored a chunk");
            return Err(e);
        }
        Ok(report)
    }

    /// Queue one chunk; it is sent with others when the batch is full or
    /// old enough. Errors surface from [`flush`](Self::flush).
    pub async fn put_chunk(&self, hash: Hash, bytes: Bytes) {
        Batcher::push(self, hash, bytes).await;
    }

    /// Send queued chunks and wait for every batch; the first error of any
    /// batch since the last flush is returned.
    pub async fn flush(&self) -> Result<PutReport, ClientError> {
        Batcher::flush(self).await
    }

    /// Make sure the registry holds every chunk of `chunks` by the lease
    /// protocol: store those granted (through the batcher, so concurrent
    /// callers share requests), skip those already stored, and wait for
    /// those another client is storing right now. Returns the bytes sent.
    pub async fn store_chunks(&self, chunks: &[(Hash, Bytes)]) -> Result<u64, ClientError> {
        let mut uploaded = 0u64;
        let mut todo: Vec<&(Hash, Bytes)> = chunks.iter().collect();
        for _ in 0..100 {
            if todo.is_empty() {
                return Ok(uploaded);
            }
            let hashes: Vec<Hash> = todo.iter().map(|(h, _)| *h).collect();
            let mut leased = Vec::new();
            for part in hashes.chunks(8192).zip(todo.chunks(8192)) {
                let answers = self.can_store(part.0).await?;
                for (c, a) in part.1.iter().zip(answers) {
                    match a {
                        LeaseStatus::Granted => {
                            uploaded += c.1.len() as u64;
                            self.put_chunk(c.0, c.1.clone()).await;
                        }
                        LeaseStatus::AlreadyStored => {}
                        LeaseStatus::Leased => leased.push(*c),
                    }
                }
            }
            // A batch that failed may be reported to another caller's
            // flush; a manifest or tree commit still refuses missing chunks.
            self.flush().await?;
            todo = leased;
            if !todo.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Err(ClientError::Remote(wmig_proto::wire::RemoteError {
            code: wmig_proto::wire::ErrorCode::Unavailable,
            message: format!(
                "{} chunks stayed leased by another client for 2 s; try again",
                todo.len()
            ),
        }))
    }

    /// Chunks' bytes in order, verified against their hashes. Each chunk is
    /// asked of its owners in turn, then of every other node; an owner that
    /// lacked one is given a copy.
    pub async fn get_chunks(&self, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; hashes.len()];
        let mut attempt = vec![0usize; hashes.len()];
        let mut last = None;
        let plan = self.plan();
        let candidates: Vec<Vec<SocketAddr>> = hashes.iter().map(|h| plan.candidates(h)).collect();
        let rounds = candidates.iter().map(Vec::len).max().unwrap_or(0);
        for _ in 0..rounds.max(1) {
            let groups = group_by(hashes, |i, _| {
                out[i]
                    .is_none()
                    .then(|| candidates[i].get(attempt[i]).copied())?
            });
            if groups.is_empty() {
                break;
            }
            let work = self
                .fan_out(groups, |n, idx| {
                    let ask: Vec<Hash> = idx.iter().map(|&i| hashes[i]).collect();
                    async move { n.get_chunks(&ask).await }
                })
                .await;
            let mut repair: HashMap<SocketAddr, Vec<(Hash, Bytes)>> = HashMap::new();
            for (addr, idx, r) in work {
                match r {
                    Ok(chunks) => {
                        for (i, c) in idx.into_iter().zip(chunks) {
                            // Owners asked before this one lacked it (none
                            // when the first asked had it: no lookup then).
                            let missed = &candidates[i][..attempt[i]];
                            let owners = if missed.is_empty() {
                                Vec::new()
                            } else {
                                plan.owners(&hashes[i])
                            };
                            for missed in missed {
                                if owners.contains(missed) {
                                    repair
                                        .entry(*missed)
                                        .or_default()
                                        .push((hashes[i], Bytes::copy_from_slice(&c)));
                                }
                            }
                            out[i] = Some(c);
                        }
                    }
                    Err(e) if worth_another_node(&e) => {
                        if matches!(e, ClientError::Net(_)) {
                            self.failed(addr);
                        }
                        for i in idx {
                            attempt[i] += 1;
                        }
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.read_repair(repair);
        }
        all_or(out, last)
    }

    /// Give owners the chunks they were found to lack, in the background.
    fn read_repair(&self, repair: HashMap<SocketAddr, Vec<(Hash, Bytes)>>) {
        for (addr, chunks) in repair {
            let me = self.clone();
            tokio::spawn(async move {
                let n = match me.node(addr).await {
                    Ok(n) => n,
                    Err(_) => return,
                };
                let count = chunks.len();
                match n.put_chunks(&chunks).await {
                    Ok(_) => tracing::debug!(%addr, count, "read repair: gave an owner its chunks"),
                    Err(e) => tracing::debug!(%addr, error = %e, "read repair failed"),
                }
            });
        }
    }

    /// How many leading hashes of `hashes` the registry holds (on any of
    /// their owners). Those are spared from garbage collection for a while.
    pub async fn has_prefix(&self, hashes: &[Hash]) -> Result<usize, ClientError> {
        let plan = self.plan();
        if plan.standalone() {
            return self
                .first_ok(plan.all(), |n| async move { n.has_prefix(hashes).await })
                .await;
        }
        let mut held = vec![false; hashes.len()];
        for k in 0..plan.replicas {
            let groups = group_by(hashes, |i, h| {
                (!held[i]).then(|| plan.owners(h).get(k).copied())?
            });
            let work = self
                .fan_out(groups, |n, idx| {
                    let ask: Vec<Hash> = idx.iter().map(|&i| hashes[i]).collect();
                    async move { n.holds(&ask).await }
                })
                .await;
            for (addr, idx, r) in work {
                match r {
                    Ok(h) => {
                        for (i, yes) in idx.into_iter().zip(h) {
                            held[i] |= yes;
                        }
                    }
                    // Unknown counts as not held: at worst a chunk is sent again.
                    Err(e) => {
                        if matches!(e, ClientError::Net(_)) {
                            self.failed(addr);
                        }
                    }
                }
            }
        }
        Ok(held.iter().take_while(|h| **h).count())
    }
}

/// Every answer, or the last error if any is missing.
fn all_or<T>(out: Vec<Option<T>>, last: Option<ClientError>) -> Result<Vec<T>, ClientError> {
    if out.iter().any(Option::is_none) {
        return Err(last.unwrap_or(ClientError::Unexpected {
            expected: "a reachable registry node",
        }));
    }
    Ok(out.into_iter().flatten().collect())
}
