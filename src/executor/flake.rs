//! [`FlakeExecutor`]: evaluates `<system_attr>.<hostname>` of the flake at the
//! requested commit with one `nix eval` and builds with `nix build`.
//!
//! The flake is fetched by Nix itself from `git+file://<repo>?rev=<commit>`, so no
//! checkout of ours is needed. The hostname and attribute names reach Nix as
//! `--argstr` values of a function at attribute `f` of a fixed expression, which
//! `nix eval` calls with them; only the repository path and the subdir go into the
//! flake URL, percent-encoded.

use super::nix::{self, Nix, NIX_HELPERS};
use crate::{EvalOutput, EvalRequest, Executor, JobContext, JobError, NixOptions};

const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// Evaluates a flake's `<system_attr>.<hostname>.config.system.build.toplevel` with
/// `nix eval` and builds it with `nix build --out-link`.
#[derive(Debug)]
pub struct FlakeExecutor {
    nix: Nix,
}

impl FlakeExecutor {
    pub fn new(options: NixOptions) -> FlakeExecutor {
        FlakeExecutor { nix: Nix::new(options) }
    }

    fn expression() -> String {
        format!(
            r#"{{ f = {{ flakeRef, hostname, systemAttr, machineIdPath }}:
let {NIX_HELPERS}
  flake = builtins.getFlake flakeRef;
  host = builtins.getAttr hostname (walk flake.outputs (builtins.fromJSON systemAttr));
in {{ result = paths host.config.system.build.toplevel
  // {{ machineId = machineIdOf host (builtins.fromJSON machineIdPath); }}; }}; }}"#
        )
    }
}

/// `git+file://…?rev=…[&dir=…][&submodules=1]`.
fn flake_ref(req: &EvalRequest) -> Result<String, JobError> {
    let repo = std::fs::canonicalize(&req.repository_path).map_err(|e| {
        JobError::Failed(format!("cannot resolve the repository path {}: {e}", req.repository_path.display()))
    })?;
    let repo = repo
        .to_str()
        .ok_or_else(|| JobError::Failed(format!("the repository path {} is not UTF-8", repo.display())))?;
    let mut url = format!("git+file://{}?rev={}", encode(repo, PATH_SAFE), req.commit_id);
    if let Some(dir) = nix::subdir(&req.repository_subdir)? {
        let dir = dir.to_str().unwrap_or_default().trim_end_matches('/');
        url.push_str("&dir=");
        url.push_str(&encode(dir, "/"));
    }
    if req.submodules {
        url.push_str("&submodules=1");
    }
    Ok(url)
}

/// What a URL path may hold literally besides unreserved characters. Nix 2.8 does not
/// decode the path when it decides whether a repository is local, so only what must be
/// encoded is (a path holding a space is then fetched like a remote one: only commits
/// reachable from its HEAD are found).
const PATH_SAFE: &str = "/!$&'()*+,;=:@";

fn encode(s: &str, safe: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || safe.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Executor for FlakeExecutor {
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        nix::validate(req)?;
        let flake_ref = flake_ref(req)?;
        let system_attr = nix::attr_path_json("system attribute", &req.system_attr)?;
        let machine_id_path = self.nix.machine_id_path()?;
        let mut cmd = self.nix.command("nix", FEATURES);
        cmd.args(["eval", "--json", "--expr", &Self::expression(), "f.result"]);
        cmd.args(["--argstr", "flakeRef", &flake_ref]);
        cmd.args(["--argstr", "hostname", &req.hostname]);
        cmd.args(["--argstr", "systemAttr", &system_attr]);
        cmd.args(["--argstr", "machineIdPath", &machine_id_path]);
        let output = nix::parse_eval_output(&ctx.run(cmd)?.stdout)?;
        self.nix.root_drv(&output.drv_path)?;
        Ok(output)
    }

    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let root = self.nix.out_root(drv_path)?;
        let installable = if self.nix.version(ctx)?.needs_all_outputs_suffix() {
            format!("{drv_path}^*")
        } else {
            drv_path.to_string()
        };
        let mut cmd = self.nix.command("nix", FEATURES);
        cmd.args(["build", "--print-build-logs", &installable, "--out-link"]).arg(&root);
        ctx.run(cmd).map(drop)
    }

    fn is_store_path_valid(&self, path: &str) -> bool {
        self.nix.is_store_path_valid(path)
    }

    fn is_built(&self, output: &EvalOutput) -> bool {
        self.nix.is_built(output)
    }

    fn release_unused(&self, live_drv_paths: &[String], _ctx: &JobContext) {
        self.nix.release_unused(live_drv_paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_would_change_the_url() {
        assert_eq!(encode("/tmp/a b?c#d%e", PATH_SAFE), "/tmp/a%20b%3Fc%23d%25e");
        assert_eq!(encode("/tmp/a&b=c", PATH_SAFE), "/tmp/a&b=c");
        assert_eq!(encode("x&rev=0\ny", "/"), "x%26rev%3D0%0Ay");
        assert_eq!(encode("hosts/é", "/"), "hosts/%C3%A9");
    }
}
