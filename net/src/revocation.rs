//! The cluster's revocation list, `revoked.toml` in the cluster directory,
//! as the servers see it.
//!
//! `wmig cert revoke NAME` adds the serial numbers of NAME's certificates
//! (see [`crate::cluster::ClusterDir::revoke`]). A server that shares the
//! cluster directory holds a [`Revocations`]: it looks at the file's size,
//! modification time and inode on every handshake (a `stat`, no read unless
//! something changed) and at most once a second on requests, so a
//! revocation takes effect without a restart: new connections with a
//! revoked certificate are refused in the handshake (TLS alert
//! `certificate_revoked`), and a connection opened before is closed on its
//! next request.
//!
//! A file that does not parse (a hand edit gone wrong) is reported and the
//! list last read stays in force; a missing file is an empty list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::certs::format_utc;
use crate::identity::PeerIdentity;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// [`crate::certs::serial_hex`] of its serial number.
    pub serial: String,
    /// The name it was issued to (for messages and `wmig cert ls`).
    pub name: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

impl From<wmig_proto::wire::RevokedCert> for Revoked {
    fn from(r: wmig_proto::wire::RevokedCert) -> Revoked {
        Revoked {
            serial: r.serial,
            name: r.name,
            revoked_at: r.revoked_at,
        }
    }
}

impl From<Revoked> for wmig_proto::wire::RevokedCert {
    fn from(r: Revoked) -> wmig_proto::wire::RevokedCert {
        wmig_proto::wire::RevokedCert {
            serial: r.serial,
            name: r.name,
            revoked_at: r.revoked_at,
        }
    }
}

/// Apply revocations that arrived over the network to `list` (off the
/// async threads: it writes a file); returns how many were new. The error
/// is for the local log, with the path; peers get a path-free message.
pub async fn merge_received(
    list: Arc<Revocations>,
    revoked: Vec<wmig_proto::wire::RevokedCert>,
) -> Result<usize, String> {
    let entries: Vec<Revoked> = revoked.into_iter().map(Revoked::from).collect();
    tokio::task::spawn_blocking(move || list.merge(&entries))
        .await
        .map_err(|e| format!("the revocation writer panicked: {e}"))?
}

impl Revoked {
    /// `worker-2's certificate (serial 3f…) was revoked on DATE`.
    pub fn describe(&self) -> String {
        format!(
            "the certificate of {} (serial {}) was revoked on {}",
            self.name,
            self.serial,
            format_utc(self.revoked_at)
        )
    }
}

/// The file's format.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RevokedFile {
    #[serde(default)]
    pub(crate) revoked: Vec<Revoked>,
}

impl RevokedFile {
    pub(crate) fn parse(text: &str) -> Result<RevokedFile, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

#[derive(Default)]
struct State {
    /// The version loaded (`None`: no file).
    stamp: Option<Stamp>,
    by_serial: HashMap<String, Revoked>,
    checked: Option<Instant>,
}

/// A revocation list that reloads itself when its file changes.
pub struct Revocations {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How stale the list may be when a request (rather than a handshake) asks.
const REQUEST_RECHECK: Duration = Duration::from_secs(1);

impl Revocations {
    /// The list in `path` (usually `CLUSTER/revoked.toml`), loaded now.
    pub fn open(path: impl Into<PathBuf>) -> Arc<Revocations> {
        let r = Revocations {
            path: path.into(),
            state: Mutex::new(State::default()),
        };
        {
            let mut state = r.lock();
            r.refresh(&mut state);
        }
        Arc::new(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reload the file if it changed since it was read.
    fn refresh(&self, state: &mut State) {
        state.checked = Some(Instant::now());
        let now = stamp(&self.path);
        if now == state.stamp {
            return;
        }
        let Some(seen) = now else {
            // Removed: nothing is revoked any more.
            state.stamp = None;
            state.by_serial.clear();
            return;
        };
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| RevokedFile::parse(&text));
        match parsed {
            Ok(file) => {
                state.by_serial = file
                    .revoked
                    .into_iter()
                    .map(|r| (r.serial.clone(), r))
                    .collect();
                state.stamp = Some(seen);
                tracing::info!(
                    path = %self.path.display(),
                    revoked = state.by_serial.len(),
                    "loaded the revocation list"
                );
            }
            Err(e) => {
                // Keep the list in force; try again next time.
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "the revocation list does not parse; the one read before stays in force \
                     (fix the file: `wmig cert revoke` rewrites it)"
                );
            }
        }
    }

    /// The revocation of the certificate with `serial`, reading the file
    /// first if it changed (what the handshake asks).
    pub fn lookup(&self, serial: &str) -> Option<Revoked> {
        let mut state = self.lock();
        self.refresh(&mut state);
        state.by_serial.get(serial).cloned()
    }

    /// Like [`Revocations::lookup`], looking at the file at most once a
    /// second (what each request asks).
    pub fn lookup_recent(&self, serial: &str) -> Option<Revoked> {
        let mut state = self.lock();
        if state
            .checked
            .is_none_or(|at| at.elapsed() >= REQUEST_RECHECK)
        {
            self.refresh(&mut state);
        }
        state.by_serial.get(serial).cloned()
    }

