//! One upload, as a pipeline of steps in the order PROTOCOL.md gives. Each
//! step consumes the previous one's output, so the order cannot be changed
//! by mistake: nothing scarce (an upload slot, a place in its queue, a
//! staging file) can be reached before the signature is verified, and no
//! answer says "stored" before the bytes were checked and committed.
//!
//! ```text
//! read_head → Head::verify → VerifiedHead::take_slot → Slotted::receive → Received::commit
//!   (claim)     (signature)        (slot)            (staging, trailer)      (store)
//! ```
//!
//! A head may leave the digest to a signed trailer after the file; the store
//! commits only a [`Checked`] claim, which exists once the digest is known
//! and the bytes hash to it.

use std::time::Instant;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::http::header::CONTENT_ENCODING;
use actix_web::{HttpRequest, web};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use logferry_common::rel_path::MAX_PATH_BYTES;
use logferry_common::signing::{HeadDigest, SignedFields, TRAILER, UploadClaim, UploadHead, parse_decimal};
use logferry_common::wire::{Encoding, UploadOffset, UploadReceipt, field};
use logferry_common::{PathError, RelPath, Sha256Digest, Sha256Hasher};
use zstd::stream::raw::{DParameter, InBuffer, Operation as _, OutBuffer};

use crate::auth::{self, Claimed, Verified};
use crate::error::ApiError;
use crate::ids::{Device, IdsFile};
use crate::limits::{Limits, Slot, UploadSlots};
use crate::store::{Staged as _, Store};

/// Longest `sha256` field: 64 hex characters.
const MAX_SHA256_FIELD_BYTES: usize = 64;
/// Longest `size` (and `offset`) field: `u64::MAX` has 20 digits.
const MAX_SIZE_FIELD_BYTES: usize = 20;
/// Longer than any encoding's name.
const MAX_ENCODING_FIELD_BYTES: usize = 16;
/// Largest zstd window a frame may ask for: 8 MiB, what RFC 8878 asks every
/// decoder to support, so that decoding one upload holds at most that much
/// memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Decoded bytes are counted and written in pieces of at most this size.
const DECODED_PIECE: usize = 128 * 1024;

/// What is known about an upload so far, for its log line. Filled in as the
/// steps go; the device only once its signature verified.
#[derive(Debug, Default)]
pub struct Progress {
    /// The first characters of the key id the request named.
    pub key: Option<String>,
    pub verified: Option<Device>,
    /// The path as sent (the log formats quote it).
    pub path: Option<String>,
    pub size: Option<u64>,
    /// Where the file part started, when it continued a cut-off upload.
    pub resumed_from: Option<u64>,
    /// The file part's encoding, when it was compressed.
    pub encoding: Option<&'static str>,
}

/// Step 1: the request names a listed key, and its signed head (path,
/// sha256 and size, as text) has been read, all within one deadline.
pub struct Head {
    claimed: Claimed,
    head: SignedFields,
    form: Multipart,
}

/// Reads what must be known before anything is decided: the Authorization
/// header and the three text fields, bounded in size and, together, in time
/// (`head_timeout`): a client that trickles them holds nothing but its
/// connection, and not for long. `endpoint` is the upload's, or the offset
/// query's, whose body is the same head.
pub async fn read_head(
    req: &HttpRequest,
    endpoint: &'static str,
    payload: web::Payload,
    ids: &IdsFile,
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Head, ApiError> {
    let claimed = auth::claim(req, endpoint, ids)?;
    progress.key = Some(claimed.key_short().to_owned());
    refuse_encoded_body(req)?;
    let mut form = Multipart::new(req.headers(), payload);
    let fields = async {
        let path = read_head_field(&mut form, field::PATH, MAX_PATH_BYTES).await?;
        let sha256 = read_head_field(&mut form, field::SHA256, MAX_SHA256_FIELD_BYTES).await?;
        let size = read_head_field(&mut form, field::SIZE, MAX_SIZE_FIELD_BYTES).await?;
        Ok::<_, ApiError>(SignedFields { path, sha256, size })
    };
    let head = tokio::time::timeout(limits.head_timeout, fields)
        .await
        .map_err(|_| ApiError::HeadTimeout(limits.head_timeout.as_secs()))??;
    progress.path = Some(head.path.clone());
    Ok(Head { claimed, head, form })
}

/// Bodies are taken as they are sent: a decoder in front of the
/// verification would spend work on requests nobody has vouched for.
pub fn refuse_encoded_body(req: &HttpRequest) -> Result<(), ApiError> {
    match req.headers().get(CONTENT_ENCODING) {
        Some(encoding) => {
            let encoding = encoding.to_str().unwrap_or("(not text)").trim();
            if encoding.eq_ignore_ascii_case("identity") {
                Ok(())
            } else {
                Err(ApiError::UnsupportedEncoding(encoding.to_owned()))
            }
        }
        None => Ok(()),
    }
}

/// Step 2: the signature covers exactly the fields that were read, and the
/// timestamp is fresh. From here on every answer is signed.
pub struct VerifiedHead {
    verified: Verified,
    claim: UploadHead,
    form: Multipart,
}

// The multipart stream has no Debug of its own.
impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head").field("claimed", &self.claimed).field("head", &self.head).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VerifiedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedHead")
            .field("verified", &self.verified)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl Head {
    /// Checks the signature, then judges the fields it covers: their form,
    /// the path rules and the size limit.
    pub fn verify(self, limits: &Limits, progress: &mut Progress) -> Result<VerifiedHead, ApiError> {
        let verified = self.claimed.verify(Some(&self.head))?;
        progress.verified = Some(verified.device().clone());
        let claim = judge(self.head, limits).map_err(|error| verified.refuse(error))?;
        progress.size = Some(claim.size);
        Ok(VerifiedHead { verified, claim, form: self.form })
    }
}

