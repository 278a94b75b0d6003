//! Several small files in one request (`POST /v1/upload/batch`): each file
//! is judged, checked and stored as a single upload of it would be, and a
//! batch that breaks the batch rules stores nothing. Tests as data: each
//! case is a batch as sent, and what must come back and be stored.

use logferry_common::signing::SignedFields;
use logferry_common::wire::{BATCH_FILE_MAX, BATCH_MAX_FILES, BatchEntry, BatchManifest, endpoint};
use logferry_receiver::Limits;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::harness::{Backend, Harness, answer, device, digest, now, signed_head};

/// One file as a case sends it.
#[derive(Clone)]
struct File {
    path: String,
    content: Vec<u8>,
    /// What the manifest declares, when not the content's own.
    declared_sha256: Option<String>,
    /// Bytes sent in its part, when not the content.
    sent: Option<Vec<u8>>,
    zstd: bool,
}

fn file(path: &str, content: &[u8]) -> File {
    File { path: path.to_owned(), content: content.to_vec(), declared_sha256: None, sent: None, zstd: false }
}

/// How the request goes wrong, if it does.
#[derive(Clone, Copy, PartialEq)]
enum Twist {
    None,
    /// One file part fewer than the manifest lists.
    MissingPart,
    /// A field after the last file.
    ExtraField,
    /// The signature covers another manifest.
    SignedOtherManifest,
}

struct Case {
    name: &'static str,
    files: Vec<File>,
    twist: Twist,
    /// The answer's status, and for a 200 each file's outcome or error code.
    status: u16,
    results: Vec<&'static str>,
    /// Data files stored afterwards.
    stored: Vec<&'static str>,
}

fn manifest_of(files: &[File]) -> String {
    let files = files
        .iter()
        .map(|f| BatchEntry {
            path: f.path.clone(),
            sha256: f.declared_sha256.clone().unwrap_or_else(|| digest(&f.content).to_hex()),
            size: f.content.len() as u64,
            encoding: f.zstd.then_some(logferry_common::wire::Encoding::Zstd),
        })
        .collect();
    serde_json::to_string(&BatchManifest { files }).expect("manifest")
}

async fn send(h: &Harness, files: &[File], twist: Twist) -> (u16, Value) {
    let manifest = manifest_of(files);
    let signed_manifest = if twist == Twist::SignedOtherManifest { manifest_of(&files[1..]) } else { manifest.clone() };
    let fields = SignedFields::body(signed_manifest.as_bytes());
    let auth = signed_head(&device(), "POST", endpoint::UPLOAD_BATCH, now(), Some(&fields));
    let mut form = Form::new().text("manifest", manifest);
    let parts = if twist == Twist::MissingPart { &files[..files.len() - 1] } else { files };
    for f in parts {
        let bytes = match (&f.sent, f.zstd) {
            (Some(sent), _) => sent.clone(),
            (None, true) => zstd::bulk::compress(&f.content, 3).expect("compress"),
            (None, false) => f.content.clone(),
        };
        form = form.part("file", Part::bytes(bytes));
    }
    if twist == Twist::ExtraField {
        form = form.text("path", "x.log");
    }
    let request = h.http.post(h.url(endpoint::UPLOAD_BATCH)).header("Authorization", auth).multipart(form);
    answer(request.send().await.expect("receiver answers")).await
}

async fn check(h: &Harness, case: &Case) {
    let (status, body) = send(h, &case.files, case.twist).await;
    assert_eq!(status, case.status, "{}: {body}", case.name);
    if status == 200 {
        let results: Vec<String> = body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| match (&r["delivered"], &r["refused"]) {
                (Value::Object(d), _) => d["outcome"].as_str().expect("outcome").to_owned(),
                (_, Value::Object(e)) => e["code"].as_str().expect("code").to_owned(),
                _ => panic!("{}: a result neither delivered nor refused: {r}", case.name),
            })
            .collect();
        assert_eq!(results, case.results, "{}", case.name);
    } else {
        assert!(body["code"].is_string(), "{}: {body}", case.name);
    }
    let mut stored: Vec<String> = h
        .objects()
        .await
        .into_iter()
        .filter_map(|name| name.split_once('/').map(|(_, path)| path.to_owned()))
        .filter(|path| !path.ends_with(".sha256"))
        .collect();
    stored.sort();
    assert_eq!(stored, case.stored, "{}", case.name);
    for f in case.files.iter().filter(|f| case.stored.contains(&f.path.as_str())) {
        let name = format!("{}/{}", crate::harness::DEVICE, f.path);
        assert_eq!(h.read(&name).await, f.content, "{}: {}", case.name, f.path);
        let line = String::from_utf8(h.read(&format!("{name}.sha256")).await).expect("text");
        let file_name = f.path.rsplit('/').next().expect("name");
        assert_eq!(line, format!("{}  {file_name}\n", digest(&f.content)), "{}: {}", case.name, f.path);
    }
}

