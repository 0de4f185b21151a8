//! The cluster directory (`.wmig` by default): the CA, every identity issued
//! on this machine, and `config.toml` with the addresses of shared services.
//!
//! ```text
//! .wmig/
//!   ca.pem            cluster CA certificate (public; every node needs it)
//!   ca.key            CA private key, 0600 (only where certificates are issued)
//!   certs/NAME.pem    NAME's certificate and private key in one file, 0600
//!   config.toml       e.g. registry = "127.0.0.1:7700"; in a directory made by
//!                     `wmig cert issue`, also identity = "NAME"
//!   issued.toml       every certificate issued here: name, role, serial, validity
//!   revoked.toml      revoked certificates by serial (`wmig cert revoke`)
//! ```
//!
//! `issued.toml` only grows: each issue appends one `[[cert]]` table in a
//! single `O_APPEND` write, so nodes issuing their certificates at the same
//! moment (`wmig up` starts them together) never lose each other's entries.
//! `revoked.toml` is rewritten whole (temporary file + rename), so the
//! servers that watch it never read half a list.
//!
//! A certificate and its key share one file so a single atomic rename
//! publishes both: two processes issuing the same name at once can never leave
//! a certificate next to the other one's key. Every file is written to a
//! temporary name, fsynced and renamed. TOML keeps the config readable and
//! hand-editable; keys this build does not know are preserved on rewrite so
//! roles added later can keep their own settings there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::certs::{
    unix_now, validate_node_name, CertInfo, CertRecord, CertRole, ClusterCa, Credentials, Identity,
    Issued, Validity, OPERATOR,
};
use crate::error::ClusterError;
use crate::revocation::{Revocations, Revoked, RevokedFile};

/// Where the cluster lives unless `--cluster` or `WMIG_CLUSTER` says otherwise.
pub const DEFAULT_CLUSTER_DIR: &str = ".wmig";

/// The node name the registry's certificate carries and clients expect.
pub const REGISTRY_NODE: &str = crate::certs::REGISTRY;

const CONFIG_FILE: &str = "config.toml";
const INDEX_FILE: &str = "issued.toml";
const REVOKED_FILE: &str = "revoked.toml";

/// Where [`ClusterDir::etcd_tls`] wrote etcd's TLS files.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Settings shared by every command run against this cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Address of the registry, written by `wmig registry serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Address of the coordinator, written by `wmig coordinator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Address of the coordinator's HTTP endpoint (`/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The identity this directory was issued for (`wmig cert issue NAME
    /// --out DIR` writes it): what commands run from it present when the
    /// directory holds no operator certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Settings of other roles, kept as they are.
    #[serde(flatten)]
    pub other: toml::Table,
}

/// A cluster directory on disk.
#[derive(Clone, Debug)]
pub struct ClusterDir {
    root: PathBuf,
}

/// The index file's format.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    #[serde(default)]
    cert: Vec<CertRecord>,
}

