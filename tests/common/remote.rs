//! A real Nix remote builder on this machine, for tests/remote_builder.rs.
//!
//! Nix sends a build to a remote builder over ssh (`builders = ssh-ng://…`): its build
//! hook runs `ssh HOST REMOTE-PROGRAM --stdio` and talks to the `nix-daemon --stdio` at
//! the other end. [`Remote`] makes such a remote out of this machine:
//! * an `sshd` of its own on 127.0.0.1 at a free port, as a child of the test (killed
//!   and reaped on drop), with host and client keys, its config, the client's config
//!   and its log in one temp dir (`StrictModes no`: that dir is under the
//!   world-writable /tmp);
//! * a second Nix store behind it: the `remote-program` wrapper runs the daemon in a
//!   private mount namespace with an empty directory of the temp dir bound over /nix.
//!   A remote sharing this machine's /nix/store would wait forever for the lock of the
//!   very output the local Nix holds. Debian's nix-bin lives in /usr/bin, so an empty
//!   /nix is all the remote needs: Nix creates its store and state there on first use.
//!
//! Every process of a remote build is found again: the local Nix and its build hook
//! carry the temp dir's path in their environment (`NIX_SSHOPTS`), the ssh client in its
//! arguments, the remote daemon in its environment (the wrapper exports it); sshd's
//! sessions are the listener's descendants (sshd rewrites its command line and
//! environment block); the derivation's builder is found by the test's nonce.
//!
//! Needs root (`mount`), `sshd`, `ssh`, `ssh-keygen`, `unshare` and Nix outside /nix;
//! [`Remote::start_or_skip`] skips a test without them, except under `CI=true`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use genbuild::NixOptions;
use rustix::process::{Pid, Signal};

use super::nix::nix_or_skip;

/// The ssh `Host` the client config defines for the remote.
pub const HOST: &str = "genbuild-remote";

/// Bound on the harness's own waits (sshd start, the first connection); hangs only.
const START_BOUND: Duration = Duration::from_secs(60);

/// How often /proc and sshd's log are looked at while waiting for a change there.
const POLL: Duration = Duration::from_millis(10);

/// How Nix talks to a remote builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `ssh-ng://`: the daemon protocol, to `nix-daemon --stdio`.
    SshNg,
    /// `ssh://`: the older serve protocol, to `nix-store --serve --write`.
    Ssh,
}

impl Protocol {
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::SshNg => "ssh-ng",
            Protocol::Ssh => "ssh",
        }
    }
}

/// An sshd on 127.0.0.1 whose Nix has a store of its own; see the module doc.
pub struct Remote {
    dir: tempfile::TempDir,
    sshd: Child,
    /// sshd's pid until it is reaped (a reaped pid may belong to anyone).
    listener: Option<i32>,
}

/// A live process, as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: String,
    environ: Vec<u8>,
    /// Start time (clock ticks after boot): a recycled pid has another.
    started: u64,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (parent {}): {}", self.pid, self.ppid, self.cmdline)
    }
}

