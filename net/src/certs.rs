//! The cluster's certificate authority and the identities it issues.
//!
//! Layout of trust: one self-signed CA per cluster (`wmig init`); every node
//! (registry, coordinator, each worker, each monitor) and the operator get a
//! leaf certificate signed by it, valid for both client and server use
//! because every role both dials and serves. A leaf says who holds it in two
//! subject alternative names:
//!
//! - its name as a DNS name (`registry`, `worker-3`): a client checks a
//!   server against the name it expects rather than against an address
//!   (addresses and ports are chosen at run time, names are not), and a
//!   server holds each request to the name of the node it speaks for;
//! - its role as a URI, `wmig:role:worker` (see [`CertRole`]): what the
//!   holder may do. Certificates issued before roles existed have no such
//!   URI; their role is inferred from the name ([`CertRole::for_legacy_name`]).
//!
//! Every certificate has a random 127-bit serial number (what a revocation
//! names) and a validity, 90 days by default ([`DEFAULT_DAYS`]), which TLS
//! verification enforces on both sides of every connection. The CA itself
//! does not expire; replacing it means a new `wmig init --force`.
//!
//! The CA is rebuilt from its key and fixed parameters when it issues, so
//! issuing needs no X.509 parser; reading a certificate back (its name, role
//! and serial, or whether it expired) goes through rustls-webpki, which the
//! TLS stack already uses. Keys are ECDSA P-256 (rcgen's default, fast with
//! ring).

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// Name of the operator identity the CLI uses.
pub const OPERATOR: &str = "operator";

/// Name of the coordinator's identity (clients dial it by this name).
pub const COORDINATOR: &str = "coordinator";

/// Name of the registry's identity (clients dial it by this name).
pub const REGISTRY: &str = "registry";

/// Days a certificate is valid unless the issuer says otherwise.
pub const DEFAULT_DAYS: u32 = 90;

/// A certificate is valid from this long before it was issued, so that a
/// machine whose clock is somewhat behind the issuer's accepts it at once.
const CLOCK_SKEW_SECS: i64 = 3600;

const CA_COMMON_NAME: &str = "wmig cluster CA";

/// The URI subject alternative name that carries a certificate's role.
const ROLE_URI_PREFIX: &str = "wmig:role:";

/// What the holder of a certificate may do; carried in the certificate as
/// the URI `wmig:role:<role>`.
///
/// - `worker`: runs tasks; speaks only for itself (register, heartbeat,
///   reports on its own tasks), writes checkpoint chunks and manifests to
///   the registry, reads.
/// - `monitor`: registers and heartbeats as itself and reads (events,
///   tasks, nodes, logs); changes nothing.
/// - `operator`: acts on the cluster (submit, cancel, migrate, drain,
///   remove, upload modules, collect garbage) and reads.
/// - `registry`, `coordinator`: the two servers; each may only be named
///   `registry` / `coordinator`, the names clients dial. They read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    Worker,
    Monitor,
    Operator,
    Registry,
    Coordinator,
}

