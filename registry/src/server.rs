//! The registry server: QUIC connections in, [`Registry`] calls out.
//!
//! `run(endpoint, registry, config, shutdown)` takes its socket and its stop
//! signal from the caller (tests bind 127.0.0.1:0 and stop it cleanly). Each
//! connection's id owns the leases it is granted, which are released when it
//! closes. Each stream carries one request: the frame is read under a
//! timeout, any payload under a timeout that grows with its declared size,
//! and declared sizes are checked against the limits before a byte of
//! payload is buffered. Payload memory across all requests is bounded by a
//! budget; a request that would exceed it waits (backpressure), it does not
//! allocate. Malformed requests are answered with an error frame, never a
//! panic or silence.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wmig_net::stream::{read_exact, read_frame, timed, transfer_limit, write_frame};
use wmig_net::{EndpointConfig, NetError};
use wmig_proto::frame::{FrameError, MAX_FRAME_LEN};
use wmig_proto::wire::registry::{RegistryRequest, RegistryResponse};
use wmig_proto::wire::{ErrorCode, RemoteError, REGISTRY_ALPN};

use crate::error::RegistryError;
use crate::service::Registry;

/// Transport-side settings of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub endpoint: EndpointConfig,
    /// Time for a request frame to arrive, and the base time of transfers.
    pub request_timeout: Duration,
    /// Slowest accepted transfer, in bytes/s; payload timeouts grow with size.
    pub min_transfer_rate: u64,
    /// Largest request frame.
    pub max_frame: usize,
    /// Payload bytes all requests together may hold in memory.
    pub memory_budget: u64,
    /// This node's part in a ring of registry nodes (None: standalone).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            endpoint: EndpointConfig::new(REGISTRY_ALPN),
            request_timeout: Duration::from_secs(30),
            min_transfer_rate: 4 << 20,
            max_frame: MAX_FRAME_LEN,
            memory_budget: 1 << 30,
            cluster: None,
        }
    }
}

struct Shared {
    registry: Arc<Registry>,
    config: ServerConfig,
    /// The payload memory budget, in KiB.
    budget: Arc<Semaphore>,
    budget_kib: u32,
}

/// Serve `registry` on `endpoint` until `shutdown` resolves, then close
/// every connection and return.
pub async fn run(
    endpoint: quinn::Endpoint,
    registry: Arc<Registry>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let budget_kib = u32::try_from(config.memory_budget / 1024)
        .unwrap_or(u32::MAX >> 3)
        .max(1);
    let shared = Arc::new(Shared {
        budget: Arc::new(Semaphore::new(budget_kib as usize)),
        budget_kib,
        registry: registry.clone(),
        config,
    });
    let mut cleanup = tokio::time::interval(registry.config().lease_cleanup_interval);
    let mut gc_timer = registry.config().gc_interval.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(serve_connection(incoming, shared.clone()));
                }
                None => break,
            },
            _ = cleanup.tick() => {
                let expired = registry.expire_leases(Instant::now());
                if expired > 0 {
                    tracing::debug!(expired, "expired leases");
                }
            }
            _ = async { match gc_timer.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => {
                let r = registry.clone();
                match tokio::task::spawn_blocking(move || r.gc(Instant::now())).await {
                    Ok(Ok(report)) => tracing::info!(?report, "periodic garbage collection"),
                    Ok(Err(e)) => tracing::error!(error = %e, "periodic garbage collection failed"),
                    Err(e) => tracing::error!(error = %e, "periodic garbage collection panicked"),
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"registry shutting down");
    connections.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let Some(conn) = wmig_net::accept(incoming).await else {
        return;
    };
    let remote = conn.remote_address();
    let owner = conn.stable_id() as u64;
    let peer = Arc::new(wmig_net::PeerIdentity::of(&conn));
    tracing::debug!(%remote, owner, "connection open");
    while let Ok((send, recv)) = conn.accept_bi().await {
        // A certificate revoked since the handshake loses its connection.
        let revocations = shared.config.endpoint.revocations.as_ref();
        if wmig_net::revocation::close_if_revoked(&conn, &peer, revocations) {
            break;
        }
        tokio::spawn(serve_stream(
            send,
            recv,
            shared.clone(),
            owner,
            peer.clone(),
        ));
    }
    let released = shared.registry.release_owner(owner);
    tracing::debug!(%remote, owner, released, "connection closed");
}

/// What a request is answered with: a response frame and raw payload pieces.
struct Reply {
    response: RegistryResponse,
    payload: Vec<Bytes>,
}

impl Reply {
    fn new(response: RegistryResponse) -> Self {
        Reply {
            response,
            payload: Vec::new(),
        }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::new(RegistryResponse::Error(RemoteError::new(code, message)))
    }
}

impl From<RegistryError> for Reply {
    fn from(e: RegistryError) -> Self {
        let remote = e.to_remote();
        if remote.code == ErrorCode::Internal {
            // The peer only learns that the server failed; the log says why.
            tracing::error!(error = %e, "request failed");
        }
        Reply::new(RegistryResponse::Error(remote))
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    owner: u64,
    peer: Arc<wmig_net::PeerIdentity>,
) {
    let cfg = &shared.config;
    let request = timed(
        cfg.request_timeout,
        read_frame::<RegistryRequest>(&mut recv, cfg.max_frame),
    )
    .await;
    let reply = match request {
        Ok(req) => match authorize(&peer, &req) {
            Err(why) => Reply::error(ErrorCode::Invalid, why),
            Ok(()) => match dispatch(req, &mut recv, &shared, owner, &peer).await {
                Some(reply) => reply,
                None => return,
            },
        },
        Err(NetError::Frame(e)) => {
            let code = match e {
                FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::Malformed,
            };
            Reply::error(code, format!("bad request: {e}"))
        }
        Err(NetError::Timeout(d)) => Reply::error(
            ErrorCode::Timeout,
            format!("the request did not arrive within {d:?}"),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "stream ended before a request arrived");
            return;
        }
    };
    if matches!(reply.response, RegistryResponse::Error(_)) {
        // Refuse whatever payload is still on its way.
        let _ = recv.stop(quinn::VarInt::from_u32(1));
    }
    let bytes: u64 = reply.payload.iter().map(|p| p.len() as u64).sum();
    let limit = transfer_limit(cfg.request_timeout, bytes, cfg.min_transfer_rate);
    let sent = timed(limit, async {
        write_frame(&mut send, &reply.response).await?;
        for piece in reply.payload {
            send.write_chunk(piece).await?;
        }
        send.finish()?;
        Ok(())
    })
    .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not send the reply");
    }
}

