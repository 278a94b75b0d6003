//! The local-disk store: `<root>/<DEVICE-ID>/<stored name>` plus
//! `<stored name>.sha256`, staged in `<root>/.staging/<this store's
//! folder>/` (the stored name is the relative path, escaped; see
//! `RelPath::store_candidates`), placed by the shared policy (`placement`)
//! through `DiskPlacement`.
//!
//! Resumable files (at least `RESUMABLE_MIN_SIZE`) are staged instead in
//! `<root>/.partial/<hash of device, head's sha256 text, size and path>`, which
//! outlives a cut-off upload and a restart, so that the next upload of the
//! same claim continues it. A partial file is written only under an
//! exclusive `flock` and while it has one link: once committed (linked into
//! place) it is the stored file, and its partial name is only removed.
//!
//! Durability: the staged file and its checksum file are fsynced before
//! they are linked into place, every folder that gains an entry is fsynced,
//! and only then does commit return. Data and checksum file share a folder,
//! so one folder fsync makes both names durable. No-overwrite: files are
//! placed with `link(2)`, which fails rather than replace an existing name,
//! so even two racing uploads cannot clobber each other. Containment: every
//! folder on the way is checked to be a real folder, not a symlink, so a
//! link planted in the store cannot lead out.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use logferry_common::durable::{create_dirs, exists_no_follow, holds_exactly, sync_dir};
use logferry_common::signing::{UploadClaim, UploadHead};
use logferry_common::wire::RESUMABLE_MIN_SIZE;
use logferry_common::{DeviceId, RelPath, Sha256Digest, Sha256Hasher};
use rand::TryRng;
use rand::rngs::SysRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::placement::{self, Created, Occupant, Probe};
use super::{Committed, HeldFile, Inventory, Staged, Store, StoreError, StoredFile};
use crate::upload::Checked;

/// Folder of in-progress uploads, one folder in it per open store (several
/// receivers may share a store folder). Device folders are 16 hex
/// characters, so this name can never clash with one.
const STAGING_DIR: &str = ".staging";
/// Folder of resumable uploads in progress or cut off; kept across restarts.
const PARTIAL_DIR: &str = ".partial";
/// Reads of a partial file's first bytes, to hash what it holds.
const PREFIX_READ: usize = 256 * 1024;
/// Batches queued between the network and the disk writer per upload:
/// enough to keep both busy, little enough to keep memory flat.
const QUEUED_BATCHES: usize = 4;
/// Network chunks (as they came off the socket, tens of KiB) are gathered
/// into batches of at least this size, then written with one `writev`,
/// never copied: one hand-off to the writer thread and one system call per
/// batch, not per chunk.
const WRITE_BATCH: usize = 256 * 1024;
/// At most this many chunks to a batch, however small a client's chunks.
const WRITE_BATCH_CHUNKS: usize = 64;
/// Uploads up to this size are held in memory until their body is complete,
/// then written, fsynced and placed by one blocking task: a burst of small
/// files costs one hand-off to the blocking pool each, not a writer thread.
const HELD_UPLOAD_MAX: u64 = 256 * 1024;

#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    /// This store's own staging folder, `<root>/.staging/<random>`.
    staging: PathBuf,
    /// Kept for as long as any clone of the store lives.
    _staging_lock: Arc<StagingLock>,
    partial: PathBuf,
    /// Free space to keep on the file system, in bytes.
    min_free: u64,
    /// Groups are made durable by one `syncfs` (else by an fsync each).
    syncfs_reports_errors: bool,
}

/// How often (in bytes written) a running upload re-checks free space, so
/// that concurrent uploads cannot together eat the reserve unnoticed.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

