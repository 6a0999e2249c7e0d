//! The C ABI from C: the header declares exactly what the library exports and is what
//! cbindgen generates now; the README's example (`tests/c/example.c`, the very text of
//! the README) compiles and links against `libgenbuild.so` and `libgenbuild.a`; the C
//! test program (`tests/c/genbuild_test.c`) drives a builder through real Nix and
//! checks, from C, that no process it started outlives a stop.
//!
//! `VALGRIND=1` runs the C program under `valgrind --leak-check=full
//! --error-exitcode=1` (`tests/c/valgrind.sh`), with `tests/c/valgrind.supp` naming
//! the one block of Rust's std that is never freed for a thread std did not create.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The tests below spawn compilers and the C program; one at a time keeps their
/// output readable and the process checks unambiguous.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ffi/`, this crate.
fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn c_source(name: &str) -> PathBuf {
    crate_dir().join("tests/c").join(name)
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The directory holding `libgenbuild.so` and `libgenbuild.a`, freshly built: cargo
/// does not build a cdylib for an integration test, so this asks cargo for it (a no-op
/// when it is up to date), once per test binary.
fn library_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(crate_dir()).args(["build", "-p", "genbuild-ffi", "--lib", "--quiet"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let output = run(&mut build);
        assert!(output.status.success(), "cargo build -p genbuild-ffi failed: {}", output.status);
    });
    for lib in ["libgenbuild.so", "libgenbuild.a"] {
        assert!(dir.join(lib).is_file(), "{lib} is missing in {} after cargo build", dir.display());
    }
    dir
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// How a C program links genbuild.
#[derive(Clone, Copy)]
enum Link {
    /// `-lgenbuild`: the shared library.
    Shared,
    /// `libgenbuild.a` and the system libraries Rust's std needs (what `rustc --print
    /// native-static-libs` lists for this target).
    Static,
}

/// Compiles and links one C file of tests/c/ against the library, as a C user would:
/// warnings are errors.
fn compile(source: &str, out: &Path, link: Link) {
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-pthread", "-I"])
        .arg(crate_dir().join("include"))
        .arg(c_source(source))
        .arg("-o")
        .arg(out);
    match link {
        Link::Shared => cc.arg("-L").arg(library_dir()).arg("-lgenbuild"),
        Link::Static => cc.arg(library_dir().join("libgenbuild.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]),
    };
    let output = run(&mut cc);
    assert!(output.status.success(), "cc {source} failed: {}", output.status);
}

/// Every `genbuild_*` function the header declares.
fn header_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(crate_dir().join("include/genbuild.h")).expect("include/genbuild.h");
    let mut names = BTreeSet::new();
    for line in
        header.lines().filter(|l| !l.trim_start().starts_with('*') && !l.trim_start().starts_with("/*"))
    {
        let mut rest = line;
        while let Some(i) = rest.find("genbuild_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let preceded_ok =
                i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
            if preceded_ok && tail[end..].starts_with('(') {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// Every `genbuild_*` function symbol the cdylib exports.
fn exported_functions() -> BTreeSet<String> {
    let so = library_dir().join("libgenbuild.so");
    let output = Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().expect("nm");
    assert!(output.status.success(), "nm failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace().rev();
            let name = fields.next()?;
            let kind = fields.next()?;
            (name.starts_with("genbuild_") && kind == "T").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn the_header_declares_exactly_the_exported_functions() {
    let _serial = serial();
    let declared = header_functions();
    let exported = exported_functions();
    println!("exported: {exported:?}");
    assert!(exported.contains("genbuild_eval"), "no genbuild_eval in the cdylib: {exported:?}");
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    let missing: Vec<_> = declared.difference(&exported).collect();
    assert!(undeclared.is_empty(), "exported but not in include/genbuild.h: {undeclared:?}");
    assert!(missing.is_empty(), "declared in include/genbuild.h but not exported: {missing:?}");
}

/// When cbindgen is installed, the committed header is what it generates now. CI runs
/// the same check with `git diff --exit-code`.
#[test]
fn the_header_is_up_to_date_when_cbindgen_is_installed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("genbuild.h");
    let status = Command::new("cbindgen")
        .current_dir(crate_dir())
        .args(["--quiet", "--config", "cbindgen.toml", "--output"])
        .arg(&fresh)
        .status();
    match status {
        Err(e) => eprintln!("skipped: cbindgen is not runnable ({e})"),
        Ok(status) => {
            assert!(status.success(), "cbindgen failed: {status}");
            let committed = std::fs::read_to_string(crate_dir().join("include/genbuild.h")).unwrap();
            let generated = std::fs::read_to_string(&fresh).unwrap();
            assert!(
                committed == generated,
                "ffi/include/genbuild.h is stale: run `cbindgen --config cbindgen.toml --output include/genbuild.h` in ffi/"
            );
        }
    }
}

/// The README shows `tests/c/example.c` in full; compiling the file compiles what
/// the README says.
#[test]
fn the_readme_example_is_example_c() {
    let readme = std::fs::read_to_string(crate_dir().join("../README.md")).expect("README.md");
    let section =
        readme.split_once("## Using genbuild from C").expect("a \"Using genbuild from C\" section").1;
    let block = section.split_once("```c\n").and_then(|(_, rest)| rest.split_once("```\n")).map(|(c, _)| c);
    let example = std::fs::read_to_string(c_source("example.c")).unwrap();
    assert!(
        block == Some(example.as_str()),
        "the README's C example differs from ffi/tests/c/example.c: copy the file into the README"
    );
}

#[test]
fn the_readme_example_compiles_and_links_both_ways() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for (link, name) in [(Link::Shared, "example"), (Link::Static, "example-static")] {
        let program = dir.path().join(name);
        compile("example.c", &program, link);
        // Without arguments it prints its usage and exits with 2: it loads and runs.
        let output = run(Command::new(&program).env("LD_LIBRARY_PATH", library_dir()));
        assert_eq!(output.status.code(), Some(2), "{name} without arguments");
        assert!(String::from_utf8_lossy(&output.stderr).contains("usage:"), "{name} printed no usage");
    }
}

/// Whether Nix can be used. Without it this test fails under `CI=true` and is skipped
/// (with a message) otherwise.
fn nix_or_skip() -> bool {
    let found = Command::new("nix-instantiate").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but nix-instantiate is not runnable"
    );
    if !found {
        eprintln!("skipped: nix-instantiate is not runnable (Nix not installed)");
    }
    found
}

#[test]
fn the_c_program_drives_a_builder_through_real_nix() {
    let _serial = serial();
    if !nix_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("genbuild_test");
    compile("genbuild_test.c", &program, Link::Shared);
    // Digits only, unique to this run: the derivations carry it, and the C program
    // looks for it in /proc.
    let nonce =
        format!("{}{:09}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos());

    let valgrind = std::env::var("VALGRIND").as_deref() == Ok("1");
    let mut cmd = if valgrind {
        let mut cmd = Command::new("valgrind");
        cmd.args(["--leak-check=full", "--error-exitcode=1"]);
        cmd.arg(format!("--suppressions={}", c_source("valgrind.supp").display()));
        cmd.arg(&program);
        cmd
    } else {
        Command::new(&program)
    };
    cmd.arg(&nonce).env("LD_LIBRARY_PATH", library_dir()).env("RUST_BACKTRACE", "1");
    let output = run(&mut cmd);
    if valgrind {
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines().filter(|l| l.contains("ERROR SUMMARY") || l.contains("lost:")) {
            println!("valgrind: {line}");
        }
    }
    assert!(output.status.success(), "the C program failed: {}", output.status);
}
