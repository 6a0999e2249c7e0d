//! A module-system evaluation of NixOS's size, without nixpkgs: genbuild's `eval()` →
//! `evaluation_done` against a bare `nix eval` of the same attribute, on the same Nix,
//! side by side in one run; on the machine's Nix and, when `.ci/matrix` made them, in
//! the Debian roots of newer Nix (trixie: 2.26, sid: 2.34), where this bench runs
//! itself (`--only modules --in-root`) and hands back its row.
//!
//! The configuration is generated ([`write_configuration`]): a small `evalModules` in
//! Nix itself (option declarations merged across modules, definitions collected per
//! option, `mkIf` pushed down lazily as NixOS's `pushDownProperties` does, `mkMerge`,
//! lists concatenated, attribute sets merged, the last scalar winning) over
//! [`MODULES`] generated modules that read each other's options, and a flake whose
//! `nixosConfigurations.host1.config.system.build.toplevel` is a derivation holding
//! the whole configuration as JSON, so that every option is evaluated.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use genbuild::{Builder, FlakeExecutor};

use crate::common::nix::{Env, Repo};
use crate::common::rs;
use crate::util::{bench_config, fmt_ms, median, ms, nix_args};
use crate::{row, Plan, Row, HANG};

/// Modules of the configuration (NixOS: about 1,500 declared, a few hundred enabled).
pub(crate) const MODULES: usize = 300;
/// Options each module declares besides its own few.
const OPTIONS_PER_MODULE: usize = 150;
/// Entries of each module's settings, written into its configuration file.
const SETTINGS: usize = 6000;

