//! Checking a request's signature against the ids file.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use logferry_common::signing::{AuthHeader, Freshness, SignedRequest, UploadClaim, freshness};

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
pub fn claim(req: &HttpRequest, ids: &IdsFile, throttle: &AuthThrottle) -> Result<Claimed, ApiError> {
    throttle.check(req.peer_addr().map(|a| a.ip()), Instant::now())?;
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
    pub fn verify(self, upload: Option<&UploadClaim>) -> Result<Device, ApiError> {
        let signed = SignedRequest { method: &self.method, path: &self.path, timestamp: self.header.timestamp, upload };
        if signed.verify(&self.device.id, &self.header.signature) {
            Ok(self.device)
        } else {
            Err(ApiError::BadSignature)
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
