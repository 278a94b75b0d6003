//! Faults real fleets meet, each injected for real: the receiver killed with
//! SIGKILL mid-upload or stopped with SIGTERM under traffic, the sender
//! killed mid-run, answers lost after commit, a flaky network, a file that
//! grows while it is sent, overlapping runs, a sent folder on another file
//! system, and a load of many devices at once. Each test prints a `FIGURE`
//! line; scripts/faults.sh runs them with larger counts for RELIABILITY.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logferry_common::DeviceId;

use crate::external::ExternalReceiver;
use crate::harness::*;
use crate::proxy::{Fault, FaultProxy, Plan};

/// A count from the environment (scripts/faults.sh raises them), or the
/// default CI uses.
fn scale(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One device: its folder with `ids`-listed ID file, logs and sent folder.
struct Device {
    root: PathBuf,
    id: DeviceId,
    /// What was written, by relative path.
    files: BTreeMap<String, Vec<u8>>,
}

impl Device {
    fn new(root: PathBuf, number: u64) -> Self {
        std::fs::create_dir_all(root.join("logs")).expect("logs");
        let id = DeviceId::from_bytes((number + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        write_secret(&root.join("device-id"), &format!("{}\n", id.reveal()));
        Self { root, id, files: BTreeMap::new() }
    }

    fn write(&mut self, rel: &str, bytes: Vec<u8>) {
        let path = self.root.join("logs").join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &bytes).expect("write");
        self.files.insert(rel.to_owned(), bytes);
    }

    fn sender(&self, host: &str, extra: &[&str]) -> Command {
        let mut command = sender_command();
        command
            .arg(host)
            .arg(self.root.join("logs"))
            .arg("--id-file")
            .arg(self.root.join("device-id"))
            .args(extra)
            .env("LOGFERRY_MIN_AGE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn send(&self, host: &str, extra: &[&str]) -> (Option<i32>, String) {
        let out = self.sender(host, extra).output().expect("sender runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn spawn(&self, host: &str, extra: &[&str]) -> Child {
        self.sender(host, extra).spawn().expect("sender starts")
    }

    fn left_in_logs(&self) -> Vec<String> {
        files(&self.root.join("logs"))
    }

    fn sent(&self) -> Vec<String> {
        files(&self.root.join("sent_files"))
    }
}

/// What the store holds for one device, judged against what it wrote.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    /// Files whose bytes match no version the device wrote: partial commits.
    partial: Vec<String>,
    /// Written files with no copy in the store.
    missing: Vec<String>,
    /// Written files stored more than once.
    duplicated: Vec<String>,
}

/// Checks every stored file against the device's own, and every checksum
/// file against its file. `store` is the receiver's store folder.
fn judge(store: &Path, device: &Device) -> Verdict {
    let folder = store.join(device.id.reveal());
    let mut verdict = Verdict::default();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for stored in files(&folder) {
        if stored.ends_with(".sha256") {
            continue;
        }
        let bytes = std::fs::read(folder.join(&stored)).expect("read stored");
        match device.files.iter().find(|(_, written)| **written == bytes) {
            Some((rel, _)) => *copies.entry(rel).or_default() += 1,
            None => verdict.partial.push(stored.clone()),
        }
        if let Ok(line) = std::fs::read_to_string(folder.join(format!("{stored}.sha256"))) {
            let expected = logferry_common::Sha256Digest::of_reader(&bytes[..]).expect("hash").0;
            assert!(line.starts_with(&expected.to_hex()), "checksum file of {stored} disagrees with it");
        }
    }
    for rel in device.files.keys() {
        match copies.get(rel.as_str()) {
            None => verdict.missing.push(rel.clone()),
            Some(1) => {}
            Some(_) => verdict.duplicated.push(rel.clone()),
        }
    }
    verdict
}

/// Files moved aside must be stored, byte for byte.
fn assert_moved_only_when_stored(store: &Path, device: &Device) {
    let folder = store.join(device.id.reveal());
    for moved in device.sent() {
        let bytes = std::fs::read(device.root.join("sent_files").join(&moved)).expect("read sent");
        let stored = std::fs::read(folder.join(&moved)).ok();
        assert_eq!(stored.as_deref(), Some(&bytes[..]), "{moved} was moved aside but is not stored as it is");
    }
}

fn ids_file(dir: &Path, devices: &[Device]) {
    let lines: String = devices.iter().map(|d| format!("{}\n", d.id.reveal())).collect();
    std::fs::write(dir.join("ids.txt"), lines).expect("ids");
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            eprintln!("gave up waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// A file in a staging folder (the receiver's own, in `.staging`).
fn staging_busy(store: &Path) -> bool {
    let folders = std::fs::read_dir(store.join(".staging")).into_iter().flatten().flatten();
    folders.into_iter().any(|folder| std::fs::read_dir(folder.path()).is_ok_and(|mut d| d.next().is_some()))
}

/// An upload is being written: a small one in staging, a resumable one in
/// `.partial` (which, unlike staging, outlives a restart, for a resume).
fn upload_in_progress(store: &Path) -> bool {
    staging_busy(store) || std::fs::read_dir(store.join(".partial")).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn receiver_killed_mid_upload_shows_no_partial_file_and_the_next_run_delivers() {
    let rounds = scale("LOGFERRY_FAULT_ROUNDS", 3);
    let (mut partial, mut lost, mut mid_upload) = (0, 0, 0);
    for round in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut device = Device::new(dir.path().join("pi"), round);
        device.write("big.bin", content(round, 24 << 20));
        for i in 0..4 {
            device.write(&format!("small/{i}.log"), content(round * 10 + i, 4096));
        }
        ids_file(dir.path(), std::slice::from_ref(&device));
        let store = dir.path().join("received_files");

        let receiver = ExternalReceiver::start(dir.path(), &[]);
        let mut sender = device.spawn(&receiver.address, &["--retries", "0"]);
        if wait_for("an upload to start", Duration::from_secs(20), || upload_in_progress(&store)) {
            mid_upload += 1;
        }
        std::thread::sleep(Duration::from_millis(round * 37 % 120));
        receiver.kill();
        let _ = sender.wait();

        let verdict = judge(&store, &device);
        partial += verdict.partial.len();
        assert_moved_only_when_stored(&store, &device);

        let receiver = ExternalReceiver::start(dir.path(), &[]);
        assert!(!staging_busy(&store), "staging cleared at restart");
        let (code, stderr) = device.send(&receiver.address, &[]);
        assert_eq!(code, Some(0), "{stderr}");
        let verdict = judge(&store, &device);
        assert_eq!(verdict, Verdict::default(), "round {round}");
        lost += verdict.missing.len();
        assert_eq!(device.left_in_logs(), Vec::<String>::new());
    }
    eprintln!(
        "FIGURE receiver-sigkill: rounds={rounds} killed_mid_upload={mid_upload} partial_commits={partial} files_lost={lost}"
    );
    assert_eq!((partial, lost), (0, 0));
}

#[test]
fn sender_killed_mid_run_moves_nothing_unverified_and_the_next_run_stores_no_duplicate() {
    let rounds = scale("LOGFERRY_FAULT_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut devices: Vec<Device> = (0..rounds).map(|r| Device::new(dir.path().join(format!("pi-{r}")), r)).collect();
    ids_file(dir.path(), &devices);
    let store = dir.path().join("received_files");
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    let mut duplicated = 0;
    for (round, device) in devices.iter_mut().enumerate() {
        let round = round as u64;
        for i in 0..30 {
            device.write(&format!("day/{i:02}.csv"), content(round * 100 + i, 2048 + (i as usize * 997) % 20_000));
        }
        device.write("day/camera.bin", content(round, 8 << 20));
        let mut sender = device.spawn(&receiver.address, &[]);
        let stored_before_kill = 1 + round as usize % 20;
        wait_for("some files to arrive", Duration::from_secs(30), || {
            files(&store.join(device.id.reveal())).len() >= stored_before_kill * 2
        });
        let _ = sender.kill();
        let _ = sender.wait();
        assert_moved_only_when_stored(&store, device);

        let (code, stderr) = device.send(&receiver.address, &[]);
        assert_eq!(code, Some(0), "the killed run's lock is gone with it: {stderr}");
        let verdict = judge(&store, device);
        duplicated += verdict.duplicated.len();
        assert_eq!(verdict, Verdict::default(), "round {round}");
        assert_eq!(device.left_in_logs(), Vec::<String>::new());
    }
    eprintln!("FIGURE sender-sigkill: rounds={rounds} moved_unverified=0 duplicated={duplicated}");
}

#[test]
fn an_answer_lost_after_commit_is_already_stored_on_retry_and_kept_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut device = Device::new(dir.path().join("pi"), 1);
    device.write("once.log", content(1, 10_000));
    ids_file(dir.path(), std::slice::from_ref(&device));
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    // Connection 0 carries the auth check (its answer passes: only upload
    // answers are lost), connection 1 the upload, whose answer is lost.
    let proxy = FaultProxy::start(receiver.address.clone(), |n| if n <= 1 { Fault::LoseAnswer } else { Fault::Pass });
    let out = device.sender(&proxy.address, &["--retries", "2"]).stdout(Stdio::piped()).output().expect("runs");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary.contains("0 sent") && summary.contains("1 already stored"), "{summary}");
    assert_eq!(proxy.counts.answers_lost.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(judge(&dir.path().join("received_files"), &device), Verdict::default());
    assert_eq!(device.sent(), ["once.log"]);
    eprintln!("FIGURE answer-lost: answers_lost=1 copies_stored=1 moved=1");
}

#[test]
fn a_flaky_network_loses_and_duplicates_nothing() {
    let files_count = scale("LOGFERRY_FLAKY_FILES", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut device = Device::new(dir.path().join("pi"), 7);
    for i in 0..files_count {
        device.write(&format!("flaky/{i:03}.log"), content(i, 1024 + (i as usize * 7_919) % (256 << 10)));
    }
    ids_file(dir.path(), std::slice::from_ref(&device));
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    let plan = Plan { drop: 10, stall: 5, cut: 15, lose_answer: 10 };
    let proxy = FaultProxy::random(receiver.address.clone(), plan, 0x5EED);
    let mut runs = 0;
    while !device.left_in_logs().is_empty() && runs < 10 {
        runs += 1;
        let (code, stderr) = device.send(&proxy.address, &["--retries", "3"]);
        assert!(matches!(code, Some(0 | 1 | 5)), "{code:?} {stderr}");
        assert_moved_only_when_stored(&dir.path().join("received_files"), &device);
    }
    let verdict = judge(&dir.path().join("received_files"), &device);
    let injected = proxy.counts.injected();
    eprintln!(
        "FIGURE flaky-network: files={files_count} connections={} faults_injected={injected} sender_runs={runs} lost={} duplicated={}",
        proxy.counts.connections.load(std::sync::atomic::Ordering::Relaxed),
        verdict.missing.len(),
        verdict.duplicated.len()
    );
    assert!(injected > 0, "the proxy injected no fault");
    assert_eq!(verdict, Verdict::default());
    assert_eq!(device.left_in_logs(), Vec::<String>::new(), "all delivered within {runs} runs");
}

#[test]
fn a_file_that_grows_while_it_is_sent_is_never_moved_changed_and_arrives_final() {
    let h = Harness::start();
    let grown = h.logs().join("growing.bin");
    let first = content(3, 64 << 20);
    std::fs::write(&grown, &first).expect("write");
    let args =
        [h.host(), h.logs().display().to_string(), "--id-file".into(), h.path("device-id").display().to_string()];
    let mut sender = sender_command().args(&args).env("LOGFERRY_MIN_AGE", "0").spawn().expect("starts");
    wait_for("the upload to start", Duration::from_secs(30), || upload_in_progress(&h.path("store")));
    let mut file = std::fs::OpenOptions::new().append(true).open(&grown).expect("open");
    std::io::Write::write_all(&mut file, b"one more line\n").expect("append");
    drop(file);
    assert!(sender.wait().expect("ends").success());
    assert!(grown.is_file(), "a file that changed during its upload is not moved");
    let stored_first = std::fs::read(h.stored().join("growing.bin")).expect("the hashed prefix is stored");
    assert!(stored_first == first, "the receiver holds exactly the bytes hashed before the append");
    let final_bytes = std::fs::read(&grown).expect("read");

    let run = h.send(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let moved: Vec<_> = files(&h.sent());
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(std::fs::read(h.sent().join(&moved[0])).expect("read") == final_bytes, "the final content was moved aside");
    // The receiver holds the version read first under the name, and the
    // final one beside it under its conflict name.
    let stored = files(&h.stored());
    let final_stored = stored.iter().any(|name| std::fs::read(h.stored().join(name)).is_ok_and(|b| b == final_bytes));
    assert!(final_stored, "the final content arrived: {stored:?}");
    eprintln!("FIGURE growing-file: moved_while_changing=0 final_content_delivered=1");
}

#[test]
fn overlapping_runs_on_one_folder_never_upload_twice() {
    let h = Harness::start();
    h.log("big.bin", &content(9, 48 << 20));
    h.log("small.log", b"small\n");
    let args =
        [h.host(), h.logs().display().to_string(), "--id-file".into(), h.path("device-id").display().to_string()];
    let spawn = || {
        sender_command()
            .args(&args)
            .env("LOGFERRY_MIN_AGE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts")
    };
    let (mut first, mut second) = (spawn(), spawn());
    let codes = [first.wait().expect("ends").code(), second.wait().expect("ends").code()];
    assert!(codes.contains(&Some(0)), "{codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Some(0 | 8))), "{codes:?}");
    let stored: Vec<_> = files(&h.stored()).into_iter().filter(|f| !f.ends_with(".sha256")).collect();
    assert_eq!(stored, ["big.bin", "small.log"], "one copy each");
    assert_eq!(files(&h.logs()), Vec::<String>::new());
    eprintln!("FIGURE overlapping-runs: exit_codes={codes:?} copies_per_file=1");
}

#[test]
fn a_sent_folder_on_another_file_system_gets_whole_files_only() {
    let h = Harness::start();
    let elsewhere = h.path("sent-elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&elsewhere)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("mounting a tmpfs is not allowed here; the copy path is covered by sent::tests");
        return;
    }
    let unmount = scopeguard(|| {
        let _ = Command::new("umount").arg(&elsewhere).status();
    });
    let written: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("d/{i}.log"), content(40 + i, 3 << 20))).collect();
    for (rel, bytes) in &written {
        h.log(rel, bytes);
    }
    let run = h.send(&["--sent-dir", &elsewhere.display().to_string()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    for (rel, bytes) in &written {
        assert_eq!(&std::fs::read(elsewhere.join(rel)).expect("moved"), bytes, "{rel}");
    }
    assert_eq!(files(&h.logs()), Vec::<String>::new());
    assert_eq!(files(&elsewhere).len(), written.len(), "no temporary copy left: {:?}", files(&elsewhere));
    drop(unmount);
    eprintln!("FIGURE cross-filesystem-move: files={} half_moved=0", written.len());
}

/// Runs `cleanup` when dropped, also when an assertion fails first.
fn scopeguard(cleanup: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(cleanup) = self.0.take() {
                cleanup();
            }
        }
    }
    Guard(Some(cleanup))
}

/// Polls the health endpoint until told to stop; returns (answers, failures).
fn poll_health(
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let answer = (|| {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(&address).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(stream, "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
                let mut text = String::new();
                stream.read_to_string(&mut text).ok()?;
                Some(text.starts_with("HTTP/1.1 200"))
            })();
            if answer == Some(true) {
                ok += 1
            } else {
                failed += 1
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (ok, failed)
    })
}

/// `devices` devices with `per_device` files each, all sending at once.
fn fleet(dir: &Path, devices: u64, per_device: u64) -> Vec<Device> {
    let fleet: Vec<Device> = (0..devices)
        .map(|n| {
            let mut device = Device::new(dir.join(format!("pi-{n:03}")), 1000 + n);
            for i in 0..per_device {
                device.write(&format!("{i:03}.log"), content(n * 1_000 + i, 1024 + (i as usize * 331) % 8192));
            }
            device
        })
        .collect();
    ids_file(dir, &fleet);
    fleet
}

#[test]
fn many_devices_at_once_all_arrive_verified_with_health_answering() {
    let (devices, per_device) = (scale("LOGFERRY_LOAD_DEVICES", 20), scale("LOGFERRY_LOAD_FILES", 10));
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), devices, per_device);
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = poll_health(receiver.address.clone(), std::sync::Arc::clone(&stop));
    let started = Instant::now();
    let mut senders: Vec<Child> = fleet.iter().map(|d| d.spawn(&receiver.address, &["--retries", "10"])).collect();
    let codes: Vec<_> = senders.iter_mut().map(|s| s.wait().expect("ends").code()).collect();
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (health_ok, health_failed) = health.join().expect("poller");
    let peak_kib = receiver.peak_rss_kib().unwrap_or(0);
    let log = receiver.log();
    let server_errors = log.lines().filter(|l| l.contains("upload failed") || l.contains("status=5")).count();
    let busy = log.lines().filter(|l| l.contains("code=Busy")).count();

    let store = dir.path().join("received_files");
    let (mut lost, mut partial, mut duplicated) = (0, 0, 0);
    for device in &fleet {
        let verdict = judge(&store, device);
        lost += verdict.missing.len();
        partial += verdict.partial.len();
        duplicated += verdict.duplicated.len();
    }
    eprintln!(
        "FIGURE load: devices={devices} files={} seconds={:.1} server_errors={server_errors} busy_retried={busy} \
         lost={lost} partial={partial} duplicated={duplicated} health_ok={health_ok} health_failed={health_failed} receiver_peak_rss_kib={peak_kib}",
        devices * per_device,
        elapsed.as_secs_f64()
    );
    assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
    assert_eq!((lost, partial, duplicated, server_errors, health_failed), (0, 0, 0, 0, 0));
    assert!(health_ok > 0);
}

#[test]
fn a_receiver_stopped_with_sigterm_under_traffic_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), 8, 25);
    let store = dir.path().join("received_files");
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    let mut senders: Vec<Child> = fleet.iter().map(|d| d.spawn(&receiver.address, &["--retries", "0"])).collect();
    wait_for("traffic", Duration::from_secs(20), || staging_busy(&store) || files(&store).len() > 10);
    let status = receiver.terminate();
    for sender in &mut senders {
        let _ = sender.wait();
    }
    let mut partial = 0;
    for device in &fleet {
        partial += judge(&store, device).partial.len();
        assert_moved_only_when_stored(&store, device);
    }
    let receiver = ExternalReceiver::start(dir.path(), &[]);
    for device in &fleet {
        let (code, stderr) = device.send(&receiver.address, &[]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(judge(&store, device), Verdict::default());
    }
    eprintln!("FIGURE sigterm: exit_status={status} partial={partial} lost=0 duplicated=0");
    assert!(status.success(), "a graceful stop exits 0: {status}");
    assert_eq!(partial, 0);
}
