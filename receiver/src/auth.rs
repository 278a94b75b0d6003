//! Checking a request's signature against the ids file, and signing the
//! answers to requests that passed.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, ContentType, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use logferry_common::Sha256Digest;
use logferry_common::signing::{
    AuthHeader, AuthHeaderError, Freshness, RECEIPT_HEADER, SignedFields, SignedRequest, freshness, receipt,
    verify_trailer,
};
use serde::Serialize;

use crate::error::ApiError;
use crate::ids::{Device, IdsFile};

/// A request whose key id is listed, but whose signature has not been
/// checked yet: for uploads, that needs the declared fields from the body.
/// Nothing scarce may be spent on it.
#[derive(Debug)]
pub struct Claimed {
    device: Device,
    header: AuthHeader,
    method: String,
    endpoint: &'static str,
}

/// First step, before any body is read: a missing or garbled header, or an
/// unknown key, is refused at once. `endpoint` is the path the request was
/// routed to, as PROTOCOL.md spells it: that is what the device signed,
/// whatever percent-encoding the request line used.
pub fn claim(req: &HttpRequest, endpoint: &'static str, ids: &IdsFile) -> Result<Claimed, ApiError> {
    let value = req.headers().get(AUTHORIZATION).ok_or(ApiError::MissingAuth)?;
    let header: AuthHeader =
        value.to_str().map_err(|_| ApiError::MalformedAuth(AuthHeaderError::WrongScheme))?.parse()?;
    let device = ids.current().get(&header.key_id).cloned().ok_or(ApiError::UnknownDevice)?;
    Ok(Claimed { device, header, method: req.method().as_str().to_owned(), endpoint })
}

impl Claimed {
    /// The first eight characters of the key id the request named, for logs.
    pub fn key_short(&self) -> &str {
        self.header.key_id.short()
    }

    /// Second step: the signature over the request line and, for uploads,
    /// the declared fields exactly as they were read; then the timestamp.
    /// A stale timestamp is refused only after the signature checked out,
    /// so that refusal is signed: the device can trust what it says about
    /// the receiver's clock (its body carries `receiver_time`).
    pub fn verify(self, fields: Option<&SignedFields>) -> Result<Verified, ApiError> {
        let signed = SignedRequest {
            method: &self.method,
            path: self.endpoint,
            timestamp: self.header.timestamp,
            clock_offset: self.header.clock_offset,
            fields,
        };
        if !signed.verify(&self.device.key, &self.header.signature) {
            return Err(ApiError::BadSignature);
        }
        let receiver_time = unix_now();
        // A signed timestamp may be up to 20 digits, beyond i64.
        let skew = i64::try_from(i128::from(self.header.timestamp) - i128::from(receiver_time)).unwrap_or(i64::MAX);
        let verified = Verified {
            signer: Signer { device: self.device, request_signature: self.header.signature },
            clock_offset: skew.saturating_add(self.header.clock_offset),
        };
        match freshness(self.header.timestamp, receiver_time) {
            Freshness::Fresh => Ok(verified),
            Freshness::Ahead(_) | Freshness::Behind(_) => {
                Err(verified.refuse(ApiError::ClockSkew { offset: skew, receiver_time }))
            }
        }
    }
}

/// A request whose signature checked out: whatever is answered to it is
/// signed, refusals included, so that nobody in the path can make a device
/// believe the receiver refused a file.
#[derive(Debug)]
pub struct Verified {
    signer: Signer,
    clock_offset: i64,
}

impl Verified {
    pub fn device(&self) -> &Device {
        &self.signer.device
    }

    /// The device's own clock less the receiver's: the request's timestamp
    /// less the receiver's clock, plus the offset the device signed it says
    /// it corrected by (`ClockOffset`).
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset
    }

    /// A JSON answer carrying a receipt that proves to the device that this
    /// receiver knows its key (see `signing::receipt`).
    pub fn answer(&self, status: StatusCode, body: &impl Serialize) -> HttpResponse {
        self.signer.signed(status, body, None)
    }

    /// Whether `tag` signs `sha256` as the digest sent after this request's
    /// file (see `signing::trailer_signature`).
    pub fn signs_trailer(&self, sha256: &Sha256Digest, tag: &str) -> bool {
        verify_trailer(&self.signer.device.key, &self.signer.request_signature, sha256, tag)
    }

    /// A refusal of this request, to be answered signed.
    pub fn refuse(&self, error: ApiError) -> ApiError {
        ApiError::Signed { error: Box::new(error), signer: Box::new(self.signer.clone()) }
    }
}

/// What signs the answers to a verified request: its device's key and the
/// request's own signature, to which every receipt is bound.
#[derive(Debug, Clone)]
pub struct Signer {
    device: Device,
    request_signature: [u8; 32],
}

impl Signer {
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The error answer for `error`, signed like any other answer.
    pub fn refusal(&self, error: &ApiError) -> HttpResponse {
        self.signed(error.status_code(), &error.body(), error.retry_after())
    }

    fn signed(&self, status: StatusCode, body: &impl Serialize, retry_after: Option<u64>) -> HttpResponse {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let tag = receipt(&self.device.key, status.as_u16(), &self.request_signature, &bytes);
        let mut response = HttpResponse::build(status);
        if let Some(seconds) = retry_after {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.insert_header((RECEIPT_HEADER, tag)).content_type(ContentType::json()).body(bytes)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
