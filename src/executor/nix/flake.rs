//! [`FlakeExecutor`], the flake front end: evaluates `<system_attr>.<hostname>` of the
//! flake at the requested commit with one `nix eval` and builds with `nix build`.
//!
//! The flake is fetched by Nix itself from `git+file://<repo>?rev=<commit>`, so no
//! checkout of ours is needed. The hostname and attribute names reach Nix as
//! `--argstr` values of a function at attribute `f` of a fixed expression, which
//! `nix eval` calls with them; only the repository path and the subdir go into the
//! flake URL.
//!
//! Nix up to 2.9 does not decode the path of a `git+file` URL: a repository whose path
//! needs percent-encoding (a space, `"`, `?`, `#`, `%`, any non-ASCII character…) is
//! then taken for a remote one and only its default branch is fetched ("couldn't find
//! remote ref refs/heads/master"). Such a repository is reached through a symbolic
//! link with a plain name in a private temporary directory, removed after the
//! evaluation. (Relative submodule URLs then resolve against the link's location, so
//! such a repository's submodules need absolute URLs.)
//!
//! The reference names `ref=HEAD`: without a ref, Nix 2.20 and later read the
//! repository's HEAD to pick one, and warn ("could not read HEAD ref") when it is
//! detached, as a deploy tool's checkout often is; the commit is fetched by its `rev`
//! either way. A shallow clone (`git clone --depth 1`, as many CI systems and GitOps
//! tools clone) is named with `shallow=1`: without it Nix refuses a repository that
//! lacks history (2.8 because it counts the revisions, 2.20 and later in so many
//! words); should a Nix still refuse it, the error says that the clone is shallow and
//! how to unshallow it.

use crate::process::Command;
use std::path::{Path, PathBuf};

use super::log::SourceRoot;
use super::source::{self, GitTree, TempDir};
use super::{executor_over_core, Core, Evaluation, Kind, NIX_HELPERS};
use crate::job::JobContext;
use crate::{EvalRequest, JobError, NixOptions};

const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// Evaluates a flake's `<system_attr>.<hostname>.config.system.build.toplevel` with
/// `nix eval` and builds it with `nix build --out-link`.
#[derive(Debug)]
pub struct FlakeExecutor {
    core: Core,
}

impl FlakeExecutor {
    /// An executor running the `nix` of `options.bin_dir` (or `PATH`) with `options`
    /// and the `nix-command` and `flakes` features. Nothing runs until the builder asks
    /// for an evaluation.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use genbuild::{Builder, BuilderConfig, FlakeExecutor, NixOptions, Store};
    ///
    /// let mut options = NixOptions::default();
    /// options.options.push(("builders".into(), "ssh-ng://builder.example x86_64-linux".into()));
    /// let executor = Arc::new(FlakeExecutor::new(options));
    ///
    /// // Evaluates nixosConfigurations.host1 of /srv/infra/flake.nix at each commit.
    /// let builder = Builder::new(BuilderConfig::new("host1", "/srv/infra"), Arc::new(Store::new()), executor);
    /// assert!(builder.generation_uuid().is_none());
    /// ```
    pub fn new(options: NixOptions) -> FlakeExecutor {
        FlakeExecutor { core: Core::new(Kind::Flake, options) }
    }
}

executor_over_core!(FlakeExecutor);

