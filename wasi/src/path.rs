//! Sandboxed path resolution: guest path -> host path that cannot leave its
//! preopen.
//!
//! wasmtime-wasi gets this from cap-std; wmig resolves paths itself, one
//! component at a time, so that the result is also a *normalised relative
//! path* (no `..`, no `.`, no symlinks) that a checkpoint can store and the
//! resuming machine can open again below its own `--dir`.
//!
//! Rules, as in cap-std: absolute guest paths, `..` that climbs above the
//! directory descriptor the path is relative to, and symlinks whose target is
//! absolute or climbs out, all fail with `EPERM`; more than 40 symlink hops is
//! `ELOOP`. As a second line of defence the resolved parent directory is
//! canonicalised and must lie below the canonical preopen root.

use std::io;
use std::path::{Path, PathBuf};

use crate::errno::{Errno, WasiResult};

/// Symlink hops before giving up, like Linux's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: u32 = 40;

/// A guest path resolved below a preopen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Components relative to the preopen root, symlinks resolved (except a
    /// final one when not following).
    pub rel: Vec<String>,
    /// `root/rel...`; ends in `/.` when the path named the starting directory
    /// itself so that "via parent" calls (`unlink`, `rmdir`, ...) get the
    /// OS's answer for `.` instead of acting on the directory's name.
    pub host: PathBuf,
}

impl Resolved {
    /// The relative path as stored in a checkpoint (`a/b/c`, empty for root).
    pub fn rel_string(&self) -> String {
        self.rel.join("/")
    }
}

/// Join `root` and relative components into a host path.
pub(crate) fn host_path(root: &Path, rel: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in rel {
        p.push(c);
    }
    p
}

/// Resolve `path` relative to the directory `base` (components below
/// `root`, the canonical preopen directory). `follow` decides whether a
/// final symlink is followed; intermediate ones always are.
pub(crate) fn resolve(
    root: &Path,
    base: &[String],
    path: &str,
    follow: bool,
) -> WasiResult<Resolved> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    if path.starts_with('/') {
        return Err(Errno::PERM);
    }
    if path.contains('\0') {
        return Err(Errno::INVAL);
    }
    let trailing_slash = path.ends_with('/');
    // A trailing slash means "this must be a directory": follow it.
    let follow = follow || trailing_slash;
    let floor = base.len();
    let mut stack: Vec<String> = base.to_vec();
    let mut pending: Vec<String> = components(path);
    pending.reverse(); // pop() yields the next component
    let mut hops = 0u32;
    let mut named_base = pending.is_empty();

    while let Some(c) = pending.pop() {
        let last = pending.is_empty();
        if c == "." {
            named_base = last && stack.len() == floor;
            continue;
        }
        if c == ".." {
            if stack.len() <= floor {
                return Err(Errno::PERM);
            }
            stack.pop();
            named_base = last && stack.len() == floor;
            continue;
        }
        named_base = false;
        let candidate = host_path(root, &stack).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && (!last || follow) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Errno::LOOP);
                }
                let target = std::fs::read_link(&candidate).map_err(Errno::from)?;
                let target = target.to_str().ok_or(Errno::ILSEQ)?;
                if target.starts_with('/') {
                    return Err(Errno::PERM);
                }
                let mut more = components(target);
                if more.is_empty() {
                    return Err(Errno::NOENT);
                }
                if last && target.ends_with('/') && !trailing_slash {
                    // Keep `.` so the final answer still names a directory.
                    more.push(".".to_owned());
                }
                more.reverse();
                pending.extend(more);
                named_base = pending.is_empty() && stack.len() == floor;
            }
            Ok(meta) => {
                if !last && !meta.is_dir() {
                    return Err(Errno::NOTDIR);
                }
                stack.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && last => stack.push(c),
            Err(e) => return Err(Errno::from(e)),
        }
    }

    let mut host = host_path(root, &stack);
    check_inside(root, &host)?;
    if named_base {
        host.push(".");
    } else if trailing_slash {
        // `join("")` appends a separator, which the OS checks for.
        host.push("");
    }
    Ok(Resolved { rel: stack, host })
}

