//! The S3-compatible object store (Garage, MinIO, Ceph RGW, AWS S3): object
//! `<prefix>/<DEVICE-ID>/<stored name>` plus `<stored name>.sha256`, the
//! same layout (stored names from `RelPath::store_candidates`) and promises
//! as on disk, so any number of receivers can share one bucket.
//!
//! Nothing the receiver keeps in memory is needed for correctness: every
//! decision is made from what the bucket holds at that moment.
//!
//! - The final name is chosen before the body arrives (the upload's fields
//!   declare path and checksum first), so the bytes stream straight to it:
//!   one PUT for a small file, a multipart upload for a large one, with one
//!   part being filled and at most [`PARTS_IN_FLIGHT`] being sent. Nothing is visible until the PUT or
//!   the completion succeeds, which happens only after the handler verified
//!   size and SHA-256; dropping the staged upload aborts it.
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

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use logferry_common::signing::{HeadDigest, UploadClaim, UploadHead};
use logferry_common::wire::UploadOutcome;
use logferry_common::{DeviceId, RelPath, Sha256Digest, Sha256Hasher};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutPayloadMut,
};
use tokio::task::JoinSet;

use super::{Committed, Inventory, Staged, Store, StoreError, StoredFile};
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

    /// Picks the claimed path's stored name, or when that holds other content
    /// the first of its conflict names that does not (see
    /// `RelPath::store_candidates`), as the disk store does.
    async fn choose(&self, device: &DeviceId, claim: &UploadClaim, mask: &Mask<'_>) -> Result<Choice, StoreError> {
        let candidates = claim.path.store_candidates(&claim.sha256);
        for candidate in &candidates {
            match self.occupant(&self.key(device, candidate)?, claim, mask).await? {
                Occupant::SameContent => return Ok(Choice::AlreadyThere(candidate.clone())),
                Occupant::Other => continue,
                Occupant::Free => {}
            }
            let sidecar = self.key(device, &candidate.checksum_path())?;
            if self.exists(&sidecar, mask).await? {
                // A checksum object whose data was deleted (or, in a store
                // written before data names were escaped, a device's own file).
                continue;
            }
            if self.claimed_by_others(&Wanted { device, name: candidate, content: &claim.sha256 }, mask).await? {
                continue;
            }
            return Ok(Choice::Upload(candidate.clone()));
        }
        Err(StoreError::all_names_taken(&candidates))
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

    async fn exists(&self, key: &Path, mask: &Mask<'_>) -> Result<bool, StoreError> {
        match self.inner.objects.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(mask.failed("cannot look up an object", e)),
        }
    }

    /// Writes `<name>.sha256` unless something is there already, which is
    /// then left as it is: the checksum of the same bytes written by a racing
    /// upload (or, in a store written before data names were escaped, a
    /// device's own file).
    async fn write_checksum_object(&self, staged: &S3Staged) -> Result<(), StoreError> {
        let mask = Mask(&staged.device);
        let sidecar = self.key(&staged.device, &staged.name.checksum_path())?;
        if self.exists(&sidecar, &mask).await? {
            return Ok(());
        }
        let line = staged.name.checksum_line(&staged.claim.sha256);
        let line_digest = Sha256Digest::of_bytes(line.as_bytes());
        let sidecar_name = staged.name.checksum_path();
        if !self.claim(&Wanted { device: &staged.device, name: &sidecar_name, content: &line_digest }, &mask).await? {
            tracing::warn!(
                device = %staged.device.masked(), file = %staged.name,
                "checksum object name claimed by other content (a device's own file, stored before data names were escaped); left to it"
            );
            return Ok(());
        }
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.inner.objects.put_opts(&sidecar, PutPayload::from(line), options).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(mask.failed("cannot write the checksum object", e)),
        }
    }

    async fn still_free(&self, key: &Path, staged: &S3Staged, mask: &Mask<'_>) -> Result<bool, StoreError> {
        Ok(matches!(self.occupant(key, &staged.claim, mask).await?, Occupant::Free))
    }

    /// After another upload took `key` first: fine when it holds the same
    /// bytes, otherwise the sender retries and is then given the conflict name.
    async fn settle(&self, key: &Path, staged: &S3Staged) -> Result<UploadOutcome, StoreError> {
        match self.occupant(key, &staged.claim, &Mask(&staged.device)).await? {
            Occupant::SameContent => Ok(UploadOutcome::AlreadyStored),
            Occupant::Other | Occupant::Free => Err(StoreError::Raced("another upload of this path finished first")),
        }
    }

    fn metadata(claim: &UploadClaim) -> Attributes {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), claim.sha256.to_hex().into());
        attributes
    }

    /// Places the verified bytes at the chosen key, never over other content.
    async fn place(&self, staged: &mut S3Staged) -> Result<UploadOutcome, StoreError> {
        let key = self.key(&staged.device, &staged.name)?;
        let mask = Mask(&staged.device);
        // Each name is checked again right before it is created: a racing
        // upload may have finished since `stage`.
        let created = match std::mem::replace(&mut staged.body, Body::AlreadyThere) {
            Body::AlreadyThere => return Ok(UploadOutcome::AlreadyStored),
            Body::Small(_) | Body::Parts(_) if !self.still_free(&key, staged, &mask).await? => {
                // Dropping the parts aborts them.
                return self.settle(&key, staged).await;
            }
            Body::Small(_) | Body::Parts(_) if !self.claim(&staged.wanted(), &mask).await? => {
                // A retry finds the claim in `stage` and takes the conflict name.
                return Err(StoreError::Raced("another upload of other bytes claimed this path first"));
            }
            Body::Small(buffer) => {
                let options = PutOptions {
                    mode: PutMode::Create,
                    attributes: Self::metadata(&staged.claim),
                    ..PutOptions::default()
                };
                self.inner.objects.put_opts(&key, buffer.freeze(), options).await.map(drop)
            }
            Body::Parts(parts) => parts.complete(&self.inner).await,
        };
        match created {
            Ok(()) => Ok(UploadOutcome::Stored),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                self.settle(&key, staged).await
            }
            Err(e) => Err(mask.failed("cannot store the object", e)),
        }
    }

    async fn list_inventory<I: Inventory>(&self, files: &mut I) -> Result<(), object_store::Error> {
        let root = self.root();
        let skip = root.as_ref().map_or(0, |root| root.parts().count());
        let mut listing = self.inner.objects.list(root.as_ref());
        while let Some(object) = listing.next().await {
            let object = object?;
            let mut parts = object.location.parts().skip(skip);
            let Some(folder) = parts.next() else { continue };
            let device = folder.as_ref().parse::<DeviceId>().ok().filter(|id| id.reveal() == folder.as_ref());
            let relative: Vec<_> = parts.collect();
            let name = relative.iter().map(|part| part.as_ref()).collect::<Vec<_>>().join("/");
            let (Some(device), Ok(path)) = (device, RelPath::parse(&name)) else { continue };
            if path.is_checksum_file() {
                continue;
            }
            let stored_at = object.last_modified.into();
            files.found(StoredFile { device, path, size: object.size, stored_at });
        }
        Ok(())
    }
}

