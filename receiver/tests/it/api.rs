//! The HTTP API: what is stored, and every way a request is refused.

use logferry_common::signing::{AuthHeader, SignedFields, SignedRequest, verify_receipt};
use logferry_common::wire::endpoint;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::harness::*;

/// How a test request is signed.
enum Auth {
    /// Correctly, by the registered device, over the request's own fields.
    Valid,
    None,
    Raw(String),
    /// By the registered device at another time.
    At(u64),
    /// By the registered device, but over other upload fields.
    Over(&'static str, &'static [u8]),
    /// By the registered device, for another endpoint.
    ForEndpoint(&'static str, &'static str),
    /// By a device that is not in the ids file.
    Stranger,
}

/// What the receiver must answer.
enum Expect {
    Refused(u16, &'static str),
    /// 201, stored under this path inside the device's folder.
    Stored(&'static str),
}

struct Case {
    name: &'static str,
    auth: Auth,
    upload: Upload,
    expect: Expect,
}

enum Body {
    Form(Form),
    /// A hand-made `multipart/form-data` body with boundary `XyZ`.
    Multipart(Vec<u8>),
    Plain(&'static [u8]),
}

/// A body, and the fields a valid signature covers: the declared ones, as
/// text, valid or not (the receiver checks the signature over what it read
/// before it judges it), or nominal ones for bodies whose fields cannot be
/// read (refused before any signature check).
struct Upload {
    body: Body,
    signs: SignedFields,
}

fn declared(path: &str, sha256: &str, size: &str, content: &[u8]) -> Upload {
    let signs = SignedFields { path: path.to_owned(), sha256: sha256.to_owned(), size: size.to_owned() };
    Upload { body: Body::Form(upload_form(path, sha256, size, content)), signs }
}

fn nominal() -> SignedFields {
    SignedFields::from(&claim("a.log", CONTENT))
}

const CONTENT: &[u8] = b"sensor,value\n1,2\n";

fn good_form(path: &str) -> Upload {
    declared(path, &digest(CONTENT).to_hex(), &CONTENT.len().to_string(), CONTENT)
}

fn fields(parts: &[(&str, &[u8])]) -> Upload {
    let form =
        parts.iter().fold(Form::new(), |form, (name, value)| form.part(name.to_string(), Part::bytes(value.to_vec())));
    Upload { body: Body::Form(form), signs: nominal() }
}

/// The fields of a valid upload of `content` as `path`, by hand, with
/// `extra_header` added to the path part's headers; `close` ends the body
/// properly, otherwise it stops right after the file's bytes.
fn hand_made(path: &str, content: &[u8], extra_header: &str, close: bool) -> Upload {
    let claim = claim(path, content);
    let mut body = Vec::new();
    for (name, value) in
        [("path", path.to_owned()), ("sha256", claim.sha256.to_hex()), ("size", content.len().to_string())]
    {
        let extra = if name == "path" { extra_header } else { "" };
        body.extend(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n{extra}\r\n{value}\r\n").bytes(),
        );
    }
    body.extend(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n");
    body.extend(content);
    if close {
        body.extend(b"\r\n--XyZ--\r\n");
    }
    Upload { body: Body::Multipart(body), signs: SignedFields::from(&claim) }
}

fn hostile_cases() -> Vec<Case> {
    let sha = digest(CONTENT).to_hex();
    let size = CONTENT.len().to_string();
    let refused = |name, auth, upload, status, code| Case { name, auth, upload, expect: Expect::Refused(status, code) };
    let stored_as = |name, upload, path| Case { name, auth: Auth::Valid, upload, expect: Expect::Stored(path) };
    let stored = |name, path: &'static str| Case {
        name,
        auth: Auth::Valid,
        upload: good_form(path),
        expect: Expect::Stored(path),
    };
    let good = || good_form("a.log");
    let key = key(&device()).key_id().clone();
    let sig = "ab".repeat(32);
    let header = |params: String| Auth::Raw(format!("LOGFERRY-HMAC-SHA256 {params}"));
    vec![
        // Signatures.
        refused("no Authorization header", Auth::None, good(), 401, "missing_auth"),
        refused("wrong scheme", Auth::Raw("Bearer abc".into()), good(), 401, "malformed_auth"),
        refused("garbled header", header("nonsense".into()), good(), 401, "malformed_auth"),
        refused(
            "signature missing",
            header(format!("KeyId={key}, Timestamp={}", now())),
            good(),
            401,
            "malformed_auth",
        ),
        refused(
            "signature too short",
            header(format!("KeyId={key}, Timestamp={}, Signature=abcd", now())),
            good(),
            401,
            "malformed_auth",
        ),
        refused(
            "key id not hex",
            header(format!("KeyId={}, Timestamp={}, Signature={sig}", "z".repeat(32), now())),
            good(),
            401,
            "malformed_auth",
        ),
        refused(
            "key id given twice",
            header(format!("KeyId={key}, KeyId={key}, Timestamp={}, Signature={sig}", now())),
            good(),
            401,
            "malformed_auth",
        ),
        refused(
            "garbled signature",
            header(format!("KeyId={key}, Timestamp={}, Signature={sig}", now())),
            good(),
            401,
            "bad_signature",
        ),
        refused("unknown device", Auth::Stranger, good(), 401, "unknown_device"),
        refused("expired timestamp", Auth::At(now() - 3600), good(), 401, "clock_skew"),
        refused("timestamp in the future", Auth::At(now() + 3600), good(), 401, "clock_skew"),
        refused("replayed for another path", Auth::Over("b.log", CONTENT), good(), 401, "bad_signature"),
        refused("replayed with another body", Auth::Over("a.log", b"other"), good(), 401, "bad_signature"),
        refused(
            "signature of the auth check",
            Auth::ForEndpoint("GET", endpoint::AUTH_CHECK),
            good(),
            401,
            "bad_signature",
        ),
        refused(
            "signature for another method",
            Auth::ForEndpoint("PUT", endpoint::UPLOAD),
            good(),
            401,
            "bad_signature",
        ),
        // Paths: `..` in every position, absolute, backslash, drive letters.
        refused("leading ..", Auth::Valid, good_form("../escape.log"), 400, "invalid_path"),
        refused("middle ..", Auth::Valid, good_form("a/../../escape.log"), 400, "invalid_path"),
        refused("trailing ..", Auth::Valid, good_form("a/.."), 400, "invalid_path"),
        refused("only ..", Auth::Valid, good_form(".."), 400, "invalid_path"),
        refused("absolute path", Auth::Valid, good_form("/etc/cron.d/x"), 400, "invalid_path"),
        refused("only /", Auth::Valid, good_form("/"), 400, "invalid_path"),
        refused("backslash traversal", Auth::Valid, good_form("..\\escape.log"), 400, "invalid_path"),
        refused("backslash inside", Auth::Valid, good_form("a\\b.log"), 400, "invalid_path"),
        refused("drive letter", Auth::Valid, good_form("C:/x.log"), 400, "invalid_path"),
        refused("relative drive", Auth::Valid, good_form("c:x.log"), 400, "invalid_path"),
        refused("empty component", Auth::Valid, good_form("a//b.log"), 400, "invalid_path"),
        refused("trailing slash", Auth::Valid, good_form("a/"), 400, "invalid_path"),
        refused("dot component", Auth::Valid, good_form("./a.log"), 400, "invalid_path"),
        refused("only .", Auth::Valid, good_form("."), 400, "invalid_path"),
        refused("empty path", Auth::Valid, good_form(""), 400, "invalid_path"),
        refused("NUL byte", Auth::Valid, good_form("a\0.log"), 400, "invalid_path"),
        refused("newline", Auth::Valid, good_form("a\n.log"), 400, "invalid_path"),
        refused("escape character", Auth::Valid, good_form("a\u{1b}[31m.log"), 400, "invalid_path"),
        refused("DEL", Auth::Valid, good_form("a\u{7f}.log"), 400, "invalid_path"),
        refused("C1 control", Auth::Valid, good_form("a\u{85}.log"), 400, "invalid_path"),
        // Invisible format characters, which make a name read as another.
        refused("right-to-left override", Auth::Valid, good_form("evil\u{202e}gol.sh"), 400, "invalid_path"),
        refused("zero-width space", Auth::Valid, good_form("a\u{200b}.log"), 400, "invalid_path"),
        refused("byte order mark", Auth::Valid, good_form("\u{feff}a.log"), 400, "invalid_path"),
        refused(
            "overlong name",
            Auth::Valid,
            good_form(Box::leak("n".repeat(201).into_boxed_str())),
            400,
            "invalid_path",
        ),
        refused(
            "overlong path",
            Auth::Valid,
            good_form(Box::leak(vec!["d".repeat(99); 11].join("/").into_boxed_str())),
            400,
            "invalid_path",
        ),
        refused(
            "too deep",
            Auth::Valid,
            good_form(Box::leak(vec!["d"; 33].join("/").into_boxed_str())),
            400,
            "invalid_path",
        ),
        // Unicode look-alikes of `/` and `.` are ordinary characters here:
        // they stay one name, inside the device's folder.
        stored("division slash", "..\u{2215}..\u{2215}etc\u{2215}passwd"),
        stored("fullwidth solidus", "..\u{ff0f}escape.log"),
        stored("one dot leader", "\u{2024}\u{2024}/x.log"),
        stored("fullwidth full stop", "\u{ff0e}\u{ff0e}/y.log"),
        stored("dots with a space", ".. /z.log"),
        // Fields.
        refused(
            "checksum not hex",
            Auth::Valid,
            declared("a.log", &"z".repeat(64), &size, CONTENT),
            400,
            "malformed_upload",
        ),
        refused(
            "checksum too short",
            Auth::Valid,
            declared("a.log", &sha[..63], &size, CONTENT),
            400,
            "malformed_upload",
        ),
        refused(
            "checksum too long",
            Auth::Valid,
            declared("a.log", &format!("{sha}0"), &size, CONTENT),
            400,
            "malformed_upload",
        ),
        refused("size not a number", Auth::Valid, declared("a.log", &sha, "ten", CONTENT), 400, "malformed_upload"),
        refused("negative size", Auth::Valid, declared("a.log", &sha, "-1", CONTENT), 400, "malformed_upload"),
        refused("size with a plus", Auth::Valid, declared("a.log", &sha, "+17", CONTENT), 400, "malformed_upload"),
        refused(
            "size overflows",
            Auth::Valid,
            declared("a.log", &sha, "99999999999999999999999", CONTENT),
            400,
            "malformed_upload",
        ),
        refused(
            "fields out of order",
            Auth::Valid,
            fields(&[("sha256", sha.as_bytes()), ("path", b"a.log"), ("size", size.as_bytes()), ("file", CONTENT)]),
            400,
            "malformed_upload",
        ),
        refused(
            "path given twice",
            Auth::Valid,
            fields(&[("path", b"a.log"), ("path", b"b.log"), ("sha256", sha.as_bytes()), ("file", CONTENT)]),
            400,
            "malformed_upload",
        ),
        refused(
            "file field missing",
            Auth::Valid,
            fields(&[("path", b"a.log"), ("sha256", sha.as_bytes()), ("size", size.as_bytes())]),
            400,
            "malformed_upload",
        ),
        refused("no fields at all", Auth::Valid, fields(&[]), 400, "malformed_upload"),
        refused(
            "field after the file",
            Auth::Valid,
            Upload {
                body: Body::Form(upload_form("a.log", &sha, &size, CONTENT).text("extra", "1")),
                signs: nominal(),
            },
            400,
            "malformed_upload",
        ),
        refused(
            "path field far over the path limit",
            Auth::Valid,
            fields(&[
                ("path", "a".repeat(5000).as_bytes()),
                ("sha256", sha.as_bytes()),
                ("size", size.as_bytes()),
                ("file", CONTENT),
            ]),
            400,
            "invalid_path",
        ),
        refused(
            "path not UTF-8",
            Auth::Valid,
            fields(&[("path", b"a\xff.log"), ("sha256", sha.as_bytes()), ("size", size.as_bytes()), ("file", CONTENT)]),
            400,
            "invalid_path",
        ),
        refused(
            "oversized sha256 field",
            Auth::Valid,
            fields(&[("path", b"a.log"), ("sha256", "a".repeat(5000).as_bytes()), ("size", size.as_bytes())]),
            400,
            "malformed_upload",
        ),
        refused(
            "field name in another case",
            Auth::Valid,
            fields(&[("Path", b"a.log"), ("sha256", sha.as_bytes()), ("size", size.as_bytes()), ("file", CONTENT)]),
            400,
            "malformed_upload",
        ),
        refused(
            "size with leading zeros",
            Auth::Valid,
            declared("a.log", &sha, "017", CONTENT),
            400,
            "malformed_upload",
        ),
        refused(
            "timestamp with a leading zero",
            header(format!("KeyId={key}, Timestamp=0{}, Signature={sig}", now())),
            good(),
            401,
            "malformed_auth",
        ),
        stored_as("checksum in uppercase", declared("upper.log", &sha.to_uppercase(), &size, CONTENT), "upper.log"),
        refused(
            "oversized part headers",
            Auth::Valid,
            hand_made("a.log", CONTENT, &format!("X-Padding: {}\r\n", "p".repeat(100_000)), true),
            400,
            "malformed_upload",
        ),
        refused(
            "body cut off before its closing boundary",
            Auth::Valid,
            hand_made("cut.log", CONTENT, "", false),
            400,
            "malformed_upload",
        ),
        refused(
            "body not multipart",
            Auth::Valid,
            Upload { body: Body::Plain(CONTENT), signs: nominal() },
            400,
            "malformed_upload",
        ),
        // Content.
        refused(
            "fewer bytes than declared",
            Auth::Valid,
            declared("a.log", &sha, "100", CONTENT),
            422,
            "size_mismatch",
        ),
        refused("more bytes than declared", Auth::Valid, declared("a.log", &sha, "3", CONTENT), 422, "size_mismatch"),
        refused(
            "bytes do not match the checksum",
            Auth::Valid,
            declared("a.log", &sha, &size, b"sensor,value\n1,3\n"),
            422,
            "checksum_mismatch",
        ),
    ]
}

/// Sends `case` and checks its answer, that nothing but an accepted file
/// and its checksum file was written, only inside the device's folder, and
/// that staging is empty again.
async fn check(h: &Harness, case: Case) {
    let before = h.stored_files();
    let (status, body, receipt) = send_case(h, case.auth, case.upload).await;
    assert!(!body.to_string().contains(DEVICE), "{}: answer reveals the ID", case.name);
    assert!(receipt != Receipt::Forged, "{}: an answer with a receipt that does not verify", case.name);
    if status < 300 {
        assert_eq!(receipt, Receipt::Valid, "{}: a success without a receipt", case.name);
    }
    let after = h.stored_files();
    match case.expect {
        Expect::Refused(expected_status, code) => {
            assert_eq!((status, body["code"].as_str()), (expected_status, Some(code)), "{}: {body}", case.name);
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{}: no error text: {body}", case.name);
            assert_eq!(after, before, "{}: something was stored", case.name);
        }
        Expect::Stored(path) => {
            assert_eq!((status, body["stored_as"].as_str()), (201, Some(path)), "{}: {body}", case.name);
            let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).cloned().collect();
            assert_eq!(new, [format!("{DEVICE}/{path}"), format!("{DEVICE}/{path}.sha256")], "{}", case.name);
        }
    }
    let mut top: Vec<_> = std::fs::read_dir(h.dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
    top.sort();
    assert_eq!(top, ["ids.txt", "store"], "{}: nothing written beside the store", case.name);
}

/// Whether an answer carried a receipt, and whether it verified.
#[derive(Debug, PartialEq, Eq)]
enum Receipt {
    Valid,
    Absent,
    Forged,
}

async fn send_case(h: &Harness, auth: Auth, upload: Upload) -> (u16, Value, Receipt) {
    let own = upload.signs;
    let head = |id: &_, timestamp| signed_head(id, "POST", endpoint::UPLOAD, timestamp, Some(&own));
    let header = match auth {
        Auth::Valid => Some(head(&device(), now())),
        Auth::None => None,
        Auth::Raw(text) => Some(text),
        Auth::At(timestamp) => Some(head(&device(), timestamp)),
        Auth::Over(path, content) => {
            Some(authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim(path, content))))
        }
        Auth::ForEndpoint(method, other) => Some(authorization(&device(), method, other, now(), None)),
        Auth::Stranger => Some(head(&stranger(), now())),
    };
    let request = h.http.post(h.url(endpoint::UPLOAD));
    let request = match upload.body {
        Body::Form(form) => request.multipart(form),
        Body::Multipart(bytes) => request.header("Content-Type", "multipart/form-data; boundary=XyZ").body(bytes),
        Body::Plain(bytes) => request.header("Content-Type", "application/octet-stream").body(bytes),
    };
    let request = match &header {
        Some(header) => request.header("Authorization", header.as_str()),
        None => request,
    };
    let response = request.send().await.expect("receiver answers");
    let status = response.status().as_u16();
    let tag = response.headers().get("x-logferry-receipt").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = response.bytes().await.expect("body");
    let signature = header.as_deref().and_then(|h| h.parse::<AuthHeader>().ok()).map(|h| h.signature);
    let receipt = match (tag, signature) {
        (None, _) => Receipt::Absent,
        (Some(tag), Some(sig)) if verify_receipt(&key(&device()), status, &sig, &bytes, &tag) => Receipt::Valid,
        _ => Receipt::Forged,
    };
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("HTTP {status}: not JSON: {bytes:?}"));
    (status, body, receipt)
}

