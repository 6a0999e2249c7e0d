//! What the two Nix executors share: how a Nix command is built (options, environment,
//! binary dir), the Nix version and the flags chosen from it, input validation, the
//! Nix helper code both evaluation expressions use, and the gc roots.
//!
//! Values from the caller never become Nix code: they travel as `--argstr` strings and
//! are looked up with `builtins.getAttr`. Roots live in one directory owned by the
//! library (one symlink per `.drv`, one per built output); when that directory is not
//! under `/nix/var/nix/gcroots`, each root is registered as an indirect root through
//! a link in `gcroots/auto/`, as `nix-store --add-root --indirect` does.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{EvalOutput, EvalRequest, JobContext, JobError};

/// Options applied to every Nix call of an executor.
#[derive(Debug, Clone)]
pub struct NixOptions {
    /// Extra `--option NAME VALUE` pairs (`builders`, `max-jobs`, `substituters`…).
    pub options: Vec<(String, String)>,
    /// Extra environment variables of every Nix call (`NIX_CONFIG`, `NIX_PATH`…).
    pub env: Vec<(String, String)>,
    /// Directory of the `nix`, `nix-store` and `nix-instantiate` binaries; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// The one directory of gc roots owned by the library.
    pub gc_root_dir: PathBuf,
    /// Attribute path, relative to the evaluated system, of the expected machine id.
    pub machine_id_attr: String,
}

impl Default for NixOptions {
    fn default() -> Self {
        NixOptions {
            options: Vec::new(),
            env: Vec::new(),
            bin_dir: None,
            gc_root_dir: PathBuf::from("/nix/var/nix/gcroots/genbuild"),
            machine_id_attr: "config.services.comin.machineId".to_string(),
        }
    }
}

/// A Nix version, as `nix --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NixVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Lix (a Nix fork, versions 2.90 and up, forked from Nix 2.18).
    pub lix: bool,
}

impl NixVersion {
    /// Parses the output of `nix --version`, e.g. `nix (Nix) 2.8.0` or
    /// `nix (Lix, like Nix) 2.91.1`. Suffixes such as `pre2024…` or `-dev` are ignored.
    pub fn parse(output: &str) -> Option<NixVersion> {
        let line = output.lines().next()?.trim();
        let number = line.split_whitespace().rev().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut parts = number.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(NixVersion { major, minor, patch, lix: line.contains("Lix") })
    }

    /// Whether `nix build` needs `DRV^*` to build a derivation's outputs: from Nix 2.15
    /// on a bare `.drv` path means the file itself; 2.8 rejects the `^*` syntax.
    pub fn needs_all_outputs_suffix(&self) -> bool {
        (self.major, self.minor) >= (2, 15)
    }
}

