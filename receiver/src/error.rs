//! Every way a request can fail, and the HTTP status each one maps to.

use actix_web::http::StatusCode;
use actix_web::http::header::RETRY_AFTER;
use actix_web::{HttpResponse, ResponseError};
use logferry_common::signing::{AuthHeaderError, MAX_CLOCK_SKEW_SECS};
use logferry_common::wire::{ErrorBody, ErrorCode};
use logferry_common::{PathError, Sha256Digest};

use crate::auth::Signer;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal of a verified request, answered with a receipt.
    #[error("{error}")]
    Signed { error: Box<ApiError>, signer: Box<Signer> },
    #[error("the request is not signed: it needs an Authorization header")]
    MissingAuth,
    #[error(transparent)]
    MalformedAuth(#[from] AuthHeaderError),
    #[error(
        "no device with this key is listed in the receiver's ids file; add it there, or check the device's ID file"
    )]
    UnknownDevice,
    #[error("the request signature does not match; the request was altered, or was signed for another request")]
    BadSignature,
    #[error("the signature of the digest after the file does not match; the upload was altered on the way")]
    BadTrailer,
    #[error(
        "the request's timestamp is {} s {} the receiver's clock (at most {MAX_CLOCK_SKEW_SECS} s is allowed); \
         set the device's clock (NTP), or sign with receiver_time",
        offset.unsigned_abs(), if *offset > 0 { "ahead of" } else { "behind" }
    )]
    ClockSkew {
        /// The request's timestamp less the receiver's clock.
        offset: i64,
        /// The receiver's clock, Unix seconds.
        receiver_time: u64,
    },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: PathError },
    #[error("malformed upload: {0}")]
    MalformedUpload(String),
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    #[error("the upload declared {declared} bytes but carried {received_at_least}{more}", more = if *.received_at_least > *.declared { " or more" } else { "" })]
    SizeMismatch { declared: u64, received_at_least: u64 },
    #[error("checksum mismatch: the upload declared SHA-256 {declared} but the received bytes hash to {received}")]
    ChecksumMismatch { declared: Sha256Digest, received: Sha256Digest },
    #[error("{0}")]
    PathConflict(String),
    #[error("the file is {declared} bytes; this receiver accepts at most {max} (its --max-file-size)")]
    TooLarge { declared: u64, max: u64 },
    #[error("the receiver is busy: {what}; retry in {retry_after} s")]
    Busy { what: &'static str, retry_after: u64 },
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the request was too slow: {0}")]
    Timeout(String),
    #[error(
        "the request's signed head (its headers, and an upload's path, sha256 and size fields or an update \
         request's JSON body) did not arrive within {0} s (the receiver's --head-timeout)"
    )]
    HeadTimeout(u64),
    #[error(
        "the request body is sent with Content-Encoding {0:?}; this receiver takes the body unencoded \
         (the file part may be compressed, see the encoding field)"
    )]
    UnsupportedEncoding(String),
    #[error("the file part cannot be decoded: {0}")]
    CorruptEncoding(String),
    #[error("the file part is encoded as {0:?}; this receiver decodes only \"zstd\"")]
    UnknownEncoding(String),
    #[error(
        "the upload continues from byte {offset}, but the receiver holds only {held} bytes of this file; \
         ask for the offset again"
    )]
    OffsetMismatch { offset: u64, held: u64 },
    #[error("no such endpoint; see PROTOCOL.md")]
    NotFound,
    #[error("no file with SHA-256 {0} is in this device's release; a device fetches only what its own manifest lists")]
    NotInRelease(Sha256Digest),
    #[error("{0}")]
    ContentChanged(String),
    #[error("the range starts at byte {start}, but the content is {size} bytes")]
    RangeNotSatisfiable { start: u64, size: u64 },
    #[error("this endpoint does not accept that method; see PROTOCOL.md")]
    MethodNotAllowed,
    #[error("the receiver could not store the file: {0}")]
    Storage(std::io::Error),
    #[error("the receiver has no room for the file: {0}")]
    InsufficientStorage(String),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Signed { error, .. } => error.code(),
            Self::MissingAuth => ErrorCode::MissingAuth,
            Self::MalformedAuth(_) => ErrorCode::MalformedAuth,
            Self::UnknownDevice => ErrorCode::UnknownDevice,
            Self::BadSignature | Self::BadTrailer => ErrorCode::BadSignature,
            Self::ClockSkew { .. } => ErrorCode::ClockSkew,
            Self::InvalidPath { .. } => ErrorCode::InvalidPath,
            Self::MalformedUpload(_) | Self::MalformedRequest(_) | Self::CorruptEncoding(_) => {
                ErrorCode::MalformedUpload
            }
            Self::SizeMismatch { .. } => ErrorCode::SizeMismatch,
            Self::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            Self::PathConflict(_) => ErrorCode::PathConflict,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Timeout(_) | Self::HeadTimeout(_) => ErrorCode::Timeout,
            Self::UnsupportedEncoding(_) | Self::UnknownEncoding(_) => ErrorCode::UnsupportedEncoding,
            Self::OffsetMismatch { .. } => ErrorCode::OffsetMismatch,
            Self::NotFound | Self::NotInRelease(_) => ErrorCode::NotFound,
            Self::ContentChanged(_) => ErrorCode::ContentChanged,
            Self::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Storage(_) => ErrorCode::StorageError,
            Self::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
        }
    }

    /// Whether this counts against the client's address in the throttle,
    /// as a failed authentication: every refusal of a request that did not
    /// prove who sent it (a missing, malformed or wrong signature, a head
    /// that ran past its deadline, was cut off or could not be read), so
    /// that a client cannot hold connections or fill the log without being
    /// counted; and a verified request with a stale timestamp.
    pub fn counts_against_client(&self) -> bool {
        match self {
            Self::Signed { error, .. } => error.code().is_auth_failure(),
            _ => true,
        }
    }

    /// Whether the bytes that arrived are wrong, not merely incomplete: what
    /// the receiver holds of such an upload is not worth continuing.
    pub fn is_bad_data(&self) -> bool {
        match self {
            Self::Signed { error, .. } => error.is_bad_data(),
            // A forged trailer may come with forged bytes.
            Self::SizeMismatch { .. } | Self::ChecksumMismatch { .. } | Self::CorruptEncoding(_) | Self::BadTrailer => {
                true
            }
            _ => false,
        }
    }

    /// Seconds the client is asked to wait before trying again.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Signed { error, .. } => error.retry_after(),
            Self::Busy { retry_after, .. } | Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The receiver's clock, told to a device whose timestamp was stale.
    pub fn receiver_time(&self) -> Option<u64> {
        match self {
            Self::Signed { error, .. } => error.receiver_time(),
            Self::ClockSkew { receiver_time, .. } => Some(*receiver_time),
            _ => None,
        }
    }

    /// The verified device a refusal was for, if it was signed.
    pub fn signer(&self) -> Option<&Signer> {
        match self {
            Self::Signed { signer, .. } => Some(signer),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => Self::PathConflict(message),
            StoreError::Full(message) => Self::InsufficientStorage(message),
            StoreError::Raced(what) => Self::Busy { what, retry_after: 1 },
            StoreError::DigestFirst => Self::MalformedUpload(err.to_string()),
            StoreError::OffsetBeyond { offset, held } => Self::OffsetMismatch { offset, held },
            // Until the receiver notices the other connection is gone: at
            // most its idle timeout.
            StoreError::PartialInUse => {
                Self::Busy { what: "another upload of this file is still arriving", retry_after: 5 }
            }
            StoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                Self::InsufficientStorage("its disk is full".to_owned())
            }
            StoreError::Io(io) => Self::Storage(io),
        }
    }
}

impl ApiError {
    /// The JSON body of this error's answer.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: self.to_string(), code: self.code(), receiver_time: self.receiver_time() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self.code() {
            ErrorCode::MissingAuth
            | ErrorCode::MalformedAuth
            | ErrorCode::UnknownDevice
            | ErrorCode::BadSignature
            | ErrorCode::ClockSkew => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidPath | ErrorCode::MalformedUpload => StatusCode::BAD_REQUEST,
            ErrorCode::SizeMismatch | ErrorCode::ChecksumMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PathConflict | ErrorCode::OffsetMismatch | ErrorCode::ContentChanged => StatusCode::CONFLICT,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::StorageError | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Refusals of verified requests are signed; the rest cannot be, as
    /// whoever sent them has proven nothing the answer could be bound to.
    fn error_response(&self) -> HttpResponse {
        if let Self::Signed { error, signer } = self {
            return signer.refusal(error);
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after() {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.json(self.body())
    }
}
