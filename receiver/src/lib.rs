//! The logferry receiver: accepts signed uploads from devices listed in the
//! ids file, verifies each file's size and SHA-256 while streaming it to a
//! staging file (or into an object store), and only then commits it durably
//! under the device's folder.
//!
//! `main.rs` turns the command line into a [`Config`]; everything here works
//! from that and never sees the argument parser.

pub mod app;
pub mod auth;
pub mod error;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use app::{AppState, BackgroundReceiver, configure, run};
use ids::{IdsError, IdsFile};
pub use limits::Limits;
use limits::{AuthThrottle, UploadSlots};
use store::disk::DiskStore;
use store::s3::{S3Settings, S3Store};
use store::{AnyStore, StoreError};
use tls::TlsError;
pub use tls::TlsFiles;

/// A validated receiver configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ids_file: PathBuf,
    pub store: StoreLocation,
    pub limits: Limits,
    /// Serve HTTPS with these instead of plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// Where uploads are kept (`--store`).
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A folder on local disk.
    Disk(PathBuf),
    /// A bucket (and prefix) of an S3-compatible object store.
    S3(S3Settings),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(path) => path.display().fmt(f),
            Self::S3(settings) => settings.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Ids(#[from] IdsError),
    #[error("cannot use the store folder {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
    #[error("cannot use the object store {location}: {source}")]
    ObjectStore { location: String, source: StoreError },
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Everything `run` needs: the request state and, for HTTPS, the TLS setup.
#[derive(Debug)]
pub struct Ready {
    pub state: AppState<AnyStore>,
    pub tls: Option<rustls::ServerConfig>,
}

/// Loads the ids file (strictly: a malformed line stops start-up) and the
/// TLS files, opens the store and clears staging files an earlier crash
/// left behind (on disk; an object store's are its lifecycle rule's job).
pub fn open(config: &Config) -> Result<Ready, StartupError> {
    let ids = IdsFile::load_strict(&config.ids_file)?;
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let store = match &config.store {
        StoreLocation::Disk(dir) => {
            let (store, stale) = DiskStore::open(dir, config.limits.min_free_space)
                .map_err(|source| StartupError::Store { path: dir.clone(), source })?;
            if stale > 0 {
                tracing::warn!(removed = stale, "removed unfinished uploads left in staging by an earlier stop");
            }
            AnyStore::Disk(store)
        }
        StoreLocation::S3(settings) => AnyStore::S3(
            open_bucket(settings)
                .map_err(|source| StartupError::ObjectStore { location: settings.to_string(), source })?,
        ),
    };
    let devices = ids.current().len();
    if devices == 0 {
        tracing::warn!(file = %config.ids_file.display(), "no devices are listed yet; add one with `receiver add-device`");
    }
    tracing::info!(devices, ids = %config.ids_file.display(), store = %config.store, "receiver ready");
    let limits = config.limits.clone();
    let state = AppState { ids, store, slots: UploadSlots::new(&limits), throttle: AuthThrottle::new(&limits), limits };
    Ok(Ready { state, tls })
}

/// Checks the bucket before serving, so a wrong endpoint or key stops
/// start-up instead of failing every upload. The check runs on its own
/// runtime with its own client: connections pooled there would not outlive
/// it, so the serving client starts with none.
fn open_bucket(settings: &S3Settings) -> Result<S3Store, StoreError> {
    let probe = S3Store::new(settings)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(probe.check()))
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the bucket check panicked").into()))
    })?;
    S3Store::new(settings)
}