/// A name in a device's folder, wanted for the bytes with this SHA-256.
struct Wanted<'a> {
    device: &'a DeviceId,
    name: &'a RelPath,
    content: &'a Sha256Digest,
}

#[derive(Debug)]
enum Occupant {
    Free,
    SameContent,
    Other,
}

#[derive(Debug)]
enum Choice {
    Upload(RelPath),
    AlreadyThere(RelPath),
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
    /// The stored name chosen for it (see `RelPath::store_candidates`).
    name: RelPath,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// The same bytes are stored under the name already; the upload is only
    /// hashed, to verify the claim.
    AlreadyThere,
    /// A file smaller than one part, sent in one PUT at commit.
    Small(PutPayloadMut),
    Parts(Parts),
}

/// A multipart upload with its parts in flight.
#[derive(Debug)]
struct Parts {
    key: Path,
    id: String,
    part_size: usize,
    filling: PutPayloadMut,
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
        self.filling.push(chunk);
        if self.filling.content_length() >= self.part_size {
            self.send_filled_part().await?;
        }
        Ok(())
    }

    async fn send_filled_part(&mut self) -> Result<(), object_store::Error> {
        while self.sending.len() >= PARTS_IN_FLIGHT {
            self.collect_one().await?;
        }
        let payload = std::mem::take(&mut self.filling).freeze();
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
        if !self.filling.is_empty() || self.next_index == 0 {
            self.send_filled_part().await?;
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

impl S3Staged {
    fn wanted(&self) -> Wanted<'_> {
        Wanted { device: &self.device, name: &self.name, content: &self.claim.sha256 }
    }
}

impl Staged for S3Staged {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        match &mut self.body {
            Body::AlreadyThere => Ok(()),
            Body::Small(buffer) => {
                buffer.push(chunk);
                Ok(())
            }
            Body::Parts(parts) => {
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
    /// first; staging elsewhere would cost a copy of every large file.
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
        let claim = &head.with_digest(sha256);
        let mask = Mask(device);
        let (name, body) = match self.choose(device, claim, &mask).await? {
            Choice::AlreadyThere(name) => (name, Body::AlreadyThere),
            Choice::Upload(name) if claim.size <= MIN_PART_SIZE => (name, Body::Small(PutPayloadMut::new())),
            Choice::Upload(name) => {
                let key = self.key(device, &name)?;
                let options = PutMultipartOptions { attributes: Self::metadata(claim), ..Default::default() };
                let id = self
                    .inner
                    .objects
                    .create_multipart_opts(&key, options)
                    .await
                    .map_err(|e| mask.failed("cannot start a multipart upload", e))?;
                let part_size = MIN_PART_SIZE.max(claim.size.div_ceil(MAX_PARTS)) as usize;
                let parts = Parts {
                    key,
                    id,
                    part_size,
                    filling: PutPayloadMut::new(),
                    sending: JoinSet::new(),
                    sent: Vec::new(),
                    next_index: 0,
                    store: self.clone(),
                    device: device.clone(),
                    open: true,
                };
                (name, Body::Parts(parts))
            }
        };
        Ok((S3Staged { device: device.clone(), claim: claim.clone(), name, body }, Sha256Hasher::default()))
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

    async fn commit(&self, mut staged: S3Staged, checked: &Checked) -> Result<Committed, StoreError> {
        if checked.claim() != &staged.claim {
            return Err(io::Error::other("the bytes checked are not the ones the upload was staged for").into());
        }
        let outcome = self.place(&mut staged).await?;
        self.write_checksum_object(&staged).await?;
        Ok(Committed { outcome, stored_as: staged.name })
    }

    async fn inventory<I: Inventory>(&self, mut into: I) -> Result<I, StoreError> {
        self.list_inventory(&mut into)
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("cannot list the bucket: {e}"))))?;
        Ok(into)
    }
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
