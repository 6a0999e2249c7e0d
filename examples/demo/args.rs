//! The command line. Without `--repo` the bundled demo runs; with `--repo PATH --host
//! NAME` the main job runs on a repository of yours. Everything is checked here, before
//! anything runs: a usage error exits with status 2.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

pub const USAGE: &str = "\
Evaluate (and build) one NixOS generation with genbuild and real Nix.

Usage:
  cargo run --example demo                  the bundled demo: a temporary repository
                                            holding a tiny default.nix, evaluated and
                                            built, then removed with its gc roots
  cargo run --example demo -- --repo PATH --host NAME [options]
                                            the main job on a repository of yours

Options:
  --repo PATH          the git repository (its root, or a bare repository)
  --host NAME          the host whose system is evaluated
  --flake              the repository is a flake: evaluate
                       ATTR.NAME.config.system.build.toplevel of its outputs
                       (otherwise its default.nix is imported, given `hostname` when
                       it is a function, and ATTR.toplevel is evaluated)
  --attr ATTR          the attribute holding the systems (default nixosConfigurations)
  --subdir DIR         where the flake.nix or default.nix is, inside the repository
  --commit REV         the commit to evaluate: anything `git rev-parse` knows
                       (default HEAD)
  --build              build the evaluated generation (otherwise: evaluate only)
  --option NAME VALUE  a Nix setting, passed as `--option NAME VALUE`; repeatable.
                       Defaults, for a fresh single-user root install:
                       build-users-group = \"\", substituters = \"\", sandbox = false,
                       and with --flake experimental-features = nix-command flakes
  --gc-roots DIR       the directory of the gc roots genbuild registers, which keep
                       the derivation and the built system from Nix's garbage
                       collector (default /nix/var/nix/gcroots/genbuild-demo; the
                       next run replaces them)
  --eval-memory-limit SIZE
                       the memory an evaluation may use (its processes together):
                       past it, it is killed and fails; SIZE in bytes, or with
                       K, M, G (KiB, MiB, GiB): 2G, 512M
  --build-memory-limit SIZE
                       the same for a build
  --nice N             the nice value (-20 to 19) Nix runs at
  --json               print the final builder state as JSON on stdout (progress and
                       logs go to stderr); timestamps are RFC 3339 strings in UTC
  -h, --help           this text

Exit status: 0 when what was asked (the evaluation, or with --build the build)
succeeded, 1 when it did not, 2 for a usage error.
";

const TRY_HELP: &str = "run `cargo run --example demo -- --help` for the options";

/// Where the gc roots of a run on your repository go, unless `--gc-roots` says.
pub const DEFAULT_GC_ROOTS: &str = "/nix/var/nix/gcroots/genbuild-demo";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Run(Box<Args>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// The repository to evaluate; `None`: the bundled demo.
    pub target: Option<Target>,
    /// Build after evaluating (the bundled demo always builds).
    pub build: bool,
    pub json: bool,
    /// `--option` pairs, in the order given.
    pub options: Vec<(String, String)>,
    pub gc_roots: Option<PathBuf>,
    /// `--eval-memory-limit` and `--build-memory-limit`, in bytes.
    pub eval_memory_limit: Option<u64>,
    pub build_memory_limit: Option<u64>,
    pub nice: Option<i32>,
}

/// A repository of yours, and what to evaluate in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub repo: PathBuf,
    pub host: String,
    pub flake: bool,
    /// `None`: the builder's default (`nixosConfigurations`).
    pub attr: Option<String>,
    pub subdir: String,
    pub commit: String,
}

