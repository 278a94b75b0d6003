//! Where verified uploads are kept.
//!
//! Handlers see only the [`Store`] trait: stage the bytes of one claimed
//! upload, then commit them once size and checksum are verified. The disk
//! backend lives in [`disk`], the S3-compatible object store in [`s3`];
//! [`AnyStore`] is whichever one the configuration chose.

pub mod disk;
mod placement;
pub mod s3;

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use logferry_common::signing::{HeadDigest, UploadHead};
use logferry_common::wire::UploadOutcome;
use logferry_common::{DeviceId, RelPath, Sha256Hasher};

use crate::upload::Checked;
use disk::{DiskStaged, DiskStore};
use s3::{S3Staged, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The path cannot be used, for example because a folder on it is a file.
    #[error("{0}")]
    Conflict(String),
    /// The store has no room for this upload.
    #[error("{0}")]
    Full(String),
    /// Another upload of the same name finished first; a retry sees what it
    /// stored and answers accordingly.
    #[error("{0}")]
    Raced(&'static str),
    /// A head that leaves the digest to a trailer, on a store that must
    /// know the digest before the first byte.
    #[error(
        "this receiver's store needs the sha256 in the head, before the file (its auth check says digest_after: false)"
    )]
    DigestFirst,
    /// An upload continues from further than the store holds of the file.
    #[error("the upload continues from byte {offset}, but only {held} are held")]
    OffsetBeyond { offset: u64, held: u64 },
    /// Another upload of the same file is still writing what it holds (a
    /// connection that broke without the receiver noticing yet).
    #[error("another upload of this file is still arriving")]
    PartialInUse,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl StoreError {
    /// Every name an upload may be stored under (`RelPath::store_candidates`)
    /// is taken by other content. Only files sent under this upload's very
    /// conflict names do that, so a new name is the way out.
    fn all_names_taken([name, first, last]: &[RelPath; 3]) -> Self {
        Self::Conflict(format!(
            "{:?}, {:?} and {:?} are all taken by other content on the receiver; \
             rename the file on the device, and it will be sent under its new name",
            name.as_str(),
            first.as_str(),
            last.as_str()
        ))
    }
}

/// Where a committed upload ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub outcome: UploadOutcome,
    /// Relative to the device's folder.
    pub stored_as: RelPath,
}

/// One committed data file (never a checksum file or a staging file), as the
/// fleet status needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub device: DeviceId,
    pub path: RelPath,
    pub size: u64,
    /// When it was committed (file mtime on disk, LastModified on S3).
    pub stored_at: std::time::SystemTime,
}

/// Bytes of one upload on their way into the store. Dropping it without
/// committing makes nothing visible; what arrived of a resumable upload is
/// kept for the next one to continue (see [`Store::held`]).
pub trait Staged {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), StoreError>>;

    /// Drops what arrived instead of keeping it for a resume: the bytes
    /// were wrong, not merely incomplete.
    fn discard(self) -> impl Future<Output = ()>;

    /// Keeps what arrived of a resumable upload that ended early, once it
    /// is written: an offset query after the refusal finds all of it.
    fn abandon(self) -> impl Future<Output = ()>;
}

pub trait Store: Send + Sync + 'static {
    type Staged: Staged;

    /// Starts receiving the upload `claim` of `device` from byte `offset`
    /// of the file on, refusing it at once when the store has no room for
    /// it. The digest may be still to come (a trailer); when the head gives
    /// it, a backend may pick the final name up front. The hasher returned has hashed
    /// the file's bytes before `offset`, which the store holds from a
    /// cut-off upload of the same claim; what it holds beyond `offset` is
    /// dropped.
    fn stage(
        &self,
        device: &DeviceId,
        claim: &UploadHead,
        offset: u64,
    ) -> impl Future<Output = Result<(Self::Staged, Sha256Hasher), StoreError>>;

    /// How many bytes of the file `claim` the store holds from cut-off
    /// uploads of it: where the next upload of it may start.
    fn held(&self, device: &DeviceId, claim: &UploadHead) -> impl Future<Output = Result<u64, StoreError>>;

    /// Whether the store keeps cut-off uploads of resumable files at all.
    fn keeps_partials(&self) -> bool;

    /// Whether the store takes uploads whose digest follows the file: it
    /// names nothing by the digest before [`Store::commit`].
    fn digest_after(&self) -> bool;

    /// Removes what cut-off uploads left that has not grown for `ttl`;
    /// returns how many were removed.
    fn expire_partials(&self, ttl: Duration) -> impl Future<Output = Result<usize, StoreError>>;

    /// Makes a staged upload visible under its device and path, durably,
    /// never replacing other content: `checked` says the staged bytes have
    /// exactly its size and hash to its SHA-256, which names the checksum
    /// file and conflict names.
    fn commit(&self, staged: Self::Staged, checked: &Checked) -> impl Future<Output = Result<Committed, StoreError>>;

    /// Commits small files of `device`, each received whole and verified,
    /// as a group: one result per file, in their order, each as
    /// [`Self::commit`] would give it, and none before all are durable. A
    /// backend without a cheaper way commits them one by one.
    fn commit_held(
        &self,
        device: &DeviceId,
        files: Vec<HeldFile>,
    ) -> impl Future<Output = Result<Vec<Result<Committed, StoreError>>, StoreError>> {
        async move {
            let mut results = Vec::with_capacity(files.len());
            for held in files {
                let committed = async {
                    let claim = held.checked.claim();
                    let head = UploadHead {
                        path: claim.path.clone(),
                        sha256: HeadDigest::Known(claim.sha256),
                        size: claim.size,
                    };
                    let (mut staged, _) = self.stage(device, &head, 0).await?;
                    for chunk in held.bytes {
                        staged.write(chunk).await?;
                    }
                    self.commit(staged, &held.checked).await
                };
                results.push(committed.await);
            }
            Ok(results)
        }
    }

    /// Hands every committed data file under every device folder to `into`,
    /// one at a time, and gives it back; anything that is not a valid device
    /// folder, a checksum file or staging is skipped. The summary of the
    /// fleet status is rebuilt from this when it is missing
    /// (`crate::summary`), in memory bounded by what `into` keeps.
    fn inventory<I: Inventory>(&self, into: I) -> impl Future<Output = Result<I, StoreError>> + Send;
}

