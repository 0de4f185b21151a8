//! `NodeClient`: one QUIC connection to one registry node, one stream per
//! request. [`RegistryClient`](super::RegistryClient) routes over several
//! of these; registry nodes use them to talk to each other.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use wmig_net::stream::{read_exact, read_frame, timed, transfer_limit, write_frame};
use wmig_net::{Credentials, NetError};
use wmig_proto::checkpoint::Manifest;
use wmig_proto::wire::registry::{
    BundleInfo, BundleRef, BundleStored, ChunkHeader, GcReport, Inventory, LeaseStatus,
    ManifestStored, NameTag, PutReport, RegistryRequest as Q, RegistryResponse as A, RegistryStats,
    RingInfo,
};
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::{Hash, TaskId};

use super::ClientConfig;
use crate::error::ClientError;

/// Bytes to send after a request frame, and a progress callback.
pub(crate) type Progress<'a> = Option<&'a mut (dyn FnMut(u64) + Send)>;

/// A connection to one registry node. Cheap to clone.
#[derive(Clone)]
pub struct NodeClient {
    conn: quinn::Connection,
    config: Arc<ClientConfig>,
}

fn unexpected<T>(expected: &'static str) -> Result<T, ClientError> {
    Err(ClientError::Unexpected { expected })
}

