//! The evaluation reuse key: a digest of everything that can change what an
//! evaluation yields, so that an evaluation with the same key can stand in for a new
//! one.
//!
//! In the key: the executor kind, the commit, the repository's canonical path, the
//! subdirectory (normalized), the system attribute, the hostname, whether submodules
//! are included, the machine-id attribute, every `--option` and environment variable
//! of [`NixOptions`](super::NixOptions), the inherited environment that configures Nix
//! (`NIX_*`, and `HOME` and `XDG_CONFIG_*`, which choose its user configuration file),
//! the resolved Nix binary and its version, and genbuild's own evaluation expression
//! (the front end's, with the helpers both share). Not in it: the contents of Nix's
//! configuration files, and for legacy expressions whatever they read besides their
//! commit (hence the opt-in of
//! [`reuse_legacy_evaluations`](super::NixOptions::reuse_legacy_evaluations)).
//!
//! The key is a name-based (SHA-1) UUID of those inputs: it names them without holding
//! them (an environment variable may carry a secret, and the key is persisted), with
//! the uuid crate genbuild already uses. Computing it
//! reads the file system (the repository's and the binary's canonical paths) and, the
//! first time for an executor that has not run Nix yet, runs `nix --version` as a
//! command of the job.

use std::path::{Path, PathBuf};

use super::{flake, legacy, request, Core, Kind, NixOptions, NixVersion};
use crate::job::JobContext;
use crate::EvalRequest;

/// Bumped whenever what goes into the key changes, and whenever genbuild changes how
/// it prepares an evaluation besides its expression (the source, the flags), so old
/// keys never match. 2: the expression is in the key; the legacy checkout has no
/// `.git`.
const FORMAT: &str = "genbuild-eval-key-2";

/// The namespace of the keys' name-based UUIDs (a random UUID, fixed for ever).
const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f0d_6c1e_8a3b_4e27_9b52_7c4d_e1a0_3f68);

/// The key of `req` evaluated by `core`, `None` when an input cannot be pinned down
/// (the repository or Nix cannot be found, the request is invalid).
pub(super) fn eval_reuse_key(core: &Core, req: &EvalRequest, ctx: &JobContext) -> Option<String> {
    let repository = std::fs::canonicalize(&req.repository_path).ok()?;
    let program = resolve_program(core, program_of(core.kind))?;
    let version = core.version(ctx).ok()?;
    let inherited: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| configures_nix(k))
        .collect();
    let nix = Nix { options: &core.options, inherited, program, version };
    let expression = match core.kind {
        Kind::Legacy => legacy::expression(),
        Kind::Flake => flake::expression(),
    };
    key(core.kind, req, &repository, &nix, &expression)
}

/// What identifies the Nix that evaluates.
struct Nix<'a> {
    options: &'a NixOptions,
    inherited: Vec<(String, String)>,
    program: PathBuf,
    version: NixVersion,
}

fn program_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Legacy => "nix-instantiate",
        Kind::Flake => "nix",
    }
}

/// Environment variables that change how Nix evaluates or where it reads its settings.
fn configures_nix(name: &str) -> bool {
    name.starts_with("NIX_") || matches!(name, "HOME" | "XDG_CONFIG_HOME" | "XDG_CONFIG_DIRS")
}

/// The binary `core` runs, resolved: from `bin_dir`, or the first in `PATH`.
fn resolve_program(core: &Core, program: &str) -> Option<PathBuf> {
    let candidate = core.program(program);
    if candidate.components().count() > 1 {
        return std::fs::canonicalize(candidate).ok();
    }
    let path = core
        .options
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.into())
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find_map(|p| {
        let meta = std::fs::metadata(&p).ok()?;
        meta.is_file().then(|| std::fs::canonicalize(&p).ok()).flatten()
    })
}

