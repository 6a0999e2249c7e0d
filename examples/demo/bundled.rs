//! The bundled demo: what a run without arguments evaluates and builds, created for
//! the run and removed after it (the repository and the gc roots).

use std::path::PathBuf;

use crate::args::Target;
use crate::git::git;

/// A temporary git repository holding a tiny legacy `default.nix` (one derivation, no
/// nixpkgs, no network), and a gc root directory of its own; both removed on drop.
pub struct Bundled {
    pub repo: PathBuf,
    pub gc_roots: PathBuf,
}

impl Bundled {
    pub fn create() -> Result<Bundled, String> {
        let id = uuid::Uuid::new_v4().simple();
        let bundled = Bundled {
            repo: std::env::temp_dir().join(format!("genbuild-demo-{id}")),
            // Under gcroots/, so that Nix's collector sees the roots without more links.
            gc_roots: PathBuf::from(format!("/nix/var/nix/gcroots/genbuild-demo-{id}")),
        };
        std::fs::create_dir(&bundled.repo)
            .map_err(|e| format!("cannot create {}: {e}", bundled.repo.display()))?;
        // The nonce makes the derivation new, so that the demo really builds.
        let nix = format!(
            r#"{{ hostname }}: {{
  system.toplevel = derivation {{
    name = "demo-${{hostname}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    nonce = "{id}";
    args = [ "-c" "echo building the demo generation; echo ok > $out" ];
  }};
}}
"#
        );
        let repo = &bundled.repo;
        std::fs::write(repo.join("default.nix"), nix)
            .map_err(|e| format!("cannot write default.nix: {e}"))?;
        git(repo, &["init", "-q"])?;
        git(repo, &["add", "-A"])?;
        git(
            repo,
            &["-c", "user.name=demo", "-c", "user.email=demo@example.org", "commit", "-q", "-m", "demo"],
        )?;
        Ok(bundled)
    }

    /// Host `demo` of the repository's `default.nix`, attribute `system`, at HEAD.
    pub fn target(&self) -> Target {
        Target {
            repo: self.repo.clone(),
            host: "demo".into(),
            flake: false,
            attr: Some("system".into()),
            subdir: String::new(),
            commit: "HEAD".into(),
        }
    }
}

impl Drop for Bundled {
    fn drop(&mut self) {
        for dir in [&self.repo, &self.gc_roots] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("demo: cannot remove {}: {e}", dir.display())
                }
                _ => {}
            }
        }
    }
}
