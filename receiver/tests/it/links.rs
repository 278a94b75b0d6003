//! Slow links: the file part compressed with zstd, and uploads cut off and
//! continued from what the receiver holds (PROTOCOL.md, "Compression" and
//! "Resuming").

use std::time::Duration;

use logferry_receiver::Limits;
use serde_json::Value;

use crate::harness::*;

/// Text that compresses about as well as sensor logs do.
fn log_text(bytes: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(bytes + 100);
    let mut i = 0u64;
    while text.len() < bytes {
        let line = format!(
            "2026-11-30T12:{:02}:{:02}.{:03}Z greenhouse-{} soil={}.{} temp_c={}.{}\n",
            i / 60 % 60,
            i % 60,
            i * 7 % 1000,
            i % 5,
            i * 13 % 97,
            i % 10,
            15 + i * 3 % 11,
            i * 17 % 100
        );
        text.extend_from_slice(line.as_bytes());
        i += 1;
    }
    text.truncate(bytes);
    text
}

fn random_bytes(bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 3).expect("compresses")
}

fn code(body: &Value) -> Option<&str> {
    body["code"].as_str()
}

/// What the receiver holds of `claim`, by the offset query.
async fn held(h: &Harness, claim: &logferry_common::signing::UploadClaim) -> u64 {
    let (status, body) = h.held(claim).await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().expect("an offset")
}

/// `upload_part`, retried while the receiver is still writing what an
/// earlier connection brought (429 `busy`), as the sender does.
async fn continue_upload(
    h: &Harness,
    claim: &logferry_common::signing::UploadClaim,
    offset: u64,
    encoding: Option<&str>,
    file: Vec<u8>,
) -> (u16, Value) {
    for _ in 0..50 {
        let answer = h.upload_part(claim, Some(offset), encoding, file.clone()).await;
        if answer.0 != 429 {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still busy after 5 s");
}

#[tokio::test]
async fn the_auth_check_offers_zstd_resuming_the_digest_after_the_file_and_batches() {
    let h = Harness::start();
    let auth = authorization(&device(), "GET", logferry_common::wire::endpoint::AUTH_CHECK, now(), None);
    let response = h.http.get(h.url("/v1/auth-check")).header("Authorization", auth).send().await.expect("answer");
    let (status, body) = answer(response).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"label": "bench-pi", "encodings": ["zstd"], "resume": true, "digest_after": true, "batch": true})
    );
}

#[tokio::test]
async fn a_compressed_upload_is_stored_as_the_original_bytes_with_the_same_checksum_file() {
    let h = Harness::start();
    for (path, content) in [("big.log", log_text(3 << 20)), ("small.log", log_text(5000)), ("empty.log", Vec::new())] {
        let claim = claim(path, &content);
        let (status, body) = h.upload_part(&claim, None, Some("zstd"), zstd(&content)).await;
        assert_eq!((status, body["outcome"].as_str()), (201, Some("stored")), "{path}: {body}");
        assert_eq!(std::fs::read(h.device_dir().join(path)).expect("stored"), content, "{path}");
        let line = std::fs::read_to_string(h.device_dir().join(format!("{path}.sha256"))).expect("checksum file");
        assert_eq!(line, format!("{}  {path}\n", claim.sha256));
        // The same bytes sent plainly, as a client without compression does:
        // the same file, so "already stored".
        let (status, body) = h.upload(path, &content).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("already_stored")), "{path}: {body}");
    }
    // Frames one after another decode to their bytes one after another.
    let content = log_text(600_000);
    let mut frames = zstd(&content[..250_000]);
    frames.extend(zstd(&content[250_000..]));
    let (status, body) = h.upload_part(&claim("framed.log", &content), None, Some("zstd"), frames).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(std::fs::read(h.device_dir().join("framed.log")).expect("stored"), content);
}

