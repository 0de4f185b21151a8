//! The cluster's certificate authority and the identities it issues.
//!
//! Layout of trust: one self-signed CA per cluster (`wmig init`); every node
//! (registry, coordinator, each worker) and the operator get a leaf
//! certificate signed by it, valid for both client and server use because
//! every role both dials and serves. A leaf names its holder as its only
//! subject alternative name (a DNS name such as `registry` or `worker-3`), and
//! a client checks the server against the name it expects rather than against
//! an address: addresses and ports are chosen at run time (127.0.0.1 port 0
//! in tests), names are not.
//!
//! The CA is rebuilt from its key and fixed parameters when it issues, so
//! issuing needs no X.509 parser. Keys are ECDSA P-256 (rcgen's default, fast
//! with ring). Certificates do not expire; rotating means a new `wmig init`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ClusterError;

/// Name of the operator identity the CLI uses.
pub const OPERATOR: &str = "operator";

const CA_COMMON_NAME: &str = "wmig cluster CA";

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

    /// Issue a certificate for node (or operator) `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> Result<Identity, ClusterError> {
        validate_node_name(name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Credentials for `name` straight from this CA (tests, embedded clusters).
    pub fn credentials(&self, name: &str) -> Result<Credentials, ClusterError> {
        let id = self.issue(name)?;
        Credentials::from_pem(name, self.cert_pem.as_bytes(), &id).map_err(|what| {
            ClusterError::BadPem {
                path: format!("<issued {name}>").into(),
                what,
            }
        })
    }
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

    #[test]
    fn a_reloaded_ca_issues_certificates_that_parse() {
        let ca = ClusterCa::generate().expect("ca");
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        let creds = again.credentials("worker-1").expect("issue");
        assert_eq!(creds.chain.len(), 1);
        assert_eq!(creds.name, "worker-1");
    }
}
