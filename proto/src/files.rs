//! A task's files as data: each preopened directory is a [`FileTree`] whose
//! file contents are 64 KiB content-addressed chunks, exactly like memory.
//!
//! A tree travels in two places. Submitted with the task (`wmig submit --dir
//! LOCAL::GUEST`), it is stored in the registry as a bundle whose bytes start
//! with [`TREE_MAGIC`] (a wasm bundle starts with `\0asm`), so it is named by
//! hash, copied to every registry node, and keeps its chunks from garbage
//! collection like a checkpoint does. Captured with a checkpoint, it is part
//! of the [`crate::checkpoint::Manifest`]: only files that changed have new
//! chunks, and the chunks already stored are not sent again.
//!
//! A file's last chunk is padded with zeros to the full chunk size (its
//! length says where the file ends), and all-zero chunks are left out, so a
//! chunk of a file and a page of memory with the same bytes are one chunk.

use serde::{Deserialize, Serialize};

use crate::checkpoint::CHUNK_SIZE;
use crate::Hash;

/// The first bytes of a tree stored as a registry bundle.
pub const TREE_MAGIC: [u8; 8] = *b"\0wmigtre";
pub const TREE_VERSION: u16 = 1;

/// The default limit of a task's files: all its trees' file bytes together.
pub const DEFAULT_FILES_LIMIT: u64 = 1 << 30;

/// A directory's contents, every entry below it by relative path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTree {
    /// Strictly ascending by path; a path's parent directory is listed
    /// before it. Paths are `/`-separated, relative, without `.` or `..`.
    pub entries: Vec<TreeEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    pub node: Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    Dir,
    File(FileImage),
    /// A symbolic link and the text it points to (resolved by the guest's
    /// WASI, which keeps it inside its preopen).
    Symlink {
        target: String,
    },
}

/// A regular file's bytes as chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileImage {
    pub len: u64,
    pub executable: bool,
    /// Chunk index → content hash, ascending, all-zero chunks left out.
    pub chunks: Vec<(u32, Hash)>,
}

/// One preopened directory of a task, by the path the guest sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreopenTree {
    pub guest: String,
    pub tree: FileTree,
}

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("not a wmig file tree: it does not start with the tree magic bytes")]
    NotATree,
    #[error("file tree format version {found} is not supported (this wmig reads {TREE_VERSION})")]
    UnknownVersion { found: u16 },
    #[error("file tree is malformed: {0}")]
    Malformed(String),
}

