//! Property tests of the registry messages over the frame codec: every
//! message round-trips, and truncated or corrupted frames are errors, never
//! panics.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::frame::{self, FrameError, MAX_FRAME_LEN};
use crate::fuzzing::{code, hash, manifest};

fn hashes() -> impl Strategy<Value = Vec<Hash>> {
    vec(hash(), 0..40)
}

fn name_tag() -> impl Strategy<Value = NameTag> {
    ("[a-z0-9][a-z0-9._/-]{0,20}", "[a-z0-9][a-z0-9._-]{0,10}")
        .prop_map(|(n, t)| NameTag::new(&n, &t).expect("strategy yields valid names"))
}

fn bundle_ref() -> impl Strategy<Value = BundleRef> {
    prop_oneof![
        hash().prop_map(BundleRef::Hash),
        name_tag().prop_map(BundleRef::Name)
    ]
}

pub(crate) fn revoked() -> impl Strategy<Value = crate::wire::RevokedCert> {
    ("[0-9a-f]{0,40}", ".{0,20}", any::<i64>()).prop_map(|(serial, name, revoked_at)| {
        crate::wire::RevokedCert {
            serial,
            name,
            revoked_at,
        }
    })
}

pub(crate) fn request() -> impl Strategy<Value = RegistryRequest> {
    let chunk = (hash(), any::<u32>()).prop_map(|(hash, len)| ChunkHeader { hash, len });
    prop_oneof![
        (hash(), any::<u64>(), proptest::option::of(name_tag()))
            .prop_map(|(hash, len, name)| RegistryRequest::PutBundle { hash, len, name }),
        bundle_ref().prop_map(|bundle| RegistryRequest::GetBundle { bundle }),
        Just(RegistryRequest::ListBundles),
        hashes().prop_map(|hashes| RegistryRequest::CanStore { hashes }),
        vec(chunk, 0..20).prop_map(|chunks| RegistryRequest::PutChunks { chunks }),
        hashes().prop_map(|hashes| RegistryRequest::GetChunks { hashes }),
        hashes().prop_map(|hashes| RegistryRequest::HasPrefix { hashes }),
        manifest().prop_map(|m| RegistryRequest::PutManifest {
            manifest: Box::new(m)
        }),
        (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(t, seq)| {
            RegistryRequest::GetManifest {
                task: TaskId(t),
                seq,
            }
        }),
        any::<u64>().prop_map(|t| RegistryRequest::ListManifests { task: TaskId(t) }),
        Just(RegistryRequest::Gc),
        Just(RegistryRequest::Stats),
        vec(revoked(), 0..4).prop_map(|revoked| RegistryRequest::Revocations { revoked }),
    ]
}

