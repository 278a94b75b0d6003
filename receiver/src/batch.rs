//! Several small files in one request, as a pipeline like
//! [`crate::upload`]'s, with the same promises: nothing scarce before the
//! signature verified, no "stored" before the bytes were checked and are
//! durable. Each file is judged, checked and committed as a single upload
//! would be; what differs is that one signature, one slot and one commit
//! (one sync of the store for all their data, one for all their names)
//! serve them all.
//!
//! ```text
//! read_head → Head::verify → VerifiedBatch::take_slot → Slotted::receive → Received::commit
//! (manifest)   (signature)          (slot)               (in memory)         (store)
//! ```

use actix_multipart::Multipart;
use actix_web::{HttpRequest, web};
use bytes::Bytes;
use futures_util::StreamExt;
use logferry_common::signing::{HeadDigest, SignedFields, UploadHead};
use logferry_common::wire::{
    BATCH_FILE_MAX, BATCH_MAX_BYTES, BATCH_MAX_FILES, BatchManifest, BatchReceipt, BatchRefusal, BatchResult, Encoding,
    UploadReceipt, endpoint, field,
};
use logferry_common::{Sha256Digest, Sha256Hasher};
use zstd::stream::raw::InBuffer;

use crate::auth::{self, Claimed, Verified};
use crate::error::ApiError;
use crate::ids::IdsFile;
use crate::limits::{Limits, Slot, UploadSlots};
use crate::store::{HeldFile, Store};
use crate::upload::{
    Pace, Progress, ZstdDecoder, check_received, expect_in, judge, malformed, read_text, refuse_encoded_body,
};

/// Longest manifest: every entry with a path of the longest kind.
const MAX_MANIFEST_BYTES: usize = 128 * 1024;
/// Longest file part: the largest file of a batch, or its compression
/// (zstd adds a few bytes to data it cannot shrink).
const MAX_PART_BYTES: u64 = BATCH_FILE_MAX + 4096;
/// The fields of a batch, for error messages.
const ORDER: &str = "manifest, then one file per manifest entry";

/// Step 1: a listed key, and the manifest as text, read within the head
/// timeout.
pub struct Head {
    claimed: Claimed,
    manifest: String,
    form: Multipart,
}

pub async fn read_head(
    req: &HttpRequest,
    payload: web::Payload,
    ids: &IdsFile,
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Head, ApiError> {
    let claimed = auth::claim(req, endpoint::UPLOAD_BATCH, ids)?;
    progress.key = Some(claimed.key_short().to_owned());
    refuse_encoded_body(req)?;
    let mut form = Multipart::new(req.headers(), payload);
    let manifest = async {
        let next = form.next().await;
        read_text(expect_in(next, field::MANIFEST, ORDER)?, field::MANIFEST, MAX_MANIFEST_BYTES).await
    };
    let manifest = tokio::time::timeout(limits.head_timeout, manifest)
        .await
        .map_err(|_| ApiError::HeadTimeout(limits.head_timeout.as_secs()))??;
    Ok(Head { claimed, manifest, form })
}

/// One file of a verified batch: what its entry claims, or why it is
/// refused without being stored (its bytes are still read past).
#[derive(Debug)]
enum Entry {
    Claimed { head: UploadHead, declared: Sha256Digest, zstd: bool },
    Refused { path: String, error: ApiError },
}

/// Step 2: the signature covers the manifest as read, the timestamp is
/// fresh, and every entry has been judged.
pub struct VerifiedBatch {
    verified: Verified,
    entries: Vec<Entry>,
    /// The declared sizes summed.
    size: u64,
    form: Multipart,
}

// The multipart stream has no Debug of its own.
impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head").field("claimed", &self.claimed).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VerifiedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedBatch")
            .field("verified", &self.verified)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Head {
    pub fn verify(self, limits: &Limits, progress: &mut Progress) -> Result<VerifiedBatch, ApiError> {
        let verified = self.claimed.verify(Some(&SignedFields::body(self.manifest.as_bytes())))?;
        progress.verified = Some(verified.device().clone());
        let (entries, size) = judge_manifest(&self.manifest, limits).map_err(|error| verified.refuse(error))?;
        progress.path = Some(format!("(a batch of {} files)", entries.len()));
        progress.size = Some(size);
        Ok(VerifiedBatch { verified, entries, size, form: self.form })
    }
}

