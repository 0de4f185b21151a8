//! A task's files on this worker: a working copy of each of its trees,
//! built from chunks before the task runs, scanned at each checkpoint so
//! only what the task changed travels.
//!
//! Working copies live under `CACHE/files/<task>.<epoch>/<n>`, one per
//! preopened tree, and go when the task leaves this worker (the job, and
//! with it [`TaskFiles`], is dropped). A worker that starts clears what a
//! previous process left: those tasks resume elsewhere from checkpoints.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use wmig_host::chunks::ChunkSink;
use wmig_host::files::{FilesError, Scanner};
use wmig_host::wasi::Preopen;
use wmig_host::MemChunks;
use wmig_proto::files::{FileTree, PreopenTree};
use wmig_proto::wire::registry::BundleRef;
use wmig_proto::{Hash, TaskId};

use crate::Worker;

/// Chunks fetched per registry request while building a working copy
/// (32 MiB), so a large tree is never held in memory whole.
const FETCH_CHUNKS: usize = 512;

/// One preopened tree's working copy.
pub struct WorkTree {
    pub guest: String,
    pub dir: PathBuf,
    scanner: Scanner,
    /// The tree as last built or scanned.
    pub last: FileTree,
}

/// Every tree of one task here.
pub struct TaskFiles {
    root: PathBuf,
    pub trees: Vec<WorkTree>,
    pub limit: u64,
    /// Chunks a live-migration target has been sent (this migration).
    pub sent: HashSet<Hash>,
}

impl Drop for TaskFiles {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "could not remove a task's working copy");
            }
        }
    }
}

impl TaskFiles {
    pub fn preopens(&self) -> Vec<Preopen> {
        self.trees
            .iter()
            .map(|t| Preopen {
                host: t.dir.clone(),
                guest: t.guest.clone(),
            })
            .collect()
    }

    /// Bytes of the files as last built or scanned.
    pub fn bytes(&self) -> u64 {
        self.trees.iter().map(|t| t.last.bytes()).sum()
    }

    /// Scan every tree; chunks `sink` lacks go to it.
    pub fn scan(&mut self, sink: &mut dyn ChunkSink) -> Result<Vec<PreopenTree>, FilesError> {
        let mut budget = self.limit;
        let mut out = Vec::with_capacity(self.trees.len());
        for t in &mut self.trees {
            let tree = t.scanner.scan(&t.dir, sink, &mut budget, self.limit)?;
            t.last = tree.clone();
            out.push(PreopenTree {
                guest: t.guest.clone(),
                tree,
            });
        }
        Ok(out)
    }

    /// Scan for a live-migration target: chunks it has not been sent go
    /// to `out` (and count as sent).
    pub fn scan_for_target(&mut self) -> Result<crate::exec::FileRound, FilesError> {
        let mut sink = NotSent {
            sent: std::mem::take(&mut self.sent),
            out: Vec::new(),
        };
        let trees = self.scan(&mut sink)?;
        // What the target holds once it applied these trees: a chunk sent
        // earlier whose files are gone since is sent again if it returns.
        self.sent = trees.iter().flat_map(|p| p.tree.chunk_hashes()).collect();
        Ok(crate::exec::FileRound {
            trees,
            chunks: sink.out,
        })
    }

    /// A live-migration target's working copies, empty until the source's
    /// first trees arrive.
    pub fn receiving(cache_dir: &Path, task: TaskId, epoch: u64, limit: u64) -> Self {
        let root = task_root(cache_dir, task, epoch);
        let _ = std::fs::remove_dir_all(&root);
        TaskFiles {
            root,
            trees: Vec::new(),
            limit,
            sent: HashSet::new(),
        }
    }

    /// Bring the working copies up to `trees` (a live source's), with the
    /// chunks that came with them. Blocking.
    pub fn apply(&mut self, trees: &[PreopenTree], chunks: &MemChunks) -> anyhow::Result<()> {
        if self.trees.is_empty() {
            for (i, p) in trees.iter().enumerate() {
                self.trees.push(WorkTree {
                    guest: p.guest.clone(),
                    dir: self.root.join(i.to_string()),
                    scanner: Scanner::new(),
                    last: FileTree::default(),
                });
            }
        }
        anyhow::ensure!(
            self.trees.len() == trees.len()
                && self
                    .trees
                    .iter()
                    .zip(trees)
                    .all(|(a, b)| a.guest == b.guest),
            "the source's file trees changed their preopens during the migration"
        );
        let total: u64 = trees.iter().map(|p| p.tree.bytes()).sum();
        anyhow::ensure!(
            total <= self.limit,
            "the task's files ({total} bytes) are over their limit of {} bytes",
            self.limit
        );
        for (t, p) in self.trees.iter_mut().zip(trees) {
            p.tree.validate().map_err(anyhow::Error::msg)?;
            wmig_host::files::build(&t.dir, &t.last, &p.tree, chunks)
                .with_context(|| format!("updating the files of {}", p.guest))?;
            t.last = p.tree.clone();
        }
        Ok(())
    }