pub(crate) fn response() -> impl Strategy<Value = RegistryResponse> {
    let lease = proptest::sample::select(vec![
        LeaseStatus::Granted,
        LeaseStatus::AlreadyStored,
        LeaseStatus::Leased,
    ]);
    let count = any::<[u64; 2]>().prop_map(|n| ObjectCount {
        count: n[0],
        bytes: n[1],
    });
    let stats = (count.clone(), count.clone(), count, any::<[u64; 10]>()).prop_map(
        |(bundles, chunks, manifests, n)| RegistryStats {
            bundles,
            chunks,
            manifests,
            names: n[0],
            tasks: n[1],
            leases: LeaseStats {
                active: n[2],
                granted: n[3],
                expired: n[4],
                completed: n[5],
                released: n[6],
            },
            chunks_written: n[7],
            chunks_deduplicated: n[8],
            chunks_referenced: n[9],
        },
    );
    prop_oneof![
        (hash(), any::<u64>(), any::<bool>()).prop_map(|(hash, len, created)| {
            RegistryResponse::BundleStored(BundleStored { hash, len, created })
        }),
        (hash(), any::<u64>()).prop_map(|(hash, len)| RegistryResponse::Bundle { hash, len }),
        vec((hash(), any::<u64>(), vec(name_tag(), 0..3)), 0..5).prop_map(|v| {
            RegistryResponse::Bundles(
                v.into_iter()
                    .map(|(hash, len, names)| BundleInfo { hash, len, names })
                    .collect(),
            )
        }),
        vec(lease, 0..50).prop_map(RegistryResponse::Leases),
        any::<[u64; 2]>().prop_map(|n| RegistryResponse::ChunksStored(PutReport {
            written: n[0],
            already_stored: n[1]
        })),
        vec(any::<u32>(), 0..20).prop_map(|lens| RegistryResponse::Chunks { lens }),
        any::<u64>().prop_map(|stored| RegistryResponse::Prefix { stored }),
        (any::<u64>(), any::<u64>(), vec(any::<u64>(), 0..4)).prop_map(|(t, seq, pruned)| {
            RegistryResponse::ManifestStored(ManifestStored {
                task: TaskId(t),
                seq,
                pruned,
            })
        }),
        manifest().prop_map(|m| RegistryResponse::Manifest(Box::new(m))),
        vec(any::<u64>(), 0..5).prop_map(RegistryResponse::Manifests),
        any::<[u64; 3]>().prop_map(|n| RegistryResponse::Gc(GcReport {
            chunks_removed: n[0],
            bytes_freed: n[1],
            chunks_protected: n[2]
        })),
        stats.prop_map(RegistryResponse::Stats),
        (code(), ".{0,40}").prop_map(|(c, m)| RegistryResponse::Error(RemoteError::new(c, m))),
        any::<u32>().prop_map(|added| RegistryResponse::Revoked { added }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let bytes = frame::encode(&req).expect("encodes");
        let (back, used) = frame::decode::<RegistryRequest>(&bytes, MAX_FRAME_LEN).expect("decodes");
        prop_assert_eq!(back, req);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let bytes = frame::encode(&resp).expect("encodes");
        let (back, _) = frame::decode::<RegistryResponse>(&bytes, MAX_FRAME_LEN).expect("decodes");
        prop_assert_eq!(back, resp);
    }

    #[test]
    fn truncated_frames_are_errors(req in request(), cut in any::<prop::sample::Index>()) {
        let bytes = frame::encode(&req).expect("encodes");
        let cut = cut.index(bytes.len());
        let truncated = frame::decode::<RegistryRequest>(&bytes[..cut], MAX_FRAME_LEN);
        prop_assert!(
            matches!(truncated, Err(FrameError::Truncated { .. })),
            "expected Truncated, got {:?}", truncated
        );
    }

    /// Flipping bytes may still yield a valid (different) message; what must
    /// never happen is a panic, and a damaged header must be named.
    #[test]
    fn corrupted_frames_never_panic(
        resp in response(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..4),
    ) {
        let mut bytes = frame::encode(&resp).expect("encodes");
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = frame::decode::<RegistryResponse>(&bytes, MAX_FRAME_LEN);
        let _ = frame::decode::<RegistryRequest>(&bytes, MAX_FRAME_LEN);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let _ = frame::decode::<RegistryRequest>(&bytes, MAX_FRAME_LEN);
        let _ = frame::decode_body::<RegistryRequest>(&bytes);
        let _ = frame::decode_body::<RegistryResponse>(&bytes);
    }
}

#[test]
fn names_parse_and_print() {
    let n: NameTag = "hello/world".parse().expect("valid");
    assert_eq!(n.to_string(), "hello/world:latest");
    let n: NameTag = "app:v1.2".parse().expect("valid");
    assert_eq!((n.name(), n.tag()), ("app", "v1.2"));
    for bad in [
        "",
        ":x",
        "a:",
        "-a",
        "a b",
        "a:b:c",
        "a:b/c",
        &"x".repeat(129),
    ] {
        assert!(bad.parse::<NameTag>().is_err(), "{bad:?} should be refused");
    }
    let h = Hash::of(b"x");
    assert_eq!(h.to_hex().parse::<BundleRef>(), Ok(BundleRef::Hash(h)));
    assert!(matches!("app".parse::<BundleRef>(), Ok(BundleRef::Name(_))));
}

#[test]
fn a_name_smuggled_past_the_constructor_is_caught_by_validate() {
    let good = NameTag::new("app", "v1").expect("valid");
    let mut bytes = postcard::to_stdvec(&good).expect("encodes");
    // The name's first byte: after its one-byte length.
    bytes[1] = b'/';
    let decoded: NameTag = postcard::from_bytes(&bytes).expect("still decodes");
    assert!(decoded.validate().is_err());
}
