//! A task's files: uploading a directory as a tree (`wmig submit --dir`),
//! and `wmig files TASK [-o DIR]`, which lists or downloads the task's
//! current tree (its latest checkpoint's) or, once it ended, its final one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use wmig_host::chunks::ChunkSink;
use wmig_host::files::Scanner;
use wmig_host::MemChunks;
use wmig_proto::files::{FileTree, Node, PreopenTree};
use wmig_proto::wire::registry::BundleRef;
use wmig_proto::wire::ErrorCode;
use wmig_proto::{Hash, TaskId};
use wmig_registry::RegistryClient;

use crate::cmd::control::ControlTarget;
use crate::cmd::registry::{human, runtime, Target};

/// Chunks fetched per request while downloading (32 MiB).
const FETCH_CHUNKS: usize = 512;

/// Chunks uploaded per batch while a directory is read (16 MiB): reading
/// waits for the upload beyond that, so a large tree is never held whole.
const UPLOAD_BATCH: usize = 256;

/// Hands each new chunk to the uploader, waiting when it is behind.
struct Stream {
    tx: tokio::sync::mpsc::Sender<(Hash, Bytes)>,
    seen: std::collections::HashSet<Hash>,
}

impl ChunkSink for Stream {
    fn contains(&self, hash: &Hash) -> bool {
        self.seen.contains(hash)
    }
    fn put(&mut self, hash: Hash, bytes: &[u8]) {
        // A closed channel means the upload failed; its error is reported.
        if self.seen.insert(hash) {
            let _ = self.tx.blocking_send((hash, Bytes::copy_from_slice(bytes)));
        }
    }
}

/// Upload the directory `local` as a tree: its chunks as they are read,
/// then the tree as a bundle (which keeps them). `budget` is what the
/// task's files may still take. Returns the tree's bundle hash.
pub async fn upload_tree(
    client: &RegistryClient,
    local: &Path,
    budget: &mut u64,
) -> anyhow::Result<(Hash, FileTree)> {
    anyhow::ensure!(
        local.is_dir(),
        "`{}` is not a directory here",
        local.display()
    );
    let limit = *budget;
    let (dir, mut left) = (local.to_owned(), *budget);
    let (tx, mut rx) = tokio::sync::mpsc::channel(UPLOAD_BATCH);
    let scan = tokio::task::spawn_blocking(move || {
        let mut sink = Stream {
            tx,
            seen: std::collections::HashSet::new(),
        };
        let tree = Scanner::new().scan(&dir, &mut sink, &mut left, limit)?;
        anyhow::Ok((tree, left))
    });
    let mut batch = Vec::with_capacity(UPLOAD_BATCH);
    while let Some(c) = rx.recv().await {
        batch.push(c);
        if batch.len() >= UPLOAD_BATCH {
            client
                .store_chunks(&batch)
                .await
                .context("uploading the directory's chunks")?;
            batch.clear();
        }
    }
    let (tree, left) = scan.await.context("reading the directory panicked")??;
    client
        .store_chunks(&batch)
        .await
        .context("uploading the directory's chunks")?;
    *budget = left;
    let stored = client
        .upload_bundle(&tree.encode(), None)
        .await
        .context("storing the directory's tree")?;
    Ok((stored.hash, tree))
}

#[derive(clap::Args)]
pub struct FilesCommand {
    task: TaskId,
    /// Download the files into this directory (new or empty); without it
    /// they are listed. A task with several directories gets one
    /// subdirectory per guest path.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Machine-readable listing.
    #[arg(long)]
    json: bool,
    /// Registry address (default: config.toml).
    #[arg(long, env = "WMIG_REGISTRY")]
    registry: Option<String>,
    #[command(flatten)]
    target: ControlTarget,
}

