//! The update direction, receiver side: the publish folder, the three
//! signed update requests, the fleet view of them, and `receiver publish`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use logferry_common::DeviceId;
use logferry_common::signing::{AuthHeader, SignedFields, verify_receipt};
use logferry_common::update::{Manifest, ManifestEntry, Version};
use logferry_common::wire::endpoint;
use serde_json::{Value, json};

use crate::binary::receiver;
use crate::harness::*;
use crate::status::SPARE;

/// Short enough for tests, long enough that a scan can see a tree change.
pub const SETTLE: Duration = Duration::from_millis(200);
/// A bound on every wait for the receiver to take a change: a scan a
/// second, plus the settle time, with room for a slow machine.
const TAKES_AT_MOST: Duration = Duration::from_secs(15);

/// DEVICE labelled "greenhouse", STRANGER "cold-room", SPARE with a label
/// that cannot be a folder name.
fn fleet(h: &Harness) {
    std::fs::write(h.ids_file(), format!("{DEVICE} greenhouse\n{STRANGER} cold-room\n{SPARE} a/b\n")).expect("ids");
}

fn spare() -> DeviceId {
    SPARE.parse().expect("valid")
}

/// Writes `content` to `publish/<relative>` with `mode`.
pub fn put(h: &Harness, relative: &str, content: &[u8], mode: u32) {
    let path = h.publish_dir().join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, content).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A signed JSON request by `id` to `endpoint`; its status, body, and
/// whether its receipt is valid.
pub async fn signed_json(h: &Harness, id: &DeviceId, endpoint: &str, body: &[u8]) -> (u16, Value, bool) {
    let auth = signed_head(id, "POST", endpoint, now(), Some(&SignedFields::body(body)));
    let response = h
        .http
        .post(h.url(endpoint))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("answer");
    signed_answer(id, &auth, response).await
}

async fn signed_answer(id: &DeviceId, auth: &str, response: reqwest::Response) -> (u16, Value, bool) {
    let status = response.status().as_u16();
    let tag = response.headers().get("X-Logferry-Receipt").map(|v| v.to_str().expect("text").to_owned());
    let bytes = response.bytes().await.expect("body");
    let signature = auth.parse::<AuthHeader>().expect("header").signature;
    let valid = tag.is_some_and(|tag| verify_receipt(&key(id), status, &signature, &bytes, &tag));
    (status, serde_json::from_slice(&bytes).expect("JSON"), valid)
}

/// A poll by `id`, which must be answered 200 and signed; the reply.
pub async fn poll(h: &Harness, id: &DeviceId, current: Option<Version>) -> Value {
    let body = serde_json::to_vec(&json!({ "current": current })).expect("JSON");
    let (status, reply, signed) = signed_json(h, id, endpoint::UPDATE_MANIFEST, &body).await;
    assert_eq!((status, signed), (200, true), "{reply}");
    reply
}

/// The release in a poll's reply, checked against its version as a
/// sender checks it.
pub fn release(reply: &Value) -> (Version, Manifest) {
    let version: Version = serde_json::from_value(reply["version"].clone()).expect("a version");
    let files: Vec<ManifestEntry> = serde_json::from_value(reply["files"].clone()).expect("files");
    (version, Manifest::checked(version, files).expect("the files hash to the version"))
}

