//! The main job: evaluate a commit of a repository, build it, watch it happen.
//!
//! ```sh
//! cargo run --example demo                      # the bundled demo (below)
//! cargo run --example demo -- --repo ~/infra --host web1 --flake --build
//! cargo run --example demo -- --help
//! ```
//!
//! Without arguments it creates a temporary git repository holding a tiny legacy
//! `default.nix` (one derivation, no nixpkgs, no network), evaluates and builds it
//! with real Nix, and removes the repository and its gc roots. With `--repo PATH
//! --host NAME` it runs the same job on a repository of yours. Run it as root on a
//! single-user Nix install: the Nix settings such an install needs are the defaults.
//!
//! How genbuild is used, in order: configure an executor ([`NixOptions`]) and a
//! [`BuilderConfig`]; make a [`Builder`]; subscribe to its events; [`Builder::eval`]
//! a commit and wait for `evaluation_done` (or `build_done` when its output is already
//! in the store); [`Builder::submit_build`] and wait for `build_done`; read
//! [`Builder::state`]. The rest of this example is how it shows that to a person
//! (`display`, `summary`) or a script (`json`).

mod args;
mod bundled;
mod display;
mod git;
mod human;
mod json;
mod summary;
mod watch;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use genbuild::{proto, Builder, BuilderConfig, Executor, FlakeExecutor, NixExecutor, NixOptions, Store};

use args::{Args, Parsed, Target};
use watch::{Ended, Watch};

fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(args)) => *args,
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(usage) => {
            eprintln!("demo: {usage}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether what was asked succeeded; `Err` when it could not be tried.
fn run(args: &Args) -> Result<bool, String> {
    let Some(target) = &args.target else {
        let bundled = bundled::Bundled::create()?; // removed when dropped, at the end
        let commit = git::resolve_commit(&bundled.repo, "HEAD")?;
        let args = Args { build: true, ..args.clone() };
        return main_job(&bundled.target(), &bundled.repo, &commit, &args, &bundled.gc_roots);
    };
    // Everything that can be checked before Nix runs.
    let repo = git::check_repository(&target.repo)?;
    let commit = git::resolve_commit(&repo, &target.commit)?;
    let (file, hint) = match target.flake {
        true => ("flake.nix", " (is it a default.nix? then drop --flake)"),
        false => ("default.nix", " (is it a flake? then add --flake)"),
    };
    git::check_file(&repo, &commit, &target.subdir, file, hint)?;
    let gc_roots = args.gc_roots.clone().unwrap_or_else(|| args::DEFAULT_GC_ROOTS.into());
    main_job(target, &repo, &commit, args, &gc_roots)
}

/// Evaluates `commit` of `repo`, builds it when asked, shows how it went.
// NixOptions is `#[non_exhaustive]`: set its fields after `default()`, as users must.
#[allow(clippy::field_reassign_with_default)]
fn main_job(
    target: &Target,
    repo: &Path,
    commit: &git::Commit,
    args: &Args,
    gc_roots: &Path,
) -> Result<bool, String> {
    let mut options = NixOptions::default();
    options.options = args.nix_settings();
    options.gc_root_dir = gc_roots.to_path_buf();
    let executor: Arc<dyn Executor> = match target.flake {
        true => Arc::new(FlakeExecutor::new(options)),
        false => Arc::new(NixExecutor::new(options)),
    };
    let mut config = BuilderConfig::new(&target.host, repo);
    config.repository_subdir = target.subdir.clone();
    if let Some(attr) = &target.attr {
        config.system_attr = attr.clone();
    }
    config.eval_memory_limit = args.eval_memory_limit;
    config.build_memory_limit = args.build_memory_limit;
    config.process.nice = args.nice;
    let builder = Builder::new(config, Arc::new(Store::new()), executor);
    let mut watch = Watch::new(&builder, args.json);

    let rs = proto::RepositoryStatus {
        selected_commit_id: commit.id.clone(),
        selected_commit_msg: commit.subject.clone(),
        ..Default::default()
    };
    let uuid = builder.eval(&rs).map_err(|e| e.to_string())?;
    let mut ended = watch.until_done()?;
    let evaluated = || builder.state().generation.is_some_and(|g| g.eval_status == "evaluated");
    if ended == Ended::EvaluationDone && args.build && evaluated() {
        builder.submit_build(&uuid).map_err(|e| e.to_string())?;
        ended = watch.until_done()?;
    }
    if ended == Ended::Interrupted {
        watch.note("interrupted: stopping the builder and its Nix processes")?;
        builder.stop();
    }
    watch.finish()?;

    let state = builder.state();
    if args.json {
        println!("{:#}", json::builder(&state));
    } else {
        print!("\n{}", summary::summary(&state, args.build));
    }
    Ok(summary::succeeded(&state, args.build))
}
