//! A TCP proxy on loopback that injects network faults between the sender
//! and the receiver: refused connections, stalls, bodies cut mid-way,
//! answers lost after the receiver committed, and a man in the middle who
//! answers uploads himself or tampers with the receiver's receipts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What happens to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Closed as soon as it is accepted.
    Drop,
    /// Accepted, then silent for a while, then closed.
    Stall,
    /// The request is cut after some bytes.
    CutMidBody,
    /// The first upload request through the proxy is cut after this many
    /// bytes (head included); everything else passes.
    CutFirstUploadAfter(u64),
    /// An upload reaches the receiver whole; its answer is thrown away.
    LoseAnswer,
    /// An upload is read whole and answered by the proxy itself, as a man in
    /// the middle could: HTTP `status` with the protocol's JSON error body of
    /// `code`, and no receipt (he cannot make one). It never reaches the
    /// receiver. Other requests pass.
    ForgeRefusal {
        status: u16,
        code: &'static str,
    },
    /// An auth check is answered by the proxy itself with a `clock_skew`
    /// refusal giving `receiver_time`, without a receipt. Other requests pass.
    ForgeClockSkew {
        receiver_time: u64,
    },
    /// The receiver's answer to an upload passes without its receipt header.
    StripReceipt,
    /// The receiver's answer to an upload passes with one hex digit of its
    /// receipt changed.
    CorruptReceipt,
    /// The first content answer (`GET /v1/update/content/…`, 200 or 206)
    /// through the proxy is cut after this many bytes of its body; every
    /// other passes.
    CutFirstContentAfter(u64),
    /// Every content answer passes with the first byte of its body changed.
    FlipContentByte,
}

/// Share of connections (in percent) that get each fault; the rest pass.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub drop: u64,
    pub stall: u64,
    pub cut: u64,
    pub lose_answer: u64,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    pub dropped: AtomicU64,
    pub stalled: AtomicU64,
    pub cut: AtomicU64,
    pub answers_lost: AtomicU64,
    /// Upload requests the proxy read (passed on or answered itself): the
    /// sender's attempts, less any dropped or stalled before a byte was read.
    pub uploads: AtomicU64,
    /// Requests the proxy answered itself (`ForgeRefusal`, `ForgeClockSkew`).
    pub forged: AtomicU64,
    /// Answers whose receipt was stripped or changed.
    pub receipts_tampered: AtomicU64,
    /// Bytes passed on from the sender to the receiver.
    pub bytes_up: AtomicU64,
    /// Upload requests with an `encoding` field (a compressed file part).
    pub encoded_uploads: AtomicU64,
    /// Content requests (`GET /v1/update/content/…`) the proxy passed on.
    pub content_requests: AtomicU64,
    /// Body bytes of content answers (200, 206) passed back to the sender.
    pub content_bytes: AtomicU64,
    /// Content answers that passed with a byte changed.
    pub content_flipped: AtomicU64,
}

impl Counts {
    pub fn injected(&self) -> u64 {
        [
            &self.dropped,
            &self.stalled,
            &self.cut,
            &self.answers_lost,
            &self.forged,
            &self.receipts_tampered,
            &self.content_flipped,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// How many upload requests reached the proxy so far.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }
}

pub struct FaultProxy {
    pub address: String,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a stalled connection is held before it is closed.
const STALL: Duration = Duration::from_secs(2);

impl FaultProxy {
    /// Proxies to `upstream`; `choose(n)` decides the fault of the n-th
    /// connection (0-based).
    pub fn start(upstream: String, choose: impl Fn(u64) -> Fault + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("addr").to_string();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_counts, thread_stop) = (Arc::clone(&counts), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let n = thread_counts.connections.fetch_add(1, Ordering::Relaxed);
                let fault = choose(n);
                let counts = Arc::clone(&thread_counts);
                let upstream = upstream.clone();
                std::thread::spawn(move || handle(client, &upstream, fault, &counts, n));
            }
        });
        Self { address, counts, stop, thread: Some(thread) }
    }