/// The head the fields make, by the path rules, the form of `sha256` and
/// `size`, and the size limit.
pub fn judge(head: SignedFields, limits: &Limits) -> Result<UploadHead, ApiError> {
    let path =
        RelPath::parse(&head.path).map_err(|reason| ApiError::InvalidPath { path: head.path.clone(), reason })?;
    let sha256 = match head.sha256.as_str() {
        TRAILER => HeadDigest::Trailer,
        hex => HeadDigest::Known(parse_sha256(hex)?),
    };
    let size = parse_decimal(&head.size).ok_or_else(|| {
        ApiError::MalformedUpload(format!(
            "the size field must be a whole number of bytes in decimal, without leading zeros, not {:?}",
            head.size
        ))
    })?;
    if size > limits.max_file_size {
        return Err(ApiError::TooLarge { declared: size, max: limits.max_file_size });
    }
    Ok(UploadHead { path, sha256, size })
}

fn parse_sha256(text: &str) -> Result<Sha256Digest, ApiError> {
    text.parse().map_err(|_| {
        ApiError::MalformedUpload(format!(
            "the sha256 field must be 64 hexadecimal characters (or {TRAILER:?} in the head)"
        ))
    })
}

/// A claim whose digest is known and whose bytes, all of them, were
/// received and hash to it: the one thing a store commits.
#[derive(Debug)]
pub struct Checked(UploadClaim);

impl Checked {
    pub fn claim(&self) -> &UploadClaim {
        &self.0
    }
}

/// Step 3: a verified upload holding its slot (overall and per device).
#[derive(Debug)]
pub struct Slotted {
    head: VerifiedHead,
    slot: Slot,
}

impl VerifiedHead {
    /// The answer to an offset query: how much of this file a cut-off
    /// upload left in the store. Cheap, so it takes no slot.
    pub async fn held<S: Store>(self, store: &S) -> Result<(Verified, UploadOffset), ApiError> {
        match store.held(&self.verified.device().id, &self.claim).await {
            Ok(offset) => Ok((self.verified, UploadOffset { offset })),
            Err(error) => Err(self.verified.refuse(error.into())),
        }
    }

    /// Waits for a slot, up to the queue time: only verified uploads queue.
    pub async fn take_slot(self, slots: &UploadSlots) -> Result<Slotted, ApiError> {
        match slots.take(self.verified.device().key.key_id()).await {
            Ok(slot) => Ok(Slotted { head: self, slot }),
            Err(error) => Err(self.verified.refuse(error)),
        }
    }
}

/// Step 4: the body is in staging, ended cleanly (after its trailer, if the
/// head promised one), and its size and SHA-256 are the declared ones.
#[derive(Debug)]
pub struct Received<Staged> {
    verified: Verified,
    checked: Checked,
    staged: Staged,
    _slot: Slot,
}