/// A batch that breaks the batch rules is refused whole: a sender that
/// follows them never sends one. An entry larger than the receiver's
/// `--max-file-size` is refused alone, as a single upload of it would be.
fn judge_manifest(text: &str, limits: &Limits) -> Result<(Vec<Entry>, u64), ApiError> {
    let manifest: BatchManifest = serde_json::from_str(text)
        .map_err(|e| ApiError::MalformedUpload(format!("the batch manifest is not valid: {e}")))?;
    if manifest.files.is_empty() || manifest.files.len() > BATCH_MAX_FILES {
        return Err(ApiError::MalformedUpload(format!(
            "a batch carries 1 to {BATCH_MAX_FILES} files, not {}",
            manifest.files.len()
        )));
    }
    let size = manifest.files.iter().map(|entry| entry.size).fold(0u64, u64::saturating_add);
    if size > BATCH_MAX_BYTES {
        return Err(ApiError::MalformedUpload(format!(
            "a batch carries at most {BATCH_MAX_BYTES} bytes of files, not {size}; send larger files alone"
        )));
    }
    let mut entries = Vec::with_capacity(manifest.files.len());
    for entry in manifest.files {
        if entry.size > BATCH_FILE_MAX {
            return Err(ApiError::MalformedUpload(format!(
                "{:?} is {} bytes; files over {BATCH_FILE_MAX} bytes travel alone, not in a batch",
                entry.path, entry.size
            )));
        }
        let zstd = match entry.encoding {
            None => false,
            Some(Encoding::Zstd) => true,
            Some(Encoding::Unknown) => return Err(ApiError::UnknownEncoding("an unknown encoding".to_owned())),
        };
        let fields = SignedFields { path: entry.path.clone(), sha256: entry.sha256, size: entry.size.to_string() };
        entries.push(match judge(fields, limits) {
            Ok(UploadHead { sha256: HeadDigest::Known(declared), path, size }) => {
                Entry::Claimed { head: UploadHead { path, sha256: HeadDigest::Known(declared), size }, declared, zstd }
            }
            Ok(UploadHead { sha256: HeadDigest::Trailer, .. }) => {
                return Err(ApiError::MalformedUpload(
                    "a batch entry's sha256 must be 64 hexadecimal characters: a batch has no trailers".to_owned(),
                ));
            }
            Err(error @ ApiError::TooLarge { .. }) => Entry::Refused { path: entry.path, error },
            Err(error) => return Err(error),
        });
    }
    Ok((entries, size))
}

/// Step 3: a verified batch holding one upload slot for all its files.
#[derive(Debug)]
pub struct Slotted {
    batch: VerifiedBatch,
    slot: Slot,
}

impl VerifiedBatch {
    pub async fn take_slot(self, slots: &UploadSlots) -> Result<Slotted, ApiError> {
        match slots.take(self.verified.device().key.key_id()).await {
            Ok(slot) => Ok(Slotted { batch: self, slot }),
            Err(error) => Err(self.verified.refuse(error)),
        }
    }
}

/// What became of one file once its bytes were in: verified and held, or
/// refused.
#[derive(Debug)]
enum Arrived {
    Held(HeldFile),
    Refused { path: String, error: ApiError },
}

/// Step 4: every file's bytes are in memory and checked, and the body
/// ended cleanly after the last.
#[derive(Debug)]
pub struct Received {
    verified: Verified,
    arrived: Vec<Arrived>,
    _slot: Slot,
}

