//! The endpoints. The upload itself is [`crate::upload`]'s pipeline, the
//! update requests' steps are [`crate::update`]'s; the handlers around them
//! log, count and update the fleet status.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use logferry_common::update::{ManifestReply, ManifestRequest, UpdateOutcome, UpdateReport};
use logferry_common::wire::{
    AuthCheckReply, Encoding, Health, PROTOCOL_VERSION, UploadOutcome, UploadReceipt, endpoint,
};
use serde::de::DeserializeOwned;

use crate::auth::{self, Verified};
use crate::batch::{self, FileOutcome};
use crate::client_addr::client_ip;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::Store;
use crate::update;
use crate::upload::{self, Progress, Stored};

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
    })
}

pub async fn auth_check<S: Store>(req: HttpRequest, state: web::Data<AppState<S>>) -> Result<HttpResponse, ApiError> {
    let client = client_ip(&req, &state.trusted_proxies);
    let claimed = auth::claim(&req, endpoint::AUTH_CHECK, &state.ids);
    let key = claimed.as_ref().ok().map(|c| c.key_short().to_owned());
    match claimed.and_then(|claimed| claimed.verify(None)) {
        Ok(verified) => {
            tracing::debug!(device = %verified.device().id.masked(), "auth check passed");
            // Every run starts with one, so the status page follows the
            // device's clock; only a fresh signed request can set it.
            state.fleet.record_clock(verified.device(), verified.clock_offset(), SystemTime::now());
            let reply = AuthCheckReply {
                label: verified.device().label.clone(),
                encodings: vec![Encoding::Zstd],
                resume: state.store.keeps_partials(),
                digest_after: state.store.digest_after(),
                batch: true,
            };
            Ok(verified.answer(StatusCode::OK, &reply))
        }
        Err(err) => Err(auth_failed(&state, client, key.as_deref(), err)),
    }
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

pub async fn upload<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let (client_addr, progress, ms, result) =
        timed_upload(&req, &state, async |progress| receive(&req, payload, &state, progress).await).await;
    match result {
        Ok(Stored { verified, receipt }) => {
            let (resumed_from, encoding) = (progress.resumed_from, progress.encoding);
            let logged = Logged { client: client_addr, device: &verified, ms };
            logged.stored(&state, progress.path.as_deref().unwrap_or("-"), &receipt, resumed_from, encoding);
            let status = match receipt.outcome {
                UploadOutcome::Stored => StatusCode::CREATED,
                UploadOutcome::AlreadyStored => StatusCode::OK,
            };
            Ok(verified.answer(status, &receipt))
        }
        Err(err) => Err(upload_refused(&state, client_addr, &progress, err, ms)),
    }
}

/// Several small files in one request; see [`crate::batch`]. Each file is
/// logged, counted and recorded as a single upload of it would be.
pub async fn upload_batch<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let limits = &state.limits;
    let (client_addr, progress, ms, result) = timed_upload(&req, &state, async |progress| {
        batch::read_head(&req, payload, &state.ids, limits, progress)
            .await?
            .verify(limits, progress)?
            .take_slot(&state.slots)
            .await?
            .receive(limits)
            .await?
            .commit(&state.store)
            .await
    })
    .await;
    match result {
        Ok(committed) => {
            let logged = Logged { client: client_addr, device: &committed.verified, ms };
            for outcome in &committed.outcomes {
                match outcome {
                    FileOutcome::Delivered { path, receipt } => logged.stored(&state, path, receipt, None, None),
                    FileOutcome::Refused { path, error } => logged.refused(&state, path, error),
                }
            }
            Ok(committed.verified.answer(StatusCode::OK, &committed.receipt()))
        }
        Err(err) => Err(upload_refused(&state, client_addr, &progress, err, ms)),
    }
}

/// Runs an upload's (or a batch's) pipeline, counted in flight: what the
/// handler needs to answer, log and record it (the client's address, what
/// was learnt of the upload, its milliseconds, the result).
async fn timed_upload<S: Store, T>(
    req: &HttpRequest,
    state: &AppState<S>,
    pipeline: impl AsyncFnOnce(&mut Progress) -> Result<T, ApiError>,
) -> (Option<IpAddr>, Progress, u64, Result<T, ApiError>) {
    let started = Instant::now();
    let client_addr = client_ip(req, &state.trusted_proxies);
    let in_flight = state.metrics.upload_started();
    let mut progress = Progress::default();
    let result = pipeline(&mut progress).await;
    drop(in_flight);
    (client_addr, progress, started.elapsed().as_millis() as u64, result)
}

