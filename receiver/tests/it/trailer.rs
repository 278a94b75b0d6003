//! Uploads whose SHA-256 follows the file in a signed trailer (the head's
//! `sha256` is `trailer`).

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use logferry_common::Sha256Digest;
use logferry_common::signing::{SignedFields, SignedRequest, TRAILER, trailer_signature};
use logferry_common::wire::endpoint;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::harness::{Harness, answer, device, digest, key, now, read_answer};

/// What a trailer upload sends after its file.
enum Trailer {
    /// The right digest, signed.
    Signed(Sha256Digest),
    /// A digest with a signature made for another one.
    Forged(Sha256Digest),
    /// No trailer fields at all.
    Missing,
}

fn head(path: &str, size: usize) -> SignedFields {
    SignedFields { path: path.to_owned(), sha256: TRAILER.to_owned(), size: size.to_string() }
}

/// The Authorization header of a trailer upload, and its signature.
fn sign(endpoint: &str, fields: &SignedFields) -> (String, [u8; 32]) {
    let header =
        SignedRequest { method: "POST", path: endpoint, timestamp: now(), clock_offset: 0, fields: Some(fields) }
            .authorization(&key(&device()));
    (header.to_string(), header.signature)
}

async fn send(h: &Harness, path: &str, content: &[u8], offset: Option<u64>, trailer: Trailer) -> (u16, Value) {
    let fields = head(path, content.len());
    let (auth, signature) = sign(endpoint::UPLOAD, &fields);
    let mut form = Form::new().text("path", fields.path).text("sha256", fields.sha256).text("size", fields.size);
    let from = offset.unwrap_or(0);
    if let Some(offset) = offset {
        form = form.text("offset", offset.to_string());
    }
    form = form.part("file", Part::bytes(content[from as usize..].to_vec()).file_name("f"));
    let signed = |sha256: &Sha256Digest, signs: &Sha256Digest| {
        (sha256.to_hex(), trailer_signature(&key(&device()), &signature, signs))
    };
    let trailer = match trailer {
        Trailer::Signed(sha256) => Some(signed(&sha256, &sha256)),
        Trailer::Forged(sha256) => Some(signed(&sha256, &digest(b"something else"))),
        Trailer::Missing => None,
    };
    if let Some((sha256, tag)) = trailer {
        form = form.text("sha256", sha256).text("signature", tag);
    }
    h.send_form(Some(auth), form).await
}

#[tokio::test]
async fn a_trailer_upload_is_stored_with_its_checksum_file() {
    let h = Harness::start();
    for content in [b"abc".to_vec(), vec![7u8; 300_000], Vec::new()] {
        let path = format!("day-{}.log", content.len());
        let (status, body) = send(&h, &path, &content, None, Trailer::Signed(digest(&content))).await;
        assert_eq!((status, body["outcome"].as_str()), (201, Some("stored")), "{body}");
        assert_eq!(body["sha256"].as_str(), Some(digest(&content).to_hex().as_str()));
        assert_eq!(std::fs::read(h.device_dir().join(&path)).expect("stored"), content);
        assert_eq!(
            std::fs::read_to_string(h.device_dir().join(format!("{path}.sha256"))).expect("checksum file"),
            format!("{}  {path}\n", digest(&content))
        );
    }
    // Other bytes under a taken name: the conflict name comes from the
    // digest in the trailer.
    let (status, body) = send(&h, "day-3.log", b"abd", None, Trailer::Signed(digest(b"abd"))).await;
    assert_eq!(status, 201, "{body}");
    let conflict = format!("day-3.conflict-{}.log", &digest(b"abd").to_hex()[..16]);
    assert_eq!(body["stored_as"].as_str(), Some(conflict.as_str()));
    let (status, body) = send(&h, "day-3.log", b"abc", None, Trailer::Signed(digest(b"abc"))).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("already_stored")), "{body}");
}

#[tokio::test]
async fn a_wrong_forged_or_missing_trailer_stores_nothing() {
    let h = Harness::start();
    for size in [3, 2 << 20] {
        let content = vec![1u8; size];
        // A body that ends after the file is cut off like any other: its
        // bytes are kept for a resume, until refused bytes drop them.
        let cases = [
            (Trailer::Missing, 400, "malformed_upload"),
            (Trailer::Forged(digest(&content)), 401, "bad_signature"),
            (Trailer::Signed(digest(b"other bytes")), 422, "checksum_mismatch"),
        ];
        for (trailer, status, code) in cases {
            let (got, body) = send(&h, "x.bin", &content, None, trailer).await;
            assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{size} bytes: {body}");
        }
        assert_eq!(h.stored_files(), Vec::<String>::new());
        assert_eq!(h.partials(), Vec::<u64>::new(), "nothing is kept of refused bytes");
    }
}

