//! What a run prints: nothing under cron with --quiet, JSON for scripts,
//! the list of a dry run, a progress bar on a terminal, and the generated
//! completions and man page.

use serde_json::Value;

use crate::harness::*;

/// Files for a run in which one file is refused (a backslash in its name).
fn one_good_one_refused(h: &Harness) {
    h.log("good.log", b"fine\n");
    h.log("back\\slash.log", b"a name the receiver refuses\n");
}

#[test]
fn quiet_prints_nothing_when_every_file_went_and_still_reports_failures() {
    let h = Harness::start();
    h.log("a.log", b"a\n");
    let run = h.send(&["--quiet"]);
    assert_eq!((run.code, run.stdout.as_str(), run.stderr.as_str()), (Some(0), "", ""), "{run:?}");
    assert_eq!(files(&h.logs()), Vec::<String>::new(), "delivered all the same");

    one_good_one_refused(&h);
    let run = h.send(&["-q"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("not sent: back\\slash.log: "), "{run:?}");
    assert!(run.stdout.starts_with("logferry: 1 sent") && run.stdout.contains("1 failed"), "{run:?}");
}

#[test]
fn json_prints_the_summary_as_one_object_also_when_the_run_stops_early() {
    let h = Harness::start();
    one_good_one_refused(&h);
    let run = h.send(&["--json"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    let summary: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!((summary["sent"].as_u64(), summary["sent_bytes"].as_u64()), (Some(1), Some(5)), "{summary}");
    assert_eq!(summary["wire_bytes"].as_u64(), Some(5), "too small to compress: {summary}");
    assert_eq!(summary["failed"][0]["file"], "back\\slash.log", "{summary}");
    assert!(summary["failed"][0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{summary}");
    assert_eq!((summary["exit_code"].as_u64(), summary["error"].is_null()), (Some(1), true), "{summary}");

    let unreachable = sender(
        h.dir.path(),
        &[
            "127.0.0.1:9".into(),
            h.logs().display().to_string(),
            "--id-file".into(),
            h.path("device-id").display().to_string(),
            "--retries".into(),
            "0".into(),
            "--json".into(),
        ],
    );
    assert_eq!(unreachable.code, Some(5), "{unreachable:?}");
    let summary: Value = serde_json::from_str(&unreachable.stdout).expect("JSON");
    assert_eq!(summary["exit_code"], 5, "{summary}");
    assert!(summary["error"].as_str().is_some_and(|e| e.contains("unreachable")), "{summary}");

    let both = h.send(&["--json", "--quiet"]);
    assert_eq!(both.code, Some(2), "--json and --quiet conflict: {both:?}");
}

#[test]
fn a_dry_run_lists_what_would_be_sent_and_touches_nothing_and_nobody() {
    let h = Harness::start();
    h.log("a.log", b"abc");
    h.log("day/b.csv", b"12345");
    let before = files(&h.logs());
    // No receiver listens on port 9 and there is no ID file: a dry run needs neither.
    let args = |extra: &str| {
        vec!["127.0.0.1:9".into(), h.logs().display().to_string(), "--id-file".into(), "absent".into(), extra.into()]
    };
    let run = sender(h.dir.path(), &args("--dry-run"));
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[..2], ["would send a.log (3 B)", "would send day/b.csv (5 B)"], "{run:?}");
    assert!(lines[2].starts_with("logferry: dry run: 2 would be sent (8 B), 0 failed"), "{run:?}");
    assert_eq!(lines.len(), 3, "{run:?}");

    let update_dir = h.path("releases").display().to_string();
    let json = sender(h.dir.path(), &[args("-n"), vec!["--json".into(), "--update-dir".into(), update_dir]].concat());
    let summary: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(summary["would_send"][1]["file"], "day/b.csv", "{summary}");
    assert_eq!(summary["dry_run"], true, "{summary}");

    assert_eq!(files(&h.logs()), before, "nothing moved");
    for folder in [h.sent(), h.path("releases")] {
        assert!(!folder.exists(), "a dry run creates nothing, not even {}", folder.display());
    }
    assert!(!h.stored().exists(), "nothing sent");
}

#[test]
fn on_a_terminal_a_run_shows_a_line_per_file_around_its_progress_bar() {
    let h = Harness::start();
    h.log("a.log", b"a\n");
    h.log("b.log", b"bb\n");
    // `script` gives the sender a terminal, as when someone runs it by hand.
    let command = format!(
        "{} {} {} --id-file {}",
        env!("CARGO_BIN_EXE_sender"),
        h.host(),
        h.logs().display(),
        h.path("device-id").display()
    );
    let out = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("LOGFERRY_MIN_AGE", "0")
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for expected in ["accepts this device", "/2 files", "sent a.log (2 B)", "sent b.log (3 B)", "logferry: 2 sent"] {
        assert!(shown.contains(expected), "{expected:?} not shown:\n{shown}");
    }
    assert!(!shown.to_uppercase().contains(DEVICE), "{shown}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, expected) in [
        (&["completions", "bash"][..], "--dry-run"),
        (&["completions", "zsh"], "#compdef sender"),
        (&["completions", "fish"], "complete -c sender"),
        (&["man"], ".TH sender"),
    ] {
        let run = sender(dir.path(), &args.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        assert!(run.stdout.contains(expected), "{args:?} lacks {expected:?}");
    }
    let man = sender(dir.path(), &["man".to_owned()]).stdout;
    for option in ["quiet", "json", "dry\\-run", "LOGFERRY_ID_FILE"] {
        assert!(man.contains(option), "the man page lacks {option}");
    }
}
