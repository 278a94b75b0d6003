//! Whole sender runs: what is delivered, what stays, what is printed, and
//! which exit code each failure gets.

use std::process::Command;

use crate::harness::*;

/// The exit codes README.md documents.
mod code {
    pub const SUCCESS: i32 = 0;
    pub const SOME_FILES_FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const ID_FILE: i32 = 3;
    pub const FOLDER: i32 = 4;
    pub const UNREACHABLE: i32 = 5;
    pub const AUTH_FAILED: i32 = 6;
    pub const ALREADY_RUNNING: i32 = 8;
    pub const RECEIVER_UNAVAILABLE: i32 = 11;
}

fn assert_summary_only(run: &Run) {
    assert_eq!(run.stderr, "", "nothing but the summary under cron: {run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert!(run.stdout.starts_with("logferry: "), "{run:?}");
}

#[test]
fn delivers_nested_empty_and_oddly_named_files_verified_and_moves_them_aside() {
    let h = Harness::start();
    let logs: &[(&str, &[u8])] = &[
        ("top.log", b"temperature=21.5\n"),
        ("2026/11/22/sensor.csv", b"t,v\n1,2\n"),
        ("2026/11/22/empty.json", b""),
        ("with spaces/day 1.txt", b"spaces\n"),
        ("données/été °C.log", b"non-ascii\n"),
        (".hidden", b"dot file\n"),
    ];
    for (name, content) in logs {
        h.log(name, content);
    }
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert_summary_only(&run);
    assert!(run.stdout.contains("6 sent") && run.stdout.contains("0 failed"), "{run:?}");

    assert_eq!(files(&h.logs()), Vec::<String>::new(), "every file left the log folder");
    for (name, content) in logs {
        assert_eq!(std::fs::read(h.stored().join(name)).expect("stored"), *content, "{name}");
        assert_eq!(std::fs::read(h.sent().join(name)).expect("moved aside"), *content, "{name}");
        let folder = h.stored().join(name).parent().expect("folder").to_owned();
        let file_name = std::path::Path::new(name).file_name().expect("name").to_string_lossy().into_owned();
        let check = Command::new("sha256sum")
            .arg("-c")
            .arg(format!("{file_name}.sha256"))
            .current_dir(&folder)
            .output()
            .expect("sha256sum");
        assert!(check.status.success(), "sha256sum -c for {name}: {}", String::from_utf8_lossy(&check.stdout));
    }

    let again = h.send(&[]);
    assert_eq!(again.code, Some(code::SUCCESS));
    assert!(again.stdout.contains("0 sent"), "nothing left to send: {again:?}");
}

#[test]
fn a_50_mib_file_arrives_intact() {
    let h = Harness::start();
    let content: Vec<u8> = (0..50u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    h.log("big/dump.bin", &content);
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert!(run.stdout.contains("1 sent (50.0 MiB"), "{run:?}");
    assert!(std::fs::read(h.stored().join("big/dump.bin")).expect("stored") == content, "stored bytes differ");
    assert!(std::fs::read(h.sent().join("big/dump.bin")).expect("moved") == content, "moved bytes differ");
}

/// A receiver that takes the digest after the file gets each file in one
/// read: the run reads (`rchar`, which counts every read of the sender,
/// added to the shell that reaped it) about the file once, not twice, and
/// its bytes arrive intact, resumed or not.
#[test]
fn a_file_is_read_once_when_the_receiver_takes_its_digest_after_it() {
    let h = Harness::start();
    let size = 16 << 20;
    let bytes = content(7, size);
    h.log("big.bin", &bytes);
    let inner = sender_command();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#""$0" "$@"; status=$?; grep '^rchar:' /proc/$$/io >&2; exit $status"#)
        .arg(inner.get_program())
        .args(inner.get_args());
    let run = run_sender(command, h.dir.path(), &h.args(&h.host(), &[]));
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    let rchar: usize = run
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("rchar:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("the shell's read count");
    assert!(rchar >= size && rchar < size + size / 4, "{rchar} bytes read for a {size}-byte file");
    assert!(std::fs::read(h.stored().join("big.bin")).expect("stored") == bytes, "stored bytes differ");
}

#[test]
fn a_file_sent_again_is_already_stored_and_a_new_version_is_kept_beside_the_old() {
    let h = Harness::start();
    h.log("a.log", b"version one\n");
    assert_eq!(h.send(&[]).code, Some(code::SUCCESS));

    // The same bytes again, as when the answer to an upload was lost.
    h.log("a.log", b"version one\n");
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert!(run.stdout.contains("0 sent") && run.stdout.contains("1 already stored"), "{run:?}");
    assert_eq!(files(&h.sent()), ["a.log"], "the duplicate was not kept twice");

    // A logger that reuses its file name: the receiver keeps both.
    h.log("a.log", b"version two\n");
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    let stored = files(&h.stored());
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert_eq!(std::fs::read(h.stored().join("a.log")).expect("first"), b"version one\n");
    let second = stored.iter().find(|n| n.starts_with("a.conflict-") && n.ends_with(".log")).expect("conflict name");
    assert_eq!(std::fs::read(h.stored().join(second)).expect("second"), b"version two\n");
    let mut expected = vec!["a.log".to_owned(), second.clone()];
    expected.sort();
    assert_eq!(files(&h.sent()), expected);
}

#[test]
fn files_that_cannot_be_sent_stay_are_named_and_the_rest_still_go() {
    let h = Harness::start();
    // The receiver already has a file where a later one needs a folder.
    h.log("x", b"a file called x\n");
    assert_eq!(h.send(&[]).code, Some(code::SUCCESS));
    h.log("x/inner.log", b"needs x to be a folder\n");
    h.log("good.log", b"fine\n");
    h.log("back\\slash.log", b"a name the receiver would refuse\n");
    h.log("evil\u{202e}gol.sh", b"a name that reads as another\n");

    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SOME_FILES_FAILED), "{run:?}");
    assert!(run.stderr.contains("back\\slash.log") && run.stderr.contains("backslash"), "{run:?}");
    assert!(run.stderr.contains("invisible format character (U+202E)"), "{run:?}");
    assert!(run.stderr.contains("x/inner.log") && run.stderr.contains("409"), "{run:?}");
    assert!(run.stdout.contains("3 failed"), "{run:?}");
    assert_eq!(
        files(&h.logs()),
        ["back\\slash.log", "evil\u{202e}gol.sh", "x/inner.log"],
        "failed files stay for the next run"
    );
    assert!(h.sent().join("good.log").is_file(), "the good file still went");
}

#[test]
fn symbolic_links_are_never_followed_and_a_sent_folder_inside_is_skipped() {
    let h = Harness::start();
    let secret = h.path("outside-secret.txt");
    std::fs::write(&secret, b"not a log").expect("write");
    std::os::unix::fs::symlink(&secret, h.logs().join("link.log")).expect("link");
    std::os::unix::fs::symlink(h.dir.path(), h.logs().join("loop")).expect("dir link");
    h.log("real.log", b"real\n");
    let done = h.logs().join("done");
    let run = h.send(&["--sent-dir", &done.display().to_string()]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert!(run.stdout.contains("1 sent") && run.stdout.contains("2 skipped"), "{run:?}");
    assert_eq!(files(&h.stored()), ["real.log", "real.log.sha256"]);
    assert!(h.logs().join("link.log").is_symlink(), "links stay where they are");
    assert!(done.join("real.log").is_file());

    let again = h.send(&["--sent-dir", &done.display().to_string()]);
    assert!(again.stdout.contains("0 sent"), "the sent folder is not sent again: {again:?}");
}

/// A failure of the whole run: its exit code, and words that say what to do.
struct Failure {
    name: &'static str,
    args: Vec<String>,
    code: i32,
    says: &'static str,
}

#[test]
fn each_failure_has_its_own_exit_code_and_message() {
    let h = Harness::start();
    h.log("waiting.log", b"must stay until it is delivered\n");
    write_secret(&h.path("bad-id"), "0123456789ABCDEZ\n");
    write_secret(&h.path("empty-id"), "# no id yet\n");
    write_secret(&h.path("stranger-id"), "FEDCBA9876543210\n");
    std::fs::write(h.path("open-id"), format!("{DEVICE}\n")).expect("write");
    std::fs::set_permissions(h.path("open-id"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::write(h.path("a-file"), "not a folder").expect("write");
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let (host, logs) = (h.host(), h.logs().display().to_string());
    let id = |file: &str| vec!["--id-file".to_owned(), h.path(file).display().to_string()];
    let with =
        |host: &str, folder: &str, id_file: &str| [vec![host.to_owned(), folder.to_owned()], id(id_file)].concat();
    let failures = [
        Failure { name: "no arguments", args: vec![], code: code::USAGE, says: "Usage" },
        Failure { name: "folder missing", args: vec![host.clone()], code: code::USAGE, says: "<FOLDER>" },
        Failure {
            name: "ID file missing",
            args: with(&host, &logs, "absent-id"),
            code: code::ID_FILE,
            says: "device ID not found",
        },
        Failure {
            name: "ID file invalid",
            args: with(&host, &logs, "bad-id"),
            code: code::ID_FILE,
            says: "does not hold a valid ID",
        },
        Failure {
            name: "ID file empty",
            args: with(&host, &logs, "empty-id"),
            code: code::ID_FILE,
            says: "holds no ID",
        },
        Failure {
            name: "folder is a file",
            args: with(&host, &h.path("a-file").display().to_string(), "device-id"),
            code: code::FOLDER,
            says: "is not a folder",
        },
        Failure {
            name: "folder absent",
            args: with(&host, &h.path("nope").display().to_string(), "device-id"),
            code: code::FOLDER,
            says: "does not exist",
        },
        Failure {
            name: "receiver unreachable, after one retry",
            args: [with(&closed_port, &logs, "device-id"), vec!["--retries".into(), "1".into()]].concat(),
            code: code::UNREACHABLE,
            says: "receiver unreachable: cannot connect to http://127.0.0.1",
        },
        Failure {
            name: "unknown device",
            args: with(&host, &logs, "stranger-id"),
            code: code::AUTH_FAILED,
            says: "authentication failed",
        },
        Failure {
            name: "port twice",
            args: [with(&host, &logs, "device-id"), vec!["--port".into(), "1".into()]].concat(),
            code: code::USAGE,
            says: "give it once",
        },
    ];
    for failure in failures {
        let run = sender(h.dir.path(), &failure.args);
        assert_eq!(run.code, Some(failure.code), "{}: {run:?}", failure.name);
        assert!(run.stderr.contains(failure.says), "{}: expected {:?} in {run:?}", failure.name, failure.says);
        assert_eq!(files(&h.logs()), ["waiting.log"], "{}: the log stays", failure.name);
    }
    assert!(!h.stored().exists(), "nothing reached the store");
}

#[test]
fn a_receiver_that_stops_mid_run_leaves_unsent_files_in_place() {
    let mut h = Harness::start();
    h.log("first.log", b"one\n");
    assert_eq!(h.send(&[]).code, Some(code::SUCCESS));
    let host = h.host();
    h.receiver.take().expect("running").stop().expect("stopped");
    h.log("second.log", b"two\n");
    let run = sender(
        h.dir.path(),
        &[
            host,
            h.logs().display().to_string(),
            "--id-file".into(),
            h.path("device-id").display().to_string(),
            "--retries".into(),
            "0".into(),
        ],
    );
    assert_eq!(run.code, Some(code::UNREACHABLE), "{run:?}");
    assert_eq!(files(&h.logs()), ["second.log"]);
    assert_eq!(files(&h.sent()), ["first.log"]);
}

/// Answers the one request of a run without retries with `status` and the
/// JSON `body`, unsigned: what something on the network that is not this
/// device's receiver might say.
fn answering(status: &'static str, body: &'static str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the sender connects");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).expect("answer");
    });
    (address, thread)
}

/// An answer to the auth check, and what the run makes of it.
struct Answer {
    name: &'static str,
    status: &'static str,
    body: &'static str,
    code: i32,
    says: &'static str,
}

#[test]
fn answers_other_than_a_signed_yes_move_nothing_and_say_what_answered() {
    let answers = [
        Answer {
            name: "an impostor's yes, which it cannot sign",
            status: "200 OK",
            body: r#"{"label":"greenhouse-3"}"#,
            code: code::AUTH_FAILED,
            says: "no valid receipt",
        },
        Answer {
            name: "a receiver whose store fails",
            status: "503 Service Unavailable",
            body: r#"{"error":"the store cannot be written","code":"storage_error"}"#,
            code: code::RECEIVER_UNAVAILABLE,
            says: "the receiver is reachable but did not serve this run: refused (HTTP 503)",
        },
        Answer {
            name: "a busy receiver",
            status: "429 Too Many Requests",
            body: r#"{"error":"all upload slots are taken","code":"busy"}"#,
            code: code::RECEIVER_UNAVAILABLE,
            says: "all upload slots are taken",
        },
        Answer {
            name: "a web server that is not a receiver",
            status: "502 Bad Gateway",
            body: "<html>bad gateway</html>",
            code: code::UNREACHABLE,
            says: "which is not a logferry answer",
        },
    ];
    let h = Harness::start();
    h.log("precious.log", b"must reach the real receiver\n");
    for answer in answers {
        let (address, thread) = answering(answer.status, answer.body);
        let id_file = h.path("device-id").display().to_string();
        let args =
            [address, h.logs().display().to_string(), "--id-file".into(), id_file, "--retries".into(), "0".into()];
        let run = sender(h.dir.path(), &args);
        thread.join().expect("the fake answered");
        assert_eq!(run.code, Some(answer.code), "{}: {run:?}", answer.name);
        assert!(run.stderr.contains(answer.says), "{}: expected {:?} in {run:?}", answer.name, answer.says);
        assert_eq!(files(&h.logs()), ["precious.log"], "{}", answer.name);
        assert!(!h.sent().exists() || files(&h.sent()).is_empty(), "{}", answer.name);
    }
}

#[test]
fn files_still_being_written_wait_for_a_later_run_without_failing() {
    let h = Harness::start();
    h.log("growing.log", b"first lines\n");
    let run = h.send(&["--min-age", "3600"]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert!(run.stdout.contains("1 still being written"), "{run:?}");
    assert_summary_only(&run);
    assert_eq!(files(&h.logs()), ["growing.log"]);
    assert!(!h.stored().exists());

    let run = h.send(&["--min-age", "0"]);
    assert!(run.stdout.contains("1 sent"), "once finished it goes: {run:?}");
}

#[test]
fn a_second_run_while_one_is_working_stops_at_once() {
    let h = Harness::start();
    h.log("once.log", b"exactly once\n");
    std::fs::create_dir_all(h.sent()).expect("sent folder");
    let lock = std::fs::File::create(h.sent().join(".logferry-sender.lock")).expect("lock file");
    lock.try_lock().expect("this test holds the lock, as a running sender would");
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::ALREADY_RUNNING), "{run:?}");
    let sent = h.sent().canonicalize().expect("canonical");
    assert!(
        run.stderr.contains(&format!("another sender run is already using the sent folder {}", sent.display())),
        "{run:?}"
    );
    assert!(!h.stored().exists(), "nothing sent");
    drop(lock);
    assert_eq!(h.send(&[]).code, Some(code::SUCCESS), "the lock goes with the process that held it");
    assert_eq!(files(&h.sent()), ["once.log"]);
}

#[test]
fn keep_sent_0_deletes_each_file_after_its_verified_delivery_instead_of_moving_it() {
    let h = Harness::start();
    h.log("a/b/one.log", b"one\n");
    h.log("two.log", b"two\n");
    // A link where a move would need the folder `a`: a move is refused, a
    // deletion needs no name in the sent folder.
    std::fs::create_dir_all(h.sent()).expect("sent folder");
    std::os::unix::fs::symlink(h.path("elsewhere"), h.sent().join("a")).expect("symlink");
    let run = h.send(&["--keep-sent", "0"]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert_eq!(files(&h.logs()), Vec::<String>::new());
    assert_eq!(files(&h.sent()), ["a"], "nothing is kept, and the link is left alone");
    assert_eq!(std::fs::read(h.stored().join("a/b/one.log")).expect("stored"), b"one\n");

    // Already stored (an answer lost earlier): deleted all the same.
    h.log("two.log", b"two\n");
    let run = h.send(&["--keep-sent", "0"]);
    assert!(run.stdout.contains("1 already stored"), "{run:?}");
    assert_eq!(files(&h.logs()), Vec::<String>::new());
    // Refused: it stays.
    h.log("back\\slash.log", b"refused\n");
    let run = h.send(&["--keep-sent", "0"]);
    assert_eq!(run.code, Some(code::SOME_FILES_FAILED), "{run:?}");
    assert_eq!(files(&h.logs()), ["back\\slash.log"]);
}

#[test]
fn keep_sent_deletes_what_was_delivered_longer_ago_and_the_folders_it_empties() {
    let h = Harness::start();
    h.log("2026/11/old.log", b"old\n");
    assert_eq!(h.send(&["--keep-sent", "1s"]).code, Some(code::SUCCESS));
    assert_eq!(files(&h.sent()), ["2026/11/old.log"], "delivered just now: kept");
    let outside = h.path("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("precious.log"), b"not the sender's").expect("write");
    std::os::unix::fs::symlink(&outside, h.sent().join("link")).expect("symlink");
    std::thread::sleep(std::time::Duration::from_millis(1100));

    h.log("2026/12/new.log", b"new\n");
    let run = h.send(&["--keep-sent", "1s"]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert_eq!(files(&h.sent()), ["2026/12/new.log", "link"], "the old file and its folder went, nothing else");
    assert!(!h.sent().join("2026/11").exists());
    assert!(h.sent().join(logferry_sender::deliver::LOCK_FILE).is_file(), "the lock file stays");
    assert!(outside.join("precious.log").is_file(), "a link is never followed");
    assert_eq!(std::fs::read(h.stored().join("2026/11/old.log")).expect("still stored"), b"old\n");

    let run = h.send(&["--keep-sent", "a week"]);
    assert_eq!(run.code, Some(code::USAGE), "{run:?}");
    assert!(run.stderr.contains("--keep-sent"), "{run:?}");
}

/// How many requests the receiver answered on `route`, by its metrics.
fn requests_on(h: &Harness, route: &str) -> u64 {
    let metrics = h.get("/metrics");
    let line = format!("logferry_request_duration_seconds_count{{route=\"{route}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.trim().parse().expect("a count"))
}

#[test]
fn small_files_travel_in_batches_and_large_ones_alone() {
    let h = Harness::start();
    let small: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("day/{:02}/f{i:03}.log", i / 40), format!("reading {i}\n").repeat(i + 1).into_bytes()))
        .collect();
    for (name, content) in &small {
        h.log(name, content);
    }
    let large = vec![b'x'; 200 * 1024];
    h.log("large.bin", &large);
    let run = h.send(&[]);
    assert_eq!(run.code, Some(code::SUCCESS), "{run:?}");
    assert!(run.stdout.contains("101 sent"), "{run:?}");
    for (name, content) in small.iter().map(|(n, c)| (n.as_str(), c.as_slice())).chain([("large.bin", &large[..])]) {
        assert_eq!(std::fs::read(h.stored().join(name)).expect("stored"), content, "{name}");
        assert_eq!(std::fs::read(h.sent().join(name)).expect("moved aside"), content, "{name}");
    }
    // 100 small files: two batches (64 files at most in one); the large
    // one alone.
    assert_eq!(requests_on(&h, "/v1/upload/batch"), 2);
    assert_eq!(requests_on(&h, "/v1/upload"), 1);
}
