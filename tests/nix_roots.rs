//! GC roots per owner with the real Nix: builders sharing a root directory never
//! release each other's roots; a restarted builder keeps and later releases its own;
//! the roots of a dead in-memory owner are swept. (The collection itself is
//! tests/nix_gc.rs, which must run alone.)

mod common;

use std::process::Command;
use std::sync::Arc;

use common::nix::*;
use common::wait_for_processes;
use genbuild::Store;

/// A repository with one system per commit; each `commit` gives a new derivation.
struct Systems {
    repo: Repo,
    kind: Kind,
}

impl Systems {
    fn new(kind: Kind) -> Systems {
        Systems { repo: Repo::new(), kind }
    }

    fn commit(&self) -> String {
        let n = nonce();
        self.repo.write(self.kind.file(), &self.kind.expression("h", &n, "echo > $out", None));
        self.repo.commit()
    }

    fn harness(&self, env: &Env) -> Harness {
        Harness::of(self.kind, env, &self.repo, "h")
    }
}

fn drv_root(g: &genbuild::proto::Generation) -> String {
    g.drv_path.rsplit('/').next().unwrap().to_string()
}

#[test]
fn builders_sharing_a_root_dir_keep_each_others_roots() {
    if !nix_or_skip() {
        return;
    }
    for kind in KINDS {
        let env = Env::new();
        let (a, b) = (Systems::new(kind), Systems::new(kind));
        let ha = a.harness(&env);
        let ga = ha.eval(&a.commit());
        assert_eq!(env.roots_of(&ha.store), vec![drv_root(&ga)]);

        // Two executors: B's evaluation releases B's unused roots only.
        let hb = b.harness(&env);
        hb.eval(&b.commit());
        let gb = hb.eval(&b.commit());
        assert_eq!(env.roots_of(&ha.store), vec![drv_root(&ga)], "{kind:?}: B removed A's root");
        let live: Vec<String> = hb.store.generations().iter().map(drv_root).collect();
        assert!(
            env.roots_of(&hb.store).iter().all(|r| live.contains(r)),
            "{kind:?}: B keeps only live roots"
        );
        assert!(env.roots_of(&hb.store).contains(&drv_root(&gb)));

        // One executor shared by two builders.
        let shared = kind.executor(env.options());
        let config = |s: &Systems| nix_config("h", s.repo.path(), kind.system_attr());
        let hc = Harness::new(config(&a), shared.clone());
        let hd = Harness::new(config(&b), shared);
        let gc = hc.eval(&a.commit());
        hd.eval(&b.commit());
        hd.eval(&b.commit());
        assert_eq!(env.roots_of(&hc.store), vec![drv_root(&gc)], "{kind:?}: D removed C's root");
        assert_eq!(env.roots_of(&ha.store), vec![drv_root(&ga)]);
        let ga = ha.build(&ga.uuid);
        assert_eq!(ga.build_status, "built", "{}", ga.build_err);
        assert_eq!(env.owners().len(), 4, "{:?}", env.owners());
    }
}

#[test]
fn a_restarted_builder_keeps_its_roots_and_later_releases_them() {
    if !nix_or_skip() {
        return;
    }
    for kind in KINDS {
        let (env, systems, state) = (Env::new(), Systems::new(kind), tempfile::tempdir().unwrap());
        let file = state.path().join("state.pb");
        let config = nix_config("h", systems.repo.path(), kind.system_attr());
        let open = || Arc::new(Store::open(&file).expect("store"));

        let h = Harness::with_store(config.clone(), open(), kind.executor(env.options()));
        let g1 = h.build(&h.eval(&systems.commit()).uuid);
        assert_eq!(g1.build_status, "built", "{}", g1.build_err);
        let first = vec![drv_root(&g1), format!("{}.out", drv_root(&g1))];
        assert_eq!(env.roots_of(&h.store), first);
        let owner = h.store.id().to_string();
        assert!(owner.starts_with("file-"), "{owner}");
        drop(h);

        // A new builder and executor over the same file: the same owner, its roots kept.
        let h = Harness::with_store(config, open(), kind.executor(env.options()));
        assert_eq!(h.store.id(), owner);
        assert_eq!(env.roots_of(&h.store), first, "{kind:?}: the restart lost the roots");
        let g2 = h.build(&h.eval(&systems.commit()).uuid);
        assert_eq!(g2.build_status, "built", "{}", g2.build_err);
        let roots = env.roots_of(&h.store);
        assert!(first.iter().all(|r| roots.contains(r)), "{kind:?}: {roots:?}");

        // Once the store dropped the first generation, its roots go with the next eval.
        let mut evals = 0;
        while h.store.generation(&g1.uuid).is_some() {
            h.eval(&systems.commit());
            evals += 1;
            assert!(evals < 10, "the store keeps generation {} for ever", g1.uuid);
        }
        h.eval(&systems.commit());
        let roots = env.roots_of(&h.store);
        assert!(first.iter().all(|r| !roots.contains(r)), "{kind:?}: {roots:?}");
        assert!(roots.contains(&format!("{}.out", drv_root(&g2))), "{kind:?}: {roots:?}");
    }
}

