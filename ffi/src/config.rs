//! [`genbuild_config`], the C view of a builder's configuration, and its reading into
//! what `genbuild_builder_new` assembles: the library's `BuilderConfig`, the state
//! file and the executor.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use genbuild::{BuilderConfig, Executor, FlakeExecutor, NixExecutor, NixOptions};

use crate::args::{opt_path_arg, opt_str_arg, slice_arg, str_arg};
use crate::error::Failure;

/// Which Nix front end evaluates and builds: the legacy commands
/// (`nix-instantiate`, `nix-store`) on `default.nix`, or flakes (`nix eval`, `nix
/// build`) on `flake.nix`. The values of `genbuild_config.executor`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum genbuild_executor_kind {
    /// `nix-instantiate` / `nix-store --realise` on the repository's `default.nix`.
    Legacy = 0,
    /// `nix eval` / `nix build` on the repository's flake.
    Flake = 1,
}

impl genbuild_executor_kind {
    fn from_u32(value: u32) -> Option<genbuild_executor_kind> {
        [genbuild_executor_kind::Legacy, genbuild_executor_kind::Flake]
            .into_iter()
            .find(|&kind| kind as u32 == value)
    }
}

/// How a builder is made. Zero-initialise it (`genbuild_config cfg = {0};`), then set
/// at least `repository_path` and `hostname`: every zero or NULL field means "the
/// default". Strings are NUL-terminated and only read during `genbuild_builder_new`.
///
/// Durations are in milliseconds; UINT64_MAX means "without end" (about 584 million
/// years, which nothing overflows on).
#[repr(C)]
#[derive(Debug)]
pub struct genbuild_config {
    /// A `genbuild_executor_kind` value; 0 is `GENBUILD_EXECUTOR_KIND_LEGACY`.
    pub executor: u32,
    /// The git repository to evaluate commits of. Required.
    pub repository_path: *const c_char,
    /// The directory of the repository holding `default.nix` / `flake.nix`; NULL, ""
    /// or "." for the root. Must not leave the repository.
    pub repository_subdir: *const c_char,
    /// Legacy: the attribute path holding `.toplevel`; flakes: the attribute holding
    /// the configurations. NULL: "nixosConfigurations".
    pub system_attr: *const c_char,
    /// The machine's hostname, passed to Nix as data. Required.
    pub hostname: *const c_char,
    /// Nonzero: git submodules are part of the source. A byte rather than a bool, so
    /// that every value C may store in it is valid (any nonzero byte means true); a C
    /// `bool` stored there (0 or 1, the same size) reads the same.
    pub submodules: u8,
    /// Evaluation timeout in milliseconds; 0: 30 minutes.
    pub eval_timeout_ms: u64,
    /// Build timeout in milliseconds; 0: 30 minutes.
    pub build_timeout_ms: u64,
    /// Milliseconds between SIGTERM and SIGKILL when a build is cancelled; 0: 5
    /// seconds.
    pub kill_grace_ms: u64,
    /// Where the generations are persisted (protobuf, written atomically); NULL: in
    /// memory only. A file that does not decode makes `genbuild_builder_new` fail with
    /// `GENBUILD_RESULT_STORE_ERROR`.
    pub state_file: *const c_char,
    /// The directory of gc roots owned by genbuild; NULL: /nix/var/nix/gcroots/genbuild.
    pub gc_root_dir: *const c_char,
    /// The directory of the Nix binaries; NULL: found through PATH.
    pub nix_bin_dir: *const c_char,
    /// The attribute path, relative to the system, of the expected machine id; NULL:
    /// "config.services.comin.machineId".
    pub machine_id_attr: *const c_char,
    /// `nix_options_len` names of extra Nix options (`--option NAME VALUE` on every
    /// Nix call, e.g. "substituters", "max-jobs", "builders"); may be NULL when
    /// `nix_options_len` is 0.
    pub nix_option_names: *const *const c_char,
    /// `nix_options_len` values, one per name.
    pub nix_option_values: *const *const c_char,
    /// The number of entries of `nix_option_names` and `nix_option_values`.
    pub nix_options_len: usize,
    /// Bytes of memory each command of an evaluation may use (its processes together);
    /// past it the command is killed and the evaluation fails ("… was killed: it reached
    /// its memory limit of …"). 0: no limit. Enforced by the kernel where the commands'
    /// cgroups have the memory controller, by sampling every 50 ms elsewhere.
    pub eval_memory_limit_bytes: u64,
    /// The same for each command of a build. Through a nix-daemon it bounds the Nix
    /// client only (the builders are the daemon's children).
    pub build_memory_limit_bytes: u64,
    /// The nice value (-20 to 19) every command runs at; 0: this process's own.
    pub nice: i32,
}

/// What a [`genbuild_config`] makes.
pub(crate) struct Parts {
    pub(crate) config: BuilderConfig,
    pub(crate) state_file: Option<PathBuf>,
    pub(crate) executor: Arc<dyn Executor>,
}

