//! One upload, as a pipeline of steps in the order PROTOCOL.md gives. Each
//! step consumes the previous one's output, so the order cannot be changed
//! by mistake: nothing scarce (an upload slot, a place in its queue, a
//! staging file) can be reached before the signature is verified, and no
//! answer says "stored" before the bytes were checked and committed.
//!
//! ```text
//! read_head → Head::verify → VerifiedHead::take_slot → Slotted::receive → Received::commit
//!   (claim)     (signature)        (slot)                 (staging)          (store)
//! ```

use std::time::Instant;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::http::header::CONTENT_ENCODING;
use actix_web::{HttpRequest, web};
use futures_util::{Stream, StreamExt};
use logferry_common::rel_path::MAX_PATH_BYTES;
use logferry_common::signing::{UploadClaim, UploadHead, parse_decimal};
use logferry_common::wire::{UploadReceipt, endpoint, field};
use logferry_common::{PathError, RelPath, Sha256Digest, Sha256Hasher};

use crate::auth::{self, Claimed, Verified};
use crate::error::ApiError;
use crate::ids::{Device, IdsFile};
use crate::limits::{Limits, Slot, UploadSlots};
use crate::store::Store;

/// Longest `sha256` field: 64 hex characters.
const MAX_SHA256_FIELD_BYTES: usize = 64;
/// Longest `size` field: `u64::MAX` has 20 digits.
const MAX_SIZE_FIELD_BYTES: usize = 20;

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
}

/// Step 1: the request names a listed key, and its signed head (path,
/// sha256 and size, as text) has been read, all within one deadline.
pub struct Head {
    claimed: Claimed,
    head: UploadHead,
    form: Multipart,
}

/// Reads what must be known before anything is decided: the Authorization
/// header and the three text fields, bounded in size and, together, in time
/// (`head_timeout`): a client that trickles them holds nothing but its
/// connection, and not for long.
pub async fn read_head(
    req: &HttpRequest,
    payload: web::Payload,
    ids: &IdsFile,
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Head, ApiError> {
    let claimed = auth::claim(req, endpoint::UPLOAD, ids)?;
    progress.key = Some(claimed.key_short().to_owned());
    if let Some(encoding) = req.headers().get(CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("(not text)").trim();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(ApiError::UnsupportedEncoding(encoding.to_owned()));
        }
    }
    let mut form = Multipart::new(req.headers(), payload);
    let fields = async {
        let path = read_text_field(&mut form, field::PATH, MAX_PATH_BYTES).await?;
        let sha256 = read_text_field(&mut form, field::SHA256, MAX_SHA256_FIELD_BYTES).await?;
        let size = read_text_field(&mut form, field::SIZE, MAX_SIZE_FIELD_BYTES).await?;
        Ok::<_, ApiError>(UploadHead { path, sha256, size })
    };
    let head = tokio::time::timeout(limits.head_timeout, fields)
        .await
        .map_err(|_| ApiError::HeadTimeout(limits.head_timeout.as_secs()))??;
    progress.path = Some(head.path.clone());
    Ok(Head { claimed, head, form })
}

