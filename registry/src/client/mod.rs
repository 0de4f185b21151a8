//! `RegistryClient`: what workers and the CLI call.
//!
//! One QUIC connection per client, one stream per request, several requests
//! in flight at once (the server's stream limit is the backpressure). Bulk
//! calls split their work: `put_chunks` and `get_chunks` send at most
//! `chunks_per_request` chunks per stream and keep `parallel_requests`
//! streams busy. Downloads are verified against their hashes before they are
//! returned. The client is cheap to clone; clones share the connection.
//!
//! Typical worker flow for a checkpoint: `can_store(hashes)`, then
//! `put_chunk` for each `Granted` hash (batched: 100 chunks or 10 ms per
//! request by default), `flush()`, then `put_manifest`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wmig_net::stream::{read_exact, read_frame, timed, transfer_limit, write_frame};
use wmig_net::{Credentials, EndpointConfig, NetError, REGISTRY_NODE};
use wmig_proto::checkpoint::Manifest;
use wmig_proto::frame::MAX_FRAME_LEN;
use wmig_proto::wire::registry::{
    BundleInfo, BundleRef, BundleStored, GcReport, ManifestStored, NameTag, RegistryRequest as Q,
    RegistryResponse as A, RegistryStats,
};
use wmig_proto::wire::REGISTRY_ALPN;
use wmig_proto::{Hash, TaskId};

use crate::error::ClientError;

mod batch;
mod chunks;

use batch::Batcher;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub endpoint: EndpointConfig,
    /// The name the registry's certificate must carry.
    pub server_name: String,
    pub connect_timeout: Duration,
    /// Time for a request without payload; transfers get more (see
    /// `min_transfer_rate`).
    pub request_timeout: Duration,
    /// Slowest acceptable transfer, bytes/s.
    pub min_transfer_rate: u64,
    pub max_frame: usize,
    /// `put_chunk` sends a batch when it holds this many chunks...
    pub batch_size: usize,
    /// ...or when its oldest chunk has waited this long.
    pub batch_delay: Duration,
    /// Chunks per `PutChunks` / `GetChunks` request.
    pub chunks_per_request: usize,
    /// Requests a bulk call keeps in flight.
    pub parallel_requests: usize,
    /// Largest payload accepted in one response (a bundle, or one request's
    /// chunks): a confused server cannot make the client allocate more.
    pub max_download: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: EndpointConfig::new(REGISTRY_ALPN),
            server_name: REGISTRY_NODE.to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            min_transfer_rate: 4 << 20,
            max_frame: MAX_FRAME_LEN,
            batch_size: 100,
            batch_delay: Duration::from_millis(10),
            chunks_per_request: 64,
            parallel_requests: 8,
            max_download: 1 << 30,
        }
    }
}

#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    pub(crate) config: ClientConfig,
    pub(crate) batcher: Batcher,
}

/// Bytes to send after a request frame, and a progress callback.
type Progress<'a> = Option<&'a mut (dyn FnMut(u64) + Send)>;

