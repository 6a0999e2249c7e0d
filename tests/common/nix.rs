//! Helpers of the real-Nix tests: the two executor kinds as a table, temporary git
//! repositories holding tiny systems (no nixpkgs, no network), the Nix settings a fresh
//! single-user root install needs, and a builder harness. The helpers every test shares
//! (`nonce`, `rs`, `HANG`, process checks) are the parent module's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::HANG;
#[allow(unused_imports)] // not every test binary uses all of them
pub use super::{assert_no_process, nonce, processes_with, rs};
use genbuild::executor::NixVersion;
use genbuild::{
    proto, Builder, BuilderConfig, Executor, FlakeExecutor, Job, JobContext, NixExecutor, NixOptions, Store,
};

/// Bound on waits for Nix (slower than the shell scripts [`HANG`] is made for).
pub const NIX_HANG: Duration = Duration::from_secs(HANG.as_secs() * 6);

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

/// The version of the `nix` on `PATH`, asked once.
pub fn nix_version() -> NixVersion {
    static VERSION: std::sync::OnceLock<NixVersion> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new("nix").arg("--version").output().expect("nix --version");
        NixVersion::parse(&String::from_utf8_lossy(&out.stdout)).expect("a Nix version")
    })
}

/// What `nix build` takes to build the outputs of `drv_path` (`DRV^*` from Nix 2.15 on).
pub fn installable(drv_path: &str) -> String {
    if nix_version().needs_all_outputs_suffix() {
        format!("{drv_path}^*")
    } else {
        drv_path.to_string()
    }
}

/// A builder script that says it started, then sleeps 300 s (the shell and the
/// `sleep` carry `nonce`), saying so every 0.1 s: Nix 2.34 can lose an interrupt while
/// every builder is silent (its worker's `poll` has no timeout), so that a killed
/// client's daemon, or a nix-store given SIGTERM, would let a silent builder run on
/// until it prints something.
pub fn sleeper(nonce: &str) -> String {
    format!(
        "echo started {nonce}; /bin/sleep 300.{nonce} & while kill -0 $! 2>/dev/null; do /bin/sleep 0.1; echo sleeping; done; echo > $out"
    )
}

/// `x86_64-linux` and the like, for flakes (pure evaluation has no `currentSystem`).
pub fn system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// A derivation (Nix source) whose builder runs `script` and carries `nonce`; `system`
/// is Nix source too.
pub fn drv(name: &str, nonce: &str, script: &str, system: &str) -> String {
    format!(
        r#"derivation {{ name = "{name}"; system = {system}; builder = "/bin/sh"; nonce = "{nonce}"; args = [ "-c" {script:?} ]; }}"#
    )
}

/// `s` as a Nix string literal.
pub fn nix_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace("${", "\\${"))
}

/// The two executors, for tests driven over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Legacy,
    Flake,
}

pub const KINDS: [Kind; 2] = [Kind::Legacy, Kind::Flake];

impl Kind {
    pub fn executor(self, options: NixOptions) -> Arc<dyn Executor> {
        match self {
            Kind::Legacy => Arc::new(NixExecutor::new(options)),
            Kind::Flake => Arc::new(FlakeExecutor::new(options)),
        }
    }

