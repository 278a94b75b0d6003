//! Issue 11: what a client on the LAN that proves nothing can do to a
//! device. Connections that hold uploads open without a valid signature
//! (none, garbage, signed for other fields, or valid but trickled a byte at
//! a time) must not keep the real device from storing its files, must be
//! cut off at the head deadline, must count as failed authentications, and
//! must neither throttle nor blame the device beside them at 127.0.0.1.
//! Raw TCP clients on their own threads play the attackers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use logferry_common::signing::{AuthHeader, verify_receipt};
use logferry_common::wire::endpoint;
use logferry_receiver::Limits;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::harness::*;

const BOUNDARY: &str = "B0undary";

/// The multipart body of an upload of `content` as `path`, in two pieces:
/// the three text fields with the file part's headers (all the receiver
/// must read before the signature can be checked), and the file's bytes
/// with the end of the body.
fn multipart(path: &str, content: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let claim = claim(path, content);
    let mut fields = Vec::new();
    for (name, value) in
        [("path", path.to_owned()), ("sha256", claim.sha256.to_hex()), ("size", content.len().to_string())]
    {
        fields.extend(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    fields.extend(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n").bytes(),
    );
    let mut file = content.to_vec();
    file.extend(format!("\r\n--{BOUNDARY}--\r\n").bytes());
    (fields, file)
}

/// An Authorization header naming the device's key id, with a signature
/// that is not one.
fn garbage_signature() -> String {
    AuthHeader { key_id: key(&device()).key_id().clone(), timestamp: now(), clock_offset: 0, signature: [0xA5; 32] }
        .to_string()
}

/// An answer as a raw client read it.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    code: Option<String>,
    retry_after: Option<u64>,
    /// From just before connecting until the whole answer was read.
    after: Duration,
}

/// One upload request over its own connection, sent as slowly as wanted.
struct Raw {
    stream: TcpStream,
    started: Instant,
    received: Vec<u8>,
    closed: bool,
    /// Body bytes sent so far.
    sent: usize,
}

impl Raw {
    /// Connects and sends the request line and headers, all at once.
    fn open(addr: SocketAddr, auth: Option<&str>, body_len: usize) -> Self {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let auth = auth.map(|auth| format!("Authorization: {auth}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Content-Length: {body_len}\r\nConnection: close\r\n\r\n",
            endpoint::UPLOAD
        );
        stream.write_all(head.as_bytes()).expect("request head");
        Self { stream, started, received: Vec::new(), closed: false, sent: 0 }
    }

    /// Sends `bytes` at once; false once the receiver no longer listens.
    fn send(&mut self, bytes: &[u8]) -> bool {
        let sent = self.stream.write_all(bytes).is_ok();
        if sent {
            self.sent += bytes.len();
        }
        sent
    }

    /// Sends `bytes` one at a time, `pace` apart, until the receiver answers
    /// (or `until`, or the last byte), then waits for the answer until `until`.
    fn trickle(&mut self, bytes: &[u8], pace: Duration, until: Instant) -> Option<Answer> {
        for byte in bytes {
            if let Some(answer) = self.poll() {
                return Some(answer);
            }
            if self.closed || Instant::now() >= until || !self.send(std::slice::from_ref(byte)) {
                break;
            }
            std::thread::sleep(pace);
        }
        self.wait(until)
    }

    /// The answer, if it has arrived in full; never blocks.
    fn poll(&mut self) -> Option<Answer> {
        self.stream.set_nonblocking(true).expect("non-blocking");
        while !self.closed && self.pull() {}
        self.stream.set_nonblocking(false).expect("blocking");
        self.answer()
    }

    /// The answer, waiting for it until `until`.
    fn wait(&mut self, until: Instant) -> Option<Answer> {
        loop {
            if let Some(answer) = self.answer() {
                return Some(answer);
            }
            let left = until.saturating_duration_since(Instant::now());
            if self.closed || left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).expect("read timeout");
            self.pull();
        }
    }

    /// One read; whether it brought bytes.
    fn pull(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                self.received.extend_from_slice(&buf[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => self.closed = true,
        }
        false
    }

    /// The answer in what was received, once it is complete.
    fn answer(&self) -> Option<Answer> {
        let end = self.received.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.received[..end]);
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let header = |name: &str| {
            head.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(found, _)| found.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.trim().to_owned())
        };
        let body = match header("content-length") {
            Some(len) => self.received.get(end..end + len.parse::<usize>().ok()?)?,
            None if self.closed => &self.received[end..],
            None => return None,
        };
        let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["code"].as_str().map(str::to_owned));
        let retry_after = header("retry-after").and_then(|v| v.parse().ok());
        Some(Answer { status, code, retry_after, after: self.started.elapsed() })
    }
}

