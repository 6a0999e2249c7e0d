//! [`NixExecutor`], the legacy front end: evaluates a checkout of exactly the requested
//! commit with one `nix-instantiate --eval` and builds with `nix-store --realise`.
//!
//! The checkout is a `git clone --shared` (objects borrowed from the repository, so it
//! is cheap) in a private temporary directory that is removed whatever happens. Once
//! checked out (submodules included), its repository metadata goes: `.git`, and the
//! `.git` files of submodules. An expression may copy its own directory (`./.`) into
//! the store, which must then hold the commit's files only: the same on every
//! evaluation (the index and logs change each time, so the `.drv` would too, and an
//! evaluation would never be "already built"), and nothing of the repository in the
//! world-readable store. The expression the caller's repository holds may be a
//! function; it gets `hostname` if it asks for it.

use crate::process::Command;
use std::path::Path;

use super::log::SourceRoot;
use super::source::{self, TempDir};
use super::{executor_over_core, Core, Evaluation, Kind, NIX_HELPERS};
use crate::job::JobContext;
use crate::{EvalRequest, JobError, NixOptions};

/// Evaluates `<checkout>/<subdir>`'s `<system_attr>.toplevel` with `nix-instantiate`
/// and builds it with `nix-store --realise`, rooting the `.drv` after evaluation and the
/// output with the build.
#[derive(Debug)]
pub struct NixExecutor {
    core: Core,
}

impl NixExecutor {
    /// An executor running the `nix-instantiate` and `nix-store` of `options.bin_dir`
    /// (or `PATH`) with `options`. Nothing runs until the builder asks for an
    /// evaluation.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use genbuild::{Builder, BuilderConfig, NixExecutor, NixOptions, Store};
    ///
    /// let mut options = NixOptions::default();
    /// options.options.push(("max-jobs".into(), "2".into()));
    /// let executor = Arc::new(NixExecutor::new(options));
    ///
    /// let mut config = BuilderConfig::new("host1", "/srv/infra");
    /// config.system_attr = "machines.host1".into(); // evaluates machines.host1.toplevel
    /// let builder = Builder::new(config, Arc::new(Store::new()), executor);
    /// assert!(!builder.is_evaluating());
    /// ```
    pub fn new(options: NixOptions) -> NixExecutor {
        NixExecutor { core: Core::new(Kind::Legacy, options) }
    }
}

executor_over_core!(NixExecutor);

pub(super) fn expression() -> String {
    format!(
        r#"{{ path, hostname, systemAttr, machineIdPath }}:
let {NIX_HELPERS}
  imported = import path;
  value = if builtins.isFunction imported
    then imported (builtins.intersectAttrs (builtins.functionArgs imported) {{ inherit hostname; }})
    else imported;
  system = walk value (builtins.fromJSON systemAttr);
in paths system.toplevel // {{ machineId = machineIdOf system (builtins.fromJSON machineIdPath); }}"#
    )
}

/// The `nix-instantiate` evaluating a checkout of the commit, and the checkout.
pub(super) fn evaluation(
    core: &Core,
    req: &EvalRequest,
    subdir: &[&str],
    ctx: &JobContext,
) -> Result<Evaluation, JobError> {
    let checkout = TempDir::new("checkout", None)?;
    let tree = checkout.path().join("src");
    check_out(&req.repository_path, &tree, &req.commit_id, req.submodules, ctx)?;
    let path = source::resolve_in_checkout(&tree, subdir, &req.repository_subdir, &req.commit_id)?;
    // Nix names the files by the canonical path given to it.
    let roots = std::fs::canonicalize(&tree)
        .ok()
        .and_then(|tree| tree.to_str().map(|t| vec![SourceRoot::Dir(t.to_string())]))
        .unwrap_or_default();
    let mut command = core.command("nix-instantiate", ["--eval", "--strict", "--json", "--read-write-mode"]);
    command.arg("--argstr").arg("path").arg(path);
    let last_args = vec!["--expr".into(), expression()];
    Ok(Evaluation { command, last_args, source: Some(checkout), roots, hint: None })
}

/// `nix-store --realise DRV --add-root ROOT --indirect`: the output is rooted by the
/// build itself.
pub(super) fn build_command(core: &Core, drv_path: &str, root: &Path) -> Command {
    let mut cmd = core.command("nix-store", ["--realise", drv_path, "--add-root"]);
    cmd.arg(root).arg("--indirect");
    cmd
}

/// Checks out `commit` of `repository` (and its submodules when asked) into `tree`.
fn check_out(
    repository: &Path,
    tree: &Path,
    commit: &str,
    submodules: bool,
    ctx: &JobContext,
) -> Result<(), JobError> {
    let mut clone = source::git();
    clone.args(["clone", "--quiet", "--shared", "--no-checkout", "--"]).arg(repository).arg(tree);
    ctx.run(clone)?;
    let mut detach = source::git();
    detach.arg("-C").arg(tree).args(["checkout", "-q", "--detach", commit]);
    ctx.run(detach)?;
    if submodules {
        let mut update = source::git();
        update.arg("-C").arg(tree).args(["-c", "protocol.file.allow=always"]);
        update.args(["submodule", "--quiet", "update", "--init", "--recursive"]);
        ctx.run(update)?;
    }
    remove_git_metadata(tree, submodules)
}

/// Removes `tree/.git` and, with submodules, every `.git` below (a submodule's is a
/// file pointing into the top one). Links are not followed.
fn remove_git_metadata(tree: &Path, submodules: bool) -> Result<(), JobError> {
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let failed = |path: &Path, e: std::io::Error| {
            JobError::Failed(format!(
                "cannot remove the repository metadata {} from the checkout: {e}",
                path.display()
            ))
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| failed(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| failed(&dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| failed(&path, e))?;
            if entry.file_name() == ".git" {
                let removed =
                    if kind.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(|e| failed(&path, e))?;
            } else if submodules && kind.is_dir() {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_metadata_goes_from_the_checkout_and_its_submodules_only() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join(".git")).unwrap();
        let tree = tmp.path().join("src");
        for dir in [".git/modules/sub", "sub/deeper/nested", "plain"] {
            std::fs::create_dir_all(tree.join(dir)).unwrap();
        }
        std::fs::write(tree.join("sub/.git"), "gitdir: ../.git/modules/sub").unwrap();
        std::fs::write(tree.join("sub/deeper/nested/.git"), "gitdir: x").unwrap();
        std::fs::write(tree.join("plain/file"), "kept").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();

        remove_git_metadata(&tree, false).unwrap();
        assert!(!tree.join(".git").exists());
        assert!(tree.join("sub/.git").exists(), "without submodules, only the top one is looked for");

        remove_git_metadata(&tree, true).unwrap();
        assert!(!tree.join("sub/.git").exists() && !tree.join("sub/deeper/nested/.git").exists());
        assert!(tree.join("plain/file").exists() && tree.join("sub/deeper/nested").is_dir());
        assert!(outside.join(".git").is_dir(), "a link is not followed");
    }
}