pub(super) fn expression() -> String {
    format!(
        r#"{{ f = {{ flakeRef, hostname, systemAttr, machineIdPath }}:
let {NIX_HELPERS}
  flake = builtins.getFlake flakeRef;
  host = builtins.getAttr hostname (walk flake.outputs (builtins.fromJSON systemAttr));
in {{ result = paths host.config.system.build.toplevel
  // {{ machineId = machineIdOf host (builtins.fromJSON machineIdPath); }}; }}; }}"#
    )
}

/// The `nix eval` of the flake at the commit, and the directory of the link to the
/// repository when its path cannot go into a URL as it is.
pub(super) fn evaluation(
    core: &Core,
    req: &EvalRequest,
    subdir: &[&str],
    ctx: &JobContext,
) -> Result<Evaluation, JobError> {
    let repository = std::fs::canonicalize(&req.repository_path).map_err(|e| {
        JobError::Failed(format!("cannot resolve the repository path {}: {e}", req.repository_path.display()))
    })?;
    let mut tree = GitTree { repository: &repository, commit: &req.commit_id, ctx };
    let dir = source::resolve(&mut tree, subdir, &req.repository_subdir, &req.commit_id)?;
    let (url_path, link) = match repository.to_str().filter(|p| url_safe(p)) {
        Some(path) => (path.to_string(), None),
        None => linked(&repository)?,
    };
    let shallow = is_shallow(&repository);
    let flake_ref = flake_ref(&url_path, &req.commit_id, &dir.join("/"), req.submodules, shallow);
    let mut command = core.command("nix", FEATURES);
    command.args(["eval", "--json", "--argstr", "flakeRef", &flake_ref]);
    let last_args = vec!["--expr".into(), expression(), "f.result".into()];
    let roots = vec![SourceRoot::Origin(format!("git+file://{url_path}"))];
    let hint = shallow.then(|| {
        format!(
            "{} is a shallow clone, which this Nix may not evaluate: fetch its whole history \
             (`git -C {} fetch --unshallow`), or clone it without --depth",
            repository.display(),
            repository.display()
        )
    });
    Ok(Evaluation { command, last_args, source: link, roots, hint })
}

/// `nix build DRV --out-link ROOT` (`DRV^*` where Nix needs it): the output is rooted
/// by the build itself.
pub(super) fn build_command(
    core: &Core,
    drv_path: &str,
    root: &Path,
    ctx: &JobContext,
) -> Result<Command, JobError> {
    let installable = if core.version(ctx)?.needs_all_outputs_suffix() {
        format!("{drv_path}^*")
    } else {
        drv_path.to_string()
    };
    let mut cmd = core.command("nix", FEATURES);
    cmd.args(["build", &installable, "--out-link"]).arg(root);
    Ok(cmd)
}

/// Whether `repository` (a work tree or a bare repository) is a shallow clone.
fn is_shallow(repository: &Path) -> bool {
    repository.join(".git/shallow").is_file() || repository.join("shallow").is_file()
}

/// `git+file://PATH?ref=HEAD&rev=COMMIT[&dir=DIR][&submodules=1][&shallow=1]`; `path`
/// is URL-safe.
fn flake_ref(path: &str, commit: &str, dir: &str, submodules: bool, shallow: bool) -> String {
    let mut url = format!("git+file://{path}?ref=HEAD&rev={commit}");
    if !dir.is_empty() {
        url.push_str("&dir=");
        url.push_str(&encode_query_value(dir));
    }
    if submodules {
        url.push_str("&submodules=1");
    }
    if shallow {
        url.push_str("&shallow=1");
    }
    url
}

/// Whether `path` can be the path of a URL as it is: unreserved characters, sub-delims,
/// `:`, `@` and `/` only (what Nix's URL parser accepts there without decoding).
fn url_safe(path: &str) -> bool {
    path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b))
}

/// A query value: everything but unreserved characters and `/` percent-encoded (Nix
/// decodes query values).
fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A link to `repository` at a URL-safe path: `<temp>/genbuild-flake-<uuid>/repo`.
fn linked(repository: &Path) -> Result<(String, Option<TempDir>), JobError> {
    let base = [std::env::temp_dir(), PathBuf::from("/tmp")]
        .into_iter()
        .find(|dir| dir.to_str().is_some_and(url_safe))
        .ok_or_else(|| {
            JobError::Failed(format!(
                "the repository path {} cannot go into a flake URL, and neither can the \
                 temporary directory that would hold a link to it: set TMPDIR to a plain path",
                repository.display()
            ))
        })?;
    let dir = TempDir::new("flake", Some(&base))?;
    let link = dir.path().join("repo");
    std::os::unix::fs::symlink(repository, &link).map_err(|e| {
        JobError::Failed(format!("cannot link {} to {}: {e}", link.display(), repository.display()))
    })?;
    let path =
        link.to_str().filter(|p| url_safe(p)).map(str::to_string).ok_or_else(|| {
            JobError::Failed(format!("the link {} cannot go into a flake URL", link.display()))
        })?;
    Ok((path, Some(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_refs_carry_only_safe_paths_and_encoded_dirs() {
        let commit = "a".repeat(40);
        assert_eq!(
            flake_ref("/srv/r", &commit, "", false, false),
            format!("git+file:///srv/r?ref=HEAD&rev={commit}")
        );
        assert_eq!(
            flake_ref("/srv/r", &commit, "hosts/x&rev=0 #%", true, true),
            format!("git+file:///srv/r?ref=HEAD&rev={commit}&dir=hosts/x%26rev%3D0%20%23%25&submodules=1&shallow=1")
        );
        assert_eq!(encode_query_value("hosts/é\n"), "hosts/%C3%A9%0A");
    }

    #[test]
    fn paths_needing_encoding_are_not_url_safe() {
        assert!(url_safe("/tmp/.tmpAbC_1-2~/r+s=t;u@v:w,x'y(z)!$&*"));
        for unsafe_path in ["/a b", "/a\"b", "/a?b", "/a#b", "/a%b", "/é", "/a\nb", "/a\\b", "/a[b]"] {
            assert!(!url_safe(unsafe_path), "{unsafe_path:?}");
        }
    }

    #[test]
    fn a_link_stands_for_a_path_that_is_not_url_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("a b?#%\"");
        std::fs::create_dir(&repo).unwrap();
        let (path, dir) = linked(&repo).unwrap();
        assert!(url_safe(&path), "{path}");
        assert_eq!(std::fs::canonicalize(&path).unwrap(), std::fs::canonicalize(&repo).unwrap());
        let dir_path = dir.as_ref().unwrap().path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir_path).unwrap().permissions().mode() & 0o777, 0o700);
        drop(dir);
        assert!(!dir_path.exists(), "the link's directory is removed");
        assert!(repo.exists(), "the repository is not");
    }
}
