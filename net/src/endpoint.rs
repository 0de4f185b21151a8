//! QUIC endpoints with mutual TLS, tuned once for every role.
//!
//! A server endpoint accepts only clients whose certificate chains to the
//! cluster CA; a client endpoint presents its own certificate and accepts only
//! a server whose certificate chains to the same CA *and* names the node the
//! client asked for. TLS 1.3 only (QUIC requires it), ring as the provider.
//!
//! Flow control is the backpressure: a connection may have at most
//! [`EndpointConfig::max_streams`] requests open at once (a client's
//! `open_bi` waits for a free slot), and windows bound the bytes in flight.
//! The windows are sized for bulk chunk transfers on fast links.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::certs::Credentials;
use crate::error::NetError;

/// Transport settings shared by servers and clients.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// ALPN protocol names offered (client) or accepted (server).
    pub alpn: Vec<Vec<u8>>,
    /// Requests a peer may have open at once on one connection.
    pub max_streams: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Ping interval that keeps an idle but wanted connection open.
    pub keep_alive: Option<Duration>,
    /// Bytes a peer may send on one stream before it is read.
    pub stream_window: u32,
    /// Bytes a peer may send on all streams of a connection before they are read.
    pub connection_window: u32,
    /// Largest UDP payload this endpoint accepts, and the upper bound of MTU
    /// discovery. The default fits Ethernet. Loopback and jumbo-frame links
    /// gain from more (the registry benchmark: +35 % at 3000 on loopback),
    /// but on loopback with small socket buffers values of 8000 and up
    /// caused heavy loss, so larger is opt-in.
    pub max_udp_payload: u16,
}

impl EndpointConfig {
    /// Defaults for protocol `alpn`.
    pub fn new(alpn: &[u8]) -> Self {
        EndpointConfig {
            alpn: vec![alpn.to_vec()],
            max_streams: 64,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            stream_window: 16 << 20,
            connection_window: 64 << 20,
            max_udp_payload: 1472,
        }
    }

    fn transport(&self) -> Result<TransportConfig, NetError> {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| NetError::Tls("idle timeout out of range".into()))?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.connection_window));
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        Ok(t)
    }

    fn quinn_endpoint_config(&self) -> Result<quinn::EndpointConfig, NetError> {
        let mut c = quinn::EndpointConfig::default();
        c.max_udp_payload_size(self.max_udp_payload.max(1200))
            .map_err(|_| NetError::Tls("max UDP payload out of range (1200..=65527)".into()))?;
        Ok(c)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &Credentials) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(creds.ca.clone())
        .map_err(|e| NetError::Tls(format!("cluster CA certificate is unusable: {e}")))?;
    Ok(Arc::new(roots))
}

fn tls_err(e: rustls::Error) -> NetError {
    NetError::Tls(e.to_string())
}

/// Bind a UDP socket with buffers large enough for bulk transfers: the
/// kernel default (~200 KiB) overflows under a burst of large packets, and
/// every drop shrinks the congestion window. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`; a smaller buffer only costs speed.
fn bind(addr: SocketAddr) -> Result<UdpSocket, NetError> {
    let socket = UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}

const SOCKET_BUFFER: usize = 8 << 20;

/// A server endpoint on `addr` presenting `creds`; port 0 picks a free port
/// (read it back with `local_addr`). Must run inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    creds: &Credentials,
    config: &EndpointConfig,
) -> Result<quinn::Endpoint, NetError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider())
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key())
        .map_err(tls_err)?;
    tls.alpn_protocols = config.alpn.clone();
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Tls(format!("no QUIC cipher suite: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(config.transport()?));
    let socket = bind(addr)?;
    quinn::Endpoint::new(
        config.quinn_endpoint_config()?,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NetError::Bind { addr, source })
}

/// A client endpoint bound to `bind_addr` (e.g. `0.0.0.0:0`) presenting
/// `creds`. Must run inside a tokio runtime.
pub fn client_endpoint(
    bind_addr: SocketAddr,
    creds: &Credentials,
    config: &EndpointConfig,
) -> Result<quinn::Endpoint, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(creds)?)
        .with_client_auth_cert(creds.chain.clone(), creds.key())
        .map_err(tls_err)?;
    tls.alpn_protocols = config.alpn.clone();
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(format!("no QUIC cipher suite: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(config.transport()?));
    let socket = bind(bind_addr)?;
    let mut endpoint = quinn::Endpoint::new(
        config.quinn_endpoint_config()?,
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NetError::Bind {
        addr: bind_addr,
        source,
    })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The unspecified address of `peer`'s family, port 0: where a client binds.
pub fn any_addr_for(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// Connect to `server_name` at `addr`, waiting at most `timeout` for the
/// handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| NetError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(NetError::Connect {
            addr,
            reason: crate::error::describe_connection_error(&e),
        }),
        Err(_) => Err(NetError::Connect {
            addr,
            reason: format!("no answer within {timeout:?}; is the server running at that address?"),
        }),
    }
}

/// Finish a server-side handshake. A refused peer (typically one without a
/// certificate signed by the cluster CA) is logged and yields `None`.
pub async fn accept(incoming: quinn::Incoming) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    match incoming.await {
        Ok(conn) => Some(conn),
        Err(e) => {
            let reason = crate::error::describe_connection_error(&e);
            tracing::info!(%remote, %reason, "refused connection");
            None
        }
    }
}