    /// The file holding the expression.
    pub fn file(self) -> &'static str {
        match self {
            Kind::Legacy => "default.nix",
            Kind::Flake => "flake.nix",
        }
    }

    pub fn system_attr(self) -> &'static str {
        match self {
            Kind::Legacy => "system",
            Kind::Flake => "nixosConfigurations",
        }
    }

    /// The program that evaluates, as error messages name it.
    pub fn evaluator(self) -> &'static str {
        match self {
            Kind::Legacy => "nix-instantiate",
            Kind::Flake => "nix",
        }
    }

    /// The program that builds, as error messages name it.
    pub fn building_program(self) -> &'static str {
        match self {
            Kind::Legacy => "nix-store",
            Kind::Flake => "nix",
        }
    }

    /// `system` in Nix source: flakes evaluate purely, without `currentSystem`.
    pub fn current_system(self) -> String {
        match self {
            Kind::Legacy => "builtins.currentSystem".into(),
            Kind::Flake => format!("{:?}", system()),
        }
    }

    /// The expression file of a system for `hostname` whose toplevel is `toplevel`
    /// (Nix source; `let` bindings in `lets`), with `machine_id` (Nix source) if any.
    pub fn expression_with(
        self,
        hostname: &str,
        lets: &str,
        toplevel: &str,
        machine_id: Option<&str>,
    ) -> String {
        let id = machine_id.map(|id| format!("config.services.comin.machineId = {id};")).unwrap_or_default();
        match self {
            // A function of its hostname, like a real legacy configuration may be.
            Kind::Legacy => format!(
                "{{ hostname }}: let {lets} in assert hostname == {}; {{ system = {{ toplevel = {toplevel}; {id} }}; }}",
                nix_str(hostname)
            ),
            Kind::Flake => format!(
                "{{ outputs = {{ self }}: let {lets} in {{ nixosConfigurations.{} = {{ config.system.build.toplevel = {toplevel}; {id} }}; }}; }}",
                nix_str(hostname)
            ),
        }
    }

    /// The expression file of a system for `hostname` whose toplevel runs `script`.
    pub fn expression(self, hostname: &str, nonce: &str, script: &str, machine_id: Option<&str>) -> String {
        let toplevel = drv("sys", nonce, script, &self.current_system());
        self.expression_with(hostname, "", &toplevel, machine_id.map(nix_str).as_deref())
    }

    /// Settings this kind needs besides [`Env::options`]: Nix fetches a flake's
    /// submodules itself, and git >= 2.38.1 refuses local-path submodules unless told
    /// otherwise (the legacy executor tells its own git).
    pub fn submodule_env(self) -> Vec<(String, String)> {
        match self {
            Kind::Legacy => Vec::new(),
            Kind::Flake => [
                ("GIT_CONFIG_COUNT", "1"),
                ("GIT_CONFIG_KEY_0", "protocol.file.allow"),
                ("GIT_CONFIG_VALUE_0", "always"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        }
    }
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
        let mut options = NixOptions::default();
        options.options = SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        options.gc_root_dir = self.root_dir();
        options
    }

    pub fn with(&self, name: &str, value: &str) -> NixOptions {
        let mut options = self.options();
        options.options.push((name.into(), value.into()));
        options
    }

    /// `NixOptions::gc_root_dir`.
    pub fn root_dir(&self) -> PathBuf {
        self.roots.path().join("roots")
    }

    /// The owners' directories in the root dir.
    pub fn owners(&self) -> Vec<String> {
        names_in(&self.root_dir())
    }

    /// The roots `store`'s builder keeps.
    pub fn roots_of(&self, store: &Store) -> Vec<String> {
        names_in(&self.root_dir().join(store.id())).into_iter().filter(|n| n != ".lock").collect()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

impl Drop for Env {
    /// Our `auto/` links would dangle once the temp dir is gone.
    fn drop(&mut self) {
        let dir = self.root_dir();
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
    path: PathBuf,
}

impl Repo {
    pub fn new() -> Repo {
        Repo::named("repo", "main")
    }

    /// A repository at `<temp>/<name>` whose first branch is `branch`.
    pub fn named(name: &str, branch: &str) -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::create_dir(&path).expect("repository dir");
        let repo = Repo { dir, path };
        repo.git(&["init", "-q", "-b", branch]);
        repo
    }

    pub fn path(&self) -> &Path {
        &self.path
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

/// A builder over `executor` with its channels.
pub struct Harness {
    pub builder: Builder,
    pub store: Arc<Store>,
    pub evaluated: Receiver<String>,
    pub built: Receiver<String>,
    pub events: Receiver<proto::Event>,
}

impl Harness {
    pub fn new(config: BuilderConfig, executor: Arc<dyn Executor>) -> Harness {
        Harness::with_store(config, Arc::new(Store::new()), executor)
    }

    pub fn with_store(config: BuilderConfig, store: Arc<Store>, executor: Arc<dyn Executor>) -> Harness {
        let builder = Builder::new(config, store.clone(), executor);
        Harness {
            evaluated: builder.evaluation_done(),
            built: builder.build_done(),
            events: builder.subscribe(),
            builder,
            store,
        }
    }

    /// A builder for `kind` over `repo` with `env`'s options.
    pub fn of(kind: Kind, env: &Env, repo: &Repo, hostname: &str) -> Harness {
        Harness::new(nix_config(hostname, repo.path(), kind.system_attr()), kind.executor(env.options()))
    }

    /// Evaluates `commit` and waits for `evaluation_done`.
    pub fn eval(&self, commit: &str) -> proto::Generation {
        let uuid = self.builder.eval(&rs(commit)).expect("eval");
        assert_eq!(self.evaluated.recv_timeout(NIX_HANG).expect("evaluation_done"), uuid);
        self.generation(&uuid)
    }

    /// Submits the build of `uuid` and waits for `build_done`.
    pub fn build(&self, uuid: &str) -> proto::Generation {
        self.builder.submit_build(uuid).expect("submit_build");
        assert_eq!(self.built.recv_timeout(NIX_HANG).expect("build_done"), uuid);
        self.generation(uuid)
    }

    pub fn generation(&self, uuid: &str) -> proto::Generation {
        self.store.generation(uuid).expect("generation in the store")
    }

    /// Waits for a log line containing `text`.
    pub fn wait_for_log(&self, text: &str) {
        super::wait_for_log(&self.events, text, NIX_HANG)
    }

    /// Every log line received so far, as text.
    pub fn logs(&self) -> String {
        let lines = self.events.try_iter().filter_map(|e| match e.kind {
            Some(proto::event::Kind::LogLine(l)) => Some(l.line),
            _ => None,
        });
        lines.collect::<Vec<_>>().join("\n")
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
    assert_eq!(env.roots_of(&h.store), vec![drv_root.clone()]);

    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "built", "{}", g.build_err);
    assert!(valid(&g.out_path));
    assert_eq!(env.roots_of(&h.store), vec![drv_root.clone(), format!("{drv_root}.out")]);

    let uuid = h.builder.eval(&rs(commit)).unwrap();
    assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), uuid);
    assert_eq!(h.generation(&uuid).build_reason, genbuild::BUILD_REASON_ALREADY_BUILT);
    drv_root
}

/// A builder configuration for the Nix tests.
pub fn nix_config(hostname: &str, repo: &Path, system_attr: &str) -> BuilderConfig {
    let mut config = BuilderConfig::new(hostname, repo);
    config.system_attr = system_attr.into();
    config.eval_timeout = NIX_HANG;
    config.build_timeout = NIX_HANG;
    config
}

/// Whether the store holds `path` (asked of Nix, like the executors do).
pub fn valid(path: &str) -> bool {
    Command::new("nix-store").args(["--check-validity", path]).output().is_ok_and(|o| o.status.success())
}

/// Runs `f` in a job whose gc roots belong to `owner`, returning what it returns.
pub fn in_job<T: Send + 'static>(owner: &str, f: impl FnOnce(&JobContext) -> T + Send + 'static) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut f = Some(f);
    let mut job = Job::new(
        move |ctx: &JobContext| {
            let _ = tx.send((f.take().expect("run once"))(ctx));
            Ok(())
        },
        NIX_HANG,
    )
    .with_gc_root_owner(owner);
    job.start();
    job.wait();
    rx.try_recv().expect("the job ran")
}