impl ClusterDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ClusterDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    fn ca_key_path(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    fn identity_path(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(format!("{name}.pem"))
    }

    fn token_path(&self) -> PathBuf {
        self.root.join("operator.token")
    }

    /// The operator's bearer token for the coordinator's HTTP API (what a
    /// browser can present; the CLI uses the operator certificate). Created
    /// on first use, readable by the owner only.
    pub fn operator_token(&self) -> Result<String, ClusterError> {
        let path = self.token_path();
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(&path) {
            Ok(mut file) => {
                let mut raw = [0u8; 24];
                getrandom::fill(&mut raw).map_err(|e| ClusterError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(format!("no randomness for the token: {e}")),
                })?;
                let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                use std::io::Write;
                file.write_all(token.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(ClusterError::io(&path))?;
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let token = self.read_to_string(&path)?.trim().to_owned();
                if token.is_empty() {
                    return Err(ClusterError::BadConfig {
                        path,
                        reason: "the operator token is empty; delete the file and restart the coordinator to make a new one".into(),
                    });
                }
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ClusterError::NotInitialized {
                    dir: self.root.clone(),
                    missing: path,
                })
            }
            Err(e) => Err(ClusterError::Io { path, source: e }),
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.ca_cert_path().exists()
    }

    /// Create the CA and the operator's and registry's identities. Returns
    /// false (and changes nothing) when a CA exists and `force` is not set.
    pub fn init(&self, force: bool) -> Result<bool, ClusterError> {
        if self.is_initialized() && !force {
            return Ok(false);
        }
        fs::create_dir_all(self.root.join("certs")).map_err(ClusterError::io(&self.root))?;
        let ca = ClusterCa::generate()?;
        write_atomic(&self.ca_key_path(), ca.key_pem().as_bytes(), true)?;
        write_atomic(&self.ca_cert_path(), ca.cert_pem().as_bytes(), false)?;
        // A new CA: the old one's certificates and revocations mean nothing.
        for stale in [INDEX_FILE, REVOKED_FILE] {
            match fs::remove_file(self.root.join(stale)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ClusterError::Io {
                        path: self.root.join(stale),
                        source: e,
                    })
                }
            }
        }
        for name in [OPERATOR, REGISTRY_NODE] {
            let issued = ca.issue(name, CertRole::default_for(name), Validity::default())?;
            self.store_identity(&issued.identity)?;
            self.record(&issued.record)?;
        }
        let _ = fs::remove_file(self.token_path());
        self.operator_token()?;
        if !self.root.join(CONFIG_FILE).exists() {
            self.write_config(&ClusterConfig::default())?;
        }
        Ok(true)
    }

    /// The CA, for issuing. Needs `ca.key`.
    pub fn ca(&self) -> Result<ClusterCa, ClusterError> {
        let cert = self.read_to_string(&self.ca_cert_path())?;
        let key = self.read_to_string(&self.ca_key_path())?;
        ClusterCa::from_pem(&cert, &key).map_err(|_| ClusterError::BadPem {
            path: self.ca_key_path(),
            what: "CA key",
        })
    }

    /// Issue a certificate for `name` with `role` and store it under
    /// `certs/`, replacing any earlier one; record it in `issued.toml`.
    pub fn issue(
        &self,
        name: &str,
        role: CertRole,
        validity: Validity,
    ) -> Result<Issued, ClusterError> {
        let issued = self.ca()?.issue(name, role, validity)?;
        self.store_identity(&issued.identity)?;
        self.record(&issued.record)?;
        Ok(issued)
    }

    /// TLS files for etcd members reached at `ips`, written to `out`:
    /// `ca.pem` (this cluster's CA, which members and coordinators trust),
    /// `etcd.pem` and `etcd.key` (a `coordinator` certificate also valid
    /// for those addresses: etcd serves and dials its peers with it).
    /// Coordinators dial etcd with their own `coordinator` certificate, and
    /// etcd admits only certificates of this CA.
    pub fn etcd_tls(
        &self,
        ips: &[std::net::IpAddr],
        validity: Validity,
        out: &Path,
    ) -> Result<EtcdTls, ClusterError> {
        let issued = self
            .ca()?
            .issue_for("coordinator", CertRole::Coordinator, validity, ips)?;
        self.record(&issued.record)?;
        fs::create_dir_all(out).map_err(ClusterError::io(out))?;
        let tls = EtcdTls {
            ca: out.join("ca.pem"),
            cert: out.join("etcd.pem"),
            key: out.join("etcd.key"),
        };
        let ca = self.read_to_string(&self.ca_cert_path())?;
        write_atomic(&tls.ca, ca.as_bytes(), false)?;
        write_atomic(&tls.cert, issued.identity.cert_pem.as_bytes(), false)?;
        write_atomic(&tls.key, issued.identity.key_pem.as_bytes(), true)?;
        Ok(tls)
    }

    /// PEM of the CA certificate and of `name`'s stored certificate with
    /// its key (one file), for clients outside rustls' reach (etcd's gRPC).
    pub fn pem_identity(&self, name: &str) -> Result<(String, String), ClusterError> {
        let ca = self.read_to_string(&self.ca_cert_path())?;
        let id = self.read_to_string(&self.identity_path(name))?;
        Ok((ca, id))
    }

    /// A cluster directory for another machine at `out`: the CA
    /// certificate, a new identity for `name` with `role`, and this
    /// cluster's `config.toml` (the addresses, and `identity = NAME`) — never
    /// the CA key, so that machine can act as `name` and nothing else. `out`
    /// must not hold a cluster yet.
    pub fn export_identity(
        &self,
        name: &str,
        role: CertRole,
        validity: Validity,
        out: &Path,
    ) -> Result<(ClusterDir, Issued), ClusterError> {
        let target = ClusterDir::new(out);
        if target.is_initialized() {
            return Err(ClusterError::BadConfig {
                path: target.ca_cert_path(),
                reason: "a cluster directory is already there; choose an empty --out".into(),
            });
        }
        let issued = self.ca()?.issue(name, role, validity)?;
        self.record(&issued.record)?;
        self.write_export(&target, &issued, false)?;
        Ok((target, issued))
    }

    /// Put `issued` into the directory `target` for another machine.
    /// `replace`: `target` may already hold this cluster (a renewal), whose
    /// certificate for the name is then replaced.
    fn write_export(
        &self,
        target: &ClusterDir,
        issued: &Issued,
        replace: bool,
    ) -> Result<(), ClusterError> {
        let ca_pem = self.read_to_string(&self.ca_cert_path())?;
        if replace && target.is_initialized() {
            let theirs = target.read_to_string(&target.ca_cert_path())?;
            if theirs.trim() != ca_pem.trim() {
                return Err(ClusterError::BadConfig {
                    path: target.ca_cert_path(),
                    reason: "that directory belongs to another cluster (another CA); \
                             choose an empty --out"
                        .into(),
                });
            }
            target.store_identity(&issued.identity)?;
            return Ok(());
        }
        fs::create_dir_all(target.root.join("certs")).map_err(ClusterError::io(&target.root))?;
        write_atomic(&target.ca_cert_path(), ca_pem.as_bytes(), false)?;
        target.store_identity(&issued.identity)?;
        let mut config = self.config()?;
        config.identity = Some(issued.record.name.clone());
        target.write_config(&config)
    }

    /// A fresh certificate for `name` with the role of its current one
    /// (from `issued.toml`, else from `certs/NAME.pem`), valid for
    /// `validity`. Stored in `certs/` here, or with `out` written to the
    /// directory for another machine there (a new one, or one of this
    /// cluster whose certificate for `name` is replaced). The old
    /// certificate stays valid until it expires unless revoked.
    pub fn renew(
        &self,
        name: &str,
        validity: Validity,
        out: Option<&Path>,
    ) -> Result<Issued, ClusterError> {
        validate_node_name(name)?;
        let role = self.current_role(name)?.ok_or_else(|| {
            ClusterError::Index(format!(
                "no certificate was issued to `{name}` from {} (see `wmig cert ls`); issue one \
                 with `wmig cert issue {name} --role ROLE --out DIR`",
                self.root.display()
            ))
        })?;
        let issued = self.ca()?.issue(name, role, validity)?;
        self.record(&issued.record)?;
        match out {
            Some(out) => self.write_export(&ClusterDir::new(out), &issued, true)?,
            None => self.store_identity(&issued.identity)?,
        }
        Ok(issued)
    }

    /// The role of `name`'s newest certificate issued here, else of the one
    /// stored in `certs/` (a certificate without a role: the one its name
    /// implies, a worker for ordinary names).
    fn current_role(&self, name: &str) -> Result<Option<CertRole>, ClusterError> {
        if let Some(r) = self.issued()?.iter().rev().find(|r| r.name == name) {
            return Ok(Some(r.role));
        }
        Ok(self
            .stored_info(name)?
            .map(|info| info.effective_role().unwrap_or(CertRole::Worker)))
    }

    /// What `certs/NAME.pem` says, if it exists.
    fn stored_info(&self, name: &str) -> Result<Option<CertInfo>, ClusterError> {
        let path = self.identity_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ClusterError::Io { path, source: e }),
        };
        use rustls::pki_types::pem::PemObject;
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes()).map_err(|_| {
                ClusterError::BadPem {
                    path: path.clone(),
                    what: "certificate",
                }
            })?;
        Ok(CertInfo::of(&der))
    }

    /// Every certificate issued from this directory, oldest first.
    pub fn issued(&self) -> Result<Vec<CertRecord>, ClusterError> {
        let path = self.root.join(INDEX_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ClusterError::Io { path, source: e }),
        };
        let index: IndexFile = toml::from_str(&text).map_err(|e| ClusterError::BadConfig {
            path,
            reason: format!(
                "{}; each certificate is one [[cert]] table: fix or delete the broken one",
                e.message()
            ),
        })?;
        Ok(index.cert)
    }

    /// Append `record` to `issued.toml` in one write.
    fn record(&self, record: &CertRecord) -> Result<(), ClusterError> {
        let path = self.root.join(INDEX_FILE);
        let entry = toml::to_string(&IndexFile {
            cert: vec![record.clone()],
        })
        .map_err(|e| ClusterError::Index(format!("could not record the certificate: {e}")))?;
        let mut opts = fs::OpenOptions::new();
        opts.append(true).create(true);
        let mut file = opts.open(&path).map_err(ClusterError::io(&path))?;
        file.write_all(format!("\n{entry}").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(ClusterError::io(&path))
    }

    /// Where the revocation list lives.
    pub fn revocations_path(&self) -> PathBuf {
        self.root.join(REVOKED_FILE)
    }

    /// The revocation list, for a server to consult (it reloads itself when
    /// the file changes).
    pub fn revocations(&self) -> Arc<Revocations> {
        Revocations::open(self.revocations_path())
    }

    /// The certificates revoked so far.
    pub fn revoked(&self) -> Result<Vec<Revoked>, ClusterError> {
        let path = self.revocations_path();
        match fs::read_to_string(&path) {
            Ok(text) => RevokedFile::parse(&text)
                .map(|f| f.revoked)
                .map_err(|reason| ClusterError::BadConfig { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ClusterError::Io { path, source: e }),
        }
    }

    /// Revoke `name`'s certificates: the one with `serial`, or else every
    /// one issued to `name` here (`issued.toml`, and `certs/NAME.pem`) that is
    /// not revoked yet. Returns what was added to `revoked.toml`; servers
    /// sharing this directory refuse those certificates from their next
    /// handshake or request on.
    pub fn revoke(&self, name: &str, serial: Option<&str>) -> Result<Vec<Revoked>, ClusterError> {
        validate_node_name(name)?;
        let mut list = self.revoked()?;
        let mut serials: Vec<String> = match serial {
            Some(s) => vec![s.trim().trim_start_matches("0x").to_ascii_lowercase()],
            None => {
                let mut all: Vec<String> = self
                    .issued()?
                    .into_iter()
                    .filter(|r| r.name == name)
                    .map(|r| r.serial)
                    .collect();
                if let Some(info) = self.stored_info(name)? {
                    all.push(info.serial);
                }
                all
            }
        };
        serials.sort();
        serials.dedup();
        if serials.is_empty() {
            return Err(ClusterError::Index(format!(
                "no certificate issued to `{name}` is known in {} (neither in {INDEX_FILE} nor in \
                 certs/); `wmig cert ls` lists what was issued here, and --serial HEX revokes \
                 one issued elsewhere",
                self.root.display()
            )));
        }
        let now = unix_now();
        let added: Vec<Revoked> = serials
            .into_iter()
            .filter(|s| !list.iter().any(|r| &r.serial == s))
            .map(|serial| Revoked {
                serial,
                name: name.to_owned(),
                revoked_at: now,
            })
            .collect();
        if added.is_empty() {
            return Ok(added);
        }
        list.extend(added.iter().cloned());
        let body = toml::to_string(&RevokedFile { revoked: list }).map_err(|e| {
            ClusterError::Index(format!("could not write the revocation list: {e}"))
        })?;
        let text = format!(
            "# Revoked certificates (`wmig cert revoke`); the coordinator and the registry\n\
             # reload this file when it changes and refuse these serial numbers.\n{body}"
        );
        write_atomic(&self.revocations_path(), text.as_bytes(), false)?;
        Ok(added)
    }

    /// The identity commands run from this directory present: the
    /// operator's where this directory can be the operator (it holds the CA
    /// key or the operator's certificate), else the identity it was issued
    /// for (`identity` in config.toml), else the operator's (whose absence
    /// the error then names).
    pub fn client_identity(&self) -> Result<String, ClusterError> {
        if self.ca_key_path().exists() || self.identity_path(OPERATOR).exists() {
            return Ok(OPERATOR.to_owned());
        }
        Ok(self
            .config()?
            .identity
            .unwrap_or_else(|| OPERATOR.to_owned()))
    }

    fn store_identity(&self, id: &Identity) -> Result<(), ClusterError> {
        let both = format!("{}{}", id.cert_pem, id.key_pem);
        fs::create_dir_all(self.root.join("certs")).map_err(ClusterError::io(&self.root))?;
        write_atomic(&self.identity_path(&id.name), both.as_bytes(), true)
    }

    /// Credentials for `name`: its stored identity, issued on first use
    /// (with the role its name implies, [`CertRole::default_for`]) when the
    /// CA key is present.
    pub fn credentials(&self, name: &str) -> Result<Credentials, ClusterError> {
        self.credentials_as(name, CertRole::default_for(name))
    }

    /// Credentials for `name`: its stored identity, issued with `role` on
    /// first use when the CA key is present. Where the CA key is, a stored
    /// certificate that expired is renewed (same role) rather than
    /// presented: the local cluster keeps working past the 90 days.
    pub fn credentials_as(&self, name: &str, role: CertRole) -> Result<Credentials, ClusterError> {
        validate_node_name(name)?;
        let ca_pem = self.read_to_string(&self.ca_cert_path())?;
        let path = self.identity_path(name);
        let both = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.ca_key_path().exists() {
                    return Err(ClusterError::NoIdentity {
                        name: name.to_owned(),
                        dir: self.root.clone(),
                    });
                }
                let id = self.issue(name, role, Validity::default())?.identity;
                format!("{}{}", id.cert_pem, id.key_pem)
            }
            Err(e) => return Err(ClusterError::Io { path, source: e }),
        };
        let load = |both: String| {
            let id = Identity {
                name: name.to_owned(),
                cert_pem: both.clone(),
                key_pem: both,
            };
            Credentials::from_pem(name, ca_pem.as_bytes(), &id).map_err(|what| {
                ClusterError::BadPem {
                    path: self.identity_path(name),
                    what,
                }
            })
        };
        let creds = load(both)?;
        if let (Some(problem @ crate::certs::TimeProblem::Expired { .. }), true) =
            (creds.time_problem(), self.ca_key_path().exists())
        {
            let role = creds
                .info()
                .map_or(role, |i| i.effective_role().unwrap_or(role));
            tracing::warn!(%name, %problem, "the stored certificate expired; issuing a fresh one");
            let id = self.issue(name, role, Validity::default())?.identity;
            return load(format!("{}{}", id.cert_pem, id.key_pem));
        }
        Ok(creds)
    }

    /// The config file; an absent file is an empty config.
    pub fn config(&self) -> Result<ClusterConfig, ClusterError> {
        let path = self.root.join(CONFIG_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ClusterError::BadConfig {
                path,
                reason: e.message().to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterConfig::default()),
            Err(e) => Err(ClusterError::Io { path, source: e }),
        }
    }

    /// Read, change and atomically rewrite the config file.
    pub fn update_config(&self, f: impl FnOnce(&mut ClusterConfig)) -> Result<(), ClusterError> {
        let mut config = self.config()?;
        f(&mut config);
        self.write_config(&config)
    }

    fn write_config(&self, config: &ClusterConfig) -> Result<(), ClusterError> {
        let path = self.root.join(CONFIG_FILE);
        let body = toml::to_string(config).map_err(|e| ClusterError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let text =
            format!("# wmig cluster settings; flags and WMIG_* variables override them.\n{body}");
        write_atomic(&path, text.as_bytes(), false)
    }

    fn read_to_string(&self, path: &Path) -> Result<String, ClusterError> {
        fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClusterError::NotInitialized {
                    dir: self.root.clone(),
                    missing: path.to_owned(),
                }
            } else {
                ClusterError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })
    }
}