#[tokio::test]
async fn a_trailer_after_a_head_with_a_digest_is_refused() {
    let h = Harness::start();
    let claim = crate::harness::claim("a.log", b"abc");
    let auth = crate::harness::authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = crate::harness::upload_form("a.log", &claim.sha256.to_hex(), "3", b"abc")
        .text("sha256", claim.sha256.to_hex())
        .text("signature", "0".repeat(64));
    let (status, body) = h.send_form(Some(auth), form).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("malformed_upload")), "{body}");
    assert_eq!(h.stored_files(), Vec::<String>::new());
}

/// Sends the head and the first `file_bytes` of a trailer upload of
/// `content`, then stops, as a broken connection does; gives the status line.
fn cut_off(h: &Harness, fields: &SignedFields, content: &[u8], file_bytes: usize) -> String {
    let mut body = Vec::new();
    for (name, value) in [("path", &fields.path), ("sha256", &fields.sha256), ("size", &fields.size)] {
        body.extend(
            format!("--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    body.extend(b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n");
    let declared = body.len() + content.len();
    body.extend(&content[..file_bytes]);
    let (auth, _) = sign(endpoint::UPLOAD, fields);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: multipart/form-data; boundary=B0undary\r\nContent-Length: {declared}\r\n\r\n",
        endpoint::UPLOAD,
        h.addr(),
    );
    let mut stream = TcpStream::connect(h.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("head");
    stream.write_all(&body).expect("part of the body");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    read_answer(&mut stream).0
}

/// Cut off, asked for its offset (by `trailer`), continued: the whole file
/// is verified against the trailer's digest.
#[tokio::test]
async fn a_trailer_upload_cut_off_continues_and_is_verified_whole() {
    let h = Harness::start();
    let content: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let fields = head("big.bin", content.len());
    let status = cut_off(&h, &fields, &content, 2_000_000);
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");

    let (auth, _) = sign(endpoint::UPLOAD_OFFSET, &fields);
    let form = Form::new().text("path", fields.path.clone()).text("sha256", TRAILER).text("size", fields.size.clone());
    let request = h.http.post(h.url(endpoint::UPLOAD_OFFSET)).multipart(form).header("Authorization", auth);
    let (status, held) = answer(request.send().await.expect("answer")).await;
    let offset = held["offset"].as_u64().expect("an offset");
    assert!(status == 200 && offset > 1_000_000 && offset <= 2_000_000, "{held}");

    // The rest with a wrong digest: what was held goes too.
    let (status, body) = send(&h, "big.bin", &content, Some(offset), Trailer::Signed(digest(b"no"))).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("checksum_mismatch")), "{body}");
    assert_eq!(h.partials(), Vec::<u64>::new());
    let (status, body) = send(&h, "big.bin", &content, Some(offset), Trailer::Signed(digest(&content))).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("offset_mismatch")), "{body}");

    cut_off(&h, &fields, &content, 2_000_000);
    let offset = h.partials()[0];
    let (status, body) = send(&h, "big.bin", &content, Some(offset), Trailer::Signed(digest(&content))).await;
    assert_eq!((status, body["outcome"].as_str()), (201, Some("stored")), "{body}");
    assert_eq!(std::fs::read(h.device_dir().join("big.bin")).expect("stored"), content);
    assert_eq!(h.partials(), Vec::<u64>::new());
}

/// A multipart upload's key is fixed when it starts, and comes from the
/// digest: a bucket store takes the digest first, and says so.
#[tokio::test]
async fn a_bucket_store_offers_no_trailer_and_refuses_one() {
    let Some(backend) = crate::harness::Backend::s3() else { return };
    let h = Harness::start_on(backend);
    let auth = crate::harness::authorization(&device(), "GET", endpoint::AUTH_CHECK, now(), None);
    let response = h.http.get(h.url(endpoint::AUTH_CHECK)).header("Authorization", auth).send().await.expect("answer");
    let (status, body) = answer(response).await;
    assert_eq!((status, body["digest_after"].as_bool()), (200, Some(false)), "{body}");
    let (status, body) = send(&h, "a.log", b"abc", None, Trailer::Signed(digest(b"abc"))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("malformed_upload")), "{body}");
    assert_eq!(h.objects().await, Vec::<String>::new());
}
