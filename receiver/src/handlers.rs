//! The endpoints.

use std::time::Instant;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use logferry_common::signing::UploadClaim;
use logferry_common::wire::{AuthCheckReply, Health, UploadOutcome, UploadReceipt, field};
use logferry_common::{RelPath, Sha256Hasher};

use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;
use crate::store::{Staged, Store};

/// Longest accepted value of a text field (path, checksum, size).
const MAX_TEXT_FIELD_BYTES: usize = 4096;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

pub async fn auth_check<S: Store>(req: HttpRequest, state: web::Data<AppState<S>>) -> Result<HttpResponse, ApiError> {
    let outcome = auth::claim(&req, &state.ids).and_then(|claimed| claimed.verify(None));
    match outcome {
        Ok(device) => {
            tracing::debug!(device = %device.id.masked(), "auth check passed");
            Ok(HttpResponse::Ok().json(AuthCheckReply { label: device.label }))
        }
        Err(err) => {
            log_auth_failure(&req, &err);
            Err(err)
        }
    }
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// What is known about an upload so far, for its one log line.
#[derive(Debug, Default)]
struct UploadLog {
    device: Option<String>,
    path: Option<String>,
    size: Option<u64>,
}

pub async fn upload<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let mut log = UploadLog::default();
    let result = receive(&req, payload, &state, &mut log).await;
    let ms = started.elapsed().as_millis() as u64;
    let device = log.device.as_deref().unwrap_or("-");
    let path = log.path.as_deref().unwrap_or("-");
    match &result {
        Ok(receipt) => {
            tracing::info!(device, path, size = receipt.size, stored_as = %receipt.stored_as, outcome = ?receipt.outcome, ms, "upload")
        }
        Err(err) if err.code().is_auth_failure() => log_auth_failure(&req, err),
        Err(err @ ApiError::Storage(_)) => tracing::error!(device, path, size = log.size, ms, "upload failed: {err}"),
        Err(err) => tracing::warn!(device, path, size = log.size, code = ?err.code(), ms, "upload rejected: {err}"),
    }
    let receipt = result?;
    let mut response = match receipt.outcome {
        UploadOutcome::Stored => HttpResponse::Created(),
        UploadOutcome::AlreadyStored => HttpResponse::Ok(),
    };
    Ok(response.json(receipt))
}

async fn receive<S: Store>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState<S>,
    log: &mut UploadLog,
) -> Result<UploadReceipt, ApiError> {
    let claimed = auth::claim(req, &state.ids)?;
    log.device = Some(claimed.device.id.masked());
    let mut form = Multipart::new(req.headers(), payload);

    let path_text = read_text_field(&mut form, field::PATH).await?;
    log.path = Some(path_text.escape_debug().to_string());
    let path =
        RelPath::parse(&path_text).map_err(|reason| ApiError::InvalidPath { path: path_text.clone(), reason })?;
    let sha256 = read_text_field(&mut form, field::SHA256)
        .await?
        .parse()
        .map_err(|_| ApiError::MalformedUpload("the sha256 field must be 64 hexadecimal characters".to_owned()))?;
    let size = parse_size(&read_text_field(&mut form, field::SIZE).await?)?;
    log.size = Some(size);
    let claim = UploadClaim { path, sha256, size };
    let device = claimed.verify(Some(&claim))?;

    let mut file = next_field(&mut form, field::FILE).await?;
    let mut staged = state.store.stage().await?;
    let mut hasher = Sha256Hasher::default();
    while let Some(chunk) = file.next().await {
        let chunk = chunk.map_err(malformed)?;
        hasher.update(&chunk);
        if hasher.len() > claim.size {
            return Err(ApiError::SizeMismatch { declared: claim.size, received_at_least: hasher.len() });
        }
        staged.write(chunk).await?;
    }
    drop(file);
    // Commit only once the body has ended cleanly: a cut-off request is
    // never stored, even when the bytes so far happen to verify.
    if let Some(extra) = form.next().await {
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
    let committed = state.store.commit(staged, &device.id, &claim).await?;
    Ok(UploadReceipt {
        outcome: committed.outcome,
        stored_as: committed.stored_as.to_string(),
        sha256: received,
        size: received_len,
    })
}

/// The next field, which must be `expected`: the order is fixed so that the
/// receiver knows path, checksum and size before the first byte of the file.
async fn next_field(form: &mut Multipart, expected: &str) -> Result<Field, ApiError> {
    let order = field::ORDER.join(", ");
    match form.next().await {
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

async fn read_text_field(form: &mut Multipart, expected: &str) -> Result<String, ApiError> {
    let mut field = next_field(form, expected).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
            return Err(ApiError::MalformedUpload(format!(
                "the field {expected:?} is longer than {MAX_TEXT_FIELD_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::MalformedUpload(format!("the field {expected:?} is not valid UTF-8")))
}

fn parse_size(text: &str) -> Result<u64, ApiError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits_only.then(|| text.parse().ok()).flatten().ok_or_else(|| {
        ApiError::MalformedUpload(format!("the size field must be a whole number of bytes, not {text:?}"))
    })
}

fn malformed(err: MultipartError) -> ApiError {
    ApiError::MalformedUpload(format!("the multipart body could not be read: {err}"))
}

fn log_auth_failure(req: &HttpRequest, err: &ApiError) {
    let peer = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|| "-".to_owned());
    let key = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<logferry_common::signing::AuthHeader>().ok())
        .map(|h| h.key_id.short().to_owned())
        .unwrap_or_else(|| "-".to_owned());
    tracing::warn!(peer, key, code = ?err.code(), "authentication failed: {err}");
}
