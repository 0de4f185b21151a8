//! Who is at the other end of a connection, as its certificate says.
//!
//! A server accepts only peers whose certificate chains to the cluster CA,
//! is within its validity and is not revoked (see [`crate::endpoint`]), and
//! every certificate the CA issues names its holder (`worker-3`, `operator`,
//! `registry`) and its role (`wmig:role:worker`, see
//! [`CertRole`](crate::certs::CertRole)). So once the handshake is done the
//! server can hold every request to both: a worker may only speak for
//! itself, a monitor only reads, only an operator acts on tasks.

use std::sync::OnceLock;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::certs::{CertInfo, CertRole};

/// The verified certificate of a connection's peer.
pub struct PeerIdentity {
    cert: Option<CertificateDer<'static>>,
    /// Name, role and serial, read once per connection.
    info: Option<CertInfo>,
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
        let info = cert.as_ref().and_then(CertInfo::of);
        PeerIdentity {
            cert,
            info,
            confirmed: OnceLock::new(),
        }
    }

    /// The peer presenting `der` (tests).
    #[cfg(test)]
    pub(crate) fn of_der(der: CertificateDer<'static>) -> PeerIdentity {
        PeerIdentity {
            info: CertInfo::of(&der),
            cert: Some(der),
            confirmed: OnceLock::new(),
        }
    }

    /// A peer known by name only (in-process callers, tests), with the role
    /// its name implies for a certificate without a role.
    pub fn trusted(name: &str) -> PeerIdentity {
        PeerIdentity::trusted_as(name, CertRole::for_legacy_name(name))
    }

    /// A peer known by name and role only (in-process callers, tests).
    pub fn trusted_as(name: &str, role: Option<CertRole>) -> PeerIdentity {
        let confirmed = OnceLock::new();
        let _ = confirmed.set(name.to_owned());
        PeerIdentity {
            cert: None,
            info: Some(CertInfo {
                name: Some(name.to_owned()),
                role,
                serial: String::new(),
            }),
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
        self.info.as_ref()?.name.clone()
    }

    /// The role in the certificate, or for a certificate issued before
    /// roles the one its name implies; `None` for such a certificate with an
    /// ordinary node name (a worker or a monitor, as the request implies).
    pub fn role(&self) -> Option<CertRole> {
        self.info.as_ref()?.effective_role()
    }

    /// The certificate's serial number ([`crate::certs::serial_hex`]), if
    /// the peer presented one.
    pub fn serial(&self) -> Option<&str> {
        self.info
            .as_ref()
            .map(|i| i.serial.as_str())
            .filter(|s| !s.is_empty())
    }

    /// Whether the peer may act as `role`. A certificate issued before
    /// roles may act as the role its name implies, or, with an ordinary
    /// node name, as a worker or a monitor.
    pub fn acts_as(&self, role: CertRole) -> bool {
        let Some(info) = &self.info else {
            return false;
        };
        match info.effective_role() {
            Some(r) => r == role,
            None => matches!(role, CertRole::Worker | CertRole::Monitor),
        }
    }

    /// `worker-1 is a worker`, for refusals.
    pub fn describe(&self) -> String {
        let who = self
            .name()
            .unwrap_or_else(|| "this certificate's holder".to_owned());
        match &self.info {
            Some(info) => match info.effective_role() {
                Some(role) if info.role.is_some() => format!("{who} is {}", role.with_article()),
                Some(role) => format!(
                    "{who} is {} (its certificate predates roles; the name implies it)",
                    role.with_article()
                ),
                None => format!(
                    "{who} is a worker or monitor (its certificate predates roles: renew it \
                     with `wmig cert renew {who}` to give it one)"
                ),
            },
            None => format!("{who} has no readable certificate"),
        }
    }

    /// Refuse unless the peer acts as one of `roles`: `permission denied:
    /// worker-1 is a worker; submitting a task needs an operator`.
    pub fn require(&self, roles: &[CertRole], action: &str) -> Result<(), String> {
        if roles.iter().any(|r| self.acts_as(*r)) {
            return Ok(());
        }
        let needs = roles
            .iter()
            .map(|r| r.with_article())
            .collect::<Vec<_>>()
            .join(" or ");
        let why = format!(
            "permission denied: {}; {action} needs {needs}",
            self.describe()
        );
        tracing::warn!(peer = ?self.name(), serial = ?self.serial(), reason = %why, "permission denied");
        Err(why)
    }
}
