//! Framing: how one wire message is cut out of a byte stream.
//!
//! Every message of every wmig protocol travels as one frame:
//!
//! ```text
//! | len: u32 LE | version: u8 | body: postcard, len - 1 bytes |
//! ```
//!
//! `len` counts the version byte and the body, so a reader knows how much to
//! buffer before it decodes anything, and refuses a frame larger than its
//! limit before allocating for it. The version byte comes first so an old peer
//! can name the version it does not speak instead of misreading the body.
//!
//! A message may announce a *payload* (bundle bytes, chunk bytes) that follows
//! its frame raw on the same stream; the message carries the payload's length.
//! Bulk data therefore never passes through postcard, and the frame limit only
//! has to fit control data.
//!
//! Everything here is generic over the message type: the registry's enums live
//! in [`crate::wire::registry`], and other roles add their own enums over the
//! same framing. Decoding is total: malformed, truncated, oversized or
//! unknown-version input is a [`FrameError`], never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The protocol version this build speaks, written into every frame.
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes before the body: the length prefix and the version byte.
pub const HEADER_LEN: usize = 5;

/// Default upper bound for `len`: control messages (hash lists, manifests)
/// fit easily; bulk data travels as payload after the frame.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded. Messages are safe to show to
/// a peer: they never contain internal state, only what was wrong with the
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame is truncated: {have} bytes of a {need}-byte frame arrived before the stream ended"
    )]
    Truncated { have: usize, need: usize },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame has length 0: a frame carries at least its version byte")]
    Empty,
    #[error(
        "peer speaks wmig protocol version {found}, this node speaks version {supported}; \
         run the same wmig release on every node"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("malformed frame body: {0}")]
    Malformed(String),
    #[error("malformed frame body: {0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Append one frame holding `msg` to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, PROTOCOL_VERSION]);
    let taken = std::mem::take(out);
    *out = postcard::to_extend(msg, taken).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - start - 4;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// One frame holding `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(64);
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Read the length prefix: how many bytes follow it. Refuses lengths above
/// `max` and zero before anything is allocated.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decode the part after the length prefix: version byte and body. The body
/// must be exactly one message.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let (&version, body) = bytes.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decode one frame from the front of `buf`: the message and the bytes it
/// used. A buffer that ends inside the frame is [`FrameError::Truncated`].
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<(T, usize), FrameError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Err(FrameError::Truncated {
            have: buf.len(),
            need: 4,
        });
    };
    let len = frame_len(*prefix, max)?;
    let need = 4 + len;
    let Some(frame) = buf.get(4..need) else {
        return Err(FrameError::Truncated {
            have: buf.len(),
            need,
        });
    };
    Ok((decode_body(frame)?, need))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping,
        Data { id: u64, name: String },
    }

    fn sample() -> Msg {
        Msg::Data {
            id: 7,
            name: "seven".into(),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let bytes = encode(&sample()).expect("encodes");
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(bytes[4], PROTOCOL_VERSION);
        let (msg, used) = decode::<Msg>(&bytes, MAX_FRAME_LEN).expect("decodes");
        assert_eq!(msg, sample());
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn frames_follow_each_other() {
        let mut buf = Vec::new();
        encode_into(&Msg::Ping, &mut buf).expect("encodes");
        encode_into(&sample(), &mut buf).expect("encodes");
        let (a, used) = decode::<Msg>(&buf, MAX_FRAME_LEN).expect("first");
        let (b, _) = decode::<Msg>(&buf[used..], MAX_FRAME_LEN).expect("second");
        assert_eq!((a, b), (Msg::Ping, sample()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample()).expect("encodes");
        for cut in 0..bytes.len() {
            match decode::<Msg>(&bytes[..cut], MAX_FRAME_LEN) {
                Err(FrameError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&sample()).expect("encodes");
        bytes[4] = 9;
        assert_eq!(
            decode::<Msg>(&bytes, MAX_FRAME_LEN).map(|(m, _)| m),
            Err(FrameError::UnsupportedVersion {
                found: 9,
                supported: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn oversize_and_empty_frames_are_refused_before_reading() {
        assert_eq!(
            frame_len(100u32.to_le_bytes(), 10),
            Err(FrameError::TooLarge { len: 100, max: 10 })
        );
        assert_eq!(frame_len([0; 4], 10), Err(FrameError::Empty));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let mut bytes = encode(&Msg::Ping).expect("encodes");
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode::<Msg>(&bytes, MAX_FRAME_LEN).map(|(m, _)| m),
            Err(FrameError::TrailingBytes(1))
        );
        let junk = [3, 0, 0, 0, PROTOCOL_VERSION, 0xff, 0xff];
        assert!(matches!(
            decode::<Msg>(&junk, MAX_FRAME_LEN),
            Err(FrameError::Malformed(_))
        ));
    }
}

#[cfg(test)]
#[path = "frame_fuzz.rs"]
mod fuzz;