/// Who may do what here, by the role in the peer's certificate: any
/// cluster member reads; workers (and the operator) store chunks and
/// manifests, since workers checkpoint; only an operator uploads modules or
/// collects garbage (a worker's certificate must not be able to delete
/// checkpoints, a monitor's must not write at all).
fn authorize(peer: &wmig_net::PeerIdentity, req: &RegistryRequest) -> Result<(), String> {
    use wmig_net::CertRole;
    let (roles, what): (&[CertRole], &str) = match req {
        RegistryRequest::Gc => (&[CertRole::Operator], "collecting garbage"),
        // Registry nodes copy bundles and chunks to each other.
        RegistryRequest::PutBundle { .. } => (
            &[CertRole::Operator, CertRole::Registry],
            "uploading a module",
        ),
        RegistryRequest::CanStore { .. } => (
            &[CertRole::Worker, CertRole::Operator],
            "leasing chunks to store",
        ),
        RegistryRequest::PutChunks { .. } => (
            &[CertRole::Worker, CertRole::Operator, CertRole::Registry],
            "storing checkpoint chunks",
        ),
        RegistryRequest::ReplicateManifest { .. } => (
            &[CertRole::Registry],
            "copying a manifest between registry nodes",
        ),
        RegistryRequest::Inventory => (
            &[CertRole::Registry, CertRole::Operator],
            "listing a registry node's metadata",
        ),
        RegistryRequest::PutManifest { .. } => (
            &[CertRole::Worker, CertRole::Operator],
            "storing a checkpoint manifest",
        ),
        RegistryRequest::GetBundle { .. }
        | RegistryRequest::ListBundles
        | RegistryRequest::GetChunks { .. }
        | RegistryRequest::HasPrefix { .. }
        | RegistryRequest::GetManifest { .. }
        | RegistryRequest::ListManifests { .. }
        | RegistryRequest::Ring
        | RegistryRequest::Holds { .. }
        | RegistryRequest::Stats => return Ok(()),
        RegistryRequest::Revocations { .. } => (
            &[CertRole::Coordinator, CertRole::Operator],
            "revoking certificates",
        ),
    };
    peer.require(roles, what)
}

