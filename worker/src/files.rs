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
use wmig_host::chunks::{ChunkSink, ChunkSource};
use wmig_host::files::{FilesError, Scanner};
use wmig_host::wasi::Preopen;
use wmig_host::MemChunks;
use wmig_proto::files::{FileTree, Node, PreopenTree};
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

/// Chunks from several places: what arrived with a live migration, then
/// what was fetched.
struct Sources<'a>(&'a MemChunks, &'a MemChunks);

impl ChunkSource for Sources<'_> {
    fn chunk(&self, hash: &Hash) -> Option<&[u8]> {
        self.0.chunk(hash).or_else(|| self.1.chunk(hash))
    }
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
    /// from `arrived`, the chunk cache, or the registry.
    pub(crate) async fn materialize(
        &self,
        task: TaskId,
        epoch: u64,
        trees: Vec<PreopenTree>,
        arrived: &MemChunks,
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
            self.build_tree(&dir, &p.tree, arrived)
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
    /// time: their chunks missing here are fetched in one request.
    async fn build_tree(
        &self,
        dir: &Path,
        tree: &FileTree,
        arrived: &MemChunks,
    ) -> anyhow::Result<()> {
        // Directories and links first, then files in groups.
        let skeleton = FileTree {
            entries: tree
                .entries
                .iter()
                .filter(|e| !matches!(e.node, Node::File(_)))
                .cloned()
                .collect(),
        };
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        let mut in_group = 0;
        for (i, e) in tree.entries.iter().enumerate() {
            if let Node::File(f) = &e.node {
                if in_group >= FETCH_CHUNKS {
                    groups.push(Vec::new());
                    in_group = 0;
                }
                in_group += f.chunks.len();
                if let Some(g) = groups.last_mut() {
                    g.push(i);
                }
            }
        }
        let (d, s) = (dir.to_owned(), skeleton.clone());
        tokio::task::spawn_blocking(move || {
            wmig_host::files::build(&d, &FileTree::default(), &s, &MemChunks::new())
        })
        .await
        .context("building a working copy panicked")??;
        for group in groups {
            let part = FileTree {
                entries: group.iter().map(|i| tree.entries[*i].clone()).collect(),
            };
            let mut fetched = MemChunks::new();
            let missing: Vec<Hash> = {
                let cache = self.lock_cache();
                part.chunk_hashes()
                    .into_iter()
                    .filter(|h| arrived.chunk(h).is_none())
                    .filter(|h| match cache.shared(h) {
                        Some(b) => {
                            fetched.insert_shared(*h, b);
                            false
                        }
                        None => true,
                    })
                    .collect()
            };
            if !missing.is_empty() {
                let bytes = self.registry.get_chunks(&missing).await?;
                for (h, b) in missing.into_iter().zip(bytes) {
                    fetched.insert_owned(h, b);
                }
            }
            let (d, arrived) = (dir.to_owned(), arrived.clone());
            tokio::task::spawn_blocking(move || {
                // The skeleton is there: build the files over it.
                let from = skeleton_only(&part);
                let to = with_dirs(&part, &from);
                wmig_host::files::build(&d, &from, &to, &Sources(&arrived, &fetched))
            })
            .await
            .context("building a working copy panicked")??;
        }
        Ok(())
    }
}

/// The directories `part`'s files sit in, as a tree already built.
fn skeleton_only(part: &FileTree) -> FileTree {
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in part.files() {
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.push(parent.to_owned());
            at = parent;
        }
    }
    dirs.sort_unstable();
    dirs.dedup();
    FileTree {
        entries: dirs
            .into_iter()
            .map(|path| wmig_proto::files::TreeEntry {
                path,
                node: Node::Dir,
            })
            .collect(),
    }
}

/// `part` with `dirs`' entries, in path order.
fn with_dirs(part: &FileTree, dirs: &FileTree) -> FileTree {
    let mut entries: Vec<_> = part
        .entries
        .iter()
        .chain(dirs.entries.iter())
        .cloned()
        .collect();
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    FileTree { entries }
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
