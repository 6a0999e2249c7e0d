//! Helpers of the real-Nix tests: temporary git repositories holding tiny systems
//! (no nixpkgs, no network), the Nix settings a fresh single-user root install needs,
//! a builder harness, and the check that no process of a test is left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

#[allow(unused_imports)] // not every test binary uses both
pub use super::{assert_no_process, processes_with};
use genbuild::{proto, Builder, BuilderConfig, Executor, NixOptions, Store};

/// Bound on waits that only guard against hangs (Nix evaluations are fast here).
pub const HANG: Duration = Duration::from_secs(120);

/// Whether Nix can be used. Without it a test fails under `CI=true` and is skipped
/// (with a message) otherwise.
pub fn nix_or_skip() -> bool {
    let found = Command::new("nix-instantiate").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nix-instantiate is not runnable and CI=true: the Nix tests need Nix installed"
        );
        eprintln!("skipped: nix-instantiate is not runnable (Nix not installed)");
    }
    found
}

/// Digits only, so that `sleep 300.NONCE` carries it into the sleeper's command line.
pub fn nonce() -> String {
    format!("{:018}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000_000_000)
}

/// A builder script that says it started, then sleeps 300 s (both processes carry `nonce`).
pub fn sleeper(nonce: &str) -> String {
    format!("echo started {nonce}; /bin/sleep 300.{nonce}; echo > $out")
}

/// `x86_64-linux` and the like, for flakes (pure evaluation has no `currentSystem`).
pub fn system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// A derivation (Nix source) whose builder runs `script` and carries `nonce`.
pub fn drv(name: &str, nonce: &str, script: &str, system: &str) -> String {
    format!(
        r#"derivation {{ name = "{name}"; system = {system}; builder = "/bin/sh"; nonce = "{nonce}"; args = [ "-c" {script:?} ]; }}"#
    )
}

/// What a fresh single-user root install of Debian's nix-bin needs, passed as
/// `--option` (the machine's /etc/nix is never edited).
pub const SETTINGS: [(&str, &str); 3] =
    [("build-users-group", ""), ("substituters", ""), ("sandbox", "false")];

/// The settings of the tests, and a gc root dir of their own (outside gcroots/).
pub struct Env {
    pub roots: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { roots: tempfile::tempdir().expect("temp dir") }
    }

    pub fn options(&self) -> NixOptions {
        NixOptions {
            options: SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            gc_root_dir: self.roots.path().join("roots"),
            ..NixOptions::default()
        }
    }

    pub fn with(&self, name: &str, value: &str) -> NixOptions {
        let mut options = self.options();
        options.options.push((name.into(), value.into()));
        options
    }

    pub fn roots(&self) -> Vec<String> {
        let dir = self.roots.path().join("roots");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Env {
    /// Our `auto/` links would dangle once the temp dir is gone.
    fn drop(&mut self) {
        let dir = self.roots.path().join("roots");
        let Ok(entries) = std::fs::read_dir("/nix/var/nix/gcroots/auto") else { return };
        for entry in entries.flatten() {
            if std::fs::read_link(entry.path()).is_ok_and(|t| t.starts_with(&dir)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A temporary git repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let repo = Repo { dir: tempfile::tempdir().expect("temp dir") };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, file: &str, content: &str) -> &Self {
        let path = self.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always"])
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", "c"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

pub fn rs(commit: &str) -> proto::RepositoryStatus {
    proto::RepositoryStatus { selected_commit_id: commit.into(), ..Default::default() }
}

/// A builder over `executor` with its channels.
pub struct Harness {
    pub builder: Builder,
    pub store: Arc<Store>,
    pub evaluated: Receiver<String>,
    pub built: Receiver<String>,
    pub events: Receiver<proto::Event>,
}

impl Harness {
    pub fn new(config: BuilderConfig, executor: impl Executor) -> Harness {
        let store = Arc::new(Store::new());
        let builder = Builder::new(config, store.clone(), Arc::new(executor));
        Harness {
            evaluated: builder.evaluation_done(),
            built: builder.build_done(),
            events: builder.subscribe(),
            builder,
            store,
        }
    }

    /// Evaluates `commit` and waits for `evaluation_done`.
    pub fn eval(&self, commit: &str) -> proto::Generation {
        let uuid = self.builder.eval(&rs(commit)).expect("eval");
        assert_eq!(self.evaluated.recv_timeout(HANG).expect("evaluation_done"), uuid);
        self.generation(&uuid)
    }

    /// Submits the build of `uuid` and waits for `build_done`.
    pub fn build(&self, uuid: &str) -> proto::Generation {
        self.builder.submit_build(uuid).expect("submit_build");
        assert_eq!(self.built.recv_timeout(HANG).expect("build_done"), uuid);
        self.generation(uuid)
    }

    pub fn generation(&self, uuid: &str) -> proto::Generation {
        self.store.generation(uuid).expect("generation in the store")
    }

    /// Waits for a log line containing `text`.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = std::time::Instant::now() + HANG;
        loop {
            let event =
                self.events.recv_deadline(deadline).unwrap_or_else(|_| panic!("no log line with {text:?}"));
            if let Some(proto::event::Kind::LogLine(line)) = &event.kind {
                if line.line.contains(text) {
                    return;
                }
            }
        }
    }

    /// Every log line received so far.
    pub fn logs(&self) -> String {
        self.events
            .try_iter()
            .filter_map(|e| match e.kind {
                Some(proto::event::Kind::LogLine(l)) => Some(l.line),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Builds the evaluated generation `g` of `commit`, checking the gc roots `env` holds
/// before and after, then evaluates `commit` again and expects the "already built"
/// shortcut. Returns the name of the `.drv`'s root.
pub fn build_rooted_then_already_built(
    h: &Harness,
    env: &Env,
    commit: &str,
    g: &proto::Generation,
) -> String {
    let drv_root = g.drv_path.rsplit('/').next().unwrap().to_string();
    assert_eq!(env.roots(), vec![drv_root.clone()]);

    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "built", "{}", g.build_err);
    assert!(valid(&g.out_path));
    assert_eq!(env.roots(), vec![drv_root.clone(), format!("{drv_root}.out")]);

    let uuid = h.builder.eval(&rs(commit)).unwrap();
    assert_eq!(h.built.recv_timeout(HANG).unwrap(), uuid);
    assert_eq!(h.generation(&uuid).build_reason, genbuild::BUILD_REASON_ALREADY_BUILT);
    drv_root
}

pub fn config(hostname: &str, repo: &Path, system_attr: &str) -> BuilderConfig {
    let mut config = BuilderConfig::new(hostname, repo);
    config.system_attr = system_attr.into();
    config.eval_timeout = HANG;
    config.build_timeout = HANG;
    config
}

/// Whether the store holds `path` (asked of Nix, like the executors do).
pub fn valid(path: &str) -> bool {
    Command::new("nix-store").args(["--check-validity", path]).output().is_ok_and(|o| o.status.success())
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