    /// A proxy whose faults follow `plan`, drawn from a fixed seed so a
    /// failing run can be repeated.
    pub fn random(upstream: String, plan: Plan, seed: u64) -> Self {
        let state = Mutex::new(seed);
        Self::start(upstream, move |_| {
            let mut x = state.lock().expect("rng");
            // xorshift64: deterministic, no dependency.
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            let roll = *x % 100;
            let thresholds = [
                (plan.drop, Fault::Drop),
                (plan.stall, Fault::Stall),
                (plan.cut, Fault::CutMidBody),
                (plan.lose_answer, Fault::LoseAnswer),
            ];
            let mut edge = 0;
            for (share, fault) in thresholds {
                edge += share;
                if roll < edge {
                    return fault;
                }
            }
            Fault::Pass
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn handle(mut client: TcpStream, upstream: &str, fault: Fault, counts: &Arc<Counts>, n: u64) {
    // What was read from the client before the upstream connection exists.
    let mut request = Vec::new();
    match fault {
        Fault::Drop => {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Fault::Stall => {
            counts.stalled.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(STALL);
            return;
        }
        Fault::ForgeRefusal { status, code } => {
            let Some(whole) = read_request(&mut client) else { return };
            if UPLOAD_LINES.iter().any(|line| whole.starts_with(line)) {
                counts.uploads.fetch_add(1, Ordering::Relaxed);
                let body = format!(r#"{{"error":"forged by the proxy: refused as {code}","code":"{code}"}}"#);
                return forge(client, counts, status, &body);
            }
            request = whole;
        }
        Fault::ForgeClockSkew { receiver_time } => {
            let Some(whole) = read_request(&mut client) else { return };
            if whole.starts_with(AUTH_CHECK_LINE) {
                let body = format!(
                    r#"{{"error":"forged by the proxy: your clock is off","code":"clock_skew","receiver_time":{receiver_time}}}"#
                );
                return forge(client, counts, 401, &body);
            }
            request = whole;
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream) else { return };
    if server.write_all(&request).is_err() {
        return;
    }
    let (client_read, server_write) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
    let cut_after = match fault {
        Fault::CutMidBody => Cut::After(300 + (n * 7919) % 20_000),
        Fault::CutFirstUploadAfter(bytes) => Cut::FirstUploadAfter(bytes),
        _ => Cut::Never,
    };
    let seen = Arc::new(Seen::default());
    let seen_up = Arc::clone(&seen);
    let up_counts = Arc::clone(counts);
    let up = std::thread::spawn(move || pump(client_read, server_write, cut_after, &seen_up, &up_counts));
    pump_answers(server, client, fault, &seen, counts);
    let cut = up.join().unwrap_or(false);
    if cut {
        counts.cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one whole request (head and body) from `client`.
fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16 * 1024];
    let mut request = Vec::new();
    while !message_complete(&request) {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    Some(request)
}

/// Answers `client` with an error `body` in the protocol's form, without a
/// receipt, and closes.
fn forge(mut client: TcpStream, counts: &Counts, status: u16, body: &str) {
    counts.forged.fetch_add(1, Ordering::Relaxed);
    let answer = format!(
        "HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

/// What kind of request a connection carried, noted as its request line passes.
#[derive(Debug, Default)]
struct Seen {
    upload: AtomicBool,
    content: AtomicBool,
}

/// Copies `from` to `to`, or only the first `limit` bytes, after which both
/// ends are shut; returns whether it cut. Notes and counts an upload (or a
/// content request) as soon
/// as its request line passes, before the receiver can answer it: counted
/// only after the connection closed, a sender could finish first and the
/// test read a count one short.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: Cut, seen: &Seen, counts: &Counts) -> bool {
    let saw_upload = &seen.upload;
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0u64;
    let mut limit = match cut {
        Cut::After(bytes) => Some(bytes),
        _ => None,
    };
    let mut encoding_seen = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if contains_any(&buf[..n], &UPLOAD_LINES) && !saw_upload.swap(true, Ordering::Relaxed) {
            counts.uploads.fetch_add(1, Ordering::Relaxed);
            if let Cut::FirstUploadAfter(bytes) = cut
                && counts.cut.load(Ordering::Relaxed) == 0
            {
                limit = Some(bytes);
            }
        }
        if buf[..n].starts_with(CONTENT_LINE) && !seen.content.swap(true, Ordering::Relaxed) {
            counts.content_requests.fetch_add(1, Ordering::Relaxed);
        }
        if saw_upload.load(Ordering::Relaxed) && !encoding_seen && contains_any(&buf[..n], &ENCODING_MARKS) {
            encoding_seen = true;
            counts.encoded_uploads.fetch_add(1, Ordering::Relaxed);
        }
        let allowed = limit.map_or(n as u64, |l| (l - sent).min(n as u64)) as usize;
        if to.write_all(&buf[..allowed]).is_err() {
            break;
        }
        counts.bytes_up.fetch_add(allowed as u64, Ordering::Relaxed);
        sent += allowed as u64;
        if limit.is_some_and(|l| sent >= l) {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return true;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    false
}

/// Where a request is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Never,
    After(u64),
    FirstUploadAfter(u64),
}

/// The request lines of an upload and of a batch (not of an offset query,
/// `/v1/upload/offset`).
const UPLOAD_LINES: [&[u8]; 2] = [b"POST /v1/upload ", b"POST /v1/upload/batch "];
/// What shows a compressed file part: an upload's `encoding` field, or a
/// batch manifest's entry.
const ENCODING_MARKS: [&[u8]; 2] = [b"name=\"encoding\"", b"\"encoding\":\"zstd\""];

fn contains_any(bytes: &[u8], patterns: &[&[u8]]) -> bool {
    patterns.iter().any(|pattern| bytes.windows(pattern.len()).any(|w| w == *pattern))
}
const AUTH_CHECK_LINE: &[u8] = b"GET /v1/auth-check";
const CONTENT_LINE: &[u8] = b"GET /v1/update/content/";

/// Copies the receiver's answer back, or, to lose the answer to an upload,
/// closes the client's connection as soon as the receiver starts answering
/// one (so the upload was complete and committed), or passes the answer to
/// an upload with its receipt stripped or changed. Either way the connection
/// ends after one answer, as behind a middlebox that closes connections:
/// every request then opens a new one and meets its own fault. The answer
/// says `connection: close`, so the client never sends a request into a
/// connection the proxy is closing (it would fail there, uncounted).
fn pump_answers(mut server: TcpStream, mut client: TcpStream, fault: Fault, seen: &Seen, counts: &Counts) {
    let mut buf = [0u8; 16 * 1024];
    let mut answer = Vec::new();
    let mut head_passed = false;
    let mut body_passed = 0u64;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let upload = seen.upload.load(Ordering::Relaxed);
        if fault == Fault::LoseAnswer && upload {
            counts.answers_lost.fetch_add(1, Ordering::Relaxed);
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if upload && matches!(fault, Fault::StripReceipt | Fault::CorruptReceipt) {
            // Held back until it is whole, then passed on altered.
            if !message_complete(&answer) {
                continue;
            }
            let altered = edit_head(&answer, |line| tamper_with_receipt(line, fault == Fault::StripReceipt));
            if altered != edit_head(&answer, |line| Some(line.to_owned())) {
                counts.receipts_tampered.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.write_all(&altered);
            break;
        }
        let (mut out, body_start) = if head_passed {
            (buf[..n].to_vec(), 0)
        } else if let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            head_passed = true;
            let edited = edit_head(&answer, |line| Some(line.to_owned()));
            let body_start = edited.len() - (answer.len() - head_end - 4);
            (edited, body_start)
        } else {
            continue;
        };
        let mut cut = false;
        if seen.content.load(Ordering::Relaxed)
            && (answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 206"))
        {
            let body = &mut out[body_start..];
            match fault {
                Fault::FlipContentByte if body_passed == 0 && !body.is_empty() => {
                    body[0] ^= 0xff;
                    counts.content_flipped.fetch_add(1, Ordering::Relaxed);
                }
                Fault::CutFirstContentAfter(limit) if counts.cut.load(Ordering::Relaxed) == 0 => {
                    let allowed = limit.saturating_sub(body_passed).min(body.len() as u64) as usize;
                    cut = allowed < body.len() || body_passed + allowed as u64 >= limit;
                    out.truncate(body_start + allowed);
                }
                _ => {}
            }
            let passed = (out.len() - body_start) as u64;
            body_passed += passed;
            counts.content_bytes.fetch_add(passed, Ordering::Relaxed);
        }
        let written = client.write_all(&out);
        if cut {
            counts.cut.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if written.is_err() || message_complete(&answer) {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// `bytes` (an answer's head and what follows) with each header line put
/// through `edit` (None drops it) and any `connection` header replaced by
/// `connection: close`; the rest is untouched.
fn edit_head(bytes: &[u8], edit: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return bytes.to_vec() };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines.filter(|line| !line.to_ascii_lowercase().starts_with("connection:")).filter_map(edit);
    let all: Vec<String> = [status].into_iter().chain(headers).chain(["connection: close".to_owned()]).collect();
    let mut edited = all.join("\r\n").into_bytes();
    edited.extend_from_slice(&bytes[head_end..]);
    edited
}

/// A header line with the receipt removed (`strip`) or its last hex digit
/// changed; other lines as they are.
fn tamper_with_receipt(line: &str, strip: bool) -> Option<String> {
    if !line.to_ascii_lowercase().starts_with(RECEIPT_PREFIX) {
        return Some(line.to_owned());
    }
    if strip {
        return None;
    }
    let mut changed = line.trim_end().to_owned();
    let last = changed.pop().map_or('0', |c| if c == '0' { '1' } else { '0' });
    changed.push(last);
    Some(changed)
}

const RECEIPT_PREFIX: &str = "x-logferry-receipt:";

/// Whether `bytes` hold a whole HTTP message: its head and `Content-Length`
/// bytes of body (the receiver always sends a length, and so does the sender
/// for its uploads), or a chunked body up to its last chunk.
fn message_complete(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    if head.lines().any(|line| line.starts_with("transfer-encoding:") && line.contains("chunked")) {
        return bytes.ends_with(b"\r\n0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= head_end + 4 + length
}
