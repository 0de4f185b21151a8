//! Fuzz harness of the frame codec: every byte a peer sends passes through
//! [`frame::frame_len`] and [`frame::decode_body`] before anything else looks
//! at it, so these must answer any input with a message or a named
//! [`FrameError`]: no panic, no allocation sized by an unchecked length
//! prefix, and no message that decodes differently once re-encoded.
//!
//! Inputs: arbitrary bytes, arbitrary headers in front of arbitrary bodies,
//! and valid frames truncated, bit-flipped or with huge varints spliced in.
//! The wire enums themselves are fuzzed in `wire/fuzz.rs`; here the message
//! is a local type that uses every postcard shape they use.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;
use crate::fuzzing::{self, check_frame, check_frame_error, huge, mutations};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping,
    Data {
        id: u64,
        name: String,
        tags: Vec<String>,
        blob: Vec<u8>,
        pair: Option<(u32, i64)>,
    },
    Map(BTreeMap<String, u32>),
    Wide(u128, f64, bool, char),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        Just(Msg::Ping),
        (
            any::<u64>(),
            ".{0,16}",
            vec(".{0,4}", 0..4),
            vec(any::<u8>(), 0..64),
            any::<Option<(u32, i64)>>()
        )
            .prop_map(|(id, name, tags, blob, pair)| Msg::Data {
                id,
                name,
                tags,
                blob,
                pair
            }),
        btree_map(".{0,6}", any::<u32>(), 0..4).prop_map(Msg::Map),
        // NaN != NaN: keep floats finite so round trips compare equal.
        (any::<u128>(), -1e9f64..1e9, any::<bool>(), any::<char>())
            .prop_map(|(a, b, c, d)| Msg::Wide(a, b, c, d)),
    ]
}

proptest! {
    #![proptest_config(fuzzing::config())]

    #[test]
    fn arbitrary_bytes_are_a_message_or_a_named_error(bytes in vec(any::<u8>(), 0..96)) {
        check_frame::<Msg>(&bytes)?;
    }

    /// A plausible header (any length, mostly the right version) in front of
    /// an arbitrary body: reaches the body decoder far more often than
    /// random bytes do.
    #[test]
    fn arbitrary_bodies_behind_plausible_headers(
        len in prop_oneof![0u32..128, any::<u32>()],
        version in prop_oneof![4 => Just(PROTOCOL_VERSION), 1 => any::<u8>()],
        body in vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.push(version);
        bytes.extend_from_slice(&body);
        check_frame::<Msg>(&bytes)?;
        // The same body under its exact length.
        let exact = u32::try_from(body.len() + 1).expect("small");
        bytes[..4].copy_from_slice(&exact.to_le_bytes());
        check_frame::<Msg>(&bytes)?;
    }

    #[test]
    fn valid_frames_round_trip_back_to_back(msgs in vec(msg(), 1..4)) {
        let mut buf = Vec::new();
        for m in &msgs {
            encode_into(m, &mut buf).expect("encodes");
        }
        let mut at = 0;
        for m in &msgs {
            let (back, used) = decode::<Msg>(&buf[at..], MAX_FRAME_LEN).expect("decodes");
            prop_assert_eq!(&back, m);
            at += used;
        }
        prop_assert_eq!(at, buf.len());
    }

    #[test]
    fn truncated_frames_are_truncated(m in msg(), cut in any::<usize>()) {
        let bytes = encode(&m).expect("encodes");
        let cut = cut % bytes.len();
        match decode::<Msg>(&bytes[..cut], MAX_FRAME_LEN) {
            Err(FrameError::Truncated { have, need }) => {
                prop_assert_eq!(have, cut);
                prop_assert_eq!(need, if cut < 4 { 4 } else { bytes.len() });
            }
            other => prop_assert!(false, "cut at {}: {:?}", cut, other),
        }
    }

    #[test]
    fn mutated_frames_are_a_message_or_a_named_error(m in msg(), ms in mutations()) {
        let mut bytes = encode(&m).expect("encodes");
        fuzzing::apply(&mut bytes, 0, &ms);
        check_frame::<Msg>(&bytes)?;
    }

    /// Damage aimed at the body only, under a corrected length prefix: the
    /// header stays valid, so every case exercises the postcard decoder.
    #[test]
    fn mutated_bodies_are_a_message_or_a_named_error(m in msg(), ms in mutations()) {
        let mut bytes = encode(&m).expect("encodes");
        fuzzing::apply(&mut bytes, HEADER_LEN, &ms);
        let len = u32::try_from(bytes.len() - 4).expect("small");
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        check_frame::<Msg>(&bytes)?;
    }

    /// A length above the limit is refused from the prefix alone, however
    /// few bytes follow it: nothing is buffered for it.
    #[test]
    fn oversized_lengths_are_refused_from_the_prefix(
        len in huge(),
        max in prop_oneof![Just(MAX_FRAME_LEN), 1usize..4096],
        tail in vec(any::<u8>(), 0..8),
    ) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        prop_assume!(len as usize > max);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let err = decode::<Msg>(&bytes, max).expect_err("too large");
        prop_assert_eq!(&err, &FrameError::TooLarge { len: len as usize, max });
        prop_assert_eq!(frame_len(len.to_le_bytes(), max), Err(err.clone()));
        check_frame_error(&err, &bytes)?;
    }

    #[test]
    fn a_foreign_version_is_named(m in msg(), version in any::<u8>()) {
        prop_assume!(version != PROTOCOL_VERSION);
        let mut bytes = encode(&m).expect("encodes");
        bytes[4] = version;
        prop_assert_eq!(
            decode::<Msg>(&bytes, MAX_FRAME_LEN).map(|(m, _)| m),
            Err(FrameError::UnsupportedVersion { found: version, supported: PROTOCOL_VERSION })
        );
    }
}
