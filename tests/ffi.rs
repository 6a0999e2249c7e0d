//! The C ABI from C: the header declares exactly what the library exports, the C test
//! program (`tests/ffi/genbuild_test.c`) runs against real Nix, and the README's
//! example (`tests/ffi/example.c`) compiles and links.
//!
//! The library is the cdylib cargo builds beside this test binary (crate-type
//! includes `cdylib`, so `cargo test` builds `libgenbuild.so` for the lib target).
//! `VALGRIND=1` runs the C program under `valgrind --leak-check=full --error-exitcode=1`
//! (`tests/ffi/valgrind.sh`), with `tests/ffi/valgrind.supp` naming the one block of
//! Rust's std that is never freed for a thread std did not create.

mod common;

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The directory holding `libgenbuild.so`, freshly built: `cargo test` builds the
/// library as an rlib for the tests, not the cdylib a C program links, so this asks
/// cargo for it (a no-op when it is up to date), once per test binary.
fn library_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(root()).args(["build", "--lib", "--quiet"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let output = run(&mut build);
        assert!(output.status.success(), "cargo build --lib failed: {}", output.status);
    });
    let so = dir.join("libgenbuild.so");
    assert!(so.is_file(), "{} is missing after cargo build --lib", so.display());
    dir
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Compiles (and links) one C file of tests/ffi/ against the library, as a C user
/// would: warnings are errors.
fn compile(source: &str, out: &Path) {
    let output = run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("tests/ffi").join(source))
        .arg("-L")
        .arg(library_dir())
        .args(["-lgenbuild", "-o"])
        .arg(out));
    assert!(output.status.success(), "cc {source} failed: {}", output.status);
}

/// Every `genbuild_*` function the header declares.
fn header_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(root().join("include/genbuild.h")).expect("include/genbuild.h");
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
        .current_dir(root())
        .args(["--quiet", "--config", "cbindgen.toml", "--output"])
        .arg(&fresh)
        .status();
    match status {
        Err(e) => eprintln!("skipped: cbindgen is not runnable ({e})"),
        Ok(status) => {
            assert!(status.success(), "cbindgen failed: {status}");
            let committed = std::fs::read_to_string(root().join("include/genbuild.h")).unwrap();
            let generated = std::fs::read_to_string(&fresh).unwrap();
            assert!(
                committed == generated,
                "include/genbuild.h is stale: run `cbindgen --config cbindgen.toml --output include/genbuild.h`"
            );
        }
    }
}

#[test]
fn the_readme_example_compiles() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    compile("example.c", &dir.path().join("example"));
}

#[test]
fn the_c_program_drives_a_builder_through_real_nix() {
    let _serial = serial();
    if !common::nix::nix_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("genbuild_test");
    compile("genbuild_test.c", &program);
    let nonce = common::nix::nonce();

    let valgrind = std::env::var("VALGRIND").as_deref() == Ok("1");
    let mut cmd = if valgrind {
        let mut cmd = Command::new("valgrind");
        cmd.args(["--leak-check=full", "--error-exitcode=1"]);
        cmd.arg(format!("--suppressions={}", root().join("tests/ffi/valgrind.supp").display()));
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
    common::assert_no_process(&nonce);
}
