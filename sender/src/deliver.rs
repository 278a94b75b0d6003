//! One run: check the credentials, walk the folder, deliver each file.

use std::io::{self, Read as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use logferry_common::Sha256Digest;
use logferry_common::signing::{HeadDigest, UploadClaim, UploadHead};
use logferry_common::wire::{BATCH_FILE_MAX, BATCH_MAX_FILES, BatchRefusal, BatchResult, UploadOutcome, UploadReceipt};
use reqwest::StatusCode;

use crate::body::Bandwidth;
use crate::client::{Client, ClientOptions, RequestError};
use crate::config::Config;
use crate::id_file::{self, IdFileError};
use crate::opened::Opened;
use crate::report::{Progress, Summary, human_bytes};
use crate::sent::SetAside;
use crate::{exit, prune, sent, update, walk};

/// What stops a run before or during the walk.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    IdFile(#[from] IdFileError),
    /// No connection could be made, or it broke, after the retries.
    #[error("receiver unreachable: {0}; files not yet sent stay for the next run")]
    Unreachable(RequestError),
    /// Something answered, but not as a logferry receiver does.
    #[error("{0}; files not yet sent stay for the next run")]
    NotAReceiver(RequestError),
    /// The receiver answered, but not with a yes, after the retries (busy,
    /// failing), for a reason other than the device's credentials.
    #[error("the receiver is reachable but did not serve this run: {0}; files not yet sent stay for the next run")]
    Unavailable(RequestError),
    #[error("authentication failed: {0}")]
    AuthFailed(RequestError),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error(
        "another sender run is already using the sent folder {} (it holds the lock {}); \
         this run stops so no file is sent twice",
        sent_dir.display(), lock.display()
    )]
    AlreadyRunning { sent_dir: std::path::PathBuf, lock: std::path::PathBuf },
    #[error("{0}")]
    Internal(String),
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::IdFile(_) => exit::ID_FILE,
            Self::Unreachable(_) | Self::NotAReceiver(_) => exit::UNREACHABLE,
            Self::Unavailable(_) => exit::RECEIVER_UNAVAILABLE,
            Self::AuthFailed(_) => exit::AUTH_FAILED,
            Self::Tls(_) => exit::TLS,
            Self::AlreadyRunning { .. } => exit::ALREADY_RUNNING,
            Self::Internal(_) => exit::INTERNAL,
        }
    }

    fn from_request(err: RequestError) -> Self {
        match err {
            RequestError::Tls { .. } => Self::Tls(err.to_string()),
            err if err.is_auth_failure() => Self::AuthFailed(err),
            RequestError::Refused { body: Some(_), .. } => Self::Unavailable(err),
            RequestError::Refused { body: None, .. } | RequestError::Garbled(_) => Self::NotAReceiver(err),
            err => Self::Unreachable(err),
        }
    }
}

/// What became of one file that was not delivered.
enum Undelivered {
    /// It stays for the next run; the run goes on.
    Kept(String),
    /// It is still being written; a later run sends its final content.
    NotYet,
    /// Nothing further can succeed in this run.
    Stop(Fatal),
}

/// How a run ended: the tally, and what stopped it early, if anything.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub fatal: Option<Fatal>,
}

impl Outcome {
    /// What stopped the run first, then files that stayed, then the update.
    pub fn exit_code(&self) -> u8 {
        let update_failed = self.summary.update.as_ref().is_some_and(|update| update.outcome.is_failure());
        match &self.fatal {
            Some(fatal) => fatal.exit_code(),
            None if !self.summary.failed.is_empty() => exit::SOME_FILES_FAILED,
            None if update_failed => exit::UPDATE_FAILED,
            None => exit::SUCCESS,
        }
    }
}

/// Runs once over the folder. Failures of single files are collected (and
/// printed as they happen); a failure that affects every file ends the run.
pub async fn run(config: &Config) -> Outcome {
    let started = Instant::now();
    let mut summary = Summary::default();
    let fatal = deliver_all(config, &mut summary).await.err();
    summary.elapsed = started.elapsed();
    Outcome { summary, fatal }
}

