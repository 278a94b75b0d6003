//! Talking to the receiver: signed requests, streamed uploads, retries of
//! transient failures, and errors turned into sentences.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use logferry_common::signing::{
    HeadDigest, RECEIPT_HEADER, SignedFields, SignedRequest, UploadClaim, UploadHead, trailer_signature, verify_receipt,
};
use logferry_common::update::{ManifestReply, ManifestRequest, UpdateReport, Version};
use logferry_common::wire::{
    AuthCheckReply, BatchEntry, BatchManifest, BatchReceipt, BatchResult, Encoding, ErrorBody, ErrorCode,
    RESUMABLE_MIN_SIZE, UploadOffset, UploadReceipt, endpoint, field,
};
use logferry_common::{DeviceKey, Sha256Digest, Sha256Hasher};
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, StatusCode, Url};

use crate::body::{BLOCK_SIZE, Bandwidth, Compression, Compressors};
use crate::clock::Clock;
use crate::opened::{Opened, Rewound};

/// How long to wait for a connection before calling the receiver unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the receiver may go silent mid-request. Generous: it fsyncs a
/// large file before it answers.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The pieces an uncompressed file is read and sent in. Each costs a trip
/// to the blocking pool and a `pread`: at 128 KiB those trips and their
/// thread wake-ups took 0.8-1.0 s of system time on a 1 GiB file, at
/// 256 KiB 0.5-0.6 s. Larger pieces save little more and cost memory per
/// upload in flight: at 512 KiB the peak RSS of case 3 (16 uploads at once)
/// went from 20-22 to about 26 MiB (scripts/bench-notes.md).
const UPLOAD_PIECE: usize = 256 * 1024;
/// First pause before a retry; each further retry doubles it, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest wait honoured from a receiver's Retry-After.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// Times one auth check signs again with the receiver's time: once, and once
/// more in case the first signed `clock_skew` answer was a replay.
const CLOCK_CORRECTIONS: u32 = 2;

/// How the client reaches the receiver.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// HTTPS trusting only the lab's own CA (`pinned_ca`); otherwise the
    /// system's trusted roots.
    pub pinned_ca: Option<rustls::ClientConfig>,
    /// Further attempts after a transient failure.
    pub retries: u32,
    /// Say on stderr when a retry is coming (interactive use).
    pub verbose: bool,
    pub compression: Compression,
    /// `--bwlimit`: the cap on file bytes sent, over all uploads at once.
    pub bandwidth: Option<Bandwidth>,
}

/// What the receiver said, in its answer to the auth check, that it can do.
#[derive(Debug, Clone, Copy, Default)]
struct Accepts {
    zstd: bool,
    resume: bool,
    digest_after: bool,
    batch: bool,
}

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: DeviceKey,
    options: ClientOptions,
    clock: Clock,
    /// Nothing until the auth check tells.
    accepts: Accepts,
    /// File bytes handed to the connection so far, every attempt counted.
    wire_bytes: Arc<AtomicU64>,
    compressors: Arc<Compressors>,
}

/// Why a request did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be made at all.
    #[error("cannot connect to {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The receiver's certificate could not be verified.
    #[error("cannot verify the TLS certificate of {url}: {cause}; give the lab's CA with --ca-cert")]
    Tls { url: String, cause: String },
    /// The connection failed part-way (reset, timeout).
    #[error("the connection to {url} failed: {cause}")]
    Transport { url: String, cause: String },
    /// The receiver answered with an error. `signed`: with a valid receipt,
    /// so it surely came from a receiver that knows this device's key; an
    /// unsigned refusal may come from anyone in the path (or from the
    /// receiver, before it could tell who was asking), so it is retried
    /// like a network failure instead of being taken as a verdict.
    #[error("{}", describe_refusal(*status, body.as_ref(), *signed))]
    Refused { status: StatusCode, body: Option<ErrorBody>, retry_after: Option<Duration>, signed: bool },
    /// A 2xx answer whose body is not what the protocol says.
    #[error("the receiver's answer could not be understood: {0}")]
    Garbled(String),
    /// A 2xx answer without a valid receipt: whoever answered does not know
    /// this device's ID, so it is not the receiver this device is listed in.
    #[error(
        "the answer from {url} carries no valid receipt, so it is not from a receiver that knows this device's ID \
         (an impostor, or a receiver too old to sign answers); nothing is moved aside"
    )]
    Unverified { url: String },
    /// The local file cannot give the bytes that were hashed.
    #[error("cannot read the file: {0}")]
    Source(String),
    /// Something on this device failed: the request could not be made, or
    /// what arrived could not be written.
    #[error("{0}")]
    Local(String),
}

