//! The main job: evaluate a commit, confirm its build, watch it happen.
//!
//! Creates a temporary git repository holding a tiny legacy `default.nix` (one
//! derivation, no nixpkgs, no network), evaluates its commit with [`NixExecutor`],
//! submits the build and prints every lifecycle event and log line, then the final
//! state. Run as root on a single-user Nix: `cargo run --example demo`.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use genbuild::{proto, Builder, BuilderConfig, NixExecutor, NixOptions, Store};

fn git(repo: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=demo", "-c", "user.email=demo@example.org"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn print(event: &proto::Event) {
    use proto::event::Kind;
    match &event.kind {
        Some(Kind::LogLine(l)) => println!("  | {}", l.line),
        Some(Kind::EvalStarted(_)) => println!("event: eval started"),
        Some(Kind::EvalFinished(e)) => {
            println!("event: eval finished: {:?}", e.generation.as_ref().map(|g| &g.eval_status))
        }
        Some(Kind::BuildStarted(_)) => println!("event: build started"),
        Some(Kind::BuildFinished(e)) => {
            println!("event: build finished: {:?}", e.generation.as_ref().map(|g| &g.build_status))
        }
        Some(Kind::BuildProgress(_)) | None => {}
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let repo = std::env::temp_dir().join(format!("genbuild-demo-{}", uuid::Uuid::new_v4().simple()));
    let roots = repo.with_extension("roots");
    std::fs::create_dir(&repo).map_err(|e| format!("cannot create {}: {e}", repo.display()))?;
    let result = demo(&repo, &roots);
    let _ = std::fs::remove_dir_all(&repo);
    result
}

fn demo(repo: &std::path::Path, roots: &std::path::Path) -> Result<bool, String> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let nix = format!(
        r#"{{ hostname }}: {{
  system.toplevel = derivation {{
    name = "demo-${{hostname}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    nonce = "{nonce}";
    args = [ "-c" "echo building the demo generation; echo ok > $out" ];
  }};
}}"#
    );
    std::fs::write(repo.join("default.nix"), nix).map_err(|e| format!("cannot write default.nix: {e}"))?;
    git(repo, &["init", "-q"])?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "demo"])?;
    let commit = git(repo, &["rev-parse", "HEAD"])?;

    // What a fresh single-user root install needs: no build users, no substituters, no sandbox.
    let options = NixOptions {
        options: [("build-users-group", ""), ("substituters", ""), ("sandbox", "false")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        gc_root_dir: roots.to_path_buf(),
        ..NixOptions::default()
    };
    let executor = Arc::new(NixExecutor::new(options));
    let mut config = BuilderConfig::new("demo", repo);
    config.system_attr = "system".into();
    let builder = Builder::new(config, Arc::new(Store::new()), executor.clone());
    let events = builder.subscribe();
    let (evaluated, built) = (builder.evaluation_done(), builder.build_done());

    let rs = proto::RepositoryStatus { selected_commit_id: commit, ..Default::default() };
    let uuid = builder.eval(&rs).map_err(|e| e.to_string())?;
    println!("evaluating generation {uuid}");
    let wait = Duration::from_secs(600);
    let drain = || events.try_iter().for_each(|e| print(&e));
    crossbeam_channel::select! {
        recv(evaluated) -> _ => {
            drain();
            builder.submit_build(&uuid).map_err(|e| e.to_string())?;
            built.recv_timeout(wait).map_err(|_| "no build_done within 10 minutes".to_string())?;
        }
        recv(built) -> _ => println!("already built"),
        default(wait) => return Err("no evaluation_done within 10 minutes".into()),
    }
    drain();
    let state = builder.state();
    println!("final state: {state:#?}");
    let ok = state.generation.is_some_and(|g| g.build_status == "built");
    // A demo leaves nothing behind: its gc roots go (the links Nix keeps to them then
    // dangle, and its next collection removes them), so that collection frees it.
    let _ = std::fs::remove_dir_all(roots);
    Ok(ok)
}
