//! The chunk half of the client: lease queries, bulk and batched uploads,
//! verified downloads, and the stored-prefix query. Bulk calls split their
//! work into requests of `chunks_per_request` chunks and keep
//! `parallel_requests` of them in flight on the shared connection.

use bytes::Bytes;
use tokio::task::JoinSet;
use wmig_net::NetError;
use wmig_proto::wire::registry::{
    ChunkHeader, LeaseStatus, PutReport, RegistryRequest as Q, RegistryResponse as A,
};
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::Hash;

use super::batch::Batcher;
use super::RegistryClient;
use crate::error::ClientError;

impl RegistryClient {
    /// Per hash: store it (`Granted`, you now hold its lease), skip it
    /// (`AlreadyStored`), or someone else is storing it (`Leased`).
    pub async fn can_store(&self, hashes: &[Hash]) -> Result<Vec<LeaseStatus>, ClientError> {
        let req = Q::CanStore {
            hashes: hashes.to_vec(),
        };
        match self.ask(&req).await? {
            A::Leases(l) if l.len() == hashes.len() => Ok(l),
            _ => Err(ClientError::Unexpected {
                expected: "one lease answer per hash",
            }),
        }
    }

    /// Store chunks now, in parallel requests. Storing releases their leases.
    pub async fn put_chunks(&self, chunks: Vec<(Hash, Bytes)>) -> Result<PutReport, ClientError> {
        let per = self.inner.config.chunks_per_request.max(1);
        let mut groups = Vec::new();
        let mut rest = chunks;
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            groups.push(std::mem::replace(&mut rest, tail));
        }
        let mut report = PutReport::default();
        let mut tasks = JoinSet::new();
        let mut first_err = None;
        for group in groups {
            if tasks.len() >= self.inner.config.parallel_requests.max(1) {
                collect(tasks.join_next().await, &mut report, &mut first_err);
            }
            let me = self.clone();
            tasks.spawn(async move { me.put_chunks_request(group).await });
        }
        while let Some(r) = tasks.join_next().await {
            collect(Some(r), &mut report, &mut first_err);
        }
        first_err.map_or(Ok(report), Err)
    }

    /// One `PutChunks` request.
    pub(crate) async fn put_chunks_request(
        &self,
        group: Vec<(Hash, Bytes)>,
    ) -> Result<PutReport, ClientError> {
        let mut headers = Vec::with_capacity(group.len());
        for (hash, bytes) in &group {
            let len = u32::try_from(bytes.len()).map_err(|_| {
                ClientError::Remote(RemoteError::new(
                    ErrorCode::TooLarge,
                    format!("chunk {hash} of {} bytes is far too large", bytes.len()),
                ))
            })?;
            headers.push(ChunkHeader { hash: *hash, len });
        }
        let payload: Vec<Bytes> = group.into_iter().map(|(_, b)| b).collect();
        match self
            .call(&Q::PutChunks { chunks: headers }, &payload, None)
            .await?
            .0
        {
            A::ChunksStored(r) => Ok(r),
            _ => Err(ClientError::Unexpected {
                expected: "ChunksStored",
            }),
        }
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

    /// Chunks' bytes in order, verified against their hashes.
    pub async fn get_chunks(&self, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, ClientError> {
        let per = self.inner.config.chunks_per_request.max(1);
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); hashes.len()];
        let mut tasks = JoinSet::new();
        for (i, group) in hashes.chunks(per).enumerate() {
            if tasks.len() >= self.inner.config.parallel_requests.max(1) {
                place(tasks.join_next().await, &mut out, per)?;
            }
            let (me, group) = (self.clone(), group.to_vec());
            tasks.spawn(async move { (i, me.get_chunks_request(&group).await) });
        }
        while let Some(r) = tasks.join_next().await {
            place(Some(r), &mut out, per)?;
        }
        Ok(out)
    }

    async fn get_chunks_request(&self, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, ClientError> {
        let (answer, mut recv) = self
            .call(
                &Q::GetChunks {
                    hashes: hashes.to_vec(),
                },
                &[],
                None,
            )
            .await?;
        let A::Chunks { lens } = answer else {
            return Err(ClientError::Unexpected { expected: "Chunks" });
        };
        if lens.len() != hashes.len() {
            return Err(ClientError::Unexpected {
                expected: "one chunk per hash",
            });
        }
        let lens: Vec<u64> = lens.into_iter().map(u64::from).collect();
        let chunks = self.read_payload(&mut recv, &lens).await?;
        for (hash, bytes) in hashes.iter().zip(&chunks) {
            let actual = Hash::of(bytes);
            if actual != *hash {
                return Err(ClientError::Corrupt {
                    what: "chunk",
                    hash: *hash,
                    actual,
                });
            }
        }
        Ok(chunks)
    }

    /// How many leading hashes of `hashes` the registry holds.
    pub async fn has_prefix(&self, hashes: &[Hash]) -> Result<usize, ClientError> {
        match self
            .ask(&Q::HasPrefix {
                hashes: hashes.to_vec(),
            })
            .await?
        {
            A::Prefix { stored } => Ok(usize::try_from(stored)
                .unwrap_or(usize::MAX)
                .min(hashes.len())),
            _ => Err(ClientError::Unexpected { expected: "Prefix" }),
        }
    }
}

type Joined<T> = Option<Result<T, tokio::task::JoinError>>;

fn collect(
    r: Joined<Result<PutReport, ClientError>>,
    report: &mut PutReport,
    err: &mut Option<ClientError>,
) {
    match r {
        Some(Ok(Ok(r))) => report.add(r),
        Some(Ok(Err(e))) => {
            err.get_or_insert(e);
        }
        Some(Err(_)) => {
            err.get_or_insert(ClientError::Net(NetError::StreamClosed));
        }
        None => {}
    }
}

/// A finished download group: its index and its chunks.
type Group = (usize, Result<Vec<Vec<u8>>, ClientError>);

fn place(r: Joined<Group>, out: &mut [Vec<u8>], per: usize) -> Result<(), ClientError> {
    match r {
        Some(Ok((i, Ok(chunks)))) => {
            for (j, c) in chunks.into_iter().enumerate() {
                if let Some(slot) = out.get_mut(i * per + j) {
                    *slot = c;
                }
            }
            Ok(())
        }
        Some(Ok((_, Err(e)))) => Err(e),
        Some(Err(_)) => Err(ClientError::Net(NetError::StreamClosed)),
        None => Ok(()),
    }
}
