//! Allocation bound of every decoder that reads peer or disk input.
//!
//! Postcard prefixes every sequence and string with its length, so a hostile
//! or damaged input can claim 4 GiB in five bytes. The decoders must never
//! size an allocation by such a claim: this test splices huge varints over
//! every position of valid encodings (frames of each wire protocol, a
//! checkpoint file, a bare manifest) and measures, with a counting global
//! allocator, the peak bytes the decoding thread holds. The bound is serde's
//! preallocation cap (1 MiB per sequence being decoded, a few nested at
//! most) plus a small multiple of the input: nothing proportional to a claim.
//!
//! A separate test binary, so the counting allocator affects nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use wmig_proto::checkpoint::{CheckpointFile, Counters, GlobalValue, Manifest, MemoryImage};
use wmig_proto::frame::{self, MAX_FRAME_LEN};
use wmig_proto::wasi::{FdKind, FdSnapshot, WasiSnapshot};
use wmig_proto::wire::control::{
    ControlRequest, ControlResponse, Placement, TaskOptions, TaskSpec, TaskState, TaskView,
};
use wmig_proto::wire::live::{LiveMessage, PageDelta, PageRun};
use wmig_proto::wire::registry::{RegistryRequest, RegistryResponse};
use wmig_proto::{Hash, NodeId, TaskId};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes this thread held while running `f`, above what it held before.
fn peak_of(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ON.with(|on| on.set(true));
    f();
    ON.with(|on| on.set(false));
    PEAK.with(|p| p.get()) as usize
}

const MIB: usize = 1 << 20;