    /// The working copies are complete: remember what they hold, so the
    /// first checkpoint here reads only what the task changes. Blocking.
    pub fn settle(&mut self) -> Result<(), FilesError> {
        for t in &mut self.trees {
            t.scanner.prime(&t.dir, &t.last)?;
        }
        Ok(())
    }
}

struct NotSent {
    sent: HashSet<Hash>,
    out: Vec<(Hash, Arc<[u8]>)>,
}

impl ChunkSink for NotSent {
    fn contains(&self, hash: &Hash) -> bool {
        self.sent.contains(hash)
    }
    fn put(&mut self, hash: Hash, bytes: &[u8]) {
        if self.sent.insert(hash) {
            self.out.push((hash, Arc::from(bytes)));
        }
    }
}

/// Where a task's working copies go on this worker.
pub fn task_root(cache_dir: &Path, task: TaskId, epoch: u64) -> PathBuf {
    cache_dir.join("files").join(format!("{}.{epoch}", task.0))
}

impl Worker {
    /// The trees a task submitted with `--dir` starts from.
    pub(crate) async fn submitted_trees(
        &self,
        trees: &[(Hash, String)],
    ) -> anyhow::Result<Vec<PreopenTree>> {
        let mut out = Vec::with_capacity(trees.len());
        for (hash, guest) in trees {
            let (_, bytes) = self
                .registry
                .download_bundle(&BundleRef::Hash(*hash))
                .await
                .with_context(|| format!("fetching the files of {guest} (tree {hash})"))?;
            let tree = FileTree::decode(&bytes)
                .with_context(|| format!("the files of {guest} (tree {hash})"))?;
            out.push(PreopenTree {
                guest: guest.clone(),
                tree,
            });
        }
        Ok(out)
    }

    /// Build working copies of `trees` for `task` at `epoch`, with chunks
    /// from the chunk cache or the registry.
    pub(crate) async fn materialize(
        &self,
        task: TaskId,
        epoch: u64,
        trees: Vec<PreopenTree>,
        limit: u64,
    ) -> anyhow::Result<TaskFiles> {
        let root = task_root(&self.config.cache_dir, task, epoch);
        let _ = std::fs::remove_dir_all(&root);
        let mut files = TaskFiles {
            root: root.clone(),
            trees: Vec::with_capacity(trees.len()),
            limit,
            sent: HashSet::new(),
        };
        let total: u64 = trees.iter().map(|p| p.tree.bytes()).sum();
        anyhow::ensure!(
            total <= limit,
            "the task's files take {total} bytes, over their limit of {limit} bytes"
        );
        for (i, p) in trees.into_iter().enumerate() {
            let dir = root.join(i.to_string());
            self.build_tree(&dir, &p.tree)
                .await
                .with_context(|| format!("building the files of {} for {task}", p.guest))?;
            let mut scanner = Scanner::new();
            let (d, t) = (dir.clone(), p.tree.clone());
            let scanner =
                tokio::task::spawn_blocking(move || scanner.prime(&d, &t).map(|()| scanner))
                    .await
                    .context("building a working copy panicked")??;
            files.trees.push(WorkTree {
                guest: p.guest,
                dir,
                scanner,
                last: p.tree,
            });
        }
        Ok(files)
    }

    /// Write `tree` into the empty directory `dir`, a group of files at a
    /// time: their chunks the cache lacks are fetched in one request.
    async fn build_tree(&self, dir: &Path, tree: &FileTree) -> anyhow::Result<()> {
        let (skeleton, groups) = wmig_host::files::in_groups(tree, FETCH_CHUNKS);
        for part in std::iter::once(skeleton).chain(groups) {
            let mut chunks = MemChunks::new();
            let missing: Vec<Hash> = {
                let cache = self.lock_cache();
                part.chunk_hashes()
                    .into_iter()
                    .filter(|h| match cache.shared(h) {
                        Some(b) => {
                            chunks.insert_shared(*h, b);
                            false
                        }
                        None => true,
                    })
                    .collect()
            };
            if !missing.is_empty() {
                let bytes = self.registry.get_chunks(&missing).await?;
                for (h, b) in missing.into_iter().zip(bytes) {
                    chunks.insert_owned(h, b);
                }
            }
            let d = dir.to_owned();
            tokio::task::spawn_blocking(move || {
                wmig_host::files::build(&d, &FileTree::default(), &part, &chunks)
            })
            .await
            .context("building a working copy panicked")??;
        }
        Ok(())
    }
}

/// Clear working copies a previous process of this worker left.
pub fn clear_stale(cache_dir: &Path) {
    let dir = cache_dir.join("files");
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not clear old working copies");
        }
    }
}