/// The module system, in Nix: `evalModules modules` gives the configuration.
const LIB: &str = r#"
let
  isType = t: v: builtins.isAttrs v && (v._type or "") == t;
  mkOption = { default ? null, type ? "scalar" }: { _type = "option"; inherit default type; };
  mkIf = cond: content: { _type = "if"; inherit cond content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  concatMapStrings = f: list: builtins.concatStringsSep "" (map f list);
  # Declarations of all modules, one tree: a subtree holding an option is that option.
  mergeDecls = decls: builtins.zipAttrsWith
    (name: values: if builtins.any (isType "option") values then builtins.head values else mergeDecls values)
    decls;
  # One level of definitions: conditions pushed down to each attribute, unevaluated.
  pushDown = def:
    if isType "merge" def then builtins.concatMap pushDown def.contents
    else if isType "if" def then map (d: builtins.mapAttrs (n: v: mkIf def.cond v) d) (pushDown def.content)
    else [ def ];
  # The values of one option whose conditions hold.
  resolve = def:
    if isType "merge" def then builtins.concatMap resolve def.contents
    else if isType "if" def then (if def.cond then resolve def.content else [ ])
    else [ def ];
  merge = option: defs:
    if defs == [ ] then option.default
    else if option.type == "list" then builtins.concatLists defs
    else if option.type == "attrs" then builtins.foldl' (a: b: a // b) { } defs
    else builtins.elemAt defs (builtins.length defs - 1);
  evalTree = decls: defs: builtins.mapAttrs
    (name: decl:
      let here = builtins.catAttrs name (builtins.concatMap pushDown defs);
      in if isType "option" decl then merge decl (builtins.concatMap resolve here) else evalTree decl here)
    decls;
  evalModules = modules:
    let
      load = m: let f = if builtins.isPath m then import m else m;
        in if builtins.isFunction f then f { inherit config lib; } else f;
      results = map load modules;
      decls = mergeDecls (map (r: r.options or { }) results);
      config = evalTree decls (map (r: r.config or { }) results);
    in config;
  lib = { inherit mkOption mkIf mkMerge concatMapStrings evalModules; };
in lib
"#;

/// The module every other one builds on: what a system collects.
const CORE: &str = r#"
{ config, lib, ... }: {
  options.environment.packages = lib.mkOption { default = [ ]; type = "list"; };
  options.environment.etc = lib.mkOption { default = { }; type = "attrs"; };
  options.users = lib.mkOption { default = { }; type = "attrs"; };
  options.systemd.units = lib.mkOption { default = { }; type = "attrs"; };
  options.networking.hostName = lib.mkOption { default = "nixos"; };
  options.networking.firewall.allowedTCPPorts = lib.mkOption { default = [ ]; type = "list"; };
  options.system.build.toplevel = lib.mkOption { };
  config.system.build.toplevel = derivation {
    name = "nixos-system-${config.networking.hostName}";
    system = "SYSTEM";
    builder = "/bin/sh";
    args = [ "-c" "echo > $out" ];
    configuration = builtins.toJSON (removeAttrs config [ "system" ]);
  };
}
"#;

/// Module `i`: a service with options of its own, reading two others' options.
fn module(i: usize) -> String {
    let (peer, guard) = ((i * 7 + 3) % MODULES, (i * 13 + 5) % MODULES);
    let mut options = String::new();
    let mut settings = String::new();
    for k in 0..OPTIONS_PER_MODULE {
        options.push_str(&format!("    option{k} = lib.mkOption {{ default = \"value-{i}-{k}\"; }};\n"));
        settings.push_str(&format!("option{k}=${{cfg.option{k}}}\\n"));
    }
    format!(
        r#"{{ config, lib, ... }}:
let cfg = config.services.s{i}; peer = config.services.s{peer}; in {{
  options.services.s{i} = {{
    enable = lib.mkOption {{ default = {enable}; }};
    port = lib.mkOption {{ default = {port}; }};
    settings = lib.mkOption {{ default = {{ }}; type = "attrs"; }};
    extraArgs = lib.mkOption {{ default = [ ]; type = "list"; }};
{options}  }};
  config = lib.mkIf cfg.enable (lib.mkMerge [
    {{
      environment.packages = [ "s{i}-${{toString cfg.port}}" ];
      environment.etc."s{i}.conf" = "port=${{toString cfg.port}}\npeer=${{toString peer.port}}\n{settings}"
        + lib.concatMapStrings (k: "${{k}}=${{toString cfg.settings.${{k}}}}\n") (builtins.attrNames cfg.settings);
      services.s{peer}.extraArgs = [ "--from-s{i}" ];
      services.s{i}.settings = builtins.listToAttrs (builtins.genList
        (n: {{ name = "key${{toString n}}"; value = n * {i} + builtins.length cfg.extraArgs; }}) {SETTINGS});
      users."s{i}" = {{ uid = {uid}; groups = [ "g{group}" ] ++ map (a: "arg${{a}}") cfg.extraArgs; }};
      networking.firewall.allowedTCPPorts = [ cfg.port ];
    }}
    (lib.mkIf config.services.s{guard}.enable {{
      systemd.units."s{i}.service" = {{
        after = [ "s{guard}.service" ];
        script = "exec /bin/s{i} --port ${{toString cfg.port}} ${{builtins.concatStringsSep " " cfg.extraArgs}}";
      }};
    }})
  ]);
}}
"#,
        enable = i % 5 != 0,
        port = 1000 + i,
        uid = 1000 + i,
        group = i % 10,
    )
}

/// Writes the configuration (a flake and its modules) into `repo` and commits it.
pub(crate) fn write_configuration(repo: &Repo) -> String {
    let system = format!("{}-linux", std::env::consts::ARCH);
    repo.write("lib.nix", LIB);
    repo.write("modules/core.nix", &CORE.replace("SYSTEM", &system));
    let mut imports = String::from("./modules/core.nix\n");
    for i in 0..MODULES {
        repo.write(&format!("modules/s{i}.nix"), &module(i));
        imports.push_str(&format!("      ./modules/s{i}.nix\n"));
    }
    repo.write(
        "flake.nix",
        &format!(
            r#"{{
  outputs = {{ self }}: let lib = import ./lib.nix; in {{
    nixosConfigurations.host1.config = lib.evalModules [
      {imports}      {{ config.networking.hostName = "host1"; }}
    ];
  }};
}}
"#
        ),
    );
    repo.commit()
}

