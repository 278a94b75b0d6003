//! The update requests, step by step: a poll or a report is a small JSON
//! body read (bounded, within the head deadline) before its signature is
//! checked over that body's SHA-256 and length, as an upload's head is; a
//! content request is signed over the hash it names, and its answer is
//! the file, streamed from the release's own copy.

use std::io::{self, Seek, SeekFrom};

use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use logferry_common::Sha256Digest;
use logferry_common::digest::HASH_BUFFER_SIZE;
use logferry_common::signing::{SignedFields, parse_decimal};
use logferry_common::wire::endpoint;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use crate::auth::{self, Verified};
use crate::error::ApiError;
use crate::ids::IdsFile;
use crate::limits::Limits;
use crate::publish::ContentError;
use crate::state::AppState;
use crate::store::Store;
use crate::upload::refuse_encoded_body;

/// Largest JSON body of a poll or a report: a version, an outcome and a
/// reason of at most `MAX_REASON_BYTES` fit many times over.
pub const MAX_JSON_BODY: usize = 4096;

/// Reads the body of a signed JSON request to `endpoint` (at most
/// [`MAX_JSON_BODY`], all within `--head-timeout`), checks the signature
/// over its SHA-256 and length, and only then parses it; a body that does
/// not parse is refused signed. `key` gets the key id's first characters
/// for the log as soon as they are known.
pub async fn read_signed_json<T: DeserializeOwned>(
    req: &HttpRequest,
    endpoint: &'static str,
    mut payload: web::Payload,
    ids: &IdsFile,
    limits: &Limits,
    key: &mut Option<String>,
) -> Result<(Verified, T), ApiError> {
    let claimed = auth::claim(req, endpoint, ids)?;
    *key = Some(claimed.key_short().to_owned());
    refuse_encoded_body(req)?;
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::MalformedRequest(format!("the body cannot be read: {e}")))?;
            if body.len() + chunk.len() > MAX_JSON_BODY {
                return Err(ApiError::MalformedRequest(format!("the body is longer than {MAX_JSON_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let body = tokio::time::timeout(limits.head_timeout, read)
        .await
        .map_err(|_| ApiError::HeadTimeout(limits.head_timeout.as_secs()))??;
    let verified = claimed.verify(Some(&SignedFields::body(&body)))?;
    match serde_json::from_slice(&body) {
        Ok(parsed) => Ok((verified, parsed)),
        Err(e) => {
            Err(verified.refuse(ApiError::MalformedRequest(format!("the body is not the JSON {endpoint} takes: {e}"))))
        }
    }
}

/// The bytes a content request asks for: from `start` to `end` (inclusive)
/// or to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl ByteRange {
    /// `bytes=N-` or `bytes=N-M`, the forms a device sends to continue a
    /// download; any other form is refused rather than ignored, so a
    /// client's mistake shows.
    pub fn parse(header: &str) -> Result<Self, ApiError> {
        let malformed = || {
            ApiError::MalformedRequest(format!(
                "the Range header must be bytes=<first byte>- or bytes=<first>-<last>, not {header:?}"
            ))
        };
        let spec = header.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
        let (start, end) = spec.split_once('-').ok_or_else(malformed)?;
        let start = parse_decimal(start).ok_or_else(malformed)?;
        let end = match end {
            "" => None,
            end => Some(parse_decimal(end).filter(|end| *end >= start).ok_or_else(malformed)?),
        };
        Ok(Self { start, end })
    }

    /// (first byte, byte count) of this range in content of `size` bytes.
    fn within(self, size: u64) -> Result<(u64, u64), ApiError> {
        if self.start >= size {
            return Err(ApiError::RangeNotSatisfiable { start: self.start, size });
        }
        let last = self.end.map_or(size - 1, |end| end.min(size - 1));
        Ok((self.start, last - self.start + 1))
    }
}

/// What a content answer sent, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub sha256: Sha256Digest,
    pub start: u64,
    pub len: u64,
}

/// Answers `GET UPDATE_CONTENT/<name>`: verified over the name as sent,
/// then judged: the hash must be in the device's own release, the file
/// still as it was hashed, and the range within it. The answer carries no
/// receipt (its body is streamed): the device checks the bytes against the
/// SHA-256 of its signed manifest.
pub async fn content<S: Store>(
    req: &HttpRequest,
    name: String,
    state: &web::Data<AppState<S>>,
    key: &mut Option<String>,
) -> Result<(Verified, Served, HttpResponse), ApiError> {
    let claimed = auth::claim(req, endpoint::UPDATE_CONTENT, &state.ids)?;
    *key = Some(claimed.key_short().to_owned());
    let fields = SignedFields { path: String::new(), sha256: name, size: String::new() };
    let verified = claimed.verify(Some(&fields))?;
    match serve(req, &fields.sha256, state, &verified).await {
        Ok((served, response)) => Ok((verified, served, response)),
        Err(error) => Err(verified.refuse(error)),
    }
}

async fn serve<S: Store>(
    req: &HttpRequest,
    name: &str,
    state: &web::Data<AppState<S>>,
    verified: &Verified,
) -> Result<(Served, HttpResponse), ApiError> {
    let sha256: Sha256Digest = name.parse().map_err(|_| {
        ApiError::MalformedRequest(format!("content is named by its SHA-256, 64 hexadecimal characters, not {name:?}"))
    })?;
    let release = state.publish.as_ref().map(|publish| publish.release_for(verified.device()));
    let source = release.as_ref().and_then(|release| release.source(&sha256)).ok_or(ApiError::NotInRelease(sha256))?;
    let range = match req.headers().get(RANGE) {
        Some(value) => Some(ByteRange::parse(value.to_str().unwrap_or_default())?),
        None => None,
    };
    let size = source.size();
    let (start, len) = range.map_or(Ok((0, size)), |range| range.within(size))?;
    let source = source.clone();
    let file = web::block(move || {
        let mut file = source.open()?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| ContentError::Io { path: source.path().to_owned(), source: e })?;
        Ok::<_, ContentError>(file)
    })
    .await
    .map_err(|_| ApiError::Storage(io::Error::other("the thread opening the published file stopped")))?
    .map_err(|error| match error {
        ContentError::Changed { .. } => ApiError::ContentChanged(error.to_string()),
        ContentError::Io { source, .. } => ApiError::Storage(source),
    })?;
    let mut response = HttpResponse::build(if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK });
    response.insert_header((CONTENT_TYPE, "application/octet-stream")).insert_header((ACCEPT_RANGES, "bytes"));
    if range.is_some() {
        response.insert_header((CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1)));
    }
    let body = stream(tokio::fs::File::from_std(file), len, state.clone());
    Ok((Served { sha256, start, len }, response.no_chunking(len).streaming(body)))
}

