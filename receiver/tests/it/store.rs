//! The storage rules, as one set of cases run against both backends: the
//! folder on disk and an S3 bucket (Garage, started by scripts/test.sh).
//! Also several receivers sharing one store, with devices uploading to them
//! at random.

use std::collections::BTreeMap;
use std::time::Duration;

use logferry_common::wire::endpoint;
use logferry_common::{DeviceId, RelPath};
use logferry_receiver::store::s3::S3Settings;
use logferry_receiver::store::{Store, StoredFile};
use rand::RngExt;

use crate::harness::*;

/// Big enough for a multipart upload of three parts on S3.
const LARGE: usize = 11 << 20;

fn large(seed: u8) -> Vec<u8> {
    (0..LARGE).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// One step of a scenario.
enum Step {
    /// Upload by the test device; expect this status and stored name.
    Send { path: String, content: Vec<u8>, status: u16, stored_as: String },
    /// Upload of `content` declaring the checksum of `claims`: refused with
    /// `status` and `code`, with an error that `says` this, nothing becoming
    /// visible, and the status page showing it as the device's last rejection.
    Refused {
        path: &'static str,
        content: Vec<u8>,
        claims: Vec<u8>,
        status: u16,
        code: &'static str,
        says: &'static str,
    },
    /// These uploads at once, each retried on 429 as a sender does; every
    /// one must be stored (at least one of them new), each answer naming
    /// where its own bytes are.
    Race(Vec<(&'static str, Vec<u8>)>),
    /// Delete an object of the device's folder, as a crash between the data
    /// and its checksum file would leave it.
    Remove(&'static str),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// Everything in the device's folder afterwards, with its bytes.
    afterwards: Vec<(String, Vec<u8>)>,
}

fn stored(path: &str, content: &[u8]) -> [(String, Vec<u8>); 2] {
    let name = RelPath::parse(path).expect("valid path");
    [(path.to_owned(), content.to_vec()), (format!("{path}.sha256"), name.checksum_line(&digest(content)).into_bytes())]
}

/// The conflict names of `content` sent as `path`, in the order they are tried.
fn conflict_names(path: &str, content: &[u8]) -> [String; 2] {
    let [_, first, last] = RelPath::parse(path).expect("valid path").store_candidates(&digest(content));
    [first.to_string(), last.to_string()]
}

fn send(path: &str, content: &[u8], status: u16, stored_as: &str) -> Step {
    Step::Send { path: path.to_owned(), content: content.to_vec(), status, stored_as: stored_as.to_owned() }
}

/// An upload whose bytes do not match the checksum it declares.
fn corrupted(path: &'static str, content: &[u8]) -> Step {
    let mut wrong = content.to_vec();
    wrong[0] ^= 1;
    let claims = content.to_vec();
    Step::Refused { path, content: wrong, claims, status: 422, code: "checksum_mismatch", says: "checksum mismatch" }
}

fn cases() -> Vec<Case> {
    let (one, two) = (b"sensor,value\n1,2\n".as_slice(), b"sensor,value\n9,9\n".as_slice());
    let [day_conflict, _] = conflict_names("data/day.csv", two);
    let (three, four) = (b"sensor,value\n3,3\n".as_slice(), b"sensor,value\n4,4\n".as_slice());
    let [two_first, two_last] = conflict_names("day.csv", two);
    let [four_first, four_last] = conflict_names("day.csv", four);
    let not_a_checksum = b"not a checksum".as_slice();
    // Lines `sha256sum -c` would read, were they stored as checksum files.
    let bogus = format!("{}  a.log\n", digest(b"not a.log")).into_bytes();
    let forged = format!("{}  b.log\n", digest(b"not b.log")).into_bytes();
    vec![
        Case {
            name: "a verified upload is stored with its checksum file",
            steps: vec![
                send("nested/dir/day 1 été.csv", one, 201, "nested/dir/day 1 été.csv"),
                send("empty.log", b"", 201, "empty.log"),
                send("nested/dir/day 1 été.csv", one, 200, "nested/dir/day 1 été.csv"),
            ],
            afterwards: [stored("nested/dir/day 1 été.csv", one), stored("empty.log", b"")].concat(),
        },
        Case {
            name: "a large upload goes through in parts and is stored whole",
            steps: vec![send("big.bin", &large(1), 201, "big.bin"), send("big.bin", &large(1), 200, "big.bin")],
            afterwards: stored("big.bin", &large(1)).to_vec(),
        },
        Case {
            name: "bytes that do not match their checksum are never visible, small or large",
            steps: vec![
                corrupted("small.log", one),
                corrupted("big.bin", &large(2)),
                send("small.log", one, 201, "small.log"),
            ],
            afterwards: stored("small.log", one).to_vec(),
        },
        Case {
            name: "resending the same bytes is idempotent and repairs a missing checksum file",
            steps: vec![
                send("a.log", one, 201, "a.log"),
                send("a.log", one, 200, "a.log"),
                Step::Remove("a.log.sha256"),
                send("a.log", one, 200, "a.log"),
            ],
            afterwards: stored("a.log", one).to_vec(),
        },
        Case {
            name: "other content under a taken name goes to a conflict name; nothing is overwritten",
            steps: vec![
                send("data/day.csv", one, 201, "data/day.csv"),
                send("data/day.csv", two, 201, &day_conflict),
                send("data/day.csv", two, 200, &day_conflict),
            ],
            afterwards: [stored("data/day.csv", one), stored(&day_conflict, two)].concat(),
        },
        Case {
            name: "data files named like checksum files are stored under escaped names, never misleading sha256sum",
            steps: vec![
                send("a.log.sha256", &bogus, 201, "a.log.sha256.data"),
                send("a.log", one, 201, "a.log"),
                send("b.log", two, 201, "b.log"),
                send("evil.sha256", &forged, 201, "evil.sha256.data"),
                send("evil.sha256.data", not_a_checksum, 201, "evil.sha256.data.data"),
                // A checksum file's name for a file of the device's own.
                send("data/day.csv.sha256", not_a_checksum, 201, "data/day.csv.sha256.data"),
                send("data/day.csv", one, 201, "data/day.csv"),
                send("a.log.sha256", &bogus, 200, "a.log.sha256.data"),
                send("evil.sha256", &forged, 200, "evil.sha256.data"),
                send("evil.sha256.data", not_a_checksum, 200, "evil.sha256.data.data"),
            ],
            afterwards: [
                stored("a.log.sha256.data", &bogus),
                stored("a.log", one),
                stored("b.log", two),
                stored("evil.sha256.data", &forged),
                stored("evil.sha256.data.data", not_a_checksum),
                stored("data/day.csv.sha256.data", not_a_checksum),
                stored("data/day.csv", one),
            ]
            .concat(),
        },
        Case {
            name: "a taken conflict name leads to the last one; with that taken too, the refusal says what to do",
            steps: vec![
                send("day.csv", one, 201, "day.csv"),
                // Files the device itself names like the conflict names.
                send(&two_first, three, 201, &two_first),
                send("day.csv", two, 201, &two_last),
                send("day.csv", two, 200, &two_last),
                send(&four_first, three, 201, &four_first),
                send(&four_last, three, 201, &four_last),
                Step::Refused {
                    path: "day.csv",
                    content: four.to_vec(),
                    claims: four.to_vec(),
                    status: 409,
                    code: "path_conflict",
                    says: "rename the file on the device",
                },
                send("day.csv", one, 200, "day.csv"),
            ],
            afterwards: [
                stored("day.csv", one),
                stored(&two_first, three),
                stored(&two_last, two),
                stored(&four_first, three),
                stored(&four_last, three),
            ]
            .concat(),
        },
        Case {
            name: "racing uploads of one path never clobber each other",
            steps: vec![Step::Race((1..=4).map(|v| ("r.log", format!("version {v}").into_bytes())).collect())],
            afterwards: Vec::new(),
        },
        Case {
            name: "racing uploads of the same bytes store them once",
            steps: vec![Step::Race(vec![("s.log", one.to_vec()), ("s.log", one.to_vec()), ("s.log", one.to_vec())])],
            afterwards: stored("s.log", one).to_vec(),
        },
    ]
}

/// Runs `case` on a fresh store of `backend` and checks every answer and,
/// at the end, everything in the device's folder, and that `sha256sum -c`
/// accepts its checksum files, one beside each data file.
async fn check(backend: &Backend, case: Case) {
    let h = Harness::start_on(backend.clone());
    let name = case.name;
    let mut expected: BTreeMap<String, Vec<u8>> = case.afterwards.into_iter().collect();
    for step in case.steps {
        match step {
            Step::Send { path, content, status, stored_as } => {
                let (got, body) = h.upload(&path, &content).await;
                assert_eq!((got, body["stored_as"].as_str()), (status, Some(stored_as.as_str())), "{name}: {body}");
            }
            Step::Refused { path, content, claims, status, code, says } => {
                let before = h.objects().await;
                let (got, body) = send_claiming(&h, path, &content, &claims).await;
                assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{name}: {body}");
                let error = body["error"].as_str().unwrap_or_default();
                assert!(error.contains(says), "{name}: {error:?} does not say {says:?}");
                assert_eq!(h.objects().await, before, "{name}: something became visible");
                let shown = last_rejection(&h).await;
                assert_eq!(
                    (shown["code"].as_str(), shown["message"].as_str()),
                    (Some(code), Some(error)),
                    "{name}: the status page shows the rejection"
                );
            }
            Step::Race(uploads) => {
                let device = device();
                let answers = futures_util::future::join_all(
                    uploads.iter().map(|(path, content)| h.upload_retrying(h.addr(), &device, path, content)),
                )
                .await;
                let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
                assert!(statuses.iter().all(|s| matches!(s, 200 | 201)), "{name}: {answers:?}");
                assert!(statuses.contains(&201), "{name}: {answers:?}");
                for ((_, content), (_, body)) in uploads.iter().zip(&answers) {
                    let at = body["stored_as"].as_str().expect("stored_as").to_owned();
                    expected.extend(stored(&at, content));
                }
            }
            Step::Remove(name) => h.remove(&format!("{DEVICE}/{name}")).await,
        }
    }
    let mut found = BTreeMap::new();
    for object in h.objects().await {
        let content = h.read(&object).await;
        let inside = object.strip_prefix(&format!("{DEVICE}/")).unwrap_or_else(|| panic!("{name}: {object} outside"));
        found.insert(inside.to_owned(), content);
    }
    let show =
        |m: &BTreeMap<String, Vec<u8>>| m.iter().map(|(k, v)| format!("{k} ({} bytes)", v.len())).collect::<Vec<_>>();
    assert!(found == expected, "{name}: stored {:?}, expected {:?}", show(&found), show(&expected));
    sha256sum_accepts(name, &found);
    let data_files: Vec<(String, u64)> = found
        .iter()
        .filter(|(path, _)| !path.ends_with(".sha256"))
        .map(|(path, content)| (path.clone(), content.len() as u64))
        .collect();
    assert_eq!(inventory(&h).await, data_files, "{name}: the inventory lists the data files");
}

/// What a receiver opening the store lists, as (device, path, size), sorted.
async fn stored_listing(h: &Harness) -> Vec<(String, String, u64)> {
    let ready = logferry_receiver::open(&h.config()).await.expect("opens");
    let mut listed: Vec<(String, String, u64)> = ready
        .state
        .store()
        .inventory(Vec::new())
        .await
        .expect("inventory")
        .into_iter()
        .map(|StoredFile { device, path, size, .. }| (device.reveal().to_owned(), path.to_string(), size))
        .collect();
    listed.sort();
    listed
}

/// [`stored_listing`], as (path, size) of the test device, the only one there.
async fn inventory(h: &Harness) -> Vec<(String, u64)> {
    let listed = stored_listing(h).await;
    assert!(listed.iter().all(|(device, ..)| device == DEVICE), "{listed:?}");
    listed.into_iter().map(|(_, path, size)| (path, size)).collect()
}

/// Lays `files` (path → bytes, one device's folder) out on disk, checks that
/// every data file has its checksum file, and runs `sha256sum -c` on every
/// `*.sha256` file, in its folder, as an admin would.
fn sha256sum_accepts(name: &str, files: &BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checksum_files: BTreeMap<std::path::PathBuf, Vec<String>> = BTreeMap::new();
    for (path, content) in files {
        let at = dir.path().join(path);
        std::fs::create_dir_all(at.parent().expect("in a folder")).expect("mkdir");
        std::fs::write(&at, content).expect("write");
        let rel = RelPath::parse(path).expect("valid path");
        if path.ends_with(".sha256") {
            checksum_files.entry(at.parent().expect("folder").to_owned()).or_default().push(rel.file_name().to_owned());
        } else {
            assert!(files.contains_key(&format!("{path}.sha256")), "{name}: {path} has no checksum file");
        }
    }
    for (folder, names) in checksum_files {
        let run = std::process::Command::new("sha256sum")
            .args(["-c", "--strict"])
            .args(&names)
            .current_dir(&folder)
            .output()
            .expect("sha256sum runs");
        let said = String::from_utf8_lossy(&run.stdout) + String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{name}: sha256sum -c {names:?} failed:\n{said}");
    }
}

/// The test device's last rejection, as `GET /v1/devices` shows it.
async fn last_rejection(h: &Harness) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    let devices = report["devices"].as_array().expect("devices");
    let ours = devices.iter().find(|d| d["label"] == "bench-pi").expect("the test device is listed");
    ours["last_rejection"].clone()
}

/// An upload of `bytes` that claims the checksum of `claimed`.
async fn send_claiming(h: &Harness, path: &str, bytes: &[u8], claimed: &[u8]) -> (u16, serde_json::Value) {
    let claim = claim(path, claimed);
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    h.send_form(Some(auth), upload_form(path, &claim.sha256.to_hex(), &claim.size.to_string(), bytes)).await
}

#[tokio::test]
async fn storage_rules_on_disk() {
    for case in cases() {
        check(&Backend::Disk, case).await;
    }
}

#[tokio::test]
async fn storage_rules_on_s3() {
    let Some(backend) = Backend::s3() else { return };
    for case in cases() {
        check(&backend, case).await;
    }
}

/// Files laid into a device's folder directly → what the inventory lists
/// of them: every file but the checksum file of a data file beside it.
const INVENTORY_CASES: &[(&[&str], &[&str])] = &[
    (&["a.log", "a.log.sha256", "d/b.log.sha256", "d/b.log"], &["a.log", "d/b.log"]),
    // A device's own files named like checksum files, stored by a receiver
    // from before such names were escaped, and as they are stored now.
    (&["own.sha256", "x.sha256.data", "x.sha256.data.sha256"], &["own.sha256", "x.sha256.data"]),
    // A checksum file's name in another folder is not this file's.
    (&["d/c.log", "c.log.sha256"], &["c.log.sha256", "d/c.log"]),
];

async fn check_inventory(backend: &Backend, planted: &[&str], expected: &[&str]) {
    let h = Harness::start_on(backend.clone());
    for name in planted {
        h.plant(&format!("{DEVICE}/{name}"), name.as_bytes()).await;
    }
    let expected: Vec<(String, u64)> = expected.iter().map(|name| (name.to_string(), name.len() as u64)).collect();
    assert_eq!(inventory(&h).await, expected, "{planted:?}");
}

#[tokio::test]
async fn the_inventory_skips_only_checksum_files_of_data_files_on_disk() {
    for (planted, expected) in INVENTORY_CASES {
        check_inventory(&Backend::Disk, planted, expected).await;
    }
}

#[tokio::test]
async fn the_inventory_skips_only_checksum_files_of_data_files_on_s3() {
    let Some(backend) = Backend::s3() else { return };
    for (planted, expected) in INVENTORY_CASES {
        check_inventory(&backend, planted, expected).await;
    }
}

/// Receivers sharing a store folder each stage in a folder of their own:
/// one opening the store never removes what another is receiving.
#[tokio::test]
async fn opening_the_folder_again_leaves_an_upload_in_flight_alone() {
    use std::io::Write;
    let h = Harness::start();
    // Streamed to a staging file (over 256 KiB), not resumable (under 1 MiB).
    let content: Vec<u8> = (0..600 << 10).map(|i| (i % 253) as u8).collect();
    let (head, before, rest) = raw_upload(&h, "in-flight.bin", &content);
    let half = rest.len() / 2;
    let mut stream = std::net::TcpStream::connect(h.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(&[head, before, rest[..half].to_vec()].concat()).expect("first half");
    // Bounded: until the receiver staged what arrived.
    for _ in 0..1000 {
        if !staged_files(&h.store()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!staged_files(&h.store()).is_empty(), "the upload is being staged");
    let (second, removed) = logferry_receiver::store::disk::DiskStore::open(&h.store(), 0).expect("opens");
    assert_eq!(removed, 0, "nothing of the first receiver's was stale");
    stream.write_all(&rest[half..]).expect("second half");
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (status, body) = read_answer(&mut stream);
    assert!(status.starts_with("HTTP/1.1 201"), "{status} {body}");
    assert!(h.read(&format!("{DEVICE}/in-flight.bin")).await == content, "stored whole");
    drop(second);
}

const DEVICES: usize = 6;
const FILES_PER_DEVICE: usize = 12;

/// Two receivers on one store; every device sends each of its files to one
/// of them at random, and a third of them to both at once (as a retry after
/// a lost answer through a load balancer would). Every file must be stored
/// exactly once under its own name, both receivers' inventories must list
/// exactly those files, and both status pages must come to show them all.
async fn check_shared_store(backend: Backend) {
    let mut h = Harness::start_on(backend);
    h.refresh_fleet_every(Duration::from_millis(300));
    let ids: Vec<DeviceId> = (0..DEVICES).map(|i| format!("{:016X}", 0xA000 + i).parse().expect("valid ID")).collect();
    let listing: String = ids.iter().map(|id| format!("{}\n", id.reveal())).collect();
    h.edit_ids(&listing, DEVICES).await;
    let other = h.start_another();
    let receivers = [h.addr(), other.addr];

    let mut uploads = Vec::new();
    let mut rng = rand::rng();
    for id in &ids {
        for n in 0..FILES_PER_DEVICE {
            let path = format!("day-{}/log-{n}.csv", n % 3);
            let content = format!("{} {n}\n", id.masked()).repeat(1 + n * 50).into_bytes();
            let targets = if n % 3 == 0 { receivers.to_vec() } else { vec![receivers[rng.random_range(0..2)]] };
            for addr in targets {
                uploads.push((addr, id.clone(), path.clone(), content.clone()));
            }
        }
    }
    let answers = futures_util::future::join_all(
        uploads.iter().map(|(addr, id, path, content)| h.upload_retrying(*addr, id, path, content)),
    )
    .await;
    for ((_, _, path, _), (status, body)) in uploads.iter().zip(&answers) {
        assert!(matches!(status, 200 | 201), "{path}: {status} {body}");
        assert_eq!(body["stored_as"].as_str(), Some(path.as_str()), "stored under its own name");
    }

    let mut expected = BTreeMap::new();
    for (_, id, path, content) in &uploads {
        expected.insert(format!("{}/{path}", id.reveal()), content.clone());
        let line = RelPath::parse(path).expect("path").checksum_line(&digest(content));
        expected.insert(format!("{}/{path}.sha256", id.reveal()), line.into_bytes());
    }
    let objects = h.objects().await;
    assert_eq!(objects, expected.keys().cloned().collect::<Vec<_>>(), "every file exactly once, nothing else");
    for object in &objects {
        assert!(h.read(object).await == expected[object], "{object}: other bytes than sent");
    }

    let mut files: Vec<(String, String, u64)> = expected
        .iter()
        .filter(|(name, _)| !name.ends_with(".sha256"))
        .map(|(name, content)| {
            let (id, path) = name.split_once('/').expect("device folder");
            (id.to_owned(), path.to_owned(), content.len() as u64)
        })
        .collect();
    files.sort();
    for _ in receivers {
        assert_eq!(stored_listing(&h).await, files, "the inventory is rebuilt from the store alone");
    }
    for addr in receivers {
        let mut shown = 0;
        // Bounded: a few refreshes' worth.
        for _ in 0..50 {
            shown = files_on_status(&h, addr).await;
            if shown == files.len() as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(shown, files.len() as u64, "{addr}'s status shows the uploads the other receiver took too");
    }
    other.stop().expect("stopped");
}

/// Files over all devices, as `GET /v1/devices` of the receiver at `addr` shows them.
pub async fn files_on_status(h: &Harness, addr: std::net::SocketAddr) -> u64 {
    let url = format!("http://{addr}{}", endpoint::DEVICES);
    let report: serde_json::Value = h.http.get(url).send().await.expect("answers").json().await.expect("JSON");
    report["devices"].as_array().expect("devices").iter().map(|d| d["files"].as_u64().expect("files")).sum()
}

#[tokio::test]
async fn receivers_sharing_a_folder_store_every_file_once() {
    check_shared_store(Backend::Disk).await;
}

#[tokio::test]
async fn receivers_sharing_a_bucket_store_every_file_once() {
    let Some(backend) = Backend::s3() else { return };
    check_shared_store(backend).await;
}

#[tokio::test]
async fn a_bucket_that_refuses_the_key_stops_start_up() {
    let Some(Backend::S3(settings)) = Backend::s3() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ids_file = dir.path().join("ids.txt");
    std::fs::write(&ids_file, format!("{DEVICE}\n")).expect("ids");
    let store = logferry_receiver::StoreLocation::S3(S3Settings { secret_access_key: "wrong".to_owned(), ..settings });
    let config = logferry_receiver::Config::new(logferry_receiver::Options::new(ids_file, store)).expect("valid");
    let err = logferry_receiver::open(&config).await.expect_err("a wrong secret is refused at start");
    let text = err.to_string();
    assert!(text.starts_with("cannot use the object store s3://"), "{text}");
    assert!(!text.contains("wrong"), "the secret is never shown: {text}");
}