/// Reads the arguments (without the program name). `Err` is a usage error, with the
/// hint to `--help`.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    parse_args(args).map_err(|e| format!("{e}\n{TRY_HELP}"))
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    use lexopt::Arg::{Long, Short};
    let mut parser = lexopt::Parser::from_args(args);
    let mut args = Args::default();
    let (mut repo, mut host, mut flake, mut attr, mut subdir, mut commit) =
        (None, None, false, None, None, None);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Long("repo") => repo = Some(PathBuf::from(value(&mut parser)?)),
            Long("host") => host = Some(value(&mut parser)?),
            Long("flake") => flake = true,
            Long("attr") => attr = Some(value(&mut parser)?),
            Long("subdir") => subdir = Some(value(&mut parser)?),
            Long("commit") => commit = Some(value(&mut parser)?),
            Long("build") => args.build = true,
            Long("json") => args.json = true,
            Long("option") => {
                let name = value(&mut parser).map_err(|e| format!("--option needs NAME and VALUE: {e}"))?;
                let setting =
                    value(&mut parser).map_err(|e| format!("--option {name} needs a VALUE: {e}"))?;
                args.options.push((name, setting));
            }
            Long("gc-roots") => args.gc_roots = Some(PathBuf::from(value(&mut parser)?)),
            Long("eval-memory-limit") => args.eval_memory_limit = Some(size(&value(&mut parser)?)?),
            Long("build-memory-limit") => args.build_memory_limit = Some(size(&value(&mut parser)?)?),
            Long("nice") => {
                let n = value(&mut parser)?;
                args.nice = Some(
                    n.parse()
                        .ok()
                        .filter(|n| (-20..=19).contains(n))
                        .ok_or(format!("--nice {n}: -20 to 19"))?,
                );
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let Some(repo) = repo else {
        let given = [
            ("--host", host.is_some()),
            ("--flake", flake),
            ("--attr", attr.is_some()),
            ("--subdir", subdir.is_some()),
            ("--commit", commit.is_some()),
            ("--gc-roots", args.gc_roots.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(format!("{flag} needs --repo PATH (without --repo the bundled demo runs)"));
        }
        return Ok(Parsed::Run(Box::new(args)));
    };
    let host = host.ok_or("--repo needs --host NAME: the host whose system to evaluate")?;
    if host.is_empty() {
        return Err("--host needs a non-empty NAME".into());
    }
    let commit = commit.unwrap_or_else(|| "HEAD".into());
    let subdir = subdir.unwrap_or_default();
    let escapes = |c: std::path::Component| !matches!(c, Component::Normal(_) | Component::CurDir);
    if Path::new(&subdir).components().any(escapes) {
        return Err(format!("--subdir {subdir}: a directory inside the repository (relative, without `..`)"));
    }
    args.target = Some(Target { repo, host, flake, attr, subdir, commit });
    Ok(Parsed::Run(Box::new(args)))
}

/// A size in bytes: a number, with an optional K, M or G (binary units, as `free -h`).
fn size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.trim_end_matches(['B', 'i']).strip_suffix(['K', 'M', 'G']) {
        Some(digits) => (
            digits,
            [10, 20, 30]["KMG".find(text.trim_end_matches(['B', 'i']).chars().last().unwrap()).unwrap()],
        ),
        None => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text}: a size is a number, with K, M or G"))?;
    n.checked_shl(shift)
        .filter(|&bytes| bytes >> shift == n && bytes > 0)
        .ok_or(format!("{text}: not a size"))
}

/// The value of the option just read, as UTF-8.
fn value(parser: &mut lexopt::Parser) -> Result<String, String> {
    let value = parser.value().map_err(|e| e.to_string())?;
    value.into_string().map_err(|v| format!("{v:?} is not UTF-8"))
}

