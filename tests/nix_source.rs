//! The legacy executor's source with the real Nix: what an expression that copies its
//! own directory (`./.`) into the store gets is the commit's files, the same on every
//! evaluation, without the repository's metadata.

mod common;

use common::nix::*;

/// A system whose derivation holds its source directory; with `no_git`, evaluating it
/// fails while `.git` (or a submodule's `.git`) is in the source.
fn copies_its_source(kind: Kind, n: &str, no_git: bool) -> String {
    let check = if no_git {
        "assert !(builtins.pathExists ./.git) && !(builtins.pathExists ./sub/.git);"
    } else {
        ""
    };
    let toplevel = format!(
        r#"{check} derivation {{ name = "sys"; system = builtins.currentSystem; builder = "/bin/sh"; nonce = "{n}"; src = ./.; args = [ "-c" "echo > $out" ]; }}"#
    );
    kind.expression_with("h", "", &toplevel, None)
}

/// The index and logs of the checkout's `.git` changed on every evaluation, so the copy
/// of `./.` did too: a new `.drv` each time (never "already built", never reusable),
/// and the repository's metadata in the store.
#[test]
fn two_evaluations_of_a_commit_copying_its_source_give_one_drv() {
    if !nix_or_skip() {
        return;
    }
    let (kind, env, repo, n) = (Kind::Legacy, Env::new(), Repo::new(), nonce());
    repo.write(kind.file(), &copies_its_source(kind, &n, false));
    let commit = repo.commit();
    let h = Harness::of(kind, &env, &repo, "h");
    let first = h.eval(&commit);
    assert_eq!(first.eval_status, "evaluated", "{}", first.eval_err);
    let second = h.eval(&commit);
    assert_eq!(second.eval_status, "evaluated", "{}", second.eval_err);
    assert_eq!(first.drv_path, second.drv_path, "one commit, one source, one .drv");
    assert_no_process(&n);
}

#[test]
fn submodules_leave_no_git_metadata_in_the_source() {
    if !nix_or_skip() {
        return;
    }
    let (kind, env, repo, sub, n) =
        (Kind::Legacy, Env::new(), Repo::new(), Repo::named("sub", "main"), nonce());
    sub.write("file", "in the submodule");
    sub.commit();
    repo.git(&["submodule", "add", "-q", sub.path().to_str().unwrap(), "sub"]);
    repo.write(kind.file(), &copies_its_source(kind, &n, true));
    let commit = repo.commit();
    let mut config = nix_config("h", repo.path(), kind.system_attr());
    config.submodules = true;
    let h = Harness::new(config, kind.executor(env.options()));
    let first = h.eval(&commit);
    assert_eq!(first.eval_status, "evaluated", "{}", first.eval_err);
    assert_eq!(h.eval(&commit).drv_path, first.drv_path);
    assert_no_process(&n);
}