/// What a run would send, found without contacting the receiver, reading
/// the ID or moving anything (`--dry-run`).
pub fn dry_run(config: &Config) -> Outcome {
    let started = Instant::now();
    let found = walk::walk(&config.folder, &config.sent_dir);
    let mut summary = Summary { dry_run: true, skipped: found.skipped.len() as u64, ..Summary::default() };
    let quiet = Progress::new(false, 0);
    for (name, reason) in found.unusable {
        fail(&mut summary, &quiet, name, reason);
    }
    for candidate in &found.files {
        match stamp(&candidate.path) {
            // A run would look at a file with a future mtime again before sending it.
            Ok(stamp) if stamp.settled(config.min_age) != Settled::NotYet => {
                summary.planned.push((candidate.rel.to_string(), stamp.len))
            }
            Ok(_) => summary.not_yet += 1,
            Err(e) => fail(&mut summary, &quiet, candidate.rel.to_string(), format!("cannot read it: {e}")),
        }
    }
    summary.elapsed = started.elapsed();
    Outcome { summary, fatal: None }
}

/// Name of the lock file, in the sent folder (which the sender owns).
pub const LOCK_FILE: &str = ".logferry-sender.lock";

/// Delivers the files, then, once the receiver has accepted the device,
/// updates it however the uploads went, unless the receiver was lost on
/// the way: asking it again would only add a second round of retries.
async fn deliver_all(config: &Config, summary: &mut Summary) -> Result<(), Fatal> {
    let _lock = lock(config)?;
    let client = connect(config, summary).await?;
    let uploaded = upload_all(&client, config, summary).await;
    let receiver_lost = matches!(uploaded, Err(Fatal::Unreachable(_) | Fatal::AuthFailed(_) | Fatal::Tls(_)));
    if let Some(update) = config.update.as_ref().filter(|_| !receiver_lost) {
        summary.update = Some(update::update(&client, update).await);
    }
    uploaded
}

/// Reads the ID and has the receiver check it.
async fn connect(config: &Config, summary: &mut Summary) -> Result<Client, Fatal> {
    let id = id_file::read(&config.id_file, config.id_exposure)?;
    let pinned_ca = config.ca_cert.as_deref().map(read_ca_certs).transpose()?;
    let options = ClientOptions {
        pinned_ca,
        retries: config.retries,
        verbose: config.verbose,
        compression: config.compression,
        bandwidth: config.bwlimit.map(Bandwidth::new),
    };
    // Slow on purpose (Argon2id): once per run, off the async threads.
    let key = tokio::task::spawn_blocking(move || id.derive_key())
        .await
        .map_err(|e| Fatal::Internal(format!("cannot derive the device key: {e}")))?;
    let mut client = Client::new(config.receiver.clone(), key, options)
        .map_err(|e| Fatal::Internal(format!("cannot set up HTTP: {e}")))?;
    let reply = client.auth_check().await.map_err(Fatal::from_request)?;
    summary.clock_offset = Some(client.clock().offset()).filter(|offset| *offset != 0);
    if config.verbose {
        let label = reply.label.map(|l| format!(" as {l:?}")).unwrap_or_default();
        eprintln!("receiver {} accepts this device{label}", config.receiver);
    }
    Ok(client)
}

