//! scripts/install-sender.sh against a temporary prefix and crontab file:
//! what it installs, that the cron line it writes really delivers, and that
//! running it again leaves one entry.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::*;

const UNRELATED: &str = "0 3 * * * /usr/bin/backup --nightly";

/// Runs the script with `stdin`, everything under `root`.
fn install(root: &Path, host: &str, folder: &Path, stdin: &str, schedule: &str) -> (Option<i32>, String) {
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-sender.sh"))
        .arg(host)
        .arg(folder)
        .env("SENDER_BIN", env!("CARGO_BIN_EXE_sender"))
        .env("PREFIX", root.join("usr"))
        .env("ID_FILE", root.join("etc/logferry/device-id"))
        .env("CRONTAB_FILE", root.join("crontab"))
        .env("SCHEDULE", schedule)
        .env_remove("RUN_AS")
        .env_remove("SENDER_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("finished");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!printed.to_uppercase().contains(DEVICE), "the ID was printed: {printed}");
    (out.status.code(), printed)
}

fn entries(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("crontab")).expect("crontab").lines().map(str::to_owned).collect()
}

#[test]
fn install_sender_writes_an_owner_only_id_file_and_one_working_cron_entry() {
    let h = Harness::start();
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::write(root.join("crontab"), format!("{UNRELATED}\n")).expect("crontab");

    let (code, printed) = install(root, "127.0.0.1:1", &h.logs(), "not-an-id\n", "*/15 * * * *");
    assert_ne!(code, Some(0), "a malformed ID is refused: {printed}");
    assert!(!root.join("etc/logferry/device-id").exists());

    let (code, printed) = install(root, &h.host(), &h.logs(), &format!("{}\n", DEVICE.to_lowercase()), "*/15 * * * *");
    assert_eq!(code, Some(0), "{printed}");
    let id_file = root.join("etc/logferry/device-id");
    assert_eq!(std::fs::metadata(&id_file).expect("ID file").permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&id_file).expect("read").trim().to_uppercase(), DEVICE);
    let installed = root.join("usr/bin/sender");
    assert!(Command::new(&installed).arg("--version").output().expect("runs").status.success());
    assert!(
        std::fs::read_to_string(root.join("usr/share/man/man1/sender.1")).expect("man page").contains(".TH sender")
    );
    assert!(root.join("usr/share/bash-completion/completions/sender").is_file());

    // Again, with no ID (the file is kept) and another schedule: one entry.
    let (code, printed) = install(root, &h.host(), &h.logs(), "", "*/5 * * * *");
    assert_eq!(code, Some(0), "{printed}");
    let lines = entries(root);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0], UNRELATED, "other entries stay");
    let entry = &lines[1];
    assert!(entry.starts_with("*/5 * * * * ") && entry.contains("--quiet"), "{entry}");
    assert_eq!(std::fs::read_to_string(&id_file).expect("kept").trim().to_uppercase(), DEVICE);

    // What cron would run delivers, and prints nothing when all went well.
    h.log("2026/day.csv", b"t,v\n1,2\n");
    let command = entry.splitn(6, ' ').nth(5).expect("a command after the schedule");
    let out = Command::new("sh").args(["-c", command]).env("LOGFERRY_MIN_AGE", "0").output().expect("sh runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!((out.stdout.len(), out.stderr.len()), (0, 0), "cron mails any output: {out:?}");
    assert_eq!(std::fs::read(h.stored().join("2026/day.csv")).expect("delivered"), b"t,v\n1,2\n");
}