/// `ms` milliseconds, or `default` for 0. `Duration` holds u64::MAX ms without
/// overflow (the library saturates where it adds one to an `Instant`).
fn millis_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// Reads the config. Everything is copied: nothing of `config` is kept.
///
/// # Safety
/// `config`'s non-NULL strings are NUL-terminated and its option arrays, when not
/// NULL, readable for `nix_options_len` pointers each, during the call.
pub(crate) unsafe fn read_config(config: &genbuild_config) -> Result<Parts, Failure> {
    let kind = genbuild_executor_kind::from_u32(config.executor).ok_or_else(|| {
        Failure::invalid(format!("config->executor: unknown executor kind {}", config.executor))
    })?;
    // SAFETY (every string and array of the config below): the caller's contract.
    let hostname = unsafe { str_arg(config.hostname, "config->hostname") }?;
    let Some(repository_path) = (unsafe { opt_path_arg(config.repository_path) }) else {
        return Err(Failure::null("config->repository_path"));
    };
    let mut builder_config = BuilderConfig::new(hostname, repository_path);
    if let Some(subdir) = unsafe { opt_str_arg(config.repository_subdir, "config->repository_subdir") }? {
        builder_config.repository_subdir = subdir.to_string();
    }
    if let Some(attr) = unsafe { opt_str_arg(config.system_attr, "config->system_attr") }? {
        builder_config.system_attr = attr.to_string();
    }
    builder_config.submodules = config.submodules != 0;
    builder_config.eval_timeout = millis_or(config.eval_timeout_ms, builder_config.eval_timeout);
    builder_config.build_timeout = millis_or(config.build_timeout_ms, builder_config.build_timeout);
    builder_config.process.kill_grace = millis_or(config.kill_grace_ms, builder_config.process.kill_grace);
    builder_config.eval_memory_limit =
        (config.eval_memory_limit_bytes != 0).then_some(config.eval_memory_limit_bytes);
    builder_config.build_memory_limit =
        (config.build_memory_limit_bytes != 0).then_some(config.build_memory_limit_bytes);
    if !(-20..=19).contains(&config.nice) {
        return Err(Failure::invalid(format!(
            "config->nice: {} is not a nice value (-20 to 19)",
            config.nice
        )));
    }
    builder_config.process.nice = (config.nice != 0).then_some(config.nice);

    let mut nix = NixOptions::default();
    if let Some(dir) = unsafe { opt_path_arg(config.gc_root_dir) } {
        nix.gc_root_dir = dir;
    }
    nix.bin_dir = unsafe { opt_path_arg(config.nix_bin_dir) };
    if let Some(attr) = unsafe { opt_str_arg(config.machine_id_attr, "config->machine_id_attr") }? {
        nix.machine_id_attr = attr.to_string();
    }
    let len = config.nix_options_len;
    let names = unsafe { slice_arg(config.nix_option_names, len, "config->nix_option_names") }?;
    let values = unsafe { slice_arg(config.nix_option_values, len, "config->nix_option_values") }?;
    for (i, (&name, &value)) in names.iter().zip(values).enumerate() {
        let name = unsafe { str_arg(name, &format!("config->nix_option_names[{i}]")) }?;
        let value = unsafe { str_arg(value, &format!("config->nix_option_values[{i}]")) }?;
        if name.is_empty() {
            return Err(Failure::invalid(format!("config->nix_option_names[{i}] is empty")));
        }
        nix.options.push((name.to_string(), value.to_string()));
    }

    let executor: Arc<dyn Executor> = match kind {
        genbuild_executor_kind::Legacy => Arc::new(NixExecutor::new(nix)),
        genbuild_executor_kind::Flake => Arc::new(FlakeExecutor::new(nix)),
    };
    let state_file = unsafe { opt_path_arg(config.state_file) };
    Ok(Parts { config: builder_config, state_file, executor })
}