/// Resolve `path` the way cap-std's "via parent" calls do (`unlink`,
/// `rmdir`, `mkdir`, `rename`, `link`, `symlink`, `readlink`, nofollow
/// `utimensat`): resolve the directory part (following symlinks), then name
/// the final component inside it without following it. A path ending in
/// `/`, `/.` or `..` names the directory itself as `.`, so e.g. `rmdir("d/")`
/// is `EINVAL` exactly as under wasmtime.
pub(crate) fn resolve_parent(root: &Path, base: &[String], path: &str) -> WasiResult<Resolved> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    if path.starts_with('/') {
        return Err(Errno::PERM);
    }
    let (dir, name) = split_parent(path);
    let dir_rel = if dir.is_empty() {
        base.to_vec()
    } else {
        resolve(root, base, dir, true)?.rel
    };
    let host = host_path(root, &dir_rel).join(name);
    let mut rel = dir_rel;
    if name != "." {
        rel.push(name.to_owned());
    }
    Ok(Resolved { rel, host })
}

/// cap-std's `split_parent`: (directory part, final name).
fn split_parent(path: &str) -> (&str, &str) {
    if path.ends_with('/') || path.ends_with("/.") {
        return (path, ".");
    }
    match path.rsplit_once('/') {
        Some((_, "..")) => (path, "."),
        Some((dir, name)) => (dir, name),
        None if path == ".." => (path, "."),
        None => ("", path),
    }
}

/// Strip trailing slashes (cap-std's `strip_dir_suffix`), for `mkdir` and
/// `rename`, which accept `dir/`.
pub(crate) fn strip_dir_suffix(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && !path.is_empty() {
        "/"
    } else {
        trimmed
    }
}

/// The single `std::path` component of `path` when it has exactly one
/// normal component (`a`, `a/`, `a/.`): cap-std lstat()s such a name
/// directly, ignoring the trailing slash.
pub(crate) fn single_component(path: &str) -> Option<&str> {
    let mut comps = Path::new(path).components();
    match (comps.next(), comps.next()) {
        (Some(std::path::Component::Normal(c)), None) => c.to_str(),
        _ => None,
    }
}

/// Split a guest path into components, dropping empty ones (`a//b`).
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Defence in depth: the directory that will contain `host` must canonicalise
/// to somewhere below `root` (itself canonical).
fn check_inside(root: &Path, host: &Path) -> WasiResult {
    let dir = if host == root {
        root
    } else {
        host.parent().unwrap_or(root)
    };
    match dir.canonicalize() {
        Ok(canon) if canon.starts_with(root) => Ok(()),
        Ok(canon) => {
            tracing::warn!(path = %host.display(), resolved = %canon.display(), "path escaped its preopen");
            Err(Errno::PERM)
        }
        // The resolver already checked each component exists; a race with
        // the filesystem surfaces as the OS's own error.
        Err(e) => Err(Errno::from(e)),
    }
}