impl std::fmt::Display for NixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.lix { "Lix" } else { "Nix" };
        write!(f, "{name} {}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Nix helpers prepended to both evaluation expressions. `lookupOr` walks an attribute
/// path given as a list of names, giving `null` where it is missing.
pub(crate) const NIX_HELPERS: &str = r#"
  walk = value: names: builtins.foldl' (acc: name: builtins.getAttr name acc) value names;
  lookupOr = value: names: builtins.foldl'
    (acc: name: if builtins.isAttrs acc && builtins.hasAttr name acc then builtins.getAttr name acc else null)
    value names;
  machineIdOf = value: names: let id = lookupOr value names; in if id == null then "" else id;
  paths = top: { drv = top.drvPath; out = top.outPath; };
"#;

/// The state shared by an executor's calls: its options and the detected version.
#[derive(Debug)]
pub(crate) struct Nix {
    pub(crate) options: NixOptions,
    version: OnceLock<NixVersion>,
}

impl Nix {
    pub(crate) fn new(options: NixOptions) -> Nix {
        Nix { options, version: OnceLock::new() }
    }

    /// `program` (from `bin_dir` when set) with the environment, every `--option` pair,
    /// then `args` (all Nix commands take options before their operation).
    pub(crate) fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = match &self.options.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut cmd = Command::new(program);
        for (name, value) in &self.options.options {
            cmd.arg("--option").arg(name).arg(value);
        }
        cmd.args(args);
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The Nix version, asked once per executor (through `ctx`, so it can be cancelled).
    pub(crate) fn version(&self, ctx: &JobContext) -> Result<NixVersion, JobError> {
        if let Some(version) = self.version.get() {
            return Ok(*version);
        }
        let output = ctx.run(self.command("nix", ["--version"]))?;
        let version = NixVersion::parse(&output.stdout).ok_or_else(|| {
            JobError::Failed(format!("cannot read the Nix version from `nix --version`: {:?}", output.stdout))
        })?;
        log::debug!("using {version}");
        Ok(*self.version.get_or_init(|| version))
    }

    /// The attribute path of the machine id, as JSON for `--argstr`.
    pub(crate) fn machine_id_path(&self) -> Result<String, JobError> {
        attr_path_json("machine id attribute", &self.options.machine_id_attr)
    }

    /// Asks the store, not the file system (a path may exist without being valid).
    pub(crate) fn is_store_path_valid(&self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        let mut cmd = self.command("nix-store", ["--check-validity", path]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        match cmd.status() {
            Ok(status) => status.success(),
            Err(e) => {
                log::warn!("cannot run nix-store --check-validity {path}: {e}");
                false
            }
        }
    }

    /// Whether `output` is in the store; if so it gets the root a build would give it.
    pub(crate) fn is_built(&self, output: &EvalOutput) -> bool {
        if !self.is_store_path_valid(&output.out_path) {
            return false;
        }
        let rooted = self.out_root(&output.drv_path).and_then(|root| {
            replace_symlink(Path::new(&output.out_path), &root).map_err(|e| {
                JobError::Failed(format!("cannot create the gc root {}: {e}", root.display()))
            })?;
            self.register_indirect(&root)
        });
        if let Err(e) = rooted {
            log::warn!("{e}; {} is built but not protected from garbage collection", output.out_path);
        }
        true
    }

    /// Where the built output of `drv_path` gets its root.
    pub(crate) fn out_root(&self, drv_path: &str) -> Result<PathBuf, JobError> {
        let dir = self.root_dir()?;
        Ok(dir.join(format!("{}.out", store_basename(drv_path)?)))
    }

    /// Roots the `.drv` so that a garbage collection before the build keeps it.
    pub(crate) fn root_drv(&self, drv_path: &str) -> Result<(), JobError> {
        let dir = self.root_dir()?;
        let root = dir.join(store_basename(drv_path)?);
        replace_symlink(Path::new(drv_path), &root)
            .map_err(|e| JobError::Failed(format!("cannot create the gc root {}: {e}", root.display())))?;
        self.register_indirect(&root)
    }

    /// Removes the roots (and their `auto/` links) of every `.drv` not in `live`.
    pub(crate) fn release_unused(&self, live_drv_paths: &[String]) {
        let dir = &self.options.gc_root_dir;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let live: HashSet<&str> =
            live_drv_paths.iter().filter_map(|p| Path::new(p).file_name()?.to_str()).collect();
        let auto_links = self.auto_links();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(drv) = name.to_str().and_then(drv_of_root) else { continue };
            if live.contains(drv) {
                continue;
            }
            let root = entry.path();
            if let Some(link) = auto_links.get(&root) {
                let _ = std::fs::remove_file(link);
            }
            if let Err(e) = std::fs::remove_file(&root) {
                log::warn!("cannot remove the gc root {}: {e}", root.display());
            }
        }
    }

    fn root_dir(&self) -> Result<PathBuf, JobError> {
        let dir = &self.options.gc_root_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            JobError::Failed(format!("cannot create the gc root directory {}: {e}", dir.display()))
        })?;
        std::fs::canonicalize(dir).map_err(|e| {
            JobError::Failed(format!("cannot resolve the gc root directory {}: {e}", dir.display()))
        })
    }

    fn gcroots_dir(&self) -> PathBuf {
        let state = self
            .options
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "NIX_STATE_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| std::env::var_os("NIX_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/nix/var/nix"));
        state.join("gcroots")
    }

    /// Makes `root` (a symlink outside `gcroots/`) known to the collector.
    fn register_indirect(&self, root: &Path) -> Result<(), JobError> {
        let gcroots = self.gcroots_dir();
        let gcroots = std::fs::canonicalize(&gcroots).unwrap_or(gcroots);
        if root.starts_with(&gcroots) {
            return Ok(());
        }
        let auto = gcroots.join("auto");
        let link = auto.join(format!("genbuild-{:016x}", fnv1a(root.as_os_str().as_encoded_bytes())));
        std::fs::create_dir_all(&auto)
            .and_then(|()| replace_symlink(root, &link))
            .map_err(|e| JobError::Failed(format!("cannot register the gc root {}: {e}", link.display())))
    }

    /// `auto/` links pointing into the root directory, by target.
    fn auto_links(&self) -> HashMap<PathBuf, PathBuf> {
        let dir =
            std::fs::canonicalize(&self.options.gc_root_dir).unwrap_or(self.options.gc_root_dir.clone());
        let Ok(entries) = std::fs::read_dir(self.gcroots_dir().join("auto")) else { return HashMap::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                target.starts_with(&dir).then(|| (target, e.path()))
            })
            .collect()
    }
}