#[tokio::test]
async fn the_hostile_input_suite() {
    let h = Harness::start();
    let cases = hostile_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        check(&h, case).await;
    }
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths_get_json_errors() {
    let h = Harness::start();
    for (method, path, status, code) in [
        ("GET", endpoint::UPLOAD, 405, "method_not_allowed"),
        ("PUT", endpoint::UPLOAD, 405, "method_not_allowed"),
        ("POST", endpoint::HEALTH, 405, "method_not_allowed"),
        ("POST", endpoint::AUTH_CHECK, 405, "method_not_allowed"),
        ("GET", "/upload.php", 404, "not_found"),
        ("GET", "/v1/upload/../../etc/passwd", 404, "not_found"),
    ] {
        let response = h.http.request(method.parse().expect("method"), h.url(path)).send().await.expect("answer");
        let (got, body) = answer(response).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn health_and_auth_check() {
    let h = Harness::start();
    let (status, body) = answer(h.http.get(h.url(endpoint::HEALTH)).send().await.expect("answer")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let signed = |id, method: &str, endpoint: &str| authorization(id, method, endpoint, now(), None);
    let cases = [
        (Some(signed(&device(), "GET", endpoint::AUTH_CHECK)), 200, None),
        (None, 401, Some("missing_auth")),
        (Some(signed(&stranger(), "GET", endpoint::AUTH_CHECK)), 401, Some("unknown_device")),
        // A signature made for another endpoint does not open this one.
        (Some(signed(&device(), "POST", endpoint::UPLOAD)), 401, Some("bad_signature")),
    ];
    for (auth, status, code) in cases {
        let mut request = h.http.get(h.url(endpoint::AUTH_CHECK));
        if let Some(auth) = &auth {
            request = request.header("Authorization", auth);
        }
        let (got, body) = answer(request.send().await.expect("answer")).await;
        assert_eq!((got, body["code"].as_str()), (status, code), "{body}");
        if status == 200 {
            assert_eq!(body["label"].as_str(), Some("bench-pi"));
        }
    }
}

#[tokio::test]
async fn a_verified_upload_is_stored_with_a_checksum_file_that_sha256sum_accepts() {
    let h = Harness::start();
    let (status, body) = h.upload("nested/dir/day 1 été.csv", CONTENT).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outcome"], "stored");
    assert_eq!(body["stored_as"], "nested/dir/day 1 été.csv");
    assert_eq!(body["sha256"], digest(CONTENT).to_hex());
    assert_eq!(body["size"], CONTENT.len());
    let folder = h.device_dir().join("nested/dir");
    assert_eq!(std::fs::read(folder.join("day 1 été.csv")).expect("stored"), CONTENT);
    assert_eq!(
        std::fs::read_to_string(folder.join("day 1 été.csv.sha256")).expect("checksum file"),
        format!("{}  day 1 été.csv\n", digest(CONTENT))
    );
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("day 1 été.csv.sha256")
        .current_dir(&folder)
        .output()
        .expect("sha256sum runs");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    let (status, body) = h.upload("empty.log", b"").await;
    assert_eq!((status, body["size"].as_u64()), (201, Some(0)), "{body}");
}

/// On disk, data and checksum file are placed with one folder fsync, so a
/// crash may keep either name; a re-send of the same bytes then finds a
/// checksum file for exactly them and gives them their name back.
#[tokio::test]
async fn a_resend_restores_a_data_file_whose_checksum_file_alone_survived_a_crash() {
    let h = Harness::start();
    assert_eq!(h.upload("a.log", CONTENT).await.0, 201);
    let before = h.stored_files();
    std::fs::remove_file(h.device_dir().join("a.log")).expect("remove");
    let (status, body) = h.upload("a.log", CONTENT).await;
    assert_eq!((status, body["stored_as"].as_str()), (201, Some("a.log")), "{body}");
    assert_eq!(h.stored_files(), before);
}

#[tokio::test]
async fn a_file_in_the_way_of_a_folder_is_a_conflict() {
    let h = Harness::start();
    assert_eq!(h.upload("a", CONTENT).await.0, 201);
    let (status, body) = h.upload("a/b.log", CONTENT).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("path_conflict")), "{body}");
    assert!(!body.to_string().contains(DEVICE));
}

#[tokio::test]
async fn a_symbolic_link_planted_in_the_store_is_never_followed() {
    let h = Harness::start();
    let outside = tempfile::tempdir().expect("tempdir");
    assert_eq!(h.upload("first.log", CONTENT).await.0, 201);
    std::os::unix::fs::symlink(outside.path(), h.device_dir().join("logs")).expect("plant link");
    std::os::unix::fs::symlink(outside.path().join("f.log"), h.device_dir().join("f.log")).expect("plant link");

    let (status, body) = h.upload("logs/x.log", CONTENT).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("path_conflict")), "{body}");
    let (status, body) = h.upload("f.log", CONTENT).await;
    assert_eq!(status, 201, "a link at the name is 'taken', so the upload goes to the conflict name: {body}");
    assert_ne!(body["stored_as"], "f.log");
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0, "nothing written outside the store");
}