impl CertRole {
    pub const ALL: [CertRole; 5] = [
        CertRole::Worker,
        CertRole::Monitor,
        CertRole::Operator,
        CertRole::Registry,
        CertRole::Coordinator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Worker => "worker",
            CertRole::Monitor => "monitor",
            CertRole::Operator => "operator",
            CertRole::Registry => "registry",
            CertRole::Coordinator => "coordinator",
        }
    }

    /// `a worker`, `an operator`: for messages.
    pub fn with_article(self) -> String {
        let article = if matches!(self, CertRole::Operator) {
            "an"
        } else {
            "a"
        };
        format!("{article} {}", self.as_str())
    }

    /// The URI subject alternative name that carries this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// The role a `wmig:role:...` URI names, if it is one.
    pub fn from_uri(uri: &str) -> Option<CertRole> {
        uri.strip_prefix(ROLE_URI_PREFIX)?.parse().ok()
    }

    /// The role of a certificate issued before roles existed (no role URI),
    /// inferred from its name as authorization did then: `operator`,
    /// `registry` and `coordinator` are those roles; any other name is a node
    /// that may act as a worker or a monitor, as the request implies (`None`).
    pub fn for_legacy_name(name: &str) -> Option<CertRole> {
        match name {
            OPERATOR => Some(CertRole::Operator),
            REGISTRY => Some(CertRole::Registry),
            COORDINATOR => Some(CertRole::Coordinator),
            _ => None,
        }
    }

    /// The role a certificate issued on demand for `name` gets: the servers'
    /// and the operator's names have their own roles, anything else is a
    /// worker.
    pub fn default_for(name: &str) -> CertRole {
        CertRole::for_legacy_name(name).unwrap_or(CertRole::Worker)
    }

    /// Refuse name/role pairs that would let one identity pass for another:
    /// clients find the servers by the names `registry` and `coordinator`, so
    /// only those roles may carry them (and they no other name), and the
    /// name `operator` is the operator's.
    pub fn check_name(self, name: &str) -> Result<(), ClusterError> {
        let reserved = CertRole::for_legacy_name(name);
        let ok = match self {
            CertRole::Registry | CertRole::Coordinator => reserved == Some(self),
            CertRole::Operator => reserved.is_none() || reserved == Some(self),
            CertRole::Worker | CertRole::Monitor => reserved.is_none(),
        };
        if ok {
            return Ok(());
        }
        let reason = match self {
            CertRole::Registry | CertRole::Coordinator => format!(
                "a {role} certificate must be named `{role}`: clients dial the {role} by that name",
                role = self.as_str()
            ),
            _ => format!(
                "`{name}` is reserved for the {} role; choose another name",
                reserved.map_or("", CertRole::as_str)
            ),
        };
        Err(ClusterError::RoleName {
            name: name.to_owned(),
            role: self,
            reason,
        })
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CertRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CertRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a role: use worker, monitor, operator, registry or coordinator"
                )
            })
    }
}

/// When an issued certificate is valid, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// From an hour ago (clock skew) until `days` days from now. `days = 0`
    /// gives a certificate that expired the second before it was issued:
    /// what a test needs to see an expired certificate refused.
    pub fn days(days: u32) -> Validity {
        let now = unix_now();
        let not_after = if days == 0 {
            now - 1
        } else {
            now + i64::from(days) * 86_400
        };
        Validity {
            not_before: now - CLOCK_SKEW_SECS,
            not_after,
        }
    }
}

impl Default for Validity {
    fn default() -> Self {
        Validity::days(DEFAULT_DAYS)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2025-06-01 14:03 UTC`.
pub fn format_utc(unix_secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("{unix_secs} (Unix time)"),
    }
}

/// A serial number as lowercase hex without leading zero bytes (the form
/// `issued.toml`, `revoked.toml` and messages use).
pub fn serial_hex(serial: &[u8]) -> String {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    let hex: String = serial[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        "00".to_owned()
    } else {
        hex
    }
}

/// What the cluster records about each certificate it issues
/// (`issued.toml`; listed by `wmig cert ls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub name: String,
    pub role: CertRole,
    /// [`serial_hex`] of the serial number.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// A freshly issued identity and its record.
pub struct Issued {
    pub identity: Identity,
    pub record: CertRecord,
}

/// What a certificate says about its holder, read with rustls-webpki.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The first DNS name (wmig certificates carry exactly one).
    pub name: Option<String>,
    /// The role URI; `None` for a certificate issued before roles.
    pub role: Option<CertRole>,
    /// [`serial_hex`] of the serial number.
    pub serial: String,
}

impl CertInfo {
    /// Read a DER certificate; `None` if it does not parse.
    pub fn of(der: &CertificateDer<'_>) -> Option<CertInfo> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(CertInfo {
            name: cert.valid_dns_names().next().map(str::to_owned),
            role: cert.valid_uri_names().find_map(CertRole::from_uri),
            serial: serial_hex(cert.serial()),
        })
    }

    /// The role this certificate's holder has: its role URI, else inferred
    /// from its name ([`CertRole::for_legacy_name`]; `None`: a legacy node,
    /// worker or monitor).
    pub fn effective_role(&self) -> Option<CertRole> {
        self.role
            .or_else(|| CertRole::for_legacy_name(self.name.as_deref()?))
    }
}

/// Why a certificate is not valid at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeProblem {
    /// Its `not_after` (Unix seconds) has passed.
    Expired { not_after: i64 },
    /// Its `not_before` (Unix seconds) has not come yet.
    NotYetValid { not_before: i64 },
}