impl DiskStore {
    /// Opens (creating if needed) the store at `root`, with a staging folder
    /// of its own, and removes what stores no longer open (an earlier crash,
    /// a receiver stopped) left in theirs. Returns the store and how many
    /// stale staging files were removed.
    pub fn open(root: &Path, min_free: u64) -> io::Result<(Self, usize)> {
        fs::create_dir_all(root)?;
        let (shared_staging, partial) = (root.join(STAGING_DIR), root.join(PARTIAL_DIR));
        for folder in [&shared_staging, &partial] {
            match fs::create_dir(folder) {
                Ok(()) => sync_dir(root)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let (lock, removed) = StagingLock::take(&shared_staging)?;
        let staging = lock.path.clone();
        let syncfs_reports_errors = syncfs_reports_errors();
        let store = Self {
            root: root.to_owned(),
            staging,
            _staging_lock: Arc::new(lock),
            partial,
            min_free,
            syncfs_reports_errors,
        };
        Ok((store, removed))
    }

    /// Where a resumable upload of `claim` by `device` is staged. Named by
    /// everything that identifies the upload, so that only the same bytes
    /// under the same name from the same device continue it. A trailer
    /// upload's digest is not known yet: any bytes of its size under its
    /// name continue it, and are verified whole at the end.
    fn partial_path(&self, device: &DeviceId, claim: &UploadHead) -> PathBuf {
        let identity = format!(
            "logferry partial\n{}\n{}\n{}\n{}",
            device.reveal(),
            claim.sha256.to_field(),
            claim.size,
            claim.path.as_str()
        );
        self.partial.join(Sha256Digest::of_bytes(identity.as_bytes()).to_string())
    }

    /// Opens and locks the partial file at `path`, keeps its first `offset`
    /// bytes (it must hold that many) and hashes them; the file is left
    /// positioned at `offset`.
    fn open_partial(&self, path: &Path, size: u64, offset: u64) -> Result<(File, Sha256Hasher), StoreError> {
        self.check_room(size - offset)?;
        // A few tries: the name may be committed or expired, and made anew,
        // between opening it and holding its lock.
        for _ in 0..3 {
            let Some(file) = lock_partial(path, true)? else { continue };
            let held = file.metadata()?.len();
            if offset > held {
                return Err(StoreError::OffsetBeyond { offset, held });
            }
            file.set_len(offset)?;
            let mut hasher = Sha256Hasher::default();
            let mut buffer = vec![0; PREFIX_READ];
            while hasher.bytes_hashed() < offset {
                let want = (offset - hasher.bytes_hashed()).min(PREFIX_READ as u64) as usize;
                let read = file.read_at(&mut buffer[..want], hasher.bytes_hashed())?;
                if read == 0 {
                    return Err(io::Error::other("a partial upload shrank while it was locked").into());
                }
                hasher.update(&buffer[..read]);
            }
            (&file).seek(SeekFrom::Start(offset))?;
            return Ok((file, hasher));
        }
        Err(StoreError::PartialInUse)
    }
}

/// A store's own staging folder, under an exclusive `flock` for as long as
/// the store is open. A lock dies with the file descriptor, so with its
/// process however that ends: a staging folder whose lock can be taken is
/// stale, and nothing in it will ever be committed.
#[derive(Debug)]
struct StagingLock {
    path: PathBuf,
    _held: File,
}

impl StagingLock {
    /// Makes and locks a new staging folder in `shared`, then removes the
    /// stale ones (and files that receivers from before per-store folders
    /// left in `shared` itself), returning how many files they held. The
    /// whole runs under a lock on `shared`, so no store judges another's
    /// folder between its creation and its lock.
    fn take(shared: &Path) -> io::Result<(Self, usize)> {
        let opening = File::open(shared)?;
        rustix::fs::flock(&opening, rustix::fs::FlockOperation::LockExclusive)?;
        let mut nonce = [0u8; 12];
        SysRng.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
        let path = shared.join(hex::encode(nonce));
        fs::create_dir(&path)?;
        let held = File::open(&path)?;
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        sync_dir(shared)?;
        let mut removed = 0;
        for entry in fs::read_dir(shared)? {
            let entry = entry?;
            if entry.path() != path {
                // Gone meanwhile: its store closed, and removed it.
                match remove_if_stale(&entry) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    found => removed += found?,
                }
            }
        }
        Ok((Self { path, _held: held }, removed))
    }
}

/// Removes `entry` of the shared staging folder unless a store holds it,
/// returning how many files it held.
fn remove_if_stale(entry: &fs::DirEntry) -> io::Result<usize> {
    if !entry.file_type()?.is_dir() {
        fs::remove_file(entry.path())?;
        return Ok(1);
    }
    let folder = File::open(entry.path())?;
    match rustix::fs::flock(&folder, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        // Open: its uploads are in flight.
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    let held = fs::read_dir(entry.path())?.count();
    fs::remove_dir_all(entry.path())?;
    Ok(held)
}

impl Drop for StagingLock {
    /// The last clone of the store is gone, and with it every upload it
    /// staged: nothing of the folder is needed.
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Opens (`create`: or creates) the partial file at `path` and takes its
/// lock. `None` when the name changed hands meanwhile, or led to a file
/// that had been committed, whose name is then removed: try again.
fn lock_partial(path: &Path, create: bool) -> Result<Option<File>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(StoreError::PartialInUse),
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let locked = file.metadata()?;
    let named = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if (named.dev(), named.ino()) != (locked.dev(), locked.ino()) {
        return Ok(None);
    }
    if locked.nlink() > 1 {
        // Committed, and the crash or failure that followed kept its
        // partial name: it is a stored file now, never to be written.
        fs::remove_file(path)?;
        return Ok(None);
    }
    Ok(Some(file))
}

impl DiskStore {
    /// The store's folder (the fleet summary keeps its files below it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn new_staging_file(&self, purpose: &str) -> io::Result<(StagingName, File)> {
        let mut nonce = [0u8; 12];
        SysRng.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
        let path = self.staging.join(format!("{purpose}-{}", hex::encode(nonce)));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
        Ok((StagingName(path), file))
    }

    fn check_room(&self, size: u64) -> Result<(), StoreError> {
        let free = available(&self.staging)?;
        if free < size.saturating_add(self.min_free) {
            return Err(no_room(free, size, self.min_free));
        }
        Ok(())
    }
}

/// A file's name in staging, removed when this is dropped: once the file is
/// linked into place that removes only the staging name, otherwise (an
/// abandoned upload, a failure) the whole file.
#[derive(Debug)]
struct StagingName(PathBuf);

impl Drop for StagingName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// An upload on its way into the store. Disk work happens on blocking
/// threads, so that disk latency never stalls the async workers.
#[derive(Debug)]
pub struct DiskStaged {
    store: DiskStore,
    device_dir: PathBuf,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// A small upload's chunks, at most [`HELD_UPLOAD_MAX`] bytes in all (the
    /// handler never passes on more than the declared size).
    Held(Vec<Bytes>),
    /// A larger upload, streamed to a staging file by its own writer task.
    Streamed(Writer),
}

#[derive(Debug)]
struct Writer {
    name: Staging,
    batches: Option<mpsc::Sender<Vec<Bytes>>>,
    /// Chunks not yet handed to the writer thread, and their bytes.
    gathered: Vec<Bytes>,
    gathered_len: usize,
    task: Option<JoinHandle<Result<File, StoreError>>>,
    /// Tells the writer that nothing will keep what it wrote, so that it
    /// stops without an fsync.
    unwanted: Arc<AtomicBool>,
    /// Once finished: the written file, kept open so that a partial file's
    /// lock is held until it is committed or removed.
    file: Option<File>,
}

/// Where a streamed upload is written.
#[derive(Debug)]
enum Staging {
    /// Removed unless committed.
    Temporary(StagingName),
    /// Kept unless committed or discarded (see [`lock_partial`]).
    Partial(PathBuf),
}

impl Staging {
    fn path(&self) -> &Path {
        match self {
            Self::Temporary(name) => &name.0,
            Self::Partial(path) => path,
        }
    }
}

impl Writer {
    fn start(name: Staging, file: File, offset: u64, store: DiskStore) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let unwanted = Arc::new(AtomicBool::new(false));
        let wanted = StillWanted(unwanted.clone());
        let task = tokio::task::spawn_blocking(move || write_all_batches(file, offset, rx, store, &wanted));
        let gathered = Vec::new();
        Self { name, batches: Some(tx), gathered, gathered_len: 0, task: Some(task), unwanted, file: None }
    }

