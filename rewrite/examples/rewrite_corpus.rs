//! Rewrite every module given on the command line and print what the rewrite
//! did: `cargo run --release -p wmig-rewrite --example rewrite_corpus -- target/corpus/*.wasm`.
//! With `WMIG_REWRITE_OUT=DIR`, also write `NAME.main.wasm` and
//! `NAME.rewind.wasm` there (to compile them with the wasmtime CLI).
fn main() {
    for path in std::env::args().skip(1) {
        let wasm = match std::fs::read(&path) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let start = std::time::Instant::now();
        match wmig_rewrite::instrument(&wasm) {
            Ok(out) => {
                if let Some(dir) = std::env::var_os("WMIG_REWRITE_OUT") {
                    let stem = std::path::Path::new(&path)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let dir = std::path::Path::new(&dir);
                    let main = dir.join(format!("{stem}.main.wasm"));
                    if let Err(e) = std::fs::write(&main, &out.bytes) {
                        eprintln!("{}: {e}", main.display());
                    }
                    if let Some(r) = &out.rewind {
                        let rw = dir.join(format!("{stem}.rewind.wasm"));
                        if let Err(e) = std::fs::write(&rw, r) {
                            eprintln!("{}: {e}", rw.display());
                        }
                    }
                }
                println!(
                    "{path}: {} -> {} bytes in {:.2?}, {} pausable of {} functions, fallback={}",
                    wasm.len(),
                    out.bytes.len(),
                    start.elapsed(),
                    out.stats.pausable_functions,
                    out.stats.functions,
                    out.stats.asyncify_fallback
                )
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
}