impl RequestError {
    /// The receiver's clock, from a refusal of a stale timestamp that the
    /// receiver signed: the only answer allowed to change the device's time.
    fn receiver_time(&self) -> Option<u64> {
        match self {
            Self::Refused {
                signed: true,
                body: Some(ErrorBody { code: ErrorCode::ClockSkew, receiver_time, .. }),
                ..
            } => *receiver_time,
            _ => None,
        }
    }

    /// Whether the receiver refused the device itself, not just one file.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::Unverified { .. } => true,
            Self::Refused { status, body, .. } => {
                *status == StatusCode::UNAUTHORIZED || body.as_ref().is_some_and(|b| b.code.is_auth_failure())
            }
            _ => false,
        }
    }

    /// Whether the receiver found the bytes it got wrong: a signed
    /// `size_mismatch` or `checksum_mismatch`.
    fn is_verdict_on_bytes(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                signed: true,
                body: Some(ErrorBody { code: ErrorCode::SizeMismatch | ErrorCode::ChecksumMismatch, .. }),
                ..
            }
        )
    }

    /// Whether trying again later may succeed: no connection, a broken one,
    /// an answer that says "not now" (408, 429, 5xx), an offset that the
    /// receiver no longer holds (the next try asks again), or a refusal
    /// nobody signed. A signed verdict on the request itself (401, 413,
    /// 422, …) will not change by asking again.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Transport { .. } => true,
            Self::Refused { signed: false, .. } => true,
            Self::Refused { body: Some(ErrorBody { code: ErrorCode::OffsetMismatch, .. }), .. } => true,
            Self::Refused { status, .. } => {
                matches!(*status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS)
                    || status.is_server_error()
            }
            Self::Tls { .. } | Self::Garbled(_) | Self::Source(_) | Self::Local(_) | Self::Unverified { .. } => false,
        }
    }
}

fn describe_refusal(status: StatusCode, body: Option<&ErrorBody>, signed: bool) -> String {
    match body {
        Some(body) if signed => format!("the receiver refused it (HTTP {}): {}", status.as_u16(), body.error),
        Some(body) => format!(
            "refused (HTTP {}), in an answer without a valid receipt, so possibly not from the receiver: {}",
            status.as_u16(),
            body.error
        ),
        None => {
            format!("the receiver answered HTTP {status}, which is not a logferry answer; is this a logferry receiver?")
        }
    }
}

