//! Where verified uploads are kept.
//!
//! Handlers see only the [`Store`] trait: stage the bytes, then commit them
//! under a device and path once size and checksum are verified. The disk
//! backend lives in [`disk`]; another backend (an object store) implements
//! the same two steps.

pub mod disk;

use std::future::Future;
use std::io;

use bytes::Bytes;
use logferry_common::signing::UploadClaim;
use logferry_common::wire::UploadOutcome;
use logferry_common::{DeviceId, RelPath};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The path cannot be used, for example because a folder on it is a file.
    #[error("{0}")]
    Conflict(String),
    /// The store has no room for this upload.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Io(#[from] io::Error),
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

    /// Starts receiving one upload of `size` bytes, refusing it at once when
    /// the store has no room for it.
    fn stage(&self, size: u64) -> impl Future<Output = Result<Self::Staged, StoreError>>;

    /// Makes a staged upload visible under `device`/`claim.path`, durably,
    /// never replacing other content. The caller has verified that the staged
    /// bytes have exactly `claim.size` bytes and hash to `claim.sha256`.
    fn commit(
        &self,
        staged: Self::Staged,
        device: &DeviceId,
        claim: &UploadClaim,
    ) -> impl Future<Output = Result<Committed, StoreError>>;

    /// Every committed data file under every device folder; anything that is
    /// not a valid device folder, a checksum file or staging is skipped. The
    /// fleet status is rebuilt from this, so it survives restarts and is the
    /// same on every receiver sharing a store.
    fn inventory(&self) -> impl Future<Output = Result<Vec<StoredFile>, StoreError>>;
}