impl FileTree {
    /// Bytes of all files together (their lengths, not their chunks).
    pub fn bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.len).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &FileImage)> {
        self.entries.iter().filter_map(|e| match &e.node {
            Node::File(f) => Some((e.path.as_str(), f)),
            _ => None,
        })
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i].node)
    }

    /// Every distinct chunk hash the tree references.
    pub fn chunk_hashes(&self) -> Vec<Hash> {
        let mut all: Vec<Hash> = self
            .files()
            .flat_map(|(_, f)| f.chunks.iter().map(|(_, h)| *h))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Check what decoding cannot: paths are clean, relative and ascending,
    /// every parent is a listed directory, and chunks fit their files.
    pub fn validate(&self) -> Result<(), String> {
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_path(&e.path)?;
            if prev.is_some_and(|p| p >= e.path.as_str()) {
                return Err(format!(
                    "`{}` is listed out of order or twice; entries must be in ascending path order",
                    e.path
                ));
            }
            prev = Some(&e.path);
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                if self.get(parent) != Some(&Node::Dir) {
                    return Err(format!(
                        "`{}` is listed without its directory `{parent}`",
                        e.path
                    ));
                }
            }
            if let Node::File(f) = &e.node {
                let max = f.len.div_ceil(CHUNK_SIZE as u64);
                let mut last: Option<u32> = None;
                for (idx, _) in &f.chunks {
                    if u64::from(*idx) >= max {
                        return Err(format!(
                            "`{}` has chunk {idx} beyond its length of {} bytes",
                            e.path, f.len
                        ));
                    }
                    if last.is_some_and(|l| l >= *idx) {
                        return Err(format!(
                            "`{}` lists chunk {idx} out of order or twice",
                            e.path
                        ));
                    }
                    last = Some(*idx);
                }
            }
            if let Node::Symlink { target } = &e.node {
                if target.is_empty() || target.contains('\0') {
                    return Err(format!("`{}` is a symlink to an invalid target", e.path));
                }
            }
        }
        Ok(())
    }

    /// The tree as a registry bundle: magic, version, postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 64);
        out.extend_from_slice(&TREE_MAGIC);
        out.extend_from_slice(&TREE_VERSION.to_le_bytes());
        // Encoding into a Vec fails only on out-of-memory, which aborts.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Whether `bytes` claim to be a tree (rather than a wasm module).
    pub fn is_tree(bytes: &[u8]) -> bool {
        bytes.starts_with(&TREE_MAGIC)
    }

    /// Decode and validate a tree bundle.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let rest = bytes.strip_prefix(&TREE_MAGIC).ok_or(TreeError::NotATree)?;
        let (version, body) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| TreeError::Malformed("truncated after the magic bytes".into()))?;
        let found = u16::from_le_bytes(*version);
        if found != TREE_VERSION {
            return Err(TreeError::UnknownVersion { found });
        }
        let (tree, rest): (FileTree, _) =
            postcard::take_from_bytes(body).map_err(|e| TreeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TreeError::Malformed(format!(
                "{} bytes follow the tree",
                rest.len()
            )));
        }
        tree.validate().map_err(TreeError::Malformed)?;
        Ok(tree)
    }
}

/// A relative path inside a preopen: `/`-separated, no empty, `.` or `..`
/// component, no NUL.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.contains('\0') {
        return Err(format!("`{path}` is not a valid path in a file tree"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`{path}` is not a clean relative path (no leading `/`, `.`, `..` or empty parts)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64, chunks: &[(u32, u8)]) -> Node {
        Node::File(FileImage {
            len,
            executable: false,
            chunks: chunks.iter().map(|(i, b)| (*i, Hash::of(&[*b]))).collect(),
        })
    }

    fn entry(path: &str, node: Node) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            node,
        }
    }

    fn sample() -> FileTree {
        FileTree {
            entries: vec![
                entry("a", Node::Dir),
                entry("a/x", file(70_000, &[(0, 1), (1, 2)])),
                entry(
                    "b",
                    Node::Symlink {
                        target: "a/x".into(),
                    },
                ),
                entry("c", file(3, &[(0, 1)])),
            ],
        }
    }

    #[test]
    fn a_tree_round_trips_and_counts_its_bytes_and_chunks() {
        let t = sample();
        let bytes = t.encode();
        assert!(FileTree::is_tree(&bytes));
        assert_eq!(FileTree::decode(&bytes).expect("decodes"), t);
        assert_eq!(t.bytes(), 70_003);
        assert_eq!(t.chunk_hashes().len(), 2);
    }

    #[test]
    fn bad_trees_are_refused_with_the_reason() {
        let mut t = sample();
        t.entries.swap(0, 1);
        assert!(t.validate().expect_err("refused").contains("out of order"));
        let mut t = sample();
        t.entries.remove(0);
        assert!(t
            .validate()
            .expect_err("refused")
            .contains("without its directory"));
        let mut t = sample();
        t.entries[3] = entry("c", file(3, &[(1, 1)]));
        assert!(t
            .validate()
            .expect_err("refused")
            .contains("beyond its length"));
        for bad in ["", "/abs", "a/../b", "./a", "a//b", "a/"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        let mut bytes = sample().encode();
        bytes[8] = 7;
        assert!(matches!(
            FileTree::decode(&bytes),
            Err(TreeError::UnknownVersion { found: 7 })
        ));
        assert!(matches!(
            FileTree::decode(b"\0asm\x01\0\0\0"),
            Err(TreeError::NotATree)
        ));
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                FileTree::decode(&bytes[..len]).is_err(),
                "truncated at {len}"
            );
        }
    }
}