impl Slotted {
    /// Streams the file field into staging while hashing it (decoding it
    /// first when it is compressed), continuing what a cut-off upload of
    /// the same file left when the upload gives an offset. More bytes than
    /// declared stop it at the first one too many; a body that does not end
    /// cleanly after the file is never stored, even when the bytes so far
    /// happen to verify.
    pub async fn receive<S: Store>(
        self,
        store: &S,
        limits: &Limits,
        progress: &mut Progress,
    ) -> Result<Received<S::Staged>, ApiError> {
        let Self { head: VerifiedHead { verified, claim, mut form }, slot } = self;
        let pace = Pace::new(limits, claim.size);
        let opened = match body_fields(&pace, &claim, &mut form).await {
            Ok(fields) => {
                progress.resumed_from = Some(fields.offset).filter(|offset| *offset > 0);
                progress.encoding = fields.decoder.as_ref().map(|_| Encoding::Zstd.as_str());
                store
                    .stage(&verified.device().id, &claim, fields.offset)
                    .await
                    .map_err(ApiError::from)
                    .map(|(staged, hasher)| (fields, staged, hasher))
            }
            Err(error) => Err(error),
        };
        let (fields, mut staged, hasher) = opened.map_err(|error| verified.refuse(error))?;
        match stream_file(&verified, &claim, fields, hasher, &pace, &mut form, &mut staged).await {
            Ok(checked) => Ok(Received { verified, checked, staged, _slot: slot }),
            Err(error) => {
                // Incomplete bytes are kept for the next try to continue;
                // wrong ones are not worth continuing.
                if error.is_bad_data() {
                    staged.discard().await;
                } else {
                    staged.abandon().await;
                }
                Err(verified.refuse(error))
            }
        }
    }
}

/// What the fields between the head and the file say about the file part.
struct BodyFields {
    offset: u64,
    decoder: Option<ZstdDecoder>,
    file: Field,
}

/// Reads the optional `offset` and `encoding` fields and opens the `file`
/// field, all within one idle timeout.
async fn body_fields(pace: &Pace<'_>, claim: &UploadHead, form: &mut Multipart) -> Result<BodyFields, ApiError> {
    let read = async {
        let mut next = pace.next(form).await?;
        let mut offset = 0;
        if matches!(&next, Some(Ok(found)) if found.name() == Some(field::OFFSET)) {
            let text = read_text(expect_field(next, field::OFFSET)?, field::OFFSET, MAX_SIZE_FIELD_BYTES).await?;
            offset = parse_decimal(&text).filter(|offset| *offset <= claim.size).ok_or_else(|| {
                ApiError::MalformedUpload(format!(
                    "the offset field must be a byte count in decimal, at most the size {}, not {text:?}",
                    claim.size
                ))
            })?;
            next = pace.next(form).await?;
        }
        let mut decoder = None;
        if matches!(&next, Some(Ok(found)) if found.name() == Some(field::ENCODING)) {
            let text =
                read_text(expect_field(next, field::ENCODING)?, field::ENCODING, MAX_ENCODING_FIELD_BYTES).await?;
            if text != Encoding::Zstd.as_str() {
                return Err(ApiError::UnknownEncoding(text));
            }
            decoder = Some(ZstdDecoder::new()?);
            next = pace.next(form).await?;
        }
        Ok(BodyFields { offset, decoder, file: expect_field(next, field::FILE)? })
    };
    tokio::time::timeout(pace.limits.idle_timeout, read).await.map_err(|_| {
        ApiError::Timeout(format!(
            "the fields before the file did not arrive within {} s",
            pace.limits.idle_timeout.as_secs()
        ))
    })?
}

async fn stream_file<Staged: crate::store::Staged>(
    verified: &Verified,
    claim: &UploadHead,
    fields: BodyFields,
    mut hasher: Sha256Hasher,
    pace: &Pace<'_>,
    form: &mut Multipart,
    staged: &mut Staged,
) -> Result<Checked, ApiError> {
    let BodyFields { mut decoder, mut file, .. } = fields;
    let mut keep = async |bytes: Bytes, hasher: &mut Sha256Hasher| {
        hasher.update(&bytes);
        if hasher.bytes_hashed() > claim.size {
            return Err(ApiError::SizeMismatch { declared: claim.size, received_at_least: hasher.bytes_hashed() });
        }
        Ok::<_, ApiError>(staged.write(bytes).await?)
    };
    while let Some(chunk) = pace.next(&mut file).await? {
        let chunk = chunk.map_err(malformed)?;
        match &mut decoder {
            None => keep(chunk, &mut hasher).await?,
            Some(decoder) => {
                let mut input = InBuffer::around(&chunk);
                // Decoded a bounded piece at a time, each counted before
                // the next: a bomb stops one piece past the declared size.
                while let Some(decoded) = decoder.next_piece(&mut input)? {
                    keep(decoded, &mut hasher).await?;
                }
            }
        }
    }
    drop(file);
    if decoder.as_ref().is_some_and(|decoder| !decoder.at_frame_end) {
        return Err(ApiError::CorruptEncoding("the zstd data ends in the middle of a frame".to_owned()));
    }
    let declared = match &claim.sha256 {
        HeadDigest::Known(sha256) => *sha256,
        HeadDigest::Trailer => read_trailer(verified, pace, form).await?,
    };
    if let Some(extra) = pace.next(form).await? {
        return Err(match extra {
            Ok(extra) => ApiError::MalformedUpload(format!(
                "unexpected field {:?} after the file field and its trailer, if any",
                extra.name().unwrap_or_default()
            )),
            Err(e) => malformed(e),
        });
    }
    check_received(claim, declared, hasher)
}