impl Remote {
    /// Starts a remote, or returns `None` (having said why) when this machine cannot
    /// run one. Under `CI=true` a missing piece is a failure: .ci/setup installs them.
    pub fn start_or_skip() -> Option<Remote> {
        if !nix_or_skip() {
            return None;
        }
        let missing = missing_requirements();
        if !missing.is_empty() {
            let missing = missing.join("; ");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but a remote builder cannot run here: {missing} (`bash .ci/setup` installs openssh-server)"
            );
            eprintln!("skipped: a remote builder cannot run here: {missing}");
            return None;
        }
        Some(Remote::start())
    }

    fn start() -> Remote {
        let dir = tempfile::Builder::new().prefix("genbuild-remote-").tempdir().expect("temp dir");
        let path = dir.path().to_str().expect("a UTF-8 temp dir").to_string();
        // NIX_SSHOPTS is split on whitespace, and the wrapper quotes the path in sh.
        assert!(!path.contains(char::is_whitespace) && !path.contains('\''), "unusable temp dir {path:?}");
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("client_key"));
        fs::copy(dir.path().join("client_key.pub"), dir.path().join("authorized_keys")).unwrap();
        let host_key = fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(dir.path().join("known_hosts"), format!("{HOST} {}\n", host_key.join(" "))).unwrap();
        fs::create_dir(dir.path().join("nix")).unwrap();
        write_executable(&dir.path().join("remote-program"), &remote_program(&path));
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        let mut attempt = 0;
        let sshd = loop {
            attempt += 1;
            match start_sshd(dir.path()) {
                Ok(sshd) => break sshd,
                // Another process took the free port between our look and sshd's bind.
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("sshd did not start; its log:\n{log}"),
            }
        };
        let listener = Some(sshd.id() as i32);
        let remote = Remote { dir, sshd, listener };
        remote.check_connection();
        remote
    }

    /// The temp dir holding keys, configs, logs and the remote's /nix; every process of
    /// a remote build carries its path (see the module doc).
    pub fn marker(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The value of Nix's `builders` setting that sends builds here over `protocol`.
    pub fn builders(&self, protocol: Protocol) -> String {
        format!("{}://{HOST}?remote-program={}/remote-program", protocol.scheme(), self.marker())
    }

    /// The `NIX_SSHOPTS` that make Nix's ssh use this remote's client config.
    pub fn ssh_opts(&self) -> String {
        format!("-F {}/ssh_config", self.marker())
    }

    /// `options` with every build sent here over `protocol`: `builders`, `max-jobs = 0`
    /// (nothing is built locally) and `NIX_SSHOPTS`.
    pub fn configure(&self, mut options: NixOptions, protocol: Protocol) -> NixOptions {
        options.options.push(("builders".into(), self.builders(protocol)));
        options.options.push(("max-jobs".into(), "0".into()));
        options.env.push(("NIX_SSHOPTS".into(), self.ssh_opts()));
        options
    }

    /// The remote's store directory (the `/nix/store` it sees).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("nix/store")
    }

    /// Whether the remote's store directory holds `store_path` (`/nix/store/…`).
    pub fn holds(&self, store_path: &str) -> bool {
        let name = Path::new(store_path).file_name().expect("a store path");
        self.store_dir().join(name).exists()
    }

    /// The tail of sshd's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default(), 4096)
    }

    /// Processes of the remote's side that run now: sshd's sessions and all they
    /// started, the remote daemon (even re-parented), and anything carrying `nonce`.
    pub fn remote_processes(&self, nonce: Option<&str>) -> Vec<Proc> {
        let all = live_processes();
        let sessions = self.listener.map(|pid| descendants(&all, pid)).unwrap_or_default();
        let daemon_mark = format!("GENBUILD_REMOTE={}", self.marker());
        all.into_iter()
            .filter(|p| {
                sessions.contains(&p.pid)
                    || contains(&p.environ, &daemon_mark)
                    || nonce.is_some_and(|n| p.cmdline.contains(n))
            })
            .collect()
    }

    /// Processes of this machine's side that run now: the local Nix, its build hook and
    /// the ssh client (everything carrying the marker that is not the remote's).
    pub fn local_processes(&self, nonce: Option<&str>) -> Vec<Proc> {
        let remote: Vec<i32> = self.remote_processes(nonce).iter().map(|p| p.pid).collect();
        live_processes()
            .into_iter()
            .filter(|p| Some(p.pid) != self.listener && !remote.contains(&p.pid))
            .filter(|p| p.cmdline.contains(self.marker()) || contains(&p.environ, self.marker()))
            .collect()
    }

    /// Processes of both sides that run now.
    pub fn processes(&self, nonce: Option<&str>) -> Vec<Proc> {
        let mut all = self.local_processes(nonce);
        all.extend(self.remote_processes(nonce));
        all
    }

    /// Connects once the way Nix will (`nix store info`, `nix store ping` before Nix
    /// 2.19, through the wrapper): a broken setup fails here with sshd's log rather than
    /// as a failed build. Also checks that Nix made a store in the empty directory, and
    /// that the session went away.
    fn check_connection(&self) {
        let info = if super::nix::nix_version()
            >= genbuild::executor::NixVersion::parse("nix (Nix) 2.19").unwrap()
        {
            "info"
        } else {
            "ping"
        };
        let mut ping = Command::new("nix");
        ping.args(["--extra-experimental-features", "nix-command", "store", info, "--store"])
            .arg(self.builders(Protocol::SshNg))
            .env("NIX_SSHOPTS", self.ssh_opts());
        let (ok, output) = run_bounded(ping, &self.dir.path().join("ping.log"));
        assert!(ok, "`nix store {info}` of the remote failed:\n{output}\nsshd's log:\n{}", self.log());
        assert!(self.store_dir().is_dir(), "the remote made no store in {}", self.store_dir().display());
        let left = wait_gone(|| self.processes(None), START_BOUND);
        assert!(left.is_empty(), "the ping's session did not end: {}", describe(&left));
    }
}

