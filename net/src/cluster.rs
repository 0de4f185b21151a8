//! The cluster directory (`.wmig` by default): the CA, every identity issued
//! on this machine, and `config.toml` with the addresses of shared services.
//!
//! ```text
//! .wmig/
//!   ca.pem            cluster CA certificate (public; every node needs it)
//!   ca.key            CA private key, 0600 (only where certificates are issued)
//!   certs/NAME.pem    NAME's certificate and private key in one file, 0600
//!   config.toml       e.g. registry = "127.0.0.1:7700"
//! ```
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

use serde::{Deserialize, Serialize};

use crate::certs::{validate_node_name, ClusterCa, Credentials, Identity, OPERATOR};
use crate::error::ClusterError;

/// Where the cluster lives unless `--cluster` or `WMIG_CLUSTER` says otherwise.
pub const DEFAULT_CLUSTER_DIR: &str = ".wmig";

/// The node name the registry's certificate carries and clients expect.
pub const REGISTRY_NODE: &str = "registry";

const CONFIG_FILE: &str = "config.toml";

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
    /// Settings of other roles, kept as they are.
    #[serde(flatten)]
    pub other: toml::Table,
}

/// A cluster directory on disk.
#[derive(Clone, Debug)]
pub struct ClusterDir {
    root: PathBuf,
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
        for name in [OPERATOR, REGISTRY_NODE] {
            self.store_identity(&ca.issue(name)?)?;
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

    /// Issue a certificate for `name` and store it under `certs/`, replacing
    /// any earlier one. The control plane calls this for each node it starts.
    pub fn issue(&self, name: &str) -> Result<Identity, ClusterError> {
        let id = self.ca()?.issue(name)?;
        self.store_identity(&id)?;
        Ok(id)
    }

    /// A cluster directory for another machine at `out`: the CA
    /// certificate, a new identity for `name`, and this cluster's
    /// `config.toml` (the addresses) — never the CA key, so that machine can
    /// act as `name` and nothing else. `out` must not hold a cluster yet.
    pub fn export_identity(&self, name: &str, out: &Path) -> Result<ClusterDir, ClusterError> {
        let target = ClusterDir::new(out);
        if target.is_initialized() {
            return Err(ClusterError::BadConfig {
                path: target.ca_cert_path(),
                reason: "a cluster directory is already there; choose an empty --out".into(),
            });
        }
        let id = self.ca()?.issue(name)?;
        fs::create_dir_all(out.join("certs")).map_err(ClusterError::io(out))?;
        let ca_pem = self.read_to_string(&self.ca_cert_path())?;
        write_atomic(&target.ca_cert_path(), ca_pem.as_bytes(), false)?;
        target.store_identity(&id)?;
        target.write_config(&self.config()?)?;
        Ok(target)
    }

    fn store_identity(&self, id: &Identity) -> Result<(), ClusterError> {
        let both = format!("{}{}", id.cert_pem, id.key_pem);
        fs::create_dir_all(self.root.join("certs")).map_err(ClusterError::io(&self.root))?;
        write_atomic(&self.identity_path(&id.name), both.as_bytes(), true)
    }

    /// Credentials for `name`: its stored identity, issued on first use when
    /// the CA key is present.
    pub fn credentials(&self, name: &str) -> Result<Credentials, ClusterError> {
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
                let id = self.issue(name)?;
                format!("{}{}", id.cert_pem, id.key_pem)
            }
            Err(e) => return Err(ClusterError::Io { path, source: e }),
        };
        let id = Identity {
            name: name.to_owned(),
            cert_pem: both.clone(),
            key_pem: both,
        };
        Credentials::from_pem(name, ca_pem.as_bytes(), &id).map_err(|what| ClusterError::BadPem {
            path: self.identity_path(name),
            what,
        })
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
