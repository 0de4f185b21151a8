//! Golden checkpoint files guard format compatibility: a checkpoint written by
//! an earlier build must still decode, and still resume to the same output.
//!
//! Regenerate (only when the format or the rewrite changes on purpose, and
//! bump `FORMAT_VERSION` / `REWRITER_VERSION` with it):
//! `WMIG_BLESS=1 cargo test --workspace --test golden`. The files of older
//! rewriters (1 to 3) are never regenerated: they are what an older wmig wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wmig_host::local::{resume_local, run_local, Finish, LocalOptions, SinkFactory, WasiSpec};
use wmig_host::wasi::{BufferSink as Buf, OutputSink};
use wmig_host::RuntimeConfig;
use wmig_proto::checkpoint::{CheckpointFile, FORMAT_VERSION};
use wmig_proto::Hash;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name)
}

fn capture_sinks() -> (Buf, SinkFactory) {
    let out = Buf::default();
    let o = out.clone();
    let sinks: SinkFactory = Arc::new(move || {
        (
            Box::new(o.clone()) as Box<dyn OutputSink>,
            Box::new(Buf::default()) as Box<dyn OutputSink>,
        )
    });
    (out, sinks)
}

fn opts() -> LocalOptions {
    LocalOptions {
        yield_fuel: 100,
        runtime: RuntimeConfig { cache_dir: None },
        ..LocalOptions::default()
    }
}

fn module() -> Vec<u8> {
    wat::parse_file(golden("countdown.wat")).expect("golden module parses")
}

/// A checkpoint taken by rewriter 1 (the first release) still resumes, in
/// rewriter 1: never regenerated.
#[test]
fn golden_checkpoint_of_rewriter_1_still_decodes_and_resumes() {
    check_golden("countdown-v1.ckpt", "countdown.after.txt", 1, false);
}

/// A checkpoint taken by rewriter 2 (Binaryen Asyncify) still resumes, in
/// rewriter 2, after rewriter 3 replaced Asyncify: never regenerated.
#[test]
fn golden_checkpoint_of_rewriter_2_still_decodes_and_resumes() {
    check_golden("countdown-v1-r2.ckpt", "countdown-r2.after.txt", 2, false);
}

/// A checkpoint taken by rewriter 3 (wmig's own unwind transform, sleeps as
/// pause points) still resumes, in rewriter 3, after rewriter 4 made stdin
/// reads pause points too: never regenerated.
#[test]
fn golden_checkpoint_of_rewriter_3_still_decodes_and_resumes() {
    check_golden("countdown-v1-r3.ckpt", "countdown-r3.after.txt", 3, false);
}

/// A checkpoint of the current rewriter in checkpoint format 1 (before
/// task files) still decodes and resumes: never regenerated.
#[test]
fn golden_checkpoint_of_format_1_still_decodes_and_resumes() {
    check_golden("countdown-v1-r4.ckpt", "countdown-r4.after.txt", 4, false);
}

/// The current rewriter's golden checkpoint (`WMIG_BLESS=1` writes it).
#[test]
fn golden_checkpoint_of_the_current_rewriter_decodes_and_resumes() {
    let r = wmig_host::REWRITER_VERSION;
    check_golden(
        &format!("countdown-v{FORMAT_VERSION}-r{r}.ckpt"),
        &format!("countdown-r{r}.after.txt"),
        r,
        std::env::var_os("WMIG_BLESS").is_some(),
    );
}

fn check_golden(ckpt: &str, after: &str, rewriter: u32, bless: bool) {
    let wasm = module();
    let ckpt_path = golden(ckpt);
    let after_path = golden(after);
    if bless {
        let (_, sinks) = capture_sinks();
        let w = wasm.clone();
        let opts = LocalOptions {
            stop_at: Some(12),
            checkpoint_out: Some(ckpt_path.clone()),
            ..opts()
        };
        let spec = WasiSpec {
            args: vec!["countdown.wasm".into()],
            ..WasiSpec::default()
        };
        let r = wmig_host::on_guest_thread(move || run_local(&w, &spec, &sinks, &opts))
            .expect("thread")
            .expect("golden run");
        assert!(matches!(r.0, Finish::Stopped { .. }));
    }

    let bytes = std::fs::read(&ckpt_path).expect("golden checkpoint present");
    let file = CheckpointFile::decode(&bytes).expect("golden checkpoint decodes");
    assert_eq!(
        file.manifest.module,
        Hash::of(&wasm),
        "golden checkpoint names its module"
    );
    assert_eq!(file.manifest.rewriter, rewriter, "{ckpt}: rewriter version");
    assert!(file.manifest.counters.yields >= 12);
    assert!(
        file.manifest.wasi.stdout_offset > 0,
        "output before the checkpoint is accounted"
    );

    let (out, sinks) = capture_sinks();
    let w = wasm.clone();
    let spec = WasiSpec::default();
    let result =
        wmig_host::on_guest_thread(move || resume_local(&w, &file, &spec, &sinks, &opts()))
            .expect("thread");
    let finish = match result {
        Ok((finish, _)) => finish,
        Err(e) => panic!(
            "golden checkpoint no longer resumes ({e}); if the rewrite changed on purpose, \
             bump REWRITER_VERSION and regenerate with WMIG_BLESS=1"
        ),
    };
    assert_eq!(finish, Finish::Exited(0));
    let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
    if bless {
        std::fs::write(&after_path, &text).expect("write expected output");
    }
    let expected = std::fs::read_to_string(&after_path).expect("expected output present");
    assert_eq!(text, expected);
}

#[test]
fn full_run_equals_output_before_plus_after_the_golden_checkpoint() {
    let (out, sinks) = capture_sinks();
    let w = module();
    let spec = WasiSpec {
        args: vec!["countdown.wasm".into()],
        ..WasiSpec::default()
    };
    wmig_host::on_guest_thread(move || run_local(&w, &spec, &sinks, &opts()))
        .expect("thread")
        .expect("full run");
    let full = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
    let after = std::fs::read_to_string(golden("countdown.after.txt")).expect("expected output");
    assert!(
        full.ends_with(&after) && full.len() > after.len(),
        "{full:?} vs {after:?}"
    );
}
