//! Endpoints, field names and JSON bodies of the protocol.

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;

/// The receiver's port unless told otherwise, as in the tool logferry replaces.
pub const DEFAULT_PORT: u16 = 3500;

/// The protocol version PROTOCOL.md describes; the health check reports it.
/// Version 2 derived keys with Argon2id and signed every answer's status.
pub const PROTOCOL_VERSION: u32 = 2;

/// Endpoint paths. These are also what requests sign.
pub mod endpoint {
    /// `GET`, unauthenticated: is the receiver up?
    pub const HEALTH: &str = "/v1/health";
    /// `GET`, signed, no body: does the receiver accept this device?
    pub const AUTH_CHECK: &str = "/v1/auth-check";
    /// `POST`, signed, `multipart/form-data`: one file.
    pub const UPLOAD: &str = "/v1/upload";
    /// `POST`, signed, `multipart/form-data` with an upload's head only: how
    /// many of the file's bytes the receiver already holds from a cut-off
    /// upload of it, so that the next one continues from there.
    pub const UPLOAD_OFFSET: &str = "/v1/upload/offset";
    /// `POST`, signed: several small files in one request, their manifest
    /// first ([`BatchManifest`](super::BatchManifest)), then each file's
    /// bytes as a `file` part, in the manifest's order.
    pub const UPLOAD_BATCH: &str = "/v1/upload/batch";
    /// `POST`, signed, JSON [`ManifestRequest`](crate::update::ManifestRequest):
    /// which release is published for this device.
    pub const UPDATE_MANIFEST: &str = "/v1/update/manifest";
    /// `GET UPDATE_CONTENT/<sha256>`, signed with that SHA-256: the bytes of
    /// a file the device's release lists, from an optional `Range:
    /// bytes=N-`. The signed path is this prefix, without the hash.
    pub const UPDATE_CONTENT: &str = "/v1/update/content";
    /// `POST`, signed, JSON [`UpdateReport`](crate::update::UpdateReport):
    /// what the device made of a version.
    pub const UPDATE_REPORT: &str = "/v1/update/report";
    /// `GET`, unauthenticated, HTML: the fleet status page for people.
    pub const STATUS_PAGE: &str = "/";
    /// `GET`, unauthenticated, JSON: the fleet status for scripts.
    pub const DEVICES: &str = "/v1/devices";
    /// `GET`, unauthenticated: Prometheus metrics.
    pub const METRICS: &str = "/metrics";
}

/// Multipart field names of an upload, in the order they must appear.
pub mod field {
    pub const PATH: &str = "path";
    pub const SHA256: &str = "sha256";
    pub const SIZE: &str = "size";
    /// Optional: the file part starts at this byte of the file, continuing
    /// what the receiver holds (see [`UploadOffset`](super::UploadOffset)).
    pub const OFFSET: &str = "offset";
    /// Optional: the file part is compressed with this [`Encoding`](super::Encoding).
    pub const ENCODING: &str = "encoding";
    /// Last of the head and body fields, so the receiver knows what to
    /// expect before the first byte.
    pub const FILE: &str = "file";
    /// After the file, only when the head's `sha256` is
    /// [`TRAILER`](crate::signing::TRAILER): the file's SHA-256 (named as in
    /// the head), then this, its signature.
    pub const SIGNATURE: &str = "signature";
    pub const ORDER: [&str; 6] = [PATH, SHA256, SIZE, OFFSET, ENCODING, FILE];
    /// First field of a batch: its [`BatchManifest`](super::BatchManifest)
    /// as JSON, whose SHA-256 and length are signed.
    pub const MANIFEST: &str = "manifest";
}

/// Files up to this size may travel in a batch: one compression block
/// each, held whole in memory on both sides.
pub const BATCH_FILE_MAX: u64 = 128 * 1024;
/// Most files in one batch.
pub const BATCH_MAX_FILES: usize = 64;
/// Most bytes (the files' declared sizes summed) in one batch: what the
/// receiver holds in memory for it.
pub const BATCH_MAX_BYTES: u64 = 1 << 20;

/// What a batch declares, signed as a whole (its SHA-256 and length, like a
/// JSON request body), before any file's bytes are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchManifest {
    pub files: Vec<BatchEntry>,
}