/// Polls until `id`'s release lists exactly `paths`.
pub async fn release_listing(h: &Harness, id: &DeviceId, paths: &[&str]) -> (Version, Manifest) {
    let deadline = Instant::now() + TAKES_AT_MOST;
    loop {
        let (version, manifest) = release(&poll(h, id, None).await);
        let listed: Vec<&str> = manifest.files().iter().map(|f| f.path.as_str()).collect();
        if listed == paths {
            return (version, manifest);
        }
        assert!(Instant::now() < deadline, "the release lists {listed:?}, not {paths:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET UPDATE_CONTENT/<sha256>` by `id`, with an optional Range.
async fn fetch(h: &Harness, id: &DeviceId, sha256: &str, range: Option<&str>) -> (String, reqwest::Response) {
    let fields = SignedFields { path: String::new(), sha256: sha256.to_owned(), size: String::new() };
    let auth = signed_head(id, "GET", endpoint::UPDATE_CONTENT, now(), Some(&fields));
    let mut request =
        h.http.get(h.url(&format!("{}/{sha256}", endpoint::UPDATE_CONTENT))).header("Authorization", &auth);
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    (auth, request.send().await.expect("answer"))
}

/// The content of `sha256`, which must be answered whole.
async fn content(h: &Harness, id: &DeviceId, sha256: &str) -> Vec<u8> {
    let (_, response) = fetch(h, id, sha256, None).await;
    assert_eq!(response.status().as_u16(), 200, "{sha256}");
    assert!(response.headers().get("X-Logferry-Receipt").is_none(), "content answers carry no receipt");
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let length: u64 = response.headers()["content-length"].to_str().expect("text").parse().expect("number");
    let bytes = response.bytes().await.expect("body").to_vec();
    assert_eq!(length, bytes.len() as u64);
    bytes
}

/// A refusal of a content request: its status and error code, after
/// checking that it is signed.
async fn refused(h: &Harness, id: &DeviceId, sha256: &str, range: Option<&str>) -> (u16, String) {
    let (auth, response) = fetch(h, id, sha256, range).await;
    let (status, body, signed) = signed_answer(id, &auth, response).await;
    assert!(signed, "a refusal of a verified request is signed: {body}");
    (status, body["code"].as_str().expect("code").to_owned())
}

fn mode_and_bytes(manifest: &Manifest) -> BTreeMap<&str, (u32, u64)> {
    manifest.files().iter().map(|f| (f.path.as_str(), (f.mode, f.size))).collect()
}

#[tokio::test]
async fn every_device_gets_exactly_its_files_the_label_over_all_and_no_other_labels_file() {
    let mut h = Harness::start();
    fleet(&h);
    put(&h, "all/app.conf", b"interval=60\n", 0o644);
    put(&h, "all/bin/run.sh", b"#!/bin/sh\nexec python3 main.py\n", 0o4755);
    put(&h, "all/shared.txt", b"for everyone\n", 0o600);
    put(&h, "greenhouse/app.conf", b"interval=10\n", 0o640);
    put(&h, "greenhouse/sensors/main.py", b"print('soil')\n", 0o644);
    put(&h, "cold-room-typo/secret.txt", b"nobody's\n", 0o644);
    std::os::unix::fs::symlink("/etc/passwd", h.publish_dir().join("all/passwd")).expect("symlink");
    h.publish_with_settle(SETTLE);

    let paths = ["app.conf", "bin/run.sh", "sensors/main.py", "shared.txt"];
    let (greenhouse_version, greenhouse) = release_listing(&h, &device(), &paths).await;
    let (all_version, all) = release_listing(&h, &stranger(), &["app.conf", "bin/run.sh", "shared.txt"]).await;
    assert_eq!(release(&poll(&h, &spare(), None).await).0, all_version, "a label that is no folder name: all/");
    assert_ne!(greenhouse_version, all_version);
    assert_eq!(
        mode_and_bytes(&greenhouse),
        BTreeMap::from([
            ("app.conf", (0o640, 12)),
            ("bin/run.sh", (0o755, 31)),
            ("sensors/main.py", (0o644, 14)),
            ("shared.txt", (0o600, 13))
        ]),
        "the set-uid bit never travels; the link is not published"
    );
    for (id, manifest, conf) in
        [(device(), &greenhouse, &b"interval=10\n"[..]), (stranger(), &all, &b"interval=60\n"[..])]
    {
        for file in manifest.files() {
            let bytes = content(&h, &id, &file.sha256.to_hex()).await;
            assert_eq!(digest(&bytes), file.sha256, "{}", file.path);
            if file.path.as_str() == "app.conf" {
                assert_eq!(bytes, conf, "the label's file wins");
            }
        }
    }

    // Only what a device's own manifest lists.
    let main_py = &greenhouse.files().iter().find(|f| f.path.as_str() == "sensors/main.py").expect("listed").sha256;
    assert_eq!(refused(&h, &stranger(), &main_py.to_hex(), None).await, (404, "not_found".to_owned()));
    let greenhouse_conf = digest(b"interval=10\n").to_hex();
    assert_eq!(refused(&h, &stranger(), &greenhouse_conf, None).await, (404, "not_found".to_owned()));
    let secret = digest(b"nobody's\n").to_hex();
    assert_eq!(refused(&h, &device(), &secret, None).await, (404, "not_found".to_owned()));
    assert_eq!(refused(&h, &device(), "not-a-hash", None).await, (400, "malformed_upload".to_owned()));

    // Range: from an offset to the end, or to a last byte.
    let run_sh = digest(b"#!/bin/sh\nexec python3 main.py\n").to_hex();
    let (_, response) = fetch(&h, &device(), &run_sh, Some("bytes=10-")).await;
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 10-30/31");
    assert_eq!(response.headers()["content-length"], "21");
    assert_eq!(&response.bytes().await.expect("body")[..], b"exec python3 main.py\n");
    let (_, response) = fetch(&h, &device(), &run_sh, Some("bytes=10-13")).await;
    assert_eq!(response.headers()["content-range"], "bytes 10-13/31");
    assert_eq!(&response.bytes().await.expect("body")[..], b"exec");
    assert_eq!(refused(&h, &device(), &run_sh, Some("bytes=31-")).await, (416, "range_not_satisfiable".to_owned()));
    assert_eq!(refused(&h, &device(), &run_sh, Some("bytes=-5")).await, (400, "malformed_upload".to_owned()));

    // The device that has its version gets the tiny answer, nothing else.
    let body = serde_json::to_vec(&json!({ "current": greenhouse_version })).expect("JSON");
    let auth = signed_head(&device(), "POST", endpoint::UPDATE_MANIFEST, now(), Some(&SignedFields::body(&body)));
    let response = h
        .http
        .post(h.url(endpoint::UPDATE_MANIFEST))
        .header("Authorization", auth)
        .body(body)
        .send()
        .await
        .expect("answer");
    let bytes = response.bytes().await.expect("body");
    assert_eq!(bytes, format!(r#"{{"version":"{greenhouse_version}"}}"#).as_bytes(), "no files listed");
}

#[tokio::test]
async fn a_file_being_written_is_published_only_once_it_has_settled() {
    let mut h = Harness::start();
    fleet(&h);
    put(&h, "all/done.txt", b"complete\n", 0o644);
    h.publish_with_settle(SETTLE);
    release_listing(&h, &device(), &["done.txt"]).await;

    let growing = h.publish_dir().join("all/firmware.bin");
    let mut file = std::fs::File::create(&growing).expect("create");
    let writing_until = Instant::now() + Duration::from_millis(2500);
    let mut written = Vec::new();
    while Instant::now() < writing_until {
        let piece = [written.len() as u8; 1000];
        std::io::Write::write_all(&mut file, &piece).expect("write");
        written.extend_from_slice(&piece);
        let (_, manifest) = release(&poll(&h, &device(), None).await);
        assert_eq!(manifest.files().len(), 1, "a file still being written was published: {manifest:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(file);
    let (_, manifest) = release_listing(&h, &device(), &["done.txt", "firmware.bin"]).await;
    let firmware = &manifest.files()[1];
    assert_eq!((firmware.size, firmware.sha256), (written.len() as u64, digest(&written)), "the whole file");
}

#[tokio::test]
async fn a_file_changed_after_its_manifest_is_refused_until_the_new_release() {
    let mut h = Harness::start();
    fleet(&h);
    put(&h, "all/app.conf", b"interval=60\n", 0o644);
    // Long enough that the rewrite below is still unsettled when fetched.
    h.publish_with_settle(Duration::from_secs(2));
    let (old_version, _) = release_listing(&h, &device(), &["app.conf"]).await;
    std::fs::write(h.publish_dir().join("all/app.conf"), b"interval=15\n").expect("rewrite in place");
    let old = digest(b"interval=60\n").to_hex();
    assert_eq!(refused(&h, &device(), &old, None).await, (409, "content_changed".to_owned()));
    let reply = poll(&h, &device(), Some(old_version)).await;
    assert!(reply.get("files").is_none(), "the old release stays until the rewrite settles: {reply}");

    let deadline = Instant::now() + TAKES_AT_MOST;
    let new_version = loop {
        let reply = poll(&h, &device(), Some(old_version)).await;
        if reply.get("files").is_some() {
            break release(&reply).0;
        }
        assert!(Instant::now() < deadline, "the rewrite was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_version, old_version);
    assert_eq!(content(&h, &device(), &digest(b"interval=15\n").to_hex()).await, b"interval=15\n");
    assert_eq!(refused(&h, &device(), &old, None).await, (404, "not_found".to_owned()), "gone with its release");
}

#[tokio::test]
async fn polls_and_reports_show_in_the_fleet_view_and_the_metrics() {
    let mut h = Harness::start();
    fleet(&h);
    put(&h, "all/app.conf", b"interval=60\n", 0o644);
    h.publish_with_settle(SETTLE);
    let (version, _) = release_listing(&h, &device(), &["app.conf"]).await;
    content(&h, &device(), &digest(b"interval=60\n").to_hex()).await;

    let report = |outcome: &str, reason: Option<&str>| {
        serde_json::to_vec(&json!({ "version": version, "outcome": outcome, "reason": reason })).expect("JSON")
    };
    let hostile = "hook exited 3: <script>alert(1)</script> & more";
    let (status, body, signed) =
        signed_json(&h, &stranger(), endpoint::UPDATE_REPORT, &report("rolled_back", Some(hostile))).await;
    assert_eq!((status, &body, signed), (200, &json!({}), true));
    poll(&h, &stranger(), None).await;
    poll(&h, &spare(), Some(version)).await;

    let devices: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    let update = |label: &str| -> Value {
        let all = devices["devices"].as_array().expect("devices");
        all.iter().find(|d| d["label"] == label).unwrap_or_else(|| panic!("no {label}"))["update"].clone()
    };
    let hex = version.to_string();
    assert_eq!(update("greenhouse")["state"], "behind", "polled without a version: {devices}");
    assert_eq!(update("greenhouse")["current_version"], Value::Null);
    let cold = update("cold-room");
    assert_eq!(
        (
            &cold["state"],
            &cold["last_outcome"],
            &cold["last_version"],
            &cold["last_reason"],
            &cold["published_version"]
        ),
        (&json!("rolled_back"), &json!("rolled_back"), &json!(hex), &json!(hostile), &json!(hex)),
        "{cold}"
    );
    assert!(cold["last_at"]["unix"].as_u64().is_some_and(|at| at.abs_diff(now()) < 600), "{cold}");
    assert_eq!(update("a/b")["state"], "current");
    assert_eq!(update("a/b")["current_version"], json!(hex));

    let page = h.get_text(endpoint::STATUS_PAGE).await;
    assert!(!page.contains("<script>"), "the reason is escaped");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"), "{page}");
    assert!(page.contains(r#"data-device="************3210" data-update="rolled_back">"#), "{page}");
    assert!(page.contains(&format!("<code title=\"{hex}\">{}</code>", version.short())), "{page}");

    let metrics = h.get_text(endpoint::METRICS).await;
    let polls = metrics.lines().find_map(|l| l.strip_prefix("logferry_update_polls_total ")).expect("polls");
    assert!(polls.parse::<u64>().expect("number") >= 3, "{polls}: one per poll above, and those of release_listing");
    for line in [
        "logferry_update_content_bytes_total 12",
        r#"logferry_update_reports_total{outcome="rolled_back"} 1"#,
        r#"logferry_update_reports_total{outcome="updated"} 0"#,
        r#"logferry_devices_update{state="rolled_back"} 1"#,
        r#"logferry_devices_update{state="behind"} 1"#,
        r#"logferry_devices_update{state="current"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }

    // An `updated` report says what the device runs now.
    assert_eq!(signed_json(&h, &device(), endpoint::UPDATE_REPORT, &report("updated", None)).await.0, 200);
    let devices: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    let greenhouse =
        devices["devices"].as_array().expect("devices").iter().find(|d| d["label"] == "greenhouse").cloned();
    assert_eq!(greenhouse.expect("listed")["update"]["state"], "current");
}

#[tokio::test]
async fn update_requests_are_verified_before_their_bodies_are_judged() {
    let h = Harness::start();
    let poll_body = br#"{"current":null}"#;
    let (status, body, _) = signed_json(&h, &device(), endpoint::UPDATE_MANIFEST, poll_body).await;
    assert_eq!((status, body), (200, json!({ "version": null })), "nothing is published without --publish");
    assert_eq!(refused(&h, &device(), &digest(b"x").to_hex(), None).await, (404, "not_found".to_owned()));

    let (status, body, signed) = signed_json(&h, &device(), endpoint::UPDATE_REPORT, b"{\"version\":1}").await;
    assert_eq!((status, body["code"].as_str(), signed), (400, Some("malformed_upload"), true), "{body}");

    // Signed for another body: refused unsigned, as nothing was proven.
    let auth = signed_head(&device(), "POST", endpoint::UPDATE_MANIFEST, now(), Some(&SignedFields::body(b"{}")));
    let response = h
        .http
        .post(h.url(endpoint::UPDATE_MANIFEST))
        .header("Authorization", &auth)
        .body(&poll_body[..])
        .send()
        .await
        .expect("answer");
    assert!(response.headers().get("X-Logferry-Receipt").is_none());
    let (status, body) = answer(response).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("bad_signature")));

    let big = vec![b' '; 5000];
    let (status, body) = answer(
        h.http
            .post(h.url(endpoint::UPDATE_REPORT))
            .header(
                "Authorization",
                signed_head(&device(), "POST", endpoint::UPDATE_REPORT, now(), Some(&SignedFields::body(&big))),
            )
            .body(big)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("malformed_upload")), "{body}");
    let (status, body) = answer(h.http.get(h.url(endpoint::UPDATE_MANIFEST)).send().await.expect("answer")).await;
    assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
}

/// Reads `path` until `stop` is set, and returns every distinct content
/// seen (absent: empty).
fn watch(path: &Path, stop: &std::sync::atomic::AtomicBool) -> Vec<Vec<u8>> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    loop {
        // One more read after the last placement, however the threads
        // were scheduled on a loaded machine.
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        let bytes = std::fs::read(path).unwrap_or_default();
        if !seen.contains(&bytes) {
            seen.push(bytes);
        }
        if stopping {
            return seen;
        }
    }
}

#[test]
fn receiver_publish_places_every_file_whole_with_its_mode_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("release");
    std::fs::create_dir_all(src.join("bin")).expect("mkdir");
    std::fs::write(src.join("main.py"), b"print('v1')\n").expect("write");
    std::fs::write(src.join("bin/run.sh"), b"#!/bin/sh\n").expect("write");
    std::fs::set_permissions(src.join("bin/run.sh"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::os::unix::fs::symlink("/etc/passwd", src.join("passwd")).expect("symlink");
    let publish = dir.path().join("publish");
    let publish_arg = publish.to_str().expect("utf-8");

    let out = receiver(dir.path(), &["publish", "release", "--to", "greenhouse", "--publish", publish_arg])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("greenhouse/main.py") && stdout.contains("greenhouse/bin/run.sh"), "{stdout}");
    assert!(stderr.contains("passwd") && stderr.contains("symbolic link"), "the link is skipped, saying so: {stderr}");
    let mode = |p: &str| std::fs::metadata(publish.join(p)).expect("placed").permissions().mode() & 0o7777;
    assert_eq!((mode("greenhouse/bin/run.sh"), mode("greenhouse/main.py") & 0o7000), (0o755, 0));
    assert_eq!(std::fs::read(publish.join("greenhouse/main.py")).expect("placed"), b"print('v1')\n");
    assert!(!publish.join("greenhouse/passwd").exists());
    assert_eq!(std::fs::read_dir(publish.join(".incoming")).expect("staging").count(), 0, "nothing left behind");

    // A reader of the published file sees the old or the new bytes, whole.
    let big = |fill: u8| vec![fill; 4 << 20];
    let file = dir.path().join("firmware.bin");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let reader = scope.spawn(|| watch(&publish.join("all/firmware.bin"), &stop));
        for fill in [b'a', b'b', b'c'] {
            std::fs::write(&file, big(fill)).expect("write");
            let out = receiver(dir.path(), &["publish", "firmware.bin", "--to", "all"])
                .env("LOGFERRY_PUBLISH", publish_arg)
                .output()
                .expect("runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().expect("reader")
    });
    assert!(seen.iter().any(|bytes| !bytes.is_empty()), "the reader saw the file placed");
    for bytes in &seen {
        let whole = bytes.is_empty() || (bytes.len() == 4 << 20 && bytes.iter().all(|b| *b == bytes[0]));
        assert!(whole, "a reader saw {} bytes of a half-placed file", bytes.len());
    }
    assert_eq!(std::fs::read(publish.join("all/firmware.bin")).expect("placed"), big(b'c'));

    for (args, says) in [
        (&["publish", "release", "--to", "../etc", "--publish", publish_arg][..], "has no publish folder"),
        (&["publish", "release", "--to", ".incoming", "--publish", publish_arg], "has no publish folder"),
        (&["publish", "release", "--to", "all"], "needs the publish folder"),
        (&["publish", "absent", "--to", "all", "--publish", publish_arg], "cannot read absent"),
    ] {
        let out = receiver(dir.path(), args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && stderr.contains(says), "{args:?}: {stderr}");
    }
}
