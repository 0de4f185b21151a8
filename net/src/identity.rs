//! Who is at the other end of a connection, as its certificate says.
//!
//! A server accepts only peers whose certificate chains to the cluster CA
//! (see [`crate::endpoint`]), and every certificate the CA issues names its
//! holder (`worker-3`, `operator`, `registry`) as its only subject
//! alternative name. So once the handshake is done the name in the
//! certificate is an identity the server can hold requests to: a worker
//! may only speak for itself, only the operator may act on tasks.

use std::sync::OnceLock;

use rustls::pki_types::{CertificateDer, ServerName};

/// The verified certificate of a connection's peer.
pub struct PeerIdentity {
    cert: Option<CertificateDer<'static>>,
    /// A name the certificate was found valid for (checks repeat per
    /// request: heartbeats should cost a string compare, not a parse).
    confirmed: OnceLock<String>,
}

impl PeerIdentity {
    /// The peer of `conn` (after the handshake).
    pub fn of(conn: &quinn::Connection) -> PeerIdentity {
        let cert = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.into_iter().next());
        PeerIdentity {
            cert,
            confirmed: OnceLock::new(),
        }
    }

    /// A peer known by name only (in-process callers, tests).
    pub fn trusted(name: &str) -> PeerIdentity {
        let confirmed = OnceLock::new();
        let _ = confirmed.set(name.to_owned());
        PeerIdentity {
            cert: None,
            confirmed,
        }
    }

    /// Whether the peer's certificate was issued to `name`.
    pub fn is(&self, name: &str) -> bool {
        if let Some(known) = self.confirmed.get() {
            return known == name;
        }
        let Some(der) = &self.cert else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return false;
        };
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let valid = cert.verify_is_valid_for_subject_name(&server_name).is_ok();
        if valid {
            let _ = self.confirmed.set(name.to_owned());
        }
        valid
    }

    /// The name the certificate gives its holder, for messages (decisions
    /// go through [`PeerIdentity::is`]).
    pub fn name(&self) -> Option<String> {
        if let Some(known) = self.confirmed.get() {
            return Some(known.clone());
        }
        let der = self.cert.as_ref()?;
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let name = cert.valid_dns_names().next().map(str::to_owned);
        name
    }
}
