//! Where verified uploads are kept.
//!
//! Handlers see only the [`Store`] trait: stage the bytes of one claimed
//! upload, then commit them once size and checksum are verified. The disk
//! backend lives in [`disk`], the S3-compatible object store in [`s3`];
//! [`AnyStore`] is whichever one the configuration chose.

pub mod disk;
pub mod s3;

use std::future::Future;
use std::io;

use bytes::Bytes;
use logferry_common::signing::UploadClaim;
use logferry_common::wire::UploadOutcome;
use logferry_common::{DeviceId, RelPath};

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
/// committing discards them: nothing becomes visible.
pub trait Staged {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), StoreError>>;
}

pub trait Store: Send + Sync + 'static {
    type Staged: Staged;

    /// Starts receiving the upload `claim` of `device`, refusing it at once
    /// when the store has no room for it. Knowing the name and checksum
    /// before the first byte lets a backend pick the final name up front.
    fn stage(&self, device: &DeviceId, claim: &UploadClaim) -> impl Future<Output = Result<Self::Staged, StoreError>>;

    /// Makes a staged upload visible under its device and path, durably,
    /// never replacing other content. The caller has verified that the staged
    /// bytes have exactly the claimed size and hash to the claimed SHA-256.
    fn commit(&self, staged: Self::Staged) -> impl Future<Output = Result<Committed, StoreError>>;

    /// Every committed data file under every device folder; anything that is
    /// not a valid device folder, a checksum file or staging is skipped. The
    /// fleet status is rebuilt from this, so it survives restarts and is the
    /// same on every receiver sharing a store.
    fn inventory(&self) -> impl Future<Output = Result<Vec<StoredFile>, StoreError>>;
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
}

impl Store for AnyStore {
    type Staged = AnyStaged;

    async fn stage(&self, device: &DeviceId, claim: &UploadClaim) -> Result<AnyStaged, StoreError> {
        Ok(match self {
            Self::Disk(store) => AnyStaged::Disk(store.stage(device, claim).await?),
            Self::S3(store) => AnyStaged::S3(store.stage(device, claim).await?),
        })
    }

    async fn commit(&self, staged: AnyStaged) -> Result<Committed, StoreError> {
        match (self, staged) {
            (Self::Disk(store), AnyStaged::Disk(staged)) => store.commit(staged).await,
            (Self::S3(store), AnyStaged::S3(staged)) => store.commit(staged).await,
            _ => Err(io::Error::other("an upload staged by one backend was committed to another").into()),
        }
    }

    async fn inventory(&self) -> Result<Vec<StoredFile>, StoreError> {
        match self {
            Self::Disk(store) => store.inventory().await,
            Self::S3(store) => store.inventory().await,
        }
    }
}