/// `len` bytes of `file` from where it stands, a bounded piece at a time,
/// each counted as sent; a file that ends early fails the answer (the
/// connection is cut), so the device never takes a short file for whole.
fn stream<S: Store>(
    file: tokio::fs::File,
    len: u64,
    state: web::Data<AppState<S>>,
) -> impl Stream<Item = io::Result<Bytes>> {
    futures_util::stream::try_unfold((file, len, state), |(mut file, left, state)| async move {
        if left == 0 {
            return Ok(None);
        }
        let mut piece = vec![0u8; HASH_BUFFER_SIZE.min(usize::try_from(left).unwrap_or(HASH_BUFFER_SIZE))];
        let read = file.read(&mut piece).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the published file got shorter while it was sent",
            ));
        }
        piece.truncate(read);
        state.metrics.update_content_sent(read as u64);
        Ok(Some((Bytes::from(piece), (file, left - read as u64, state))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let check = |header: &str, size: u64, expected: Option<(u64, u64)>| {
            let got = ByteRange::parse(header).and_then(|range| range.within(size)).ok();
            assert_eq!(got, expected, "{header:?} of {size} bytes");
        };
        check("bytes=0-", 10, Some((0, 10)));
        check("bytes=4-", 10, Some((4, 6)));
        check("bytes=4-5", 10, Some((4, 2)));
        check("bytes=4-99", 10, Some((4, 6)));
        check("bytes=9-", 10, Some((9, 1)));
        check("bytes=10-", 10, None);
        check("bytes=0-", 0, None);
        check("bytes=5-4", 10, None);
        check("bytes=-5", 10, None);
        check("bytes=1-2,4-5", 10, None);
        check("bytes=01-", 10, None);
        check("items=0-", 10, None);
        assert!(matches!(
            ByteRange::parse("bytes=10-").and_then(|r| r.within(10)),
            Err(ApiError::RangeNotSatisfiable { start: 10, size: 10 })
        ));
    }
}
