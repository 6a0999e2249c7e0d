//! The parser against logs recorded from Nix 2.8, 2.26 and 2.34 (tests/fixtures/nix-*,
//! made by tests/fixtures/record.sh; 2.34 also through a daemon) and against
//! hand-made lines.

use super::*;

mod long_lines;

/// The recorded Nix versions, each with its recordings by name.
type Recordings = fn(&str) -> Option<&'static str>;
const VERSIONS: [(&str, Recordings); 3] = [("2.8", v2_8), ("2.26", v2_26), ("2.34", v2_34)];

macro_rules! recordings {
    ($fn:ident, $dir:literal, [$($name:literal),* $(,)?]) => {
        fn $fn(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../../../../tests/fixtures/", $dir, "/", $name, ".stderr"))),)*
                _ => None,
            }
        }
    };
}
recordings!(
    v2_8,
    "nix-2.8",
    [
        "realise-chain",
        "build-chain",
        "realise-fail",
        "build-fail",
        "realise-max-jobs-0",
        "instantiate-eval-error",
        "instantiate-syntax-error",
        "eval-missing-attr",
        "flake-syntax-error",
        "remote-realise-chain",
        "remote-build-chain",
    ]
);
recordings!(
    v2_26,
    "nix-2.26",
    [
        "realise-chain",
        "build-chain",
        "realise-fail",
        "build-fail",
        "realise-max-jobs-0",
        "instantiate-eval-error",
        "instantiate-syntax-error",
        "eval-missing-attr",
        "flake-syntax-error",
        "remote-realise-chain",
        "remote-build-chain",
    ]
);
recordings!(
    v2_34,
    "nix-2.34",
    [
        "realise-chain",
        "build-chain",
        "realise-fail",
        "build-fail",
        "realise-max-jobs-0",
        "instantiate-eval-error",
        "instantiate-syntax-error",
        "eval-missing-attr",
        "flake-syntax-error",
        "remote-realise-chain",
        "remote-build-chain",
        "daemon-realise-chain",
        "daemon-build-chain",
        "daemon-realise-fail",
        "daemon-build-fail",
        "daemon-realise-max-jobs-0",
    ]
);

/// Every recording of `names` (and its `daemon-` twin where there is one), with a
/// label for messages.
fn recorded(names: &[&str]) -> Vec<(String, &'static str)> {
    let mut logs = Vec::new();
    for (version, get) in VERSIONS {
        for name in names {
            for name in [name.to_string(), format!("daemon-{name}")] {
                if let Some(log) = get(&name) {
                    logs.push((format!("Nix {version} {name}"), log));
                }
            }
        }
    }
    assert!(logs.len() >= names.len() * VERSIONS.len(), "a recording is missing: {names:?}");
    logs
}

/// Everything a log gives, in order.
#[derive(Debug, Default)]
struct Seen {
    lines: Vec<(Option<String>, String)>,
    progress: Vec<Progress>,
}

fn feed_all(log: &str) -> (NixLog, Seen) {
    feed_all_into(NixLog::new(), log)
}

fn feed_all_into(mut parser: NixLog, log: &str) -> (NixLog, Seen) {
    let mut seen = Seen::default();
    for line in log.lines() {
        parser.feed(line, &mut |event| match event {
            Event::Line { drv_path, text } => {
                seen.lines.push((drv_path.map(str::to_string), text.to_string()))
            }
            Event::Progress(p) => seen.progress.push(p.clone()),
        });
    }
    (parser, seen)
}

fn no_raw_json_and_no_escapes_from_nix(seen: &Seen) {
    for (drv, text) in &seen.lines {
        assert!(!text.contains("@nix") && !text.contains("\"action\""), "raw JSON shown: {text}");
        // Only a builder's own output may carry escape codes.
        assert!(drv.is_some() || !text.contains('\x1b'), "escape codes in Nix's message: {text:?}");
    }
}

fn line_of<'a>(seen: &'a Seen, text: &str) -> &'a (Option<String>, String) {
    seen.lines
        .iter()
        .find(|(_, t)| t == text)
        .unwrap_or_else(|| panic!("no line {text:?} in {:?}", seen.lines))
}

