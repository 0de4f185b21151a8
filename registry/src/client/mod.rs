//! `RegistryClient`: what workers and the CLI call.
//!
//! One QUIC connection per registry node, one stream per request, several
//! requests in flight at once (the server's stream limit is the
//! backpressure). Bulk calls split their work: `put_chunks` and
//! `get_chunks` send at most `chunks_per_request` chunks per stream and
//! keep `parallel_requests` streams busy per node. Downloads are verified
//! against their hashes before they are returned. The client is cheap to
//! clone; clones share the connections.
//!
//! **Routing.** On connecting, the client asks the node it reached for the
//! ring (`routing.rs`). A standalone registry answers with no members and
//! gets every request. With several nodes, chunks go by hash: the lease is
//! asked of the chunk's first owner, the bytes are written to every owner
//! (R = 2 by default), and reads try the owners in order, then the other
//! nodes, repairing an owner that missed a chunk. Manifests, bundles and
//! names live on every node: the node that accepts one copies it to the
//! others, so any node answers for them. A node that fails a request is
//! skipped until the ring says it is back; the ring is asked again every
//! second, so a node the membership declares down loses its connections
//! (and their hung requests) within the membership's offline timeout.
//!
//! Typical worker flow for a checkpoint: `can_store(hashes)`, then
//! `put_chunk` for each `Granted` hash (batched: 100 chunks or 10 ms per
//! request by default), `flush()`, then `put_manifest`.

use std::time::Duration;

use wmig_net::{EndpointConfig, REGISTRY_NODE};
use wmig_proto::frame::MAX_FRAME_LEN;
use wmig_proto::wire::REGISTRY_ALPN;

mod batch;
mod chunks;
mod node;
mod routing;

pub use node::NodeClient;
pub use routing::RegistryClient;

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
