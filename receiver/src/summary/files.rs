//! Where the summary's records live: small named files in `.summary/`
//! beside the device folders, on disk or as objects in the bucket. Each is
//! replaced whole and atomically (a rename on disk, a PUT on S3), so a
//! reader sees an old record or a new one, never a mix.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use logferry_common::durable::{create_dirs, sync_dir};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::TryRng;
use rand::rngs::SysRng;

use crate::store::AnyStore;

/// The folder of the summary, in the store; not a device folder, so no
/// inventory lists it.
pub const SUMMARY_DIR: &str = ".summary";

/// Attempts at writing a record to the bucket.
const WRITE_TRIES: u32 = 3;

/// A record's name and what changes whenever it is replaced (size and
/// modification time on disk, the ETag on S3).
pub type Listed = (String, String);

#[derive(Debug, Clone)]
pub enum SummaryFiles {
    Disk(PathBuf),
    S3 { bucket: AmazonS3, dir: Path },
}

impl SummaryFiles {
    /// The summary's place in `store`, created on disk if missing.
    pub async fn of(store: &AnyStore) -> io::Result<Self> {
        Ok(match store {
            AnyStore::Disk(disk) => {
                let root = disk.root().to_owned();
                blocking(move || create_dirs(&root, [SUMMARY_DIR])).await?;
                Self::Disk(disk.root().join(SUMMARY_DIR))
            }
            AnyStore::S3(s3) => {
                let (bucket, root) = s3.client_and_root();
                let dir = match root {
                    Some(root) => root.clone().join(SUMMARY_DIR),
                    None => Path::from(SUMMARY_DIR),
                };
                Self::S3 { bucket, dir }
            }
        })
    }

    /// Every record (`*.json`), in no order: one request per thousand on S3.
    pub async fn list(&self) -> io::Result<Vec<Listed>> {
        match self {
            Self::Disk(dir) => {
                let dir = dir.clone();
                blocking(move || {
                    let mut listed = Vec::new();
                    for entry in fs::read_dir(&dir)? {
                        let entry = entry?;
                        let Some(name) = entry.file_name().to_str().filter(|n| is_record(n)).map(str::to_owned) else {
                            continue;
                        };
                        let meta = entry.metadata()?;
                        let changed = meta.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        listed.push((name, format!("{}-{}", changed.as_nanos(), meta.len())));
                    }
                    Ok(listed)
                })
                .await
            }
            Self::S3 { bucket, dir } => {
                let objects: Vec<_> = bucket.list(Some(dir)).try_collect().await.map_err(s3_error)?;
                Ok(objects
                    .into_iter()
                    .filter_map(|object| {
                        let name = object.location.filename().filter(|n| is_record(n))?.to_owned();
                        let tag = object.e_tag.unwrap_or_else(|| format!("{:?}-{}", object.last_modified, object.size));
                        Some((name, tag))
                    })
                    .collect())
            }
        }
    }

    /// The record `name`; `None` when there is none.
    pub async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Disk(dir) => {
                let path = dir.join(name);
                blocking(move || {
                    let opened = OpenOptions::new()
                        .read(true)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(path);
                    match opened {
                        Ok(mut file) => {
                            let mut bytes = Vec::new();
                            io::Read::read_to_end(&mut file, &mut bytes)?;
                            Ok(Some(bytes))
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await
            }
            Self::S3 { bucket, dir } => match bucket.get(&dir.clone().join(name)).await {
                Ok(got) => Ok(Some(got.bytes().await.map_err(s3_error)?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(s3_error(e)),
            },
        }
    }

    /// Replaces the record `name` with `bytes`, durably: on disk written to a
    /// temporary name and fsynced, renamed over the record, and the folder
    /// fsynced (data before names, as everywhere in the store).
    pub async fn write(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        match self {
            Self::Disk(dir) => {
                let (dir, name) = (dir.clone(), name.to_owned());
                blocking(move || {
                    let mut nonce = [0u8; 8];
                    SysRng.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
                    let temporary = dir.join(format!(".{name}.{}", hex::encode(nonce)));
                    let written = (|| {
                        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temporary)?;
                        file.write_all(&bytes)?;
                        file.sync_all()?;
                        fs::rename(&temporary, dir.join(&name))
                    })();
                    if written.is_err() {
                        let _ = fs::remove_file(&temporary);
                    }
                    written?;
                    sync_dir(&dir)
                })
                .await
            }
            Self::S3 { bucket, dir } => {
                let (key, payload) = (dir.clone().join(name), PutPayload::from(bytes));
                let mut tries = 1;
                // A pooled connection the server has closed fails at once
                // ("error sending request"); a new one goes through.
                loop {
                    match bucket.put(&key, payload.clone()).await {
                        Ok(_) => return Ok(()),
                        Err(_) if tries < WRITE_TRIES => tries += 1,
                        Err(e) => return Err(s3_error(e)),
                    }
                }
            }
        }
    }

    /// Removes the record `name`, if it is there.
    pub async fn remove(&self, name: &str) -> io::Result<()> {
        match self {
            Self::Disk(dir) => {
                let path = dir.join(name);
                blocking(move || match fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
            }
            Self::S3 { bucket, dir } => match bucket.delete(&dir.clone().join(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_error(e)),
            },
        }
    }
}

/// A record's name: not a temporary file of [`SummaryFiles::write`].
fn is_record(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.')
}

fn s3_error(err: object_store::Error) -> io::Error {
    io::Error::other(format!("in the object store: {err}"))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}
