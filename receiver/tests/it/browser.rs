//! The status page in a real browser: headless Chromium loads it from an
//! in-process receiver after uploads from two devices and update polls
//! and reports from three, and the test reads
//! the DOM the browser built and keeps a screenshot
//! (`target/tmp/status-page.png`; docs/status-page.png is a copy of it).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use logferry_common::DeviceId;
use logferry_common::signing::SignedRequest;
use logferry_common::wire::endpoint;
use serde_json::json;

use crate::harness::*;
use crate::status::{SPARE, fleet_with_a_quiet_device};
use crate::updates::{SETTLE, poll, put, release_listing, signed_json};

const CHROMIUM: &str = "/usr/bin/chromium";
/// A bound on one browser run, so a hung browser fails the test instead of
/// stalling the suite.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);
const GREENHOUSE: &str = "3F2A9C1B7D4E5F60";

/// Runs headless Chromium with a fresh profile on `url`, with `extra`
/// arguments, and returns what it printed.
fn chromium(url: &str, extra: &[&str]) -> Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            panic!("chromium did not finish within {BROWSER_DEADLINE:?}: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `<tr …>` start tags of the table with this id, as the browser
/// serialized them.
fn rows<'a>(dom: &'a str, table: &str) -> Vec<&'a str> {
    let start = dom.find(&format!("<table id=\"{table}\"")).unwrap_or_else(|| panic!("no table {table} in {dom}"));
    let body = &dom[start..];
    let body = &body[..body.find("</table>").expect("table end")];
    let body = &body[body.find("<tbody>").expect("tbody")..];
    body.split("<tr").skip(1).map(|row| row.split("</tr>").next().unwrap_or(row)).collect()
}

#[tokio::test]
async fn the_status_page_in_a_real_browser_lists_every_device_and_marks_the_quiet_one() {
    if !Path::new(CHROMIUM).exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must run the browser test; scripts/test.sh installs chromium"
        );
        // Written to the handle itself, which the test harness does not
        // capture, so the skip shows in every run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the browser test: {CHROMIUM} is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    let mut h = Harness::start();
    fleet_with_a_quiet_device(&h);
    let ids = std::fs::read_to_string(h.ids_file()).expect("ids");
    std::fs::write(h.ids_file(), format!("{ids}{GREENHOUSE}  greenhouse-3\n")).expect("ids");
    put(&h, "all/main.py", b"print('v2')\n", 0o644);
    h.publish_with_settle(SETTLE);
    let greenhouse: DeviceId = GREENHOUSE.parse().expect("valid");
    // bench-pi runs the release, cold-room runs none yet, greenhouse-3's
    // hook failed on it; spare-pi never asked.
    let (version, _) = release_listing(&h, &device(), &["main.py"]).await;
    poll(&h, &device(), Some(version)).await;
    poll(&h, &stranger(), None).await;
    let report = json!({"version": version, "outcome": "rolled_back", "reason": "hook <exited> 3"});
    let report = serde_json::to_vec(&report).expect("JSON");
    assert_eq!(signed_json(&h, &greenhouse, endpoint::UPDATE_REPORT, &report).await.0, 200);
    for (id, path, content) in [
        (&device(), "2026-11-24/temperature.csv", &b"time,celsius\n09:00,21.5\n"[..]),
        (&device(), "2026-11-24/humidity.csv", b"time,percent\n09:00,40\n"),
        (&greenhouse, "2026-11-24/soil.csv", b"time,moisture\n09:00,0.31\n"),
        (&greenhouse, "2026-11-24/vents/north.log", b"09:00 open 20%\n"),
    ] {
        assert_eq!(h.upload_as(id, path, content).await.0, 201, "{path}");
    }
    let claim = claim("2026-11-24/light.csv", b"declared");
    let auth = authorization(&greenhouse, "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form("2026-11-24/light.csv", &claim.sha256.to_hex(), "8", b"received");
    assert_eq!(h.send_form(Some(auth), form).await.0, 422);
    // Its clock three hours behind, corrected (signed), and bench-pi's right:
    // the page says so under greenhouse-3's badge only.
    for (id, clock_offset) in [(&greenhouse, -3 * 3600), (&device(), 0)] {
        let auth =
            SignedRequest { method: "GET", path: endpoint::AUTH_CHECK, timestamp: now(), clock_offset, fields: None }
                .authorization(&key(id))
                .to_string();
        let response =
            h.http.get(h.url(endpoint::AUTH_CHECK)).header("Authorization", auth).send().await.expect("answer");
        assert_eq!(response.status().as_u16(), 200);
    }

    let url = h.url(endpoint::STATUS_PAGE);
    let dom = String::from_utf8(chromium(&url, &["--dump-dom"]).stdout).expect("utf-8");
    assert!(dom.contains("<title>logferry fleet status</title>"), "{dom}");
    for id in [DEVICE, STRANGER, SPARE, GREENHOUSE] {
        assert!(!dom.contains(id), "a whole ID on the page: {dom}");
    }
    let devices = rows(&dom, "devices");
    assert_eq!(devices.len(), 4, "one row per listed device: {devices:#?}");
    let find = |label: &str| *devices.iter().find(|r| r.contains(label)).unwrap_or_else(|| panic!("no {label} row"));
    for (label, state, masked) in [
        ("cold-room", "stale", "************3210"),
        ("spare-pi", "never", "************00AA"),
        ("bench-pi", "ok", "************CDEF"),
        ("greenhouse-3", "ok", "************5F60"),
    ] {
        let row = find(label);
        assert!(row.contains(&format!("data-state=\"{state}\"")) && row.contains(masked), "{label}: {row}");
    }
    assert!(find("cold-room").contains("class=\"badge stale\">stale<"), "the stale marker");
    assert!(devices[0].contains("cold-room"), "the quiet device comes first");
    assert!(find("greenhouse-3").contains("checksum mismatch"), "the last rejection");
    assert!(find("greenhouse-3").contains("clock 3 h behind"), "its clock offset: {}", find("greenhouse-3"));
    assert!(!find("bench-pi").contains("clock "), "no offset where none was seen");
    assert_eq!(rows(&dom, "recent").len(), 5, "four uploads and the older stored file");
    assert!(dom.contains("<th>Release</th><th>Last update</th>"), "the update columns: {dom}");
    for (label, update) in
        [("cold-room", "behind"), ("spare-pi", "unknown"), ("bench-pi", "current"), ("greenhouse-3", "rolled_back")]
    {
        let row = find(label);
        let marked = row.contains(&format!("data-update=\"{update}\"")) && row.contains(&format!("update-{update}"));
        assert!(marked, "{label}: {row}");
        assert!(row.contains(&format!("class=\"badge {update}\">{}<", update.replace('_', " "))), "{label}: {row}");
    }
    assert!(find("bench-pi").contains(&version.short()), "the version it runs");
    assert!(
        find("greenhouse-3").contains("rolled back <code>") && find("greenhouse-3").contains("hook &lt;exited&gt; 3")
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1760,640", "--hide-scrollbars"]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
}