/// One file of a batch, as an upload's head declares one: the fields as
/// text, judged by the receiver by the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// The file part's encoding; absent: the bytes as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
}

/// Body of the 200 answer to a batch: one result per manifest entry, in
/// its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReceipt {
    pub results: Vec<BatchResult>,
}

/// What became of one file of a batch: a receipt as a single upload's, or
/// the refusal a single upload would have had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchResult {
    Delivered(UploadReceipt),
    Refused(BatchRefusal),
}

/// A batch's file refused alone: the status a single upload of it would
/// have been answered with, and that answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRefusal {
    pub status: u16,
    #[serde(flatten)]
    pub body: ErrorBody,
}

/// Files at least this big are resumable: a receiver that offers resuming
/// keeps what arrived of a cut-off upload of one, and a sender asks for
/// that offset before sending one. Below it, starting over costs less
/// than the round trip of asking.
pub const RESUMABLE_MIN_SIZE: u64 = 1 << 20;

/// A compression of the file part that a receiver may accept. The size and
/// SHA-256 an upload declares are always those of the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Zstandard (RFC 8878): one or more frames that decode to the bytes.
    Zstd,
    /// An encoding from a newer receiver that this build does not know.
    #[serde(other)]
    Unknown,
}

impl Encoding {
    /// The text of the `encoding` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Unknown => "unknown",
        }
    }
}

/// Whether an upload made a new copy or found the same bytes already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Stored now (HTTP 201).
    Stored,
    /// The same content was already stored under this path (HTTP 200).
    AlreadyStored,
}

impl UploadOutcome {
    /// The outcome as it appears on the wire (`already_stored`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyStored => "already_stored",
        }
    }
}

/// Body of a 2xx answer to an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    pub outcome: UploadOutcome,
    /// Where the file is, relative to the device's folder. Differs from the
    /// uploaded path when that path already held other content.
    pub stored_as: String,
    /// The SHA-256 the receiver computed over the bytes it stored.
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// Body of a 2xx answer to an auth check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthCheckReply {
    /// The label given to this device in the receiver's ids file, if any.
    pub label: Option<String>,
    /// Encodings the receiver decodes in uploads; none from a receiver that
    /// predates compression, so a sender then sends files as they are.
    #[serde(default)]
    pub encodings: Vec<Encoding>,
    /// Whether the receiver keeps cut-off uploads of resumable files (at
    /// least [`RESUMABLE_MIN_SIZE`]) and answers `UPLOAD_OFFSET`.
    #[serde(default)]
    pub resume: bool,
    /// Whether an upload may send its file's SHA-256 after the file, in a
    /// signed trailer, so that a sender reads each file once; a receiver
    /// without it wants the digest in the head.
    #[serde(default)]
    pub digest_after: bool,
    /// Whether the receiver takes small files in batches (`UPLOAD_BATCH`).
    #[serde(default)]
    pub batch: bool,
}

/// Body of a 2xx answer to an offset query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadOffset {
    /// How many bytes from the start of the file the receiver holds; an
    /// upload with this `offset` sends the rest.
    pub offset: u64,
}

/// Body of a health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// The receiver's release.
    pub version: String,
    /// [`PROTOCOL_VERSION`] of the receiver.
    pub protocol: u32,
}

/// Body of every answer that is not 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence for the person reading the log.
    pub error: String,
    pub code: ErrorCode,
    /// The receiver's clock (Unix seconds) when it answered; only in a
    /// `clock_skew` refusal, which is signed, so a device can trust it
    /// enough to try a request stamped with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_time: Option<u64>,
}