impl Slotted {
    /// Reads each file part in the manifest's order, decoding and hashing
    /// it, each bounded by its declared size. A file whose bytes are wrong
    /// is refused alone; a body that does not end cleanly refuses them all.
    pub async fn receive(self, limits: &Limits) -> Result<Received, ApiError> {
        let Self { batch: VerifiedBatch { verified, entries, size, mut form }, slot } = self;
        let pace = Pace::new(limits, size);
        match receive_all(entries, &pace, &mut form).await {
            Ok(arrived) => Ok(Received { verified, arrived, _slot: slot }),
            Err(error) => Err(verified.refuse(error)),
        }
    }
}

async fn receive_all(entries: Vec<Entry>, pace: &Pace<'_>, form: &mut Multipart) -> Result<Vec<Arrived>, ApiError> {
    let mut arrived = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut part = expect_in(pace.next(form).await?, field::FILE, ORDER)?;
        let (head, declared, zstd) = match entry {
            Entry::Claimed { head, declared, zstd } => (head, declared, zstd),
            Entry::Refused { path, error } => {
                let mut raw = 0;
                while next_chunk(pace, &mut part, &mut raw).await?.is_some() {}
                arrived.push(Arrived::Refused { path, error });
                continue;
            }
        };
        let mut file =
            HeldBytes { declared: head.size, hasher: Sha256Hasher::default(), bytes: Vec::new(), excess: false };
        let mut decoder = zstd.then(ZstdDecoder::new).transpose()?;
        let (mut corrupt, mut raw) = (None, 0);
        while let Some(chunk) = next_chunk(pace, &mut part, &mut raw).await? {
            match (&mut decoder, &corrupt) {
                (None, _) => file.keep(chunk),
                // Past the declared size nothing more is decoded: a bomb
                // costs one piece too many.
                (Some(decoder), None) if !file.excess => {
                    let mut input = InBuffer::around(&chunk);
                    loop {
                        match decoder.next_piece(&mut input) {
                            Ok(Some(piece)) => file.keep(piece),
                            Ok(None) => break,
                            Err(error) => {
                                corrupt = Some(error);
                                break;
                            }
                        }
                    }
                }
                // The rest of a part that cannot be decoded, or is too
                // long already, is read past.
                (Some(_), _) => {}
            }
        }
        if corrupt.is_none() && decoder.as_ref().is_some_and(|decoder| !decoder.at_frame_end) {
            corrupt = Some(ApiError::CorruptEncoding("the zstd data ends in the middle of a frame".to_owned()));
        }
        let path = head.path.to_string();
        arrived.push(match corrupt.map_or_else(|| file.check(&head, declared), Err) {
            Ok(held) => Arrived::Held(held),
            Err(error) => Arrived::Refused { path, error },
        });
    }
    match pace.next(form).await? {
        None => Ok(arrived),
        Some(Ok(extra)) => Err(ApiError::MalformedUpload(format!(
            "unexpected field {:?} after the last file of the batch; fields must be {ORDER}",
            extra.name().unwrap_or_default()
        ))),
        Some(Err(e)) => Err(malformed(e)),
    }
}

/// The next chunk of a file part, counted in `raw`: a part longer than any
/// file of a batch (or its compression) can be refuses the whole batch, so
/// that reading past a refused file is bounded too.
async fn next_chunk(
    pace: &Pace<'_>,
    part: &mut actix_multipart::Field,
    raw: &mut u64,
) -> Result<Option<Bytes>, ApiError> {
    let Some(chunk) = pace.next(part).await? else { return Ok(None) };
    let chunk = chunk.map_err(malformed)?;
    *raw += chunk.len() as u64;
    if *raw > MAX_PART_BYTES {
        return Err(ApiError::MalformedUpload(format!(
            "a file part of a batch is longer than {MAX_PART_BYTES} bytes; files over {BATCH_FILE_MAX} bytes travel alone"
        )));
    }
    Ok(Some(chunk))
}