async fn upload_all(client: &Client, config: &Config, summary: &mut Summary) -> Result<(), Fatal> {
    let found = walk::walk(&config.folder, &config.sent_dir);
    summary.skipped = found.skipped.len() as u64;
    if config.verbose {
        for skipped in &found.skipped {
            eprintln!("skipped {skipped}: not a regular file (links are never followed)");
        }
    }
    let progress = Progress::new(config.verbose, found.files.len());
    for (name, reason) in found.unusable {
        fail(summary, &progress, name, reason);
    }
    let second_look = tokio::time::Instant::now() + config.min_age;
    // Uploads overlap so that one file's network time and the receiver's
    // fsyncs hide behind another's; results are handled as they finish.
    let mut deliveries = futures_util::stream::iter(units(&found.files, client.takes_batches()))
        .map(|unit| async move {
            match unit {
                Unit::One(candidate) => vec![(candidate, deliver_one(client, config, second_look, candidate).await)],
                Unit::Batch(candidates) => deliver_batch(client, config, candidates).await,
            }
        })
        .buffer_unordered(config.jobs.max(1));
    while let Some(results) = deliveries.next().await {
        for (candidate, result) in results {
            progress.advance(candidate.rel.as_str());
            match result {
                Ok((outcome, size, stored_as)) => {
                    let renamed = if stored_as == candidate.rel.as_str() {
                        String::new()
                    } else {
                        format!(", stored as {stored_as} because the name held other content")
                    };
                    match outcome {
                        UploadOutcome::Stored => {
                            summary.sent += 1;
                            summary.sent_bytes += size;
                            if config.verbose {
                                progress.say(&format!("sent {} ({}){renamed}", candidate.rel, human_bytes(size)));
                            }
                        }
                        UploadOutcome::AlreadyStored => {
                            summary.already_stored += 1;
                            if config.verbose {
                                progress.say(&format!("already stored {}{renamed}", candidate.rel));
                            }
                        }
                    }
                }
                Err(Undelivered::Kept(reason)) => fail(summary, &progress, candidate.rel.to_string(), reason),
                Err(Undelivered::NotYet) => {
                    summary.not_yet += 1;
                    if config.verbose {
                        progress.say(&format!("not yet {}: still being written", candidate.rel));
                    }
                }
                // Dropping the stream abandons the uploads in flight; none of
                // their files has been moved.
                Err(Undelivered::Stop(fatal)) => {
                    summary.wire_bytes = client.wire_bytes();
                    return Err(fatal);
                }
            }
        }
    }
    drop(deliveries);
    summary.wire_bytes = client.wire_bytes();
    if let Some(keep) = config.keep_sent {
        // Only after a run that reached the receiver: its clock was then
        // within the freshness window, so the delivery times being compared
        // were right, and so is the time they are compared with now.
        let pruned = prune::prune(&config.sent_dir, keep, SystemTime::now());
        if config.verbose && pruned.removed > 0 {
            let ago = humantime::format_duration(keep);
            progress
                .say(&format!("removed {} files delivered more than {ago} ago from the sent folder", pruned.removed));
        }
        for (name, reason) in pruned.failed {
            fail(summary, &progress, name, reason);
        }
    }
    Ok(())
}

/// Holds an exclusive lock for the run, so that overlapping cron runs never
/// upload or move the same file twice. The operating system releases it
/// when the process ends, however it ends.
fn lock(config: &Config) -> Result<std::fs::File, Fatal> {
    let path = config.sent_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Fatal::Internal(format!("cannot open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Fatal::AlreadyRunning { sent_dir: config.sent_dir.clone(), lock: path })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Fatal::Internal(format!("cannot lock {}: {e}", path.display()))),
    }
}

fn read_ca_certs(path: &Path) -> Result<rustls::ClientConfig, Fatal> {
    let fail = |why: String| Fatal::Tls(format!("cannot use the CA certificate file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    crate::pinned_ca::client_config(&pem).map_err(fail)
}

fn fail(summary: &mut Summary, progress: &Progress, name: String, reason: String) {
    progress.say(&format!("not sent: {name}: {reason}"));
    summary.failed.push((name, reason));
}

/// The identity of a file's content as far as cheap metadata tells.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("it is no longer a regular file"));
    }
    Ok(Stamp { len: meta.len(), modified: meta.modified().ok() })
}

/// Whether a file is done being written, by `--min-age`.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Unchanged for `min_age` by the device's clock, which stamped it.
    Yes,
    NotYet,
    /// Its mtime is in the future of the device's clock: the clock was
    /// stepped back since (a Pi restarting from its last saved time or from
    /// 1970), as any write stamps the present. How long ago that was, this
    /// clock cannot say; the file counts as settled if it is still unchanged
    /// `min_age` after the walk, on the monotonic clock, which no step moves.
    IfUnchangedAtSecondLook,
}

