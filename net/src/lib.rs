//! The one crate that knows QUIC and TLS: every wmig role talks through it.
//!
//! - [`certs`]: the cluster CA (rcgen), the identities it issues and their
//!   roles and validity.
//! - [`cluster`]: the cluster directory on disk: `config.toml`, the index of
//!   issued certificates, the revocation list.
//! - [`identity`]: who a connection's peer is and what its role allows.
//! - [`revocation`]: the revocation list as servers see it (reloaded when it
//!   changes).
//! - [`endpoint`]: quinn endpoints with mutual TLS (rustls + ring), tuned
//!   transport, bounded concurrent streams per connection.
//! - [`stream`]: one request per bidirectional stream; frames (from
//!   `wmig_proto::frame`) and raw payloads, with timeouts.
//!
//! Protocols (the registry's, the control plane's) live above this crate and
//! use only these pieces plus `quinn::{Connection, SendStream, RecvStream}`,
//! which are re-exported so they need no direct quinn dependency.

pub mod certs;
pub mod cluster;
pub mod endpoint;
pub mod error;
pub mod identity;
pub mod revocation;
pub mod stream;

pub use certs::{
    CertInfo, CertRecord, CertRole, ClusterCa, Credentials, Identity, Issued, TimeProblem,
    Validity, COORDINATOR, DEFAULT_DAYS, OPERATOR,
};
pub use cluster::{ClusterConfig, ClusterDir, EtcdTls, DEFAULT_CLUSTER_DIR, REGISTRY_NODE};
pub use endpoint::{
    accept, any_addr_for, client_endpoint, connect, server_endpoint, EndpointConfig,
};
pub use error::{ClusterError, NetError};
pub use identity::PeerIdentity;
pub use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
pub use revocation::{Revocations, Revoked};

#[cfg(test)]
mod tests;
