//! The README's first command, `scripts/demo.sh`, run as written but with the
//! binaries this test run built: a newcomer's first impression must work.

use std::process::Command;

use crate::external::receiver_binary;

#[test]
fn the_readme_demo_delivers_everything_and_verifies_it() {
    let bin_dir = receiver_binary().parent().expect("target folder").to_path_buf();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh"))
        .env("LOGFERRY_BIN_DIR", &bin_dir)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(stdout.contains("==> demo OK"), "{context}");
    // Seven sample files, each checked by sha256sum -c in its folder.
    assert_eq!(stdout.matches(": OK").count(), 7, "{context}");
    assert!(!stdout.contains("FAILED"), "{context}");
    assert!(stdout.contains("7 sent"), "{context}");
    // The published script reached the device's current release, and its
    // hook ran there (a hook's output goes to stderr, beside the sender's).
    assert!(stderr.contains("hook: switched to") && stderr.contains("sensor script v2"), "{context}");
    assert!(stdout.contains("app/current/main.py"), "{context}");
}
