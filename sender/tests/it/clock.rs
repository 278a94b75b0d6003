//! Devices with wrong clocks, run under Debian's `faketime` (scripts/test.sh
//! installs it): whatever their clock says, they deliver by the receiver's
//! time, learnt only from its signed answer, and say how far off they are.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

/// The sender under `faketime -f spec`.
fn faked(h: &Harness, spec: &str, extra: &[&str]) -> Run {
    assert!(
        Command::new("faketime").arg("-f").arg("+0").arg("true").status().is_ok_and(|s| s.success()),
        "faketime is missing: apt-get install faketime (scripts/test.sh does)"
    );
    let mut command = Command::new("faketime");
    command.arg("-f").arg(spec).arg(env!("CARGO_BIN_EXE_sender"));
    run_sender(command, h.dir.path(), &h.args(&h.host(), extra))
}

fn json(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

#[test]
fn a_device_whose_clock_is_off_by_hours_days_or_decades_delivers_and_says_by_how_much() {
    // (faketime's clock, how far ahead of the real one it is)
    let cases = [("-3h", -3 * 3600), ("+2d", 2 * 86_400), ("@2000-01-01 00:00:00", 946_684_800 - now())];
    std::thread::scope(|scope| {
        for (spec, offset) in cases {
            scope.spawn(move || {
                let h = Harness::start();
                h.log("day.csv", b"t,v\n1,2\n");
                h.log("sub/night.csv", b"t,v\n3,4\n");
                let run = faked(&h, spec, &["--json"]);
                assert_eq!(run.code, Some(0), "{spec}: {run:?}");
                let summary = json(&run);
                assert_eq!(summary["sent"], 2, "{spec}: {run:?}");
                let reported = summary["clock_offset_seconds"].as_i64().expect("an offset");
                assert!(reported.abs_diff(offset) <= 5, "{spec}: {reported} s, not {offset}: {run:?}");
                assert_eq!(files(&h.sent()), ["day.csv", "sub/night.csv"], "{spec}");
                assert_eq!(files(&h.logs()), Vec::<String>::new(), "{spec}");
                assert_eq!(std::fs::read(h.stored().join("sub/night.csv")).expect("stored"), b"t,v\n3,4\n");
                let device = &h.devices()["devices"][0];
                let seen = device["clock_offset"]["seconds"].as_i64().expect("the receiver saw it");
                assert!(seen.abs_diff(offset) <= 5, "{spec}: the status page says {seen} s: {device}");
                assert_eq!(device["rejections"], 0, "{spec}: a wrong clock is not a rejection: {device}");
            });
        }
    });
}

#[test]
fn the_summary_line_says_the_clock_is_off_and_a_right_clock_says_nothing() {
    let h = Harness::start();
    h.log("a.log", b"a\n");
    let run = faked(&h, "-3h", &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("1 sent") && run.stdout.contains("clock is 3 h ("), "{run:?}");
    assert!(run.stdout.contains("s) behind the receiver's"), "{run:?}");
    h.log("b.log", b"b\n");
    let run = h.send(&["--json"]);
    assert_eq!((run.code, json(&run)["clock_offset_seconds"].clone()), (Some(0), Value::Null), "{run:?}");
}

/// Files written now lie three hours in the future of a clock set back by
/// three hours: `--min-age` must not hold them until that clock catches up,
/// but still leaves one that changes meanwhile for a later run.
#[test]
fn a_file_from_the_future_of_a_stepped_back_clock_is_sent_once_it_stayed_unchanged_for_min_age() {
    let h = Harness::start();
    h.log("finished.log", b"done\n");
    h.log("growing.log", b"1\n");
    let growing = h.logs().join("growing.log");
    let started = Instant::now();
    let run = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            while started.elapsed() < Duration::from_millis(1500) {
                std::thread::sleep(Duration::from_millis(100));
                let mut file = std::fs::OpenOptions::new().append(true).open(&growing).expect("open");
                file.write_all(b"more\n").expect("append");
            }
        });
        let run = faked(&h, "-3h", &["--json", "--min-age", "1"]);
        writer.join().expect("writer");
        run
    });
    assert_eq!(run.code, Some(0), "{run:?}");
    let summary = json(&run);
    assert_eq!((summary["sent"].as_u64(), summary["not_yet"].as_u64()), (Some(1), Some(1)), "{run:?}");
    assert_eq!(files(&h.sent()), ["finished.log"]);
    assert_eq!(files(&h.logs()), ["growing.log"]);
    let took = summary["elapsed_seconds"].as_f64().expect("elapsed");
    assert!((1.0..5.0).contains(&took), "the second look waited for --min-age, no longer: {took} s");
}