impl std::fmt::Display for TimeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeProblem::Expired { not_after } => {
                write!(f, "expired on {}", format_utc(*not_after))
            }
            TimeProblem::NotYetValid { not_before } => write!(
                f,
                "is not valid until {} (is this machine's clock right?)",
                format_utc(*not_before)
            ),
        }
    }
}

/// Whether `cert` (issued by `ca`) is outside its validity at `now`, as
/// TLS verification would find it.
pub fn time_problem(
    cert: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    now: SystemTime,
) -> Option<TimeProblem> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let anchor = webpki::anchor_from_trusted_cert(ca).ok()?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).ok()?);
    let secs = |t: UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { not_after, .. }) => Some(TimeProblem::Expired {
            not_after: secs(not_after),
        }),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Some(TimeProblem::NotYetValid {
            not_before: secs(not_before),
        }),
        _ => None,
    }
}

/// A cluster CA that can issue identities.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

/// A certificate and its private key, PEM-encoded, as stored on disk.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything an endpoint needs for mutual TLS: the CA it trusts and the
/// identity it presents.
#[derive(Clone)]
pub struct Credentials {
    pub name: String,
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    key: std::sync::Arc<PrivateKeyDer<'static>>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Node names are DNS labels so they can be certificate names.
pub fn validate_node_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidNodeName {
            name: name.chars().take(80).collect(),
        })
    }
}

impl ClusterCa {
    /// A fresh CA with a new key.
    pub fn generate() -> Result<Self, ClusterError> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its stored certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key: KeyPair::from_pem(key_pem)?,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issue a certificate for `name` with `role`, valid for `validity`,
    /// with a fresh random serial number.
    pub fn issue(
        &self,
        name: &str,
        role: CertRole,
        validity: Validity,
    ) -> Result<Issued, ClusterError> {
        self.issue_for(name, role, validity, &[])
    }

    /// [`Self::issue`], also valid for the IP addresses `ips`: for servers
    /// that clients dial by address rather than by name (etcd members).
    pub fn issue_for(
        &self,
        name: &str,
        role: CertRole,
        validity: Validity,
        ips: &[std::net::IpAddr],
    ) -> Result<Issued, ClusterError> {
        validate_node_name(name)?;
        role.check_name(name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(name.try_into()?),
            SanType::URI(role.uri().try_into()?),
        ];
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let time = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| {
                ClusterError::InvalidValidity {
                    reason: format!(
                        "{secs} (Unix time) is not a date a certificate can carry; use fewer --days"
                    ),
                }
            })
        };
        params.not_before = time(validity.not_before)?;
        params.not_after = time(validity.not_after)?;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            identity: Identity {
                name: name.to_owned(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            record: CertRecord {
                name: name.to_owned(),
                role,
                serial: serial_hex(&serial),
                not_before: validity.not_before,
                not_after: validity.not_after,
            },
        })
    }

    /// Credentials for `name` straight from this CA (tests, embedded
    /// clusters): the role its name implies ([`CertRole::default_for`]),
    /// the default validity.
    pub fn credentials(&self, name: &str) -> Result<Credentials, ClusterError> {
        self.credentials_with(name, CertRole::default_for(name), Validity::default())
    }

    /// Credentials for `name` with `role` and `validity` straight from this CA.
    pub fn credentials_with(
        &self,
        name: &str,
        role: CertRole,
        validity: Validity,
    ) -> Result<Credentials, ClusterError> {
        let id = self.issue(name, role, validity)?.identity;
        Credentials::from_pem(name, self.cert_pem.as_bytes(), &id).map_err(|what| {
            ClusterError::BadPem {
                path: format!("<issued {name}>").into(),
                what,
            }
        })
    }
}

/// 16 random bytes, positive and without a leading zero byte, so the DER
/// integer is exactly these bytes.
fn random_serial() -> Result<[u8; 16], ClusterError> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| ClusterError::Io {
        path: "<serial number>".into(),
        source: std::io::Error::other(format!("no randomness for a serial number: {e}")),
    })?;
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 1;
    }
    Ok(serial)
}

