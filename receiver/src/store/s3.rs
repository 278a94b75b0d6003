//! The S3-compatible object store (Garage, MinIO, Ceph RGW, AWS S3): object
//! `<prefix>/<DEVICE-ID>/<stored name>` plus `<stored name>.sha256`, the
//! same layout (stored names from `RelPath::store_candidates`) and promises
//! as on disk, so any number of receivers can share one bucket.
//!
//! Nothing the receiver keeps in memory is needed for correctness: every
//! decision is made from what the bucket holds at that moment.
//!
//! - The names and their order, and what counts as the same content, are
//!   the shared placement policy's (`placement`); `S3Placement` gives it
//!   the bucket's primitives.
//! - A file of at most one part is held until it is verified, then named
//!   and sent in one PUT. A larger one is named before its body arrives
//!   (the upload's fields declare path and checksum first), so its bytes
//!   stream straight to a multipart upload there, with one part being
//!   filled and at most [`PARTS_IN_FLIGHT`] being sent. Nothing is visible
//!   until the PUT or the completion succeeds, which happens only after the
//!   handler verified size and SHA-256; dropping the staged upload aborts it.
//! - Never overwrite: before a name is written, it is claimed for the
//!   content's SHA-256 (see [`S3Store::claim`]), so of several uploads of
//!   different bytes at most one ever writes a given name, even on a store
//!   that ignores `If-None-Match` (Garage 2.5 does). The PUT and the
//!   completion also carry `If-None-Match: *`, which a store that honours it
//!   turns into an atomic create. ARCHITECTURE.md ("Conditional create")
//!   has the whole argument.
//! - Same content: each object carries its SHA-256 as user metadata, set by
//!   the receiver that verified it, so a HEAD tells whether a re-sent file is
//!   already stored, even when its checksum object was never written.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use logferry_common::signing::{HeadDigest, UploadClaim, UploadHead};
use logferry_common::{DeviceId, RelPath, Sha256Digest, Sha256Hasher};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutPayloadMut,
};
use tokio::task::JoinSet;

use super::placement::{self, Choice, Created, Occupant, Probe};
use super::{Committed, HeldFile, Inventory, Staged, Store, StoreError, StoredFile};
use crate::upload::Checked;

/// The smallest part S3 accepts (except the last); files up to this size go
/// in one PUT.
const MIN_PART_SIZE: u64 = 5 << 20;
/// S3 allows at most this many parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Parts being sent at once per upload, besides the one being filled:
/// enough to keep the network busy, few enough to bound memory to
/// `(PARTS_IN_FLIGHT + 1) * part size`.
const PARTS_IN_FLIGHT: usize = 2;
/// Files of a batch being placed at once: each placement is a few round
/// trips, so a batch waits for the slowest few, not for their sum.
const COMMITS_AT_ONCE: usize = 16;
/// Keys a probe lists at most: the name, its checksum name and what else
/// starts with the name (a device's `day.log.1`, `day.log.2`…) sorted
/// between them. Past that, both are looked up one by one.
const PROBE_KEYS: usize = 100;
/// User metadata naming the verified SHA-256 of an object's bytes.
const SHA256_METADATA: &str = "logferry-sha256";
/// Folder (beside the device folders) of the claims on names; see
/// [`S3Store::claim`].
const CLAIMS: &str = ".claims";

/// Where and how to reach the bucket; built from flags and `AWS_*` variables.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Folder inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        match &self.endpoint {
            Some(endpoint) => write!(f, " at {endpoint}"),
            None => Ok(()),
        }
    }
}

/// A `--store` value: `s3://bucket` or `s3://bucket/prefix`. Returns `None`
/// for anything else (a folder on disk).
pub fn parse_store_url(text: &str) -> Option<Result<(String, String), String>> {
    let rest = text.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    Some(if bucket.is_empty() {
        Err(format!("{text:?} names no bucket; use s3://BUCKET or s3://BUCKET/PREFIX"))
    } else if Path::parse(prefix).is_err() || prefix.contains("//") {
        Err(format!("the prefix in {text:?} must be /-separated names without '.', '..' or empty parts"))
    } else {
        Ok((bucket.to_owned(), prefix.to_owned()))
    })
}