/// A verified device's upload answered, for its log line and records.
struct Logged<'a> {
    client: Option<IpAddr>,
    device: &'a Verified,
    ms: u64,
}

impl Logged<'_> {
    /// `path` as the device sent it.
    fn stored<S: Store>(
        &self,
        state: &AppState<S>,
        path: &str,
        receipt: &UploadReceipt,
        resumed_from: Option<u64>,
        encoding: Option<&'static str>,
    ) {
        state.metrics.upload_done(receipt.outcome, receipt.size);
        state.fleet.record_commit(self.device.device(), receipt, self.client, SystemTime::now());
        let shown_client = self.client.map(|ip| ip.to_string());
        let client = shown_client.as_deref().unwrap_or("-");
        let device = self.device.device().id.masked();
        tracing::info!(
            client,
            device,
            path,
            size = receipt.size,
            resumed_from,
            encoding,
            stored_as = receipt.stored_as,
            outcome = receipt.outcome.as_str(),
            ms = self.ms,
            "upload"
        );
    }

    /// One file of a batch refused alone.
    fn refused<S: Store>(&self, state: &AppState<S>, path: &str, err: &ApiError) {
        state.metrics.upload_rejected(err.code());
        state.fleet.record_rejection(self.device.device(), err.code(), err.to_string(), SystemTime::now());
        let shown_client = self.client.map(|ip| ip.to_string());
        let client = shown_client.as_deref().unwrap_or("-");
        let device = self.device.device().id.masked();
        let status = actix_web::ResponseError::status_code(err).as_u16();
        tracing::warn!(client, device, path, outcome = "rejected", status, code = ?err.code(), ms = self.ms, "upload rejected: {err}");
    }
}

/// Counts, records and logs a refused upload (or batch), and gives the
/// answer: a failed authentication goes to the throttle first.
fn upload_refused<S: Store>(
    state: &AppState<S>,
    client_addr: Option<IpAddr>,
    progress: &Progress,
    err: ApiError,
    ms: u64,
) -> ApiError {
    let masked = progress.verified.as_ref().map(|d| d.id.masked());
    let device = masked.as_deref().unwrap_or("-");
    let path = progress.path.as_deref().unwrap_or("-");
    let (resumed_from, encoding) = (progress.resumed_from, progress.encoding);
    let shown_client = client_addr.map(|ip| ip.to_string());
    let client = shown_client.as_deref().unwrap_or("-");
    if err.counts_against_client() {
        let answer = auth_failed(state, client_addr, progress.key.as_deref(), err);
        state.metrics.upload_rejected(answer.code());
        return answer;
    }
    state.metrics.upload_rejected(err.code());
    // Only a verified device's rejections reach its status: anyone can
    // send a malformed upload naming someone else's key id.
    if let Some(signer) = err.signer() {
        state.fleet.record_rejection(signer.device(), err.code(), err.to_string(), SystemTime::now());
    }
    let status = actix_web::ResponseError::status_code(&err).as_u16();
    if actix_web::ResponseError::status_code(&err).is_server_error() {
        tracing::error!(client, device, path, size = progress.size, outcome = "failed", status, code = ?err.code(), ms, "upload failed: {err}")
    } else {
        tracing::warn!(client, device, path, size = progress.size, resumed_from, encoding, outcome = "rejected", status, code = ?err.code(), ms, "upload rejected: {err}")
    }
    err
}

/// The pipeline, step by step; see [`crate::upload`].
async fn receive<S: Store>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState<S>,
    progress: &mut Progress,
) -> Result<Stored, ApiError> {
    let limits = &state.limits;
    upload::read_head(req, endpoint::UPLOAD, payload, &state.ids, limits, progress)
        .await?
        .verify(limits, progress)?
        .take_slot(&state.slots)
        .await?
        .receive(&state.store, limits, progress)
        .await?
        .commit(&state.store)
        .await
}

/// How much of a file a cut-off upload left: the same head as an upload,
/// verified the same way, answered without taking a slot.
pub async fn upload_offset<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let client = client_ip(&req, &state.trusted_proxies);
    let mut progress = Progress::default();
    let limits = &state.limits;
    let asked = async {
        upload::read_head(&req, endpoint::UPLOAD_OFFSET, payload, &state.ids, limits, &mut progress)
            .await?
            .verify(limits, &mut progress)?
            .held(&state.store)
            .await
    };
    match asked.await {
        Ok((verified, offset)) => Ok(verified.answer(StatusCode::OK, &offset)),
        Err(err) => Err(refused(&state, client, progress.key.as_deref(), err)),
    }
}