    /// Everything revoked, as of the file now.
    pub fn all(&self) -> Vec<Revoked> {
        let mut state = self.lock();
        self.refresh(&mut state);
        let mut all: Vec<Revoked> = state.by_serial.values().cloned().collect();
        all.sort_by(|a, b| a.serial.cmp(&b.serial));
        all
    }

    /// Add `entries` that the file lacks (a revocation made on another
    /// machine, passed on by the coordinator) and take them into force.
    /// Revocations only accumulate, so applying a list twice, or an older
    /// one, changes nothing. Returns how many were new.
    pub fn merge(&self, entries: &[Revoked]) -> Result<usize, String> {
        let mut state = self.lock();
        let mut file = match std::fs::read_to_string(&self.path) {
            Ok(text) => RevokedFile::parse(&text).map_err(|e| {
                format!(
                    "the revocation list {} does not parse ({e}); fix it before more is added",
                    self.path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevokedFile::default(),
            Err(e) => return Err(format!("could not read {}: {e}", self.path.display())),
        };
        let mut added = 0;
        for r in entries {
            let valid = !r.serial.is_empty()
                && r.serial.len() <= 64
                && r.serial.bytes().all(|b| b.is_ascii_hexdigit())
                && r.name.len() <= 256;
            if valid && !file.revoked.iter().any(|have| have.serial == r.serial) {
                file.revoked.push(r.clone());
                added += 1;
            }
        }
        if added == 0 {
            return Ok(0);
        }
        let body = toml::to_string(&file).map_err(|e| e.to_string())?;
        let text = format!(
            "# Revoked certificates (`wmig cert revoke`, here or passed on by the\n\
             # coordinator); servers reload this file when it changes.\n{body}"
        );
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, text.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| format!("could not write {}: {e}", self.path.display()))?;
        self.refresh(&mut state);
        tracing::warn!(added, path = %self.path.display(), "revocations received and in force");
        Ok(added)
    }

    /// The revocation of `peer`'s certificate, if it is revoked: a server
    /// checks this on each request of a connection opened before the
    /// revocation, and closes the connection with [`Revoked::describe`].
    pub fn of_peer(&self, peer: &PeerIdentity) -> Option<Revoked> {
        self.lookup_recent(peer.serial()?)
    }
}

/// Application close code of a connection closed because its peer's
/// certificate was revoked.
pub const REVOKED_CLOSE_CODE: u32 = 0x7e0;

/// Close `conn` when the certificate of its `peer` was revoked after the
/// handshake (servers call this as each request arrives); true if it did.
/// The client reads the reason: whose certificate, which serial, since when.
pub fn close_if_revoked(
    conn: &quinn::Connection,
    peer: &PeerIdentity,
    list: Option<&Arc<Revocations>>,
) -> bool {
    let Some(revoked) = list.and_then(|l| l.of_peer(peer)) else {
        return false;
    };
    let why = format!(
        "{}; ask the operator for a new identity (`wmig cert issue`)",
        revoked.describe()
    );
    tracing::warn!(peer = %revoked.name, serial = %revoked.serial, "closing the connection of a revoked certificate");
    conn.close(quinn::VarInt::from_u32(REVOKED_CLOSE_CODE), why.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_to_the_file_are_seen_and_bad_edits_ignored() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("revoked.toml");
        let list = Revocations::open(&path);
        assert_eq!(list.lookup("ab"), None, "no file: nothing revoked");
        let write = |text: &str| {
            // As the CLI does: a new file renamed into place.
            let tmp_file = tmp.path().join("next");
            std::fs::write(&tmp_file, text).expect("write");
            std::fs::rename(&tmp_file, &path).expect("rename");
        };
        write("[[revoked]]\nserial = \"ab\"\nname = \"worker-2\"\nrevoked_at = 0\n");
        assert_eq!(list.lookup("ab").map(|r| r.name), Some("worker-2".into()));
        write("[[revoked]]\nserial = ");
        assert!(
            list.lookup("ab").is_some(),
            "a broken file keeps the old list"
        );
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(list.lookup("ab"), None);
    }

    #[test]
    fn merged_revocations_accumulate_and_take_effect() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let list = Revocations::open(tmp.path().join("revoked.toml"));
        let r = |serial: &str, name: &str| Revoked {
            serial: serial.into(),
            name: name.into(),
            revoked_at: 1,
        };
        assert_eq!(list.merge(&[r("ab", "w-1"), r("cd", "w-2")]), Ok(2));
        assert_eq!(list.lookup("cd").map(|r| r.name), Some("w-2".into()));
        // Again, and with one more: only the new one is added.
        assert_eq!(list.merge(&[r("ab", "w-1"), r("ef", "w-3")]), Ok(1));
        assert_eq!(list.all().len(), 3);
        // Nonsense serials are not written.
        assert_eq!(list.merge(&[r("", "x"), r("not hex", "y")]), Ok(0));
        // A reader of the file (another process) sees the same list.
        assert_eq!(Revocations::open(list.path()).all(), list.all());
    }
}