/// How the attackers of the stall test hold their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// No Authorization header; the body trickles.
    NoAuth,
    /// The device's key id with a garbage signature; the fields trickle.
    GarbageSignature,
    /// A header the device itself could have sent, valid for the fields
    /// that follow, but they trickle: the head never completes in time.
    SlowHead,
    /// A complete head signed with the device's key over other fields,
    /// then the file trickles.
    WrongSignature,
}

/// Forty attackers, well over the four slots (two per device).
const ATTACKERS: [(Attack, usize); 4] =
    [(Attack::NoAuth, 8), (Attack::GarbageSignature, 8), (Attack::SlowHead, 16), (Attack::WrongSignature, 8)];
/// Between two bytes of a trickle: far within any idle timeout.
const TRICKLE: Duration = Duration::from_millis(100);
/// Bounds on each attacker: attempts, and how long it keeps starting them.
const MAX_ATTEMPTS: usize = 40;
const ATTACK_FOR: Duration = Duration::from_secs(10);

impl Attack {
    /// Whether the receiver must cut it off at the head deadline (rather
    /// than refuse it at once).
    fn held_until_the_deadline(self) -> bool {
        matches!(self, Self::GarbageSignature | Self::SlowHead)
    }

    /// What it must be answered, unless its address is throttled.
    fn refused_with(self) -> (u16, &'static str) {
        match self {
            Self::NoAuth => (401, "missing_auth"),
            Self::GarbageSignature | Self::SlowHead => (408, "timeout"),
            Self::WrongSignature => (401, "bad_signature"),
        }
    }

    /// One attempt, until answered or `head_timeout` and some more passed.
    fn once(self, addr: SocketAddr, n: usize, head_timeout: Duration) -> Option<Answer> {
        let path = format!("attack/{self:?}-{n}.log");
        let content = vec![b'x'; 4096];
        let (fields, file) = multipart(&path, &content);
        let len = fields.len() + file.len();
        let until = Instant::now() + head_timeout + Duration::from_secs(3);
        match self {
            Self::NoAuth => Raw::open(addr, None, len).trickle(&[fields, file].concat(), TRICKLE, until),
            Self::GarbageSignature => Raw::open(addr, Some(&garbage_signature()), len).trickle(&fields, TRICKLE, until),
            Self::SlowHead => {
                let valid = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim(&path, &content)));
                Raw::open(addr, Some(&valid), len).trickle(&fields, TRICKLE, until)
            }
            Self::WrongSignature => {
                let other = claim(&path, b"other content");
                let wrong = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&other));
                let mut raw = Raw::open(addr, Some(&wrong), len);
                raw.send(&fields);
                raw.trickle(&file, TRICKLE, until)
            }
        }
    }

    /// Attempts one after the other until `stop` (bounded in count and time).
    fn repeatedly(self, addr: SocketAddr, head_timeout: Duration, stop: &AtomicBool) -> Vec<Option<Answer>> {
        let give_up = Instant::now() + ATTACK_FOR;
        let mut answers = Vec::new();
        for n in 0..MAX_ATTEMPTS {
            if stop.load(Ordering::Relaxed) || Instant::now() >= give_up {
                break;
            }
            answers.push(self.once(addr, n, head_timeout));
            std::thread::sleep(TRICKLE);
        }
        answers
    }
}

/// `logferry_auth_failures_total`, as GET /metrics shows it.
async fn auth_failures(h: &Harness) -> u64 {
    metric(h, "logferry_auth_failures_total").await
}

