//! A command as genbuild knows it: every setting readable, none hidden.
//!
//! `std::process::Command` keeps some of its settings (`uid`, `gid`, `groups`,
//! `arg0`, `env_clear`, `pre_exec` hooks) without a getter, so code that starts a
//! command other than through std's own `spawn` cannot know it honours them all.
//! genbuild starts the commands of a cgroup itself (a `vfork`-style clone born in the
//! cgroup, [`super::spawn`]), so it needs a description it understands completely:
//! [`Command`], with std's builder methods for what it holds and nothing else. A
//! `std::process::Command` is still accepted ([`AnyCommand`]) and is started by std,
//! which honours whatever it holds.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// A command to run in a job: program, arguments, environment and working directory.
///
/// Built like `std::process::Command`, with the same method names, so that an executor
/// moves to it by changing its import:
///
/// ```
/// use genbuild::Command; // was: use std::process::Command;
///
/// let mut cmd = Command::new("nix-store");
/// cmd.arg("--realise").arg("/nix/store/abc-system.drv").env("NIX_PATH", "").current_dir("/");
/// assert_eq!(cmd.get_program(), "nix-store");
/// assert_eq!(cmd.get_args().count(), 2);
/// ```
///
/// [`JobContext::run`](crate::JobContext::run) runs it with stdin closed, stdout and
/// stderr piped to the job, in a process group (and where possible a cgroup) of its
/// own. Everything it holds is honoured on every way genbuild starts a command; to run
/// as another user, or with a `pre_exec` hook, hand `run` a `std::process::Command`
/// instead, which std then starts.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    /// Variables set (`Some`) or removed (`None`) on top of the inherited environment
    /// (none inherited after `env_clear`).
    env: BTreeMap<OsString, Option<OsString>>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("env_clear", &self.env_clear)
            .field("current_dir", &self.current_dir)
            .finish()
    }
}

impl Command {
    /// A command running `program`: a path, or a name looked up along the command's
    /// own `PATH` (the inherited one unless set with [`env`](Command::env)), as
    /// `execvp` looks it up.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_clear: false,
            current_dir: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env.insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self.env(key, value);
        }
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        let key = key.as_ref().to_owned();
        if self.env_clear {
            self.env.remove(&key);
        } else {
            self.env.insert(key, None);
        }
        self
    }

    /// Starts from an empty environment rather than this process's (and forgets the
    /// variables set so far, as std does).
    pub fn env_clear(&mut self) -> &mut Command {
        self.env.clear();
        self.env_clear = true;
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The program.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments, without the program.
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The variables set (`Some`) or removed (`None`), in the order of their names.
    pub fn get_envs(&self) -> impl ExactSizeIterator<Item = (&OsStr, Option<&OsStr>)> {
        self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_deref()))
    }

    /// Whether the command starts from an empty environment.
    pub fn get_env_clear(&self) -> bool {
        self.env_clear
    }

    /// The working directory, if one is set.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.current_dir.as_deref()
    }

    /// The environment the command gets: this process's (unless cleared) with the
    /// variables set and removed.
    pub(crate) fn environment(&self) -> BTreeMap<OsString, OsString> {
        let mut env: BTreeMap<OsString, OsString> =
            if self.env_clear { BTreeMap::new() } else { std::env::vars_os().collect() };
        for (key, value) in &self.env {
            match value {
                Some(value) => env.insert(key.clone(), value.clone()),
                None => env.remove(key),
            };
        }
        env
    }

    /// The same command as std's: every setting of this type has its std counterpart.
    pub(crate) fn to_std(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        if self.env_clear {
            cmd.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd
    }
}

/// What [`JobContext::run`](crate::JobContext::run) takes: genbuild's [`Command`], or a
/// `std::process::Command`.
///
/// genbuild knows every setting of its own [`Command`] and may start it itself (inside
/// a cgroup, a `vfork`-style clone that costs a fraction of a `fork`). A
/// `std::process::Command` may hold settings no getter shows (`uid`, `gid`, `groups`,
/// `arg0`, `pre_exec` hooks, `env_clear`): it is always started by std's `spawn`, which
/// honours them all (inside a cgroup, with a `fork` and a hook that enters it).
/// Either way `run` sets the command's stdin, stdout, stderr and process group.
#[derive(Debug)]
pub struct AnyCommand(pub(crate) Kind);

#[derive(Debug)]
pub(crate) enum Kind {
    Genbuild(Command),
    Std(std::process::Command),
}

impl From<Command> for AnyCommand {
    fn from(cmd: Command) -> AnyCommand {
        AnyCommand(Kind::Genbuild(cmd))
    }
}

impl From<&mut Command> for AnyCommand {
    fn from(cmd: &mut Command) -> AnyCommand {
        AnyCommand(Kind::Genbuild(cmd.clone()))
    }
}

impl From<std::process::Command> for AnyCommand {
    fn from(cmd: std::process::Command) -> AnyCommand {
        AnyCommand(Kind::Std(cmd))
    }
}

impl AnyCommand {
    pub(crate) fn program(&self) -> &OsStr {
        match &self.0 {
            Kind::Genbuild(cmd) => cmd.get_program(),
            Kind::Std(cmd) => cmd.get_program(),
        }
    }

    pub(crate) fn args(&self) -> Vec<&OsStr> {
        match &self.0 {
            Kind::Genbuild(cmd) => cmd.get_args().collect(),
            Kind::Std(cmd) => cmd.get_args().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_built_as_std_builds_it() {
        let mut cmd = Command::new("env");
        cmd.env("A", "1").env_remove("B").env("C", "3");
        let env = cmd.environment();
        assert_eq!(env.get(OsStr::new("A")).map(|v| v.as_os_str()), Some(OsStr::new("1")));
        assert!(!env.contains_key(OsStr::new("B")));
        cmd.env_clear().env("D", "4").env_remove("D").env("E", "5");
        assert_eq!(cmd.environment().into_iter().collect::<Vec<_>>(), [("E".into(), "5".into())]);
        let std = cmd.to_std();
        assert_eq!(std.get_envs().collect::<Vec<_>>(), [(OsStr::new("E"), Some(OsStr::new("5")))]);
    }

    #[test]
    fn to_std_keeps_program_arguments_and_directory() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "pwd"]).current_dir("/tmp");
        let std = cmd.to_std();
        assert_eq!(std.get_program(), "sh");
        assert_eq!(std.get_args().collect::<Vec<_>>(), ["-c", "pwd"]);
        assert_eq!(std.get_current_dir(), Some(Path::new("/tmp")));
    }
}