#[tokio::test]
async fn edits_to_the_ids_file_apply_without_a_restart() {
    let h = Harness::start();
    let auth_check = |id| {
        let request = h
            .http
            .get(h.url(endpoint::AUTH_CHECK))
            .header("Authorization", authorization(&id, "GET", endpoint::AUTH_CHECK, now(), None));
        async move { request.send().await.expect("answer").status().as_u16() }
    };
    assert_eq!(auth_check(stranger()).await, 401);

    h.edit_ids(&format!("{DEVICE}\n{STRANGER} newcomer\n"), 2).await;
    assert_eq!(auth_check(stranger()).await, 200, "added device accepted");
    assert_eq!(auth_check(device()).await, 200);

    h.edit_ids(&format!("{STRANGER} newcomer\nnot-an-id\n"), 1).await;
    assert_eq!(auth_check(device()).await, 401, "removed device refused");
    assert_eq!(auth_check(stranger()).await, 200, "a malformed line does not lock out the rest");
}

#[tokio::test]
async fn unfinished_uploads_left_by_a_crash_are_removed_at_start() {
    let mut h = Harness::start();
    let staging = h.store().join(".staging");
    // A crashed receiver's folder (nobody holds its lock), and a file of a
    // receiver from before staging folders were per receiver.
    std::fs::create_dir(staging.join("0123456789abcdef01234567")).expect("plant");
    std::fs::write(staging.join("0123456789abcdef01234567/upload-left-by-a-crash"), b"partial").expect("plant");
    std::fs::write(staging.join("upload-left-by-an-older-receiver"), b"partial").expect("plant");
    h.restart();
    assert_eq!(staged_files(&h.store()), Vec::<std::path::PathBuf>::new());
    let folders: Vec<_> = std::fs::read_dir(&staging).expect("list").flatten().map(|e| e.file_name()).collect();
    assert_eq!(folders.len(), 1, "only the running receiver's own folder: {folders:?}");
    assert_eq!(h.upload("after.log", CONTENT).await.0, 201);
}