/// A man in the middle answers the auth check with an unsigned clock_skew
/// naming a time ten days ahead. The device retries it as any unsigned
/// refusal and delivers, its clock unchanged; without a retry left it gives
/// up (exit 6, files kept) rather than sign by that time.
#[test]
fn an_unsigned_clock_skew_answer_does_not_move_the_devices_clock() {
    // (--retries, exit code, files sent)
    let cases = [("1", 0, 1), ("0", 6, 0)];
    for (retries, code, sent) in cases {
        let h = Harness::start();
        h.log("a.log", b"a\n");
        let ahead = (now() + 10 * 86_400) as u64;
        let proxy = FaultProxy::start(h.host(), move |n| {
            if n == 0 { Fault::ForgeClockSkew { receiver_time: ahead } } else { Fault::Pass }
        });
        let run = h.send_to(&proxy.address, &["--json", "--retries", retries]);
        assert_eq!((run.code, proxy.counts.forged.load(Ordering::Relaxed)), (Some(code), 1), "{retries}: {run:?}");
        let summary = json(&run);
        assert_eq!(summary["sent"], sent, "{retries}: {run:?}");
        assert_eq!(summary["clock_offset_seconds"], Value::Null, "{retries}: {run:?}");
        let seen = &h.devices()["devices"][0]["clock_offset"];
        assert!(seen["seconds"].as_i64().is_none_or(|s| s.abs() <= 2), "{retries}: the receiver saw {seen}");
    }
}

/// A receiver that knows the device's key but refuses every clock, signed,
/// each time naming a time an hour off the one just signed: the auth check
/// asks again by it twice, no more, and then the run stops (exit 6) without
/// reading a file.
#[test]
fn a_receiver_that_never_accepts_the_corrected_clock_gets_two_more_tries_and_no_more() {
    use logferry_common::signing::{AuthHeader, receipt};
    let h = Harness::start();
    h.log("a.log", b"a\n");
    let key = DEVICE.parse::<logferry_common::DeviceId>().expect("valid").derive_key();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let asked = std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let (deadline, mut asked) = (Instant::now() + Duration::from_secs(10), 0);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).expect("blocking");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let Some(auth) = head.lines().find_map(|l| l.strip_prefix("authorization: ")) else { continue };
            let auth: AuthHeader = auth.parse().expect("the sender's header");
            asked += 1;
            let body = format!(r#"{{"error":"off","code":"clock_skew","receiver_time":{}}}"#, auth.timestamp + 3600);
            let tag = receipt(&key, 401, &auth.signature, body.as_bytes());
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nx-logferry-receipt: {tag}\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
        asked
    });
    let run = sender(h.dir.path(), &h.args(&address, &["--json"]));
    done.store(true, Ordering::Relaxed);
    assert_eq!(asked.join().expect("fake receiver"), 3, "{run:?}");
    assert_eq!(run.code, Some(6), "{run:?}");
    assert_eq!(json(&run)["clock_offset_seconds"], Value::Null, "an offset never accepted is not reported: {run:?}");
    assert_eq!(files(&h.logs()), ["a.log"]);
}