/// What a compressed upload's file part can do wrong, and the signed answer.
#[tokio::test]
async fn bad_compressed_parts_are_refused_and_leave_nothing() {
    let h = Harness::start();
    let content = log_text(2 << 20);
    let other = {
        let mut other = content.clone();
        other[1_000_000] ^= 1;
        other
    };
    let truncated = {
        let whole = zstd(&content);
        whole[..whole.len() - 10].to_vec()
    };
    let huge_window = {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        encoder.window_log(27).expect("window");
        encoder.include_contentsize(false).expect("no size");
        std::io::Write::write_all(&mut encoder, &content).expect("encodes");
        encoder.finish().expect("finished")
    };
    // What, the encoding field, the file part; the status, code and a word of the message.
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, (u16, &'a str, &'a str));
    let cases: [Case; 6] = [
        // 64 MiB of zeros in about 2 KiB: refused as soon as the decoded
        // bytes pass the declared 2 MiB.
        ("bomb", Some("zstd"), zstd(&vec![0u8; 64 << 20]), (422, "size_mismatch", "or more")),
        ("other bytes", Some("zstd"), zstd(&other), (422, "checksum_mismatch", "hash to")),
        ("not zstd", Some("zstd"), random_bytes(5000), (400, "malformed_upload", "cannot be decoded")),
        ("cut frame", Some("zstd"), truncated, (400, "malformed_upload", "middle of a frame")),
        ("window over 8 MiB", Some("zstd"), huge_window, (400, "malformed_upload", "cannot be decoded")),
        ("unknown encoding", Some("br"), content.clone(), (415, "unsupported_encoding", "\"br\"")),
    ];
    for (what, encoding, file, (status, expected_code, says)) in cases {
        let (got, body) = h.upload_part(&claim("data.log", &content), None, encoding, file).await;
        assert_eq!((got, code(&body)), (status, Some(expected_code)), "{what}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(says)), "{what}: {body}");
        if what == "bomb" {
            let counted: u64 = body["error"]
                .as_str()
                .and_then(|e| e.split("carried ").nth(1))
                .and_then(|n| n.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("a count");
            assert!(counted <= (2 << 20) + (128 << 10), "decoding stopped one piece past the size: {counted}");
        }
        assert_eq!(h.stored_files(), Vec::<String>::new(), "{what}");
        assert_eq!(h.partials(), Vec::<u64>::new(), "{what}: wrong bytes are not kept for a resume");
    }
}

/// Cut after so many bytes of the file part, then continued from what the
/// receiver says it holds: the stored file is the whole file.
#[tokio::test]
async fn uploads_cut_at_any_point_continue_from_what_the_receiver_holds() {
    let h = Harness::start();
    let content = random_bytes(3 << 20);
    for cut in [0, 1, 200_000, 1 << 20, (3 << 20) - 1] {
        let path = format!("cut-{cut}.bin");
        let claim = claim(&path, &content);
        let status = h.cut_upload(&path, &content, cut);
        assert!(status.starts_with("HTTP/1.1 400"), "cut at {cut}: {status}");
        let offset = held(&h, &claim).await;
        // What the HTTP layer had not yet handed on when the connection
        // broke is lost (at most actix-http's read buffer, 128 KiB, and its
        // payload queue, 32 KiB: on a loaded machine they fill up);
        // everything before is kept.
        assert!(offset <= cut as u64 && offset + (160 << 10) >= cut as u64, "cut at {cut}: holds {offset}");
        assert_eq!(h.stored_files().iter().filter(|f| f.contains(&path)).count(), 0, "nothing visible yet");
        let (status, body) = continue_upload(&h, &claim, offset, None, content[offset as usize..].to_vec()).await;
        assert_eq!((status, body["outcome"].as_str()), (201, Some("stored")), "cut at {cut}: {body}");
        assert_eq!(body["sha256"].as_str(), Some(claim.sha256.to_hex().as_str()));
        assert_eq!(std::fs::read(h.device_dir().join(&path)).expect("stored"), content, "cut at {cut}");
        assert_eq!(held(&h, &claim).await, 0, "the partial is gone once committed");
    }
    assert_eq!(h.partials(), Vec::<u64>::new());
}

#[tokio::test]
async fn a_compressed_upload_cut_off_continues_compressed_from_the_decoded_offset() {
    let h = Harness::start();
    let content = log_text(4 << 20);
    let claim = claim("day.log", &content);
    // The compressed part's first half, as raw HTTP: cut mid-frame.
    let compressed = zstd(&content);
    let auth = authorization(&device(), "POST", logferry_common::wire::endpoint::UPLOAD, now(), Some(&claim));
    let mut fields = Vec::new();
    for (name, value) in [
        ("path", "day.log".to_owned()),
        ("sha256", claim.sha256.to_hex()),
        ("size", claim.size.to_string()),
        ("encoding", "zstd".to_owned()),
    ] {
        fields.extend(
            format!("--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    fields.extend(b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n");
    let half = &compressed[..compressed.len() / 2];
    let head = format!(
        "POST /v1/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: multipart/form-data; boundary=B0undary\r\nContent-Length: {}\r\n\r\n",
        h.addr(),
        fields.len() + compressed.len() + 20
    );
    let mut stream = std::net::TcpStream::connect(h.addr()).expect("connect");
    std::io::Write::write_all(&mut stream, head.as_bytes()).expect("head");
    std::io::Write::write_all(&mut stream, &fields).expect("fields");
    std::io::Write::write_all(&mut stream, half).expect("half");
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let status = read_answer(&mut stream).0;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let offset = held(&h, &claim).await;
    assert!(offset > 0 && offset < claim.size, "holds {offset} decoded bytes");
    let rest = zstd(&content[offset as usize..]);
    let (status, body) = continue_upload(&h, &claim, offset, Some("zstd"), rest).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(std::fs::read(h.device_dir().join("day.log")).expect("stored"), content);
}

#[tokio::test]
async fn a_partial_upload_survives_a_receiver_restart() {
    let mut h = Harness::start();
    let content = random_bytes(2 << 20);
    let claim = claim("restart.bin", &content);
    h.cut_upload("restart.bin", &content, 1_500_000);
    h.restart();
    let offset = held(&h, &claim).await;
    assert!(offset > 1_400_000, "holds {offset}");
    let (status, body) = continue_upload(&h, &claim, offset, None, content[offset as usize..].to_vec()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(std::fs::read(h.device_dir().join("restart.bin")).expect("stored"), content);
}

#[tokio::test]
async fn offsets_are_judged_against_what_is_held() {
    let h = Harness::start();
    let content = random_bytes(2 << 20);
    let claim = claim("judged.bin", &content);
    h.cut_upload("judged.bin", &content, 1_000_000);
    let offset = held(&h, &claim).await;

    // Further than held: 409, and the next try asks again.
    let (status, body) = h.upload_part(&claim, Some(offset + 1), None, content[offset as usize + 1..].to_vec()).await;
    assert_eq!((status, code(&body)), (409, Some("offset_mismatch")), "{body}");
    // Beyond the size: malformed.
    let (status, body) = h.upload_part(&claim, Some(claim.size + 1), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (400, Some("malformed_upload")), "{body}");
    // The rest with other bytes: the whole does not verify, and what was
    // held is dropped, so that the next try sends everything.
    let mut wrong = content[offset as usize..].to_vec();
    wrong[10] ^= 1;
    let (status, body) = continue_upload(&h, &claim, offset, None, wrong).await;
    assert_eq!((status, code(&body)), (422, Some("checksum_mismatch")), "{body}");
    assert_eq!(held(&h, &claim).await, 0);

    // A client that does not resume sends the whole file without an
    // offset: it starts over whatever is held.
    h.cut_upload("judged.bin", &content, 1_000_000);
    assert!(held(&h, &claim).await > 0);
    let (status, body) = h.upload("judged.bin", &content).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(held(&h, &claim).await, 0);
    assert_eq!(h.partials(), Vec::<u64>::new());

    // Files under 1 MiB are never kept: starting over costs less.
    let small = random_bytes(500_000);
    h.cut_upload("small.bin", &small, 400_000);
    assert_eq!(held(&h, &self::claim("small.bin", &small)).await, 0);
    let (status, body) = h.upload_part(&self::claim("small.bin", &small), Some(10), None, small[10..].to_vec()).await;
    assert_eq!((status, code(&body)), (409, Some("offset_mismatch")), "{body}");
}

#[tokio::test]
async fn partial_uploads_expire_after_the_partial_ttl() {
    let h = Harness::start_with(Limits { partial_ttl: Duration::from_secs(1), ..Limits::default() });
    let content = random_bytes(2 << 20);
    let claim = claim("expires.bin", &content);
    h.cut_upload("expires.bin", &content, 1_000_000);
    assert_eq!(h.partials().len(), 1);
    for _ in 0..100 {
        if h.partials().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.partials(), Vec::<u64>::new(), "removed within a few sweeps of a 1 s TTL");
    assert_eq!(held(&h, &claim).await, 0);
    let (status, body) = h.upload("expires.bin", &content).await;
    assert_eq!(status, 201, "{body}");
}
