//! The logferry receiver: accepts signed uploads from devices listed in the
//! ids file, verifies each file's size and SHA-256 while streaming it to a
//! staging file (or into an object store), and only then commits it durably
//! under the device's folder.
//!
//! `main.rs` turns the command line into a [`Config`]; everything here works
//! from that and never sees the argument parser.

pub mod app;
pub mod auth;
pub mod batch;
pub mod client_addr;
pub mod config;
pub mod error;
pub mod fleet;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod log_fields;
pub mod metrics;
pub mod publish;
pub mod state;
pub mod status;
pub mod store;
pub mod summary;
pub mod tls;
pub mod update;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub use app::{Serving, configure, run};
pub use client_addr::TrustedProxies;
pub use config::{Config, ConfigError, DEFAULT_FLEET_REFRESH, DEFAULT_STALE_AFTER, Options, StoreLocation};
use fleet::FleetStatus;
use ids::{IdsError, IdsFile};
pub use limits::Limits;
use limits::{AuthThrottle, UploadSlots};
pub use publish::Publish;
use publish::{PublishError, PublishFolder};
pub use state::AppState;
use store::AnyStore;
use store::StoreError;
use store::disk::DiskStore;
use store::s3::S3Store;
use summary::{Summary, SummaryError};
use tls::TlsError;
pub use tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Ids(#[from] IdsError),
    #[error("cannot use the store folder {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
    #[error("cannot use the object store {location}: {source}")]
    ObjectStore { location: String, source: StoreError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Summary(#[from] SummaryError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A blocking start-up step did not finish (the runtime is shutting down).
    #[error("start-up was interrupted: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

/// Everything `run` needs: the request state and, for HTTPS, the TLS setup.
#[derive(Debug)]
pub struct Ready {
    pub state: AppState<AnyStore>,
    pub tls: Option<rustls::ServerConfig>,
}

/// Loads the ids file (strictly: a malformed line stops start-up) and the
/// TLS files, opens the store (clearing staging files an earlier crash left
/// behind, on disk; an object store's are its lifecycle rule's job), and
/// reads the fleet status from the store's summary (rebuilt from what the
/// store holds when missing, see [`summary`]); with a publish
/// folder, takes its settled releases. Run it on the runtime that then
/// serves: an object store's client, and the connections its listing
/// opened, stay with the store.
pub async fn open(config: &Config) -> Result<Ready, StartupError> {
    let local = config.clone();
    // Deriving every device's key and hashing the releases take a while.
    let (ids, tls, publish) = tokio::task::spawn_blocking(move || -> Result<_, StartupError> {
        let ids = IdsFile::load_strict(&local.ids_file)?;
        let tls = local.tls.as_ref().map(tls::load).transpose()?;
        let publish = local.publish.map(PublishFolder::open).transpose()?.map(Arc::new);
        Ok((ids, tls, publish))
    })
    .await??;
    let store = open_store(config).await?;
    let (summary, shown) = Summary::open(&store, config.summary_every()).await.map_err(|err| match &config.store {
        // The first request to the bucket: a wrong endpoint or key shows here.
        StoreLocation::S3(settings) => StartupError::ObjectStore {
            location: settings.to_string(),
            source: StoreError::Io(std::io::Error::other(err.to_string())),
        },
        StoreLocation::Disk(_) => err.into(),
    })?;
    let devices = ids.current().len();
    if devices == 0 {
        tracing::warn!(file = %config.ids_file.display(), "no devices are listed yet; add one with `receiver add-device`");
    }
    tracing::info!(
        devices,
        ids = %config.ids_file.display(),
        store = %config.store,
        publish = publish.as_ref().map(|p| p.dir().display().to_string()),
        trusted_proxies = %config.trusted_proxies,
        "receiver ready"
    );
    let fleet = FleetStatus::from_summary(&shown, config.stale_after, SystemTime::now());
    let limits = config.limits.clone();
    let state = AppState {
        ids,
        store,
        slots: UploadSlots::new(&limits),
        throttle: AuthThrottle::new(&limits),
        limits,
        fleet,
        summary,
        fleet_refresh: config.fleet_refresh,
        summary_every: config.summary_every(),
        trusted_proxies: config.trusted_proxies.clone(),
        metrics: Default::default(),
        publish,
    };
    Ok(Ready { state, tls })
}

/// Opens the store. On S3, the summary's listing of the bucket before
/// serving makes a wrong endpoint or key stop start-up instead of failing
/// every upload.
async fn open_store(config: &Config) -> Result<AnyStore, StartupError> {
    match &config.store {
        StoreLocation::Disk(dir) => {
            let (root, min_free) = (dir.clone(), config.limits.min_free_space);
            let (store, stale) = tokio::task::spawn_blocking(move || DiskStore::open(&root, min_free))
                .await?
                .map_err(|source| StartupError::Store { path: dir.clone(), source })?;
            if stale > 0 {
                tracing::warn!(removed = stale, "removed unfinished uploads left in staging by an earlier stop");
            }
            Ok(AnyStore::Disk(store))
        }
        StoreLocation::S3(settings) => {
            let refused = |source| StartupError::ObjectStore { location: settings.to_string(), source };
            let store = S3Store::new(settings).map_err(refused)?;
            Ok(AnyStore::S3(store))
        }
    }
}

/// `receiver reindex`: opens the store and rebuilds its fleet summary from
/// what it holds; returns how many files and devices it counted.
pub async fn reindex(config: &Config) -> Result<(u64, usize), StartupError> {
    let store = open_store(config).await?;
    Ok(summary::reindex(&store).await?)
}