/// Every report is one consistent snapshot, and none takes back what an earlier one
/// said: a derivation that stopped building never builds again (each builds once
/// here), built and failed never go down.
fn consistent(label: &str, progress: &[Progress]) {
    for p in progress {
        assert_eq!(p.running, p.building.len() as u64, "{label}: {p:?}");
        assert!(p.done + p.running + p.failed <= p.expected, "{label}: {p:?}");
        assert!(p.copy_bytes_done <= p.copy_bytes_expected, "{label}: {p:?}");
    }
    let never_back = |f: fn(&Progress) -> u64| progress.windows(2).all(|w| f(&w[0]) <= f(&w[1]));
    assert!(never_back(|p| p.done) && never_back(|p| p.failed), "{label}: {progress:?}");
    let mut stopped: Vec<&String> = Vec::new();
    for w in progress.windows(2) {
        for drv in &w[1].building {
            assert!(!stopped.contains(&drv), "{label}: {drv} builds again after it stopped: {progress:?}");
        }
        stopped.extend(w[0].building.iter().filter(|d| !w[1].building.contains(d)));
    }
}

#[test]
fn a_chain_ends_at_three_of_three_on_every_version_with_lines_attributed() {
    for (label, log) in recorded(&["realise-chain", "build-chain"]) {
        let (parser, seen) = feed_all(log);
        let last = seen.progress.last().expect("progress");
        assert_eq!((last.done, last.expected, last.running, last.failed), (3, 3, 0, 0), "{label}: {last:?}");
        assert!(last.building.is_empty(), "{label}: {last:?}");
        consistent(&label, &seen.progress);
        for name in ["a", "b", "c"] {
            let building = seen
                .progress
                .iter()
                .find(|p| p.building.len() == 1 && p.building[0].ends_with(&format!("-chain-{name}.drv")));
            let building = building
                .unwrap_or_else(|| panic!("{label}: {name} never shown building: {:?}", seen.progress));
            assert_eq!(building.expected, 3, "{label}: never more than the three announced: {building:?}");
            let (drv, _) = line_of(&seen, &format!("building {name}"));
            assert!(
                drv.as_deref().is_some_and(|d| d.ends_with(&format!("-chain-{name}.drv"))),
                "{label}: {drv:?}"
            );
        }
        let (drv, _) = line_of(&seen, "second line of a");
        assert!(drv.as_deref().is_some_and(|d| d.ends_with("-chain-a.drv")));
        // Progress is reported when it changes, not for each of Nix's repeats.
        assert!(seen.progress.windows(2).all(|w| w[0] != w[1]));
        assert!(seen.progress.len() < 20, "{label}: {}", seen.progress.len());
        no_raw_json_and_no_escapes_from_nix(&seen);
        assert_eq!(parser.failure(), "", "{label}: a success has no error");
    }
    for (label, log) in recorded(&["realise-chain"]) {
        let (_, seen) = feed_all(log);
        let plan =
            seen.lines.iter().find(|(_, t)| t.ends_with("-chain-a.drv") && t.starts_with("  /nix/store/"));
        assert_eq!(plan.map(|(d, _)| d), Some(&None), "{label}: Nix's own messages belong to no derivation");
    }
}

#[test]
fn a_failed_build_names_the_derivation_its_exit_code_and_its_last_lines() {
    for (label, log) in recorded(&["realise-fail", "build-fail"]) {
        let (parser, seen) = feed_all(log);
        consistent(&label, &seen.progress);
        let last = seen.progress.last().expect("progress");
        assert_eq!((last.done, last.running, last.failed), (1, 0, 1), "{label}: {last:?}");
        // c will not be built: Nix's own count (2.8 `nix build`, which announces no plan)
        // leaves it out, the announced plan keeps it.
        assert!((2..=3).contains(&last.expected), "{label}: {last:?}");
        let failure = parser.failure();
        let drv = seen
            .lines
            .iter()
            .find(|(_, t)| t == "b is failing")
            .and_then(|(d, _)| d.clone())
            .expect("the failing line is attributed");
        assert!(drv.ends_with("-chain-b.drv"));
        assert!(
            failure.contains(&format!("'{drv}'")) && failure.contains("exit code 3"),
            "{label}: {failure}"
        );
        assert!(failure.contains("-chain-c.drv'"), "{label}: the dependent derivation: {failure}");
        let tail = format!("last log lines of {drv}:\nbuilding b\ncoloured by the builder\nb is failing");
        assert!(failure.ends_with(&tail), "{label}: {failure}");
        assert!(!failure.contains('\x1b') && !failure.contains("@nix"), "{label}: {failure:?}");
        assert!(!failure.contains("chain-a.drv"), "{label}: a built fine: {failure}");
        // The builder's colours reach the log as it printed them; Nix's are stripped.
        let (_, coloured) = line_of(&seen, "\x1b[31mcoloured by the builder\x1b[0m");
        assert!(coloured.contains('\x1b'));
        let error = seen.lines.iter().find(|(_, t)| t.starts_with("error: ") && t.contains(&drv));
        assert_eq!(error.map(|(d, _)| d), Some(&None), "{label}: Nix's error is its own line");
        no_raw_json_and_no_escapes_from_nix(&seen);
    }
}

