//! scripts/install-receiver.sh against a temporary prefix, with a stand-in
//! for systemctl: what it installs, that the unit is valid for systemd and
//! its command line really serves, and that running it again keeps the
//! ids file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::binary::{http_get, listening};

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// Runs the script with everything under `root`; systemctl calls are
/// appended to `root/systemctl.log`.
fn install(root: &Path) {
    let systemctl = root.join("systemctl");
    std::fs::write(&systemctl, format!("#!/bin/sh\necho \"$*\" >> {}/systemctl.log\n", root.display())).expect("stub");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-receiver.sh"))
        .env("RECEIVER_BIN", env!("CARGO_BIN_EXE_receiver"))
        .env("PREFIX", root.join("usr"))
        .env("CONFIG_DIR", root.join("etc/logferry"))
        .env("STATE_DIR", root.join("var/lib/logferry"))
        .env("UNIT_DIR", root.join("etc/systemd/system"))
        .env("SERVICE_USER", current_user())
        .env("RECEIVER_ARGS", "--bind 127.0.0.1 --port 0 --stale-after 6h")
        .env("SYSTEMCTL", &systemctl)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "install failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn install_receiver_sets_up_a_hardened_service_that_serves_and_keeps_the_ids_on_a_second_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    install(root);
    let unit_path = root.join("etc/systemd/system/logferry-receiver.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit installed");
    let ids = root.join("etc/logferry/ids.txt");
    let state = root.join("var/lib/logferry");
    let exec_start = format!(
        "ExecStart={} --ids {} --store {}/received_files --bind 127.0.0.1 --port 0 --stale-after 6h",
        root.join("usr/bin/receiver").display(),
        ids.display(),
        state.display()
    );
    for line in [
        exec_start.as_str(),
        &format!("ReadWritePaths={}", state.display()),
        &format!("User={}", current_user()),
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}:\n{unit}");
    }
    assert_eq!(std::fs::metadata(&ids).expect("ids").permissions().mode() & 0o777, 0o600);
    assert!(state.is_dir());
    assert!(root.join("usr/share/man/man1/receiver.1").is_file());
    let calls = std::fs::read_to_string(root.join("systemctl.log")).expect("systemctl called");
    assert!(calls.starts_with("daemon-reload\nenable --now logferry-receiver.service\n"), "{calls}");

    if Path::new("/usr/bin/systemd-analyze").exists() {
        let verify =
            Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit_path).output().expect("runs");
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    } else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must verify the unit; scripts/test.sh installs systemd"
        );
    }

    let added = Command::new(root.join("usr/bin/receiver"))
        .args(["--ids", &ids.display().to_string(), "add-device", "--label", "pi-1"])
        .output()
        .expect("add-device");
    assert!(added.status.success());
    let ids_before = std::fs::read_to_string(&ids).expect("ids");
    install(root);
    assert_eq!(std::fs::read_to_string(&ids).expect("ids"), ids_before, "a second run keeps the ids file");

    // The unit's command line, as systemd would run it.
    let command = exec_start.trim_start_matches("ExecStart=");
    let mut words = command.split(' ');
    let child = Command::new(words.next().expect("program")).args(words).stderr(Stdio::piped()).spawn().expect("spawn");
    let (mut child, address) = listening(child);
    let page = http_get(&address, "/");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("pi-1") && page.contains("stale after 6 h"), "{page}");
    assert!(state.join("received_files").is_dir(), "the store is created under the state folder");
}