/// Step 2: the signature covers exactly the fields that were read, and the
/// timestamp is fresh. From here on every answer is signed.
pub struct VerifiedHead {
    verified: Verified,
    claim: UploadClaim,
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

fn judge(head: UploadHead, limits: &Limits) -> Result<UploadClaim, ApiError> {
    let path =
        RelPath::parse(&head.path).map_err(|reason| ApiError::InvalidPath { path: head.path.clone(), reason })?;
    let sha256 = head
        .sha256
        .parse()
        .map_err(|_| ApiError::MalformedUpload("the sha256 field must be 64 hexadecimal characters".to_owned()))?;
    let size = parse_decimal(&head.size).ok_or_else(|| {
        ApiError::MalformedUpload(format!(
            "the size field must be a whole number of bytes in decimal, without leading zeros, not {:?}",
            head.size
        ))
    })?;
    if size > limits.max_file_size {
        return Err(ApiError::TooLarge { declared: size, max: limits.max_file_size });
    }
    Ok(UploadClaim { path, sha256, size })
}

/// Step 3: a verified upload holding its slot (overall and per device).
#[derive(Debug)]
pub struct Slotted {
    head: VerifiedHead,
    slot: Slot,
}

impl VerifiedHead {
    /// Waits for a slot, up to the queue time: only verified uploads queue.
    pub async fn take_slot(self, slots: &UploadSlots) -> Result<Slotted, ApiError> {
        match slots.take(self.verified.device().key.key_id()).await {
            Ok(slot) => Ok(Slotted { head: self, slot }),
            Err(error) => Err(self.verified.refuse(error)),
        }
    }
}

/// Step 4: the body is in staging, ended cleanly, and its size and SHA-256
/// are the declared ones.
#[derive(Debug)]
pub struct Received<Staged> {
    verified: Verified,
    claim: UploadClaim,
    staged: Staged,
    received: Sha256Digest,
    _slot: Slot,
}

impl Slotted {
    /// Streams the file field into staging while hashing it. More bytes than
    /// declared stop it at the first one too many; a body that does not end
    /// cleanly after the file is never stored, even when the bytes so far
    /// happen to verify.
    pub async fn receive<S: Store>(self, store: &S, limits: &Limits) -> Result<Received<S::Staged>, ApiError> {
        let Self { head: VerifiedHead { verified, claim, mut form }, slot } = self;
        match stream_body(&verified, &claim, &mut form, store, limits).await {
            Ok((staged, received)) => Ok(Received { verified, claim, staged, received, _slot: slot }),
            Err(error) => Err(verified.refuse(error)),
        }
    }
}

async fn stream_body<S: Store>(
    verified: &Verified,
    claim: &UploadClaim,
    form: &mut Multipart,
    store: &S,
    limits: &Limits,
) -> Result<(S::Staged, Sha256Digest), ApiError> {
    use crate::store::Staged as _;
    let pace = Pace { limits, deadline: limits.body_deadline(Instant::now(), claim.size) };
    let mut file = pace.next(form).await.and_then(|next| expect_field(next, field::FILE))?;
    let mut staged = store.stage(&verified.device().id, claim).await?;
    let mut hasher = Sha256Hasher::default();
    while let Some(chunk) = pace.next(&mut file).await? {
        let chunk = chunk.map_err(malformed)?;
        hasher.update(&chunk);
        if hasher.len() > claim.size {
            return Err(ApiError::SizeMismatch { declared: claim.size, received_at_least: hasher.len() });
        }
        staged.write(chunk).await?;
    }
    drop(file);
    if let Some(extra) = pace.next(form).await? {
        return Err(match extra {
            Ok(extra) => ApiError::MalformedUpload(format!(
                "unexpected field {:?} after the file field",
                extra.name().unwrap_or_default()
            )),
            Err(e) => malformed(e),
        });
    }
    let (received, received_len) = hasher.finish();
    if received_len != claim.size {
        return Err(ApiError::SizeMismatch { declared: claim.size, received_at_least: received_len });
    }
    if received != claim.sha256 {
        return Err(ApiError::ChecksumMismatch { declared: claim.sha256, received });
    }
    Ok((staged, received))
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
        match store.commit(self.staged).await {
            Ok(committed) => Ok(Stored {
                verified: self.verified,
                receipt: UploadReceipt {
                    outcome: committed.outcome,
                    stored_as: committed.stored_as.to_string(),
                    sha256: self.received,
                    size: self.claim.size,
                },
            }),
            Err(error) => Err(self.verified.refuse(error.into())),
        }
    }
}

/// How long the client may take for the next piece of the body: never more
/// than the idle timeout, and never past the deadline of the whole body.
#[derive(Debug, Clone, Copy)]
struct Pace<'a> {
    limits: &'a Limits,
    deadline: Instant,
}

impl Pace<'_> {
    async fn next<St: Stream + Unpin>(&self, stream: &mut St) -> Result<Option<St::Item>, ApiError> {
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
    let order = field::ORDER.join(", ");
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
async fn read_text_field(form: &mut Multipart, expected: &str, max: usize) -> Result<String, ApiError> {
    let mut field = expect_field(form.next().await, expected)?;
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

fn malformed(err: MultipartError) -> ApiError {
    ApiError::MalformedUpload(format!("the multipart body could not be read: {err}"))
}