impl Stamp {
    fn settled(&self, min_age: Duration) -> Settled {
        match self.modified.map(|m| m.elapsed()) {
            Some(Err(_)) => Settled::IfUnchangedAtSecondLook,
            Some(Ok(age)) if age >= min_age => Settled::Yes,
            _ if min_age.is_zero() => Settled::Yes,
            _ => Settled::NotYet,
        }
    }
}

/// Opens the file once, then uploads it (hashing it first only for a
/// receiver that wants the digest before the file, otherwise while sending
/// it), checks the receipt, and sets that open file aside only if the
/// receiver confirmed exactly the bytes sent and it is still unchanged under
/// its name.
async fn deliver_one(
    client: &Client,
    config: &Config,
    second_look: tokio::time::Instant,
    candidate: &walk::Candidate,
) -> Result<(UploadOutcome, u64, String), Undelivered> {
    let kept = |what: &str, e: io::Error| Undelivered::Kept(format!("{what}: {e}"));
    let internal = |e: tokio::task::JoinError| Undelivered::Stop(Fatal::Internal(e.to_string()));
    let file = Opened::open(&candidate.path).map_err(|e| kept("cannot read it", e))?;
    let before = Stamp { len: file.at_open.len, modified: file.at_open.modified };
    match before.settled(config.min_age) {
        Settled::Yes => {}
        Settled::NotYet => return Err(Undelivered::NotYet),
        Settled::IfUnchangedAtSecondLook => {
            tokio::time::sleep_until(second_look).await;
            if file.now().ok() != Some(file.at_open) {
                return Err(Undelivered::NotYet);
            }
        }
    }
    let size = before.len;
    let digest = if client.digest_after() {
        HeadDigest::Trailer
    } else {
        let source = file.rewound();
        let (sha256, hashed) = tokio::task::spawn_blocking(move || Sha256Digest::of_reader_expecting(source, size))
            .await
            .map_err(internal)?
            .map_err(|e| kept("cannot read it", e))?;
        if hashed != size {
            return Err(Undelivered::NotYet);
        }
        HeadDigest::Known(sha256)
    };
    let head = UploadHead { path: candidate.rel.clone(), sha256: digest, size };
    let (_, receipt, sha256) = client.upload(&file, &head).await.map_err(|e| match e {
        // Cut shorter meanwhile (copytruncate): its new content goes later.
        RequestError::Source(_) if file.now().ok() != Some(file.at_open) => Undelivered::NotYet,
        e => request_failed(e),
    })?;
    confirmed(&receipt, &UploadClaim { path: candidate.rel.clone(), sha256, size })?;
    let (source, to, rel) = (candidate.path.clone(), config.disposal(), candidate.rel.clone());
    let set_aside = tokio::task::spawn_blocking(move || sent::set_aside(&source, &file, &rel, &sha256, &to))
        .await
        .map_err(internal)?;
    delivered(set_aside, receipt)
}

/// What a request's failure means for the files it carried.
fn request_failed(e: RequestError) -> Undelivered {
    match e {
        RequestError::Unreachable { .. } | RequestError::Tls { .. } => Undelivered::Stop(Fatal::from_request(e)),
        e if e.is_auth_failure() => Undelivered::Stop(Fatal::from_request(e)),
        e => Undelivered::Kept(e.to_string()),
    }
}

/// The receipt must be for the bytes that were sent.
fn confirmed(receipt: &UploadReceipt, claim: &UploadClaim) -> Result<(), Undelivered> {
    if receipt.sha256 != claim.sha256 || receipt.size != claim.size {
        return Err(Undelivered::Kept(format!(
            "the receiver confirmed other bytes ({} bytes, SHA-256 {}) than were sent ({} bytes, SHA-256 {})",
            receipt.size, receipt.sha256, claim.size, claim.sha256
        )));
    }
    Ok(())
}