impl NodeClient {
    /// Connect through `endpoint` to the node at `addr`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        creds: &Credentials,
        config: Arc<ClientConfig>,
    ) -> Result<Self, ClientError> {
        let conn = wmig_net::connect(
            endpoint,
            addr,
            &config.server_name,
            config.connect_timeout,
            creds,
        )
        .await?;
        Ok(NodeClient { conn, config })
    }

    pub fn addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    pub fn transport_stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
    }

    pub(crate) fn rtt(&self) -> std::time::Duration {
        self.conn.rtt()
    }

    /// Send one request with its payload; return the (non-error) response
    /// and the stream to read a response payload from.
    async fn call(
        &self,
        req: &Q,
        payload: &[Bytes],
        mut progress: Progress<'_>,
    ) -> Result<(A, quinn::RecvStream), ClientError> {
        let cfg = &self.config;
        let bytes: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let limit = transfer_limit(cfg.request_timeout, bytes, cfg.min_transfer_rate);
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(NetError::from)?;
            let sent: Result<(), NetError> = async {
                write_frame(&mut send, req).await?;
                let mut done = 0;
                for piece in payload {
                    send.write_chunk(piece.clone()).await?;
                    done += piece.len() as u64;
                    if let Some(p) = progress.as_mut() {
                        p(done);
                    }
                }
                send.finish()?;
                Ok(())
            }
            .await;
            // If the server refused the upload midway, its answer says why.
            let answer = read_frame::<A>(&mut recv, cfg.max_frame).await;
            Ok::<_, NetError>((sent, answer, recv))
        };
        let (sent, answer, recv) = timed(limit, exchange).await?;
        match (sent, answer) {
            (_, Ok(A::Error(e))) => Err(ClientError::Remote(e)),
            (Ok(()), Ok(a)) => Ok((a, recv)),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e.into()),
        }
    }

    /// A request without payloads either way.
    async fn ask(&self, req: &Q) -> Result<A, ClientError> {
        Ok(self.call(req, &[], None).await?.0)
    }

    async fn read_payload(
        &self,
        recv: &mut quinn::RecvStream,
        lens: &[u64],
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let cfg = &self.config;
        let total = lens.iter().fold(0u64, |a, l| a.saturating_add(*l));
        if total > cfg.max_download {
            return unexpected("a payload within the client's max_download");
        }
        let limit = transfer_limit(cfg.request_timeout, total, cfg.min_transfer_rate);
        let read = async {
            let mut out = Vec::with_capacity(lens.len());
            for &len in lens {
                // Bounded by max_download above.
                let mut buf = vec![0u8; len as usize];
                read_exact(recv, &mut buf).await?;
                out.push(buf);
            }
            Ok(out)
        };
        Ok(timed(limit, read).await?)
    }

    pub async fn upload_bundle(
        &self,
        wasm: &[u8],
        name: Option<&NameTag>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<BundleStored, ClientError> {
        let req = Q::PutBundle {
            hash: Hash::of(wasm),
            len: wasm.len() as u64,
            name: name.cloned(),
        };
        let pieces: Vec<Bytes> = wasm.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
        match self.call(&req, &pieces, Some(progress)).await?.0 {
            A::BundleStored(s) => Ok(s),
            _ => unexpected("BundleStored"),
        }
    }

    pub async fn download_bundle(
        &self,
        bundle: &BundleRef,
    ) -> Result<(Hash, Vec<u8>), ClientError> {
        let req = Q::GetBundle {
            bundle: bundle.clone(),
        };
        let (answer, mut recv) = self.call(&req, &[], None).await?;
        let A::Bundle { hash, len } = answer else {
            return unexpected("Bundle");
        };
        let bytes = self
            .read_payload(&mut recv, &[len])
            .await?
            .pop()
            .unwrap_or_default();
        let actual = Hash::of(&bytes);
        if actual != hash || matches!(bundle, BundleRef::Hash(h) if *h != hash) {
            return Err(ClientError::Corrupt {
                what: "bundle",
                hash,
                actual,
            });
        }
        Ok((hash, bytes))
    }

    pub async fn list_bundles(&self) -> Result<Vec<BundleInfo>, ClientError> {
        match self.ask(&Q::ListBundles).await? {
            A::Bundles(b) => Ok(b),
            _ => unexpected("Bundles"),
        }
    }

    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<ManifestStored, ClientError> {
        let req = Q::PutManifest {
            manifest: Box::new(manifest.clone()),
        };
        match self.ask(&req).await? {
            A::ManifestStored(s) => Ok(s),
            _ => unexpected("ManifestStored"),
        }
    }

    /// Registry to registry: store a manifest another node accepted.
    pub async fn replicate_manifest(
        &self,
        manifest: &Manifest,
    ) -> Result<ManifestStored, ClientError> {
        let req = Q::ReplicateManifest {
            manifest: Box::new(manifest.clone()),
        };
        match self.ask(&req).await? {
            A::ManifestStored(s) => Ok(s),
            _ => unexpected("ManifestStored"),
        }
    }

    pub async fn manifest(&self, task: TaskId, seq: Option<u64>) -> Result<Manifest, ClientError> {
        match self.ask(&Q::GetManifest { task, seq }).await? {
            A::Manifest(m) => Ok(*m),
            _ => unexpected("Manifest"),
        }
    }

    pub async fn manifests(&self, task: TaskId) -> Result<Vec<u64>, ClientError> {
        match self.ask(&Q::ListManifests { task }).await? {
            A::Manifests(m) => Ok(m),
            _ => unexpected("Manifests"),
        }
    }

    pub async fn gc(&self) -> Result<GcReport, ClientError> {
        match self.ask(&Q::Gc).await? {
            A::Gc(r) => Ok(r),
            _ => unexpected("Gc"),
        }
    }

    pub async fn stats(&self) -> Result<RegistryStats, ClientError> {
        match self.ask(&Q::Stats).await? {
            A::Stats(s) => Ok(s),
            _ => unexpected("Stats"),
        }
    }

    pub async fn revocations(
        &self,
        revoked: Vec<wmig_proto::wire::RevokedCert>,
    ) -> Result<u32, ClientError> {
        match self.ask(&Q::Revocations { revoked }).await? {
            A::Revoked { added } => Ok(added),
            _ => unexpected("Revoked"),
        }
    }

    pub async fn ring(&self) -> Result<RingInfo, ClientError> {
        match self.ask(&Q::Ring).await? {
            A::Ring(r) => Ok(r),
            _ => unexpected("Ring"),
        }
    }

    pub async fn inventory(&self) -> Result<Inventory, ClientError> {
        match self.ask(&Q::Inventory).await? {
            A::Inventory(i) => Ok(i),
            _ => unexpected("Inventory"),
        }
    }

    pub async fn can_store(&self, hashes: &[Hash]) -> Result<Vec<LeaseStatus>, ClientError> {
        let req = Q::CanStore {
            hashes: hashes.to_vec(),
        };
        match self.ask(&req).await? {
            A::Leases(l) if l.len() == hashes.len() => Ok(l),
            _ => unexpected("one lease answer per hash"),
        }
    }

    /// Which of `hashes` this node holds.
    pub async fn holds(&self, hashes: &[Hash]) -> Result<Vec<bool>, ClientError> {
        let req = Q::Holds {
            hashes: hashes.to_vec(),
        };
        match self.ask(&req).await? {
            A::Held(h) if h.len() == hashes.len() => Ok(h),
            _ => unexpected("one answer per hash"),
        }
    }

    pub async fn has_prefix(&self, hashes: &[Hash]) -> Result<usize, ClientError> {
        let req = Q::HasPrefix {
            hashes: hashes.to_vec(),
        };
        match self.ask(&req).await? {
            A::Prefix { stored } => Ok(usize::try_from(stored)
                .unwrap_or(usize::MAX)
                .min(hashes.len())),
            _ => unexpected("Prefix"),
        }
    }

    /// One `PutChunks` request.
    pub async fn put_chunks(&self, group: &[(Hash, Bytes)]) -> Result<PutReport, ClientError> {
        let mut headers = Vec::with_capacity(group.len());
        for (hash, bytes) in group {
            let len = u32::try_from(bytes.len()).map_err(|_| {
                ClientError::Remote(RemoteError::new(
                    ErrorCode::TooLarge,
                    format!("chunk {hash} of {} bytes is far too large", bytes.len()),
                ))
            })?;
            headers.push(ChunkHeader { hash: *hash, len });
        }
        let payload: Vec<Bytes> = group.iter().map(|(_, b)| b.clone()).collect();
        match self
            .call(&Q::PutChunks { chunks: headers }, &payload, None)
            .await?
            .0
        {
            A::ChunksStored(r) => Ok(r),
            _ => unexpected("ChunksStored"),
        }
    }

    /// One `GetChunks` request, verified against the hashes.
    pub async fn get_chunks(&self, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, ClientError> {
        let req = Q::GetChunks {
            hashes: hashes.to_vec(),
        };
        let (answer, mut recv) = self.call(&req, &[], None).await?;
        let A::Chunks { lens } = answer else {
            return unexpected("Chunks");
        };
        if lens.len() != hashes.len() {
            return unexpected("one chunk per hash");
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
}