async fn metric(h: &Harness, series: &str) -> u64 {
    let text = h.get_text(endpoint::METRICS).await;
    let value = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
    value.unwrap_or_else(|| panic!("no {series} in\n{text}")).parse().expect("a whole number")
}

/// The test device's row in GET /v1/devices.
async fn device_row(h: &Harness) -> Value {
    let report: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    let devices = report["devices"].as_array().expect("devices");
    devices.iter().find(|d| d["label"] == "bench-pi").expect("the test device is listed").clone()
}

#[tokio::test]
async fn forty_attackers_holding_uploads_open_do_not_stall_the_real_device() {
    let head_timeout = Duration::from_secs(2);
    // Exactly the slots the device's four uploads at a time need, and no
    // waiting for one: should an attacker hold a slot, a real upload gets
    // 429 busy at once, which the checks below see without timing anything.
    let h = Harness::start_with(Limits {
        max_uploads: 4,
        max_uploads_per_device: 4,
        queue_wait: Duration::ZERO,
        head_timeout,
        auth_failures_per_minute: 10,
        ..Limits::default()
    });
    let addr = h.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = ATTACKERS
        .iter()
        .flat_map(|&(kind, count)| std::iter::repeat_n(kind, count))
        .map(|kind| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || (kind, kind.repeatedly(addr, head_timeout, &stop)))
        })
        .collect();
    // The slow heads are under way before the device starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The device sends 20 files, four at a time (all the slots there are),
    // in groups spread over more than a second.
    let t0 = tokio::time::Instant::now();
    let real: Vec<_> = futures_util::stream::iter(0..20u64)
        .map(|i| {
            let h = &h;
            async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(300 * (i / 4))).await;
                let started = Instant::now();
                let content = format!("reading {i}\n").repeat(100);
                let (status, body) = h.upload(&format!("real/{i:02}.log"), content.as_bytes()).await;
                (i, status, body, started.elapsed())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for attacker in attackers {
        let (kind, got) = attacker.join().expect("attacker thread");
        answers.extend(got.into_iter().map(|answer| (kind, answer)));
    }

    // Every real upload stored: none found a slot held by an attacker.
    let slowest = real.iter().map(|r| r.3).max().expect("uploads");
    eprintln!("slowest of the real uploads: {slowest:?}; {} attacks answered", answers.len());
    for (i, status, body, _) in &real {
        assert_eq!(*status, 201, "real upload {i}: {body}");
    }

    // Every attack was refused: at once, or at the head deadline for those
    // whose head never completed; once the address was over its limit,
    // with 429 rate_limited instead.
    let mut throttled = 0;
    for (kind, answer) in &answers {
        let answer = answer.as_ref().unwrap_or_else(|| panic!("{kind:?}: no answer"));
        let got = (answer.status, answer.code.as_deref().unwrap_or("-"));
        if got == (429, "rate_limited") {
            assert!(answer.retry_after.is_some(), "{kind:?}: 429 without Retry-After");
            throttled += 1;
        } else {
            assert_eq!(got, kind.refused_with(), "{kind:?}: {answer:?}");
        }
        if kind.held_until_the_deadline() {
            let window = head_timeout..head_timeout + Duration::from_millis(1500);
            assert!(window.contains(&answer.after), "{kind:?} answered after {:?}", answer.after);
        } else {
            assert!(answer.after < Duration::from_secs(1), "{kind:?} answered after {:?}", answer.after);
        }
    }
    let held = answers.iter().filter(|(kind, _)| kind.held_until_the_deadline()).count();
    assert!(held >= 24, "each of the 24 slow heads was answered: {held}");
    assert!(throttled > 0, "the attackers' address was throttled while the device uploaded");

    let mut expected: Vec<String> = (0..20)
        .flat_map(|i| [format!("{DEVICE}/real/{i:02}.log"), format!("{DEVICE}/real/{i:02}.log.sha256")])
        .collect();
    expected.sort();
    assert_eq!(h.stored_files(), expected, "the real files, nothing else, and no staging left");
    assert_eq!(auth_failures(&h).await, answers.len() as u64, "each attack counted as a failed authentication");
    assert_eq!(metric(&h, "logferry_uploads_in_flight").await, 0);
    let row = device_row(&h).await;
    assert_eq!((row["rejections"].as_u64(), &row["last_rejection"]), (Some(0), &Value::Null), "{row}");
}