/// A confirmed file, once set aside (or not).
fn delivered(set_aside: io::Result<SetAside>, receipt: UploadReceipt) -> Delivery {
    match set_aside.map_err(|e| Undelivered::Kept(format!("delivered, but it could not be set aside: {e}")))? {
        // The receiver has the version that was hashed; what the name holds
        // now stays, and a later run sends it (under a conflict name).
        SetAside::Changed => Err(Undelivered::NotYet),
        SetAside::Moved(_) | SetAside::Deleted => Ok((receipt.outcome, receipt.size, receipt.stored_as)),
    }
}

/// What became of one file: delivered (how, its size, where the receiver
/// stored it) or not.
type Delivery = Result<(UploadOutcome, u64, String), Undelivered>;

/// What one upload request carries.
enum Unit<'a> {
    One(&'a walk::Candidate),
    Batch(Vec<&'a walk::Candidate>),
}

/// Most bytes of files in one batch from this sender: with `--jobs`
/// batches in flight, each held in memory (and once more compressed), this
/// keeps the run within its memory budget.
const SENDER_BATCH_BYTES: u64 = 256 * 1024;

/// Groups small files, as the walk found them (folder by folder, so a
/// batch's files mostly share folders), into batches when the receiver
/// takes them; the rest go one by one. The sizes are the walk's; a file
/// that grew past the limit since is read as far as it was.
fn units(files: &[walk::Candidate], batches: bool) -> Vec<Unit<'_>> {
    let mut units = Vec::new();
    let mut batch: Vec<&walk::Candidate> = Vec::new();
    let mut batch_bytes = 0;
    for candidate in files {
        // A file stamped in the future of the device's clock waits for its
        // second look, which is `deliver_one`'s.
        let small = std::fs::symlink_metadata(&candidate.path)
            .ok()
            .filter(|meta| meta.modified().is_ok_and(|m| m.elapsed().is_ok()))
            .map(|meta| meta.len())
            .filter(|len| *len <= BATCH_FILE_MAX);
        match small {
            Some(len) if batches => {
                if batch.len() == BATCH_MAX_FILES || batch_bytes + len > SENDER_BATCH_BYTES {
                    units.push(Unit::Batch(std::mem::take(&mut batch)));
                    batch_bytes = 0;
                }
                batch.push(candidate);
                batch_bytes += len;
            }
            _ => units.push(Unit::One(candidate)),
        }
    }
    if !batch.is_empty() {
        units.push(Unit::Batch(batch));
    }
    units
}

/// A small file of a batch, read whole: the open file, its bytes, their
/// SHA-256.
type Read = (Opened, Vec<u8>, Sha256Digest);

