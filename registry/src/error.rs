//! Errors by layer: [`StoreError`] (storage backends), [`RegistryError`] (the
//! request logic; each maps to a wire [`ErrorCode`] and a message safe to send
//! to a peer) and [`ClientError`] (what a caller of the client library sees).

use std::io;
use std::path::PathBuf;

use wmig_net::NetError;
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::{Hash, TaskId};

/// A storage backend failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("object {0} is not stored")]
    NotFound(Hash),
    #[error("object storage {url}: {reason}")]
    Remote { url: String, reason: String },
    #[error("bytes sent as {claimed} hash to {actual}; nothing was stored")]
    HashMismatch { claimed: Hash, actual: Hash },
    #[error("stored object {hash} is corrupt: its bytes hash to {actual}")]
    Corrupt { hash: Hash, actual: Hash },
    #[error("stored record {key} is corrupt: its integrity hash does not match")]
    CorruptRef { key: String },
    #[error(
        "{path} holds store format `{found}`, this wmig reads `{supported}`; \
         use the wmig release that created it or another --data directory"
    )]
    UnknownFormat {
        path: PathBuf,
        found: String,
        supported: &'static str,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

/// Why the registry refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} of {len} bytes exceeds the registry's limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the upload is not a WebAssembly module: {0}")]
    NotWasm(String),
    #[error("no bundle named {0}; `wmig registry ls` lists what is stored")]
    UnknownName(String),
    #[error("task {task} has no checkpoint{}", seq.map(|s| format!(" with seq {s}")).unwrap_or_default())]
    NoManifest { task: TaskId, seq: Option<u64> },
    #[error(
        "the manifest references {count} chunk(s) the registry does not hold (first: {first}); \
         upload them before committing the checkpoint"
    )]
    MissingChunks { count: usize, first: Hash },
    #[error("{0}")]
    Conflict(String),
    /// This node cannot do it now; another node or a later try can.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl RegistryError {
    /// The wire error for this failure. Storage failures other than "not
    /// found" and "hash mismatch" are internal: the peer learns that the
    /// server failed, the log learns why.
    pub fn to_remote(&self) -> RemoteError {
        let code = match self {
            RegistryError::TooLarge { .. } => ErrorCode::TooLarge,
            RegistryError::Invalid(_) => ErrorCode::Invalid,
            RegistryError::NotWasm(_) => ErrorCode::NotWasm,
            RegistryError::UnknownName(_) | RegistryError::NoManifest { .. } => ErrorCode::NotFound,
            RegistryError::MissingChunks { .. } => ErrorCode::MissingChunks,
            RegistryError::Conflict(_) => ErrorCode::Conflict,
            RegistryError::Unavailable(_) => ErrorCode::Unavailable,
            RegistryError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            RegistryError::Store(StoreError::HashMismatch { .. }) => ErrorCode::HashMismatch,
            RegistryError::Store(_) | RegistryError::Internal(_) => {
                return RemoteError::new(
                    ErrorCode::Internal,
                    "the registry failed to access its storage; see the registry's log",
                )
            }
        };
        RemoteError::new(code, self.to_string())
    }
}

/// What a client of the registry sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("registry refused the request: {0}")]
    Remote(RemoteError),
    #[error(
        "registry sent an unexpected answer (wanted {expected}); is it the same wmig release?"
    )]
    Unexpected { expected: &'static str },
    #[error("downloaded {what} does not match its hash {hash} (got {actual}); try again")]
    Corrupt {
        what: &'static str,
        hash: Hash,
        actual: Hash,
    },
}

impl ClientError {
    /// The registry's error code, when the registry refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}