/// One file's bytes as they arrive: kept up to its declared size, counted
/// beyond it (and then dropped) so the mismatch can be told.
struct HeldBytes {
    declared: u64,
    hasher: Sha256Hasher,
    bytes: Vec<Bytes>,
    excess: bool,
}

impl HeldBytes {
    fn keep(&mut self, piece: Bytes) {
        self.hasher.update(&piece);
        if self.hasher.bytes_hashed() > self.declared {
            self.excess = true;
            self.bytes.clear();
        } else {
            self.bytes.push(piece);
        }
    }

    fn check(self, head: &UploadHead, declared: Sha256Digest) -> Result<HeldFile, ApiError> {
        if self.excess {
            return Err(ApiError::SizeMismatch {
                declared: self.declared,
                received_at_least: self.hasher.bytes_hashed(),
            });
        }
        Ok(HeldFile { checked: check_received(head, declared, self.hasher)?, bytes: self.bytes })
    }
}

/// One file's outcome, for the handler to log, count and record.
#[derive(Debug)]
pub enum FileOutcome {
    /// `path` as the device sent it.
    Delivered {
        path: String,
        receipt: UploadReceipt,
    },
    Refused {
        path: String,
        error: ApiError,
    },
}

/// Step 5: every file that verified is durably in the store, and the
/// signed answer lists each file's outcome.
#[derive(Debug)]
pub struct Committed {
    pub verified: Verified,
    pub outcomes: Vec<FileOutcome>,
}

impl Received {
    pub async fn commit<S: Store>(self, store: &S) -> Result<Committed, ApiError> {
        let Self { verified, arrived, _slot } = self;
        let mut held = Vec::new();
        let waiting: Vec<_> = arrived
            .into_iter()
            .map(|file| match file {
                Arrived::Held(file) => {
                    let claim = file.checked.claim();
                    let waiting =
                        Waiting::Committing { path: claim.path.to_string(), size: claim.size, digest: claim.sha256 };
                    held.push(file);
                    waiting
                }
                Arrived::Refused { path, error } => Waiting::Refused { path, error },
            })
            .collect();
        let mut committed = match store.commit_held(&verified.device().id, held).await {
            Ok(committed) => committed.into_iter(),
            Err(error) => return Err(verified.refuse(error.into())),
        };
        let outcomes = waiting
            .into_iter()
            .map(|file| match file {
                Waiting::Committing { path, size, digest } => match committed.next() {
                    Some(Ok(done)) => FileOutcome::Delivered {
                        path,
                        receipt: UploadReceipt {
                            outcome: done.outcome,
                            stored_as: done.stored_as.to_string(),
                            sha256: digest,
                            size,
                        },
                    },
                    Some(Err(error)) => FileOutcome::Refused { path, error: error.into() },
                    None => FileOutcome::Refused {
                        path,
                        error: ApiError::Storage(std::io::Error::other("the store gave no result for this file")),
                    },
                },
                Waiting::Refused { path, error } => FileOutcome::Refused { path, error },
            })
            .collect();
        Ok(Committed { verified, outcomes })
    }
}

/// A file while the held ones are committed.
enum Waiting {
    Committing { path: String, size: u64, digest: Sha256Digest },
    Refused { path: String, error: ApiError },
}

impl Committed {
    /// The answer's body: a receipt or the refusal's body for each file.
    pub fn receipt(&self) -> BatchReceipt {
        BatchReceipt {
            results: self
                .outcomes
                .iter()
                .map(|outcome| match outcome {
                    FileOutcome::Delivered { receipt, .. } => BatchResult::Delivered(receipt.clone()),
                    FileOutcome::Refused { error, .. } => BatchResult::Refused(BatchRefusal {
                        status: actix_web::ResponseError::status_code(error).as_u16(),
                        body: error.body(),
                    }),
                })
                .collect(),
        }
    }
}