#[test]
fn no_local_builds_says_so_on_every_version() {
    for (label, log) in recorded(&["realise-max-jobs-0"]) {
        let (parser, seen) = feed_all(log);
        consistent(&label, &seen.progress);
        let failure = parser.failure();
        assert!(failure.contains("max-jobs"), "{label}: {failure}");
        assert!(seen.progress.iter().all(|p| p.done == 0 && p.running == 0), "{label}: {:?}", seen.progress);
    }
}

/// The directory of `file` in the first error with a location of a recording.
fn error_dir(log: &str) -> String {
    let error = log.lines().filter_map(|l| parse(l).ok()).find(|v| v["level"] == 0 && v["file"].is_string());
    let file = error.expect("an error with a file")["file"].as_str().unwrap().to_string();
    file[..file.rfind('/').unwrap()].to_string()
}

#[test]
fn an_error_location_is_shown_once_relative_to_the_source() {
    for (label, log) in recorded(&["instantiate-eval-error"]) {
        let (parser, seen) = feed_all(log);
        let failure = parser.failure();
        assert!(failure.starts_with("cannot convert a function to JSON (at /tmp/"), "{label}: {failure}");
        assert!(failure.ends_with("/eval.nix:1:64)"), "{label}: {failure}");
        assert!(!failure.contains("trace") && !failure.contains('\n'), "{label}: {failure}");
        line_of(&seen, "trace: a trace, not an error");
        let error = seen.lines.iter().any(|(_, t)| t.trim() == "error: cannot convert a function to JSON");
        assert!(error, "{label}: {:?}", seen.lines);
        no_raw_json_and_no_escapes_from_nix(&seen);
    }
    for (label, log) in recorded(&["instantiate-syntax-error"]) {
        let dir = error_dir(log);
        let (parser, _) = feed_all(log);
        assert_eq!(
            parser.failure(),
            format!("syntax error, unexpected ';' (at {dir}/syntax.nix:1:7)"),
            "{label}"
        );
        // A file of the checkout: relative to the repository.
        let (parser, _) = feed_all_into(NixLog::with_sources(vec![SourceRoot::Dir(dir)]), log);
        assert_eq!(parser.failure(), "syntax error, unexpected ';' (at syntax.nix:1:7)", "{label}");
    }
    for (label, log) in recorded(&["flake-syntax-error"]) {
        let failure = feed_all(log).0.failure();
        let failure = failure.lines().last().unwrap();
        assert!(failure.starts_with("syntax error, unexpected ';' (at "), "{label}: {failure}");
        assert!(
            failure.ends_with("/flake.nix:1:29)") && !failure.ends_with(":1:29:1:29)"),
            "{label}: {failure}"
        );
        if label.contains("2.34") {
            let repo =
                log.split("git+file://").nth(1).and_then(|r| r.split('?').next()).expect("the flake's URL");
            let roots = vec![SourceRoot::Origin(format!("git+file://{repo}"))];
            let (parser, _) = feed_all_into(NixLog::with_sources(roots), log);
            // The origin names the repository: the path in it is the user's.
            assert!(failure.contains(&format!("(at «git+file://{repo}?")), "{label}: {failure}");
            assert!(
                parser.failure().ends_with("syntax error, unexpected ';' (at flake.nix:1:29)"),
                "{label}"
            );
        } else {
            assert!(failure.contains("(at /nix/store/"), "{label}: {failure}");
        }
    }
    // In an `--expr`, Nix's "file" is the expression or `«string»`: no location then.
    for (label, log) in recorded(&["eval-missing-attr"]) {
        let (parser, seen) = feed_all(log);
        assert_eq!(parser.failure(), "attribute 'b' missing", "{label}");
        assert!(seen.lines.iter().any(|(_, t)| t.trim() == "Did you mean a?"), "{label}: {:?}", seen.lines);
        no_raw_json_and_no_escapes_from_nix(&seen);
    }
}