#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    objects: AmazonS3,
    /// The same bucket through a client that sends `If-None-Match: *`, used
    /// only to complete multipart uploads (object_store has no per-call
    /// option for it there).
    create_only: AmazonS3,
    /// The prefix, `None` for the whole bucket.
    root: Option<Path>,
}

impl S3Store {
    /// A client for the bucket; no request is made yet.
    pub fn new(settings: &S3Settings) -> Result<Self, StoreError> {
        let builder = |options: ClientOptions| {
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&settings.bucket)
                .with_region(&settings.region)
                .with_access_key_id(&settings.access_key_id)
                .with_secret_access_key(&settings.secret_access_key)
                .with_client_options(options);
            if let Some(token) = &settings.session_token {
                builder = builder.with_token(token);
            }
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            }
            builder.build().map_err(|e| io::Error::other(format!("the S3 settings are not usable: {e}")))
        };
        let mut create_only = http::HeaderMap::new();
        create_only.insert(http::header::IF_NONE_MATCH, http::HeaderValue::from_static("*"));
        Ok(Self {
            inner: Arc::new(Inner {
                objects: builder(ClientOptions::new())?,
                create_only: builder(ClientOptions::new().with_default_headers(create_only))?,
                root: match settings.prefix.as_str() {
                    "" => None,
                    prefix => Some(Path::parse(prefix).map_err(|e| io::Error::other(format!("invalid prefix: {e}")))?),
                },
            }),
        })
    }

    fn root(&self) -> Option<Path> {
        self.inner.root.clone()
    }

    /// The bucket's client and the prefix, for the fleet summary's objects.
    pub fn client_and_root(&self) -> (AmazonS3, Option<Path>) {
        (self.inner.objects.clone(), self.root())
    }

    fn device_folder(&self, device: &DeviceId) -> String {
        match &self.inner.root {
            None => device.reveal().to_owned(),
            Some(root) => format!("{root}/{}", device.reveal()),
        }
    }

    // `parse` keeps the name as it is (building a path from parts would
    // percent-encode non-ASCII names); every RelPath passes it: no empty,
    // '.', '..' or control-character parts.
    fn key(&self, device: &DeviceId, name: &RelPath) -> Result<Path, StoreError> {
        Path::parse(format!("{}/{name}", self.device_folder(device)))
            .map_err(|_| StoreError::Conflict(format!("{:?} cannot be an object name", name.as_str())))
    }

    /// What `key` holds, judged against the claimed content.
    async fn occupant(&self, key: &Path, claim: &UploadClaim, mask: &Mask<'_>) -> Result<Occupant, StoreError> {
        let options = GetOptions { head: true, ..GetOptions::default() };
        match self.inner.objects.get_opts(key, options).await {
            Ok(found) => {
                let sha256 = found.attributes.get(&Attribute::Metadata(SHA256_METADATA.into()));
                let same = found.meta.size == claim.size
                    && sha256.is_some_and(|value| value.as_ref() == claim.sha256.to_hex());
                Ok(if same { Occupant::SameContent } else { Occupant::Other })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Occupant::Free),
            Err(e) => Err(mask.failed("cannot look up an object", e)),
        }
    }

    /// What the checksum object `key` holds, judged against `line`; read
    /// only when it has the line's size.
    async fn checksum_occupant(&self, key: &Path, line: &str, mask: &Mask<'_>) -> Result<Occupant, StoreError> {
        let found = match self.inner.objects.get(key).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(Occupant::Free),
            Err(e) => return Err(mask.failed("cannot read a checksum object", e)),
        };
        if found.meta.size != line.len() as u64 {
            return Ok(Occupant::Other);
        }
        let held = found.bytes().await.map_err(|e| mask.failed("cannot read a checksum object", e))?;
        Ok(if held == line.as_bytes() { Occupant::SameContent } else { Occupant::Other })
    }

    /// Where the claims on `name` are kept: outside every device folder, so
    /// they never show in the layout or the inventory.
    fn claims(&self, device: &DeviceId, name: &RelPath) -> Result<Path, StoreError> {
        let root = self.root().map(|root| format!("{root}/")).unwrap_or_default();
        Path::parse(format!("{root}{CLAIMS}/{}/{name}", device.reveal()))
            .map_err(|_| StoreError::Conflict(format!("{:?} cannot be an object name", name.as_str())))
    }

    async fn claimed_by_others(&self, wanted: &Wanted<'_>, mask: &Mask<'_>) -> Result<bool, StoreError> {
        let folder = self.claims(wanted.device, wanted.name)?;
        // Not recursive: the claims of `name/inner` are not claims of `name`.
        let listed = self
            .inner
            .objects
            .list_with_delimiter(Some(&folder))
            .await
            .map_err(|e| mask.failed("cannot list claims", e))?;
        let own = wanted.content.to_hex();
        Ok(listed.objects.iter().any(|claim| claim.location.filename() != Some(own.as_str())))
    }

    /// Claims `name` for bytes with SHA-256 `content`; true when no other
    /// content has claimed it. Of two uploads of different bytes, at most one
    /// wins, even on a store without conditional writes: each writes its
    /// claim before listing, so the later lister always sees the earlier
    /// claim (both may lose, and then both take their conflict names).
    /// Claims are never removed: removing one would reopen the race.
    async fn claim(&self, wanted: &Wanted<'_>, mask: &Mask<'_>) -> Result<bool, StoreError> {
        let own = self.claims(wanted.device, wanted.name)?.join(wanted.content.to_hex());
        self.inner.objects.put(&own, PutPayload::new()).await.map_err(|e| mask.failed("cannot write a claim", e))?;
        Ok(!self.claimed_by_others(wanted, mask).await?)
    }

    fn metadata(claim: &UploadClaim) -> Attributes {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), claim.sha256.to_hex().into());
        attributes
    }

    /// Places a file sent whole under the first candidate name it may take
    /// (`placement::place`).
    async fn place_whole(
        &self,
        device: &DeviceId,
        claim: &UploadClaim,
        bytes: PutPayload,
    ) -> Result<Committed, StoreError> {
        let mut backend = S3Placement { store: self, device, claim, content: Content::Whole(bytes) };
        placement::place(&mut backend, claim).await
    }

    /// Places an upload under the name chosen before its body.
    async fn place_named(
        &self,
        device: &DeviceId,
        claim: &UploadClaim,
        name: RelPath,
        content: Content,
    ) -> Result<Committed, StoreError> {
        let mut backend = S3Placement { store: self, device, claim, content };
        match placement::place_at(&mut backend, &name, claim).await? {
            Some(outcome) => Ok(Committed { outcome, stored_as: name }),
            // Dropping the parts aborts them; a retry is given another name.
            None => Err(StoreError::Raced("another upload of other bytes took this name first")),
        }
    }

    async fn list_inventory<I: Inventory>(&self, files: &mut I) -> Result<(), object_store::Error> {
        let root = self.root();
        let skip = root.as_ref().map_or(0, |root| root.parts().count());
        let mut listing = self.inner.objects.list(root.as_ref());
        let mut listed = ListedPrefixes::default();
        while let Some(object) = listing.next().await {
            let object = object?;
            let mut parts = object.location.parts().skip(skip);
            let Some(folder) = parts.next() else { continue };
            let device = folder.as_ref().parse::<DeviceId>().ok().filter(|id| id.reveal() == folder.as_ref());
            let relative: Vec<_> = parts.collect();
            let name = relative.iter().map(|part| part.as_ref()).collect::<Vec<_>>().join("/");
            let key = format!("{}/{name}", folder.as_ref());
            listed.advance(&key);
            let (Some(device), Ok(path)) = (device, RelPath::parse(&name)) else { continue };
            let counted = placement::is_data(&path, |data| listed.holds(&format!("{}/{data}", folder.as_ref())));
            listed.push(key);
            if !counted {
                continue;
            }
            let stored_at = object.last_modified.into();
            files.found(StoredFile { device, path, size: object.size, stored_at });
        }
        Ok(())
    }
}

