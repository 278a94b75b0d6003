//! The endpoints.

use std::time::{Instant, SystemTime};

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::ResponseError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{Stream, StreamExt};
use logferry_common::signing::UploadClaim;
use logferry_common::wire::{AuthCheckReply, Health, UploadOutcome, UploadReceipt, field};
use logferry_common::{RelPath, Sha256Hasher};

use crate::app::AppState;
use crate::auth::{self, Verified};
use crate::client_addr::client_ip;
use crate::error::ApiError;
use crate::ids::Device;
use crate::limits::Limits;
use crate::metrics;
use crate::store::{Staged, Store};

/// Longest accepted value of a text field (path, checksum, size).
const MAX_TEXT_FIELD_BYTES: usize = 4096;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

pub async fn auth_check<S: Store>(req: HttpRequest, state: web::Data<AppState<S>>) -> Result<HttpResponse, ApiError> {
    let outcome =
        auth::claim(&req, &state.ids, &state.throttle, &state.trusted_proxies).and_then(|claimed| claimed.verify(None));
    match outcome {
        Ok(verified) => {
            tracing::debug!(device = %verified.device.id.masked(), "auth check passed");
            Ok(verified.answer(StatusCode::OK, &AuthCheckReply { label: verified.device.label.clone() }))
        }
        Err(err) => {
            auth_failed(&req, &state, &err);
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

/// What is known about an upload so far, for its one log line and the
/// fleet status.
#[derive(Debug, Default)]
struct UploadLog {
    device: Option<Device>,
    path: Option<String>,
    size: Option<u64>,
}

pub async fn upload<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let in_flight = state.metrics.upload_started();
    let mut log = UploadLog::default();
    let result = receive(&req, payload, &state, &mut log).await;
    drop(in_flight);
    let ms = started.elapsed().as_millis() as u64;
    let masked = log.device.as_ref().map(|d| d.id.masked());
    let device = masked.as_deref().unwrap_or("-");
    let path = log.path.as_deref().unwrap_or("-");
    let client_addr = client_ip(&req, &state.trusted_proxies);
    let shown_client = client_addr.map(|ip| ip.to_string());
    let client = shown_client.as_deref().unwrap_or("-");
    match &result {
        Ok((receipt, verified)) => {
            state.metrics.upload_done(receipt.outcome, receipt.size);
            state.fleet.record_commit(&verified.device, receipt, client_addr, SystemTime::now());
            tracing::info!(client, device, path, size = receipt.size, stored_as = %receipt.stored_as, outcome = metrics::outcome_name(receipt.outcome), ms, "upload")
        }
        Err(err) => {
            state.metrics.upload_rejected(err.code());
            if let Some(known) = &log.device
                && !err.code().is_auth_failure()
            {
                state.fleet.record_rejection(known, err.code(), err.to_string(), SystemTime::now());
            }
            let status = err.status_code().as_u16();
            if err.code().is_auth_failure() {
                auth_failed(&req, &state, err)
            } else if err.status_code().is_server_error() {
                tracing::error!(client, device, path, size = log.size, outcome = "failed", status, code = ?err.code(), ms, "upload failed: {err}")
            } else {
                tracing::warn!(client, device, path, size = log.size, outcome = "rejected", status, code = ?err.code(), ms, "upload rejected: {err}")
            }
        }
    }
    let (receipt, verified) = result?;
    let status = match receipt.outcome {
        UploadOutcome::Stored => StatusCode::CREATED,
        UploadOutcome::AlreadyStored => StatusCode::OK,
    };
    Ok(verified.answer(status, &receipt))
}

async fn receive<S: Store>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState<S>,
    log: &mut UploadLog,
) -> Result<(UploadReceipt, Verified), ApiError> {
    let claimed = auth::claim(req, &state.ids, &state.throttle, &state.trusted_proxies)?;
    log.device = Some(claimed.device.clone());
    let _slot = state.slots.take(&claimed.device.id.key_id()).await?;
    let limits = &state.limits;
    let mut form = Multipart::new(req.headers(), payload);
    let pace = Pace { limits, deadline: None };

    let path_text = read_text_field(&mut form, field::PATH, pace).await?;
    log.path = Some(path_text.clone());
    let path =
        RelPath::parse(&path_text).map_err(|reason| ApiError::InvalidPath { path: path_text.clone(), reason })?;
    let sha256 = read_text_field(&mut form, field::SHA256, pace)
        .await?
        .parse()
        .map_err(|_| ApiError::MalformedUpload("the sha256 field must be 64 hexadecimal characters".to_owned()))?;
    let size = parse_size(&read_text_field(&mut form, field::SIZE, pace).await?)?;
    log.size = Some(size);
    let claim = UploadClaim { path, sha256, size };
    let verified = claimed.verify(Some(&claim))?;
    if size > limits.max_file_size {
        return Err(ApiError::TooLarge { declared: size, max: limits.max_file_size });
    }

    let pace = Pace { limits, deadline: Some(limits.body_deadline(Instant::now(), size)) };
    let mut file = next_field(&mut form, field::FILE, pace).await?;
    let mut staged = state.store.stage(&verified.device.id, &claim).await?;
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
    // Commit only once the body has ended cleanly: a cut-off request is
    // never stored, even when the bytes so far happen to verify.
    if let Some(extra) = pace.next(&mut form).await? {
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
    let committed = state.store.commit(staged).await?;
    let receipt = UploadReceipt {
        outcome: committed.outcome,
        stored_as: committed.stored_as.to_string(),
        sha256: received,
        size: received_len,
    };
    Ok((receipt, verified))
}

/// How long the client may take for the next piece of the body: never more
/// than the idle timeout, and never past the deadline of the whole body.
#[derive(Debug, Clone, Copy)]
struct Pace<'a> {
    limits: &'a Limits,
    deadline: Option<Instant>,
}

impl Pace<'_> {
    async fn next<St: Stream + Unpin>(&self, stream: &mut St) -> Result<Option<St::Item>, ApiError> {
        let idle_until = Instant::now() + self.limits.idle_timeout;
        let until = self.deadline.map_or(idle_until, |deadline| deadline.min(idle_until));
        tokio::time::timeout_at(until.into(), stream.next()).await.map_err(|_| {
            ApiError::Timeout(if Some(until) == self.deadline {
                format!("the body arrived slower than {} bytes/s", self.limits.min_bytes_per_sec)
            } else {
                format!("no data arrived for {} s", self.limits.idle_timeout.as_secs())
            })
        })
    }
}

/// The next field, which must be `expected`: the order is fixed so that the
/// receiver knows path, checksum and size before the first byte of the file.
async fn next_field(form: &mut Multipart, expected: &str, pace: Pace<'_>) -> Result<Field, ApiError> {
    let order = field::ORDER.join(", ");
    match pace.next(form).await? {
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

async fn read_text_field(form: &mut Multipart, expected: &str, pace: Pace<'_>) -> Result<String, ApiError> {
    let mut field = next_field(form, expected, pace).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = pace.next(&mut field).await? {
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

/// Counts the failure against the client's address and logs it with the
/// masked key id, never the ID.
fn auth_failed<S>(req: &HttpRequest, state: &AppState<S>, err: &ApiError) {
    let client = client_ip(req, &state.trusted_proxies);
    state.throttle.record_failure(client, Instant::now());
    state.metrics.auth_failed();
    let client = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let key = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<logferry_common::signing::AuthHeader>().ok())
        .map(|h| h.key_id.short().to_owned())
        .unwrap_or_else(|| "-".to_owned());
    tracing::warn!(client, key, code = ?err.code(), "authentication failed: {err}");
}
