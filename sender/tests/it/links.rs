//! Slow and metered links, through the fault proxy, which counts the bytes
//! the sender puts on the wire: compression where it pays, uploads cut off
//! and continued from what the receiver holds, and the bandwidth cap.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

/// Sensor-log text: compresses about as well as real logs.
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

fn bytes_up(proxy: &FaultProxy) -> u64 {
    proxy.counts.bytes_up.load(Ordering::Relaxed)
}

fn encoded_uploads(proxy: &FaultProxy) -> u64 {
    proxy.counts.encoded_uploads.load(Ordering::Relaxed)
}

#[test]
fn text_logs_go_compressed_and_arrive_as_they_were() {
    let h = Harness::start();
    let (big, small) = (log_text(4 << 20), log_text(20_000));
    h.log("day.log", &big);
    h.log("notes/hour.log", &small);
    let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
    let run = h.send_to(&proxy.address, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(encoded_uploads(&proxy), 2, "both compressed");
    let raw = (big.len() + small.len()) as u64;
    assert!(bytes_up(&proxy) * 5 < raw, "{} bytes on the wire for {raw}", bytes_up(&proxy));
    assert!(run.stdout.contains("on the wire"), "the summary says so: {run:?}");
    assert_eq!(std::fs::read(h.stored().join("day.log")).expect("stored"), big);
    assert_eq!(std::fs::read(h.stored().join("notes/hour.log")).expect("stored"), small);
    let line = std::fs::read_to_string(h.stored().join("day.log.sha256")).expect("checksum file");
    assert!(line.ends_with("  day.log\n"), "{line}");
}

/// Which files go compressed, by `--compress` and by what the files hold.
#[test]
fn compress_auto_skips_what_does_not_compress_zstd_forces_it_none_never() {
    let cases: [(&str, Vec<u8>, u64); 5] = [
        ("auto", content(1, 2 << 20), 0),
        ("auto", content(2, 60_000), 0),
        ("auto", log_text(2 << 20), 1),
        ("zstd", content(3, 2 << 20), 1),
        ("none", log_text(2 << 20), 0),
    ];
    std::thread::scope(|scope| {
        for (mode, content, expected) in &cases {
            scope.spawn(move || {
                let h = Harness::start();
                h.log("f.bin", content);
                let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
                let run = h.send_to(&proxy.address, &["--compress", mode]);
                assert_eq!(run.code, Some(0), "{mode}: {run:?}");
                assert_eq!(encoded_uploads(&proxy), *expected, "--compress {mode}, {} bytes", content.len());
                assert_eq!(&std::fs::read(h.stored().join("f.bin")).expect("stored"), content, "{mode}");
                if *expected == 0 {
                    // Sent as it is: the file and little else.
                    let overhead = bytes_up(&proxy) - content.len() as u64;
                    assert!(overhead < 8192, "{mode}: {overhead} bytes besides the file");
                }
            });
        }
    });
}

/// The first upload is cut after so many bytes; the retry in the same run
/// asks what the receiver holds and sends the rest.
#[test]
fn an_upload_cut_off_continues_where_it_stopped_and_resends_little() {
    let size = 4 << 20;
    std::thread::scope(|scope| {
        for cut in [100_000u64, 2 << 20, (4 << 20) - 50_000] {
            scope.spawn(move || {
                let h = Harness::start();
                let content = content(cut, size);
                h.log("camera.bin", &content);
                let proxy = FaultProxy::start(h.host(), move |_| Fault::CutFirstUploadAfter(cut));
                let run = h.send_to(&proxy.address, &["--retries", "3", "--compress", "none"]);
                assert_eq!(run.code, Some(0), "cut at {cut}: {run:?}");
                assert_eq!(proxy.counts.cut.load(Ordering::Relaxed), 1);
                assert_eq!(proxy.counts.uploads(), 2, "one retry");
                assert_eq!(std::fs::read(h.stored().join("camera.bin")).expect("stored"), content);
                let resent = bytes_up(&proxy) - size as u64;
                assert!(resent < size as u64 / 10, "cut at {cut}: {resent} bytes sent twice or more");
                assert_eq!(files(&h.sent()), ["camera.bin"]);
            });
        }
    });
}

/// A run that ends with the upload cut off (no retries left) leaves the
/// file; the next run continues it, compressed or not.
#[test]
fn the_next_run_continues_a_cut_off_upload() {
    for (mode, content) in [("none", content(9, 3 << 20)), ("auto", log_text(12 << 20))] {
        let h = Harness::start();
        h.log("big.log", &content);
        let proxy = FaultProxy::start(h.host(), |_| Fault::CutFirstUploadAfter(600_000));
        let first = h.send_to(&proxy.address, &["--retries", "0", "--compress", mode]);
        assert_eq!(first.code, Some(1), "{mode}: {first:?}");
        assert_eq!(files(&h.logs()), ["big.log"], "kept for the next run");
        let first_bytes = bytes_up(&proxy);
        let second = h.send_to(&proxy.address, &["--compress", mode]);
        assert_eq!(second.code, Some(0), "{mode}: {second:?}");
        assert_eq!(std::fs::read(h.stored().join("big.log")).expect("stored"), content, "{mode}");
        let both = bytes_up(&proxy);
        let whole = whole_upload_bytes(&content, mode);
        assert!(
            both < whole * 11 / 10,
            "{mode}: {first_bytes} + {} bytes in two runs, {whole} in one",
            both - first_bytes
        );
    }
}

/// The bytes one uncut run of `content` puts on the wire.
fn whole_upload_bytes(content: &[u8], mode: &str) -> u64 {
    let h = Harness::start();
    h.log("big.log", content);
    let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
    assert_eq!(h.send_to(&proxy.address, &["--compress", mode]).code, Some(0));
    bytes_up(&proxy)
}

/// A ceiling can be asserted without flakiness: however fast the machine,
/// 1 MiB at 512 KiB/s takes at least about 2 s.
#[test]
fn bwlimit_caps_the_rate() {
    let h = Harness::start();
    let content = content(5, 1 << 20);
    h.log("a.bin", &content[..600_000]);
    h.log("b.bin", &content[600_000..]);
    let started = Instant::now();
    let run = h.send(&["--bwlimit", "512KiB", "--compress", "none"]);
    let took = started.elapsed();
    assert_eq!(run.code, Some(0), "{run:?}");
    // Every piece but the last waits for those before it: (1 MiB - 64 KiB) / 512 KiB/s.
    assert!(took >= Duration::from_millis(1875), "{took:?}");
    assert_eq!(files(&h.sent()), ["a.bin", "b.bin"]);
    let refused = h.send(&["--bwlimit", "0"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--bwlimit"), "{refused:?}");
}
