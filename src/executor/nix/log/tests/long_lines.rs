//! Lines the pipe reader cut in pieces (longer than 64 KiB): joined back, bounded, or
//! passed through.

use super::*;

/// `line` as the pipe reader hands it: pieces of at most `MAX_LINE` bytes, cut on a
/// character boundary.
fn pieces(line: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = line;
    while rest.len() > MAX_LINE {
        let mut at = MAX_LINE;
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        pieces.push(&rest[..at]);
        rest = &rest[at..];
    }
    pieces.push(rest);
    pieces
}

fn feed_pieces(parser: &mut NixLog, seen: &mut Seen, lines: &[String]) {
    for line in lines {
        for piece in pieces(line) {
            parser.feed(piece, &mut |event| match event {
                Event::Line { drv_path, text } => {
                    seen.lines.push((drv_path.map(str::to_string), text.to_string()))
                }
                Event::Progress(p) => seen.progress.push(p.clone()),
            });
        }
    }
}

const START_BIG: &str = r#"@nix {"action":"start","id":7,"level":3,"text":"building '/nix/store/x-big.drv'","type":105,"fields":["/nix/store/x-big.drv","",1,1]}"#;

/// A builder's line of 200 KiB comes from the pipe reader in pieces, none of which
/// parses alone: it is joined back, attributed to its derivation, never raw JSON.
#[test]
fn a_build_line_of_200_kib_is_joined_back_and_attributed() {
    // Multi-byte characters put some cuts 1 to 3 bytes short of MAX_LINE.
    let long = format!("LINE-START {} END", "aé€𝄞".repeat(20 << 10));
    assert!(long.len() > 200 << 10);
    let result = serde_json::json!({"action":"result","id":7,"type":101,"fields":[long]});
    let lines = [START_BIG.to_string(), format!("@nix {result}"), "after".to_string()];
    assert!(pieces(&lines[1]).len() > 3 && pieces(&lines[1]).iter().any(|p| p.len() < MAX_LINE));
    let (mut parser, mut seen) = (NixLog::new(), Seen::default());
    feed_pieces(&mut parser, &mut seen, &lines);
    let attributed: Vec<&(Option<String>, String)> = seen.lines.iter().filter(|(d, _)| d.is_some()).collect();
    assert_eq!(attributed.len(), 1, "{:?}", seen.lines.iter().map(|(_, t)| t.len()).collect::<Vec<_>>());
    assert_eq!(attributed[0], &(Some("/nix/store/x-big.drv".to_string()), long));
    line_of(&seen, "after");
    no_raw_json_and_no_escapes_from_nix(&seen);
}

/// An evaluation error longer than 64 KiB: its text, not raw JSON, in the failure.
#[test]
fn a_long_error_message_is_joined_back_into_the_failure() {
    let text = format!("BIG-ERROR {} END-OF-ERROR", "y".repeat(70_000));
    let msg = serde_json::json!({"action":"msg","level":0,"msg":format!("\u{1b}[31;1merror:\u{1b}[0m {text}"),"raw_msg":text});
    let (mut parser, mut seen) = (NixLog::new(), Seen::default());
    feed_pieces(&mut parser, &mut seen, &[format!("@nix {msg}")]);
    let failure = parser.failure();
    assert!(failure.starts_with("BIG-ERROR yyy"), "{}", &failure[..failure.len().min(100)]);
    assert!(!failure.contains("@nix") && !failure.contains('\x1b'));
    assert_eq!(seen.lines, [(None, format!("error: {text}"))]);
}

/// Past 4 MiB a line is not joined any more: a notice stands for it, and the lines
/// after it are read as ever.
#[test]
fn a_nix_line_of_more_than_4_mib_becomes_a_notice() {
    let result = serde_json::json!({"action":"result","id":7,"type":101,"fields":["x".repeat(5 << 20)]});
    let after = r#"@nix {"action":"result","id":7,"type":101,"fields":["after"]}"#.to_string();
    let lines = [START_BIG.to_string(), format!("@nix {result}"), after];
    let (mut parser, mut seen) = (NixLog::new(), Seen::default());
    feed_pieces(&mut parser, &mut seen, &lines);
    let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        ["building '/nix/store/x-big.drv'", "a Nix log line of more than 4 MiB was cut", "after"]
    );
    assert_eq!(seen.lines[2].0.as_deref(), Some("/nix/store/x-big.drv"));
}

/// A command whose stderr ends in the middle of a long `@nix` line (its last piece as
/// long as a cut one) loses none of it: the pieces are logged as they came.
#[test]
fn a_long_nix_line_cut_by_the_end_of_stderr_is_logged_in_its_pieces() {
    let line = format!("@nix {{\"action\":\"msg\",\"msg\":\"{}", "m".repeat(2 * MAX_LINE));
    let cut = &line[..2 * MAX_LINE];
    let (mut parser, mut seen) = (NixLog::new(), Seen::default());
    feed_pieces(&mut parser, &mut seen, &[cut.to_string()]);
    assert!(seen.lines.is_empty(), "held until the line ends");
    parser.finish(&mut |event| {
        if let Event::Line { text, .. } = event {
            seen.lines.push((None, text.to_string()));
        }
    });
    let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, pieces(cut));
}

/// Long lines that are not Nix's JSON pass through in their pieces, as before.
#[test]
fn long_lines_that_are_not_nix_json_pass_through_in_pieces() {
    for line in [
        "p".repeat(3 * MAX_LINE),
        format!("@nix {{not json {}", "p".repeat(2 * MAX_LINE)),
        format!("@nix [{}1]", "1,".repeat(MAX_LINE)),
    ] {
        let (mut parser, mut seen) = (NixLog::new(), Seen::default());
        feed_pieces(&mut parser, &mut seen, &[line.clone(), "next".to_string()]);
        let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
        let mut expected = pieces(&line);
        expected.push("next");
        assert_eq!(texts, expected);
    }
}