impl FilesCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(self.run())
    }

    async fn run(self) -> anyhow::Result<i32> {
        let view = {
            let c = self.target.connect().await?;
            let v = self.current(&c).await;
            c.close();
            v?
        };
        anyhow::ensure!(
            view.files_limit.is_some(),
            "{} has no files: only tasks submitted with --dir LOCAL::GUEST have files that travel",
            self.task
        );
        let registry = Target::new(self.registry.clone(), self.target.cluster.clone());
        let client = registry.connect().await?;
        let r = self.with_registry(&client, view.state).await;
        client.close().await;
        r
    }

    /// The task, after asking a running one for a checkpoint so that what
    /// is shown is its files now (not up to a checkpoint period old).
    async fn current(
        &self,
        c: &wmig_coordinator::ControlClient,
    ) -> anyhow::Result<wmig_coordinator::wire::TaskView> {
        use wmig_coordinator::wire::ControlRequest;
        let view = c.task(self.task).await?;
        if view.state != wmig_coordinator::TaskState::Running || view.files_limit.is_none() {
            return Ok(view);
        }
        let before = view.checkpoint_seq;
        c.call(
            &ControlRequest::Checkpoint { task: self.task },
            "Checkpoint",
        )
        .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let v = c.task(self.task).await?;
            if v.checkpoint_seq != before || v.state.is_terminal() {
                return Ok(v);
            }
            if std::time::Instant::now() > deadline {
                eprintln!(
                    "{}: no fresh checkpoint within 10 s; showing the last one",
                    self.task
                );
                return Ok(v);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn with_registry(
        &self,
        client: &RegistryClient,
        state: wmig_coordinator::TaskState,
    ) -> anyhow::Result<i32> {
        let (trees, from) = match client.manifest(self.task, None).await {
            Ok(m) if m.end => (m.files, "final files".to_owned()),
            Ok(m) => (
                m.files,
                format!("checkpoint {}", wmig_proto::checkpoint::seq_label(m.seq)),
            ),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                (self.submitted(client).await?, "files as submitted".into())
            }
            Err(e) => return Err(e).context("fetching the task's latest checkpoint"),
        };
        eprintln!("{} ({state}): {from}", self.task);
        match &self.output {
            None => list(&trees, self.json),
            Some(out) => {
                download(client, &trees, out).await?;
                let bytes: u64 = trees.iter().map(|p| p.tree.bytes()).sum();
                eprintln!("wrote {} into {}", human(bytes), out.display());
                Ok(0)
            }
        }
    }

    /// The trees the task was submitted with (before its first checkpoint).
    async fn submitted(&self, client: &RegistryClient) -> anyhow::Result<Vec<PreopenTree>> {
        let c = self.target.connect().await?;
        let view = c.task(self.task).await;
        c.close();
        let mut out = Vec::new();
        for (hash, guest) in view?.trees {
            let (_, bytes) = client.download_bundle(&BundleRef::Hash(hash)).await?;
            out.push(PreopenTree {
                guest,
                tree: FileTree::decode(&bytes)?,
            });
        }
        Ok(out)
    }
}

fn list(trees: &[PreopenTree], json: bool) -> anyhow::Result<i32> {
    if json {
        let all: Vec<_> = trees
            .iter()
            .flat_map(|p| {
                p.tree.entries.iter().map(move |e| {
                    let (kind, len, target) = match &e.node {
                        Node::Dir => ("dir", None, None),
                        Node::File(f) => ("file", Some(f.len), None),
                        Node::Symlink { target } => ("symlink", None, Some(target.clone())),
                    };
                    serde_json::json!({
                        "dir": p.guest,
                        "path": e.path,
                        "kind": kind,
                        "len": len,
                        "target": target,
                    })
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    for p in trees {
        for e in &p.tree.entries {
            let path = format!("{}/{}", p.guest.trim_end_matches('/'), e.path);
            match &e.node {
                Node::Dir => println!("{:>10}  {path}/", "-"),
                Node::File(f) => println!("{:>10}  {path}", f.len),
                Node::Symlink { target } => println!("{:>10}  {path} -> {target}", "-"),
            }
        }
    }
    Ok(0)
}

/// Write `trees` under `out`, fetching chunks a group of files at a time.
async fn download(
    client: &RegistryClient,
    trees: &[PreopenTree],
    out: &Path,
) -> anyhow::Result<()> {
    if out.exists() {
        anyhow::ensure!(
            std::fs::read_dir(out)
                .with_context(|| format!("reading {}", out.display()))?
                .next()
                .is_none(),
            "{} is not empty: name a new or empty directory",
            out.display()
        );
    }
    for p in trees {
        let dir = if trees.len() == 1 {
            out.to_owned()
        } else {
            out.join(p.guest.trim_start_matches('/'))
        };
        let (skeleton, groups) = wmig_host::files::in_groups(&p.tree, FETCH_CHUNKS);
        for part in std::iter::once(skeleton).chain(groups) {
            write_group(client, &dir, part).await?;
        }
    }
    Ok(())
}

async fn write_group(client: &RegistryClient, dir: &Path, part: FileTree) -> anyhow::Result<()> {
    let hashes = part.chunk_hashes();
    let mut chunks = MemChunks::new();
    if !hashes.is_empty() {
        for (h, b) in hashes.iter().zip(client.get_chunks(&hashes).await?) {
            chunks.insert_owned(*h, b);
        }
    }
    // The first piece made the directories; `build` writes these files.
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        wmig_host::files::build(&d, &FileTree::default(), &part, &chunks)
    })
    .await??;
    Ok(())
}
