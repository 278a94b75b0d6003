//! The logferry receiver: accepts signed uploads from devices listed in the
//! ids file, verifies each file's size and SHA-256 while streaming it to a
//! staging file, and only then commits it durably under the device's folder.
//!
//! `main.rs` turns the command line into a [`Config`]; everything here works
//! from that and never sees the argument parser.

pub mod app;
pub mod auth;
pub mod error;
pub mod fleet;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod status;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use app::{AppState, BackgroundReceiver, configure, run};
use fleet::FleetStatus;
use ids::{IdsError, IdsFile};
pub use limits::Limits;
use limits::{AuthThrottle, UploadSlots};
use store::disk::DiskStore;
use store::{Store, StoreError};
use tls::TlsError;
pub use tls::TlsFiles;

/// A validated receiver configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ids_file: PathBuf,
    pub store_dir: PathBuf,
    pub limits: Limits,
    /// Serve HTTPS with these instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// A device silent for longer than this is marked stale.
    pub stale_after: Duration,
}

/// The status page's default for `stale_after`: a device that has not
/// uploaded for a day needs a look.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Ids(#[from] IdsError),
    #[error("cannot use the store folder {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot list what the store holds, for the fleet status: {0}")]
    Inventory(StoreError),
}

/// Everything `run` needs: the request state and, for HTTPS, the TLS setup.
#[derive(Debug)]
pub struct Ready {
    pub state: AppState<DiskStore>,
    pub tls: Option<rustls::ServerConfig>,
}

/// Loads the ids file (strictly: a malformed line stops start-up) and the
/// TLS files, opens the store, clears staging files an earlier crash left
/// behind, and rebuilds the fleet status from what the store holds.
pub async fn open(config: &Config) -> Result<Ready, StartupError> {
    let ids = IdsFile::load_strict(&config.ids_file)?;
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let (store, stale) = DiskStore::open(&config.store_dir, config.limits.min_free_space)
        .map_err(|source| StartupError::Store { path: config.store_dir.clone(), source })?;
    if stale > 0 {
        tracing::warn!(removed = stale, "removed unfinished uploads left in staging by an earlier stop");
    }
    let devices = ids.current().len();
    if devices == 0 {
        tracing::warn!(file = %config.ids_file.display(), "no devices are listed yet; add one with `receiver add-device`");
    }
    tracing::info!(devices, ids = %config.ids_file.display(), store = %config.store_dir.display(), "receiver ready");
    let inventory = store.inventory().await.map_err(StartupError::Inventory)?;
    let fleet = FleetStatus::from_inventory(inventory, config.stale_after, SystemTime::now());
    let limits = config.limits.clone();
    let state = AppState {
        ids,
        store,
        slots: UploadSlots::new(&limits),
        throttle: AuthThrottle::new(&limits),
        limits,
        fleet,
        metrics: Default::default(),
    };
    Ok(Ready { state, tls })
}

/// [`open`] for callers outside an async runtime, or inside one they cannot
/// block (tests): runs it on a thread of its own.
pub fn open_blocking(config: &Config) -> Result<Ready, StartupError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| StartupError::Store { path: config.store_dir.clone(), source })?;
                runtime.block_on(open(config))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
