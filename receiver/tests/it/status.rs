//! The operator's endpoints: the fleet status page, its JSON twin and the
//! metrics, as uploads arrive and across a restart.

use std::time::{Duration, SystemTime};

use logferry_common::wire::endpoint;
use serde_json::Value;

use crate::harness::*;

/// A device listed in the ids file that never uploads.
pub const SPARE: &str = "00000000000000AA";

/// Lists [`DEVICE`] ("bench-pi"), [`STRANGER`] ("cold-room") and [`SPARE`]
/// ("spare-pi"), and plants a file of STRANGER's stored three days ago, as
/// an earlier receiver would have left it, one from before the fleet summary
/// (which the next start then rebuilds).
pub fn fleet_with_a_quiet_device(h: &Harness) {
    std::fs::write(h.ids_file(), format!("{DEVICE}  bench-pi\n{STRANGER}  cold-room\n{SPARE}  spare-pi\n"))
        .expect("ids");
    let old = h.store().join(STRANGER).join("2026-11-21/door.log");
    std::fs::create_dir_all(old.parent().expect("folder")).expect("mkdir");
    std::fs::write(&old, b"door opened\n").expect("plant");
    std::fs::write(old.with_file_name("door.log.sha256"), format!("{}  door.log\n", digest(b"door opened\n")))
        .expect("plant checksum");
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    std::fs::File::options().write(true).open(&old).expect("open").set_modified(three_days_ago).expect("mtime");
    let summary = h.store().join(".summary");
    if summary.exists() {
        std::fs::remove_dir_all(summary).expect("no summary");
    }
}

/// The device of `report` with this label.
fn row<'a>(report: &'a Value, label: &str) -> &'a Value {
    let devices = report["devices"].as_array().expect("devices");
    devices.iter().find(|d| d["label"] == label).unwrap_or_else(|| panic!("no {label} in {report}"))
}

/// (state, files, bytes, files_24h, last rejection code) of one device.
fn check(report: &Value, label: &str, expected: (&str, u64, u64, u64, Option<&str>)) {
    let d = row(report, label);
    let got = (
        d["state"].as_str().expect("state"),
        d["files"].as_u64().expect("files"),
        d["bytes"].as_u64().expect("bytes"),
        d["files_24h"].as_u64().expect("files_24h"),
        d["last_rejection"]["code"].as_str(),
    );
    assert_eq!(got, expected, "{label}: {d}");
}

fn assert_no_whole_id(text: &str) {
    for id in [DEVICE, STRANGER, SPARE] {
        assert!(!text.to_uppercase().contains(id), "a whole device ID is shown:\n{text}");
    }
}

/// The value of the sample `series` (name and labels exactly as printed).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn the_fleet_status_follows_uploads_and_is_rebuilt_from_the_store_after_a_restart() {
    let mut h = Harness::start();
    fleet_with_a_quiet_device(&h);
    h.restart();
    assert_eq!(h.upload("2026-11-24/temperature.csv", b"t,v\n1,21.5\n").await.0, 201);
    assert_eq!(h.upload("2026-11-24/humidity.csv", b"h\n40\n").await.0, 201);
    assert_eq!(h.upload("2026-11-24/humidity.csv", b"h\n40\n").await.0, 200, "already stored");
    let claim = claim("bad.log", b"declared");
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form("bad.log", &claim.sha256.to_hex(), "8", b"received");
    assert_eq!(h.send_form(Some(auth), form).await.0, 422, "checksum mismatch");
    assert_eq!(h.send_form(Some("Logferry nonsense".to_owned()), upload_form("x", "y", "1", b"z")).await.0, 401);

    let report: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    check(&report, "bench-pi", ("ok", 2, 16, 2, Some("checksum_mismatch")));
    check(&report, "cold-room", ("stale", 1, 12, 0, None));
    check(&report, "spare-pi", ("never", 0, 0, 0, None));
    assert_eq!(report["stale_after_seconds"], 24 * 3600);
    let labels: Vec<_> = report["devices"].as_array().expect("devices").iter().map(|d| d["label"].clone()).collect();
    assert_eq!(labels, ["cold-room", "spare-pi", "bench-pi"], "quiet devices first");
    let recent: Vec<_> =
        report["recent_uploads"].as_array().expect("recent").iter().map(|u| u["path"].clone()).collect();
    assert_eq!(
        recent,
        ["2026-11-24/humidity.csv", "2026-11-24/humidity.csv", "2026-11-24/temperature.csv", "2026-11-21/door.log"]
    );
    assert_eq!(row(&report, "bench-pi")["device"], "************CDEF");
    assert_no_whole_id(&report.to_string());

    let page = h.get_text(endpoint::STATUS_PAGE).await;
    assert_no_whole_id(&page);
    for expected in [
        r#"<tr class="stale" data-state="stale" data-device="************3210">"#,
        r#"<tr class="never" data-state="never" data-device="************00AA">"#,
        "checksum mismatch",
        "2026-11-24/temperature.csv",
        "<meta http-equiv=\"refresh\"",
    ] {
        assert!(page.contains(expected), "the page lacks {expected:?}:\n{page}");
    }

    let metrics = h.get_text(endpoint::METRICS).await;
    assert_no_whole_id(&metrics);
    for (series, value) in [
        (r#"logferry_uploads_total{outcome="stored"}"#, 2.0),
        (r#"logferry_uploads_total{outcome="already_stored"}"#, 1.0),
        (r#"logferry_uploads_total{outcome="rejected",reason="checksum_mismatch"}"#, 1.0),
        (r#"logferry_uploads_total{outcome="rejected",reason="malformed_auth"}"#, 1.0),
        ("logferry_stored_bytes_total", 16.0),
        ("logferry_auth_failures_total", 1.0),
        ("logferry_uploads_in_flight", 0.0),
        (r#"logferry_request_duration_seconds_count{route="/v1/upload"}"#, 5.0),
        (r#"logferry_devices{state="stale"}"#, 1.0),
    ] {
        assert_eq!(metric(&metrics, series), value, "{series}");
    }
    let last = metric(
        &metrics,
        r#"logferry_device_last_upload_timestamp_seconds{device="************CDEF",label="bench-pi"}"#,
    );
    assert!((last - now() as f64).abs() < 600.0, "last upload {last}");

    h.restart();
    let report: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    check(&report, "bench-pi", ("ok", 2, 16, 2, None));
    check(&report, "cold-room", ("stale", 1, 12, 0, None));
    assert_eq!(report["recent_uploads"].as_array().expect("recent").len(), 3, "rebuilt from the three stored files");
}