#[tokio::test]
async fn a_valid_head_trickled_within_the_idle_timeout_is_cut_off_at_the_head_deadline_as_a_failure() {
    let head_timeout = Duration::from_secs(2);
    let h = Harness::start_with(Limits {
        head_timeout,
        idle_timeout: Duration::from_secs(1),
        auth_failures_per_minute: 1,
        ..Limits::default()
    });
    let path = format!("slow/{}.log", "p".repeat(40));
    let content = b"never arrives\n";
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim(&path, content)));
    let (head, rest) = multipart(&path, content);
    let value_at = head.windows(path.len()).position(|w| w == path.as_bytes()).expect("the path's value");
    let mut raw = Raw::open(h.addr(), Some(&auth), head.len() + rest.len());
    assert!(raw.send(&head[..value_at]), "the path part's headers");
    // A byte every 150 ms: never idle for even a second, but the path alone
    // would take 7 s.
    let until = Instant::now() + head_timeout + Duration::from_secs(3);
    let answer = raw.trickle(&head[value_at..], Duration::from_millis(150), until).expect("an answer");
    assert_eq!((answer.status, answer.code.as_deref()), (408, Some("timeout")), "{answer:?}");
    let window = head_timeout..head_timeout + Duration::from_secs(1);
    assert!(window.contains(&answer.after), "answered after {:?}", answer.after);
    let trickled = raw.sent - value_at;
    assert!((10..path.len()).contains(&trickled), "cut off within the path, after {trickled} bytes of it");
    assert_eq!(auth_failures(&h).await, 1, "the head past its deadline is a failed authentication");

    // That used up the address's one failure a minute: the next one is
    // throttled, while the device signing correctly from it is served.
    let next = send(h.http.get(h.url(endpoint::AUTH_CHECK)), Some(&garbage_signature())).await;
    assert_eq!((next.status, next.body["code"].as_str()), (429, Some("rate_limited")), "{}", next.body);
    assert!(next.retry_after.is_some_and(|s| (1..=60).contains(&s)), "Retry-After {:?}", next.retry_after);
    let check = device_check(&h).await;
    assert_eq!((check.status, check.receipt), (200, Receipt::Valid), "{}", check.body);
    let upload = device_upload(&h, "after.log", b"on time\n").await;
    assert_eq!((upload.status, upload.receipt), (201, Receipt::Valid), "{}", upload.body);
    assert_eq!(auth_failures(&h).await, 2);
    assert_eq!(h.stored_files(), [format!("{DEVICE}/after.log"), format!("{DEVICE}/after.log.sha256")]);

    // Hanging up just before the deadline does not escape being counted.
    let mut quitter = Raw::open(h.addr(), Some(&auth), head.len() + rest.len());
    assert!(quitter.send(&head[..value_at + 5]), "part of the path");
    std::thread::sleep(head_timeout / 2);
    drop(quitter);
    let deadline = Instant::now() + Duration::from_secs(5);
    while auth_failures(&h).await < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(auth_failures(&h).await, 3, "a head cut off by its client is a failed authentication");
}

/// Whether an answer carried a receipt, and whether it verified for the
/// test device and the request's signature.
#[derive(Debug, PartialEq, Eq)]
enum Receipt {
    Valid,
    Absent,
    Forged,
}

/// An answer to a request sent with reqwest.
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
    receipt: Receipt,
}

async fn send(request: reqwest::RequestBuilder, auth: Option<&str>) -> Reply {
    let request = match auth {
        Some(auth) => request.header("Authorization", auth),
        None => request,
    };
    let response = request.send().await.expect("receiver answers");
    let status = response.status().as_u16();
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let tag = header("x-logferry-receipt");
    let bytes = response.bytes().await.expect("body");
    let signature = auth.and_then(|auth| auth.parse::<AuthHeader>().ok()).map(|header| header.signature);
    let receipt = match (tag, signature) {
        (None, _) => Receipt::Absent,
        (Some(tag), Some(sig)) if verify_receipt(&key(&device()), status, &sig, &bytes, &tag) => Receipt::Valid,
        _ => Receipt::Forged,
    };
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("HTTP {status}: not JSON: {bytes:?}"));
    Reply { status, body, retry_after, receipt }
}