/// The key of `req`, evaluated by `kind`'s `expression` (genbuild's own Nix code, which
/// an upgrade of genbuild may change) with `nix`.
fn key(kind: Kind, req: &EvalRequest, repository: &Path, nix: &Nix<'_>, expression: &str) -> Option<String> {
    let subdir = request::subdir(&req.repository_subdir).ok()?.join("/");
    let mut inherited = nix.inherited.clone();
    inherited.sort();
    let inputs = serde_json::json!({
        "format": FORMAT,
        "kind": kind.as_str(),
        "commit": req.commit_id.to_ascii_lowercase(),
        "repository": repository.to_str()?,
        "subdir": subdir,
        "systemAttr": req.system_attr,
        "hostname": req.hostname,
        "submodules": req.submodules,
        "machineIdAttr": nix.options.machine_id_attr,
        "options": nix.options.options,
        "env": nix.options.env,
        "inheritedEnv": inherited,
        "program": nix.program.to_str()?,
        "version": nix.version.to_string(),
        "expression": expression,
    });
    Some(uuid::Uuid::new_v5(&KEY_NAMESPACE, inputs.to_string().as_bytes()).simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> EvalRequest {
        EvalRequest {
            repository_path: "/srv/r".into(),
            repository_subdir: "hosts/x".into(),
            commit_id: "a".repeat(40),
            system_attr: "nixosConfigurations".into(),
            hostname: "h".into(),
            submodules: false,
        }
    }

    fn nix(options: &NixOptions) -> Nix<'_> {
        Nix {
            options,
            inherited: vec![("NIX_PATH".into(), "nixpkgs=/a".into())],
            program: "/usr/bin/nix".into(),
            version: NixVersion { major: 2, minor: 8, patch: 0, lix: false },
        }
    }

    const EXPRESSION: &str = "{ path }: import path";

    fn key_of(kind: Kind, req: &EvalRequest, repository: &str, nix: &Nix<'_>) -> String {
        key(kind, req, Path::new(repository), nix, EXPRESSION).expect("a key")
    }

    #[test]
    fn every_input_changes_the_key() {
        let options = NixOptions::default();
        let base = key_of(Kind::Flake, &req(), "/srv/r", &nix(&options));
        assert_eq!(base.len(), 32);
        assert_eq!(base, key_of(Kind::Flake, &req(), "/srv/r", &nix(&options)), "the key is stable");

        let mut changed: Vec<(&str, String)> = Vec::new();
        changed.push(("kind", key_of(Kind::Legacy, &req(), "/srv/r", &nix(&options))));
        changed.push(("repository", key_of(Kind::Flake, &req(), "/srv/other", &nix(&options))));
        let with = |f: &dyn Fn(&mut EvalRequest)| {
            let mut r = req();
            f(&mut r);
            key_of(Kind::Flake, &r, "/srv/r", &nix(&options))
        };
        changed.push(("commit", with(&|r| r.commit_id = "b".repeat(40))));
        changed.push(("subdir", with(&|r| r.repository_subdir = "hosts/y".into())));
        changed.push(("system attr", with(&|r| r.system_attr = "other".into())));
        changed.push(("hostname", with(&|r| r.hostname = "h2".into())));
        changed.push(("submodules", with(&|r| r.submodules = true)));
        let with_options = |f: &dyn Fn(&mut NixOptions)| {
            let mut o = NixOptions::default();
            f(&mut o);
            key_of(Kind::Flake, &req(), "/srv/r", &nix(&o))
        };
        changed.push(("machine id attr", with_options(&|o| o.machine_id_attr = "x".into())));
        changed.push(("option", with_options(&|o| o.options.push(("pure-eval".into(), "false".into())))));
        changed.push(("env", with_options(&|o| o.env.push(("NIX_PATH".into(), "nixpkgs=/b".into())))));
        let with_nix = |f: &dyn Fn(&mut Nix<'_>)| {
            let mut n = nix(&options);
            f(&mut n);
            key_of(Kind::Flake, &req(), "/srv/r", &n)
        };
        changed.push(("inherited env", with_nix(&|n| n.inherited[0].1 = "nixpkgs=/b".into())));
        changed.push(("program", with_nix(&|n| n.program = "/opt/nix/bin/nix".into())));
        changed.push(("version", with_nix(&|n| n.version.minor = 9)));

        let mut seen = std::collections::HashSet::from([base.clone()]);
        for (input, key) in changed {
            assert!(seen.insert(key), "changing the {input} does not change the key");
        }
    }

    /// An upgrade of genbuild that changes its evaluation expression must not reuse
    /// what the old one evaluated.
    #[test]
    fn a_change_of_genbuilds_own_expression_changes_the_key() {
        let options = NixOptions::default();
        let n = nix(&options);
        let of = |expression: &str| key(Kind::Flake, &req(), Path::new("/srv/r"), &n, expression).unwrap();
        assert_ne!(of(EXPRESSION), of("{ path }: (import path) // { }"));
        assert_eq!(of(&flake::expression()), of(&flake::expression()));
        assert_ne!(of(&flake::expression()), of(&legacy::expression()));
    }

    #[test]
    fn spellings_of_the_same_input_share_a_key() {
        let options = NixOptions::default();
        let base = key_of(Kind::Flake, &req(), "/srv/r", &nix(&options));
        let mut r = req();
        r.repository_subdir = "./hosts//x/".into();
        r.commit_id = "A".repeat(40);
        assert_eq!(key_of(Kind::Flake, &r, "/srv/r", &nix(&options)), base);
        let mut n = nix(&options);
        n.inherited = vec![("NIX_B".into(), "2".into()), ("NIX_A".into(), "1".into())];
        let mut m = nix(&options);
        m.inherited = vec![("NIX_A".into(), "1".into()), ("NIX_B".into(), "2".into())];
        assert_eq!(key_of(Kind::Flake, &req(), "/srv/r", &n), key_of(Kind::Flake, &req(), "/srv/r", &m));
    }

    #[test]
    fn an_invalid_request_has_no_key() {
        let options = NixOptions::default();
        let mut r = req();
        r.repository_subdir = "../x".into();
        assert_eq!(key(Kind::Flake, &r, Path::new("/srv/r"), &nix(&options), EXPRESSION), None);
    }

    #[test]
    fn what_configures_nix_is_inherited() {
        for name in ["NIX_PATH", "NIX_CONFIG", "NIX_USER_CONF_FILES", "HOME", "XDG_CONFIG_HOME"] {
            assert!(configures_nix(name), "{name}");
        }
        for name in ["PWD", "TERM", "LANG", "SSH_AUTH_SOCK"] {
            assert!(!configures_nix(name), "{name}");
        }
    }
}