impl Args {
    /// The Nix settings of the run: what a fresh single-user root install needs, then
    /// every `--option` (one with the name of a default replaces it).
    pub fn nix_settings(&self) -> Vec<(String, String)> {
        let flake = self.target.as_ref().is_some_and(|t| t.flake);
        let mut settings: Vec<(String, String)> =
            [("build-users-group", ""), ("substituters", ""), ("sandbox", "false")]
                .into_iter()
                .chain(flake.then_some(("experimental-features", "nix-command flakes")))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for (name, value) in &self.options {
            match settings.iter_mut().find(|(n, _)| n == name) {
                Some(setting) => setting.1 = value.clone(),
                None => settings.push((name.clone(), value.clone())),
            }
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        super::parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> Args {
        match parse(args) {
            Ok(Parsed::Run(args)) => *args,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn limits_read_sizes_and_nice_values() {
        let args = run(&["--eval-memory-limit", "2G", "--build-memory-limit", "512MiB", "--nice", "10"]);
        assert_eq!((args.eval_memory_limit, args.build_memory_limit), (Some(2 << 30), Some(512 << 20)));
        assert_eq!(args.nice, Some(10));
        assert_eq!(run(&["--eval-memory-limit", "1000"]).eval_memory_limit, Some(1000));
        assert!(parse(&["--eval-memory-limit", "lots"]).unwrap_err().contains("a size is a number"));
        assert!(parse(&["--eval-memory-limit", "0"]).unwrap_err().contains("not a size"));
        assert!(parse(&["--nice", "20"]).unwrap_err().contains("-20 to 19"));
    }

    #[test]
    fn no_argument_is_the_bundled_demo() {
        assert_eq!(run(&[]), Args::default());
        let args = run(&["--json", "--option", "max-jobs", "2"]);
        assert!(args.json && args.target.is_none());
        assert_eq!(args.options, [("max-jobs".to_string(), "2".to_string())]);
    }

    #[test]
    fn every_option_of_the_main_job() {
        let args = run(&[
            "--repo",
            "/srv/infra",
            "--host",
            "web1",
            "--flake",
            "--attr",
            "hosts",
            "--subdir",
            "nix",
            "--commit",
            "v1.2",
            "--build",
            "--json",
            "--option",
            "max-jobs",
            "4",
            "--gc-roots",
            "/r",
        ]);
        let target = args.target.clone().unwrap();
        assert_eq!(target.repo, PathBuf::from("/srv/infra"));
        assert_eq!(
            (target.host.as_str(), target.flake, target.attr.as_deref()),
            ("web1", true, Some("hosts"))
        );
        assert_eq!((target.subdir.as_str(), target.commit.as_str()), ("nix", "v1.2"));
        assert!(args.build && args.json);
        assert_eq!(args.gc_roots, Some(PathBuf::from("/r")));
        let defaults = run(&["--repo=/x", "--host=h"]).target.unwrap();
        assert_eq!((defaults.commit.as_str(), defaults.subdir.as_str(), defaults.flake), ("HEAD", "", false));
        assert_eq!(defaults.attr, None);
    }

    #[test]
    fn option_values_may_be_empty_or_look_like_flags() {
        let args = run(&["--option", "substituters", "", "--option", "extra-args", "--foo"]);
        assert_eq!(args.options[0], ("substituters".to_string(), String::new()));
        assert_eq!(args.options[1], ("extra-args".to_string(), "--foo".to_string()));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let err = |args: &[&str]| parse(args).unwrap_err();
        assert!(err(&["--repo", "/x"]).starts_with("--repo needs --host NAME"), "{}", err(&["--repo", "/x"]));
        assert!(err(&["--repo", "/x", "--host", ""]).contains("non-empty"));
        assert!(err(&["--host", "h"]).starts_with("--host needs --repo PATH"));
        assert!(err(&["--commit", "HEAD"]).starts_with("--commit needs --repo PATH"));
        assert!(err(&["--gc-roots", "/r"]).starts_with("--gc-roots needs --repo PATH"));
        assert!(err(&["--frobnicate"]).contains("--frobnicate"), "{}", err(&["--frobnicate"]));
        assert!(err(&["positional"]).contains("positional"));
        assert!(err(&["--repo"]).contains("--repo"));
        assert!(err(&["--option", "x"]).contains("--option x needs a VALUE"));
        for subdir in ["/etc", "../x", "a/../.."] {
            let e = err(&["--repo", "/x", "--host", "h", "--subdir", subdir]);
            assert!(e.contains("a directory inside the repository"), "{e}");
        }
        assert!(parse(&["--repo", "/x", "--host", "h", "--subdir", "./hosts/web1/"]).is_ok());
        assert!(err(&["--build=yes"]).contains("--build"));
        assert!(err(&["--frobnicate"]).ends_with(TRY_HELP));
        assert_eq!(parse(&["--repo", "/x", "-h"]), Ok(Parsed::Help));
        assert_eq!(parse(&["--help", "--frobnicate"]), Ok(Parsed::Help));
    }

    #[test]
    fn settings_default_to_a_fresh_root_install_and_options_override_them() {
        let names = |args: &Args| args.nix_settings().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(&run(&[])), ["build-users-group", "substituters", "sandbox"]);
        let flake = run(&["--repo", "/x", "--host", "h", "--flake"]);
        assert_eq!(names(&flake).last().unwrap(), "experimental-features");
        let args = run(&["--option", "sandbox", "true", "--option", "max-jobs", "0"]);
        let settings = args.nix_settings();
        assert_eq!(settings[2], ("sandbox".to_string(), "true".to_string()));
        assert_eq!(settings[3], ("max-jobs".to_string(), "0".to_string()));
        assert_eq!(settings.len(), 4);
    }
}
