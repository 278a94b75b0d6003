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
pub mod error;
pub mod fleet;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod log_fields;
pub mod metrics;
pub mod publish;
pub mod status;
pub mod store;
pub mod tls;
pub mod update;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use app::{AppState, BackgroundReceiver, configure, run};
pub use client_addr::TrustedProxies;
use fleet::FleetStatus;
use ids::{IdsError, IdsFile};
pub use limits::Limits;
use limits::{AuthThrottle, UploadSlots};
pub use publish::Publish;
use publish::{PublishError, PublishFolder};
use store::disk::DiskStore;
use store::s3::{S3Settings, S3Store};
use store::{AnyStore, Store, StoreError, StoredFile};
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
    /// A device silent for longer than this is marked stale.
    pub stale_after: Duration,
    /// How often the fleet status is re-read from the store, for receivers
    /// that share one; `None`: only at start.
    pub fleet_refresh: Option<Duration>,
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Publish releases to the devices from this folder (`None`: the
    /// update endpoints say nothing is published).
    pub publish: Option<Publish>,
}

/// The status page's default for `stale_after`: a device that has not
/// uploaded for a day needs a look.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The default for `fleet_refresh`: often enough for a page that speaks in
/// hours, rarely enough that listing a large store costs little.
pub const DEFAULT_FLEET_REFRESH: Duration = Duration::from_secs(5 * 60);

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
    #[error(transparent)]
    Ids(#[from] IdsError),
    #[error("cannot use the store folder {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
    #[error("cannot use the object store {location}: {source}")]
    ObjectStore { location: String, source: StoreError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot list what the store holds, for the fleet status: {0}")]
    Inventory(StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
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
/// rebuilds the fleet status from what the store holds; with a publish
/// folder, takes its settled releases.
pub fn open(config: &Config) -> Result<Ready, StartupError> {
    let ids = IdsFile::load_strict(&config.ids_file)?;
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let (store, inventory) = match &config.store {
        StoreLocation::Disk(dir) => {
            let (store, stale) = DiskStore::open(dir, config.limits.min_free_space)
                .map_err(|source| StartupError::Store { path: dir.clone(), source })?;
            if stale > 0 {
                tracing::warn!(removed = stale, "removed unfinished uploads left in staging by an earlier stop");
            }
            let inventory = on_own_runtime(|| store.inventory()).map_err(StartupError::Inventory)?;
            (AnyStore::Disk(store), inventory)
        }
        StoreLocation::S3(settings) => {
            let (store, inventory) = open_bucket(settings)
                .map_err(|source| StartupError::ObjectStore { location: settings.to_string(), source })?;
            (AnyStore::S3(store), inventory)
        }
    };
    let publish = config.publish.clone().map(PublishFolder::open).transpose()?.map(std::sync::Arc::new);
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
    let fleet = FleetStatus::from_inventory(inventory, config.stale_after, SystemTime::now());
    let limits = config.limits.clone();
    let state = AppState {
        ids,
        store,
        slots: UploadSlots::new(&limits),
        throttle: AuthThrottle::new(&limits),
        limits,
        fleet,
        fleet_refresh: config.fleet_refresh,
        trusted_proxies: config.trusted_proxies.clone(),
        metrics: Default::default(),
        publish,
    };
    Ok(Ready { state, tls })
}

/// Runs one start-up step on a runtime and thread of its own, so that `open`
/// works outside an async runtime and inside one it must not block (tests).
fn on_own_runtime<T: Send, F: Future<Output = Result<T, StoreError>>>(
    step: impl FnOnce() -> F + Send,
) -> Result<T, StoreError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(step()))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Lists the bucket before serving, so that a wrong endpoint or key stops
/// start-up instead of failing every upload, and the fleet status starts
/// from what the bucket holds. The listing uses a client of its own:
/// connections pooled on its short-lived runtime would not outlive it, so
/// the serving client starts with none.
fn open_bucket(settings: &S3Settings) -> Result<(S3Store, Vec<StoredFile>), StoreError> {
    let probe = S3Store::new(settings)?;
    let inventory = on_own_runtime(|| probe.inventory())?;
    Ok((S3Store::new(settings)?, inventory))
}
