//! The receiver's limits as the sender meets them.

use std::time::Duration;

use logferry_common::signing::{SignedFields, SignedRequest, UploadClaim};
use logferry_common::wire::endpoint;
use logferry_common::{DeviceId, RelPath, Sha256Digest};
use logferry_receiver::Limits;
use reqwest::multipart::{Form, Part};

use crate::harness::*;

#[test]
fn a_file_over_the_receivers_size_limit_is_reported_and_kept() {
    let h = Harness::start_with(|_, config| config.limits.max_file_size = 10);
    h.log("small.log", b"0123456789");
    h.log("large.log", b"0123456789 and more");
    let run = h.send(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("large.log") && run.stderr.contains("HTTP 413") && run.stderr.contains("at most 10"),
        "{run:?}"
    );
    assert_eq!(files(&h.logs()), ["large.log"]);
    assert_eq!(files(&h.sent()), ["small.log"]);
}

/// Starts an upload that sends its fields and then nothing for `hold`,
/// keeping the device's only upload slot busy meanwhile.
fn hold_the_only_slot(h: &Harness, hold: Duration) -> std::thread::JoinHandle<()> {
    let url = format!("http://{}{}", h.host(), endpoint::UPLOAD);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let content = vec![0u8; 1000];
            let claim = UploadClaim {
                path: RelPath::parse("held.log").expect("valid"),
                sha256: Sha256Digest::of_reader(&content[..]).expect("hash").0,
                size: content.len() as u64,
            };
            let id: DeviceId = DEVICE.parse().expect("valid");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
            let head = SignedFields::from(&claim);
            let auth = SignedRequest {
                method: "POST",
                path: endpoint::UPLOAD,
                timestamp: now,
                clock_offset: 0,
                fields: Some(&head),
            }
            .authorization(&id.derive_key());
            let stalled = futures_util::stream::once(async move {
                tokio::time::sleep(hold).await;
                Err::<Vec<u8>, std::io::Error>(std::io::Error::other("the holder gives up"))
            });
            let form = Form::new()
                .text("path", "held.log")
                .text("sha256", claim.sha256.to_hex())
                .text("size", claim.size.to_string())
                .part("file", Part::stream(reqwest::Body::wrap_stream(stalled)));
            let _ =
                reqwest::Client::new().post(url).header("Authorization", auth.to_string()).multipart(form).send().await;
        });
    })
}

#[test]
fn a_busy_receiver_is_waited_for_and_retried() {
    let h = Harness::start_with(|_, config| {
        config.limits = Limits { max_uploads_per_device: 1, queue_wait: Duration::ZERO, ..Limits::default() }
    });
    h.log("patient.log", b"worth the wait\n");
    let holder = hold_the_only_slot(&h, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    // The first attempt finds the slot taken (503, Retry-After: 2); later
    // attempts, after the holder gives up, get through.
    let run = h.send(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(files(&h.sent()), ["patient.log"]);
    holder.join().expect("holder thread");
}