    /// Stops the writer without an fsync, and waits for it: nothing it
    /// wrote is kept.
    async fn stop(&mut self) {
        self.unwanted.store(true, Ordering::Relaxed);
        self.batches = None;
        self.gathered.clear();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Gathers `chunk`; hands a full batch to the writer thread. False if
    /// the writer has stopped.
    async fn gather(&mut self, chunk: Bytes) -> bool {
        self.gathered_len += chunk.len();
        self.gathered.push(chunk);
        if self.gathered_len < WRITE_BATCH && self.gathered.len() < WRITE_BATCH_CHUNKS {
            return true;
        }
        self.hand_over().await
    }

    async fn hand_over(&mut self) -> bool {
        let batch = std::mem::take(&mut self.gathered);
        self.gathered_len = 0;
        match &self.batches {
            Some(batches) => batches.send(batch).await.is_ok(),
            None => false,
        }
    }

    /// Waits for the writer to write and fsync everything gathered so far.
    async fn finish(&mut self) -> Result<(), StoreError> {
        if !self.gathered.is_empty() {
            // If the writer stopped, its result below says why.
            self.hand_over().await;
        }
        self.batches = None;
        match self.task.take() {
            Some(task) => {
                self.file = Some(task.await.map_err(io::Error::other)??);
                Ok(())
            }
            None => Err(io::Error::other("staged upload already finished").into()),
        }
    }

    /// Removes a partial file's name once it is committed or discarded,
    /// while its lock is still held.
    fn remove_partial(&self) -> io::Result<()> {
        match &self.name {
            Staging::Partial(path) => fs::remove_file(path),
            Staging::Temporary(_) => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An upload dropped unfinished: its staging file is unlinked with
        // its name; a partial file stays, for a resume.
        if matches!(self.name, Staging::Temporary(_)) {
            self.unwanted.store(true, Ordering::Relaxed);
        }
    }
}

/// The writer's side of [`Writer::unwanted`].
struct StillWanted(Arc<AtomicBool>);

impl StillWanted {
    fn still(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

impl Staged for DiskStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let writer = match &mut self.body {
            Body::Held(chunks) => {
                chunks.push(chunk);
                return Ok(());
            }
            Body::Streamed(writer) => writer,
        };
        if writer.gather(chunk).await {
            return Ok(());
        }
        // The writer stopped early: its result says why.
        writer.finish().await?;
        Err(io::Error::other("the staging writer stopped unexpectedly").into())
    }

    async fn discard(self) {
        if let Body::Streamed(mut writer) = self.body {
            writer.stop().await;
            if let Err(e) = blocking(move || Ok(writer.remove_partial()?)).await {
                tracing::warn!("cannot remove a discarded partial upload: {e}");
            }
        }
    }

    async fn abandon(self) {
        if let Body::Streamed(mut writer) = self.body
            && matches!(writer.name, Staging::Partial(_))
            && let Err(e) = writer.finish().await
        {
            tracing::warn!("cannot keep what arrived of a cut-off upload: {e}");
        }
    }
}

/// Bytes available to unprivileged writers on the file system of `path`.
fn available(path: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

fn no_room(free: u64, needed: u64, reserve: u64) -> StoreError {
    StoreError::Full(format!(
        "{free} bytes are free, and {needed} more would leave less than the {reserve}-byte reserve (--min-free-space)"
    ))
}

/// Writes the batches to `file` from its byte `offset` on (where it is
/// positioned), then fsyncs it and gives it back.
fn write_all_batches(
    mut file: File,
    offset: u64,
    mut batches: mpsc::Receiver<Vec<Bytes>>,
    store: DiskStore,
    wanted: &StillWanted,
) -> Result<File, StoreError> {
    let (mut written, mut next_check, mut flushing_from) = (0u64, SPACE_CHECK_EVERY, offset);
    while let Some(batch) = batches.blocking_recv() {
        write_all_vectored(&mut file, &batch)?;
        written += batch.iter().map(|chunk| chunk.len() as u64).sum::<u64>();
        if written >= next_check {
            next_check += SPACE_CHECK_EVERY;
            let free = available(&store.staging)?;
            if free < store.min_free {
                return Err(no_room(free, 0, store.min_free));
            }
            // Start writing back what reached the file so far, so that the
            // disk works while the rest arrives and the final fsync waits
            // only for the last few MiB. (The advice also drops those pages
            // from the cache once written: nothing reads them again.)
            let in_file = offset + written;
            if let Some(len) = NonZeroU64::new(in_file - flushing_from) {
                rustix::fs::fadvise(&file, flushing_from, Some(len), rustix::fs::Advice::DontNeed)
                    .map_err(io::Error::from)?;
                flushing_from = in_file;
            }
        }
    }
    if !wanted.still() {
        return Err(io::Error::other("the upload was abandoned before its end").into());
    }
    file.sync_all()?;
    Ok(file)
}

/// Writes every byte of `chunks`, in as few `writev` calls as the kernel
/// takes them in.
fn write_all_vectored(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(wrote) => IoSlice::advance_slices(&mut slices, wrote),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Store for DiskStore {
    type Staged = DiskStaged;

    /// A small upload is refused for want of room when it is committed,
    /// which is as soon as its body is in; a larger one at once.
    async fn stage(
        &self,
        device: &DeviceId,
        claim: &UploadHead,
        offset: u64,
    ) -> Result<(DiskStaged, Sha256Hasher), StoreError> {
        let size = claim.size;
        let mut hasher = Sha256Hasher::default();
        let body = if size >= RESUMABLE_MIN_SIZE {
            let (store, path) = (self.clone(), self.partial_path(device, claim));
            let (file, held, path) = blocking(move || {
                let (file, held) = store.open_partial(&path, size, offset)?;
                Ok((file, held, path))
            })
            .await?;
            hasher = held;
            Body::Streamed(Writer::start(Staging::Partial(path), file, offset, self.clone()))
        } else if offset != 0 {
            return Err(StoreError::OffsetBeyond { offset, held: 0 });
        } else if size <= HELD_UPLOAD_MAX {
            Body::Held(Vec::new())
        } else {
            let store = self.clone();
            let (name, file) = blocking(move || {
                store.check_room(size)?;
                Ok(store.new_staging_file("upload")?)
            })
            .await?;
            Body::Streamed(Writer::start(Staging::Temporary(name), file, 0, self.clone()))
        };
        let device_dir = self.root.join(device.reveal());
        Ok((DiskStaged { store: self.clone(), device_dir, body }, hasher))
    }

    async fn held(&self, device: &DeviceId, claim: &UploadHead) -> Result<u64, StoreError> {
        if claim.size < RESUMABLE_MIN_SIZE {
            return Ok(0);
        }
        let (path, size) = (self.partial_path(device, claim), claim.size);
        blocking(move || match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.nlink() == 1 => Ok(meta.len().min(size)),
            Ok(_) => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        })
        .await
    }

    fn keeps_partials(&self) -> bool {
        true
    }

    fn digest_after(&self) -> bool {
        true
    }

    async fn expire_partials(&self, ttl: Duration) -> Result<usize, StoreError> {
        let folder = self.partial.clone();
        blocking(move || {
            let mut removed = 0;
            for entry in fs::read_dir(&folder)? {
                let path = entry?.path();
                // One in use is not expired, however old its last byte.
                let file = match lock_partial(&path, false) {
                    Ok(Some(file)) => file,
                    Ok(None) | Err(StoreError::PartialInUse) => continue,
                    Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let idle = file.metadata()?.modified()?.elapsed().unwrap_or_default();
                if idle >= ttl {
                    fs::remove_file(&path)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn commit(&self, staged: DiskStaged, checked: &Checked) -> Result<Committed, StoreError> {
        let DiskStaged { store, device_dir, body } = staged;
        let claim = checked.claim().clone();
        match body {
            Body::Held(chunks) => {
                blocking(move || {
                    store.check_room(claim.size)?;
                    let (name, mut file) = store.new_staging_file("upload")?;
                    for chunk in &chunks {
                        file.write_all(chunk)?;
                    }
                    file.sync_all()?;
                    store.place(&name.0, &device_dir, &claim, None, &mut FolderSyncs::Now)
                })
                .await
            }
            Body::Streamed(mut writer) => {
                writer.finish().await?;
                blocking(move || {
                    let committed =
                        store.place(writer.name.path(), &device_dir, &claim, None, &mut FolderSyncs::Now)?;
                    writer.remove_partial()?;
                    Ok(committed)
                })
                .await
            }
        }
    }

    async fn commit_held(
        &self,
        device: &DeviceId,
        files: Vec<HeldFile>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let (store, device_dir) = (self.clone(), self.root.join(device.reveal()));
        blocking(move || store.commit_group(&device_dir, &files)).await
    }

    async fn inventory<I: Inventory>(&self, mut into: I) -> Result<I, StoreError> {
        let root = self.root.clone();
        blocking(move || {
            inventory_of(&root, &mut into)?;
            Ok(into)
        })
        .await
    }
}

/// Walks every device folder (named by a canonical device ID, so staging
/// and strays are skipped), never following a symlink.
fn inventory_of(root: &Path, found: &mut impl Inventory) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(device) = name.to_str().and_then(|n| n.parse::<DeviceId>().ok().filter(|id| id.reveal() == n)) else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            device_files(&entry.path(), &device, found)?;
        }
    }
    Ok(())
}

fn device_files(device_dir: &Path, device: &DeviceId, found: &mut impl Inventory) -> io::Result<()> {
    let mut folders = vec![(device_dir.to_owned(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push((entry.path(), rel));
                continue;
            }
            let Ok(path) = RelPath::parse(&rel) else { continue };
            // A checksum file's data file is in the same folder.
            let beside = |data: &str| {
                let data = folder.join(Path::new(data).file_name().unwrap_or_default());
                fs::symlink_metadata(data).is_ok_and(|meta| meta.is_file())
            };
            if !kind.is_file() || !placement::is_data(&path, |data| beside(data)) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            found.found(StoredFile { device: device.clone(), path, size: meta.len(), stored_at: meta.modified()? });
        }
    }
    Ok(())
}

/// How the folders that gain names are made durable before an answer.
#[derive(Debug)]
enum FolderSyncs {
    /// Each one at once (a single upload).
    Now,
    /// Once for a whole group, by [`FolderSyncs::finish`].
    /// `syncfs` of the store's file system (at this path) where it reports
    /// write-back errors; else an fsync of each folder.
    Group { folders: BTreeSet<PathBuf>, whole_fs: Option<PathBuf> },
}

impl FolderSyncs {
    fn group(store: &DiskStore) -> Self {
        Self::Group { folders: BTreeSet::new(), whole_fs: store.syncfs_reports_errors.then(|| store.root.clone()) }
    }

    fn sync(&mut self, folder: &Path) -> io::Result<()> {
        match self {
            Self::Now => sync_dir(folder),
            Self::Group { folders, .. } => {
                folders.insert(folder.to_owned());
                Ok(())
            }
        }
    }

    /// Makes every folder named since durable.
    fn finish(self) -> io::Result<()> {
        match self {
            Self::Group { folders, whole_fs } if !folders.is_empty() => match whole_fs {
                Some(root) => sync_fs(&root),
                None => folders.iter().try_for_each(|folder| sync_dir(folder)),
            },
            _ => Ok(()),
        }
    }
}

/// `syncfs(2)` of the file system holding `path`: every dirty page and
/// pending metadata change on it, one journal commit for all.
fn sync_fs(path: &Path) -> io::Result<()> {
    Ok(rustix::fs::syncfs(File::open(path)?)?)
}

/// Whether `syncfs(2)` reports write-back errors, which Linux does since
/// 5.8; before, it always succeeded, so it cannot vouch for durability.
fn syncfs_reports_errors() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 8)
}

/// The disk's placement primitives for one staged file: names are linked
/// with `link(2)`, which fails rather than replace an existing name, so
/// nothing needs claiming; the folder gaining names is fsynced before any
/// answer (at once, or with its group), because the names found may come
/// from a racing upload that has not fsynced it yet.
struct DiskPlacement<'a> {
    store: &'a DiskStore,
    folder: PathBuf,
    /// Written and durable before any name is linked to it.
    staged: &'a Path,
    claim: &'a UploadClaim,
    prestaged: Option<&'a PrestagedChecksum>,
    folders: &'a mut FolderSyncs,
}

impl DiskPlacement<'_> {
    fn at(&self, name: &RelPath) -> PathBuf {
        self.folder.join(name.file_name())
    }
}

impl placement::Backend for DiskPlacement<'_> {
    async fn probe(&mut self, name: &RelPath, line: &str) -> Result<Probe, StoreError> {
        let (target, checksum) = (self.at(name), self.at(&name.checksum_path()));
        let judge = |holds: bool| if holds { Occupant::SameContent } else { Occupant::Other };
        let data = match exists_no_follow(&target)? {
            false => Occupant::Free,
            true => judge(holds_exactly(&target, &self.claim.sha256, self.claim.size)?),
        };
        let checksum = match exists_no_follow(&checksum)? {
            false => Occupant::Free,
            true => judge(holds_line(&checksum, line)?),
        };
        Ok(Probe { data, checksum })
    }

    async fn create_data(&mut self, name: &RelPath) -> Result<Created, StoreError> {
        link_if_absent(self.staged, &self.at(name))
    }

    async fn create_checksum(&mut self, checksum: &RelPath, line: &str) -> Result<Created, StoreError> {
        let staged = self.store.checksum_file_for(line, self.prestaged)?;
        link_if_absent(staged.path(), &self.at(checksum))
    }

    async fn sync(&mut self, _name: &RelPath) -> Result<(), StoreError> {
        Ok(self.folders.sync(&self.folder)?)
    }
}

fn link_if_absent(staged: &Path, target: &Path) -> Result<Created, StoreError> {
    match fs::hard_link(staged, target) {
        Ok(()) => Ok(Created::Created),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Existed),
        Err(e) => Err(e.into()),
    }
}

