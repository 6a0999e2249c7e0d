//! Rows of stop(): during a real Nix build (SIGTERM, Nix stops its builder) against
//! SIGKILL of the Nix client, and with a running `sleep` job against SIGKILL of the
//! shell.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::common::nix::{Env, Repo};
use crate::common::{nonce, rs, wait_for_log};
use crate::util::{
    commit_system, count_and_kill_leftovers, fmt_ms, kill_and_count, median, ms, nix_args, nix_builder, run,
    shell_builder, stop_and_count, wait_for_process,
};
use crate::{row, Plan, Row, HANG};

pub(crate) fn stop_rows(plan: &Plan) -> Vec<Row> {
    let (repo, env) = (Repo::new(), Env::new());
    let (builder, store) = nix_builder(&repo, &env);
    let (evaluated, built, events) = (builder.evaluation_done(), builder.build_done(), builder.subscribe());
    let (mut ours, mut reference, mut ours_left, mut ref_left) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..plan.stop_reps {
        // genbuild: a real build, stopped once its builder printed.
        let n = nonce();
        let script = format!("echo started-{n}; sleep 300.{n}; echo > $out");
        let commit = commit_system(&repo, &format!("stop-{n}"), &script, "\"\"");
        let uuid = builder.eval(&rs(&commit)).unwrap();
        assert_eq!(evaluated.recv_timeout(HANG).unwrap(), uuid);
        let drv = store.generation(&uuid).unwrap().drv_path;
        assert!(!drv.is_empty());
        builder.submit_build(&uuid).unwrap();
        wait_for_log(&events, &format!("started-{n}"), HANG);
        let t = Instant::now();
        builder.stop();
        ours.push(ms(t.elapsed()));
        assert_eq!(built.recv_timeout(HANG).unwrap(), uuid);
        ours_left += count_and_kill_leftovers(&n);
        events.try_iter().for_each(drop);

        // Reference: the same kind of build, its Nix client killed with SIGKILL.
        let m = nonce();
        let script = format!("echo started-{m}; sleep 300.{m}; echo > $out");
        commit_system(&repo, &format!("stop-{m}"), &script, "\"\"");
        let drv = run(Command::new("nix-instantiate")
            .args(nix_args())
            .arg(repo.path())
            .args(["-A", "system.toplevel"]));
        let mut client = Command::new("nix-store")
            .args(nix_args())
            .args(["--realise", &drv])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_line(&mut client, &format!("started-{m}"));
        let t = Instant::now();
        client.kill().unwrap();
        client.wait().unwrap();
        reference.push(ms(t.elapsed()));
        ref_left += count_and_kill_leftovers(&m);
    }
    drop(builder);
    let (ours, reference) = (median(ours), median(reference));
    vec![
        row(
            "stop() during a real Nix build: latency",
            fmt_ms(ours),
            fmt_ms(reference),
            Some(ours / reference),
            "SIGTERM, Nix stops its builder, reap vs SIGKILL + reap".into(),
        ),
        row(
            "stop(): builder processes left afterwards",
            format!("{ours_left} in {} stops", plan.stop_reps),
            format!("{ref_left} in {} stops", plan.stop_reps),
            None,
            "counted by nonce in /proc/*/cmdline, then killed".into(),
        ),
    ]
}

/// Reads `child`'s stderr until a line contains `text`; the rest is drained on a thread.
pub(crate) fn wait_for_line(child: &mut Child, text: &str) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let text = text.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(&text) {
                let _ = tx.try_send(());
            }
        }
    });
    rx.recv_timeout(HANG).expect("the build never started");
}

/// stop() while a `sleep` job runs, against SIGKILL and a wait of the shell.
pub(crate) fn shell_stop_row(plan: &Plan) -> Row {
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    let (mut our_leftovers, mut reference_leftovers) = (0, 0);
    for _ in 0..plan.stop_reps {
        let n = nonce();
        let script = format!("sleep 300.{n}; true");
        let (builder, _) = shell_builder(Some(script.clone()), None);
        builder.eval(&rs(&n)).unwrap();
        wait_for_process(&n);
        let (took, left) = stop_and_count(builder, &n);
        ours.push(took);
        our_leftovers += left;

        let child = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).spawn().unwrap();
        wait_for_process(&n);
        let (took, left) = kill_and_count(child, &n);
        reference.push(took);
        reference_leftovers += left;
    }
    let (ours, reference) = (median(ours), median(reference));
    let notes = format!(
        "`sh -c 'sleep; true'`; processes left: {our_leftovers} vs {reference_leftovers} in {} stops",
        plan.stop_reps
    );
    row(
        "stop() with a running `sleep` job: latency",
        fmt_ms(ours),
        fmt_ms(reference),
        Some(ours / reference),
        notes,
    )
}