impl Drop for Remote {
    /// Kills sshd, then checks that nothing it started outlives it; what does is
    /// killed (so that it cannot leak into other tests) and fails the test.
    fn drop(&mut self) {
        let all = live_processes();
        let sessions: Vec<Proc> = match self.listener {
            Some(listener) => {
                let pids = descendants(&all, listener);
                all.into_iter().filter(|p| pids.contains(&p.pid)).collect()
            }
            None => Vec::new(),
        };
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        self.listener = None;
        // Sessions outlive sshd's listener; they are found again by pid and start time.
        let still = |p: &Proc| sessions.iter().any(|s| s.pid == p.pid && s.started == p.started);
        let left = wait_gone(
            || {
                let mut left = self.processes(None);
                left.extend(live_processes().into_iter().filter(still));
                left
            },
            Duration::from_secs(2),
        );
        if left.is_empty() {
            return;
        }
        for p in &left {
            let _ = rustix::process::kill_process(Pid::from_raw(p.pid).unwrap(), Signal::KILL);
        }
        if !std::thread::panicking() {
            panic!("processes of the remote outlived its sshd (killed now): {}", describe(&left));
        }
    }
}

/// Waits up to `bound` until `processes` finds none; returns what it finds last.
pub fn wait_gone(processes: impl Fn() -> Vec<Proc>, bound: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + bound;
    loop {
        let left = processes();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// What this machine lacks to run a remote, each with the reason.
fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("not root (the remote's store is bind-mounted over /nix)".to_string());
    }
    for tool in ["sshd", "ssh", "ssh-keygen", "unshare", "nix-daemon", "nix-store"] {
        if find(tool).is_none() {
            missing.push(format!("no `{tool}` in PATH or /usr/sbin"));
        }
    }
    if let Some(daemon) = find("nix-daemon") {
        let daemon = fs::canonicalize(&daemon).unwrap_or(daemon);
        if daemon.starts_with("/nix") {
            missing.push(format!(
                "Nix is installed under /nix ({}), which the remote's empty /nix hides",
                daemon.display()
            ));
        }
    }
    missing
}

/// `tool` in PATH, or in /usr/sbin (not in every user's PATH; sshd lives there).
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn program(tool: &str) -> String {
    find(tool).unwrap_or_else(|| panic!("no {tool}")).to_str().unwrap().to_string()
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", HOST, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn write_executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The remote's Nix over an empty directory bound over /nix in a mount namespace of
/// its own, with the settings of the tests: `nix-daemon --stdio` for ssh-ng://,
/// `nix-store --serve --write` for ssh://.
fn remote_program(dir: &str) -> String {
    let (daemon, store) = (program("nix-daemon"), program("nix-store"));
    format!(
        r#"#!/bin/sh
export NIX_CONFIG='build-users-group =
substituters =
sandbox = false
experimental-features = nix-command flakes'
export GENBUILD_REMOTE='{dir}'
case "$1" in --serve) nix={store} ;; *) nix={daemon} ;; esac
exec unshare --mount --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"' '{dir}/nix' "$nix" "$@"
"#
    )
}

/// Starts sshd at a free port; on failure returns its log.
fn start_sshd(dir: &Path) -> Result<Child, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    fs::write(
        dir.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nStrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nLogLevel VERBOSE\n"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("ssh_config"),
        format!(
            "Host {HOST}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d}/client_key\n\
             \x20 IdentitiesOnly yes\n  IdentityAgent none\n  HostKeyAlias {HOST}\n  UserKnownHostsFile {d}/known_hosts\n\
             \x20 GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 30\n"
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let _ = fs::remove_file(&log);
    let mut sshd = Command::new(program("sshd"));
    sshd.arg("-D").arg("-f").arg(dir.join("sshd_config")).arg("-E").arg(&log);
    sshd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    let mut child = sshd.spawn().expect("spawn sshd");
    let listening = format!("Server listening on 127.0.0.1 port {port}.");
    let deadline = Instant::now() + START_BOUND;
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&listening) {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("sshd exited ({status}):\n{text}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("sshd did not listen within {START_BOUND:?}:\n{text}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `cmd` with its output in `log`, killed after [`START_BOUND`]; whether it
/// succeeded, and its output.
fn run_bounded(mut cmd: Command, log: &Path) -> (bool, String) {
    let file = fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + START_BOUND;
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writeln!(
                fs::OpenOptions::new().append(true).open(log).unwrap(),
                "(killed after {START_BOUND:?})"
            );
            break false;
        }
        std::thread::sleep(POLL);
    };
    (ok, fs::read_to_string(log).unwrap_or_default())
}

/// Every live (non-zombie) process but this one.
fn live_processes() -> Vec<Proc> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?.parse().ok()?);
            if state == "Z" {
                return None;
            }
            let started = fields.nth(17)?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_string();
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            Some(Proc { pid, ppid, cmdline, environ, started })
        })
        .collect()
}

/// The pids of `root`'s descendants among `all`.
fn descendants(all: &[Proc], root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// One line per process.
pub fn describe(processes: &[Proc]) -> String {
    processes.iter().map(|p| format!("\n  {p}")).collect()
}

fn tail(text: &str, bytes: usize) -> String {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