/// One request of [`multipart_and_request_line_details`].
struct Detail {
    what: &'static str,
    endpoint: &'static str,
    name: &'static str,
    preamble: &'static str,
    epilogue: &'static str,
    encoding: Option<&'static str>,
    status: u16,
    code: Option<&'static str>,
}

/// The multipart and request-line details PROTOCOL.md promises, each with
/// a correct signature over the fields as sent.
#[tokio::test]
async fn multipart_and_request_line_details() {
    let h = Harness::start();
    let plain = Detail {
        what: "",
        endpoint: endpoint::UPLOAD,
        name: "",
        preamble: "",
        epilogue: "",
        encoding: None,
        status: 201,
        code: None,
    };
    let cases = [
        Detail { what: "a preamble is ignored", name: "pre.log", preamble: "ignored text\r\n", ..plain },
        Detail { what: "an epilogue is ignored", name: "epi.log", epilogue: "ignored text\r\n", ..plain },
        Detail {
            what: "a percent-encoded request path is the same endpoint, signed as listed",
            endpoint: "/v1/%75pload",
            name: "pct.log",
            ..plain
        },
        Detail { what: "identity is no encoding", name: "id.log", encoding: Some("identity"), ..plain },
        Detail {
            what: "a Content-Encoding is refused",
            name: "gz.log",
            encoding: Some("gzip"),
            status: 415,
            code: Some("unsupported_encoding"),
            ..plain
        },
    ];
    for case in cases {
        let Upload { body: Body::Multipart(bytes), .. } = hand_made(case.name, CONTENT, "", true) else {
            unreachable!("hand_made makes a multipart body")
        };
        let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim(case.name, CONTENT)));
        let mut request = h
            .http
            .post(h.url(case.endpoint))
            .header("Authorization", auth)
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .body([case.preamble.as_bytes(), &bytes, case.epilogue.as_bytes()].concat());
        if let Some(encoding) = case.encoding {
            request = request.header("Content-Encoding", encoding);
        }
        let (status, answer) = answer(request.send().await.expect("answer")).await;
        assert_eq!((status, answer["code"].as_str()), (case.status, case.code), "{}: {answer}", case.what);
    }
}