/// A poll: the device's release, whole unless it already runs it.
pub async fn update_manifest<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let (verified, request): (_, ManifestRequest) =
        verified_json(&req, endpoint::UPDATE_MANIFEST, payload, &state).await?;
    let device = verified.device();
    state.metrics.update_polled();
    state.fleet.record_poll(device, request.current);
    let reply = match &state.publish {
        None => ManifestReply { version: None, files: None },
        Some(publish) => {
            let release = publish.release_for(device);
            let version = release.version();
            let files = (request.current != Some(version)).then(|| release.manifest().files().to_vec());
            ManifestReply { version: Some(version), files }
        }
    };
    tracing::debug!(
        device = %device.id.masked(),
        current = request.current.map(|v| v.short()),
        published = reply.version.map(|v| v.short()),
        "update poll"
    );
    Ok(verified.answer(StatusCode::OK, &reply))
}

/// The bytes of one file of the device's release (see [`update::content`]).
pub async fn update_content<S: Store>(
    req: HttpRequest,
    sha256: web::Path<String>,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let client = client_ip(&req, &state.trusted_proxies);
    let mut key = None;
    match update::content(&req, sha256.into_inner(), &state, &mut key).await {
        Ok((verified, served, response)) => {
            let device = verified.device().id.masked();
            tracing::debug!(device, sha256 = %served.sha256, from = served.start, bytes = served.len, "update content");
            Ok(response)
        }
        Err(err) => {
            if let Some(signer) = err.signer() {
                tracing::warn!(device = %signer.device().id.masked(), code = ?err.code(), "update content refused: {err}");
            }
            Err(refused(&state, client, key.as_deref(), err))
        }
    }
}

/// A device's report of one attempt at a version.
pub async fn update_report<S: Store>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState<S>>,
) -> Result<HttpResponse, ApiError> {
    let (verified, report): (_, UpdateReport) = verified_json(&req, endpoint::UPDATE_REPORT, payload, &state).await?;
    let device = verified.device();
    state.metrics.update_reported(report.outcome);
    state.fleet.record_report(device, &report, SystemTime::now());
    let (masked, version, outcome) = (device.id.masked(), report.version.short(), report.outcome.as_str());
    let reason = report.reason.as_deref().unwrap_or("-");
    match report.outcome {
        UpdateOutcome::Updated | UpdateOutcome::UpToDate => {
            tracing::info!(device = masked, version, outcome, "update report")
        }
        _ => tracing::warn!(device = masked, version, outcome, reason, "update report"),
    }
    Ok(verified.answer(StatusCode::OK, &serde_json::json!({})))
}

/// The body of a signed JSON request, verified and parsed (see
/// [`update::read_signed_json`]); refusals are answered as [`refused`] says.
async fn verified_json<S: Store, T: DeserializeOwned>(
    req: &HttpRequest,
    endpoint: &'static str,
    payload: web::Payload,
    state: &AppState<S>,
) -> Result<(Verified, T), ApiError> {
    let mut key = None;
    let read = update::read_signed_json(req, endpoint, payload, &state.ids, &state.limits, &mut key).await;
    read.map_err(|err| refused(state, client_ip(req, &state.trusted_proxies), key.as_deref(), err))
}

/// A refusal as it is answered: one that counts against the client goes
/// through the throttle ([`auth_failed`]).
fn refused<S>(state: &AppState<S>, client: Option<IpAddr>, key: Option<&str>, err: ApiError) -> ApiError {
    if err.counts_against_client() { auth_failed(state, client, key, err) } else { err }
}

/// Counts a failed authentication against the client's address and logs it
/// with the key id's first characters, never an ID. An address over its
/// limit gets 429 for such failures, and they are counted but not logged;
/// a signed refusal (a verified request with a stale timestamp) stays as it
/// is, as what it says about the clock is what the device needs.
fn auth_failed<S>(state: &AppState<S>, client: Option<IpAddr>, key: Option<&str>, err: ApiError) -> ApiError {
    let now = Instant::now();
    let throttled = if err.signer().is_some() { None } else { state.throttle.answer(client, now) };
    state.metrics.auth_failed();
    if state.throttle.record_failure(client, now) {
        let client = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        let key = key.unwrap_or("-");
        tracing::warn!(client, key, code = ?err.code(), "authentication failed: {err}");
    }
    throttled.unwrap_or(err)
}