/// The `.drv` name a root in the root directory belongs to: `X.drv` for the root of
/// the derivation, `X.drv.out…` for its outputs (Nix suffixes extra outputs).
fn drv_of_root(name: &str) -> Option<&str> {
    if name.ends_with(".drv") {
        return Some(name);
    }
    name.rfind(".drv.out").map(|i| &name[..i + 4])
}

fn store_basename(drv_path: &str) -> Result<&str, JobError> {
    Path::new(drv_path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| drv_path.starts_with('/') && n.ends_with(".drv"))
        .ok_or_else(|| JobError::Failed(format!("{drv_path:?} is not the store path of a derivation")))
}

/// Points `link` at `target`, atomically replacing whatever `link` was.
fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("root"),
        uuid::Uuid::new_v4().simple()
    ));
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Refuses what cannot name a commit or what would leave the repository, before any
/// process starts.
pub(crate) fn validate(req: &EvalRequest) -> Result<(), JobError> {
    let id = &req.commit_id;
    if !matches!(id.len(), 40 | 64) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JobError::Failed(format!(
            "invalid commit id {id:?}: a commit id is 40 or 64 hexadecimal characters"
        )));
    }
    subdir(&req.repository_subdir)?;
    if req.hostname.is_empty() {
        return Err(JobError::Failed("invalid hostname \"\": the hostname is empty".into()));
    }
    attr_path_json("system attribute", &req.system_attr)?;
    Ok(())
}

/// The subdirectory as a relative path, `None` for the repository root.
pub(crate) fn subdir(subdir: &str) -> Result<Option<&Path>, JobError> {
    let refuse =
        |reason: &str| Err(JobError::Failed(format!("invalid repository subdirectory {subdir:?}: {reason}")));
    if subdir.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    let path = Path::new(subdir);
    let mut normal = false;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return refuse("it must be relative to the repository")
            }
            Component::ParentDir => return refuse("it must not contain `..`"),
            Component::CurDir => {}
            Component::Normal(_) => normal = true,
        }
    }
    Ok(normal.then_some(path))
}

/// `a.b.c` as the JSON list `["a","b","c"]`; empty components are refused (`""` is
/// the empty path). Attribute names holding a dot cannot be expressed.
pub(crate) fn attr_path_json(what: &str, path: &str) -> Result<String, JobError> {
    if path.is_empty() {
        return Ok("[]".into());
    }
    let names: Vec<&str> = path.split('.').collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(JobError::Failed(format!("invalid {what} {path:?}: it has an empty attribute name")));
    }
    Ok(serde_json::Value::from(names).to_string())
}

