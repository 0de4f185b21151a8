//! Rewrite every module given on the command line and print what the rewrite
//! did: `cargo run --release -p wmig-rewrite --example rewrite_corpus -- target/corpus/*.wasm`.
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
            Ok(out) => println!(
                "{path}: {} -> {} bytes in {:.2?}, {} pausable of {} functions, fallback={}",
                wasm.len(),
                out.bytes.len(),
                start.elapsed(),
                out.stats.pausable_functions,
                out.stats.functions,
                out.stats.asyncify_fallback
            ),
            Err(e) => println!("{path}: {e}"),
        }
    }
}
