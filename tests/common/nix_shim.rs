//! A directory of wrapper scripts standing in for Nix's binaries
//! (`NixOptions::bin_dir`): each appends its command line to a log, then execs the
//! real binary. It counts the evaluator processes a builder started, which is how the
//! reuse tests and the bench prove that no evaluation ran.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The wrappers; see the module documentation.
pub struct NixShim {
    dir: tempfile::TempDir,
}

/// The binaries the executors run.
const PROGRAMS: [&str; 3] = ["nix", "nix-store", "nix-instantiate"];

impl NixShim {
    /// Wrappers of the binaries found in `PATH`.
    pub fn new() -> NixShim {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("invocations.log");
        for program in PROGRAMS {
            let real = which(program).unwrap_or_else(|| panic!("{program} is not in PATH"));
            let script = format!(
                "#!/bin/sh\nprintf '%s\\n' \"{program} $*\" >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.display()
            );
            let path = dir.path().join(program);
            std::fs::write(&path, script).expect("write a wrapper");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        NixShim { dir }
    }

    /// `NixOptions::bin_dir`.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Every command line run so far, program first, oldest first.
    pub fn invocations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("invocations.log")).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }

    /// The evaluator processes run so far: `nix … eval …` and `nix-instantiate …`.
    pub fn evaluations(&self) -> usize {
        self.invocations()
            .iter()
            .filter(|line| {
                let mut words = line.split(' ');
                match words.next() {
                    Some("nix-instantiate") => true,
                    Some("nix") => words.any(|w| w == "eval"),
                    _ => false,
                }
            })
            .count()
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