/// What an inventory hands its files to.
pub trait Inventory: Send + 'static {
    fn found(&mut self, file: StoredFile);
}

impl Inventory for Vec<StoredFile> {
    fn found(&mut self, file: StoredFile) {
        self.push(file);
    }
}

/// A small file received whole, whose bytes have exactly its claim's size
/// and hash to its claim's SHA-256 (the receiver checked before making
/// one).
#[derive(Debug)]
pub struct HeldFile {
    pub checked: Checked,
    pub bytes: Vec<Bytes>,
}

/// The backend chosen at start-up (`--store`).
#[derive(Debug)]
pub enum AnyStore {
    Disk(DiskStore),
    S3(S3Store),
}

#[derive(Debug)]
pub enum AnyStaged {
    Disk(DiskStaged),
    S3(S3Staged),
}

impl Staged for AnyStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        match self {
            Self::Disk(staged) => staged.write(chunk).await,
            Self::S3(staged) => staged.write(chunk).await,
        }
    }

    async fn discard(self) {
        match self {
            Self::Disk(staged) => staged.discard().await,
            Self::S3(staged) => staged.discard().await,
        }
    }

    async fn abandon(self) {
        match self {
            Self::Disk(staged) => staged.abandon().await,
            Self::S3(staged) => staged.abandon().await,
        }
    }
}

impl Store for AnyStore {
    type Staged = AnyStaged;

    async fn stage(
        &self,
        device: &DeviceId,
        claim: &UploadHead,
        offset: u64,
    ) -> Result<(AnyStaged, Sha256Hasher), StoreError> {
        Ok(match self {
            Self::Disk(store) => {
                let (staged, hasher) = store.stage(device, claim, offset).await?;
                (AnyStaged::Disk(staged), hasher)
            }
            Self::S3(store) => {
                let (staged, hasher) = store.stage(device, claim, offset).await?;
                (AnyStaged::S3(staged), hasher)
            }
        })
    }

    async fn held(&self, device: &DeviceId, claim: &UploadHead) -> Result<u64, StoreError> {
        match self {
            Self::Disk(store) => store.held(device, claim).await,
            Self::S3(store) => store.held(device, claim).await,
        }
    }

    fn keeps_partials(&self) -> bool {
        match self {
            Self::Disk(store) => store.keeps_partials(),
            Self::S3(store) => store.keeps_partials(),
        }
    }

    fn digest_after(&self) -> bool {
        match self {
            Self::Disk(store) => store.digest_after(),
            Self::S3(store) => store.digest_after(),
        }
    }

    async fn expire_partials(&self, ttl: Duration) -> Result<usize, StoreError> {
        match self {
            Self::Disk(store) => store.expire_partials(ttl).await,
            Self::S3(store) => store.expire_partials(ttl).await,
        }
    }

    async fn commit(&self, staged: AnyStaged, checked: &Checked) -> Result<Committed, StoreError> {
        match (self, staged) {
            (Self::Disk(store), AnyStaged::Disk(staged)) => store.commit(staged, checked).await,
            (Self::S3(store), AnyStaged::S3(staged)) => store.commit(staged, checked).await,
            _ => Err(io::Error::other("an upload staged by one backend was committed to another").into()),
        }
    }

    async fn commit_held(
        &self,
        device: &DeviceId,
        files: Vec<HeldFile>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        match self {
            Self::Disk(store) => store.commit_held(device, files).await,
            Self::S3(store) => store.commit_held(device, files).await,
        }
    }

    async fn inventory<I: Inventory>(&self, into: I) -> Result<I, StoreError> {
        match self {
            Self::Disk(store) => store.inventory(into).await,
            Self::S3(store) => store.inventory(into).await,
        }
    }
}