/// Runs a placement whose primitives never wait (plain file-system calls,
/// on the blocking thread this is called on) to its end, in one poll.
fn run_ready<T>(placing: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut placing = std::pin::pin!(placing);
    match placing.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::Error::other("a placement on disk waited, which it never does").into()),
    }
}

/// A group's checksum file, written with its data before their one sync,
/// for the name the file is most likely placed under.
#[derive(Debug)]
struct PrestagedChecksum {
    line: String,
    name: StagingName,
}

/// The staged checksum file a placement links.
enum ChecksumFile<'a> {
    Prestaged(&'a StagingName),
    Own(StagingName),
}

impl ChecksumFile<'_> {
    fn path(&self) -> &Path {
        match self {
            Self::Prestaged(name) => &name.0,
            Self::Own(name) => &name.0,
        }
    }
}

impl DiskStore {
    /// Puts the staged file under the claimed path's stored name, or, when
    /// that holds other content, under the first of its conflict names that
    /// is free or holds these bytes (`placement::place`).
    fn place(
        &self,
        staged: &Path,
        device_dir: &Path,
        claim: &UploadClaim,
        prestaged: Option<&PrestagedChecksum>,
        folders: &mut FolderSyncs,
    ) -> Result<Committed, StoreError> {
        let device_folder = device_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Named apart from the rest: the device folder's name is the ID,
        // which must not appear in a message sent back.
        create_dirs(&self.root, [device_folder]).map_err(|e| match e.kind() {
            io::ErrorKind::NotADirectory => StoreError::Conflict(
                "the device's folder on the receiver is not a real folder; ask the admin".to_owned(),
            ),
            _ => StoreError::Io(e),
        })?;
        // Every candidate name lies in the sent path's folder.
        let folder = create_dirs(device_dir, claim.path.folders()).map_err(|e| match e.kind() {
            io::ErrorKind::NotADirectory => {
                StoreError::Conflict(format!("cannot store {:?}: {e} on the receiver", claim.path.as_str()))
            }
            _ => StoreError::Io(e),
        })?;
        let mut backend = DiskPlacement { store: self, folder, staged, claim, prestaged, folders };
        run_ready(placement::place(&mut backend, claim))
    }