/// The test device's auth check, correctly signed.
async fn device_check(h: &Harness) -> Reply {
    let auth = authorization(&device(), "GET", endpoint::AUTH_CHECK, now(), None);
    send(h.http.get(h.url(endpoint::AUTH_CHECK)), Some(&auth)).await
}

/// An upload by the test device, correctly signed over what it declares
/// (`declared`), carrying `content`.
async fn device_upload_declaring(h: &Harness, path: &str, declared: &[u8], content: &[u8]) -> Reply {
    let claim = claim(path, declared);
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form(path, &claim.sha256.to_hex(), &claim.size.to_string(), content);
    send(h.http.post(h.url(endpoint::UPLOAD)).multipart(form), Some(&auth)).await
}

async fn device_upload(h: &Harness, path: &str, content: &[u8]) -> Reply {
    device_upload_declaring(h, path, content, content).await
}

/// Failed authentications, several naming the test device's key id.
#[derive(Debug, Clone, Copy)]
enum Failing {
    /// An upload signed with the device's key over other fields.
    BadSignature,
    /// An upload naming the device's key id, with a garbage signature.
    GarbageSignature,
    /// An Authorization header naming the device's key id that does not parse.
    MalformedHeader,
    NoAuth,
    /// An auth check signed by a key the receiver does not list.
    UnknownKey,
    /// An auth check with another scheme's header.
    OtherScheme,
    /// An auth check signed with the device's key for another endpoint.
    OtherEndpoint,
}

impl Failing {
    const ALL: [Self; 7] = [
        Self::BadSignature,
        Self::GarbageSignature,
        Self::MalformedHeader,
        Self::NoAuth,
        Self::UnknownKey,
        Self::OtherScheme,
        Self::OtherEndpoint,
    ];

    /// Its answer while the address is within its limit.
    fn code(self) -> &'static str {
        match self {
            Self::BadSignature | Self::GarbageSignature | Self::OtherEndpoint => "bad_signature",
            Self::MalformedHeader | Self::OtherScheme => "malformed_auth",
            Self::NoAuth => "missing_auth",
            Self::UnknownKey => "unknown_device",
        }
    }

    async fn send(self, h: &Harness, n: usize) -> Reply {
        let path = format!("attack/{n}.log");
        let content = b"forged\n";
        let upload = || {
            let form = upload_form(&path, &digest(content).to_hex(), &content.len().to_string(), content);
            h.http.post(h.url(endpoint::UPLOAD)).multipart(form)
        };
        let check = || h.http.get(h.url(endpoint::AUTH_CHECK));
        match self {
            Self::BadSignature => {
                let other = claim(&path, b"other content\n");
                send(upload(), Some(&authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&other)))).await
            }
            Self::GarbageSignature => send(upload(), Some(&garbage_signature())).await,
            Self::MalformedHeader => {
                let header =
                    format!("LOGFERRY-HMAC-SHA256 KeyId={}, Timestamp=soon, Signature=yes", key(&device()).key_id());
                send(upload(), Some(&header)).await
            }
            Self::NoAuth => send(upload(), None).await,
            Self::UnknownKey => {
                send(check(), Some(&authorization(&stranger(), "GET", endpoint::AUTH_CHECK, now(), None))).await
            }
            Self::OtherScheme => send(check(), Some("Bearer hunter2")).await,
            Self::OtherEndpoint => {
                send(check(), Some(&authorization(&device(), "GET", endpoint::HEALTH, now(), None))).await
            }
        }
    }
}

/// Uploads naming the device's key id with a garbage signature that are
/// refused before the signature can be checked, for what else is wrong.
#[derive(Debug, Clone, Copy)]
enum Unverifiable {
    FieldsOutOfOrder,
    PathTooLong,
    Encoded,
}

impl Unverifiable {
    const ALL: [Self; 3] = [Self::FieldsOutOfOrder, Self::PathTooLong, Self::Encoded];

