//! Wire messages, one module per protocol, all carried by [`crate::frame`].
//!
//! Each protocol is a request enum and a response enum of its own (the
//! registry's in [`registry`], the control plane's in [`control`], the
//! worker-to-worker live migration's in [`live`]) so a role only decodes
//! what it serves. What every protocol shares lives here: the error a node
//! sends back instead of a response, and the ALPN names that keep a client of
//! one protocol from talking to a server of another.

use serde::{Deserialize, Serialize};

pub mod control;
pub mod live;
pub mod registry;

#[cfg(test)]
mod fuzz;

/// ALPN of the registry protocol; the version matches
/// [`crate::frame::PROTOCOL_VERSION`].
pub const REGISTRY_ALPN: &[u8] = b"wmig-registry/1";

/// ALPN of the control protocol (coordinator ↔ workers, monitors, operators).
pub const CONTROL_ALPN: &[u8] = b"wmig-control/1";

/// What kind of failure a [`RemoteError`] reports, so a client can react
/// without parsing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request frame could not be decoded.
    Malformed,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// An object or frame exceeds a configured limit.
    TooLarge,
    /// Bytes do not hash to the hash they were sent under.
    HashMismatch,
    /// An uploaded bundle is not a valid WebAssembly module.
    NotWasm,
    /// No object, name or checkpoint by that key.
    NotFound,
    /// A manifest references chunks the registry does not hold.
    MissingChunks,
    /// A name, tag, id or field of the request is not acceptable.
    Invalid,
    /// The request contradicts what is stored (e.g. a reused checkpoint seq).
    Conflict,
    /// The request did not arrive in time.
    Timeout,
    /// The server failed; details are in its log, not on the wire.
    Internal,
    /// This coordinator is a follower (or lost its leadership): ask the
    /// leader, which the message names.
    NotLeader,
    /// This node cannot serve the request now (it is catching up, or a
    /// peer it needs is unreachable); another node or a later try can.
    Unavailable,
}

/// The answer a node sends instead of a response. `message` is written for
/// humans, says what was wrong and what to do, and never carries internal
/// state (paths, Debug output).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

/// One revoked certificate, as `revoked.toml` lists it; passed from the
/// operator to the coordinator and on to the registry and the workers, so
/// that servers on other machines refuse it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCert {
    /// The certificate's serial number in lowercase hex.
    pub serial: String,
    /// The name it was issued to.
    pub name: String,
    /// Unix seconds.
    pub revoked_at: i64,
}