fn cases() -> Vec<Case> {
    let a = file("day/a.log", b"first file\n");
    let b = file("day/b.log", b"second file\n");
    let c = file("other/c.log", b"");
    let mut wrong = file("day/wrong.log", b"what the device has\n");
    wrong.declared_sha256 = Some(digest(b"something else").to_hex());
    let mut long = file("day/long.log", b"declared\n");
    long.sent = Some(b"declared, and more\n".to_vec());
    let mut packed = file("day/packed.log", &b"sensor=1 value=42\n".repeat(200));
    packed.zstd = true;
    let mut broken = file("day/broken.log", b"not zstd at all\n");
    broken.zstd = true;
    broken.sent = Some(b"not zstd at all\n".to_vec());
    let too_many: Vec<File> = (0..=BATCH_MAX_FILES).map(|i| file(&format!("many/{i}.log"), b"x")).collect();
    let big = file("big.bin", &vec![7; BATCH_FILE_MAX as usize + 1]);
    let mut endless = file("endless.log", b"small, it says\n");
    endless.sent = Some(vec![b'x'; 2 * BATCH_FILE_MAX as usize]);
    vec![
        Case {
            name: "every file stored, an empty one too",
            files: vec![a.clone(), b.clone(), c.clone()],
            twist: Twist::None,
            status: 200,
            results: vec!["stored", "stored", "stored"],
            stored: vec!["day/a.log", "day/b.log", "other/c.log"],
        },
        Case {
            name: "the same again: already stored",
            files: vec![a.clone(), b.clone()],
            twist: Twist::None,
            status: 200,
            results: vec!["already_stored", "already_stored"],
            stored: vec!["day/a.log", "day/b.log", "other/c.log"],
        },
        Case {
            name: "wrong bytes refuse their file alone",
            files: vec![wrong, long, broken, packed.clone()],
            twist: Twist::None,
            status: 200,
            results: vec!["checksum_mismatch", "size_mismatch", "malformed_upload", "stored"],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "a part missing stores nothing",
            files: vec![file("x/1.log", b"1"), file("x/2.log", b"2")],
            twist: Twist::MissingPart,
            status: 400,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "a field after the last file stores nothing",
            files: vec![file("x/1.log", b"1")],
            twist: Twist::ExtraField,
            status: 400,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "a signature over another manifest",
            files: vec![file("x/1.log", b"1"), file("x/2.log", b"2")],
            twist: Twist::SignedOtherManifest,
            status: 401,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "too many files",
            files: too_many,
            twist: Twist::None,
            status: 400,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "a part longer than any file of a batch stores nothing",
            files: vec![file("x/1.log", b"1"), endless],
            twist: Twist::None,
            status: 400,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
        Case {
            name: "a file too large for a batch",
            files: vec![big],
            twist: Twist::None,
            status: 400,
            results: vec![],
            stored: vec!["day/a.log", "day/b.log", "day/packed.log", "other/c.log"],
        },
    ]
}

#[tokio::test]
async fn batches_on_disk() {
    let h = Harness::start();
    for case in cases() {
        check(&h, &case).await;
    }
}

#[tokio::test]
async fn batches_on_s3() {
    let Some(backend) = Backend::s3() else { return };
    let h = Harness::start_on(backend);
    for case in cases().into_iter().take(3) {
        check(&h, &case).await;
    }
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_refused_alone() {
    let h = Harness::start_with(Limits { max_file_size: 10, ..Limits::default() });
    let case = Case {
        name: "over --max-file-size",
        files: vec![file("small.log", b"tiny"), file("large.log", b"more than ten bytes")],
        twist: Twist::None,
        status: 200,
        results: vec!["stored", "too_large"],
        stored: vec!["small.log"],
    };
    check(&h, &case).await;
}
