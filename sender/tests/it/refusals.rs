//! Refusals with and without a receipt, through the fault proxy. Only a
//! refusal the receiver signed is a verdict on a file; one nobody signed
//! (a man in the middle, or a receipt stripped or changed on the way) is
//! retried like a network failure and, if it persists, the file stays with
//! a message saying the refusal may not come from the receiver. Exit code 1
//! either way: the auth check got a signed answer, so the receiver is
//! reachable (not 5) and accepts the device (not 6); this file was not
//! delivered and stays for the next run, as after a connection cut mid-way.

use std::sync::atomic::Ordering;

use crate::harness::*;
use crate::proxy::{Fault, FaultProxy};

const SOME_FILES_FAILED: i32 = 1;
const UNSIGNED: &str = "without a valid receipt, so possibly not from the receiver";

/// Connection 0 carries the auth check, which every fault here lets pass;
/// each upload attempt then comes on a connection of its own.
fn first_uploads(count: u64, fault: Fault) -> impl Fn(u64) -> Fault + Send + 'static {
    move |n| if n <= count { fault } else { Fault::Pass }
}

fn forged(status: u16, code: &'static str) -> Fault {
    Fault::ForgeRefusal { status, code }
}

fn assert_kept(h: &Harness, name: &str, run: &Run) {
    assert_eq!(files(&h.logs()), [name], "the file stays: {run:?}");
    assert_eq!(files(&h.sent()), Vec::<String>::new(), "nothing moved: {run:?}");
}

#[test]
fn an_unsigned_refusal_is_retried_and_the_file_delivered_once_answers_pass() {
    let h = Harness::start();
    h.log("day.csv", b"t,v\n1,2\n");
    let proxy = FaultProxy::start(h.host(), first_uploads(2, forged(422, "checksum_mismatch")));
    let run = h.send_to(&proxy.address, &["--retries", "3"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("1 sent"), "{run:?}");
    assert_eq!((proxy.counts.forged.load(Ordering::Relaxed), proxy.counts.uploads()), (2, 3));
    assert_eq!(std::fs::read(h.stored().join("day.csv")).expect("stored"), b"t,v\n1,2\n");
    assert_eq!(files(&h.sent()), ["day.csv"]);
    assert_eq!(files(&h.logs()), Vec::<String>::new());
}

#[test]
fn an_unsigned_refusal_that_persists_leaves_the_file_and_says_it_may_not_be_the_receivers() {
    let cases = [(422, "checksum_mismatch"), (409, "path_conflict"), (413, "too_large")];
    // In parallel: each waits out one backoff.
    std::thread::scope(|scope| {
        for (status, code) in cases {
            scope.spawn(move || {
                let h = Harness::start();
                h.log("kept.log", b"must not be given up on\n");
                let proxy = FaultProxy::start(h.host(), move |_| forged(status, code));
                let run = h.send_to(&proxy.address, &["--retries", "1"]);
                assert_eq!(run.code, Some(SOME_FILES_FAILED), "{status}: {run:?}");
                assert_eq!(proxy.counts.uploads(), 2, "{status}: tried again once: {run:?}");
                assert!(
                    run.stderr.contains("kept.log")
                        && run.stderr.contains(&format!("HTTP {status}"))
                        && run.stderr.contains(UNSIGNED),
                    "{status}: {run:?}"
                );
                assert!(!run.stderr.contains("the receiver refused it"), "{status}: {run:?}");
                assert!(run.stdout.contains("1 failed"), "{status}: {run:?}");
                assert_kept(&h, "kept.log", &run);
                assert_eq!(files(&h.stored()), Vec::<String>::new(), "{status}: the receiver never saw it");
            });
        }
    });
}

/// A receiver taking files of at most 10 bytes, and a file in the logs too
/// large for a batch, so its refusal is an answer of its own (a batch's
/// refusals of single files are results in a 200 answer).
fn too_large_for_the_receiver() -> Harness {
    let h = Harness::start_with(|_, config| config.limits.max_file_size = 10);
    h.log("large.log", &vec![b'x'; 200 * 1024]);
    h
}

#[test]
fn a_signed_refusal_from_the_receiver_is_a_verdict_and_not_retried() {
    let h = too_large_for_the_receiver();
    let proxy = FaultProxy::start(h.host(), |_| Fault::Pass);
    let run = h.send_to(&proxy.address, &["--retries", "3"]);
    assert_eq!(run.code, Some(SOME_FILES_FAILED), "{run:?}");
    assert_eq!(proxy.counts.uploads(), 1, "a signed 413 is not asked again: {run:?}");
    assert!(
        run.stderr.contains("large.log")
            && run.stderr.contains("the receiver refused it (HTTP 413)")
            && run.stderr.contains("at most 10"),
        "{run:?}"
    );
    assert!(!run.stderr.contains(UNSIGNED), "{run:?}");
    assert_kept(&h, "large.log", &run);
}

#[test]
fn a_signed_refusal_whose_receipt_is_stripped_or_changed_counts_as_unsigned() {
    std::thread::scope(|scope| {
        for fault in [Fault::StripReceipt, Fault::CorruptReceipt] {
            // Tampered with every time: retried, then kept as unsigned.
            scope.spawn(move || {
                let h = too_large_for_the_receiver();
                let proxy = FaultProxy::start(h.host(), move |_| fault);
                let run = h.send_to(&proxy.address, &["--retries", "1"]);
                assert_eq!(run.code, Some(SOME_FILES_FAILED), "{fault:?}: {run:?}");
                assert_eq!(proxy.counts.uploads(), 2, "{fault:?}: retried: {run:?}");
                assert_eq!(proxy.counts.receipts_tampered.load(Ordering::Relaxed), 2, "{fault:?}");
                assert!(run.stderr.contains("HTTP 413") && run.stderr.contains(UNSIGNED), "{fault:?}: {run:?}");
                assert_kept(&h, "large.log", &run);
            });
            // Tampered with once: the retry gets the signed verdict, which ends it.
            scope.spawn(move || {
                let h = too_large_for_the_receiver();
                let proxy = FaultProxy::start(h.host(), first_uploads(1, fault));
                let run = h.send_to(&proxy.address, &["--retries", "3"]);
                assert_eq!(run.code, Some(SOME_FILES_FAILED), "{fault:?}: {run:?}");
                assert_eq!(proxy.counts.uploads(), 2, "{fault:?}: one retry, then the verdict: {run:?}");
                assert_eq!(proxy.counts.receipts_tampered.load(Ordering::Relaxed), 1, "{fault:?}");
                assert!(run.stderr.contains("the receiver refused it (HTTP 413)"), "{fault:?}: {run:?}");
                assert_kept(&h, "large.log", &run);
            });
        }
    });
}
