//! What every request needs, shared by the server (`app`) and the
//! endpoints (`handlers`, `status`, `update`).

use std::sync::Arc;
use std::time::Duration;

use crate::client_addr::TrustedProxies;
use crate::fleet::FleetStatus;
use crate::ids::IdsFile;
use crate::limits::{AuthThrottle, Limits, UploadSlots};
use crate::metrics::Metrics;
use crate::publish::PublishFolder;
use crate::summary::Summary;

/// The accepted devices, the store, the limits with their live counters,
/// and what the operator's endpoints show. Made only by [`crate::open`],
/// from a validated [`crate::Config`].
#[derive(Debug)]
pub struct AppState<S> {
    pub(crate) ids: IdsFile,
    pub(crate) store: S,
    pub(crate) limits: Limits,
    pub(crate) slots: Arc<UploadSlots>,
    pub(crate) throttle: AuthThrottle,
    pub(crate) fleet: FleetStatus,
    /// This receiver's part of the fleet summary in the store.
    pub(crate) summary: Summary,
    /// How often the fleet status is re-read from the store (never: `None`).
    pub(crate) fleet_refresh: Option<Duration>,
    /// How often this receiver's record in the summary is rewritten.
    pub(crate) summary_every: Duration,
    /// Whose forwarding headers name the client (see `client_addr`).
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) metrics: Metrics,
    /// The releases, when the receiver publishes (`--publish`).
    pub(crate) publish: Option<Arc<PublishFolder>>,
}

impl<S> AppState<S> {
    /// The store uploads go to.
    pub fn store(&self) -> &S {
        &self.store
    }
}