fn bound(input: usize) -> usize {
    4 * MIB + 64 * input
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Every variant of `bytes` with a huge varint written over position `p`,
/// for every `p` at or after `from`.
fn spliced(bytes: &[u8], from: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let claims = [u64::from(u32::MAX), u64::MAX, 1 << 40, 1 << 28];
    (from..bytes.len()).flat_map(move |p| {
        claims.into_iter().map(move |claim| {
            let mut b = bytes.to_vec();
            let v = varint(claim);
            let end = (p + v.len()).min(b.len());
            b.splice(p..end, v);
            b
        })
    })
}

/// Splice over the body of `frame` (length prefix kept consistent) and
/// decode as `T`, checking the bound each time.
fn sweep_frame<T: serde::de::DeserializeOwned>(frame: &[u8]) -> usize {
    let mut n = 0;
    for mut b in spliced(frame, frame::HEADER_LEN) {
        let len = u32::try_from(b.len() - 4).expect("small");
        b[..4].copy_from_slice(&len.to_le_bytes());
        let peak = peak_of(|| {
            let _ = frame::decode::<T>(&b, MAX_FRAME_LEN);
        });
        assert!(
            peak <= bound(b.len()),
            "decoding {} bytes as {} held {peak} bytes",
            b.len(),
            std::any::type_name::<T>()
        );
        n += 1;
    }
    n
}

fn hash(b: u8) -> Hash {
    Hash::of(&[b])
}

fn manifest() -> Manifest {
    Manifest {
        module: hash(1),
        rewriter: 4,
        instrumented: hash(2),
        task: Some(TaskId(7)),
        seq: 3,
        epoch: 1,
        memories: vec![
            MemoryImage {
                name: "memory".into(),
                byte_len: 4 << 16,
                chunks: vec![(0, hash(3)), (2, hash(4))],
            },
            MemoryImage {
                name: "wmig:stack".into(),
                byte_len: 1 << 16,
                chunks: vec![],
            },
        ],
        globals: vec![
            ("g0".into(), GlobalValue::I32(-1)),
            ("g1".into(), GlobalValue::V128(5)),
        ],
        wasi: WasiSnapshot {
            args: vec!["prog".into(), "a".into()],
            env: vec![("K".into(), "V".into())],
            stdin_offset: 1,
            stdout_offset: 2,
            stderr_offset: 3,
            monotonic_ns: 4,
            preopens: vec!["/data".into()],
            fds: vec![
                FdSnapshot {
                    fd: 3,
                    rights_base: 1,
                    rights_inheriting: 2,
                    fdflags: 0,
                    kind: FdKind::Preopen {
                        guest_path: "/data".into(),
                    },
                },
                FdSnapshot {
                    fd: 4,
                    rights_base: 1,
                    rights_inheriting: 2,
                    fdflags: 1,
                    kind: FdKind::File {
                        preopen: 0,
                        path: "a/b".into(),
                        offset: 9,
                        read: true,
                        write: false,
                    },
                },
            ],
        },
        counters: Counters { yields: 5, fuel: 6 },
        files: Vec::new(),
        end: false,
    }
}

fn view() -> TaskView {
    TaskView {
        id: TaskId(1),
        name: "job".into(),
        bundle: hash(5),
        args: vec!["x".into(), "y".into()],
        state: TaskState::Running,
        owner: Some(NodeId("w1".into())),
        epoch: 2,
        checkpoint_seq: Some(3),
        fuel_used: 4,
        exit_code: None,
        failure: Some("f".into()),
        stdout_bytes: 5,
        stderr_bytes: 6,
        started_us: Some(7),
        memory_bytes: None,
        progress: Some((1, 2)),
        files_bytes: Some(8),
        files_limit: Some(9),
        trees: vec![(hash(1), "/data".into())],
    }
}

#[test]
fn decoders_never_allocate_by_a_claimed_length() {
    let spec = TaskSpec {
        bundle: hash(6),
        args: vec!["a".into(), "bb".into()],
        env: BTreeMap::from([("k".into(), "v".into())]),
    };
    let options = TaskOptions {
        name: "n".into(),
        dirs: vec![("/h".into(), "/g".into())],
        memory_limit: Some(1),
        ..TaskOptions::default()
    };
    let mut n = 0;
    let submit = ControlRequest::Submit {
        spec,
        options,
        placement: Placement::Pinned(NodeId("w".into())),
    };
    n += sweep_frame::<ControlRequest>(&frame::encode(&submit).expect("encodes"));
    let tasks = ControlResponse::Tasks(vec![view(), view()]);
    n += sweep_frame::<ControlResponse>(&frame::encode(&tasks).expect("encodes"));
    let put = RegistryRequest::PutManifest {
        manifest: Box::new(manifest()),
    };
    n += sweep_frame::<RegistryRequest>(&frame::encode(&put).expect("encodes"));
    let get = RegistryResponse::Chunks {
        lens: vec![1, 2, 3],
    };
    n += sweep_frame::<RegistryResponse>(&frame::encode(&get).expect("encodes"));
    let delta = PageDelta {
        memory_len: 1 << 20,
        runs: vec![
            PageRun {
                first: 0,
                count: 2,
                zero: false,
            };
            3
        ],
    };
    let fin = LiveMessage::Final {
        manifest: Box::new(manifest()),
        memory: delta.clone(),
        stack: delta,
        paused_at_us: 1,
        captured_us: 2,
    };
    n += sweep_frame::<LiveMessage>(&frame::encode(&fin).expect("encodes"));

    // A checkpoint file: splice over the body and sign it again so the
    // postcard decoder, not the integrity check, sees the claim.
    let file = CheckpointFile {
        manifest: Manifest {
            memories: vec![],
            ..manifest()
        },
        chunks: vec![],
    };
    let bytes = file.encode().expect("encodes");
    let body = &bytes[10..bytes.len() - 32];
    for b in spliced(body, 0) {
        let mut signed = bytes[..10].to_vec();
        signed.extend_from_slice(&b);
        let digest = Hash::of(&signed);
        signed.extend_from_slice(digest.as_bytes());
        let peak = peak_of(|| {
            let _ = CheckpointFile::decode(&signed);
        });
        assert!(peak <= bound(signed.len()), "checkpoint held {peak} bytes");
        n += 1;
    }

    // A bare manifest (the registry's stored records hold one).
    let bytes = postcard::to_stdvec(&manifest()).expect("encodes");
    for b in spliced(&bytes, 0) {
        let peak = peak_of(|| {
            let _ = postcard::from_bytes::<Manifest>(&b);
        });
        assert!(peak <= bound(b.len()), "manifest held {peak} bytes");
        n += 1;
    }
    assert!(n > 1000, "{n} inputs");
}

/// The counter itself works: a real allocation of 8 MiB is seen.
#[test]
fn the_counter_sees_allocations() {
    let peak = peak_of(|| {
        let v = vec![1u8; 8 * MIB];
        assert_eq!(v.len(), 8 * MIB);
    });
    assert!(peak >= 8 * MIB, "{peak}");
}
