//! Updates end to end: the receiver publishes releases from a folder, the
//! sender binary fetches this device's release into its update folder,
//! switches to it, runs the hook, and goes back when the hook fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use logferry_common::update::{Manifest, ManifestEntry, Version};
use logferry_common::{RelPath, Sha256Digest};
use serde_json::Value;

use logferry_receiver::Publish;

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

/// The label [`Harness`] gives its device in ids.txt.
const LABEL: &str = "test-pi";
const UPDATE_FAILED: i32 = 10;

/// A published file: path, content, mode.
type Published<'a> = (&'a str, &'a [u8], u32);

/// A receiver publishing `publish/` (settling at once), and the harness's device.
fn start() -> Harness {
    Harness::start_with(|dir, config| {
        config.publish = Some(Publish { dir: dir.join("publish"), settle: Duration::ZERO });
    })
}

/// Puts `files` into `publish/<folder>/` (`all` or a label), each with its mode.
fn publish(h: &Harness, folder: &str, files: &[Published<'_>]) {
    for (path, content, mode) in files {
        let path = h.path("publish").join(folder).join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
}

/// The version of a release of exactly `files`, as both sides compute it.
fn version_of(files: &[Published<'_>]) -> Version {
    let entries = files
        .iter()
        .map(|(path, content, mode)| ManifestEntry {
            path: RelPath::parse(path).expect("valid"),
            size: content.len() as u64,
            sha256: Sha256Digest::of_bytes(content),
            mode: *mode,
        })
        .collect();
    Manifest::new(entries).expect("valid").version()
}

/// This device's `update` in `/v1/devices`.
fn fleet_view(h: &Harness) -> Value {
    h.devices()["devices"][0]["update"].clone()
}

/// Waits (at most 15 s) until the receiver publishes `version` for the device.
fn wait_published(h: &Harness, version: Version) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = fleet_view(h);
        if view["published_version"] == version.to_string() {
            return;
        }
        assert!(Instant::now() < deadline, "the receiver never published {version}: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn update_dir(h: &Harness) -> PathBuf {
    h.path("app")
}

/// One sender run with `--update-dir app --json` and `extra`, through `host`.
fn run_update(h: &Harness, host: &str, extra: &[&str]) -> (Run, Value) {
    let dir = update_dir(h).display().to_string();
    let mut args = vec!["--update-dir", &dir, "--json"];
    args.extend_from_slice(extra);
    let run = h.send_to(host, &args);
    let json: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    (run, json["update"].clone())
}

/// Every file of `DIR/current` with its content and mode, sorted.
fn current_files(h: &Harness) -> Vec<(String, Vec<u8>, u32)> {
    // The release it links to: the walk does not follow the link itself.
    let current = update_dir(h).join("current").canonicalize().expect("a release is current");
    files(&current)
        .into_iter()
        .map(|name| {
            let path = current.join(&name);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
            (name, std::fs::read(&path).expect("read"), mode)
        })
        .collect()
}

fn owned(files: &[Published<'_>]) -> Vec<(String, Vec<u8>, u32)> {
    let mut owned: Vec<_> = files.iter().map(|(p, c, m)| (p.to_string(), c.to_vec(), *m)).collect();
    owned.sort();
    owned
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The names in `DIR/releases`, sorted.
fn releases(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(update_dir(h).join("releases"))
        .expect("releases")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_device_gets_exactly_its_files_and_modes_with_its_label_laid_over_all() {
    let h = start();
    publish(&h, "all", &[("app.conf", b"x=1\n", 0o644), ("bin/run.sh", b"#!/bin/sh\necho all\n", 0o755)]);
    // A set-uid bit is published as the permission bits alone; an empty file is a file too.
    publish(
        &h,
        LABEL,
        &[
            ("app.conf", b"x=greenhouse\n", 0o600),
            ("sensors/main.py", b"print(1)\n", 0o4750),
            ("sensors/.keep", b"", 0o644),
        ],
    );
    publish(&h, "other-label", &[("secret.txt", b"not for this device\n", 0o644)]);
    let expected: &[Published<'_>] = &[
        ("app.conf", b"x=greenhouse\n", 0o600),
        ("bin/run.sh", b"#!/bin/sh\necho all\n", 0o755),
        ("sensors/.keep", b"", 0o644),
        ("sensors/main.py", b"print(1)\n", 0o750),
    ];
    let version = version_of(expected);
    wait_published(&h, version);

    let (run, update) = run_update(&h, &h.host(), &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(update["outcome"], "updated", "{run:?}");
    assert_eq!(update["version"], version.to_string());
    assert_eq!((update["fetched_files"].as_u64(), update["previous"].is_null()), (Some(4), true), "{update}");
    assert_eq!(current_files(&h), owned(expected), "the label's file wins; another label's never comes");
    let link = std::fs::read_link(update_dir(&h).join("current")).expect("a link");
    assert_eq!(link, Path::new("releases").join(version.to_string()), "relative, into releases/");
    let view = fleet_view(&h);
    assert_eq!(
        (view["current_version"].as_str(), view["state"].as_str()),
        (Some(&*version.to_string()), Some("current"))
    );
    assert_eq!(view["last_outcome"], "updated", "{view}");
}

#[test]
fn one_changed_file_fetches_only_that_file_and_no_change_only_the_poll() {
    let h = start();
    let big = content(1, 200_000);
    let first: &[Published<'_>] = &[("a.bin", &big, 0o644), ("b.txt", b"b1\n", 0o644), ("c.txt", b"c1\n", 0o644)];
    publish(&h, "all", first);
    wait_published(&h, version_of(first));
    let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
    let (run, update) = run_update(&h, &proxy.address, &[]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    let counts = &proxy.counts;
    assert_eq!(count(&counts.content_requests), 3);
    assert_eq!(count(&counts.content_bytes), 200_000 + 3 + 3);

    let second: &[Published<'_>] =
        &[("a.bin", &big, 0o644), ("b.txt", b"b2 changed\n", 0o644), ("c.txt", b"c1\n", 0o644)];
    publish(&h, "all", &second[1..2]);
    wait_published(&h, version_of(second));
    let (run, update) = run_update(&h, &proxy.address, &[]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    assert_eq!(count(&counts.content_requests), 4, "only b.txt was fetched");
    assert_eq!(count(&counts.content_bytes), 200_006 + 11);
    assert_eq!((update["fetched_files"].as_u64(), update["fetched_bytes"].as_u64()), (Some(1), Some(11)), "{update}");
    assert_eq!(current_files(&h), owned(second));

    let (run, update) = run_update(&h, &proxy.address, &[]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("up_to_date")), "{run:?}");
    assert_eq!(count(&counts.content_requests), 4, "no change: only the poll");
    let (v1, v2) = (version_of(first).to_string(), version_of(second).to_string());
    let mut kept = vec![v1.clone(), format!("{v1}.json"), v2.clone(), format!("{v2}.json")];
    kept.sort();
    assert_eq!(releases(&h), kept, "the current and the previous release");
}

/// A hook that logs each call to `hook.log` and fails on `apply` unless
/// `hook-ok` exists.
fn logging_hook(h: &Harness) -> String {
    format!(
        "echo \"$LOGFERRY_UPDATE $LOGFERRY_VERSION $LOGFERRY_PREVIOUS_VERSION\" >> {log}; \
         [ \"$LOGFERRY_UPDATE\" = rollback ] || [ -e {ok} ]",
        log = h.path("hook.log").display(),
        ok = h.path("hook-ok").display()
    )
}

const FIRST_RELEASE: &[Published<'_>] = &[("main.py", b"print('one')\n", 0o644)];

/// A device updated to [`FIRST_RELEASE`] by a run whose [`logging_hook`]
/// succeeded, and that hook.
fn first_release_with_logging_hook() -> (Harness, String) {
    let h = start();
    let hook = logging_hook(&h);
    publish(&h, "all", FIRST_RELEASE);
    wait_published(&h, version_of(FIRST_RELEASE));
    std::fs::write(h.path("hook-ok"), b"").expect("ok");
    let (run, update) = run_update(&h, &h.host(), &["--on-update", &hook]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    (h, hook)
}

fn hook_log(h: &Harness) -> Vec<String> {
    std::fs::read_to_string(h.path("hook.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn a_failing_hook_rolls_back_is_reported_and_that_version_is_not_tried_again() {
    let (h, hook) = first_release_with_logging_hook();
    let one = FIRST_RELEASE;
    let (v1, v2) = (version_of(one), version_of(&[("main.py", b"print('two')\n", 0o644)]));
    assert_eq!(hook_log(&h), [format!("apply {v1} ")]);

    std::fs::remove_file(h.path("hook-ok")).expect("the hook now fails");
    publish(&h, "all", &[("main.py", b"print('two')\n", 0o644)]);
    wait_published(&h, v2);
    let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
    let (run, update) = run_update(&h, &proxy.address, &["--on-update", &hook]);
    assert_eq!(run.code, Some(UPDATE_FAILED), "{run:?}");
    assert_eq!(update["outcome"], "rolled_back", "{run:?}");
    assert!(update["reason"].as_str().expect("a reason").contains("exited with status 1"), "{update}");
    assert_eq!(hook_log(&h)[1..], [format!("apply {v2} {v1}"), format!("rollback {v1} {v2}")]);
    assert_eq!(current_files(&h), owned(one), "back on the old release");
    let view = fleet_view(&h);
    assert_eq!((view["state"].as_str(), view["last_outcome"].as_str()), (Some("rolled_back"), Some("rolled_back")));
    assert_eq!(view["last_version"], v2.to_string(), "{view}");

    let fetched_before = count(&proxy.counts.content_requests);
    let (run, update) = run_update(&h, &proxy.address, &["--on-update", &hook]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("held_back")), "{run:?}");
    assert_eq!(count(&proxy.counts.content_requests), fetched_before, "nothing fetched again");
    assert_eq!(hook_log(&h).len(), 3, "the hook did not run again");

    std::fs::write(h.path("hook-ok"), b"").expect("ok");
    let three: &[Published<'_>] = &[("main.py", b"print('three')\n", 0o644)];
    publish(&h, "all", three);
    wait_published(&h, version_of(three));
    let (run, update) = run_update(&h, &h.host(), &["--on-update", &hook]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "a new version is tried: {run:?}");
    assert_eq!(current_files(&h), owned(three));
}

#[test]
fn a_hook_that_hangs_is_killed_and_the_first_release_is_taken_back() {
    let h = start();
    let files: &[Published<'_>] = &[("main.py", b"print('hang')\n", 0o644)];
    publish(&h, "all", files);
    wait_published(&h, version_of(files));
    let started = Instant::now();
    let (run, update) = run_update(&h, &h.host(), &["--on-update", "sleep 30", "--update-timeout", "1s"]);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(run.code, Some(UPDATE_FAILED), "{run:?}");
    assert_eq!(update["outcome"], "rolled_back");
    assert!(update["reason"].as_str().expect("reason").contains("ran longer than --update-timeout (1s)"), "{update}");
    assert!(std::fs::symlink_metadata(update_dir(&h).join("current")).is_err(), "no release before: none now");
}

#[test]
fn a_run_that_dies_while_its_hook_runs_is_rolled_back_by_the_next_one() {
    let (h, hook) = first_release_with_logging_hook();
    let one = FIRST_RELEASE;
    let two: &[Published<'_>] = &[("main.py", b"print('two')\n", 0o644)];
    publish(&h, "all", two);
    wait_published(&h, version_of(two));
    // The hook kills the sender that runs it, as a power cut would.
    let dir = update_dir(&h).display().to_string();
    let run = h.send_to(&h.host(), &["--update-dir", &dir, "--on-update", "kill -KILL $PPID"]);
    assert_eq!(run.code, None, "killed: {run:?}");
    assert_eq!(current_files(&h), owned(two), "the unconfirmed release is current");

    let (run, update) = run_update(&h, &h.host(), &["--on-update", &hook]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(UPDATE_FAILED), Some("rolled_back")), "{run:?}");
    assert!(update["reason"].as_str().expect("reason").contains("stopped before the hook"), "{update}");
    assert_eq!(current_files(&h), owned(one), "back on the confirmed release");
    let (v1, v2) = (version_of(one), version_of(two));
    assert_eq!(hook_log(&h)[1..], [format!("rollback {v1} {v2}")]);
    assert_eq!(fleet_view(&h)["last_outcome"], "rolled_back");
    let (run, update) = run_update(&h, &h.host(), &["--on-update", &hook]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("held_back")), "{run:?}");
}

#[test]
fn a_download_cut_mid_way_resumes_from_partial_on_the_next_run() {
    let h = start();
    let big = content(7, 3 << 20);
    let files: &[Published<'_>] = &[("model.bin", &big, 0o644)];
    publish(&h, "all", files);
    wait_published(&h, version_of(files));
    let proxy = FaultProxy::start(h.host(), |_| Fault::CutFirstContentAfter(1 << 20));
    let (run, update) = run_update(&h, &proxy.address, &["--retries", "0"]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(UPDATE_FAILED), Some("failed")), "{run:?}");
    let partial = update_dir(&h).join(".partial").join(Sha256Digest::of_bytes(&big).to_hex());
    let held = std::fs::metadata(&partial).expect("kept in .partial").len();
    assert!(held > 0 && held <= 1 << 20, "{held}");
    assert!(std::fs::symlink_metadata(update_dir(&h).join("current")).is_err(), "nothing switched in");

    let before = count(&proxy.counts.content_bytes);
    let (run, update) = run_update(&h, &proxy.address, &["--retries", "0"]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    let second = count(&proxy.counts.content_bytes) - before;
    assert_eq!(second, big.len() as u64 - held, "only the rest was fetched");
    assert_eq!(update["fetched_bytes"], second);
    assert_eq!(current_files(&h), owned(files));
    assert!(!partial.exists(), "the partial file became the release's");
}

#[test]
fn content_that_does_not_match_its_manifest_is_never_switched_in() {
    let h = start();
    let release: &[Published<'_>] = &[("a.txt", b"the real content\n", 0o644), ("b.txt", b"more\n", 0o644)];
    publish(&h, "all", release);
    wait_published(&h, version_of(release));
    let proxy = FaultProxy::start(h.host(), |_| Fault::FlipContentByte);
    let (run, update) = run_update(&h, &proxy.address, &[]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(UPDATE_FAILED), Some("failed")), "{run:?}");
    assert!(update["reason"].as_str().expect("reason").contains("not the"), "{update}");
    assert!(std::fs::symlink_metadata(update_dir(&h).join("current")).is_err(), "nothing switched in");
    assert_eq!(files(&update_dir(&h).join(".partial")), Vec::<String>::new(), "what failed is discarded");
    assert_eq!(fleet_view(&h)["last_outcome"], "failed");

    let (run, update) = run_update(&h, &h.host(), &[]);
    assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    assert_eq!(current_files(&h), owned(release));
}

#[test]
fn a_reader_of_current_never_sees_a_mixed_or_missing_release() {
    let h = start();
    let release = |n: u32| {
        let text = format!("version {n}\n");
        [("a.txt".to_owned(), text.clone()), ("deep/b.txt".to_owned(), text)]
    };
    let publish_release = |n: u32| {
        let files = release(n);
        let published: Vec<Published<'_>> = files.iter().map(|(p, c)| (p.as_str(), c.as_bytes(), 0o644)).collect();
        publish(&h, "all", &published);
        wait_published(&h, version_of(&published));
    };
    publish_release(0);
    let (run, _) = run_update(&h, &h.host(), &[]);
    assert_eq!(run.code, Some(0), "{run:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let current = update_dir(&h).join("current");
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0u64, std::collections::BTreeSet::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // One resolution of the link; both files are read through it.
                let release = std::fs::canonicalize(&current).expect("current is always there");
                let a = std::fs::read_to_string(release.join("a.txt")).expect("a.txt is always there");
                let b = std::fs::read_to_string(release.join("deep/b.txt")).expect("b.txt is always there");
                assert_eq!(a, b, "a mixed release in {}", release.display());
                seen.insert(a);
                reads += 1;
            }
            (reads, seen)
        })
    };
    for n in 1..=4 {
        publish_release(n);
        let (run, update) = run_update(&h, &h.host(), &[]);
        assert_eq!((run.code, update["outcome"].as_str()), (Some(0), Some("updated")), "{run:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader.join().expect("the reader saw only whole releases");
    assert!(reads > 100, "{reads} reads");
    assert!(seen.len() >= 2, "the reader saw the updates happen: {seen:?}");
}
