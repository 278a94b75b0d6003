//! Checking a request's signature against the ids file.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, ContentType};
use actix_web::{HttpRequest, HttpResponse};
use logferry_common::signing::{AuthHeader, Freshness, RECEIPT_HEADER, SignedRequest, UploadClaim, freshness, receipt};
use serde::Serialize;

use crate::client_addr::{TrustedProxies, client_ip};
use crate::error::ApiError;
use crate::ids::{Device, IdsFile};
use crate::limits::AuthThrottle;

/// A request whose key is known and whose timestamp is fresh, but whose
/// signature has not been checked yet: for uploads, that needs the declared
/// fields from the body.
#[derive(Debug)]
pub struct Claimed {
    pub device: Device,
    header: AuthHeader,
    method: String,
    path: String,
}

/// First step, before any body is read: an address that failed too often,
/// a missing, garbled or stale header, or an unknown key, is refused at once.
pub fn claim(
    req: &HttpRequest,
    ids: &IdsFile,
    throttle: &AuthThrottle,
    proxies: &TrustedProxies,
) -> Result<Claimed, ApiError> {
    throttle.check(client_ip(req, proxies), Instant::now())?;
    let value = req.headers().get(AUTHORIZATION).ok_or(ApiError::MissingAuth)?;
    let header: AuthHeader = value
        .to_str()
        .map_err(|_| ApiError::MalformedAuth(logferry_common::signing::AuthHeaderError::WrongScheme))?
        .parse()?;
    let device = ids.current().get(&header.key_id).cloned().ok_or(ApiError::UnknownDevice)?;
    match freshness(header.timestamp, unix_now()) {
        Freshness::Fresh => {}
        Freshness::Ahead(seconds) => return Err(ApiError::ClockSkew { seconds, direction: "ahead of" }),
        Freshness::Behind(seconds) => return Err(ApiError::ClockSkew { seconds, direction: "behind" }),
    }
    Ok(Claimed { device, header, method: req.method().as_str().to_owned(), path: req.path().to_owned() })
}

impl Claimed {
    /// Second step: the signature over the request line and, for uploads,
    /// the declared path, checksum and size.
    pub fn verify(self, upload: Option<&UploadClaim>) -> Result<Verified, ApiError> {
        let signed = SignedRequest { method: &self.method, path: &self.path, timestamp: self.header.timestamp, upload };
        if signed.verify(&self.device.id, &self.header.signature) {
            Ok(Verified { device: self.device, request_signature: self.header.signature })
        } else {
            Err(ApiError::BadSignature)
        }
    }
}

/// A request whose signature checked out.
#[derive(Debug)]
pub struct Verified {
    pub device: Device,
    request_signature: [u8; 32],
}

impl Verified {
    /// A JSON answer carrying a receipt that proves to the device that this
    /// receiver knows its ID (see `signing::receipt`).
    pub fn answer(&self, status: StatusCode, body: &impl Serialize) -> HttpResponse {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let tag = receipt(&self.device.id, &self.request_signature, &bytes);
        HttpResponse::build(status).insert_header((RECEIPT_HEADER, tag)).content_type(ContentType::json()).body(bytes)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