    /// A staged checksum file holding `line`: the one a group wrote with its
    /// data, and made durable with it, when it holds that line (the name was
    /// the first candidate, as it nearly always is); else one written and
    /// fsynced now, as it must be durable before its name is.
    fn checksum_file_for<'a>(
        &self,
        line: &str,
        prestaged: Option<&'a PrestagedChecksum>,
    ) -> io::Result<ChecksumFile<'a>> {
        Ok(match prestaged.filter(|ready| ready.line == line) {
            Some(ready) => ChecksumFile::Prestaged(&ready.name),
            None => ChecksumFile::Own(self.staged_checksum_file(line)?),
        })
    }

    /// Commits a group of held files of one device: their data and
    /// checksum files written to staging, made durable together (one
    /// `syncfs`, or an fsync each where that cannot report errors), then
    /// each placed as a single upload is, and their folders made durable
    /// together. Only then does any of them count as stored.
    fn commit_group(
        &self,
        device_dir: &Path,
        files: &[HeldFile],
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        self.check_room(files.iter().map(|held| held.checked.claim().size).sum())?;
        let mut staged = Vec::with_capacity(files.len());
        for held in files {
            let (data, mut out) = self.new_staging_file("upload")?;
            for chunk in &held.bytes {
                out.write_all(chunk)?;
            }
            let [first, ..] = held.checked.claim().path.store_candidates(&held.checked.claim().sha256);
            let line = first.checksum_line(&held.checked.claim().sha256);
            let (checksum, mut checksum_out) = self.new_staging_file("checksum")?;
            checksum_out.write_all(line.as_bytes())?;
            if !self.syncfs_reports_errors {
                out.sync_all()?;
                checksum_out.sync_all()?;
            }
            staged.push((data, PrestagedChecksum { line, name: checksum }));
        }
        if self.syncfs_reports_errors {
            sync_fs(&self.staging)?;
        }
        let mut folders = FolderSyncs::group(self);
        let results = files
            .iter()
            .zip(&staged)
            .map(|(held, (data, checksum))| {
                self.place(&data.0, device_dir, held.checked.claim(), Some(checksum), &mut folders)
            })
            .collect();
        folders.finish()?;
        Ok(results)
    }

    /// A checksum file in staging, written and fsynced like data.
    fn staged_checksum_file(&self, line: &str) -> io::Result<StagingName> {
        let (name, mut file) = self.new_staging_file("checksum")?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        Ok(name)
    }
}

/// Whether `path` is a regular file (not a link) holding exactly `line`.
fn holds_line(path: &Path, line: &str) -> io::Result<bool> {
    holds_exactly(path, &Sha256Digest::of_bytes(line.as_bytes()), line.len() as u64)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}