/// Opens a small file and reads it whole (one read of its bytes serves the
/// hash and the upload); it must be settled and give exactly the size it
/// had when opened.
fn read_small(path: &Path, min_age: Duration) -> Result<Read, Undelivered> {
    let file = Opened::open(path).map_err(|e| Undelivered::Kept(format!("cannot read it: {e}")))?;
    let stamp = Stamp { len: file.at_open.len, modified: file.at_open.modified };
    match stamp.settled(min_age) {
        Settled::Yes => {}
        // Stamped in the future since the walk looked: the clock stepped
        // back meanwhile, and the next run gives it its second look.
        Settled::NotYet | Settled::IfUnchangedAtSecondLook => return Err(Undelivered::NotYet),
    }
    let mut bytes = Vec::with_capacity(stamp.len as usize);
    file.rewound()
        .take(stamp.len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Undelivered::Kept(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 != stamp.len {
        return Err(Undelivered::NotYet);
    }
    let digest = Sha256Digest::of_bytes(&bytes);
    Ok((file, bytes, digest))
}

/// Delivers small files in one request: each read whole, all sent, then
/// those the receiver confirmed set aside together (their folders fsynced
/// once).
async fn deliver_batch<'a>(
    client: &Client,
    config: &Config,
    candidates: Vec<&'a walk::Candidate>,
) -> Vec<(&'a walk::Candidate, Delivery)> {
    let (paths, min_age) = (candidates.iter().map(|c| c.path.clone()).collect::<Vec<_>>(), config.min_age);
    let read = tokio::task::spawn_blocking(move || paths.iter().map(|path| read_small(path, min_age)).collect());
    let read: Vec<_> = match read.await {
        Ok(read) => read,
        Err(e) => {
            return candidates
                .into_iter()
                .map(|c| (c, Err(Undelivered::Kept(format!("cannot read it: {e}")))))
                .collect();
        }
    };
    let mut results = Vec::new();
    let mut ready = Vec::new();
    for (candidate, read) in candidates.into_iter().zip(read) {
        match read {
            Ok((file, bytes, sha256)) => {
                let claim = UploadClaim { path: candidate.rel.clone(), sha256, size: bytes.len() as u64 };
                ready.push((candidate, file, claim, bytes));
            }
            Err(undelivered) => results.push((candidate, Err(undelivered))),
        }
    }
    if !ready.is_empty() {
        send_batch(client, config, ready, &mut results).await;
    }
    results
}

/// Sends the files read for a batch and sets aside those confirmed.
async fn send_batch<'a>(
    client: &Client,
    config: &Config,
    ready: Vec<(&'a walk::Candidate, Opened, UploadClaim, Vec<u8>)>,
    results: &mut Vec<(&'a walk::Candidate, Delivery)>,
) {
    let mut opened = Vec::with_capacity(ready.len());
    let mut claims = Vec::with_capacity(ready.len());
    for (candidate, file, claim, bytes) in ready {
        opened.push((candidate, file));
        claims.push((claim, bytes));
    }
    let sent = match client.batch_files(claims).await {
        Ok(files) => client.upload_batch(&files).await.map(|answers| (files, answers)),
        Err(e) => Err(RequestError::Local(format!("cannot compress it: {e}"))),
    };
    let (files, answers) = match sent {
        Ok(sent) => sent,
        Err(e) => {
            // One failure stands for all: the first file carries it, the
            // rest say the same in words.
            let said = e.to_string();
            let mut files = opened.into_iter();
            if let Some((first, _)) = files.next() {
                results.push((first, Err(request_failed(e))));
            }
            results.extend(files.map(|(candidate, _)| (candidate, Err(Undelivered::Kept(said.clone())))));
            return;
        }
    };
    let (mut confirmed_candidates, mut confirmed_files) = (Vec::new(), Vec::new());
    for (((candidate, file), sent), answer) in opened.into_iter().zip(files).zip(answers) {
        let receipt = match answer {
            BatchResult::Delivered(receipt) => receipt,
            // Said as a single upload's signed refusal would be.
            BatchResult::Refused(BatchRefusal { status, body }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let refusal = RequestError::Refused { status, body: Some(body), retry_after: None, signed: true };
                results.push((candidate, Err(Undelivered::Kept(refusal.to_string()))));
                continue;
            }
        };
        match confirmed(&receipt, &sent.claim) {
            Ok(()) => {
                confirmed_candidates.push((candidate, receipt));
                confirmed_files.push((candidate.path.clone(), file, sent.claim));
            }
            Err(undelivered) => results.push((candidate, Err(undelivered))),
        }
    }
    let to = config.disposal();
    let set_aside = tokio::task::spawn_blocking(move || {
        let mut pending = sent::PendingSyncs::default();
        let set: Vec<_> = confirmed_files
            .iter()
            .map(|(source, file, claim)| {
                sent::set_aside_deferring(source, file, &claim.path, &claim.sha256, &to, &mut pending)
            })
            .collect();
        // Until their folders are durable, none counts as moved.
        match pending.sync() {
            Ok(()) => set,
            Err(e) => set.into_iter().map(|_| Err(io::Error::new(e.kind(), e.to_string()))).collect(),
        }
    });
    let set_aside = set_aside
        .await
        .unwrap_or_else(|e| confirmed_candidates.iter().map(|_| Err(io::Error::other(e.to_string()))).collect());
    for ((candidate, receipt), set_aside) in confirmed_candidates.into_iter().zip(set_aside) {
        results.push((candidate, delivered(set_aside, receipt)));
    }
}