/// The row of this machine's Nix, then those of the roots (when present).
pub(crate) fn module_rows(plan: &Plan) -> Vec<Row> {
    let mut rows = vec![module_row(plan)];
    if std::env::var_os("GENBUILD_BENCH_IN_ROOT").is_some() {
        return rows;
    }
    let cache = Path::new("/var/cache/genbuild-roots");
    let matrix = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/matrix");
    let exe = std::env::current_exe().expect("the bench's path");
    for suite in ["trixie", "sid"] {
        if !cache.join(suite).join(".genbuild-root").is_file() {
            continue;
        }
        let mut cmd = Command::new("bash");
        cmd.arg(&matrix).args(["--exec", suite, "--", "env", "GENBUILD_BENCH_IN_ROOT=1"]).arg(&exe);
        cmd.args(["--only", "modules", "--rows"]);
        if plan.eval_reps < 7 {
            cmd.arg("--quick");
        }
        let out = cmd.output().expect("bash .ci/matrix");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let found = stdout.lines().find_map(|l| l.strip_prefix(ROW_MARK)).map(str::to_string);
        match found {
            Some(line) => match line.split('\t').collect::<Vec<_>>()[..] {
                [what, genbuild, reference, ratio, notes] => rows.push(Row {
                    what: what.into(),
                    genbuild: genbuild.into(),
                    reference: reference.into(),
                    ratio: ratio.into(),
                    notes: notes.into(),
                }),
                _ => eprintln!("a malformed row from the {suite} root: {line}"),
            },
            None => eprintln!("no row from the {suite} root: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
    rows
}

/// Marks a row handed back from a root on stdout.
pub(crate) const ROW_MARK: &str = "GENBUILD-BENCH-ROW ";

fn module_row(plan: &Plan) -> Row {
    let (repo, env) = (Repo::new(), Env::new());
    write_configuration(&repo);
    let mut options = env.options();
    options.options.push(("experimental-features".into(), "nix-command flakes".into()));
    let mut config = bench_config(repo.path());
    config.hostname = "host1".into();
    config.system_attr = "nixosConfigurations".into();
    config.eval_timeout = HANG;
    let store = std::sync::Arc::new(genbuild::Store::new());
    let builder = Builder::new(config, store.clone(), std::sync::Arc::new(FlakeExecutor::new(options)));
    let evaluated = builder.evaluation_done();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut drv = String::new();
    // One warm-up of each (page cache), then repetitions that alternate which side goes
    // first. Each repetition evaluates a new commit (genbuild would reuse the last
    // evaluation of the same one), its source fetched into the store beforehand (what
    // both sides would otherwise pay once); the bare side without Nix's evaluation
    // cache, which would answer a repetition from the first.
    for rep in 0..=plan.eval_reps {
        repo.write("repetition", &rep.to_string());
        let commit = repo.commit();
        let source = format!("git+file://{}?ref=HEAD&rev={commit}", repo.path().display());
        let installable = format!("{source}#nixosConfigurations.host1.config.system.build.toplevel.drvPath");
        let fetched = Command::new("nix")
            .args(nix_args())
            .args(["--extra-experimental-features", "nix-command flakes", "flake", "metadata", &source])
            .output()
            .expect("nix flake metadata");
        assert!(fetched.status.success(), "{}", String::from_utf8_lossy(&fetched.stderr));
        let mut genbuild_side = || {
            let t = Instant::now();
            let uuid = builder.eval(&rs(&commit)).unwrap();
            assert_eq!(evaluated.recv_timeout(HANG).unwrap(), uuid);
            let elapsed = t.elapsed();
            let g = store.generation(&uuid).unwrap();
            assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
            drv = g.drv_path;
            elapsed
        };
        let bare_side = || {
            let t = Instant::now();
            let out = Command::new("nix")
                .args(nix_args())
                .args([
                    "--extra-experimental-features",
                    "nix-command flakes",
                    "--option",
                    "eval-cache",
                    "false",
                ])
                .args(["eval", "--raw", &installable])
                .output()
                .expect("nix eval");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (t.elapsed(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let (a, (b, bare_drv)) = if rep % 2 == 0 {
            let a = genbuild_side();
            (a, bare_side())
        } else {
            let b = bare_side();
            (genbuild_side(), b)
        };
        assert_eq!(bare_drv, drv, "both evaluate the same derivation");
        if rep > 0 {
            ours.push(ms(a));
            bare.push(ms(b));
        }
    }
    builder.stop();
    let (ours, bare) = (median(ours), median(bare));
    // The largest child waited for: the evaluators (both sides' are the same size).
    let peak_mib = {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct given, nothing else.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } == 0;
        if ok {
            usage.ru_maxrss as u64 / 1024
        } else {
            0
        }
    };
    let version = Command::new("nix")
        .arg("--version")
        .output()
        .map_or("no Nix".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let version = version.rsplit(' ').next().unwrap_or_default().to_string();
    row(
        &format!("eval → evaluation_done, {MODULES} modules, Nix {version}"),
        fmt_ms(ours),
        fmt_ms(bare),
        Some(ours / bare),
        format!(
            "a module system of {MODULES} modules, {} options, in Nix (evaluator's peak RSS {peak_mib} MiB); vs a bare `nix eval` of the same attribute; median of {}",
            MODULES * (OPTIONS_PER_MODULE + 4) + 7,
            plan.eval_reps
        ),
    )
}