    async fn send(self, h: &Harness) -> Reply {
        let content = b"forged\n";
        let (sha256, size) = (digest(content).to_hex(), content.len().to_string());
        let request = h.http.post(h.url(endpoint::UPLOAD));
        let request = match self {
            Self::FieldsOutOfOrder => request.multipart(
                Form::new()
                    .text("sha256", sha256)
                    .text("path", "swapped.log")
                    .text("size", size)
                    .part("file", Part::bytes(content.to_vec()).file_name("f")),
            ),
            Self::PathTooLong => request.multipart(upload_form(&"a".repeat(1100), &sha256, &size, content)),
            Self::Encoded => {
                request.header("Content-Encoding", "gzip").multipart(upload_form("zipped.log", &sha256, &size, content))
            }
        };
        send(request, Some(&garbage_signature())).await
    }
}

#[tokio::test]
async fn an_attacker_at_the_devices_address_is_throttled_while_the_device_is_served_and_not_blamed() {
    const PER_MINUTE: usize = Failing::ALL.len();
    let h = Harness::start_with(Limits { auth_failures_per_minute: PER_MINUTE as u32, ..Limits::default() });
    let mut stored = Vec::new();
    for n in 0..3 * PER_MINUTE {
        let attack = Failing::ALL[n % PER_MINUTE];
        let got = attack.send(&h, n).await;
        let code = got.body["code"].as_str();
        if n < PER_MINUTE {
            assert_eq!(
                (got.status, code, got.retry_after),
                (401, Some(attack.code()), None),
                "{attack:?}: {}",
                got.body
            );
        } else {
            assert_eq!((got.status, code), (429, Some("rate_limited")), "{attack:?} #{n}: {}", got.body);
            assert!(got.retry_after.is_some_and(|s| (1..=60).contains(&s)), "{attack:?}: {:?}", got.retry_after);
        }
        assert_eq!(got.receipt, Receipt::Absent, "{attack:?}: an answer to an unverified request is not signed");

        // The device, from the same address, between the attacker's tries.
        let check = device_check(&h).await;
        assert_eq!((check.status, check.receipt), (200, Receipt::Valid), "auth check after #{n}: {}", check.body);
        let path = format!("real/{n:02}.log");
        let upload = device_upload(&h, &path, format!("line {n}\n").as_bytes()).await;
        assert_eq!((upload.status, upload.receipt), (201, Receipt::Valid), "upload after #{n}: {}", upload.body);
        stored.extend([format!("{DEVICE}/{path}"), format!("{DEVICE}/{path}.sha256")]);
    }
    assert_eq!(auth_failures(&h).await, 3 * PER_MINUTE as u64, "every failure counted, throttled or not");

    // Uploads naming the device's key id that cannot even be read far
    // enough to check a signature count as failures too, so the throttled
    // address gets 429 for them, unsigned.
    for attack in Unverifiable::ALL {
        let got = attack.send(&h).await;
        assert_eq!((got.status, got.body["code"].as_str()), (429, Some("rate_limited")), "{attack:?}: {}", got.body);
        assert_eq!(got.receipt, Receipt::Absent, "{attack:?}: {}", got.body);
    }
    let counted = 3 * PER_MINUTE + Unverifiable::ALL.len();
    assert_eq!(auth_failures(&h).await, counted as u64, "refusals before verification count");
    let row = device_row(&h).await;
    assert_eq!(
        (row["rejections"].as_u64(), &row["last_rejection"]),
        (Some(0), &Value::Null),
        "nothing the attacker sent in the device's name is the device's rejection: {row}"
    );

    // What the device itself is refused does show.
    let mismatch = device_upload_declaring(&h, "mismatch.log", b"declared\n", b"received\n").await;
    assert_eq!((mismatch.status, mismatch.receipt), (422, Receipt::Valid), "{}", mismatch.body);
    let row = device_row(&h).await;
    assert_eq!(
        (row["rejections"].as_u64(), row["last_rejection"]["code"].as_str()),
        (Some(1), Some("checksum_mismatch"))
    );
    stored.sort();
    assert_eq!(h.stored_files(), stored);
}
