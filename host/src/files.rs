//! A task's preopened directories as content-addressed trees: scanning a
//! working copy into a [`FileTree`] (hashing only files that changed since
//! the last scan) and building a directory from a tree (writing only files
//! that differ from what is there).
//!
//! Change detection works like git's index: a file whose size, mtime, ctime
//! and inode are those of the last scan is not read again. A timestamp has
//! the kernel's coarse clock granularity, so a write in the same tick as a
//! scan could keep all four equal; a file modified that close to a scan is
//! "racy" and is read again at the next scan whatever its metadata says.
//! Files this module writes get an mtime in the past, so the guest's first
//! write to them always shows.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wmig_proto::checkpoint::CHUNK_SIZE;
use wmig_proto::files::{FileImage, FileTree, Node, TreeEntry};
use wmig_proto::Hash;

use crate::chunks::{ChunkSink, ChunkSource};
use crate::MemChunks;

/// A write this close to a scan may not have moved the file's timestamps.
const RACY: Duration = Duration::from_millis(50);
/// How far in the past files written here are dated.
const WRITTEN_AGE: Duration = Duration::from_secs(2);

/// Why a tree could not be scanned or built.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the task's files take more than their limit of {limit} bytes (at {path}); \
         raise it with --files-limit or have the task write less"
    )]
    OverLimit { limit: u64, path: String },
    #[error("`{0}` has a name that is not UTF-8; only UTF-8 file names travel with a task")]
    NotUtf8(PathBuf),
    #[error("chunk {hash} of `{path}` is not available here or in the registry")]
    MissingChunk { hash: Hash, path: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the last scan saw of one file.
#[derive(Clone, Debug)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    racy: bool,
    image: FileImage,
}

