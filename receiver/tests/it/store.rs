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
    Send { path: &'static str, content: Vec<u8>, status: u16, stored_as: String },
    /// Upload claiming another checksum than the bytes have: refused, and
    /// nothing becomes visible.
    SendCorrupted { path: &'static str, content: Vec<u8> },
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

fn conflict_name(path: &str, content: &[u8]) -> String {
    RelPath::parse(path).expect("valid path").conflict_path(&digest(content)).to_string()
}

fn send(path: &'static str, content: &[u8], status: u16, stored_as: &str) -> Step {
    Step::Send { path, content: content.to_vec(), status, stored_as: stored_as.to_owned() }
}

fn cases() -> Vec<Case> {
    let (one, two) = (b"sensor,value\n1,2\n".as_slice(), b"sensor,value\n9,9\n".as_slice());
    let day_conflict = conflict_name("data/day.csv", two);
    let not_a_checksum = b"not a checksum".as_slice();
    let sidecar_conflict = conflict_name("data/day.csv.sha256", not_a_checksum);
    vec![
        Case {
            name: "a verified upload is stored with its checksum file",
            steps: vec![
                send("nested/dir/day 1 été.csv", one, 201, "nested/dir/day 1 été.csv"),
                send("empty.log", b"", 201, "empty.log"),
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
                Step::SendCorrupted { path: "small.log", content: one.to_vec() },
                Step::SendCorrupted { path: "big.bin", content: large(2) },
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
                // A device file that happens to use a checksum file's name.
                send("data/day.csv.sha256", not_a_checksum, 201, &sidecar_conflict),
            ],
            afterwards: [
                stored("data/day.csv", one),
                stored(&day_conflict, two),
                stored(&sidecar_conflict, not_a_checksum),
            ]
            .concat(),
        },
        Case {
            name: "a data file whose checksum name is taken by a device file goes to a conflict name",
            steps: vec![
                send("x.log.sha256", not_a_checksum, 201, "x.log.sha256"),
                send("x.log", one, 201, &conflict_name("x.log", one)),
            ],
            afterwards: [stored("x.log.sha256", not_a_checksum), stored(&conflict_name("x.log", one), one)].concat(),
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
/// at the end, everything in the device's folder.
async fn check(backend: &Backend, case: Case) {
    let h = Harness::start_on(backend.clone());
    let name = case.name;
    let mut expected: BTreeMap<String, Vec<u8>> = case.afterwards.into_iter().collect();
    for step in case.steps {
        match step {
            Step::Send { path, content, status, stored_as } => {
                let (got, body) = h.upload(path, &content).await;
                assert_eq!((got, body["stored_as"].as_str()), (status, Some(stored_as.as_str())), "{name}: {body}");
            }
            Step::SendCorrupted { path, content } => {
                let before = h.objects().await;
                let mut wrong = content.clone();
                wrong[0] ^= 1;
                let (got, body) = send_claiming(&h, path, &wrong, &content).await;
                assert_eq!((got, body["code"].as_str()), (422, Some("checksum_mismatch")), "{name}: {body}");
                assert_eq!(h.objects().await, before, "{name}: something became visible");
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
    std::fs::write(h.ids_file(), listing).expect("ids");
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
        let ready = logferry_receiver::open(&h.config()).expect("opens");
        let mut listed: Vec<(String, String, u64)> = ready
            .state
            .store
            .inventory()
            .await
            .expect("inventory")
            .into_iter()
            .map(|StoredFile { device, path, size, .. }| (device.reveal().to_owned(), path.to_string(), size))
            .collect();
        listed.sort();
        assert_eq!(listed, files, "the inventory is rebuilt from the store alone");
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
async fn files_on_status(h: &Harness, addr: std::net::SocketAddr) -> u64 {
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
    let config = logferry_receiver::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ids_file: dir.path().join("ids.txt"),
        store: logferry_receiver::StoreLocation::S3(S3Settings { secret_access_key: "wrong".to_owned(), ..settings }),
        limits: Default::default(),
        tls: None,
        stale_after: logferry_receiver::DEFAULT_STALE_AFTER,
        fleet_refresh: None,
        trusted_proxies: Default::default(),
    };
    std::fs::write(&config.ids_file, format!("{DEVICE}\n")).expect("ids");
    let err = logferry_receiver::open(&config).expect_err("a wrong secret is refused at start");
    let text = err.to_string();
    assert!(text.starts_with("cannot use the object store s3://"), "{text}");
    assert!(!text.contains("wrong"), "the secret is never shown: {text}");
}
