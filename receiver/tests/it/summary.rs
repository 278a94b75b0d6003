//! The fleet summary (`.summary/` in the store), on both backends: kept
//! across restarts without walking the store, rebuilt when deleted, by
//! `reindex`, and after a receiver's crash; shared by receivers on one
//! store.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::background::BackgroundReceiver;
use crate::harness::*;
use crate::store::files_on_status;

/// What the receiver at `addr` shows once it shows `expected`, within a
/// few refreshes (bounded, not timed: the count is asserted either way).
async fn files_shown_within_refreshes(h: &Harness, addr: SocketAddr, expected: u64) -> u64 {
    let mut shown = 0;
    for _ in 0..50 {
        shown = files_on_status(h, addr).await;
        if shown == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shown
}

/// A file put into the device's folder behind the receivers' backs (with
/// its checksum file), which only a rebuild of the summary can count.
async fn plant(h: &Harness, path: &str) {
    let content = format!("planted {path}\n").into_bytes();
    let line = logferry_common::RelPath::parse(path).expect("path").checksum_line(&digest(&content));
    h.write(&format!("{DEVICE}/{path}.sha256"), line.into_bytes()).await;
    h.write(&format!("{DEVICE}/{path}"), content).await;
}

async fn summary_survives_restarts_and_is_rebuilt_when_lost(backend: Backend) {
    let mut h = Harness::start_on(backend);
    for path in ["a.log", "b.log"] {
        assert_eq!(h.upload(path, path.as_bytes()).await.0, 201, "{path}");
    }
    assert_eq!(h.upload("a.log", b"a.log").await.0, 200, "already stored: no new file");
    assert_eq!(files_on_status(&h, h.addr()).await, 2);
    h.restart();
    let mut records = String::new();
    for name in h.summary_records().await {
        records += &format!("{name}: {}\n", String::from_utf8_lossy(&h.read(&format!(".summary/{name}")).await));
    }
    assert_eq!(files_on_status(&h, h.addr()).await, 2, "after a restart; the summary:\n{records}");

    plant(&h, "planted-1.log").await;
    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 2, "a start reads the summary and does not walk the store");

    let records = h.summary_records().await;
    assert!(records.contains(&"base.json".to_owned()), "{records:?}");
    for name in &records {
        h.remove(&format!(".summary/{name}")).await;
    }
    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 3, "a lost summary is rebuilt from the store");

    plant(&h, "planted-2.log").await;
    let (files, devices) = logferry_receiver::reindex(&h.config()).await.expect("reindex");
    assert_eq!((files, devices), (4, 1), "reindex counts what the store holds");
    if let Backend::Disk = h.backend() {
        let ids = h.ids_file();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_receiver"))
            .args(["--ids".as_ref(), ids.as_os_str(), "--store".as_ref(), h.store().as_os_str(), "reindex".as_ref()])
            .output()
            .expect("runs");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success() && said.contains("Rebuilt the fleet summary: 4 files of 1 device."), "{said}");
    }
    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 4, "after reindex");

    h.write(".summary/base.json", b"{\"damaged".to_vec()).await;
    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 4, "a damaged summary is rebuilt");
}

#[tokio::test]
async fn on_disk_the_summary_survives_restarts_and_is_rebuilt_when_lost() {
    summary_survives_restarts_and_is_rebuilt_when_lost(Backend::Disk).await;
}

#[tokio::test]
async fn on_s3_the_summary_survives_restarts_and_is_rebuilt_when_lost() {
    let Some(backend) = Backend::s3() else { return };
    summary_survives_restarts_and_is_rebuilt_when_lost(backend).await;
}

/// A receiver commits a file and crashes before its record says so: its
/// record stays as its last rewrite left it (here: before the commit),
/// not closed. The next start takes it for a crashed receiver's and
/// rebuilds, so the file is counted.
async fn a_file_committed_just_before_a_crash_is_counted(backend: Backend) {
    let mut h = Harness::start_on(backend);
    assert_eq!(h.upload("before.log", b"before\n").await.0, 201);
    h.restart();
    let before: Vec<String> = h.summary_records().await;
    let crashing: BackgroundReceiver = h.start_another();
    assert_eq!(h.upload_to(crashing.addr, &device(), "at-the-crash.log", b"crash\n").await.0, 201);
    crashing.stop().expect("stopped");
    let record = h.summary_records().await.into_iter().find(|name| !before.contains(name)).expect("its record");
    let name = format!(".summary/{record}");
    let mut left: Value = serde_json::from_slice(&h.read(&name).await).expect("a record");
    left["closed"] = false.into();
    left["written_at"] = 0.into();
    left["tallies"] = serde_json::json!({ "devices": {}, "recent": [] });
    h.write(&name, serde_json::to_vec(&left).expect("JSON")).await;

    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 2, "the crashed receiver's last file is counted");
    assert!(!h.summary_records().await.contains(&record), "the crashed receiver's record is gone");
}