#[test]
fn the_roots_of_a_dead_memory_owner_are_swept() {
    if !nix_or_skip() {
        return;
    }
    let (env, systems, n) = (Env::new(), Systems::new(Kind::Legacy), nonce());
    let h = systems.harness(&env);
    let g = h.eval(&systems.commit());

    // Another process's in-memory owner, holding its lock while it lives.
    let dead = env.root_dir().join(format!("memory-dead{n}"));
    std::fs::create_dir_all(&dead).unwrap();
    std::os::unix::fs::symlink(&g.drv_path, dead.join("x-dead.drv")).unwrap();
    let auto = std::path::PathBuf::from(format!("/nix/var/nix/gcroots/auto/genbuild-test-{n}"));
    std::os::unix::fs::symlink(dead.join("x-dead.drv"), &auto).unwrap();
    let lock = dead.join(".lock");
    // One process holding the lock: the shell becomes the sleeper, keeping fd 9.
    let script = format!("exec 9>>\"$0\"; flock -s 9; exec sleep 300.{n}");
    let mut holder = Command::new("sh").arg("-c").arg(script).arg(&lock).spawn().expect("sh");
    wait_for_processes(&format!("300.{n}"), 1);

    h.eval(&systems.commit());
    assert!(dead.join("x-dead.drv").is_symlink(), "a live owner's roots were swept");

    holder.kill().unwrap();
    holder.wait().unwrap();
    h.eval(&systems.commit());
    assert!(!dead.exists(), "the dead owner's directory is left");
    assert!(!auto.is_symlink(), "its auto/ link is left");
    assert_eq!(env.owners(), vec![h.store.id().to_string()]);
    assert_no_process(&n);
}

/// The evaluator's temporary root ends with it: a collection before the executor's
/// root is in place deletes the `.drv`. A wrapper around `nix-instantiate` plays that
/// collection once, deleting the `.drv` it printed; the executor evaluates again.
#[test]
fn a_drv_collected_before_it_was_rooted_is_evaluated_again() {
    if !nix_or_skip() {
        return;
    }
    let (env, systems, bin) = (Env::new(), Systems::new(Kind::Legacy), tempfile::tempdir().unwrap());
    let real = |name: &str| {
        let path = String::from_utf8(
            Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap().stdout,
        )
        .unwrap();
        std::path::PathBuf::from(path.trim())
    };
    for name in ["nix", "nix-store"] {
        std::os::unix::fs::symlink(real(name), bin.path().join(name)).unwrap();
    }
    let marker = bin.path().join("collected-once");
    let wrapper = format!(
        "#!/bin/sh\nout=$({} \"$@\") || exit\n\
         drv=$(printf '%s' \"$out\" | sed -n 's/.*\"drv\":\"\\([^\"]*\\)\".*/\\1/p')\n\
         [ -e {m} ] || {{ touch {m}; {} --delete \"$drv\" >&2 || exit 9; }}\n\
         printf '%s\\n' \"$out\"\n",
        real("nix-instantiate").display(),
        real("nix-store").display(),
        m = marker.display()
    );
    let path = bin.path().join("nix-instantiate");
    std::fs::write(&path, wrapper).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut options = env.options();
    options.bin_dir = Some(bin.path().to_path_buf());
    let h = Harness::new(nix_config("h", systems.repo.path(), "system"), Kind::Legacy.executor(options));
    let g = h.eval(&systems.commit());
    assert!(marker.exists(), "the wrapper did not run");
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(valid(&g.drv_path), "the .drv is gone");
    assert!(h.logs().contains("was garbage-collected right after its evaluation; evaluating again"));
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "built", "{}", g.build_err);
}