/// The checked claim, if what `hasher` took in is the file `claim`
/// declares, with the SHA-256 `declared` (the head's or its trailer's).
pub fn check_received(claim: &UploadHead, declared: Sha256Digest, hasher: Sha256Hasher) -> Result<Checked, ApiError> {
    let (received, received_len) = hasher.finish();
    if received_len != claim.size {
        return Err(ApiError::SizeMismatch { declared: claim.size, received_at_least: received_len });
    }
    if received != declared {
        return Err(ApiError::ChecksumMismatch { declared, received });
    }
    Ok(Checked(claim.with_digest(received)))
}

/// The digest sent after the file and its signature, within one idle
/// timeout. Checked before it is compared with what arrived, so that a
/// forged trailer is told apart from a damaged file.
async fn read_trailer(verified: &Verified, pace: &Pace<'_>, form: &mut Multipart) -> Result<Sha256Digest, ApiError> {
    let read = async {
        let mut trailer_field = async |expected| {
            let next = pace.next(form).await?;
            read_text(expect_in(next, expected, TRAILER_ORDER)?, expected, MAX_SHA256_FIELD_BYTES).await
        };
        let sha256 = trailer_field(field::SHA256).await?;
        let tag = trailer_field(field::SIGNATURE).await?;
        Ok::<_, ApiError>((sha256, tag))
    };
    let (sha256, tag) = tokio::time::timeout(pace.limits.idle_timeout, read).await.map_err(|_| {
        ApiError::Timeout(format!("the trailer did not arrive within {} s", pace.limits.idle_timeout.as_secs()))
    })??;
    let sha256 = parse_sha256(&sha256)?;
    if !verified.signs_trailer(&sha256, &tag) {
        return Err(ApiError::BadTrailer);
    }
    Ok(sha256)
}

/// A zstd stream decoded as it arrives, frames one after another.
pub struct ZstdDecoder {
    inner: zstd::stream::raw::Decoder<'static>,
    /// No frame is half decoded: the data may end here.
    pub at_frame_end: bool,
}

impl std::fmt::Debug for ZstdDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdDecoder").field("at_frame_end", &self.at_frame_end).finish_non_exhaustive()
    }
}

impl ZstdDecoder {
    pub fn new() -> Result<Self, ApiError> {
        let mut inner = zstd::stream::raw::Decoder::new().map_err(ApiError::Storage)?;
        inner.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX)).map_err(ApiError::Storage)?;
        Ok(Self { inner, at_frame_end: true })
    }

    /// The next piece (at most [`DECODED_PIECE`] bytes) decoded from
    /// `input`; `None` once `input` is used up and nothing is pending.
    pub fn next_piece(&mut self, input: &mut InBuffer<'_>) -> Result<Option<Bytes>, ApiError> {
        loop {
            let mut piece = Vec::with_capacity(DECODED_PIECE);
            let mut output = OutBuffer::around(&mut piece);
            let consumed_before = input.pos();
            let hint =
                self.inner.run(input, &mut output).map_err(|e| ApiError::CorruptEncoding(format!("zstd: {e}")))?;
            let full = output.pos() == DECODED_PIECE;
            // A call that moved nothing says nothing about the frame (at a
            // frame's end it asks for the next frame's header).
            if input.pos() != consumed_before || output.pos() > 0 {
                self.at_frame_end = hint == 0;
            }
            if !piece.is_empty() {
                return Ok(Some(Bytes::from(piece)));
            }
            if input.pos() == input.src.len() && !full {
                return Ok(None);
            }
        }
    }
}

