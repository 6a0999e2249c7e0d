//! The git side of a run: the checks that make a wrong repository, commit or subdir
//! an error before Nix is asked anything.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A commit, resolved.
#[derive(Debug, Clone)]
pub struct Commit {
    pub id: String,
    /// The first line of its message.
    pub subject: String,
}

/// `repo`, canonical, once it is known to be the root of a git repository (or a bare
/// one).
pub fn check_repository(repo: &Path) -> Result<PathBuf, String> {
    let shown = repo.display();
    if !repo.exists() {
        return Err(format!("the repository {shown} does not exist"));
    }
    let canonical = repo.canonicalize().map_err(|e| format!("cannot resolve {shown}: {e}"))?;
    if !canonical.is_dir() {
        return Err(format!("the repository {shown} is not a directory"));
    }
    let bare = git(&canonical, &["rev-parse", "--is-bare-repository"])
        .map_err(|e| format!("{shown} is not a git repository ({e})"))?;
    if bare == "true" {
        return Ok(canonical);
    }
    let top = PathBuf::from(git(&canonical, &["rev-parse", "--show-toplevel"])?);
    if top != canonical {
        let subdir = canonical.strip_prefix(&top).unwrap_or(&canonical).display();
        return Err(format!(
            "{shown} is inside the git repository {}: pass --repo {} --subdir {subdir}",
            top.display(),
            top.display()
        ));
    }
    Ok(canonical)
}

/// `rev` (a commit id, a branch, a tag, `HEAD~2`…) as a commit of `repo`.
pub fn resolve_commit(repo: &Path, rev: &str) -> Result<Commit, String> {
    let spec = format!("{rev}^{{commit}}");
    let id = git(repo, &["rev-parse", "--verify", "--quiet", "--end-of-options", &spec])
        .map_err(|_| format!("commit {rev} not found in {}", repo.display()))?;
    let subject = git(repo, &["log", "-1", "--format=%s", &id])?;
    Ok(Commit { id, subject })
}

/// Fails unless `commit` holds `file` (`default.nix` or `flake.nix`) in `subdir`.
pub fn check_file(repo: &Path, commit: &Commit, subdir: &str, file: &str, hint: &str) -> Result<(), String> {
    let dir = subdir.trim_start_matches("./").trim_end_matches('/');
    let path = if matches!(dir, "" | ".") { file.to_string() } else { format!("{dir}/{file}") };
    git(repo, &["cat-file", "-e", &format!("{}:{path}", commit.id)]).map(drop).map_err(|_| {
        format!("commit {} of {} has no {path}{hint}", crate::human::short_commit(&commit.id), repo.display())
    })
}

/// `git -C repo ARGS…`'s trimmed stdout, or its first line of stderr.
pub fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("git {}: {}", args.join(" "), stderr.lines().next().unwrap_or("failed")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