/// The keys listed so far that are prefixes of the last one. S3 lists keys
/// in UTF-8 binary order, and every key listed between `x` and
/// `x.sha256` starts with `x`, so `x` is still here when its checksum
/// object comes. Each key held is a prefix of the next: memory is bounded
/// by the length of a key, not by the bucket.
#[derive(Debug, Default)]
struct ListedPrefixes(Vec<String>);

impl ListedPrefixes {
    /// Forgets the keys that are no prefix of `key`, the next one listed.
    fn advance(&mut self, key: &str) {
        while self.0.last().is_some_and(|last| !key.starts_with(last.as_str())) {
            self.0.pop();
        }
    }

    fn holds(&self, key: &str) -> bool {
        self.0.iter().any(|listed| listed == key)
    }

    fn push(&mut self, key: String) {
        self.0.push(key);
    }
}

/// A name in a device's folder, wanted for the bytes with this SHA-256.
struct Wanted<'a> {
    device: &'a DeviceId,
    name: &'a RelPath,
    content: &'a Sha256Digest,
}

/// The bucket's placement primitives for one upload. Creating is a PUT (or
/// CompleteMultipartUpload) with `If-None-Match: *`, which refuses an
/// existing name where the store honours it; a claim keeps other content
/// off the name where it does not (see [`S3Store::claim`]).
struct S3Placement<'a> {
    store: &'a S3Store,
    device: &'a DeviceId,
    claim: &'a UploadClaim,
    content: Content,
}