#[test]
fn plain_lines_pass_through_and_lead_the_failure() {
    let log = "fatal: couldn't find remote ref refs/heads/master\n\
               @nix {not json\n\
               @nix [1,2]\n\
               @nix {\"action\":\"later-action\",\"id\":1}\n\
               @nix {\"action\":\"result\",\"id\":99,\"type\":101,\"fields\":[\"unknown activity\"]}\n\
               \x1b[1mbold plain\x1b[0m\n\
               @nix {\"action\":\"msg\",\"level\":0,\"msg\":\"error: program 'git' failed\",\"raw_msg\":\"program 'git' failed\"}";
    let (parser, seen) = feed_all(log);
    let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            "fatal: couldn't find remote ref refs/heads/master",
            "@nix {not json",
            "@nix [1,2]",
            "\x1b[1mbold plain\x1b[0m",
            "error: program 'git' failed",
        ]
    );
    assert_eq!(
        parser.failure(),
        "fatal: couldn't find remote ref refs/heads/master\n@nix {not json\n@nix [1,2]\nbold plain\n\
         program 'git' failed"
    );
}

#[test]
fn huge_lines_are_bounded_on_character_boundaries() {
    let start = r#"@nix {"action":"start","id":7,"level":3,"text":"building '/nix/store/x-big.drv'","type":105,"fields":["/nix/store/x-big.drv","",1,1]}"#;
    let huge = "é".repeat(200_000) + "END";
    let line = serde_json::json!({"action":"result","id":7,"type":101,"fields":[huge]});
    let msg = serde_json::json!({"action":"msg","level":0,"msg":"x","raw_msg": format!("builder for '/nix/store/x-big.drv' failed {}", "ü".repeat(10_000))});
    let log = format!("{start}\n@nix {line}\n@nix {msg}");
    let (parser, seen) = feed_all(&log);
    assert_eq!(
        seen.lines.iter().find(|(d, _)| d.is_some()).unwrap().1.len(),
        400_003,
        "the log line is whole"
    );
    let failure = parser.failure();
    let names = "\nlast log lines of /nix/store/x-big.drv:\n".len();
    assert!(failure.len() <= FAILURE_BYTES + names, "{}", failure.len());
    assert!(failure.starts_with("builder for '/nix/store/x-big.drv' failed üü"), "{}", &failure[..60]);
    assert!(failure.contains("last log lines of /nix/store/x-big.drv:\n"));
    assert!(failure.ends_with("éEND"));
}

#[test]
fn escape_sequences_are_stripped() {
    for (input, expected) in [
        ("plain", "plain"),
        ("\x1b[31;1merror:\x1b[0m x", "error: x"),
        ("a\x1b[2Kb\x1b[?25lc", "abc"),
        ("\x1b]8;;http://x\x07link\x1b]8;;\x1b\\ end", "link end"),
        ("\x1b]0;title\x1b\\t", "t"),
        ("\x1bPdcs\x1b\\x", "x"),
        ("a\x1b(Bb\x1b7c\x1b=d", "abcd"),
        ("cut\x1b[31", "cut"),
        ("lone\x1b", "lone"),
        ("ü\x1b[1mé", "üé"),
    ] {
        assert_eq!(strip_ansi(input), expected, "{input:?}");
    }
}

