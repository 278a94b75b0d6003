//! Each limit answered with its status: too large, busy, too slow, too many
//! failed authentications. A raw TCP client plays the slow or stuck device.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use logferry_common::wire::endpoint;
use logferry_receiver::Limits;

use crate::harness::*;

/// Opens a connection and sends the head, the fields and `file_bytes` of the
/// file, then stops sending: an upload in progress that holds its slot.
fn start_upload(h: &Harness, content: &[u8], file_bytes: usize) -> TcpStream {
    start_upload_of(h, "held.log", content, file_bytes)
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_refused_before_any_byte_is_staged() {
    let h = Harness::start_with(Limits { max_file_size: 10, ..Limits::default() });
    let (status, body) = h.upload("big.log", b"seventeen bytes!!").await;
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")), "{body}");
    assert_eq!(h.stored_files(), Vec::<String>::new());
    assert_eq!(h.upload("small.log", b"ten bytes!").await.0, 201, "the limit is inclusive");
}

#[tokio::test]
async fn uploads_past_the_per_device_limit_get_429_with_retry_after_until_a_slot_frees() {
    let h = Harness::start_with(Limits { max_uploads_per_device: 1, queue_wait: Duration::ZERO, ..Limits::default() });
    let held = start_upload(&h, &[7u8; 4096], 100);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let claim = claim("second.log", CONTENT);
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form("second.log", &claim.sha256.to_hex(), &claim.size.to_string(), CONTENT);
    let response = h
        .http
        .post(h.url(endpoint::UPLOAD))
        .header("Authorization", auth)
        .multipart(form)
        .send()
        .await
        .expect("answer");
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
    let (status, body) = answer(response).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("busy")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));

    drop(held);
    let mut status = 0;
    for _ in 0..50 {
        status = h.upload("second.log", CONTENT).await.0;
        if status == 201 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 201, "the abandoned upload's slot was freed");
    assert_eq!(h.stored_files(), ["0123456789ABCDEF/second.log", "0123456789ABCDEF/second.log.sha256"]);
}

const CONTENT: &[u8] = b"sensor,value\n1,2\n";

#[test]
fn a_body_that_stalls_gets_408_and_leaves_nothing_visible() {
    let h = Harness::start_with(Limits { idle_timeout: Duration::from_secs(1), ..Limits::default() });
    let mut stalled = start_upload(&h, &vec![1u8; 1 << 20], 10);
    let (status, body) = read_answer(&mut stalled);
    assert!(status.starts_with("HTTP/1.1 408"), "{status} {body}");
    assert!(body.contains(r#""code":"timeout""#) && body.contains("no data arrived"), "{body}");
    assert_eq!(h.stored_files(), Vec::<String>::new());
    // A resumable file: what arrived is kept, out of sight, for a resume.
    assert_eq!(h.partials().len(), 1);
}

#[test]
fn a_body_that_trickles_below_the_minimum_rate_gets_408() {
    let h = Harness::start_with(Limits {
        idle_timeout: Duration::from_secs(1),
        min_bytes_per_sec: 1 << 20,
        ..Limits::default()
    });
    let content = vec![2u8; 1 << 20];
    let mut trickle = start_upload(&h, &content, 0);
    let (_, _, rest) = raw_upload(&h, "held.log", &content);
    // A few bytes every 300 ms: never idle for a whole second, yet far
    // below 1 MiB/s, so the body's deadline (1 s + 1 s) passes first.
    for chunk in rest.chunks(64).take(20) {
        if trickle.write_all(chunk).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, body) = read_answer(&mut trickle);
    assert!(status.starts_with("HTTP/1.1 408"), "{status} {body}");
    assert!(body.contains("slower than"), "{body}");
    assert_eq!(h.stored_files(), Vec::<String>::new());
    assert_eq!(h.partials().len(), 1, "kept for a resume, out of sight");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let h = Harness::start_with(Limits { head_timeout: Duration::from_secs(1), ..Limits::default() });
    let mut stream = TcpStream::connect(h.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\n").expect("partial head");
    let (status, _) = read_answer(&mut stream);
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 408"), "{status:?}");
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_address_but_never_a_verified_device() {
    let h = Harness::start_with(Limits { auth_failures_per_minute: 3, ..Limits::default() });
    let check = |id| {
        let request = h
            .http
            .get(h.url(endpoint::AUTH_CHECK))
            .header("Authorization", authorization(&id, "GET", endpoint::AUTH_CHECK, now(), None));
        async move {
            let response = request.send().await.expect("answer");
            let retry_after = response.headers().get("retry-after").is_some();
            let (status, body) = answer(response).await;
            (status, body["code"].as_str().map(str::to_owned), retry_after)
        }
    };
    assert_eq!(check(device()).await.0, 200, "successes do not count");
    for _ in 0..3 {
        assert_eq!(check(stranger()).await, (401, Some("unknown_device".to_owned()), false));
    }
    assert_eq!(check(stranger()).await, (429, Some("rate_limited".to_owned()), true));
    // A device signing correctly from the same address (a NAT, a proxy) is
    // never refused for what others sent.
    assert_eq!(check(device()).await.0, 200, "a verified request is served");
    assert_eq!(check(stranger()).await.0, 429, "failures still are throttled");
}

/// A tmpfs of `size` mounted on `<dir>/store` for the test's life, where the
/// machine allows mounting (root); None elsewhere.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&store)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(store))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_gets_507_keeps_what_was_stored_and_leaves_no_staging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_disk) = SmallDisk::mount(dir.path(), "2m") else {
        eprintln!("mounting a small file system is not allowed here; the reserve test covers 507");
        return;
    };
    let h = Harness::start_in(dir, Limits { min_free_space: 0, ..Limits::default() });
    let (status, body) = h.upload("too-big.bin", &vec![3u8; 3 << 20]).await;
    assert_eq!((status, body["code"].as_str()), (507, Some("insufficient_storage")), "refused before writing: {body}");

    // Both fit when they start; the disk fills while the second is written.
    let first = vec![4u8; 1200 << 10];
    let mut held = start_upload_of(&h, "second.bin", &first, 0);
    assert_eq!(h.upload("first.bin", &first).await.0, 201);
    let (_, _, rest) = raw_upload(&h, "second.bin", &first);
    let _ = held.write_all(&rest);
    let (status, body) = read_answer(&mut held);
    assert!(status.starts_with("HTTP/1.1 507"), "{status} {body}");
    assert!(body.contains("insufficient_storage"), "{body}");
    assert_eq!(h.stored_files(), ["0123456789ABCDEF/first.bin", "0123456789ABCDEF/first.bin.sha256"]);
}

#[tokio::test]
async fn an_upload_that_would_eat_the_free_space_reserve_gets_507() {
    let h = Harness::start_with(Limits { min_free_space: u64::MAX / 4, ..Limits::default() });
    let (status, body) = h.upload("any.log", CONTENT).await;
    assert_eq!((status, body["code"].as_str()), (507, Some("insufficient_storage")), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("--min-free-space")), "{body}");
    assert_eq!(h.stored_files(), Vec::<String>::new());
}