/// Machine-readable reason of a failure; see PROTOCOL.md for each status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MissingAuth,
    MalformedAuth,
    UnknownDevice,
    BadSignature,
    ClockSkew,
    InvalidPath,
    MalformedUpload,
    SizeMismatch,
    ChecksumMismatch,
    PathConflict,
    /// The `offset` is beyond what the receiver holds of the file; ask again.
    OffsetMismatch,
    /// A published file changed after its release's manifest was made;
    /// poll again for the new release.
    ContentChanged,
    /// A `Range` starts beyond the end of the content.
    RangeNotSatisfiable,
    /// The file is larger than the receiver accepts.
    TooLarge,
    /// The receiver is at its limit of concurrent uploads; retry later.
    Busy,
    /// Too many failed authentications from this address; retry later.
    RateLimited,
    /// The request was too slow to arrive.
    Timeout,
    /// The body has a `Content-Encoding` the receiver does not decode.
    UnsupportedEncoding,
    /// The receiver's disk is full or below its free-space reserve.
    InsufficientStorage,
    NotFound,
    MethodNotAllowed,
    StorageError,
    /// A code from a newer receiver that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire (`checksum_mismatch`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingAuth => "missing_auth",
            Self::MalformedAuth => "malformed_auth",
            Self::UnknownDevice => "unknown_device",
            Self::BadSignature => "bad_signature",
            Self::ClockSkew => "clock_skew",
            Self::InvalidPath => "invalid_path",
            Self::MalformedUpload => "malformed_upload",
            Self::SizeMismatch => "size_mismatch",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::PathConflict => "path_conflict",
            Self::OffsetMismatch => "offset_mismatch",
            Self::ContentChanged => "content_changed",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::TooLarge => "too_large",
            Self::Busy => "busy",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::InsufficientStorage => "insufficient_storage",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::StorageError => "storage_error",
            Self::Unknown => "unknown",
        }
    }

    /// Whether this code means the device was not accepted, so nothing else
    /// it sends in this run can succeed either.
    pub fn is_auth_failure(self) -> bool {
        matches!(
            self,
            Self::MissingAuth | Self::MalformedAuth | Self::UnknownDevice | Self::BadSignature | Self::ClockSkew
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case_and_unknown_ones_do_not_break_old_clients() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":"x","code":"checksum_mismatch"}"#).expect("valid");
        assert_eq!(body.code, ErrorCode::ChecksumMismatch);
        let future: ErrorBody = serde_json::from_str(r#"{"error":"x","code":"quota_exceeded"}"#).expect("valid");
        assert_eq!(future.code, ErrorCode::Unknown);
        assert_eq!(serde_json::to_string(&ErrorCode::ClockSkew).expect("serializes"), r#""clock_skew""#);
        assert_eq!(body.receiver_time, None);
        let skew = ErrorBody { error: "x".into(), code: ErrorCode::ClockSkew, receiver_time: Some(5) };
        assert_eq!(
            serde_json::to_string(&skew).expect("serializes"),
            r#"{"error":"x","code":"clock_skew","receiver_time":5}"#
        );
        assert!(!serde_json::to_string(&body).expect("serializes").contains("receiver_time"));
    }

    /// `as_str` is what serde writes, for every code and outcome.
    #[test]
    fn wire_names_are_the_serialized_ones() {
        use ErrorCode::*;
        let codes = [
            MissingAuth,
            MalformedAuth,
            UnknownDevice,
            BadSignature,
            ClockSkew,
            InvalidPath,
            MalformedUpload,
            SizeMismatch,
            ChecksumMismatch,
            PathConflict,
            OffsetMismatch,
            ContentChanged,
            RangeNotSatisfiable,
            TooLarge,
            Busy,
            RateLimited,
            Timeout,
            UnsupportedEncoding,
            InsufficientStorage,
            NotFound,
            MethodNotAllowed,
            StorageError,
            Unknown,
        ];
        let serialized = |value: serde_json::Value| value.as_str().map(str::to_owned);
        for code in codes {
            assert_eq!(serialized(serde_json::json!(code)).as_deref(), Some(code.as_str()), "{code:?}");
        }
        for outcome in [UploadOutcome::Stored, UploadOutcome::AlreadyStored] {
            assert_eq!(serialized(serde_json::json!(outcome)).as_deref(), Some(outcome.as_str()), "{outcome:?}");
        }
    }

    #[test]
    fn a_receiver_that_predates_compression_resuming_and_trailers_is_offered_none() {
        let old: AuthCheckReply = serde_json::from_str(r#"{"label":null}"#).expect("valid");
        assert_eq!(
            old,
            AuthCheckReply { label: None, encodings: Vec::new(), resume: false, digest_after: false, batch: false }
        );
        let newer: AuthCheckReply =
            serde_json::from_str(r#"{"label":"x","encodings":["br","zstd"],"resume":true}"#).expect("valid");
        assert_eq!(newer.encodings, [Encoding::Unknown, Encoding::Zstd]);
    }
}
