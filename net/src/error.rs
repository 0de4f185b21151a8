//! The errors of this crate: [`ClusterError`] for certificates and the
//! cluster directory, [`NetError`] for endpoints, connections and streams.
//!
//! quinn reports a refused certificate as a bare transport code ("the
//! cryptographic handshake failed: error 42"); [`describe_connection_error`]
//! turns such codes into sentences that say what to check.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wmig_proto::frame::FrameError;

/// Certificates, keys and the cluster directory.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "`{name}` is not a valid node name: use 1-63 lowercase letters, digits and `-`, \
         not starting or ending with `-`"
    )]
    InvalidNodeName { name: String },
    #[error("cannot issue `{name}` as {role}: {reason}", role = role.with_article())]
    RoleName {
        name: String,
        role: crate::certs::CertRole,
        reason: String,
    },
    #[error("invalid certificate validity: {reason}")]
    InvalidValidity { reason: String },
    #[error("{0}")]
    Index(String),
    #[error("could not create certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path} is not a valid PEM {what}; re-create the cluster with `wmig init --force`")]
    BadPem { path: PathBuf, what: &'static str },
    #[error(
        "no cluster at {dir}: {missing} is missing; run `wmig init --cluster {dir}` \
         or point --cluster / WMIG_CLUSTER at an existing cluster"
    )]
    NotInitialized { dir: PathBuf, missing: PathBuf },
    #[error(
        "no certificate for `{name}` in {dir} and the cluster CA key is not here to issue one; \
         on the machine that holds the cluster directory run `wmig cert issue {name} --out DIR` \
         and use DIR here"
    )]
    NoIdentity { name: String, dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid cluster config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
}

impl ClusterError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ClusterError {
        let path = path.into();
        move |source| ClusterError::Io { path, source }
    }
}

/// Endpoints, connections and streams.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("could not bind UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("invalid TLS setup: {0}")]
    Tls(String),
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The server refused our certificate as expired or revoked: retrying
    /// cannot help until the certificate is replaced.
    #[error("could not connect to {addr}: {reason}")]
    CertificateRefused { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Connection(String),
    #[error("the peer reset the stream (code {0}) before the exchange finished")]
    StreamReset(u64),
    #[error("the peer stopped reading the stream (code {0})")]
    StreamStopped(u64),
    #[error("the stream was already closed")]
    StreamClosed,
    #[error("the peer ended the stream after {have} of {need} expected bytes")]
    Truncated { have: usize, need: usize },
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}; the peer is overloaded or unreachable")]
    Timeout(Duration),
}

/// The TLS alert a connection ended with: `(true, n)` when this side
/// raised it (it refused the peer), `(false, n)` when the peer did.
pub(crate) fn tls_alert(e: &quinn::ConnectionError) -> Option<(bool, u8)> {
    use quinn::ConnectionError as E;
    let (local, code) = match e {
        E::ConnectionClosed(close) => (false, u64::from(close.error_code)),
        E::TransportError(t) => (true, u64::from(t.code)),
        _ => return None,
    };
    (0x100..0x200)
        .contains(&code)
        .then_some((local, (code & 0xff) as u8))
}

/// Say in words why a connection ended, naming certificate problems.
pub fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match (e, tls_alert(e)) {
        (E::ConnectionClosed(_), Some((_, 44))) => "the peer refused our certificate: it has \
            been revoked (`wmig cert revoke`); ask the operator for a new identity"
            .into(),
        (E::ConnectionClosed(_), Some((_, 45))) => "the peer refused our certificate: it has \
            expired (or is not yet valid: check the clocks); renew it with `wmig cert renew NAME` \
            on the machine holding the cluster's ca.key"
            .into(),
        (E::ConnectionClosed(_), Some((_, alert))) => format!(
            "the peer refused the TLS handshake (alert {alert}): our certificate is not \
             signed by its cluster CA; check that --cluster / WMIG_CLUSTER names the \
             cluster this node belongs to"
        ),
        (E::ConnectionClosed(close), None) => format!("the peer closed the connection: {close}"),
        (E::TransportError(t), Some((_, 45))) => format!(
            "TLS handshake failed: {}; the certificate has expired (or is not yet valid: check \
             the clocks): renew it with `wmig cert renew NAME` on the machine holding the \
             cluster's ca.key and restart that node with it",
            t.reason
        ),
        (E::TransportError(t), Some((_, 44))) => format!(
            "TLS handshake failed: {}; the certificate has been revoked (`wmig cert ls` on the \
             machine holding the cluster's ca.key lists it)",
            t.reason
        ),
        (E::TransportError(t), Some(_)) => format!(
            "TLS handshake failed: {}; the peer's certificate is not from this \
             cluster (check --cluster / WMIG_CLUSTER) or names another node",
            t.reason
        ),
        (E::TransportError(t), None) => format!("connection failed: {t}"),
        (E::ApplicationClosed(close), _) => {
            let reason = String::from_utf8_lossy(&close.reason);
            format!("the peer closed the connection: {reason}")
        }
        (E::TimedOut, _) => "the connection timed out: the peer does not answer".into(),
        (E::Reset, _) => "the peer reset the connection (it may have restarted)".into(),
        (E::LocallyClosed, _) => "the connection was closed by this node".into(),
        (E::VersionMismatch, _) => "the peer speaks no QUIC version we support".into(),
        (E::CidsExhausted, _) => "the connection ran out of connection ids".into(),
    }
}

impl From<quinn::ConnectionError> for NetError {
    fn from(e: quinn::ConnectionError) -> Self {
        NetError::Connection(describe_connection_error(&e))
    }
}

impl From<quinn::ReadError> for NetError {
    fn from(e: quinn::ReadError) -> Self {
        use quinn::ReadError as E;
        match e {
            E::Reset(code) => NetError::StreamReset(code.into_inner()),
            E::ConnectionLost(c) => c.into(),
            E::ClosedStream | E::IllegalOrderedRead | E::ZeroRttRejected => NetError::StreamClosed,
        }
    }
}

impl From<quinn::WriteError> for NetError {
    fn from(e: quinn::WriteError) -> Self {
        use quinn::WriteError as E;
        match e {
            E::Stopped(code) => NetError::StreamStopped(code.into_inner()),
            E::ConnectionLost(c) => c.into(),
            E::ClosedStream | E::ZeroRttRejected => NetError::StreamClosed,
        }
    }
}

impl From<quinn::ClosedStream> for NetError {
    fn from(_: quinn::ClosedStream) -> Self {
        NetError::StreamClosed
    }
}