#[test]
fn a_remote_build_shows_its_copies_back_and_only_the_local_counters() {
    for (label, log) in recorded(&["remote-realise-chain", "remote-build-chain"]) {
        let (parser, seen) = feed_all(log);
        consistent(&label, &seen.progress);
        let last = seen.progress.last().expect("progress");
        assert_eq!((last.done, last.expected, last.running, last.failed), (2, 2, 0, 0), "{label}: {last:?}");
        assert_eq!((last.copies_done, last.copies_expected), (2, 2), "{label}: {last:?}");
        assert!(last.building.is_empty() && last.copying.is_empty(), "{label}: {last:?}");
        // Bytes from Nix 2.26 on: the 8 MiB output among them; none on 2.8.
        if label.contains("2.8 ") {
            assert_eq!((last.copy_bytes_done, last.copy_bytes_expected), (0, 0), "{label}: {last:?}");
        } else {
            assert!(last.copy_bytes_expected >= 8 << 20, "{label}: {last:?}");
            assert_eq!(last.copy_bytes_done, last.copy_bytes_expected, "{label}: {last:?}");
        }
        for name in ["remote-a", "remote-b"] {
            // Each output is copied back once, shown while it is.
            let copying: Vec<&Progress> = seen.progress.iter().filter(|p| !p.copying.is_empty()).collect();
            let shown = copying.iter().find(|p| p.copying[0].ends_with(&format!("-{name}")));
            let shown =
                shown.unwrap_or_else(|| panic!("{label}: {name} never shown copying: {:?}", seen.progress));
            assert_eq!(shown.copying.len(), 1, "{label}: {shown:?}");
            assert!(shown.copies_done < shown.copies_expected, "{label}: {shown:?}");
            let copy = format!("copying path '{}' from 'ssh-ng://", shown.copying[0]);
            let line = seen.lines.iter().find(|(_, t)| t.starts_with(&copy));
            assert_eq!(line.map(|(d, _)| d), Some(&None), "{label}: Nix's own message");
            assert!(seen
                .progress
                .iter()
                .any(|p| p.building.len() == 1 && p.building[0].ends_with(&format!("-{name}.drv"))));
        }
        for p in &seen.progress {
            // The remote's own builds activity (counting 1 of 1) never shows.
            assert!(p.expected == 2 || p.expected == 1 && p.done == 0, "{label}: {p:?}");
            // The local build activity and the remote's name one derivation.
            assert!(p.building.len() <= 1, "{label}: {p:?}");
            assert!(p.copies_expected >= p.copies_done + p.copying.len() as u64, "{label}: {p:?}");
        }
        let never_back = |f: fn(&Progress) -> u64| seen.progress.windows(2).all(|w| f(&w[0]) <= f(&w[1]));
        assert!(
            never_back(|p| p.copies_done) && never_back(|p| p.copies_expected),
            "{label}: {:?}",
            seen.progress
        );
        assert!(never_back(|p| p.copy_bytes_done), "{label}: {:?}", seen.progress);
        no_raw_json_and_no_escapes_from_nix(&seen);
        assert_eq!(parser.failure(), "", "{label}");
    }
}