/// The bytes a placement creates its name with.
enum Content {
    /// The same bytes were stored under the name when the upload began.
    Stored,
    Whole(PutPayload),
    /// Taken by the first create.
    Parts(Option<Parts>),
}

impl S3Placement<'_> {
    fn wanted<'a>(&'a self, name: &'a RelPath) -> Wanted<'a> {
        Wanted { device: self.device, name, content: &self.claim.sha256 }
    }

    fn created(&self, result: Result<(), object_store::Error>, what: &str) -> Result<Created, StoreError> {
        match result {
            Ok(()) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Created::Existed)
            }
            Err(e) => Err(Mask(self.device).failed(what, e)),
        }
    }
}

impl placement::Backend for S3Placement<'_> {
    /// One LIST of the keys that start with the name: for a new file, both
    /// names are seen free at once. What is there is then looked at (a
    /// HEAD for the data's SHA-256, a GET for the checksum line), as is
    /// what a listing cut short may not have shown.
    async fn probe(&mut self, name: &RelPath, line: &str) -> Result<Probe, StoreError> {
        let mask = Mask(self.device);
        let key = self.store.key(self.device, name)?;
        let checksum_key = self.store.key(self.device, &name.checksum_path())?;
        let options =
            PaginatedListOptions { delimiter: Some("/".into()), max_keys: Some(PROBE_KEYS), ..Default::default() };
        let listed = self
            .store
            .inner
            .objects
            .list_paginated(Some(key.as_ref()), options)
            .await
            .map_err(|e| mask.failed("cannot list the names of an object", e))?;
        let maybe_there = |wanted: &Path| {
            listed.page_token.is_some() || listed.result.objects.iter().any(|object| object.location == *wanted)
        };
        let data = match maybe_there(&key) {
            true => self.store.occupant(&key, self.claim, &mask).await?,
            false => Occupant::Free,
        };
        let checksum = match maybe_there(&checksum_key) {
            true => self.store.checksum_occupant(&checksum_key, line, &mask).await?,
            false => Occupant::Free,
        };
        Ok(Probe { data, checksum })
    }

    async fn claim(&mut self, name: &RelPath) -> Result<bool, StoreError> {
        self.store.claim(&self.wanted(name), &Mask(self.device)).await
    }

    async fn claimed_by_others(&mut self, name: &RelPath) -> Result<bool, StoreError> {
        self.store.claimed_by_others(&self.wanted(name), &Mask(self.device)).await
    }

    async fn create_data(&mut self, name: &RelPath) -> Result<Created, StoreError> {
        let key = self.store.key(self.device, name)?;
        let written = match &mut self.content {
            Content::Stored => {
                return Err(StoreError::Raced("the object stored under this name changed while the upload arrived"));
            }
            Content::Whole(bytes) => {
                let options = PutOptions {
                    mode: PutMode::Create,
                    attributes: S3Store::metadata(self.claim),
                    ..PutOptions::default()
                };
                self.store.inner.objects.put_opts(&key, bytes.clone(), options).await.map(drop)
            }
            Content::Parts(parts) => match parts.take() {
                Some(parts) => parts.complete(&self.store.inner).await,
                None => return Err(StoreError::Raced("another upload of this name finished first")),
            },
        };
        self.created(written, "cannot store the object")
    }

    async fn create_checksum(&mut self, checksum: &RelPath, line: &str) -> Result<Created, StoreError> {
        let key = self.store.key(self.device, checksum)?;
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let written = self.store.inner.objects.put_opts(&key, PutPayload::from(line.to_owned()), options).await;
        self.created(written.map(drop), "cannot write the checksum object")
    }
}