impl std::fmt::Debug for Credentials {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parse PEM; on failure, say which part was bad.
    pub fn from_pem(name: &str, ca_pem: &[u8], id: &Identity) -> Result<Self, &'static str> {
        let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|_| "CA certificate")?;
        let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "certificate")?;
        if chain.is_empty() {
            return Err("certificate");
        }
        let key =
            PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|_| "private key")?;
        Ok(Credentials {
            name: name.to_owned(),
            ca,
            chain,
            key: std::sync::Arc::new(key),
        })
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// A secret only holders of this identity's private key can compute.
    /// Registry nodes share one identity and derive their gossip key from
    /// it, so no key has to be handed out or stored beside it.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.key.secret_der())
    }

    /// What this identity's own certificate says (role, serial).
    pub fn info(&self) -> Option<CertInfo> {
        CertInfo::of(self.chain.first()?)
    }

    /// Whether this identity's certificate is outside its validity now.
    pub fn time_problem(&self) -> Option<TimeProblem> {
        time_problem(self.chain.first()?, &self.ca, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels() {
        for good in ["registry", "worker-3", "a", "operator"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Worker", "a.b", "a b", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    /// A certificate as wmig issued them before roles: the name only.
    fn legacy(ca: &ClusterCa, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().expect("name"))];
        let issuer = Issuer::new(ca_params(), &ca.key);
        params.signed_by(&key, &issuer).expect("sign").der().clone()
    }

    #[test]
    fn certificates_carry_name_role_serial_and_validity() {
        let ca = ClusterCa::generate().expect("ca");
        let a = ca
            .issue("mon-1", CertRole::Monitor, Validity::days(7))
            .expect("issue");
        let b = ca
            .issue("mon-1", CertRole::Monitor, Validity::days(7))
            .expect("issue");
        assert_ne!(a.record.serial, b.record.serial, "serials are unique");
        assert_eq!(a.record.serial.len(), 32);
        let der = CertificateDer::from_pem_slice(a.identity.cert_pem.as_bytes()).expect("pem");
        let info = CertInfo::of(&der).expect("parses");
        assert_eq!(info.name.as_deref(), Some("mon-1"));
        assert_eq!(info.role, Some(CertRole::Monitor));
        assert_eq!(info.serial, a.record.serial);
        assert!(a.record.not_after - unix_now() > 6 * 86_400);
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca pem");
        assert_eq!(time_problem(&der, &ca_der, SystemTime::now()), None);
        let later = SystemTime::now() + std::time::Duration::from_secs(8 * 86_400);
        assert_eq!(
            time_problem(&der, &ca_der, later),
            Some(TimeProblem::Expired {
                not_after: a.record.not_after
            })
        );
    }

    #[test]
    fn reserved_names_keep_their_roles() {
        let ca = ClusterCa::generate().expect("ca");
        for (name, role) in [
            ("registry", CertRole::Worker),
            ("coordinator", CertRole::Operator),
            ("operator", CertRole::Monitor),
            ("registry-2", CertRole::Registry),
        ] {
            let err = ca
                .issue(name, role, Validity::default())
                .err()
                .unwrap_or_else(|| panic!("{name} as {role} must be refused"));
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(ca
            .issue("alice", CertRole::Operator, Validity::default())
            .is_ok());
    }

    #[test]
    fn certificates_without_a_role_get_the_one_their_name_implies() {
        let ca = ClusterCa::generate().expect("ca");
        let worker = crate::PeerIdentity::of_der(legacy(&ca, "worker-1"));
        assert_eq!(worker.role(), None);
        assert!(worker.acts_as(CertRole::Worker) && worker.acts_as(CertRole::Monitor));
        assert!(!worker.acts_as(CertRole::Operator));
        let err = worker
            .require(&[CertRole::Operator], "cancelling a task")
            .expect_err("not the operator");
        assert!(err.contains("worker-1 is a worker or monitor"), "{err}");
        let operator = crate::PeerIdentity::of_der(legacy(&ca, OPERATOR));
        assert_eq!(operator.role(), Some(CertRole::Operator));
        assert!(operator.acts_as(CertRole::Operator) && !operator.acts_as(CertRole::Worker));
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_that_parse() {
        let ca = ClusterCa::generate().expect("ca");
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        let creds = again.credentials("worker-1").expect("issue");
        assert_eq!(creds.chain.len(), 1);
        assert_eq!(creds.name, "worker-1");
    }
}