/// Commit a manifest on a ring node: its chunks may be on other nodes, so
/// those this node lacks are looked for there; then it is stored here and
/// copied to every alive node before the client hears it is committed.
async fn put_manifest_on_ring(
    cluster: &crate::cluster::Cluster,
    reg: Arc<Registry>,
    manifest: Box<wmig_proto::checkpoint::Manifest>,
) -> Result<wmig_proto::wire::registry::ManifestStored, RegistryError> {
    let m = manifest.clone();
    let r = reg.clone();
    let not_here = blocking(move || Ok(r.chunks_not_here(&m))).await?;
    let missing = cluster.not_anywhere(not_here).await;
    if let Some(first) = missing.first() {
        return Err(RegistryError::MissingChunks {
            count: missing.len(),
            first: *first,
        });
    }
    let m = manifest.clone();
    let stored = blocking(move || reg.put_manifest_replica(&m)).await?;
    cluster.replicate_manifest(&manifest).await;
    Ok(stored)
}

/// Run `f` on the blocking pool: stores do file IO.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(RegistryError::Internal("a request handler panicked")))
}

impl Shared {
    /// Reserve payload memory, waiting while the budget is used up.
    async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_kib);
        self.budget.clone().acquire_many_owned(kib).await.ok()
    }

    fn payload_limit(&self, bytes: u64) -> Duration {
        transfer_limit(
            self.config.request_timeout,
            bytes,
            self.config.min_transfer_rate,
        )
    }
}

/// Read a request's payload; `Err` is the reply to send (or `None` when the
/// stream is gone and nobody is listening).
async fn read_upload(
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    bufs: &mut [Vec<u8>],
) -> Result<(), Option<Reply>> {
    let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
    let read = timed(shared.payload_limit(total), async {
        for buf in bufs.iter_mut() {
            read_exact(recv, buf).await?;
        }
        Ok(())
    });
    match read.await {
        Ok(()) => Ok(()),
        Err(NetError::Truncated { .. }) => Err(Some(Reply::error(
            ErrorCode::Malformed,
            format!(
                "the upload ended before its announced {total} bytes arrived; nothing was stored"
            ),
        ))),
        Err(NetError::Timeout(d)) => Err(Some(Reply::error(
            ErrorCode::Timeout,
            format!(
                "the upload of {total} bytes did not complete within {d:?}; nothing was stored"
            ),
        ))),
        Err(e) => {
            tracing::debug!(error = %e, "upload aborted");
            Err(None)
        }
    }
}

