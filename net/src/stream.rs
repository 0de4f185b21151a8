//! Frames and payloads over one QUIC bidirectional stream.
//!
//! Every request is one stream: the client writes a frame (and maybe a raw
//! payload), finishes its side, and reads the answer; the server does the
//! mirror image. These helpers do the reading and writing with the frame
//! limit applied before anything is buffered, and turn quinn's errors into
//! [`NetError`]s that say what happened.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wmig_proto::frame::{self, FrameError};

use crate::error::NetError;

/// Write one frame holding `msg`.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), NetError> {
    let bytes = frame::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Read one frame of at most `max` bytes and decode it.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, NetError> {
    let mut prefix = [0u8; 4];
    read_exact(recv, &mut prefix).await.map_err(|e| match e {
        NetError::Truncated { have, .. } => {
            NetError::Frame(FrameError::Truncated { have, need: 4 })
        }
        other => other,
    })?;
    let len = frame::frame_len(prefix, max)?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body).await.map_err(|e| match e {
        NetError::Truncated { have, .. } => NetError::Frame(FrameError::Truncated {
            have: have + 4,
            need: len + 4,
        }),
        other => other,
    })?;
    Ok(frame::decode_body(&body)?)
}

/// Fill `buf` from the stream; a stream that ends first is
/// [`NetError::Truncated`].
pub async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), NetError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(have)) => Err(NetError::Truncated {
            have,
            need: buf.len(),
        }),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Read a payload of exactly `len` bytes.
pub async fn read_payload(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, NetError> {
    let mut buf = vec![0u8; len];
    read_exact(recv, &mut buf).await?;
    Ok(buf)
}

/// Run `fut`, failing with [`NetError::Timeout`] after `limit`.
pub async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout(limit)),
    }
}

/// How long a transfer of `bytes` may take: `base` plus the time the bytes
/// need at `min_rate` bytes/s. A fixed limit would either cut off large
/// uploads on slow links or let a stalled small request hold a slot for long.
pub fn transfer_limit(base: Duration, bytes: u64, min_rate: u64) -> Duration {
    let extra_ms = bytes.saturating_mul(1000) / min_rate.max(1);
    base.saturating_add(Duration::from_millis(extra_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_limit_grows_with_size() {
        let base = Duration::from_secs(10);
        assert_eq!(transfer_limit(base, 0, 1 << 20), base);
        assert_eq!(
            transfer_limit(base, 8 << 20, 1 << 20),
            base + Duration::from_secs(8)
        );
        assert!(transfer_limit(base, u64::MAX, 0) > base);
    }
}
