//! The end of a run, for a person: one line per fact of the generation (what was
//! evaluated, how each step went and how long it took, the store paths, the error),
//! read in one glance.

use genbuild::{proto, BUILD_REASON_ALREADY_BUILT};

use crate::human;

/// Where continuation lines of a value start.
const INDENT: &str = "            ";

/// The summary of `state`'s generation; `build_asked` says whether a build was wanted.
pub fn summary(state: &proto::Builder, build_asked: bool) -> String {
    let Some(g) = &state.generation else {
        return "no generation was evaluated\n".into();
    };
    let mut rows: Vec<(&str, String)> = vec![("generation", g.uuid.clone())];
    let mut repository = g.repository_path.clone();
    if !matches!(g.repository_subdir.as_str(), "" | ".") {
        repository.push_str(&format!(" (subdir {})", g.repository_subdir));
    }
    rows.push(("repository", repository));
    rows.push(("host", format!("{} (attribute {})", g.hostname, g.system_attr)));
    let subject = g.selected_commit_msg.lines().next().unwrap_or_default();
    rows.push(("commit", format!("{} {subject}", g.selected_commit_id).trim_end().to_string()));
    rows.push(("evaluation", eval_status(g)));
    rows.push(("build", build_status(g, build_asked)));
    for (name, value) in [("drv", &g.drv_path), ("out", &g.out_path), ("machine id", &g.machine_id)] {
        if !value.is_empty() {
            rows.push((name, value.clone()));
        }
    }
    for error in [&g.eval_err, &g.build_err, &state.last_error] {
        if !error.is_empty() {
            rows.push(("error", human::plain_lines(&human::short_command(error))));
        }
    }
    let mut text = String::new();
    for (name, value) in rows {
        let mut lines = value.lines();
        text.push_str(&format!("{name:<11} {}\n", lines.next().unwrap_or_default()));
        for line in lines {
            let indent = if line.is_empty() { "" } else { INDENT };
            text.push_str(&format!("{indent}{line}\n"));
        }
    }
    text
}

fn eval_status(g: &proto::Generation) -> String {
    let took = human::eval_time(g).map(human::duration);
    let status = match (g.eval_status.as_str(), took) {
        ("evaluated", Some(took)) => format!("evaluated in {took}"),
        ("failed", Some(took)) => format!("failed after {took}"),
        (status, _) => status.to_string(),
    };
    status + &usage(g.eval_usage.as_ref())
}

/// ", peak 1.1 GiB, 5.3 s CPU" of a step that ran commands; "" of one that ran none.
fn usage(usage: Option<&proto::ResourceUsage>) -> String {
    let Some(u) = usage else { return String::new() };
    let cpu = human::duration(std::time::Duration::from_millis(u.cpu_ms));
    format!(", peak {}, {cpu} CPU", human::bytes(u.peak_memory_bytes))
}

fn build_status(g: &proto::Generation, build_asked: bool) -> String {
    let took = human::build_time(g).map(human::duration);
    match (g.build_status.as_str(), took) {
        ("built", _) if g.build_reason == BUILD_REASON_ALREADY_BUILT => {
            "already built (its output was in the store)".into()
        }
        ("built", Some(took)) => format!("built in {took}{}", usage(g.build_usage.as_ref())),
        ("failed", Some(took)) => format!("failed after {took}{}", usage(g.build_usage.as_ref())),
        ("" | "initialized", _) if g.eval_status != "evaluated" => "not started".into(),
        ("" | "initialized", _) if !build_asked => "not asked (--build builds it)".into(),
        (status, _) => status.to_string(),
    }
}