#[test]
fn copies_are_counted_from_announcements_counters_and_copy_path_activities() {
    let copy = |id: u64, path: &str| {
        format!(
            r#"@nix {{"action":"start","id":{id},"level":3,"type":100,"text":"copying path '{path}'","fields":["{path}","https://cache","local"]}}"#
        )
    };
    let stop = |id: u64| format!(r#"@nix {{"action":"stop","id":{id}}}"#);
    let log = [
        // The command's substitutions: counted by the worker's copy-paths activity.
        r#"@nix {"action":"start","id":1,"level":0,"type":103,"text":""}"#.to_string(),
        r#"@nix {"action":"result","id":1,"type":105,"fields":[0,3,0,0]}"#.to_string(),
        copy(2, "/nix/store/x-one"),
        copy(3, "/nix/store/x-two"),
        // Bytes of a copy: not paths.
        r#"@nix {"action":"result","id":2,"type":105,"fields":[100,1000,0,0]}"#.to_string(),
        stop(2),
        // A count corrected downwards.
        r#"@nix {"action":"result","id":1,"type":105,"fields":[1,2,1,0]}"#.to_string(),
        stop(3),
        stop(1),
        // A build hook's copies: the number only in the text.
        r#"@nix {"action":"start","id":4,"level":3,"type":103,"text":"copying 2 paths"}"#.to_string(),
        copy(5, "/nix/store/x-three"),
        stop(5),
        // A text this parser does not know: the copies count as they come.
        r#"@nix {"action":"start","id":6,"level":3,"type":103,"text":"copying lots of paths"}"#.to_string(),
        copy(7, "/nix/store/x-four"),
        copy(8, "/nix/store/x-five"),
        stop(7),
        stop(8),
        stop(6),
        copy(9, "/nix/store/x-six"),
        // Without a path, a copy-path activity is ignored; stops of unknown ids too.
        r#"@nix {"action":"start","id":10,"level":3,"type":100,"text":"copying"}"#.to_string(),
        stop(10),
        stop(99),
        stop(9),
        stop(4),
    ]
    .join("\n");
    let (_, seen) = feed_all(&log);
    let copies: Vec<(u64, u64, Vec<&str>)> = seen
        .progress
        .iter()
        .map(|p| (p.copies_done, p.copies_expected, p.copying.iter().map(|c| &c[11..]).collect()))
        .collect();
    assert_eq!(
        copies,
        [
            (0, 3, vec![]),
            (0, 3, vec!["x-one"]),
            (0, 3, vec!["x-one", "x-two"]),
            // The first one's bytes.
            (0, 3, vec!["x-one", "x-two"]),
            (1, 3, vec!["x-two"]),
            (1, 2, vec!["x-two"]),
            (2, 2, vec![]),
            (2, 4, vec![]),
            (2, 4, vec!["x-three"]),
            (3, 4, vec![]),
            (3, 4, vec!["x-four"]),
            (3, 5, vec!["x-four", "x-five"]),
            (4, 5, vec!["x-five"]),
            (5, 5, vec![]),
            (5, 6, vec!["x-six"]),
            (6, 6, vec![]),
        ]
    );
    assert!(seen.progress.iter().all(|p| p.expected == 0 && p.building.is_empty()));
}

#[test]
fn absurd_copy_counts_saturate() {
    let log = [
        r#"@nix {"action":"start","id":1,"level":3,"type":103,"text":"copying 18446744073709551615 paths"}"#,
        r#"@nix {"action":"start","id":2,"level":3,"type":103,"text":"copying 18446744073709551615 paths"}"#,
        r#"@nix {"action":"result","id":2,"type":105,"fields":[0,18446744073709551615,0,0]}"#,
        r#"@nix {"action":"result","id":1,"type":105,"fields":[0,-1,"x",0]}"#,
        r#"@nix {"action":"start","id":3,"level":3,"type":100,"text":"","fields":["/nix/store/x-a"]}"#,
        r#"@nix {"action":"stop","id":3}"#,
    ]
    .join("\n");
    let (_, seen) = feed_all(&log);
    let last = seen.progress.last().unwrap();
    assert_eq!((last.copies_done, last.copies_expected), (1, u64::MAX), "{last:?}");
    assert!(seen.progress.iter().all(|p| p.copies_expected == u64::MAX), "{:?}", seen.progress);
}

/// A failing build whose last line is longer than the failure's bound used to leave no
/// line at all: the line just pushed was dropped with every line before it.
#[test]
fn a_long_last_line_keeps_its_end_and_the_lines_before_it() {
    let mut tail = Tail::default();
    tail.push("foo.c:1: error: something broke");
    tail.push(&("z".repeat(5000) + "END"));
    let text = tail.text();
    assert!(text.starts_with("foo.c:1: error: something broke\n"), "{text}");
    assert!(text.ends_with("zEND") && text.len() <= FAILURE_BYTES, "{}", text.len());
    let mut tail = Tail::default();
    for i in 0..100 {
        tail.push(&format!("{i} {}", "y".repeat(1500)));
    }
    let text = tail.text();
    assert!(text.len() <= FAILURE_BYTES && text.len() > FAILURE_BYTES / 2, "{}", text.len());
    assert!(text.ends_with(&"y".repeat(TAIL_LINE_BYTES)));
}

/// A plain line of 4096 bytes or more used to leave a failure without any text.
#[test]
fn a_long_plain_line_leaves_the_failure_its_text() {
    let mut parser = NixLog::new();
    parser.feed("fatal: something went wrong", &mut |_| {});
    parser.feed(&"q".repeat(4096), &mut |_| {});
    let failure = parser.failure();
    assert!(failure.starts_with("fatal: something went wrong\n"), "{failure}");
    assert!(failure.ends_with("qqq"));
}

/// Nix 2.26 and later fetch a bare repository's commit under an activity of type 112
/// at level 4 (talkative): genbuild's own fetch, not shown; an activity's text at
/// Nix's default verbosity is.
#[test]
fn a_fetch_of_the_repository_is_not_shown() {
    let log = [
        r#"@nix {"action":"start","id":1,"level":4,"parent":0,"text":"fetching Git repository 'file:///srv/infra'","type":112}"#,
        r#"@nix {"action":"stop","id":1}"#,
        r#"@nix {"action":"start","id":2,"level":3,"parent":0,"text":"copying path '/nix/store/x-a'","type":100,"fields":["/nix/store/x-a"]}"#,
    ]
    .join("\n");
    let (parser, seen) = feed_all(&log);
    let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["copying path '/nix/store/x-a'"]);
    assert_eq!(parser.failure(), "");
}