/// Turns object store errors, whose text names the key and so the whole
/// device ID, into messages that show only its masked form.
struct Mask<'a>(&'a DeviceId);

impl Mask<'_> {
    fn failed(&self, what: &str, err: object_store::Error) -> StoreError {
        let text = err.to_string().replace(self.0.reveal(), &self.0.masked());
        StoreError::Io(io::Error::other(format!("{what} in the object store: {text}")))
    }
}

/// An upload on its way to the bucket.
#[derive(Debug)]
pub struct S3Staged {
    device: DeviceId,
    claim: UploadClaim,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// The same bytes are stored under this name already; the upload is
    /// only hashed, to verify the claim.
    AlreadyThere(RelPath),
    /// A file of at most one part, named and sent in one PUT at commit.
    Small(PutPayloadMut),
    /// A multipart upload to the name chosen before the body.
    Parts(RelPath, Parts),
}

/// Cuts a stream of chunks into parts of exactly `part_size` bytes (the
/// last may be shorter): stores such as Cloudflare R2 refuse a multipart
/// upload whose parts but the last differ in size.
#[derive(Debug)]
struct PartCutter {
    part_size: usize,
    filling: PutPayloadMut,
}

impl PartCutter {
    fn new(part_size: usize) -> Self {
        Self { part_size, filling: PutPayloadMut::new() }
    }

    /// Takes `chunk`; returns the parts it completed, in order.
    fn push(&mut self, mut chunk: Bytes) -> Vec<PutPayload> {
        let mut full = Vec::new();
        while self.filling.content_length() + chunk.len() >= self.part_size {
            let rest = chunk.split_off(self.part_size - self.filling.content_length());
            self.filling.push(chunk);
            full.push(std::mem::take(&mut self.filling).freeze());
            chunk = rest;
        }
        if !chunk.is_empty() {
            self.filling.push(chunk);
        }
        full
    }

    /// What is left after the last full part; empty when none is.
    fn rest(&mut self) -> PutPayload {
        std::mem::take(&mut self.filling).freeze()
    }
}

/// A multipart upload with its parts in flight.
#[derive(Debug)]
struct Parts {
    key: Path,
    id: String,
    cutter: PartCutter,
    sending: JoinSet<Result<(usize, PartId), object_store::Error>>,
    sent: Vec<(usize, PartId)>,
    next_index: usize,
    store: S3Store,
    /// For error messages only.
    device: DeviceId,
    /// Still to be aborted when dropped: neither completed nor aborted yet.
    open: bool,
}

impl Parts {
    async fn push(&mut self, chunk: Bytes) -> Result<(), object_store::Error> {
        for part in self.cutter.push(chunk) {
            self.send(part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, payload: PutPayload) -> Result<(), object_store::Error> {
        while self.sending.len() >= PARTS_IN_FLIGHT {
            self.collect_one().await?;
        }
        let (store, key, id, index) = (self.store.clone(), self.key.clone(), self.id.clone(), self.next_index);
        self.next_index += 1;
        self.sending.spawn(async move {
            let part = store.inner.objects.put_part(&key, &id, index, payload).await?;
            Ok((index, part))
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), object_store::Error> {
        if let Some(done) = self.sending.join_next().await {
            let sent = done.map_err(|e| object_store::Error::JoinError { source: e })??;
            self.sent.push(sent);
        }
        Ok(())
    }

    async fn complete(mut self, inner: &Inner) -> Result<(), object_store::Error> {
        let rest = self.cutter.rest();
        if rest.content_length() > 0 || self.next_index == 0 {
            self.send(rest).await?;
        }
        while !self.sending.is_empty() {
            self.collect_one().await?;
        }
        self.sent.sort_by_key(|(index, _)| *index);
        let parts = std::mem::take(&mut self.sent).into_iter().map(|(_, part)| part).collect();
        let completed = inner.create_only.complete_multipart(&self.key, &self.id, parts).await;
        if completed.is_ok() {
            self.open = false;
        }
        completed.map(drop)
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        // An abandoned upload (client gone, bytes refused) is aborted so the
        // store frees its parts; it was never visible. Should this fail, the
        // bucket's lifecycle rule for incomplete uploads removes it.
        if !self.open {
            return;
        }
        self.sending.abort_all();
        let (store, key, id, device) = (self.store.clone(), self.key.clone(), self.id.clone(), self.device.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.inner.objects.abort_multipart(&key, &id).await {
                    tracing::warn!("{}", Mask(&device).failed("could not abort an abandoned multipart upload", e));
                }
            });
        }
    }
}

impl Staged for S3Staged {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        match &mut self.body {
            Body::AlreadyThere(_) => Ok(()),
            Body::Small(buffer) => {
                buffer.push(chunk);
                Ok(())
            }
            Body::Parts(_, parts) => {
                parts.push(chunk).await.map_err(|e| Mask(&self.device).failed("cannot upload a part", e))
            }
        }
    }

    /// Nothing is kept anyway: dropping aborts a multipart upload.
    async fn discard(self) {}

    async fn abandon(self) {}
}

impl Store for S3Store {
    type Staged = S3Staged;