/// A config of static strings for unit tests: hostname "h", a repository that does not
/// exist, defaults elsewhere.
#[cfg(test)]
pub(crate) fn test_config() -> genbuild_config {
    genbuild_config {
        executor: genbuild_executor_kind::Legacy as u32,
        repository_path: c"/nonexistent/repository".as_ptr(),
        repository_subdir: std::ptr::null(),
        system_attr: std::ptr::null(),
        hostname: c"h".as_ptr(),
        submodules: 0,
        eval_timeout_ms: 0,
        build_timeout_ms: 0,
        kill_grace_ms: 0,
        state_file: std::ptr::null(),
        gc_root_dir: std::ptr::null(),
        nix_bin_dir: std::ptr::null(),
        machine_id_attr: std::ptr::null(),
        nix_option_names: std::ptr::null(),
        nix_option_values: std::ptr::null(),
        nix_options_len: 0,
        eval_memory_limit_bytes: 0,
        build_memory_limit_bytes: 0,
        nice: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::{test_config as config, *};
    use crate::error::genbuild_result;

    fn failure(config: &genbuild_config) -> Failure {
        // SAFETY: static strings; arrays NULL or as long as their length.
        unsafe { read_config(config) }.err().expect("a failure")
    }

    #[test]
    fn zero_means_the_defaults_and_max_means_without_end() {
        // SAFETY: static strings, no arrays.
        let parts = unsafe { read_config(&config()) }.ok().unwrap();
        let defaults = BuilderConfig::new("h", "/r");
        assert_eq!(parts.config.eval_timeout, defaults.eval_timeout);
        assert_eq!(parts.config.process.kill_grace, defaults.process.kill_grace);
        assert!(parts.state_file.is_none());
        let forever = genbuild_config {
            eval_timeout_ms: u64::MAX,
            build_timeout_ms: u64::MAX,
            kill_grace_ms: u64::MAX,
            ..config()
        };
        // SAFETY: as above.
        let parts = unsafe { read_config(&forever) }.ok().unwrap();
        assert_eq!(parts.config.build_timeout, Duration::from_millis(u64::MAX));
        assert_eq!(parts.config.process.kill_grace, Duration::from_millis(u64::MAX));
    }

    #[test]
    fn memory_limits_and_nice_reach_the_builder_zero_meaning_none() {
        // SAFETY: static strings, no arrays.
        let parts = unsafe { read_config(&config()) }.ok().unwrap();
        assert_eq!((parts.config.eval_memory_limit, parts.config.build_memory_limit), (None, None));
        assert_eq!(parts.config.process.nice, None);
        let limited = genbuild_config {
            eval_memory_limit_bytes: 1 << 30,
            build_memory_limit_bytes: 2 << 30,
            nice: 10,
            ..config()
        };
        // SAFETY: as above.
        let parts = unsafe { read_config(&limited) }.ok().unwrap();
        assert_eq!(
            (parts.config.eval_memory_limit, parts.config.build_memory_limit),
            (Some(1 << 30), Some(2 << 30))
        );
        assert_eq!(parts.config.process.nice, Some(10));
        let f = failure(&genbuild_config { nice: 20, ..config() });
        assert_eq!(f.code, genbuild_result::InvalidArgument);
        assert_eq!(f.message, "config->nice: 20 is not a nice value (-20 to 19)");
    }

    #[test]
    fn an_unknown_executor_kind_is_invalid() {
        let f = failure(&genbuild_config { executor: 9, ..config() });
        assert_eq!(f.code, genbuild_result::InvalidArgument);
        assert_eq!(f.message, "config->executor: unknown executor kind 9");
        let f = failure(&genbuild_config { executor: u32::MAX, ..config() });
        assert_eq!(f.code, genbuild_result::InvalidArgument);
    }

    #[test]
    fn option_arrays_are_checked_before_they_are_read() {
        let f = failure(&genbuild_config { nix_options_len: 1, ..config() });
        assert_eq!(
            (f.code, f.message.as_str()),
            (genbuild_result::NullArgument, "config->nix_option_names is NULL")
        );
        let names = [c"max-jobs".as_ptr()];
        let f =
            failure(&genbuild_config { nix_option_names: names.as_ptr(), nix_options_len: 1, ..config() });
        assert_eq!(f.message, "config->nix_option_values is NULL");
        let values = [ptr::null()];
        let both = genbuild_config {
            nix_option_names: names.as_ptr(),
            nix_option_values: values.as_ptr(),
            ..config()
        };
        let f = failure(&genbuild_config { nix_options_len: usize::MAX, ..both });
        assert_eq!(f.code, genbuild_result::InvalidArgument, "{}", f.message);
        let f = failure(&genbuild_config { nix_options_len: 1, ..both });
        assert_eq!(f.message, "config->nix_option_values[0] is NULL");
        let (empty, one) = ([c"".as_ptr()], [c"1".as_ptr()]);
        let unnamed = genbuild_config {
            nix_option_names: empty.as_ptr(),
            nix_option_values: one.as_ptr(),
            nix_options_len: 1,
            ..config()
        };
        assert_eq!(failure(&unnamed).message, "config->nix_option_names[0] is empty");
    }

    #[test]
    fn required_strings_are_named() {
        let f = failure(&genbuild_config { hostname: ptr::null(), ..config() });
        assert_eq!(f.message, "config->hostname is NULL");
        let f = failure(&genbuild_config { repository_path: ptr::null(), ..config() });
        assert_eq!(f.message, "config->repository_path is NULL");
        let f = failure(&genbuild_config { hostname: c"\xff".as_ptr(), ..config() });
        assert_eq!(f.code, genbuild_result::InvalidArgument);
    }

    /// A C `bool` is one byte holding 0 or 1, but C code may store any byte: every one
    /// is a valid `submodules` (a Rust `bool` holding 2 was undefined behaviour).
    #[test]
    fn any_nonzero_submodules_byte_means_true() {
        for (byte, expected) in [(0, false), (1, true), (2, true), (0xff, true)] {
            // SAFETY: static strings, no arrays.
            let parts =
                unsafe { read_config(&genbuild_config { submodules: byte, ..config() }) }.ok().unwrap();
            assert_eq!(parts.config.submodules, expected, "{byte}");
        }
        assert_eq!(std::mem::size_of::<u8>(), std::mem::size_of::<bool>());
    }
}