#[tokio::test]
async fn on_disk_a_file_committed_just_before_a_crash_is_counted() {
    a_file_committed_just_before_a_crash_is_counted(Backend::Disk).await;
}

#[tokio::test]
async fn on_s3_a_file_committed_just_before_a_crash_is_counted() {
    let Some(backend) = Backend::s3() else { return };
    a_file_committed_just_before_a_crash_is_counted(backend).await;
}

/// Two receivers on one store: each shows the other's uploads within a few
/// refreshes, and both survive a restart of both.
async fn receivers_sharing_a_store_show_each_others_uploads(backend: Backend) {
    let mut h = Harness::start_on(backend);
    h.refresh_fleet_every(Duration::from_millis(200));
    let other = h.start_another();
    let steps: [(SocketAddr, &str); 3] = [(h.addr(), "one.log"), (other.addr, "two.log"), (other.addr, "three.log")];
    for (n, (addr, path)) in steps.iter().enumerate() {
        assert_eq!(h.upload_to(*addr, &device(), path, path.as_bytes()).await.0, 201, "{path}");
        let expected = n as u64 + 1;
        for addr in [h.addr(), other.addr] {
            assert_eq!(files_shown_within_refreshes(&h, addr, expected).await, expected, "{addr} after {path}");
        }
    }
    other.stop().expect("stopped");
    h.restart();
    assert_eq!(files_on_status(&h, h.addr()).await, 3, "both receivers' parts outlive them");
}

#[tokio::test]
async fn receivers_sharing_a_folder_show_each_others_uploads() {
    receivers_sharing_a_store_show_each_others_uploads(Backend::Disk).await;
}

#[tokio::test]
async fn receivers_sharing_a_bucket_show_each_others_uploads() {
    let Some(backend) = Backend::s3() else { return };
    receivers_sharing_a_store_show_each_others_uploads(backend).await;
}

/// While two receivers serve: a rebuild by `reindex` (a new epoch) loses
/// neither's part, and a crashed receiver's record found at a refresh makes
/// a running receiver rebuild (which alone counts a file planted behind
/// the receivers' backs).
async fn running_receivers_follow_a_rebuild_and_rebuild_for_a_crash(backend: Backend) {
    let mut h = Harness::start_on(backend);
    h.refresh_fleet_every(Duration::from_millis(200));
    let other = h.start_another();
    assert_eq!(h.upload_to(h.addr(), &device(), "one.log", b"one").await.0, 201);
    assert_eq!(h.upload_to(other.addr, &device(), "two.log", b"two").await.0, 201);
    let (files, _) = logferry_receiver::reindex(&h.config()).await.expect("reindex");
    assert_eq!(files, 2);
    assert_eq!(h.upload_to(other.addr, &device(), "three.log", b"three").await.0, 201);
    for addr in [h.addr(), other.addr] {
        assert_eq!(files_shown_within_refreshes(&h, addr, 3).await, 3, "{addr} after the rebuild");
    }

    plant(&h, "planted.log").await;
    let base: Value = serde_json::from_slice(&h.read(".summary/base.json").await).expect("the base");
    let crashed = serde_json::json!({
        "epoch": base["epoch"], "written_at": 0, "built_from": base["built_from"], "closed": false,
        "every": 200, "tallies": { "devices": {}, "recent": [] },
    });
    h.write(".summary/receiver-crashed.json", serde_json::to_vec(&crashed).expect("JSON")).await;
    for addr in [h.addr(), other.addr] {
        assert_eq!(files_shown_within_refreshes(&h, addr, 4).await, 4, "{addr} after a crash was found");
    }
    assert!(!h.summary_records().await.contains(&"receiver-crashed.json".to_owned()), "the crashed record is gone");
    other.stop().expect("stopped");
}

#[tokio::test]
async fn on_disk_running_receivers_follow_a_rebuild_and_rebuild_for_a_crash() {
    running_receivers_follow_a_rebuild_and_rebuild_for_a_crash(Backend::Disk).await;
}

#[tokio::test]
async fn on_s3_running_receivers_follow_a_rebuild_and_rebuild_for_a_crash() {
    let Some(backend) = Backend::s3() else { return };
    running_receivers_follow_a_rebuild_and_rebuild_for_a_crash(backend).await;
}
