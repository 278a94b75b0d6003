//! Talking to the receiver: signed requests, streamed uploads, and errors
//! turned into sentences.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_common::DeviceId;
use logferry_common::signing::{SignedRequest, UploadClaim};
use logferry_common::wire::{AuthCheckReply, ErrorBody, UploadReceipt, endpoint, field};
use reqwest::header::AUTHORIZATION;
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, StatusCode, Url};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

/// How long to wait for a connection before calling the receiver unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the receiver may go silent mid-request. Generous: it fsyncs a
/// large file before it answers.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const UPLOAD_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    id: DeviceId,
}

/// Why a request did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be made at all.
    #[error("cannot connect to {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The connection failed part-way (reset, timeout).
    #[error("the connection to {url} failed: {cause}")]
    Transport { url: String, cause: String },
    /// The receiver answered with an error.
    #[error("{}", describe_refusal(*status, body.as_ref()))]
    Refused { status: StatusCode, body: Option<ErrorBody> },
    /// A 2xx answer whose body is not what the protocol says.
    #[error("the receiver's answer could not be understood: {0}")]
    Garbled(String),
}

impl RequestError {
    /// Whether the receiver refused the device itself, not just one file.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::Refused { status, body } => {
                *status == StatusCode::UNAUTHORIZED || body.as_ref().is_some_and(|b| b.code.is_auth_failure())
            }
            _ => false,
        }
    }
}

fn describe_refusal(status: StatusCode, body: Option<&ErrorBody>) -> String {
    match body {
        Some(body) => format!("the receiver refused it (HTTP {}): {}", status.as_u16(), body.error),
        None => {
            format!("the receiver answered HTTP {status}, which is not a logferry answer; is this a logferry receiver?")
        }
    }
}

impl Client {
    pub fn new(base: Url, id: DeviceId) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("logferry-sender/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()?;
        Ok(Self { http, base, id })
    }

    /// Asks whether the receiver accepts this device, before any file is read.
    pub async fn auth_check(&self) -> Result<AuthCheckReply, RequestError> {
        let request = self.signed(Method::GET, endpoint::AUTH_CHECK, None);
        self.send(request, endpoint::AUTH_CHECK).await
    }

    /// Uploads the first `claim.size` bytes of `file`, streamed.
    pub async fn upload(&self, file: &Path, claim: &UploadClaim) -> Result<(StatusCode, UploadReceipt), RequestError> {
        let local = tokio::fs::File::open(file).await.map_err(|e| RequestError::Transport {
            url: self.url(endpoint::UPLOAD).to_string(),
            cause: format!("cannot open {}: {e}", file.display()),
        })?;
        // Never more than declared: bytes appended meanwhile wait for the next run.
        let body = Body::wrap_stream(ReaderStream::with_capacity(local.take(claim.size), UPLOAD_CHUNK));
        let form = Form::new()
            .text(field::PATH, claim.path.to_string())
            .text(field::SHA256, claim.sha256.to_hex())
            .text(field::SIZE, claim.size.to_string())
            .part(field::FILE, Part::stream_with_length(body, claim.size).file_name(claim.path.file_name().to_owned()));
        let request = self.signed(Method::POST, endpoint::UPLOAD, Some(claim)).multipart(form);
        self.send_with_status(request, endpoint::UPLOAD).await
    }

    fn url(&self, endpoint: &str) -> Url {
        // Relative join keeps any path prefix the receiver URL was given.
        self.base.join(endpoint.trim_start_matches('/')).unwrap_or_else(|_| self.base.clone())
    }

    fn signed(&self, method: Method, endpoint: &str, upload: Option<&UploadClaim>) -> reqwest::RequestBuilder {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let header =
            SignedRequest { method: method.as_str(), path: endpoint, timestamp, upload }.authorization(&self.id);
        self.http.request(method, self.url(endpoint)).header(AUTHORIZATION, header.to_string())
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<T, RequestError> {
        Ok(self.send_with_status(request, endpoint).await?.1)
    }

    async fn send_with_status<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<(StatusCode, T), RequestError> {
        let url = self.url(endpoint).to_string();
        let response = request.send().await.map_err(|e| transport_error(&url, &e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| transport_error(&url, &e))?;
        if status.is_success() {
            let body = serde_json::from_slice(&bytes).map_err(|e| RequestError::Garbled(e.to_string()))?;
            Ok((status, body))
        } else {
            Err(RequestError::Refused { status, body: serde_json::from_slice(&bytes).ok() })
        }
    }
}

fn transport_error(url: &str, err: &reqwest::Error) -> RequestError {
    let cause = root_cause(err);
    if err.is_connect() {
        RequestError::Unreachable { url: url.to_owned(), cause }
    } else if err.is_timeout() {
        RequestError::Transport { url: url.to_owned(), cause: format!("timed out ({cause})") }
    } else {
        RequestError::Transport { url: url.to_owned(), cause }
    }
}

/// reqwest's own message is generic ("error sending request"); the innermost
/// cause ("Connection refused", "dns error") is what a person can act on.
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