fn stamp(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

impl Seen {
    fn matches(&self, m: &fs::Metadata) -> bool {
        !self.racy
            && self.size == m.len()
            && self.mtime_ns == stamp(m.mtime(), m.mtime_nsec())
            && self.ctime_ns == stamp(m.ctime(), m.ctime_nsec())
            && self.ino == m.ino()
    }
}

/// Scans one directory again and again, remembering what it read.
#[derive(Debug, Default)]
pub struct Scanner {
    seen: HashMap<String, Seen>,
    /// Bytes of files read (hashed) by the last scan.
    pub last_read: u64,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree under `root`. Files unchanged since the last scan keep their
    /// chunks without being read, unless `sink` lacks one of them (then the
    /// file is read again, so a sink that forgot what it held is refilled).
    /// New chunks go to `sink`. `budget` is what the files may still take;
    /// it is reduced by this tree's bytes.
    pub fn scan(
        &mut self,
        root: &Path,
        sink: &mut dyn ChunkSink,
        budget: &mut u64,
        limit: u64,
    ) -> Result<FileTree, FilesError> {
        let started = SystemTime::now();
        let mut entries = Vec::new();
        let mut seen = HashMap::with_capacity(self.seen.len());
        self.last_read = 0;
        let mut stack = vec![(root.to_owned(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for e in fs::read_dir(&dir).map_err(io(&dir))? {
                let e = e.map_err(io(&dir))?;
                let host = e.path();
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|_| FilesError::NotUtf8(host.clone()))?;
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let m = fs::symlink_metadata(&host).map_err(io(&host))?;
                let ft = m.file_type();
                let node = if ft.is_dir() {
                    stack.push((host, path.clone()));
                    Node::Dir
                } else if ft.is_symlink() {
                    let target = fs::read_link(&host).map_err(io(&host))?;
                    let target = target
                        .into_os_string()
                        .into_string()
                        .map_err(|_| FilesError::NotUtf8(host.clone()))?;
                    Node::Symlink { target }
                } else if ft.is_file() {
                    *budget = budget.checked_sub(m.len()).ok_or(FilesError::OverLimit {
                        limit,
                        path: path.clone(),
                    })?;
                    let prev = self.seen.remove(&path);
                    let reuse = prev.filter(|s| {
                        s.matches(&m) && s.image.chunks.iter().all(|(_, h)| sink.contains(h))
                    });
                    let s = match reuse {
                        Some(s) => s,
                        None => {
                            let s = read_file(&host, &m, sink, started)?;
                            self.last_read += s.size;
                            s
                        }
                    };
                    let image = s.image.clone();
                    seen.insert(path.clone(), s);
                    Node::File(image)
                } else {
                    // Sockets, fifos and devices have no content to carry.
                    continue;
                };
                entries.push(TreeEntry { path, node });
            }
        }
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        self.seen = seen;
        Ok(FileTree { entries })
    }

    /// Remember `tree` as what `root` holds now (just built by [`build`]),
    /// so the next scan reads only what the task changes.
    pub fn prime(&mut self, root: &Path, tree: &FileTree) -> Result<(), FilesError> {
        self.seen.clear();
        for (path, image) in tree.files() {
            let host = root.join(path);
            let m = fs::symlink_metadata(&host).map_err(io(&host))?;
            self.seen.insert(
                path.to_owned(),
                Seen {
                    size: m.len(),
                    mtime_ns: stamp(m.mtime(), m.mtime_nsec()),
                    ctime_ns: stamp(m.ctime(), m.ctime_nsec()),
                    ino: m.ino(),
                    racy: false,
                    image: image.clone(),
                },
            );
        }
        Ok(())
    }
}

/// Read and chunk one file.
fn read_file(
    host: &Path,
    before: &fs::Metadata,
    sink: &mut dyn ChunkSink,
    scan_started: SystemTime,
) -> Result<Seen, FilesError> {
    let mut f = fs::File::open(host).map_err(io(host))?;
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut len = 0u64;
    for idx in 0u32.. {
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            let n = f.read(&mut buf[filled..]).map_err(io(host))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        len += filled as u64;
        buf[filled..].fill(0);
        if buf.iter().any(|b| *b != 0) {
            let h = Hash::of(&buf);
            if !sink.contains(&h) {
                sink.put(h, &buf);
            }
            chunks.push((idx, h));
        }
        if filled < CHUNK_SIZE {
            break;
        }
    }
    let after = f.metadata().map_err(io(host))?;
    let mtime = after.modified().unwrap_or(scan_started);
    // Written while it was read, or so recently that a write in the same
    // clock tick would not show: read it again next time.
    let racy = stamp(after.mtime(), after.mtime_nsec())
        != stamp(before.mtime(), before.mtime_nsec())
        || after.len() != len
        || mtime + RACY >= scan_started;
    Ok(Seen {
        size: len,
        mtime_ns: stamp(after.mtime(), after.mtime_nsec()),
        ctime_ns: stamp(after.ctime(), after.ctime_nsec()),
        ino: after.ino(),
        racy,
        image: FileImage {
            len,
            executable: before.permissions().mode() & 0o111 != 0,
            chunks,
        },
    })
}

/// Make `root` hold exactly `to`, given that it holds `from` now (an empty
/// tree for an empty or new directory). Files whose image is unchanged are
/// left alone; a changed file is written anew from chunks found in `source`
/// or, failing that, in any file of `from` (read before anything changes,
/// so a renamed or copied file needs no bytes sent). Returns the bytes
/// written.
pub fn build(
    root: &Path,
    from: &FileTree,
    to: &FileTree,
    source: &dyn ChunkSource,
) -> Result<u64, FilesError> {
    fs::create_dir_all(root).map_err(io(root))?;
    let here = read_kept(root, from, to, source)?;
    let source = Both(source, &here);
    // Remove what is gone or changed kind, deepest first.
    for e in from.entries.iter().rev() {
        let keep = match (&e.node, to.get(&e.path)) {
            (Node::Dir, Some(Node::Dir)) => true,
            (Node::File(_), Some(Node::File(_))) => true,
            (a, Some(b)) => a == b,
            (_, None) => false,
        };
        if !keep {
            let host = root.join(&e.path);
            let r = match &e.node {
                Node::Dir => fs::remove_dir_all(&host),
                _ => fs::remove_file(&host),
            };
            match r {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&host)(err))
                }
                _ => {}
            }
        }
    }
    let mut written = 0u64;
    let old_time = SystemTime::now() - WRITTEN_AGE;
    for e in &to.entries {
        let host = root.join(&e.path);
        let before = from.get(&e.path);
        match &e.node {
            Node::Dir => {
                if before != Some(&Node::Dir) {
                    fs::create_dir_all(&host).map_err(io(&host))?;
                }
            }
            Node::Symlink { target } => {
                if before != Some(&e.node) {
                    std::os::unix::fs::symlink(target, &host).map_err(io(&host))?;
                }
            }
            Node::File(image) => {
                if matches!(before, Some(Node::File(old)) if old == image) {
                    continue;
                }
                written += write_file(&host, &e.path, image, &source, old_time)?;
            }
        }
    }
    Ok(written)
}

