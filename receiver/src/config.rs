//! The validated configuration of a receiver.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::wire::DEFAULT_PORT;

use crate::client_addr::TrustedProxies;
use crate::limits::Limits;
use crate::publish::Publish;
use crate::store::s3::S3Settings;
use crate::tls::TlsFiles;

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

/// What the operator asked for, before validation.
#[derive(Debug, Clone)]
pub struct Options {
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

impl Options {
    /// The defaults of the command line (every interface, port 3500, the
    /// default limits, plain HTTP, no proxies, nothing published) for this
    /// ids file and store.
    pub fn new(ids_file: impl Into<PathBuf>, store: StoreLocation) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            ids_file: ids_file.into(),
            store,
            limits: Limits::default(),
            tls: None,
            stale_after: DEFAULT_STALE_AFTER,
            fleet_refresh: Some(DEFAULT_FLEET_REFRESH),
            trusted_proxies: TrustedProxies::default(),
            publish: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A count or duration that must be positive is zero: no upload could
    /// ever take a slot, every request would time out, or a task would spin.
    #[error("{0} must be more than 0")]
    Zero(&'static str),
}

/// A receiver configuration that passed [`Config::new`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) ids_file: PathBuf,
    pub(crate) store: StoreLocation,
    pub(crate) limits: Limits,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) stale_after: Duration,
    pub(crate) fleet_refresh: Option<Duration>,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) publish: Option<Publish>,
}

impl Config {
    /// Refuses what the receiver cannot run with; nothing is opened yet.
    /// Each check is named by its command-line option.
    pub fn new(options: Options) -> Result<Self, ConfigError> {
        let Options { listen, ids_file, store, limits, tls, stale_after, fleet_refresh, trusted_proxies, publish } =
            options;
        let positive = [
            ("--max-uploads", limits.max_uploads > 0),
            ("--max-uploads-per-device", limits.max_uploads_per_device > 0),
            ("--head-timeout", !limits.head_timeout.is_zero()),
            ("--idle-timeout", !limits.idle_timeout.is_zero()),
            ("--partial-ttl", !limits.partial_ttl.is_zero()),
            ("--fleet-refresh", fleet_refresh.is_none_or(|every| !every.is_zero())),
        ];
        if let Some((option, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(ConfigError::Zero(option));
        }
        Ok(Self { listen, ids_file, store, limits, tls, stale_after, fleet_refresh, trusted_proxies, publish })
    }

    /// The address to serve on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// How often this receiver rewrites its record in the fleet summary:
    /// every fleet refresh, or as often as the default one when others'
    /// uploads are not re-read, so that a record left by a crash is still
    /// told from a live one's.
    pub(crate) fn summary_every(&self) -> Duration {
        self.fleet_refresh.unwrap_or(DEFAULT_FLEET_REFRESH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, change: impl FnOnce(&mut Options), expected: Result<(), ConfigError>) {
        let mut options = Options::new("ids.txt", StoreLocation::Disk("received_files".into()));
        change(&mut options);
        assert_eq!(Config::new(options).map(drop), expected, "{name}");
    }

    #[test]
    fn zero_limits_are_refused_and_the_defaults_pass() {
        let zero = |option| Err(ConfigError::Zero(option));
        check("defaults", |_| {}, Ok(()));
        check("no upload slots", |o| o.limits.max_uploads = 0, zero("--max-uploads"));
        check("no slots per device", |o| o.limits.max_uploads_per_device = 0, zero("--max-uploads-per-device"));
        check("no time for the head", |o| o.limits.head_timeout = Duration::ZERO, zero("--head-timeout"));
        check("no time for a body", |o| o.limits.idle_timeout = Duration::ZERO, zero("--idle-timeout"));
        check("partials kept for no time", |o| o.limits.partial_ttl = Duration::ZERO, zero("--partial-ttl"));
        check("a refresh that would spin", |o| o.fleet_refresh = Some(Duration::ZERO), zero("--fleet-refresh"));
        check("no refresh", |o| o.fleet_refresh = None, Ok(()));
        check("no waiting for a slot", |o| o.limits.queue_wait = Duration::ZERO, Ok(()));
        check("one slot", |o| o.limits.max_uploads = 1, Ok(()));
    }
}