/// Reads the `{drv, out, machineId}` object an evaluation prints.
pub(crate) fn parse_eval_output(stdout: &str) -> Result<EvalOutput, JobError> {
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| JobError::Failed(format!("cannot read the evaluation's output ({e}): {stdout:?}")))?;
    let field = |name: &str| -> Result<String, JobError> {
        match value.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            other => Err(JobError::Failed(format!(
                "the evaluation gave no string `{name}` (got {}): {stdout:?}",
                other.map_or("nothing".to_string(), |v| v.to_string())
            ))),
        }
    };
    let output =
        EvalOutput { drv_path: field("drv")?, out_path: field("out")?, machine_id: field("machineId")? };
    if output.drv_path.is_empty() || output.out_path.is_empty() {
        return Err(JobError::Failed(format!(
            "the evaluation gave an empty derivation or output path (drv {:?}, out {:?})",
            output.drv_path, output.out_path
        )));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32, lix: bool) -> NixVersion {
        NixVersion { major, minor, patch, lix }
    }

    #[test]
    fn parses_recorded_versions() {
        assert_eq!(NixVersion::parse("nix (Nix) 2.8.0\n"), Some(v(2, 8, 0, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.18.1\n"), Some(v(2, 18, 1, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.24.10\n"), Some(v(2, 24, 10, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.33.0\n"), Some(v(2, 33, 0, false)));
        assert_eq!(NixVersion::parse("nix (Lix, like Nix) 2.91.1\n"), Some(v(2, 91, 1, true)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.25.0pre20241101_dirty"), Some(v(2, 25, 0, false)));
        assert_eq!(NixVersion::parse("nix (Lix, like Nix) 2.93.0-dev"), Some(v(2, 93, 0, true)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.9"), Some(v(2, 9, 0, false)));
        assert_eq!(NixVersion::parse("command not found"), None);
        assert_eq!(NixVersion::parse(""), None);
    }

    #[test]
    fn all_outputs_suffix_from_2_15() {
        assert!(!v(2, 8, 0, false).needs_all_outputs_suffix());
        assert!(!v(2, 14, 1, false).needs_all_outputs_suffix());
        assert!(v(2, 15, 0, false).needs_all_outputs_suffix());
        assert!(v(2, 33, 0, false).needs_all_outputs_suffix());
        assert!(v(2, 91, 1, true).needs_all_outputs_suffix());
    }

    fn req(commit: &str, subdir: &str) -> EvalRequest {
        EvalRequest {
            repository_path: "/r".into(),
            repository_subdir: subdir.into(),
            commit_id: commit.into(),
            system_attr: "nixosConfigurations".into(),
            hostname: "h".into(),
            submodules: false,
        }
    }

    #[test]
    fn validates_commit_ids_and_subdirs() {
        let sha1 = "a".repeat(40);
        assert!(validate(&req(&sha1, "")).is_ok());
        assert!(validate(&req(&"0123456789abcdef".repeat(4), "hosts/x")).is_ok());
        for bad in ["", "HEAD", "main", &"g".repeat(40), &"a".repeat(41), "--upload-pack=x"] {
            let err = validate(&req(bad, "")).unwrap_err().to_string();
            assert!(err.contains("invalid commit id"), "{err}");
        }
        for bad in ["/etc", "..", "a/../..", "a/..", "../x"] {
            let err = validate(&req(&sha1, bad)).unwrap_err().to_string();
            assert!(err.contains("invalid repository subdirectory"), "{err}");
        }
        assert_eq!(subdir(".").unwrap(), None);
        assert_eq!(subdir("./a/").unwrap(), Some(Path::new("./a/")));
    }

    #[test]
    fn attr_paths_become_json_lists() {
        assert_eq!(attr_path_json("x", "").unwrap(), "[]");
        assert_eq!(attr_path_json("x", "a.b").unwrap(), r#"["a","b"]"#);
        assert_eq!(attr_path_json("x", "a\"${x}").unwrap(), r#"["a\"${x}"]"#);
        assert!(attr_path_json("x", "a..b").is_err());
    }

    #[test]
    fn eval_output_needs_both_paths() {
        let ok =
            parse_eval_output(r#"{"drv":"/nix/store/a.drv","out":"/nix/store/a","machineId":""}"#).unwrap();
        assert_eq!(ok.drv_path, "/nix/store/a.drv");
        let err = parse_eval_output(r#"{"drv":"","out":"/nix/store/a","machineId":""}"#).unwrap_err();
        assert!(err.to_string().contains("empty derivation or output path"), "{err}");
        assert!(parse_eval_output("\"/nix/store/a\"").is_err());
    }

    #[test]
    fn roots_map_back_to_their_derivation() {
        assert_eq!(drv_of_root("abc-sys.drv"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root("abc-sys.drv.out"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root("abc-sys.drv.out-2"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root(".abc.drv.tmp-1"), None);
        assert_eq!(drv_of_root("other"), None);
    }
}
