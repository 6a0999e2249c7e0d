//! Where the evaluated source comes from: the repository at the commit, and the
//! subdirectory resolved inside it.
//!
//! A subdirectory may be, or pass through, a symbolic link committed in the
//! repository. Both executors resolve it the same way and refuse one that leaves the
//! repository ("the subdirectory … leaves the repository") with one algorithm
//! ([`resolve`]): the legacy executor over its checkout ([`resolve_in_checkout`], which
//! then also checks the canonical path), the flake executor over the commit's git tree
//! ([`GitTree`]) before Nix runs. (Nix itself refuses such a flake `dir=`, with a
//! message that depends on where the link points.) Links inside a submodule are
//! resolved in the legacy checkout; a flake's are left to Nix's own check.

use crate::process::Command;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::job::JobContext;
use crate::process::Stream;
use crate::JobError;

/// As Linux: past this many links a path is refused.
const MAX_LINKS: usize = 40;

/// A private temporary directory, removed with everything in it on drop.
#[derive(Debug)]
pub(super) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<temp>/genbuild-<what>-<uuid>`, readable by its owner only. `base` is the
    /// parent, `None` for the system's temporary directory.
    pub(super) fn new(what: &str, base: Option<&Path>) -> Result<TempDir, JobError> {
        use std::os::unix::fs::DirBuilderExt;
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = base.join(format!("genbuild-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| {
            JobError::Failed(format!("cannot create the {what} directory {}: {e}", path.display()))
        })?;
        Ok(TempDir { path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// `git`, deaf to the caller's repository-selecting environment.
pub(super) fn git() -> Command {
    let mut cmd = Command::new("git");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn leaves(subdir: &str) -> JobError {
    JobError::Failed(format!("the subdirectory {subdir:?} leaves the repository"))
}

fn missing(subdir: &str, commit: &str) -> JobError {
    JobError::Failed(format!("the subdirectory {subdir:?} does not exist at commit {commit}"))
}

fn too_many_links(subdir: &str) -> JobError {
    JobError::Failed(format!(
        "the subdirectory {subdir:?} passes through more than {MAX_LINKS} symbolic links"
    ))
}

/// `names` (the subdirectory `subdir` of commit `commit`) inside the checkout at
/// `root`, resolved as [`resolve`] does, then checked once more the file system's way:
/// its canonical path must be under the checkout's.
pub(super) fn resolve_in_checkout(
    root: &Path,
    names: &[&str],
    subdir: &str,
    commit: &str,
) -> Result<PathBuf, JobError> {
    let resolved = resolve(&mut Checkout { root }, names, subdir, commit)?;
    let canonical = |path: &Path| {
        std::fs::canonicalize(path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                too_many_links(subdir)
            } else {
                missing(subdir, commit)
            }
        })
    };
    let root = canonical(root)?;
    let dir = canonical(&resolved.iter().fold(root.clone(), |dir, name| dir.join(name)))?;
    if dir.starts_with(&root) {
        Ok(dir)
    } else {
        Err(leaves(subdir))
    }
}

/// What a path names in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Dir,
    File,
    /// A symbolic link, and how the tree finds its target again.
    Link(String),
    /// A submodule's commit: what is inside is not in this tree.
    Submodule,
}

/// A tree to resolve paths in: a commit ([`GitTree`]) or a checkout.
pub(super) trait Tree {
    /// What `path` (slash-separated, from the root) names, `None` if nothing.
    fn entry(&mut self, path: &str) -> Result<Option<Entry>, JobError>;
    /// The target of the link at `path` ([`Entry::Link`] gave `id`).
    fn link_target(&mut self, path: &str, id: &str) -> Result<String, JobError>;
}

/// A checkout, read with `lstat` and `readlink`.
struct Checkout<'a> {
    root: &'a Path,
}

impl Tree for Checkout<'_> {
    fn entry(&mut self, path: &str) -> Result<Option<Entry>, JobError> {
        Ok(std::fs::symlink_metadata(self.root.join(path)).ok().map(|meta| {
            if meta.is_symlink() {
                Entry::Link(String::new())
            } else if meta.is_dir() {
                Entry::Dir
            } else {
                Entry::File
            }
        }))
    }

    fn link_target(&mut self, path: &str, _: &str) -> Result<String, JobError> {
        let link = self.root.join(path);
        let target = std::fs::read_link(&link)
            .map_err(|e| JobError::Failed(format!("cannot read the link {}: {e}", link.display())))?;
        target.into_os_string().into_string().map_err(|t| {
            JobError::Failed(format!("the link {} points to a non-UTF-8 path {t:?}", link.display()))
        })
    }
}

/// The tree of `commit` in `repository`, asked through `git ls-tree` / `git cat-file`.
pub(super) struct GitTree<'a> {
    pub(super) repository: &'a Path,
    pub(super) commit: &'a str,
    pub(super) ctx: &'a JobContext,
}

impl GitTree<'_> {
    fn git(&self, args: &[&str]) -> Result<String, JobError> {
        let mut cmd = git();
        cmd.arg("--literal-pathspecs").arg("-C").arg(self.repository).args(args);
        // Stdout is data; stderr (an error) reaches the log.
        let output = self.ctx.run_with(cmd, &mut |stream, line| {
            if stream == Stream::Stderr {
                self.ctx.log(stream, line)
            }
        })?;
        Ok(output.stdout)
    }
}

impl Tree for GitTree<'_> {
    fn entry(&mut self, path: &str) -> Result<Option<Entry>, JobError> {
        // One path at a time: given a directory and a path inside it, ls-tree lists
        // the directory's entries instead of the directory.
        let listing = self.git(&["ls-tree", "-z", "--full-tree", self.commit, "--", path])?;
        // `<mode> <type> <id>\t<path>\0`
        let found = listing.split('\0').find_map(|record| {
            let (meta, listed) = record.split_once('\t')?;
            let mut meta = meta.split(' ');
            let (mode, id) = (meta.next()?, meta.nth(1)?);
            (listed == path).then(|| match mode {
                "040000" => Entry::Dir,
                "120000" => Entry::Link(id.to_string()),
                "160000" => Entry::Submodule,
                _ => Entry::File,
            })
        });
        Ok(found)
    }

    fn link_target(&mut self, _: &str, id: &str) -> Result<String, JobError> {
        self.git(&["cat-file", "blob", id])
    }
}

/// `names` (the subdirectory `subdir` of commit `commit`) resolved in `tree`, name by
/// name as the file system would, links followed: the names of the directory it leads
/// to. Refused when a link leads out of the repository (an absolute target, or more
/// `..` than there are directories above it). Past a submodule of a commit the rest is
/// taken as it is.
pub(super) fn resolve(
    tree: &mut dyn Tree,
    names: &[&str],
    subdir: &str,
    commit: &str,
) -> Result<Vec<String>, JobError> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: VecDeque<String> = names.iter().map(|n| n.to_string()).collect();
    let mut links = 0;
    let mut opaque = false;
    while let Some(name) = pending.pop_front() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop().ok_or_else(|| leaves(subdir))?;
                continue;
            }
            _ if opaque => {
                resolved.push(name);
                continue;
            }
            _ => {}
        }
        let path = resolved.iter().chain([&name]).cloned().collect::<Vec<_>>().join("/");
        let last = pending.iter().all(|n| n.is_empty() || n == ".");
        match tree.entry(&path)? {
            Some(Entry::Dir) => resolved.push(name),
            Some(Entry::File) if last => resolved.push(name),
            None | Some(Entry::File) => return Err(missing(subdir, commit)),
            Some(Entry::Submodule) => {
                resolved.push(name);
                opaque = true;
            }
            Some(Entry::Link(id)) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(too_many_links(subdir));
                }
                let target = tree.link_target(&path, &id)?;
                if target.starts_with('/') {
                    return Err(leaves(subdir));
                }
                for name in target.split('/').rev() {
                    pending.push_front(name.to_string());
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A tree given as `(path, entry)` pairs (a link by its target); counts lookups.
    struct Table(HashMap<String, String>, usize);

    impl Table {
        fn new(entries: &[(&str, &str)]) -> Table {
            Table(entries.iter().map(|(p, e)| (p.to_string(), e.to_string())).collect(), 0)
        }
    }

    impl Tree for Table {
        fn entry(&mut self, path: &str) -> Result<Option<Entry>, JobError> {
            self.1 += 1;
            Ok(self.0.get(path).map(|what| match what.as_str() {
                "dir" => Entry::Dir,
                "file" => Entry::File,
                "sub" => Entry::Submodule,
                _ => Entry::Link(path.to_string()),
            }))
        }
        fn link_target(&mut self, _: &str, id: &str) -> Result<String, JobError> {
            Ok(self.0[id].clone())
        }
    }

    fn resolve_str(table: &mut Table, subdir: &str) -> Result<String, String> {
        let names: Vec<&str> = subdir.split('/').filter(|n| !n.is_empty()).collect();
        resolve(table, &names, subdir, "c0ffee").map(|r| r.join("/")).map_err(|e| e.to_string())
    }

    #[test]
    fn links_are_followed_inside_and_refused_outside() {
        let mut t = Table::new(&[
            ("real", "dir"),
            ("real/inner", "dir"),
            ("real/file.nix", "file"),
            ("real/esc", "../../outside"),
            ("real/up", "../real/inner/"),
            ("inlink", "real/inner"),
            ("chain", "inlink"),
            ("abs", "/etc"),
            ("toabs", "abs"),
            ("rel", "../outside"),
            ("dot", "./real"),
            ("loop", "loop"),
            ("vendor", "sub"),
            ("tosub", "vendor/../vendor/x"),
        ]);
        assert_eq!(resolve_str(&mut t, "real/inner"), Ok("real/inner".into()));
        assert_eq!(t.1, 2, "one lookup per name");
        assert_eq!(resolve_str(&mut t, "inlink"), Ok("real/inner".into()));
        assert_eq!(resolve_str(&mut t, "chain"), Ok("real/inner".into()));
        assert_eq!(resolve_str(&mut t, "real/up"), Ok("real/inner".into()));
        assert_eq!(resolve_str(&mut t, "dot/inner"), Ok("real/inner".into()));
        assert_eq!(resolve_str(&mut t, "real/file.nix"), Ok("real/file.nix".into()));
        assert_eq!(resolve_str(&mut t, "vendor/hosts/x"), Ok("vendor/hosts/x".into()));
        assert_eq!(resolve_str(&mut t, "tosub"), Ok("vendor/x".into()));
        assert_eq!(resolve_str(&mut t, ""), Ok("".into()));
        for leaving in ["abs", "toabs", "rel", "real/esc", "chain/../../.."] {
            let err = resolve_str(&mut t, leaving).unwrap_err();
            assert_eq!(err, format!("the subdirectory {leaving:?} leaves the repository"));
        }
        for absent in ["nope", "real/nope", "real/file.nix/x"] {
            let err = resolve_str(&mut t, absent).unwrap_err();
            assert!(err.contains("does not exist at commit c0ffee"), "{err}");
        }
        assert!(resolve_str(&mut t, "loop").unwrap_err().contains("more than 40 symbolic links"));
    }

    #[test]
    fn checkouts_refuse_what_resolves_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("checkout"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("real/inner")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("real/inner", root.join("inlink")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("../gone", root.join("gone")).unwrap();
        let resolve = |subdir: &str| {
            let names: Vec<&str> = subdir.split('/').collect();
            resolve_in_checkout(&root, &names, subdir, "c0ffee").map_err(|e| e.to_string())
        };
        assert_eq!(resolve("inlink"), Ok(std::fs::canonicalize(root.join("real/inner")).unwrap()));
        assert_eq!(resolve("abs"), Err("the subdirectory \"abs\" leaves the repository".into()));
        assert_eq!(resolve("rel"), Err("the subdirectory \"rel\" leaves the repository".into()));
        assert_eq!(resolve("gone"), Err("the subdirectory \"gone\" leaves the repository".into()));
        assert!(resolve("nope").unwrap_err().contains("does not exist at commit c0ffee"));
        assert!(resolve("loop").unwrap_err().contains("symbolic links"));
    }
}