/// Whether what was asked succeeded: the evaluation, and with `build_asked` the build.
pub fn succeeded(state: &proto::Builder, build_asked: bool) -> bool {
    state
        .generation
        .as_ref()
        .is_some_and(|g| g.eval_status == "evaluated" && (!build_asked || g.build_status == "built"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds: 1_700_000_000 + seconds, nanos })
    }

    fn state(g: proto::Generation) -> proto::Builder {
        proto::Builder { generation_uuid: g.uuid.clone(), generation: Some(g), ..Default::default() }
    }

    fn built() -> proto::Generation {
        proto::Generation {
            uuid: "0b7e1f0c-8f7e-4c9a-9f0e-6b3c1f2a4d5e".into(),
            hostname: "web1".into(),
            repository_path: "/srv/infra".into(),
            system_attr: "nixosConfigurations".into(),
            selected_commit_id: "3f2a1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49".into(),
            selected_commit_msg: "web1: open port 443\n\nlonger text".into(),
            eval_status: "evaluated".into(),
            eval_started_at: at(0, 0),
            eval_ended_at: at(1, 200_000_000),
            drv_path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-system.drv".into(),
            out_path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-system".into(),
            build_status: "built".into(),
            build_reason: "need to be built".into(),
            build_started_at: at(2, 0),
            build_ended_at: at(127, 0),
            ..Default::default()
        }
    }

    #[test]
    fn a_built_generation_in_one_glance() {
        let text = summary(&state(built()), true);
        assert_eq!(
            text,
            "generation  0b7e1f0c-8f7e-4c9a-9f0e-6b3c1f2a4d5e\n\
             repository  /srv/infra\n\
             host        web1 (attribute nixosConfigurations)\n\
             commit      3f2a1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49 web1: open port 443\n\
             evaluation  evaluated in 1.2 s\n\
             build       built in 2 min 05 s\n\
             drv         /nix/store/0123456789abcdfghijklmnpqrsvwxyz-system.drv\n\
             out         /nix/store/0123456789abcdfghijklmnpqrsvwxyz-system\n"
        );
        assert!(succeeded(&state(built()), true));
    }

    #[test]
    fn what_each_step_used_follows_its_time() {
        let usage = |peak, cpu_ms| {
            Some(proto::ResourceUsage { peak_memory_bytes: peak, cpu_ms, ..Default::default() })
        };
        let g = proto::Generation {
            eval_usage: usage((11 << 30) / 10, 5300),
            build_usage: usage(300 << 20, 125_000),
            ..built()
        };
        let text = summary(&state(g), true);
        assert!(text.contains("evaluation  evaluated in 1.2 s, peak 1.1 GiB, 5.3 s CPU\n"), "{text}");
        assert!(text.contains("build       built in 2 min 05 s, peak 300 MiB, 2 min 05 s CPU\n"), "{text}");
    }

    #[test]
    fn failures_show_the_error_cleaned_and_indented() {
        let g = proto::Generation {
            build_status: "failed".into(),
            build_err: "`nix-store --realise /nix/store/x-c.drv --add-root /r` exited with status 1:\n\
                        builder for '/nix/store/x-b.drv' failed\n\x1b[31mlast lines:\x1b[0m\n> boom"
                .into(),
            machine_id: "a1b2".into(),
            repository_subdir: "hosts".into(),
            ..built()
        };
        assert!(!succeeded(&state(g.clone()), true));
        let text = summary(&state(g), true);
        assert!(text.contains("repository  /srv/infra (subdir hosts)\n"), "{text}");
        assert!(text.contains("build       failed after 2 min 05 s\n"), "{text}");
        assert!(text.contains("machine id  a1b2\n"), "{text}");
        assert!(
            text.ends_with(
                "error       nix-store exited with status 1:\n            builder for '/nix/store/x-b.drv' failed\n            \
                 last lines:\n            > boom\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn blank_lines_of_an_error_stay_blank() {
        let g = proto::Generation { eval_status: "failed".into(), eval_err: "a\n\n  at x".into(), ..built() };
        assert!(summary(&state(g), true).ends_with("error       a\n\n              at x\n"));
    }

    #[test]
    fn eval_only_failed_eval_and_already_built() {
        let evaluated =
            proto::Generation { build_status: "initialized".into(), build_started_at: None, ..built() };
        assert!(
            summary(&state(evaluated.clone()), false).contains("build       not asked (--build builds it)\n")
        );
        assert!(succeeded(&state(evaluated.clone()), false));
        assert!(!succeeded(&state(evaluated), true));

        let failed = proto::Generation {
            eval_status: "failed".into(),
            eval_err: "error: attribute 'nope' missing".into(),
            drv_path: String::new(),
            out_path: String::new(),
            build_status: "initialized".into(),
            ..built()
        };
        let text = summary(&state(failed.clone()), true);
        assert!(text.contains("evaluation  failed after 1.2 s\nbuild       not started\n"), "{text}");
        assert!(text.ends_with("error       error: attribute 'nope' missing\n"), "{text}");
        assert!(!text.contains("drv "), "{text}");
        assert!(!succeeded(&state(failed), false));

        let already = proto::Generation { build_reason: BUILD_REASON_ALREADY_BUILT.into(), ..built() };
        assert!(summary(&state(already), false)
            .contains("build       already built (its output was in the store)\n"));
        assert_eq!(summary(&proto::Builder::default(), true), "no generation was evaluated\n");
        assert!(!succeeded(&proto::Builder::default(), false));
    }

    #[test]
    fn a_store_error_is_shown() {
        let state = proto::Builder { last_error: "cannot write /x: disk full".into(), ..state(built()) };
        assert!(summary(&state, true).ends_with("error       cannot write /x: disk full\n"));
    }
}