/// A signed request with a stale timestamp gets a signed refusal carrying
/// the receiver's time, and leaves nothing on the status page (a replay of
/// an old request would look the same). The device then signs by that time
/// and says, signed, by how much it corrected: that becomes its clock
/// offset on the status page, not a rejection. The `ClockOffset` is covered
/// by the signature.
#[tokio::test]
async fn a_stale_signed_request_learns_the_receivers_time_and_the_corrected_one_leaves_the_clock_offset() {
    let h = Harness::start();
    let get = |auth: String| h.http.get(h.url(endpoint::AUTH_CHECK)).header("Authorization", auth).send();
    let offset_shown = || async {
        let report: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
        report["devices"][0].clone()
    };
    // Device clocks: 3 h behind, 2 days ahead, the year 2000.
    let cases = [now() - 3 * 3600, now() + 2 * 86_400, 946_684_800];
    for (n, device_time) in cases.into_iter().enumerate() {
        let auth = authorization(&device(), "GET", endpoint::AUTH_CHECK, device_time, None);
        let signature = auth.parse::<AuthHeader>().expect("own header").signature;
        let response = get(auth).await.expect("answer");
        let tag = response.headers().get("x-logferry-receipt").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.expect("body");
        assert!(verify_receipt(&key(&device()), 401, &signature, &bytes, &tag.expect("signed")), "{device_time}");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["code"], "clock_skew", "{body}");
        let receiver_time = body["receiver_time"].as_u64().expect("receiver_time");
        assert!(receiver_time.abs_diff(now()) <= 2, "{body}");
        if n == 0 {
            assert_eq!(offset_shown().await["clock_offset"], Value::Null, "a stale request sets nothing");
        }

        let clock_offset = device_time as i64 - receiver_time as i64;
        let corrected = SignedRequest {
            method: "GET",
            path: endpoint::AUTH_CHECK,
            timestamp: receiver_time,
            clock_offset,
            fields: None,
        }
        .authorization(&key(&device()));
        let tampered = AuthHeader { clock_offset: clock_offset + 1, ..corrected.clone() };
        assert_eq!(answer(get(tampered.to_string()).await.expect("answer")).await.1["code"], "bad_signature");
        assert_eq!(answer(get(corrected.to_string()).await.expect("answer")).await.0, 200, "{device_time}");
        let row = offset_shown().await;
        let shown = row["clock_offset"]["seconds"].as_i64().expect("an offset");
        assert!(shown.abs_diff(clock_offset) <= 2, "{device_time}: {row}");
        assert_eq!(row["rejections"], 0, "{row}");
    }
}