/// Step 5: the upload is durably in the store, and the signed answer to it.
#[derive(Debug)]
pub struct Stored {
    pub verified: Verified,
    pub receipt: UploadReceipt,
}

impl<Staged> Received<Staged> {
    /// Makes the verified bytes visible in the store; the slot is held until
    /// they are durable.
    pub async fn commit<S: Store<Staged = Staged>>(self, store: &S) -> Result<Stored, ApiError> {
        match store.commit(self.staged, &self.checked).await {
            Ok(committed) => Ok(Stored {
                verified: self.verified,
                receipt: UploadReceipt {
                    outcome: committed.outcome,
                    stored_as: committed.stored_as.to_string(),
                    sha256: self.checked.0.sha256,
                    size: self.checked.0.size,
                },
            }),
            Err(error) => Err(self.verified.refuse(error.into())),
        }
    }
}

/// How long the client may take for the next piece of the body: never more
/// than the idle timeout, and never past the deadline of the whole body.
#[derive(Debug, Clone, Copy)]
pub struct Pace<'a> {
    limits: &'a Limits,
    deadline: Instant,
}

impl<'a> Pace<'a> {
    /// The pace of a body carrying `size` bytes of files, from now.
    pub fn new(limits: &'a Limits, size: u64) -> Self {
        Self { limits, deadline: limits.body_deadline(Instant::now(), size) }
    }

    pub async fn next<St: Stream + Unpin>(&self, stream: &mut St) -> Result<Option<St::Item>, ApiError> {
        let idle_until = Instant::now() + self.limits.idle_timeout;
        let until = self.deadline.min(idle_until);
        tokio::time::timeout_at(until.into(), stream.next()).await.map_err(|_| {
            ApiError::Timeout(if until == self.deadline {
                format!("the body arrived slower than {} bytes/s", self.limits.min_bytes_per_sec)
            } else {
                format!("no data arrived for {} s", self.limits.idle_timeout.as_secs())
            })
        })
    }
}

/// The next field must be `expected`: the order is fixed so that the
/// receiver knows path, checksum and size before the first byte of the file.
/// Field names are compared exactly (they are lowercase).
fn expect_field(next: Option<Result<Field, MultipartError>>, expected: &str) -> Result<Field, ApiError> {
    expect_in(next, expected, &field::ORDER.join(", "))
}

/// What follows the file when the head's `sha256` is `trailer`.
const TRAILER_ORDER: &str = "the head's fields, the file, then sha256 and signature";

/// [`expect_field`] in a body whose fields are `order`.
pub fn expect_in(next: Option<Result<Field, MultipartError>>, expected: &str, order: &str) -> Result<Field, ApiError> {
    match next {
        Some(Ok(found)) if found.name() == Some(expected) => Ok(found),
        Some(Ok(found)) => Err(ApiError::MalformedUpload(format!(
            "expected the field {expected:?} but found {:?}; fields must be {order}, in that order, once each",
            found.name().unwrap_or_default()
        ))),
        Some(Err(e)) => Err(malformed(e)),
        None => Err(ApiError::MalformedUpload(format!(
            "the upload ended before the field {expected:?}; fields must be {order}"
        ))),
    }
}

/// A text field's bytes, at most `max` of them, as UTF-8 whatever charset
/// its part declares. The path's limit is the path rule's, so a path that
/// is too long is `invalid_path` whether it is long or very long.
pub async fn read_text(mut field: Field, expected: &str, max: usize) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
        if bytes.len() + chunk.len() > max {
            return Err(if expected == field::PATH {
                ApiError::InvalidPath {
                    path: format!("{}…", String::from_utf8_lossy(&bytes[..bytes.len().min(64)])),
                    reason: PathError::TooLong(bytes.len() + chunk.len()),
                }
            } else {
                ApiError::MalformedUpload(format!("the field {expected:?} is longer than {max} bytes"))
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|e| {
        if expected == field::PATH {
            ApiError::InvalidPath {
                path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                reason: PathError::NotUtf8,
            }
        } else {
            ApiError::MalformedUpload(format!("the field {expected:?} is not valid UTF-8"))
        }
    })
}

async fn read_head_field(form: &mut Multipart, expected: &str, max: usize) -> Result<String, ApiError> {
    read_text(expect_field(form.next().await, expected)?, expected, max).await
}

pub fn malformed(err: MultipartError) -> ApiError {
    ApiError::MalformedUpload(format!("the multipart body could not be read: {err}"))
}
