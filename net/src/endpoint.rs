//! QUIC endpoints with mutual TLS, tuned once for every role.
//!
//! A server endpoint accepts only clients whose certificate chains to the
//! cluster CA, is within its validity and, when the server has a revocation
//! list ([`EndpointConfig::revocations`]), is not revoked; a client endpoint
//! presents its own certificate and accepts only a server whose certificate
//! chains to the same CA, is within its validity *and* names the node the
//! client asked for. TLS 1.3 only (QUIC requires it), ring as the provider.
//!
//! In TLS 1.3 a client finishes its side of the handshake before the server
//! has looked at the client's certificate, so [`connect`] also waits for the
//! server's verdict (QUIC's `HANDSHAKE_DONE`, or the refusal): a refused
//! certificate is reported there, with what to do about it, instead of as a
//! closed connection on the first request.
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
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::certs::{CertInfo, Credentials, TimeProblem};
use crate::error::{tls_alert, NetError};
use crate::revocation::Revocations;

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
    /// Servers: the cluster's revocation list; clients presenting a revoked
    /// certificate are refused in the handshake. `None`: no list.
    pub revocations: Option<Arc<Revocations>>,
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
            revocations: None,
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
    let webpki = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider())
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    let verifier: Arc<dyn ClientCertVerifier> = match &config.revocations {
        Some(list) => Arc::new(RevocationChecking {
            inner: webpki,
            revocations: list.clone(),
        }),
        None => webpki,
    };
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

/// The cluster CA's verdict on a client certificate, then the revocation
/// list's: a revoked certificate is refused with the TLS alert
/// `certificate_revoked`, which [`connect`] turns into a sentence.
#[derive(Debug)]
struct RevocationChecking {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
}

impl ClientCertVerifier for RevocationChecking {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(info) = CertInfo::of(end_entity) {
            if let Some(revoked) = self.revocations.lookup(&info.serial) {
                tracing::info!(reason = %revoked.describe(), "refused a revoked certificate");
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Connect to `server_name` at `addr` presenting `creds` (the identity
/// `endpoint` was made with), waiting at most `timeout` for the handshake
/// and the server's acceptance of our certificate.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
    creds: &Credentials,
) -> Result<quinn::Connection, NetError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| NetError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let no_answer = || NetError::Connect {
        addr,
        reason: format!("no answer within {timeout:?}; is the server running at that address?"),
    };
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(refusal(addr, server_name, &e, creds)),
        Err(_) => return Err(no_answer()),
    };
    // Our side is done; the server's verdict on our certificate arrives as
    // HANDSHAKE_DONE, or as a close with the TLS alert that says why not.
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(conn);
        }
        let closed = match conn.close_reason() {
            Some(e) => e,
            None => {
                if tokio::time::Instant::now() >= deadline {
                    conn.close(VarInt::from_u32(0), b"handshake not confirmed");
                    return Err(no_answer());
                }
                tokio::select! {
                    e = conn.closed() => e,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => continue,
                }
            }
        };
        return match closed {
            // Only an application that accepted us closes this way: the
            // caller meets the close on its first request, as after any
            // handshake.
            quinn::ConnectionError::ApplicationClosed(_) => Ok(conn),
            e => Err(refusal(addr, server_name, &e, creds)),
        };
    }
}

/// Why a connection could not be made, in words; a server's refusal of our
/// certificate as expired or revoked names the certificate and the remedy.
fn refusal(
    addr: SocketAddr,
    server_name: &str,
    e: &quinn::ConnectionError,
    creds: &Credentials,
) -> NetError {
    let name = &creds.name;
    let reason = match tls_alert(e) {
        Some((false, ALERT_CERTIFICATE_EXPIRED)) => match creds.time_problem() {
            Some(p @ TimeProblem::Expired { .. }) => format!(
                "the {server_name} refused the certificate of `{name}`: certificate {p}: renew it \
                 with `wmig cert renew {name}` on the machine holding the cluster's ca.key \
                 (--out DIR writes it into the directory for this machine)"
            ),
            Some(p) => format!("the {server_name} refused the certificate of `{name}`, which {p}"),
            None => format!(
                "the {server_name} refused the certificate of `{name}` as expired or not yet \
                 valid, though by this machine's clock it is valid: check the clocks of both \
                 machines"
            ),
        },
        Some((true, ALERT_CERTIFICATE_EXPIRED)) => {
            let detail = match e {
                quinn::ConnectionError::TransportError(t) => t.reason.clone(),
                other => other.to_string(),
            };
            // The server's certificate, not ours: it may be renewed and the
            // server restarted, so this is worth retrying.
            return NetError::Connect {
                addr,
                reason: format!(
                    "the certificate of the {server_name} is out of its validity ({detail}): \
                     renew it with `wmig cert renew {server_name}` on the machine holding the \
                     cluster's ca.key and restart the {server_name} (or check this machine's clock)"
                ),
            };
        }
        Some((false, ALERT_CERTIFICATE_REVOKED)) => format!(
            "the {server_name} refused the certificate of `{name}`{}: it has been revoked \
             (`wmig cert revoke`); ask the operator for a new identity (`wmig cert issue {name} \
             --out DIR` on the machine holding the cluster's ca.key)",
            creds
                .info()
                .map(|i| format!(" (serial {})", i.serial))
                .unwrap_or_default()
        ),
        _ => {
            return NetError::Connect {
                addr,
                reason: crate::error::describe_connection_error(e),
            }
        }
    };
    NetError::CertificateRefused { addr, reason }
}

/// TLS alert numbers (RFC 8446 §6).
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;

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