/// `tree` in pieces to build one after another, so that a large tree is
/// never in memory whole: its directories and links first, then groups of
/// files of about `max_chunks` chunks each. Each group builds with
/// [`build`] from an empty tree once the first piece is there.
pub fn in_groups(tree: &FileTree, max_chunks: usize) -> (FileTree, Vec<FileTree>) {
    let mut skeleton = FileTree::default();
    let mut groups = vec![FileTree::default()];
    let mut in_group = 0;
    for e in &tree.entries {
        let Node::File(f) = &e.node else {
            skeleton.entries.push(e.clone());
            continue;
        };
        if in_group >= max_chunks {
            groups.push(FileTree::default());
            in_group = 0;
        }
        in_group += f.chunks.len();
        if let Some(g) = groups.last_mut() {
            g.entries.push(e.clone());
        }
    }
    (skeleton, groups)
}

struct Both<'a>(&'a dyn ChunkSource, &'a MemChunks);

impl ChunkSource for Both<'_> {
    fn chunk(&self, hash: &Hash) -> Option<&[u8]> {
        self.0.chunk(hash).or_else(|| self.1.chunk(hash))
    }
}

/// The chunks of `to`'s changed files that `source` lacks, read from the
/// files of `from` that hold them.
fn read_kept(
    root: &Path,
    from: &FileTree,
    to: &FileTree,
    source: &dyn ChunkSource,
) -> Result<MemChunks, FilesError> {
    let mut here = MemChunks::new();
    let mut wanted: HashMap<Hash, ()> = HashMap::new();
    for (path, image) in to.files() {
        if matches!(from.get(path), Some(Node::File(old)) if old == image) {
            continue;
        }
        for (_, h) in &image.chunks {
            if source.chunk(h).is_none() {
                wanted.insert(*h, ());
            }
        }
    }
    if wanted.is_empty() {
        return Ok(here);
    }
    let mut buf = vec![0u8; CHUNK_SIZE];
    for (path, image) in from.files() {
        let mut file: Option<fs::File> = None;
        for (idx, h) in &image.chunks {
            if wanted.remove(h).is_none() {
                continue;
            }
            let host = root.join(path);
            if file.is_none() {
                file = Some(fs::File::open(&host).map_err(io(&host))?);
            }
            let Some(f) = file.as_mut() else { continue };
            f.seek(SeekFrom::Start(u64::from(*idx) * CHUNK_SIZE as u64))
                .map_err(io(&host))?;
            buf.fill(0);
            let mut filled = 0;
            while filled < CHUNK_SIZE {
                let n = f.read(&mut buf[filled..]).map_err(io(&host))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            // A file changed behind our back is caught here, not copied on.
            if Hash::of(&buf) == *h {
                here.insert_owned(*h, buf.clone());
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    Ok(here)
}

/// Write one file from chunks into a temporary file, then rename it over
/// the old one.
fn write_file(
    host: &Path,
    path: &str,
    image: &FileImage,
    source: &dyn ChunkSource,
    mtime: SystemTime,
) -> Result<u64, FilesError> {
    // A randomly named file beside it: no name of the tree's own can clash.
    let dir = host.parent().unwrap_or(host);
    let tmp_file = tempfile::Builder::new()
        .prefix(".wmig-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    let tmp = tmp_file.path().to_owned();
    let mut f = tmp_file.as_file().try_clone().map_err(io(&tmp))?;
    for (idx, hash) in &image.chunks {
        let offset = u64::from(*idx) * CHUNK_SIZE as u64;
        let want = (image.len - offset).min(CHUNK_SIZE as u64) as usize;
        let bytes = source
            .chunk(hash)
            .filter(|b| b.len() >= want)
            .ok_or_else(|| FilesError::MissingChunk {
                hash: *hash,
                path: path.to_owned(),
            })?;
        f.seek(SeekFrom::Start(offset)).map_err(io(&tmp))?;
        f.write_all(&bytes[..want]).map_err(io(&tmp))?;
    }
    // Zero chunks were left out: the length makes the holes (and the tail).
    f.set_len(image.len).map_err(io(&tmp))?;
    let mode = if image.executable { 0o755 } else { 0o644 };
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.set_modified(mtime).map_err(io(&tmp))?;
    drop(f);
    tmp_file.persist(host).map_err(|e| io(host)(e.error))?;
    Ok(image.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sink {
        chunks: MemChunks,
        put: usize,
    }
    impl ChunkSink for Sink {
        fn contains(&self, hash: &Hash) -> bool {
            self.chunks.chunk(hash).is_some()
        }
        fn put(&mut self, hash: Hash, bytes: &[u8]) {
            self.put += 1;
            self.chunks.insert_owned(hash, bytes.to_vec());
        }
    }

    fn write(root: &Path, path: &str, bytes: &[u8]) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, bytes).expect("write");
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn scan(s: &mut Scanner, root: &Path, sink: &mut Sink) -> FileTree {
        let mut budget = u64::MAX;
        s.scan(root, sink, &mut budget, u64::MAX).expect("scans")
    }

    fn same_dirs(a: &Path, b: &Path) {
        let mut sa = Scanner::new();
        let mut sb = Scanner::new();
        let mut sink = Sink::default();
        assert_eq!(scan(&mut sa, a, &mut sink), scan(&mut sb, b, &mut sink));
        for (path, _) in scan(&mut sa, a, &mut sink).files() {
            assert_eq!(
                fs::read(a.join(path)).expect("read a"),
                fs::read(b.join(path)).expect("read b"),
                "{path}"
            );
        }
    }

    #[test]
    fn a_tree_scanned_and_built_elsewhere_is_the_same_and_unchanged_files_are_not_read() {
        let src = tempfile::tempdir().expect("tmp");
        let root = src.path();
        write(root, "a.txt", b"hello");
        write(root, "big/data.bin", &pattern(200_000, 7));
        let mut sparse = vec![0u8; 3 * CHUNK_SIZE];
        sparse[2 * CHUNK_SIZE + 5] = 1;
        write(root, "big/sparse", &sparse);
        write(root, "empty", b"");
        fs::create_dir(root.join("nothing")).expect("mkdir");
        std::os::unix::fs::symlink("a.txt", root.join("link")).expect("symlink");

        let mut scanner = Scanner::new();
        let mut sink = Sink::default();
        let tree = scan(&mut scanner, root, &mut sink);
        tree.validate().expect("valid");
        assert_eq!(tree.bytes(), 5 + 200_000 + 3 * CHUNK_SIZE as u64);
        // The sparse file's two zero chunks are not stored.
        assert_eq!(
            tree.get("big/sparse"),
            Some(&Node::File(FileImage {
                len: 3 * CHUNK_SIZE as u64,
                executable: false,
                chunks: vec![(
                    2,
                    Hash::of(&{
                        let mut c = vec![0u8; CHUNK_SIZE];
                        c[5] = 1;
                        c
                    })
                )],
            }))
        );

        let dst = tempfile::tempdir().expect("tmp");
        let out = dst.path().join("copy");
        build(&out, &FileTree::default(), &tree, &sink.chunks).expect("builds");
        same_dirs(root, &out);
        assert_eq!(
            fs::read_link(out.join("link")).expect("link"),
            Path::new("a.txt")
        );

        // Built a piece at a time (one chunk's worth per group) it is the same.
        let (skeleton, groups) = in_groups(&tree, 1);
        assert!(groups.len() >= 3, "one group per file past the limit");
        let pieces = dst.path().join("pieces");
        for part in std::iter::once(skeleton).chain(groups) {
            build(&pieces, &FileTree::default(), &part, &sink.chunks).expect("builds");
        }
        same_dirs(root, &pieces);

        // Change one file; the next scan reads only it (after the racy
        // window of the first scan's files has passed).
        std::thread::sleep(RACY * 2);
        scan(&mut scanner, root, &mut sink);
        write(root, "a.txt", b"hello, world");
        let before = sink.put;
        let t2 = scan(&mut scanner, root, &mut sink);
        assert_eq!(scanner.last_read, 12, "only the changed file is read");
        assert_eq!(sink.put, before + 1, "one new chunk");

        // Building the change over the old copy writes only that file.
        let written = build(&out, &tree, &t2, &sink.chunks).expect("builds");
        assert_eq!(written, 12);
        same_dirs(root, &out);

        // Removals and a file turned into a directory.
        fs::remove_dir_all(root.join("big")).expect("rm");
        fs::remove_file(root.join("empty")).expect("rm");
        write(root, "empty/inside", b"x");
        let t3 = scan(&mut scanner, root, &mut sink);
        build(&out, &t2, &t3, &sink.chunks).expect("builds");
        same_dirs(root, &out);
        assert!(!out.join("big").exists());
    }

    #[test]
    fn kept_chunks_come_from_the_files_there_and_missing_ones_are_named() {
        let src = tempfile::tempdir().expect("tmp");
        let root = src.path();
        let mut data = pattern(3 * CHUNK_SIZE, 1);
        write(root, "f", &data);
        let mut sink = Sink::default();
        let t1 = scan(&mut Scanner::new(), root, &mut sink);
        let dst = tempfile::tempdir().expect("tmp");
        let out = dst.path().join("copy");
        build(&out, &FileTree::default(), &t1, &sink.chunks).expect("builds");
        // Only chunk 1 changes; the source offers only that chunk.
        data[CHUNK_SIZE + 9] ^= 0xff;
        write(root, "f", &data);
        let mut fresh = Sink::default();
        let t2 = scan(&mut Scanner::new(), root, &mut fresh);
        let Some(Node::File(img)) = t2.get("f") else {
            panic!("a file")
        };
        let mut only = MemChunks::new();
        let (_, h) = img.chunks[1];
        only.insert_owned(h, fresh.chunks.chunk(&h).expect("chunk").to_vec());
        build(&out, &t1, &t2, &only).expect("the other chunks come from the old file");
        assert_eq!(fs::read(out.join("f")).expect("read"), data);
        // A rename needs no bytes: they are in the old file.
        fs::rename(root.join("f"), root.join("g")).expect("rename");
        let t3 = scan(&mut Scanner::new(), root, &mut Sink::default());
        build(&out, &t2, &t3, &MemChunks::new()).expect("builds from the files there");
        assert_eq!(fs::read(out.join("g")).expect("read"), data);
        assert!(!out.join("f").exists());
        // Into an empty directory the same source is not enough.
        let empty = tempfile::tempdir().expect("tmp");
        let err = build(empty.path(), &FileTree::default(), &t2, &only).expect_err("refused");
        assert!(err.to_string().contains("of `f` is not available"), "{err}");
    }

    #[test]
    fn the_limit_counts_every_tree_and_names_the_file_past_it() {
        let src = tempfile::tempdir().expect("tmp");
        write(src.path(), "a", &[1; 600]);
        write(src.path(), "b", &[2; 600]);
        let mut budget = 1000;
        let err = Scanner::new()
            .scan(src.path(), &mut Sink::default(), &mut budget, 1000)
            .expect_err("refused");
        assert!(err.to_string().contains("limit of 1000 bytes"), "{err}");
    }
}