    /// Keeps no partial uploads: a cut-off upload starts over. Takes no
    /// trailer: a multipart upload's key is fixed when it starts, and the
    /// key comes from the digest (conflict names), so the digest must come
    /// first; staging elsewhere would cost a copy of every large file. A
    /// file of at most one part costs no request before its body: it is
    /// named when it is committed.
    async fn stage(
        &self,
        device: &DeviceId,
        head: &UploadHead,
        offset: u64,
    ) -> Result<(S3Staged, Sha256Hasher), StoreError> {
        if offset != 0 {
            return Err(StoreError::OffsetBeyond { offset, held: 0 });
        }
        let HeadDigest::Known(sha256) = head.sha256 else { return Err(StoreError::DigestFirst) };
        let claim = head.with_digest(sha256);
        let body = if claim.size <= MIN_PART_SIZE {
            Body::Small(PutPayloadMut::new())
        } else {
            let mut backend = S3Placement { store: self, device, claim: &claim, content: Content::Stored };
            match placement::choose(&mut backend, &claim).await? {
                Choice::AlreadyThere(name) => Body::AlreadyThere(name),
                Choice::Upload(name) => Body::Parts(name.clone(), self.start_parts(device, &claim, &name).await?),
            }
        };
        Ok((S3Staged { device: device.clone(), claim, body }, Sha256Hasher::default()))
    }

    async fn held(&self, _device: &DeviceId, _claim: &UploadHead) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn keeps_partials(&self) -> bool {
        false
    }

    fn digest_after(&self) -> bool {
        false
    }

    async fn expire_partials(&self, _ttl: Duration) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn commit(&self, staged: S3Staged, checked: &Checked) -> Result<Committed, StoreError> {
        if checked.claim() != &staged.claim {
            return Err(io::Error::other("the bytes checked are not the ones the upload was staged for").into());
        }
        let S3Staged { device, claim, body } = staged;
        match body {
            Body::Small(buffer) => self.place_whole(&device, &claim, buffer.freeze()).await,
            Body::AlreadyThere(name) => self.place_named(&device, &claim, name, Content::Stored).await,
            Body::Parts(name, parts) => self.place_named(&device, &claim, name, Content::Parts(Some(parts))).await,
        }
    }

    /// The files placed at once (at most [`COMMITS_AT_ONCE`]), each as a
    /// single upload is; files sent under one path twice go one after the
    /// other, in their order, as they would one by one.
    async fn commit_held(
        &self,
        device: &DeviceId,
        files: Vec<HeldFile>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let mut seen: HashMap<&RelPath, usize> = HashMap::new();
        let rounds: Vec<usize> = files
            .iter()
            .map(|held| {
                let times = seen.entry(&held.checked.claim().path).or_default();
                *times += 1;
                *times - 1
            })
            .collect();
        let mut results = Vec::with_capacity(files.len());
        for round in 0..rounds.iter().max().map_or(0, |last| last + 1) {
            let placing = files.iter().enumerate().filter(|(index, _)| rounds[*index] == round).map(|(index, held)| {
                let bytes: PutPayload = held.bytes.iter().cloned().collect();
                async move { (index, self.place_whole(device, held.checked.claim(), bytes).await) }
            });
            results.extend(
                futures_util::stream::iter(placing).buffer_unordered(COMMITS_AT_ONCE).collect::<Vec<_>>().await,
            );
        }
        results.sort_by_key(|(index, _)| *index);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }

    async fn inventory<I: Inventory>(&self, mut into: I) -> Result<I, StoreError> {
        self.list_inventory(&mut into)
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("cannot list the bucket: {e}"))))?;
        Ok(into)
    }
}

impl S3Store {
    async fn start_parts(&self, device: &DeviceId, claim: &UploadClaim, name: &RelPath) -> Result<Parts, StoreError> {
        let key = self.key(device, name)?;
        let options = PutMultipartOptions { attributes: Self::metadata(claim), ..Default::default() };
        let id = self
            .inner
            .objects
            .create_multipart_opts(&key, options)
            .await
            .map_err(|e| Mask(device).failed("cannot start a multipart upload", e))?;
        Ok(Parts {
            key,
            id,
            cutter: PartCutter::new(part_size(claim.size)),
            sending: JoinSet::new(),
            sent: Vec::new(),
            next_index: 0,
            store: self.clone(),
            device: device.clone(),
            open: true,
        })
    }
}

/// Every part of a multipart upload but the last has this size: the
/// smallest S3 accepts, or more for a file that would need more than
/// S3's most parts.
fn part_size(file_size: u64) -> usize {
    MIN_PART_SIZE.max(file_size.div_ceil(MAX_PARTS)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `None`: not an S3 URL; `Err`: refused; `Ok`: bucket and prefix.
    type Parsed = Option<Result<(&'static str, &'static str), ()>>;

    fn check(input: &str, expected: Parsed) {
        let got = parse_store_url(input);
        let got = got.as_ref().map(|r| r.as_ref().map(|(b, p)| (b.as_str(), p.as_str())).map_err(drop));
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn parts_but_the_last_have_exactly_the_part_size() {
        // Chunk sizes as they arrive → the sizes of the parts sent.
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 7, 25, 4], &[10, 10, 10, 9]),
            (&[10, 10], &[10, 10]),
            (&[9, 1, 1], &[10, 1]),
            (&[4], &[4]),
            (&[], &[]),
            (&[31], &[10, 10, 10, 1]),
        ];
        for (chunks, expected) in cases {
            let mut cutter = PartCutter::new(10);
            let mut parts: Vec<usize> = Vec::new();
            let mut sent = 0;
            for (n, size) in chunks.iter().enumerate() {
                let chunk: Bytes = (0..*size).map(|i| (sent + i) as u8 ^ n as u8).collect::<Vec<u8>>().into();
                sent += size;
                parts.extend(cutter.push(chunk).iter().map(PutPayload::content_length));
            }
            let rest = cutter.rest().content_length();
            parts.extend((rest > 0).then_some(rest));
            assert_eq!(parts, *expected, "{chunks:?}");
        }
    }

    #[test]
    fn part_sizes_follow_the_file_size() {
        let cases = [
            (0, MIN_PART_SIZE),
            (MIN_PART_SIZE * MAX_PARTS, MIN_PART_SIZE),
            (60 << 30, (60u64 << 30).div_ceil(MAX_PARTS)),
        ];
        for (file, part) in cases {
            assert_eq!(part_size(file) as u64, part, "{file}");
        }
    }

    #[test]
    fn store_urls() {
        let cases: &[(&str, Parsed)] = &[
            ("received_files", None),
            ("/srv/logs", None),
            ("s3://logs", Some(Ok(("logs", "")))),
            ("s3://logs/", Some(Ok(("logs", "")))),
            ("s3://logs/lab/a", Some(Ok(("logs", "lab/a")))),
            ("s3://logs/lab/", Some(Ok(("logs", "lab")))),
            ("s3://", Some(Err(()))),
            ("s3:///prefix", Some(Err(()))),
            ("s3://logs/a//b", Some(Err(()))),
            ("s3://logs/a/../b", Some(Err(()))),
        ];
        for (input, expected) in cases {
            check(input, *expected);
        }
    }
}