impl Client {
    /// A client signing with `key`, which [`DeviceId::derive_key`](logferry_common::DeviceId::derive_key)
    /// made once for the run.
    pub fn new(base: Url, key: DeviceKey, options: ClientOptions) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("logferry-sender/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if let Some(tls) = options.pinned_ca.clone() {
            builder = builder.tls_backend_preconfigured(tls);
        }
        Ok(Self {
            http: builder.build()?,
            base,
            key,
            options,
            clock: Clock::default(),
            accepts: Accepts::default(),
            wire_bytes: Arc::default(),
            compressors: Arc::default(),
        })
    }

    /// File bytes put on the wire so far (compressed, resumed, retried).
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes.load(Ordering::Relaxed)
    }

    /// The clock every request is signed with: the device's, corrected once
    /// the auth check learnt the receiver's time.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Asks whether the receiver accepts this device, before any file is
    /// read. When the receiver refuses the device's clock in a signed answer,
    /// asks again by the receiver's time, which the later requests then use
    /// only if the receiver accepted it.
    pub async fn auth_check(&mut self) -> Result<AuthCheckReply, RequestError> {
        let mut clock = self.clock;
        let mut corrections = 0;
        loop {
            let attempt: Result<(_, AuthCheckReply), _> = self
                .with_retries(|| async {
                    self.send(self.signed(clock, Method::GET, endpoint::AUTH_CHECK, None, |r| r)).await
                })
                .await;
            match attempt {
                Ok((_, reply)) => {
                    self.clock = clock;
                    self.accepts = Accepts {
                        zstd: reply.encodings.contains(&Encoding::Zstd),
                        resume: reply.resume,
                        digest_after: reply.digest_after,
                        batch: reply.batch,
                    };
                    return Ok(reply);
                }
                Err(err) => match err.receiver_time() {
                    Some(receiver_time) if corrections < CLOCK_CORRECTIONS => {
                        corrections += 1;
                        clock = Clock::agreeing_with(receiver_time);
                        if self.options.verbose {
                            eprintln!("{err}; asking again by the receiver's time");
                        }
                    }
                    _ => return Err(err),
                },
            }
        }
    }

    /// Whether the receiver takes the digest after the file, so that a file
    /// needs no reading before it is sent.
    pub fn digest_after(&self) -> bool {
        self.accepts.digest_after
    }

    /// Uploads the first `claim.size` bytes of `file`, streamed; every
    /// attempt reads them again from the same open file. A resumable file
    /// continues from what the receiver holds of it; should those bytes and
    /// the rest not verify together (the receiver then drops what it held),
    /// the whole file is sent once more. Gives the SHA-256 of the bytes
    /// sent: the head's, or for a trailer what was hashed while sending.
    pub async fn upload(
        &self,
        file: &Opened,
        claim: &UploadHead,
    ) -> Result<(StatusCode, UploadReceipt, Sha256Digest), RequestError> {
        let resumable = self.accepts.resume && claim.size >= RESUMABLE_MIN_SIZE;
        let continued_from = Cell::new(0);
        match self.send_file(file, claim, resumable, &continued_from).await {
            Err(err) if continued_from.get() > 0 && err.is_verdict_on_bytes() => {
                if self.options.verbose {
                    eprintln!("{}: {err}; sending the whole file again", claim.path);
                }
                self.send_file(file, claim, false, &continued_from).await
            }
            done => done,
        }
    }

    /// Whether the receiver takes small files in batches.
    pub fn takes_batches(&self) -> bool {
        self.accepts.batch
    }

    /// The files of a batch as they go on the wire: each compressed as
    /// `--compress` says (with `auto`, only if that pays), all of them in one
    /// trip to a compressor thread.
    pub async fn batch_files(&self, files: Vec<(UploadClaim, Vec<u8>)>) -> io::Result<Vec<BatchFile>> {
        let compression = if self.accepts.zstd { self.options.compression } else { Compression::Off };
        let as_they_are =
            |(claim, wire): (UploadClaim, Vec<u8>)| BatchFile { claim, wire: wire.into(), encoding: None };
        if compression == Compression::Off {
            return Ok(files.into_iter().map(as_they_are).collect());
        }
        self.compressors
            .with_compressor(move |compressor| {
                files
                    .into_iter()
                    .map(|(claim, bytes)| {
                        Ok(match compressor.compress_as(compression, &bytes)? {
                            Some(wire) => BatchFile { claim, wire: wire.into(), encoding: Some(Encoding::Zstd) },
                            None => as_they_are((claim, bytes)),
                        })
                    })
                    .collect()
            })
            .await
    }

    /// Uploads several small files in one request, with its retries; the
    /// answer has one result per file, in their order.
    pub async fn upload_batch(&self, files: &[BatchFile]) -> Result<Vec<BatchResult>, RequestError> {
        let entries = files
            .iter()
            .map(|file| BatchEntry {
                path: file.claim.path.to_string(),
                sha256: file.claim.sha256.to_hex(),
                size: file.claim.size,
                encoding: file.encoding,
            })
            .collect();
        let manifest = serde_json::to_string(&BatchManifest { files: entries })
            .map_err(|e| RequestError::Local(format!("cannot write the batch manifest: {e}")))?;
        let fields = SignedFields::body(manifest.as_bytes());
        let (_, receipt): (_, BatchReceipt) = self
            .with_retries(|| async {
                let mut form = Form::new().text(field::MANIFEST, manifest.clone());
                for file in files {
                    if let Some(bandwidth) = &self.options.bandwidth {
                        bandwidth.take(file.wire.len()).await;
                    }
                    self.wire_bytes.fetch_add(file.wire.len() as u64, Ordering::Relaxed);
                    let len = file.wire.len() as u64;
                    form = form.part(field::FILE, Part::stream_with_length(Body::from(file.wire.clone()), len));
                }
                let request =
                    self.signed(self.clock, Method::POST, endpoint::UPLOAD_BATCH, Some(&fields), |r| r.multipart(form));
                self.send(request).await
            })
            .await?;
        if receipt.results.len() != files.len() {
            return Err(RequestError::Garbled(format!(
                "the answer to a batch of {} files has {} results",
                files.len(),
                receipt.results.len()
            )));
        }
        Ok(receipt.results)
    }

    /// Asks which release is published for this device, saying which one
    /// it runs.
    pub async fn poll(&self, current: Option<Version>) -> Result<ManifestReply, RequestError> {
        self.post_json(endpoint::UPDATE_MANIFEST, &ManifestRequest { current }).await
    }

    /// Tells the receiver what became of one attempt at a version.
    pub async fn report(&self, report: &UpdateReport) -> Result<(), RequestError> {
        let _: serde::de::IgnoredAny = self.post_json(endpoint::UPDATE_REPORT, report).await?;
        Ok(())
    }

    /// Posts `body` as JSON, its digest signed, and takes the signed answer.
    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, RequestError> {
        let body =
            serde_json::to_vec(body).map_err(|e| RequestError::Local(format!("cannot write the request: {e}")))?;
        let fields = SignedFields::body(&body);
        let (_, reply) = self
            .with_retries(|| async {
                let body = body.clone();
                let request = self.signed(self.clock, Method::POST, endpoint, Some(&fields), |r| {
                    r.header(CONTENT_TYPE, "application/json").body(body)
                });
                self.send(request).await
            })
            .await?;
        Ok(reply)
    }

    /// Fetches the `size` bytes of content `sha256` onto the end of
    /// `partial`, opened for appending, which may already hold the first of
    /// them from a cut-off fetch: only the rest is asked for, and so on each
    /// retry. Returns the bytes that arrived, every attempt counted. The
    /// answer carries no receipt; the caller checks the bytes against the
    /// signed manifest's SHA-256.
    pub async fn fetch_content(&self, sha256: &Sha256Digest, size: u64, partial: &File) -> Result<u64, RequestError> {
        let arrived = Cell::new(0);
        self.with_retries(|| self.fetch_rest(sha256, size, partial, &arrived)).await?;
        Ok(arrived.get())
    }

    /// One attempt of [`Self::fetch_content`].
    async fn fetch_rest(
        &self,
        sha256: &Sha256Digest,
        size: u64,
        partial: &File,
        arrived: &Cell<u64>,
    ) -> Result<(), RequestError> {
        let local = |what: &str, e: io::Error| RequestError::Local(format!("cannot {what} the download: {e}"));
        let held = partial.metadata().map_err(|e| local("read", e))?.len();
        let url = self.url(&format!("{}/{}", endpoint::UPDATE_CONTENT, sha256.to_hex()));
        let fields = SignedFields::content(sha256);
        let request = self.signed_to(url, self.clock, Method::GET, endpoint::UPDATE_CONTENT, Some(&fields), |r| {
            if held > 0 { r.header(RANGE, format!("bytes={held}-")) } else { r }
        });
        let Answered { mut response, url } = self.execute(request).await?;
        let garbled = |why: String| RequestError::Garbled(format!("content {sha256} from {url}: {why}"));
        let mut written = match response.status() {
            StatusCode::OK => {
                // The whole content, from its first byte.
                partial.set_len(0).map_err(|e| local("restart", e))?;
                0
            }
            StatusCode::PARTIAL_CONTENT => {
                let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if held == 0 || content_range(range) != Some((held, size)) {
                    return Err(garbled(format!("asked from byte {held} of {size}, it sent the range {range:?}")));
                }
                held
            }
            other => return Err(garbled(format!("HTTP {other} is not a content answer"))),
        };
        // What the connection delivers goes straight to the file, a chunk
        // at a time, so memory stays flat whatever the file's size. The
        // update runs alone after the uploads, so these short writes to the
        // page cache hold up nothing else on this thread.
        let mut out = partial;
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&url, &e))? {
            let len = chunk.len() as u64;
            if written + len > size {
                return Err(garbled(format!("it sent more than the {size} bytes its release lists")));
            }
            out.write_all(&chunk).map_err(|e| local("write", e))?;
            written += len;
            arrived.set(arrived.get() + len);
        }
        if written < size {
            return Err(RequestError::Transport {
                url,
                cause: format!("the content ended after {written} of its {size} bytes"),
            });
        }
        Ok(())
    }

    /// One upload with its retries; with `resume`, each attempt first asks
    /// how much the receiver holds and sends only the rest.
    async fn send_file(
        &self,
        file: &Opened,
        claim: &UploadHead,
        resume: bool,
        continued_from: &Cell<u64>,
    ) -> Result<(StatusCode, UploadReceipt, Sha256Digest), RequestError> {
        self.with_retries(|| async {
            // A file cut shorter since it was opened (copytruncate) cannot
            // give the claimed bytes; asking again would not help.
            let now = file.now().map_err(|e| RequestError::Source(e.to_string()))?;
            if now.len < claim.size {
                return Err(RequestError::Source(format!(
                    "it shrank from {} to {} bytes since it was opened",
                    claim.size, now.len
                )));
            }
            let offset = if resume { self.held(claim).await? } else { 0 };
            continued_from.set(offset);
            if offset > 0 && self.options.verbose {
                eprintln!("{}: the receiver holds {offset} of its {} bytes; sending the rest", claim.path, claim.size);
            }
            let hashed = match claim.sha256 {
                HeadDigest::Known(_) => None,
                HeadDigest::Trailer => Some(hash_prefix(file, offset).await.map_err(source_error)?),
            };
            let digest = Arc::new(OnceLock::new());
            let hashing = hashed.map(|hasher| (hasher, Arc::clone(&digest)));
            let (part, encoding) = self.file_part(file, claim.size, offset, hashing).await?;
            // The fields are sent as exactly the text that is signed.
            let head = SignedFields::from(claim);
            let mut form = head_form(&head);
            if offset > 0 {
                form = form.text(field::OFFSET, offset.to_string());
            }
            if let Some(encoding) = encoding {
                form = form.text(field::ENCODING, encoding.as_str());
            }
            let mut form = form.part(field::FILE, part.file_name(claim.path.file_name().to_owned()));
            // The trailer's parts are made once the file part is sent, and
            // the request signed.
            let request_signature = Arc::new(OnceLock::new());
            if claim.sha256 == HeadDigest::Trailer {
                let (key, signed_as) = (self.key.clone(), Arc::clone(&request_signature));
                let (for_field, for_signature) = (Arc::clone(&digest), Arc::clone(&digest));
                form = form.part(field::SHA256, trailer_part(move || Ok(known(&for_field)?.to_hex()))).part(
                    field::SIGNATURE,
                    trailer_part(move || {
                        let signature = signed_as.get().ok_or_else(|| io::Error::other("the request is unsigned"))?;
                        Ok(trailer_signature(&key, signature, known(&for_signature)?))
                    }),
                );
            }
            let signed = self.signed(self.clock, Method::POST, endpoint::UPLOAD, Some(&head), |r| r.multipart(form));
            request_signature.get_or_init(|| signed.signature);
            let (status, receipt) = self.send(signed).await?;
            let sha256 = match claim.sha256 {
                HeadDigest::Known(sha256) => sha256,
                HeadDigest::Trailer => *known(&digest).map_err(source_error)?,
            };
            Ok((status, receipt, sha256))
        })
        .await
    }

    /// How many bytes of the file the receiver holds from a cut-off upload.
    async fn held(&self, claim: &UploadHead) -> Result<u64, RequestError> {
        let head = SignedFields::from(claim);
        let form = head_form(&head);
        let request =
            self.signed(self.clock, Method::POST, endpoint::UPLOAD_OFFSET, Some(&head), |r| r.multipart(form));
        let (_, reply): (_, UploadOffset) = self.send(request).await?;
        if reply.offset > claim.size {
            return Err(RequestError::Garbled(format!(
                "the receiver says it holds {} bytes of a {}-byte file",
                reply.offset, claim.size
            )));
        }
        Ok(reply.offset)
    }

    /// The file part: the bytes from `offset` to `size`, never more
    /// (bytes appended meanwhile wait for the next run), compressed when the
    /// receiver decodes zstd and `--compress` and the bytes make it worth it
    /// (`auto` judges by the first block). With `hashing`, the bytes read
    /// are hashed on from that hasher, and the digest is set once the part
    /// has been read to its end.
    async fn file_part(
        &self,
        file: &Opened,
        size: u64,
        offset: u64,
        hashing: Option<(Sha256Hasher, Arc<OnceLock<Sha256Digest>>)>,
    ) -> Result<(Part, Option<Encoding>), RequestError> {
        let remaining = size - offset;
        let compression = if self.accepts.zstd { self.options.compression } else { Compression::Off };
        let first_len = remaining.min(BLOCK_SIZE as u64);
        let source = Hashed { inner: file.reader_from(offset).take(remaining), hashing };
        let (first, encoding, mut source) =
            self.first_block(source, first_len, compression).await.map_err(source_error)?;
        let bandwidth = self.options.bandwidth.clone();
        if first_len == remaining {
            // The whole file in one piece: a burst of small files costs one
            // trip to the blocking pool each.
            if let Some(bandwidth) = &bandwidth {
                bandwidth.take(first.len()).await;
            }
            let len = first.len() as u64;
            self.wire_bytes.fetch_add(len, Ordering::Relaxed);
            source.finish();
            return Ok((Part::stream_with_length(Body::from(first), len), encoding));
        }
        let rest = Pieces {
            source: Some(source),
            compressors: encoding.map(|_| Arc::clone(&self.compressors)),
            bandwidth,
            sent: Arc::clone(&self.wire_bytes),
        };
        let stream = Body::wrap_stream(rest.after(first));
        Ok(match encoding {
            Some(_) => (Part::stream(stream), encoding),
            None => (Part::stream_with_length(stream, remaining), None),
        })
    }

    /// The file's first block (all of a small file), compressed as
    /// `compression` says: with `Auto`, only if that pays.
    async fn first_block(
        &self,
        mut source: Hashed,
        len: u64,
        compression: Compression,
    ) -> io::Result<(Vec<u8>, Option<Encoding>, Hashed)> {
        if compression == Compression::Off {
            return tokio::task::spawn_blocking(move || Ok((read_up_to(&mut source, len as usize)?, None, source)))
                .await
                .map_err(io::Error::other)?;
        }
        self.compressors
            .with_compressor(move |compressor| {
                let block = read_up_to(&mut source, len as usize)?;
                Ok(match compressor.compress_as(compression, &block)? {
                    Some(compressed) => (compressed, Some(Encoding::Zstd), source),
                    None => (block, None, source),
                })
            })
            .await
    }

    /// Makes `attempt` (a request built anew: freshly signed, body re-read)
    /// again for each transient failure, with exponential backoff and
    /// jitter, or the receiver's Retry-After when it gives one.
    async fn with_retries<T, F, Fut>(&self, attempt: F) -> Result<T, RequestError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RequestError>>,
    {
        let mut retry = 0;
        loop {
            let err = match attempt().await {
                Err(err) if err.is_transient() && retry < self.options.retries => err,
                done => return done,
            };
            let pause = match &err {
                RequestError::Refused { retry_after: Some(asked), .. } => (*asked).min(RETRY_AFTER_CAP),
                _ => backoff(retry),
            };
            retry += 1;
            if self.options.verbose {
                eprintln!("retry {retry}/{} in {:.1} s: {err}", self.options.retries, pause.as_secs_f64());
            }
            tokio::time::sleep(pause).await;
        }
    }

    fn url(&self, endpoint: &str) -> Url {
        // Relative join keeps any path prefix the receiver URL was given.
        self.base.join(endpoint.trim_start_matches('/')).unwrap_or_else(|_| self.base.clone())
    }

    /// A request to `endpoint` signed now by `clock`, with `finish` adding
    /// its body.
    fn signed(
        &self,
        clock: Clock,
        method: Method,
        endpoint: &str,
        fields: Option<&SignedFields>,
        finish: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Signed {
        self.signed_to(self.url(endpoint), clock, method, endpoint, fields, finish)
    }

    /// As [`Self::signed`], sent to `url`, which may say more than the
    /// endpoint that is signed (content is fetched from the endpoint
    /// followed by its hash, and the signature names the hash instead).
    fn signed_to(
        &self,
        url: Url,
        clock: Clock,
        method: Method,
        endpoint: &str,
        fields: Option<&SignedFields>,
        finish: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Signed {
        let timestamp = clock.now();
        let header =
            SignedRequest { method: method.as_str(), path: endpoint, timestamp, clock_offset: clock.offset(), fields }
                .authorization(&self.key);
        let request = self.http.request(method, url).header(AUTHORIZATION, header.to_string());
        Signed { request: finish(request), signature: header.signature }
    }

    /// Sends `signed` and takes its answer's signed JSON body.
    async fn send<T: serde::de::DeserializeOwned>(&self, signed: Signed) -> Result<(StatusCode, T), RequestError> {
        let signature = signed.signature;
        let Answered { response, url } = self.execute(signed).await?;
        let status = response.status();
        let receipt = receipt_of(&response);
        let bytes = response.bytes().await.map_err(|e| transport_error(&url, &e))?;
        if !receipt.is_some_and(|tag| verify_receipt(&self.key, status.as_u16(), &signature, &bytes, &tag)) {
            return Err(RequestError::Unverified { url });
        }
        let body = serde_json::from_slice(&bytes).map_err(|e| RequestError::Garbled(e.to_string()))?;
        Ok((status, body))
    }

    /// Sends `signed`; a 2xx answer comes back with its body still to read,
    /// any other becomes a [`RequestError::Refused`] (its receipt checked).
    async fn execute(&self, signed: Signed) -> Result<Answered, RequestError> {
        let (client, request) = signed.request.build_split();
        let request = request.map_err(|e| RequestError::Garbled(e.to_string()))?;
        let url = request.url().to_string();
        let response = client.execute(request).await.map_err(|e| transport_error(&url, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answered { response, url });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let receipt = receipt_of(&response);
        let bytes = response.bytes().await.map_err(|e| transport_error(&url, &e))?;
        let signed =
            receipt.is_some_and(|tag| verify_receipt(&self.key, status.as_u16(), &signed.signature, &bytes, &tag));
        Err(RequestError::Refused { status, body: serde_json::from_slice(&bytes).ok(), retry_after, signed })
    }
}

/// One file of a batch: its claim (of the bytes as they are) and its bytes
/// as they go on the wire.
#[derive(Debug)]
pub struct BatchFile {
    pub claim: UploadClaim,
    /// Shared by every attempt, not copied.
    wire: bytes::Bytes,
    encoding: Option<Encoding>,
}

/// A 2xx answer whose body has not been read yet.
struct Answered {
    response: reqwest::Response,
    url: String,
}

fn receipt_of(response: &reqwest::Response) -> Option<String> {
    response.headers().get(RECEIPT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A request ready to send, and the signature its answer's receipt must cover.
#[derive(Debug)]
struct Signed {
    request: reqwest::RequestBuilder,
    signature: [u8; 32],
}

/// The start and total size of a `Content-Range: bytes N-M/SIZE` that
/// runs to the end of the content.
fn content_range(value: &str) -> Option<(u64, u64)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total): (u64, u64, u64) = (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last.checked_add(1) == Some(total)).then_some((first, total))
}

/// The upload form's head: the three signed fields, as the text signed.
fn head_form(head: &SignedFields) -> Form {
    Form::new()
        .text(field::PATH, head.path.clone())
        .text(field::SHA256, head.sha256.clone())
        .text(field::SIZE, head.size.clone())
}

/// The next `len` bytes of `source`, fewer only at its end. Read into a
/// buffer of exactly that size: `read_to_end` would zero the buffer and
/// read it in up to five growing steps.
fn read_up_to(mut source: impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match source.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// The rest of a file part after its first block: read piece by piece on
/// the blocking pool (compressed a block at a time, one zstd frame each,
/// when `compressors` is given), paced by the bandwidth cap and counted in
/// `sent`.
struct Pieces {
    /// Away while a piece is being read.
    source: Option<Hashed>,
    compressors: Option<Arc<Compressors>>,
    bandwidth: Option<Bandwidth>,
    sent: Arc<AtomicU64>,
}

impl Pieces {
    /// The stream of `first`, then every further piece.
    fn after(self, first: Vec<u8>) -> impl futures_util::Stream<Item = io::Result<Vec<u8>>> {
        futures_util::stream::try_unfold((Some(first), self), |(pending, mut pieces)| async move {
            let piece = match pending {
                Some(first) => first,
                None => pieces.next().await?,
            };
            if piece.is_empty() {
                if let Some(source) = &mut pieces.source {
                    source.finish();
                }
                return Ok(None);
            }
            if let Some(bandwidth) = &pieces.bandwidth {
                bandwidth.take(piece.len()).await;
            }
            pieces.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            Ok(Some((piece, (None, pieces))))
        })
    }

    /// The next piece; empty at the end.
    async fn next(&mut self) -> io::Result<Vec<u8>> {
        let source = self.source.take().ok_or_else(|| io::Error::other("a failed read ended the file part"))?;
        let (piece, source) = match &self.compressors {
            Some(compressors) => {
                compressors
                    .with_compressor(move |compressor| {
                        let mut source = source;
                        let block = read_up_to(&mut source, BLOCK_SIZE)?;
                        let piece = if block.is_empty() { block } else { compressor.compress(&block)? };
                        Ok((piece, source))
                    })
                    .await?
            }
            None => {
                let size = self.bandwidth.as_ref().map_or(UPLOAD_PIECE, |cap| cap.piece_size(UPLOAD_PIECE));
                tokio::task::spawn_blocking(move || {
                    let mut source = source;
                    let piece = read_up_to(&mut source, size)?;
                    Ok::<_, io::Error>((piece, source))
                })
                .await
                .map_err(io::Error::other)??
            }
        };
        self.source = Some(source);
        Ok(piece)
    }
}

/// A file part's source: with `hashing`, every byte read is hashed as it
/// passes, once, in the chunks it is read in.
struct Hashed {
    inner: io::Take<Rewound>,
    hashing: Option<(Sha256Hasher, Arc<OnceLock<Sha256Digest>>)>,
}

impl Read for Hashed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if let Some((hasher, _)) = &mut self.hashing {
            hasher.update(&buf[..read]);
        }
        Ok(read)
    }
}

impl Hashed {
    /// Sets the digest of what was read, at the end of the part.
    fn finish(&mut self) {
        if let Some((hasher, digest)) = self.hashing.take() {
            digest.get_or_init(|| hasher.finish().0);
        }
    }
}

/// The hasher that has hashed the first `offset` bytes of `file`: those a
/// trailer upload that continues from `offset` does not send again.
async fn hash_prefix(file: &Opened, offset: u64) -> io::Result<Sha256Hasher> {
    let mut source = file.reader_from(0).take(offset);
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256Hasher::default();
        let mut buffer = vec![0; UPLOAD_PIECE];
        loop {
            match source.read(&mut buffer)? {
                0 if hasher.bytes_hashed() == offset => return Ok(hasher),
                0 => return Err(io::Error::other("it shrank below what the receiver holds of it")),
                read => hasher.update(&buffer[..read]),
            }
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// A trailer field whose text is made when it is sent, after the file part.
fn trailer_part(make: impl FnOnce() -> io::Result<String> + Send + 'static) -> Part {
    let once = futures_util::stream::once(async move { make() });
    Part::stream(Body::wrap_stream(once))
}

/// The digest of a file part that has been read to its end.
fn known(digest: &OnceLock<Sha256Digest>) -> io::Result<&Sha256Digest> {
    digest.get().ok_or_else(|| io::Error::other("the file part ended before all of it was read"))
}

fn source_error(e: io::Error) -> RequestError {
    RequestError::Source(e.to_string())
}

/// Full jitter over an exponentially growing window, so a fleet that lost
/// the receiver at the same moment does not come back at the same moment.
fn backoff(attempt: u32) -> Duration {
    let window = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_CAP);
    window.mul_f64(rand::random_range(0.5..=1.0))
}

fn transport_error(url: &str, err: &reqwest::Error) -> RequestError {
    let url = url.to_owned();
    let cause = root_cause(err);
    if let Some(tls) = tls_failure(err) {
        RequestError::Tls { url, cause: tls }
    } else if err.is_connect() {
        RequestError::Unreachable { url, cause }
    } else if err.is_timeout() {
        RequestError::Transport { url, cause: format!("timed out ({cause})") }
    } else {
        RequestError::Transport { url, cause }
    }
}

/// The certificate problem behind `err`, if that is what it is. The rustls
/// error sits in the source chain, possibly inside nested `io::Error`s,
/// whose `source()` skips the error they wrap.
fn tls_failure(err: &reqwest::Error) -> Option<String> {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![err];
    while let Some(current) = pending.pop() {
        if let Some(rustls_error) = current.downcast_ref::<rustls::Error>() {
            return Some(rustls_error.to_string());
        }
        if let Some(inner) = current.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
        pending.extend(current.source());
    }
    None
}

/// reqwest's own message is generic ("error sending request"); the innermost
/// cause ("Connection refused", "dns error") is what a person can act on.
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..20 {
            let window = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_CAP);
            let pause = backoff(attempt);
            assert!(pause >= window / 2 && pause <= window, "attempt {attempt}: {pause:?}");
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }

    #[test]
    fn content_ranges_must_run_to_the_end() {
        assert_eq!(content_range("bytes 100-999/1000"), Some((100, 1000)));
        assert_eq!(content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(content_range("bytes 100-998/1000"), None, "stops short");
        assert_eq!(content_range("bytes 100-999/*"), None);
        assert_eq!(content_range("bytes 5-4/5"), None);
        assert_eq!(content_range("items 0-9/10"), None);
        assert_eq!(content_range(""), None);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let refused = |code: u16, signed| RequestError::Refused {
            status: StatusCode::from_u16(code).expect("status"),
            body: None,
            retry_after: None,
            signed,
        };
        for code in [408, 429, 500, 502, 503, 507] {
            assert!(refused(code, true).is_transient(), "{code}");
        }
        for code in [400, 401, 404, 409, 413, 422] {
            assert!(!refused(code, true).is_transient(), "{code}");
            assert!(refused(code, false).is_transient(), "unsigned {code}");
        }
        assert!(RequestError::Unreachable { url: String::new(), cause: String::new() }.is_transient());
        assert!(!RequestError::Tls { url: String::new(), cause: String::new() }.is_transient());
    }
}
