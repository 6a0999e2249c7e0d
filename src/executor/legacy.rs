//! [`NixExecutor`]: evaluates a checkout of exactly the requested commit with one
//! `nix-instantiate --eval` and builds with `nix-store --realise`.
//!
//! The checkout is a `git clone --shared` (objects borrowed from the repository, so it
//! is cheap) in a temporary directory that is removed whatever happens. The expression
//! the caller's repository holds may be a function; it gets `hostname` if it asks for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::nix::{self, Nix, NIX_HELPERS};
use crate::{EvalOutput, EvalRequest, Executor, JobContext, JobError, NixOptions};

/// Evaluates `<checkout>/<subdir>`'s `<system_attr>.toplevel` with `nix-instantiate`
/// and builds it with `nix-store --realise`, rooting the `.drv` after evaluation and the
/// output with the build.
#[derive(Debug)]
pub struct NixExecutor {
    nix: Nix,
}

impl NixExecutor {
    pub fn new(options: NixOptions) -> NixExecutor {
        NixExecutor { nix: Nix::new(options) }
    }

    fn expression() -> String {
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
}

impl Executor for NixExecutor {
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        nix::validate(req)?;
        let subdir = nix::subdir(&req.repository_subdir)?;
        let system_attr = nix::attr_path_json("system attribute", &req.system_attr)?;
        let machine_id_path = self.nix.machine_id_path()?;
        let checkout = Checkout::new(&req.repository_path, &req.commit_id, req.submodules, ctx)?;
        let path = match subdir {
            Some(subdir) => checkout.path().join(subdir),
            None => checkout.path().to_path_buf(),
        };
        let mut cmd = self.nix.command(
            "nix-instantiate",
            ["--eval", "--strict", "--json", "--read-write-mode", "--expr", &Self::expression()],
        );
        cmd.arg("--argstr").arg("path").arg(&path);
        cmd.args(["--argstr", "hostname", &req.hostname]);
        cmd.args(["--argstr", "systemAttr", &system_attr]);
        cmd.args(["--argstr", "machineIdPath", &machine_id_path]);
        let output = nix::parse_eval_output(&ctx.run(cmd)?.stdout)?;
        self.nix.root_drv(&output.drv_path)?;
        Ok(output)
    }

    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let root = self.nix.out_root(drv_path)?;
        let mut cmd = self.nix.command("nix-store", ["--realise", drv_path, "--add-root"]);
        cmd.arg(&root).arg("--indirect");
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

/// A checkout of one commit in a temporary directory, removed on drop.
struct Checkout {
    dir: PathBuf,
    tree: PathBuf,
}

impl Checkout {
    fn new(
        repository: &Path,
        commit: &str,
        submodules: bool,
        ctx: &JobContext,
    ) -> Result<Checkout, JobError> {
        let dir = std::env::temp_dir().join(format!("genbuild-checkout-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).map_err(|e| {
            JobError::Failed(format!("cannot create the checkout directory {}: {e}", dir.display()))
        })?;
        let checkout = Checkout { tree: dir.join("src"), dir };
        let mut clone = git();
        clone
            .args(["clone", "--quiet", "--shared", "--no-checkout", "--"])
            .arg(repository)
            .arg(&checkout.tree);
        ctx.run(clone)?;
        let mut detach = git();
        detach.arg("-C").arg(&checkout.tree).args(["checkout", "-q", "--detach", commit]);
        ctx.run(detach)?;
        if submodules {
            let mut update = git();
            update.arg("-C").arg(&checkout.tree);
            update.args([
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "--quiet",
                "update",
                "--init",
                "--recursive",
            ]);
            ctx.run(update)?;
        }
        Ok(checkout)
    }

    fn path(&self) -> &Path {
        &self.tree
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove the checkout {}: {e}", self.dir.display());
        }
    }
}

/// `git`, deaf to the caller's repository-selecting environment.
fn git() -> Command {
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