async fn dispatch(
    req: RegistryRequest,
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    owner: u64,
    peer: &wmig_net::PeerIdentity,
) -> Option<Reply> {
    // Another registry node (copying, repairing): nothing it sends is
    // copied on again, and its questions keep no garbage alive.
    let from_node = peer.role() == Some(wmig_net::CertRole::Registry);
    let cluster = shared
        .config
        .cluster
        .clone()
        .filter(|c| !c.peers_alive().is_empty());
    use RegistryRequest as Q;
    use RegistryResponse as A;
    let reg = shared.registry.clone();
    let limits = &reg.config().limits;
    let reply = match req {
        Q::PutBundle { hash, len, name } => {
            if len > limits.max_bundle {
                return Some(
                    RegistryError::TooLarge {
                        what: "bundle",
                        len,
                        max: limits.max_bundle,
                    }
                    .into(),
                );
            }
            let _permit = shared.reserve(len).await?;
            let mut bufs = [vec![0u8; usize::try_from(len).ok()?]];
            if let Err(reply) = read_upload(recv, shared, &mut bufs).await {
                return reply;
            }
            let [bytes] = bufs;
            let bytes = Bytes::from(bytes);
            // A file tree's chunks may be on other ring nodes: look there
            // for those this node lacks (a copy from a node was checked
            // there already).
            let on_ring = cluster.is_some() || from_node;
            if let (Some(c), false, Ok(tree)) = (
                &cluster,
                from_node,
                wmig_proto::files::FileTree::decode(&bytes),
            ) {
                let hashes = tree.chunk_hashes();
                let present = reg.store_contains_chunks(&hashes);
                let not_here = hashes
                    .into_iter()
                    .zip(present)
                    .filter(|(_, p)| !p)
                    .map(|(h, _)| h)
                    .collect();
                let missing = c.not_anywhere(not_here).await;
                if let Some(first) = missing.first() {
                    return Some(
                        RegistryError::MissingChunks {
                            count: missing.len(),
                            first: *first,
                        }
                        .into(),
                    );
                }
            }
            let kept = bytes.clone();
            let named = name.clone();
            let stored =
                blocking(move || reg.put_bundle_with(hash, &kept, named.as_ref(), !on_ring)).await;
            if let (Ok(_), Some(c), false) = (&stored, &cluster, from_node) {
                c.replicate_bundle(bytes, name).await;
            }
            stored.map(|s| Reply::new(A::BundleStored(s)))
        }
        Q::GetBundle { bundle } => {
            blocking(move || reg.bundle(&bundle))
                .await
                .map(|(hash, bytes)| Reply {
                    response: A::Bundle {
                        hash,
                        len: bytes.len() as u64,
                    },
                    payload: vec![Bytes::from(bytes)],
                })
        }
        Q::ListBundles => Ok(Reply::new(A::Bundles(reg.list_bundles()))),
        Q::CanStore { hashes } => Ok(Reply::new(A::Leases(reg.can_store(
            owner,
            &hashes,
            Instant::now(),
        )))),
        Q::PutChunks { chunks } => {
            if let Err(e) = reg.check_chunk_count(chunks.len()) {
                return Some(e.into());
            }
            let max = limits.max_chunk;
            if let Some(c) = chunks.iter().find(|c| c.len > max) {
                let e = RegistryError::TooLarge {
                    what: "chunk",
                    len: u64::from(c.len),
                    max: u64::from(max),
                };
                return Some(e.into());
            }
            let total = chunks.iter().map(|c| u64::from(c.len)).sum();
            let _permit = shared.reserve(total).await?;
            let mut bufs: Vec<Vec<u8>> = chunks.iter().map(|c| vec![0u8; c.len as usize]).collect();
            if let Err(reply) = read_upload(recv, shared, &mut bufs).await {
                return reply;
            }
            blocking(move || {
                let items: Vec<_> = chunks
                    .iter()
                    .zip(&bufs)
                    .map(|(c, b)| (c.hash, b.as_slice()))
                    .collect();
                reg.put_chunks(&items, Instant::now())
            })
            .await
            .map(|r| Reply::new(A::ChunksStored(r)))
        }
        Q::GetChunks { hashes } => {
            blocking(move || reg.chunks(&hashes))
                .await
                .map(|chunks| Reply {
                    response: A::Chunks {
                        lens: chunks.iter().map(|c| c.len() as u32).collect(),
                    },
                    payload: chunks.into_iter().map(Bytes::from).collect(),
                })
        }
        Q::HasPrefix { hashes } => Ok(Reply::new(A::Prefix {
            stored: reg.has_prefix(&hashes, Instant::now()),
        })),
        Q::PutManifest { manifest } => match cluster {
            None => blocking(move || reg.put_manifest(&manifest))
                .await
                .map(|s| Reply::new(A::ManifestStored(s))),
            Some(c) => put_manifest_on_ring(&c, reg, manifest)
                .await
                .map(|s| Reply::new(A::ManifestStored(s))),
        },
        Q::ReplicateManifest { manifest } => blocking(move || reg.put_manifest_replica(&manifest))
            .await
            .map(|s| Reply::new(A::ManifestStored(s))),
        Q::Ring => match &shared.config.cluster {
            Some(c) if c.joining() => Err(RegistryError::Unavailable(
                "this registry node is still joining its ring; ask another node".into(),
            )),
            Some(c) => Ok(Reply::new(A::Ring(c.info()))),
            None => Ok(Reply::new(A::Ring(wmig_proto::wire::registry::RingInfo {
                replicas: 1,
                members: Vec::new(),
            }))),
        },
        // As many hashes as a frame holds, like `CanStore`.
        Q::Holds { hashes } => Ok(Reply::new(A::Held(reg.holds(
            &hashes,
            !from_node,
            Instant::now(),
        )))),
        Q::Inventory => Ok(Reply::new(A::Inventory(reg.inventory()))),
        Q::GetManifest { task, seq } => blocking(move || reg.manifest(task, seq))
            .await
            .map(|m| Reply::new(A::Manifest(Box::new(m)))),
        Q::ListManifests { task } => Ok(Reply::new(A::Manifests(reg.manifests(task)))),
        Q::Gc => blocking(move || reg.gc(Instant::now()))
            .await
            .map(|r| Reply::new(A::Gc(r))),
        Q::Stats => Ok(Reply::new(A::Stats(reg.stats(Instant::now())))),
        Q::Revocations { revoked } => match shared.config.endpoint.revocations.clone() {
            None => Err(RegistryError::Invalid(
                "this registry keeps no revocation list (it was started without a cluster \
                 directory)"
                    .into(),
            )),
            Some(list) => match wmig_net::revocation::merge_received(list, revoked).await {
                Ok(added) => Ok(Reply::new(A::Revoked {
                    added: u32::try_from(added).unwrap_or(u32::MAX),
                })),
                Err(e) => {
                    tracing::error!(error = %e, "could not store received revocations");
                    Err(RegistryError::Internal(
                        "could not store the revocations; see the registry's log",
                    ))
                }
            },
        },
    };
    Some(reply.unwrap_or_else(Reply::from))
}
