//! `wmig upload FILE.wasm [--name NAME[:TAG]]`: store a module in the
//! registry and print its hash (blake3 of the file, the same hash a
//! checkpoint's manifest names its module by).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use wmig_proto::wire::registry::NameTag;

use crate::cmd::registry::{human, runtime, Target};

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_FROM: u64 = 4 << 20;

#[derive(clap::Args)]
pub struct UploadCommand {
    /// The wasm module to upload.
    file: PathBuf,
    /// Point NAME[:TAG] (tag `latest` by default) at the uploaded module.
    #[arg(long)]
    name: Option<NameTag>,
    #[command(flatten)]
    target: Target,
}

impl UploadCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("could not read {}", self.file.display()))?;
        let len = bytes.len() as u64;
        let bar = (len >= PROGRESS_FROM && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let stored = runtime()?.block_on(async {
            let client = self.target.connect().await?;
            let progress_bar = bar.clone();
            let mut progress = move |sent: u64| {
                if let Some(b) = &progress_bar {
                    b.set_position(sent);
                }
            };
            let stored = client
                .upload_bundle_with_progress(&bytes, self.name.as_ref(), &mut progress)
                .await
                .with_context(|| format!("could not upload {}", self.file.display()));
            client.close().await;
            stored
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let what = if stored.created {
            "stored"
        } else {
            "already stored"
        };
        match &self.name {
            Some(n) => eprintln!(
                "{what} {} ({}) as {n}",
                self.file.display(),
                human(stored.len)
            ),
            None => eprintln!("{what} {} ({})", self.file.display(), human(stored.len)),
        }
        println!("{}", stored.hash);
        Ok(0)
    }
}
