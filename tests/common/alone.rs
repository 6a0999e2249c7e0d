//! Running one test again in a process of its own: for a test that changes what the
//! whole process shares (its file descriptors, its stdio). Shared by the integration
//! tests (`tests/common`) and the crate's unit tests (`src/lib.rs` includes this file).

/// The test named `test` of this test binary, run again alone in a process of its own:
/// true in that process, where the test goes on; in this one, false once it passed
/// there (a failure there fails here, with its output).
pub fn alone(test: &str) -> bool {
    const ALONE: &str = "GENBUILD_TEST_ALONE";
    if std::env::var_os(ALONE).is_some_and(|t| t == test) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "{test}, run alone: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    false
}