/// Write `bytes` to a temporary file beside `path`, fsync it, rename it over
/// `path` and fsync the directory: readers see the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), ClusterError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = opts.open(&tmp).map_err(ClusterError::io(&tmp))?;
    file.write_all(bytes).map_err(ClusterError::io(&tmp))?;
    file.sync_all().map_err(ClusterError::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(ClusterError::io(path))?;
    if let Ok(d) = fs::File::open(dir) {
        // Best effort: makes the rename durable; not all platforms allow it.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_issues_on_demand() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir::new(tmp.path().join("c"));
        assert!(dir.init(false).expect("init"));
        assert!(!dir.init(false).expect("second init is a no-op"));
        assert!(dir.credentials(OPERATOR).is_ok());
        assert!(dir.credentials("worker-7").is_ok());
        assert!(tmp.path().join("c/certs/worker-7.pem").exists());
        assert!(matches!(
            dir.credentials("Bad Name"),
            Err(ClusterError::InvalidNodeName { .. })
        ));
    }

    #[test]
    fn issuing_is_recorded_and_revoking_names_the_serials() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir::new(tmp.path().join("c"));
        dir.init(false).expect("init");
        let w = dir.credentials("worker-1").expect("worker-1");
        let m = dir
            .credentials_as("mon-1", CertRole::Monitor)
            .expect("mon-1");
        let issued = dir.issued().expect("index");
        let names: Vec<(&str, CertRole)> =
            issued.iter().map(|r| (r.name.as_str(), r.role)).collect();
        assert_eq!(
            names,
            [
                ("operator", CertRole::Operator),
                ("registry", CertRole::Registry),
                ("worker-1", CertRole::Worker),
                ("mon-1", CertRole::Monitor),
            ]
        );
        assert_eq!(m.info().and_then(|i| i.role), Some(CertRole::Monitor));
        let revoked = dir.revoke("worker-1", None).expect("revoke");
        assert_eq!(revoked.len(), 1);
        assert_eq!(
            Some(&revoked[0].serial),
            w.info().map(|i| i.serial).as_ref()
        );
        assert_eq!(dir.revoked().expect("list"), revoked);
        assert!(
            dir.revoke("nobody", None).is_err(),
            "unknown names are named"
        );
        // A renewal keeps the role and gets a new serial.
        let renewed = dir.renew("mon-1", Validity::days(3), None).expect("renew");
        assert_eq!(renewed.record.role, CertRole::Monitor);
        assert_ne!(Some(renewed.record.serial), m.info().map(|i| i.serial));
    }

    #[test]
    fn where_the_ca_key_is_an_expired_stored_certificate_is_renewed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir::new(tmp.path().join("c"));
        dir.init(false).expect("init");
        dir.issue("mon-2", CertRole::Monitor, Validity::days(0))
            .expect("issue expired");
        let creds = dir.credentials("mon-2").expect("load");
        assert_eq!(creds.time_problem(), None);
        assert_eq!(creds.info().and_then(|i| i.role), Some(CertRole::Monitor));
    }

    #[test]
    fn an_issued_directory_acts_as_its_identity_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = ClusterDir::new(tmp.path().join("home"));
        home.init(false).expect("init");
        assert_eq!(home.client_identity().expect("id"), OPERATOR);
        let out = tmp.path().join("other");
        let (other, issued) = home
            .export_identity("mon-1", CertRole::Monitor, Validity::default(), &out)
            .expect("export");
        assert_eq!(issued.record.role, CertRole::Monitor);
        assert!(!out.join("ca.key").exists());
        assert_eq!(other.client_identity().expect("id"), "mon-1");
        assert!(other.credentials("mon-1").is_ok());
        assert!(matches!(
            other.credentials(OPERATOR),
            Err(ClusterError::NoIdentity { .. })
        ));
        // Renewed into that directory: its certificate is replaced.
        let before = fs::read_to_string(out.join("certs/mon-1.pem")).expect("pem");
        home.renew("mon-1", Validity::default(), Some(&out))
            .expect("renew into it");
        let after = fs::read_to_string(out.join("certs/mon-1.pem")).expect("pem");
        assert_ne!(before, after);
        // Not into another cluster's directory.
        let stranger = ClusterDir::new(tmp.path().join("stranger"));
        stranger.init(false).expect("init");
        assert!(home
            .renew("mon-1", Validity::default(), Some(stranger.path()))
            .is_err());
    }

    #[test]
    fn missing_cluster_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir::new(tmp.path().join("none"));
        let err = dir.credentials(OPERATOR).expect_err("no cluster");
        assert!(err.to_string().contains("wmig init"), "{err}");
    }

    #[test]
    fn config_keeps_unknown_keys() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir::new(tmp.path());
        fs::write(tmp.path().join(CONFIG_FILE), "future_setting = \"kept\"\n").expect("write");
        dir.update_config(|c| c.registry = Some("127.0.0.1:9".into()))
            .expect("update");
        let c = dir.config().expect("read");
        assert_eq!(c.registry.as_deref(), Some("127.0.0.1:9"));
        assert!(c.other.contains_key("future_setting"));
        fs::write(tmp.path().join(CONFIG_FILE), "registry = [").expect("write");
        assert!(matches!(dir.config(), Err(ClusterError::BadConfig { .. })));
    }
}