impl RegistryClient {
    /// Connect to the registry at `addr` as the holder of `creds`.
    pub async fn connect(
        addr: SocketAddr,
        creds: &Credentials,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let bind = wmig_net::endpoint::any_addr_for(addr);
        let endpoint = wmig_net::client_endpoint(bind, creds, &config.endpoint)?;
        let conn = wmig_net::connect(
            &endpoint,
            addr,
            &config.server_name,
            config.connect_timeout,
            creds,
        )
        .await?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                batcher: Batcher::new(config.parallel_requests),
                endpoint,
                conn,
                config,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Whether the connection is gone (then every request fails; connect anew).
    pub fn is_closed(&self) -> bool {
        self.inner.conn.close_reason().is_some()
    }

    /// Transport counters of the connection (RTT, path MTU, bytes, losses).
    pub fn transport_stats(&self) -> quinn::ConnectionStats {
        self.inner.conn.stats()
    }

    /// Send one request with its payload; return the (non-error) response
    /// and the stream to read a response payload from.
    async fn call(
        &self,
        req: &Q,
        payload: &[Bytes],
        mut progress: Progress<'_>,
    ) -> Result<(A, quinn::RecvStream), ClientError> {
        let cfg = &self.inner.config;
        let bytes: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let limit = transfer_limit(cfg.request_timeout, bytes, cfg.min_transfer_rate);
        let exchange = async {
            let (mut send, mut recv) = self.inner.conn.open_bi().await.map_err(NetError::from)?;
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
        let cfg = &self.inner.config;
        let total = lens.iter().fold(0u64, |a, l| a.saturating_add(*l));
        if total > cfg.max_download {
            return Err(ClientError::Unexpected {
                expected: "a payload within the client's max_download",
            });
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

    /// Upload a wasm bundle, optionally naming it.
    pub async fn upload_bundle(
        &self,
        wasm: &[u8],
        name: Option<&NameTag>,
    ) -> Result<BundleStored, ClientError> {
        self.upload_bundle_with_progress(wasm, name, &mut |_| {})
            .await
    }

    /// Upload a wasm bundle, reporting bytes sent so far to `progress`.
    pub async fn upload_bundle_with_progress(
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
            _ => Err(ClientError::Unexpected {
                expected: "BundleStored",
            }),
        }
    }

    /// Download a bundle by hash or name; verified against its hash.
    pub async fn download_bundle(
        &self,
        bundle: &BundleRef,
    ) -> Result<(Hash, Vec<u8>), ClientError> {
        let req = Q::GetBundle {
            bundle: bundle.clone(),
        };
        let (answer, mut recv) = self.call(&req, &[], None).await?;
        let A::Bundle { hash, len } = answer else {
            return Err(ClientError::Unexpected { expected: "Bundle" });
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
            _ => Err(ClientError::Unexpected {
                expected: "Bundles",
            }),
        }
    }

    /// Commit a checkpoint manifest (all its chunks must be stored).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<ManifestStored, ClientError> {
        let req = Q::PutManifest {
            manifest: Box::new(manifest.clone()),
        };
        match self.ask(&req).await? {
            A::ManifestStored(s) => Ok(s),
            _ => Err(ClientError::Unexpected {
                expected: "ManifestStored",
            }),
        }
    }

    /// A task's manifest by seq, or its newest with `None`.
    pub async fn manifest(&self, task: TaskId, seq: Option<u64>) -> Result<Manifest, ClientError> {
        match self.ask(&Q::GetManifest { task, seq }).await? {
            A::Manifest(m) => Ok(*m),
            _ => Err(ClientError::Unexpected {
                expected: "Manifest",
            }),
        }
    }

    /// The seqs of a task's kept checkpoints, ascending.
    pub async fn manifests(&self, task: TaskId) -> Result<Vec<u64>, ClientError> {
        match self.ask(&Q::ListManifests { task }).await? {
            A::Manifests(m) => Ok(m),
            _ => Err(ClientError::Unexpected {
                expected: "Manifests",
            }),
        }
    }

    pub async fn gc(&self) -> Result<GcReport, ClientError> {
        match self.ask(&Q::Gc).await? {
            A::Gc(r) => Ok(r),
            _ => Err(ClientError::Unexpected { expected: "Gc" }),
        }
    }

    pub async fn stats(&self) -> Result<RegistryStats, ClientError> {
        match self.ask(&Q::Stats).await? {
            A::Stats(s) => Ok(s),
            _ => Err(ClientError::Unexpected { expected: "Stats" }),
        }
    }

    /// Pass revoked certificates on (the coordinator does, or an operator);
    /// returns how many were new to the registry.
    pub async fn revocations(
        &self,
        revoked: Vec<wmig_proto::wire::RevokedCert>,
    ) -> Result<u32, ClientError> {
        match self.ask(&Q::Revocations { revoked }).await? {
            A::Revoked { added } => Ok(added),
            _ => Err(ClientError::Unexpected {
                expected: "Revoked",
            }),
        }
    }

    /// Close the connection (the registry releases this client's leases)
    /// and give the close a moment to leave. Not the whole draining period
    /// `wait_idle` would wait (three probe timeouts, ~80 ms even on
    /// loopback, most of a short command's run time): a close that is lost
    /// costs only the registry an idle timeout before it frees the leases.
    pub async fn close(&self) {
        self.inner.conn.close(quinn::VarInt::from_u32(0), b"bye");
        let grace =
            (self.inner.conn.rtt() * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let _ = tokio::time::timeout(grace, self.inner.endpoint.wait_idle()).await;
    }
}