/// Validate a relative path read from a checkpoint and split it.
pub(crate) fn checkpoint_components(path: &str) -> Option<Vec<String>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<String> = path.split('/').map(str::to_owned).collect();
    let ok = parts
        .iter()
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    ok.then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/file"), b"x").unwrap();
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        let root = root.canonicalize().unwrap();
        let outside = outer.path().canonicalize().unwrap();
        (outer, root, outside)
    }

    fn rel(r: WasiResult<Resolved>) -> WasiResult<String> {
        r.map(|r| r.rel_string())
    }

    #[test]
    fn normalises_dots() {
        let (_t, root, _) = setup();
        assert_eq!(
            rel(resolve(&root, &[], "sub/./deeper/../file", false)),
            Ok("sub/file".into())
        );
        assert_eq!(
            rel(resolve(&root, &[], "a//b", false)).err(),
            Some(Errno::NOENT)
        );
        assert_eq!(rel(resolve(&root, &[], "new", false)), Ok("new".into()));
        assert_eq!(rel(resolve(&root, &[], ".", false)), Ok("".into()));
    }

    #[test]
    fn escapes_are_eperm() {
        let (_t, root, _) = setup();
        assert_eq!(
            resolve(&root, &[], "../secret", true).err(),
            Some(Errno::PERM)
        );
        assert_eq!(
            resolve(&root, &[], "/etc/passwd", true).err(),
            Some(Errno::PERM)
        );
        assert_eq!(
            resolve(&root, &[], "sub/../../secret", true).err(),
            Some(Errno::PERM)
        );
        // `..` may not climb above the directory fd either.
        let base = vec!["sub".to_owned()];
        assert_eq!(
            resolve(&root, &base, "../sub/file", true).err(),
            Some(Errno::PERM)
        );
        assert_eq!(
            rel(resolve(&root, &base, "deeper/..", true)),
            Ok("sub".into())
        );
    }

    #[test]
    fn symlinks_resolve_inside_and_refuse_outside() {
        let (_t, root, outside) = setup();
        symlink("sub/file", root.join("inlink")).unwrap();
        symlink(outside.join("secret"), root.join("abslink")).unwrap();
        symlink("../secret", root.join("uplink")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            rel(resolve(&root, &[], "inlink", true)),
            Ok("sub/file".into())
        );
        assert_eq!(
            rel(resolve(&root, &[], "inlink", false)),
            Ok("inlink".into())
        );
        assert_eq!(
            resolve(&root, &[], "abslink", true).err(),
            Some(Errno::PERM)
        );
        assert_eq!(resolve(&root, &[], "uplink", true).err(), Some(Errno::PERM));
        assert_eq!(resolve(&root, &[], "loop", true).err(), Some(Errno::LOOP));
        // Not following a final symlink names the link itself, even outward.
        assert_eq!(
            rel(resolve(&root, &[], "uplink", false)),
            Ok("uplink".into())
        );
    }

    #[test]
    fn naming_the_base_adds_dot() {
        let (_t, root, _) = setup();
        let r = resolve(&root, &[], "sub/..", false).unwrap();
        assert!(
            r.host.to_string_lossy().ends_with("/."),
            "{}",
            r.host.display()
        );
        assert_eq!(r.rel_string(), "");
    }

    #[test]
    fn via_parent_names_the_directory_as_dot() {
        let (_t, root, _) = setup();
        let prefix = root.to_string_lossy().len() + 1;
        let p = |path| {
            resolve_parent(&root, &[], path).map(|r| r.host.to_string_lossy()[prefix..].to_owned())
        };
        assert_eq!(p("sub/file"), Ok("sub/file".into()));
        assert_eq!(p("sub/"), Ok("sub/.".into()));
        assert_eq!(p("sub/."), Ok("sub/.".into()));
        assert_eq!(p("sub/deeper/.."), Ok("sub/.".into()));
        assert_eq!(p("."), Ok(".".into()));
        assert_eq!(p("x"), Ok("x".into()));
        assert_eq!(p(".."), Err(Errno::PERM));
        assert_eq!(p("../x"), Err(Errno::PERM));
        assert_eq!(p("/x"), Err(Errno::PERM));
        assert_eq!(strip_dir_suffix("a//"), "a");
        assert_eq!(single_component("a/."), Some("a"));
        assert_eq!(single_component("./a"), None);
    }

    #[test]
    fn checkpoint_paths_are_validated() {
        assert_eq!(checkpoint_components(""), Some(vec![]));
        assert_eq!(
            checkpoint_components("a/b"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(checkpoint_components("a/../b"), None);
        assert_eq!(checkpoint_components("/a"), None);
        assert_eq!(checkpoint_components("a//b"), None);
    }
}
