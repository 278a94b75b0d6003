//! What keeps one client from taking the receiver for itself: a size limit,
//! upload slots overall and per device (for verified uploads only),
//! deadlines for slow clients, and a throttle on failed authentications per
//! client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use logferry_common::{KeyId, parse_byte_size};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The limits, each with the default a LAN receiver for a few hundred
/// devices wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Uploads in progress at once, over all devices.
    pub max_uploads: usize,
    /// Uploads in progress at once from one device.
    pub max_uploads_per_device: usize,
    /// How long an upload waits for a free slot before it gets 429.
    pub queue_wait: Duration,
    /// How long the receiver waits for the request's headers, and then again
    /// for an upload's signed fields (path, sha256, size): one hard deadline
    /// for what it must read before it knows who is asking.
    pub head_timeout: Duration,
    /// How long the body may stall without a single byte arriving.
    pub idle_timeout: Duration,
    /// Slowest average rate tolerated for a body, after a grace period of
    /// one `idle_timeout`: a trickling client cannot hold a slot forever.
    pub min_bytes_per_sec: u64,
    /// Failed authentications allowed per address per minute.
    pub auth_failures_per_minute: u32,
    /// Free space the store's file system keeps; uploads that would dip
    /// below it are refused (507), before and while they are written.
    pub min_free_space: u64,
    /// How long what a cut-off upload left is kept for a resume after its
    /// last byte arrived.
    pub partial_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: 4 << 30,
            max_uploads: 64,
            // As many as the sender sends at once by default.
            max_uploads_per_device: 16,
            queue_wait: Duration::from_secs(10),
            head_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            min_bytes_per_sec: 8 << 10,
            auth_failures_per_minute: 30,
            min_free_space: 512 << 20,
            partial_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl Limits {
    /// When a body of `size` bytes that started at `start` must have arrived.
    pub fn body_deadline(&self, start: Instant, size: u64) -> Instant {
        let at_min_rate = Duration::from_secs(size / self.min_bytes_per_sec.max(1));
        start + self.idle_timeout + at_min_rate
    }
}

/// Like [`parse_byte_size`], but also accepts 0 (for "no reserve").
pub fn parse_byte_size_or_zero(text: &str) -> Result<u64, String> {
    if text.trim() == "0" { Ok(0) } else { parse_byte_size(text) }
}

/// Upload slots, overall and per device. A request that finds none free
/// waits for one, up to `queue_wait`, before it is told to retry: a burst
/// (a fleet back from an outage) queues instead of storming with retries.
#[derive(Debug)]
pub struct UploadSlots {
    total: Arc<Semaphore>,
    max_per_device: usize,
    per_device: Mutex<HashMap<KeyId, Arc<Semaphore>>>,
    queue_wait: Duration,
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _device: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// How long a client is asked to wait when no slot freed up in time.
const BUSY_RETRY_AFTER_SECS: u64 = 2;

impl UploadSlots {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(limits.max_uploads)),
            max_per_device: limits.max_uploads_per_device,
            per_device: Mutex::default(),
            queue_wait: limits.queue_wait,
        })
    }

    pub async fn take(&self, key: &KeyId) -> Result<Slot, ApiError> {
        let device = {
            let mut per_device = self.per_device.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(per_device.entry(key.clone()).or_insert_with(|| Arc::new(Semaphore::new(self.max_per_device))))
        };
        let deadline = tokio::time::Instant::now() + self.queue_wait;
        let busy = |what| ApiError::Busy { what, retry_after: BUSY_RETRY_AFTER_SECS };
        let device = tokio::time::timeout_at(deadline, device.acquire_owned())
            .await
            .map_err(|_| busy("this device already has the most uploads in progress it may have"))?
            .map_err(|_| busy("the receiver is shutting down"))?;
        let total = tokio::time::timeout_at(deadline, Arc::clone(&self.total).acquire_owned())
            .await
            .map_err(|_| busy("all upload slots are in use"))?
            .map_err(|_| busy("the receiver is shutting down"))?;
        Ok(Slot { _device: device, _total: total })
    }
}

/// Counts failed authentications per client address in one-minute windows.
/// It is there against guessing and log floods, not against devices: an
/// address over its limit gets 429 instead of 401 for its *failures*, and
/// they are no longer logged one by one, but a request from it whose
/// signature verifies is served as usual, so one misbehaving client behind
/// a NAT or a proxy cannot lock out the devices beside it.
#[derive(Debug)]
pub struct AuthThrottle {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered before expired windows are swept out.
const SWEEP_ABOVE: usize = 10_000;

impl AuthThrottle {
    pub fn new(limits: &Limits) -> Self {
        Self { per_minute: limits.auth_failures_per_minute, windows: Mutex::default() }
    }

    /// The 429 that replaces a failure's own answer once the client's
    /// address used up its failures for this window; `None` while it has not.
    pub fn answer(&self, client: Option<IpAddr>, now: Instant) -> Option<ApiError> {
        self.throttled_for(client, now).map(|retry_after| ApiError::RateLimited { retry_after })
    }

    fn throttled_for(&self, client: Option<IpAddr>, now: Instant) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(&client?) {
            Some(&(start, failures)) if failures >= self.per_minute && now < start + WINDOW => {
                Some((start + WINDOW - now).as_secs().max(1))
            }
            _ => None,
        }
    }

    /// Counts a failure; tells whether the address was still within its
    /// limit before it (so whether the failure is worth a log line).
    pub fn record_failure(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let Some(client) = client else { return true };
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (start, _)| now < *start + WINDOW);
        }
        let window = windows.entry(client).or_insert((now, 0));
        if now >= window.0 + WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
        window.1 <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyId {
        logferry_common::DeviceId::from_bytes([n; 8]).derive_key().key_id().clone()
    }

    #[tokio::test]
    async fn slots_are_bounded_overall_and_per_device_queue_briefly_and_free_on_drop() {
        let limits =
            Limits { max_uploads: 3, max_uploads_per_device: 2, queue_wait: Duration::ZERO, ..Limits::default() };
        let slots = UploadSlots::new(&limits);
        let a1 = slots.take(&key(1)).await.expect("free");
        let a2 = slots.take(&key(1)).await.expect("free");
        assert!(matches!(slots.take(&key(1)).await, Err(ApiError::Busy { .. })), "per device");
        let _b1 = slots.take(&key(2)).await.expect("free");
        assert!(matches!(slots.take(&key(3)).await, Err(ApiError::Busy { .. })), "overall");
        drop(a1);
        let _c1 = slots.take(&key(3)).await.expect("freed");
        drop(a2);
        assert!(slots.take(&key(1)).await.is_ok());

        let queued =
            UploadSlots::new(&Limits { max_uploads: 1, queue_wait: Duration::from_secs(5), ..Limits::default() });
        let held = queued.take(&key(1)).await.expect("free");
        let waiter = tokio::spawn({
            let queued = Arc::clone(&queued);
            async move { queued.take(&key(2)).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.expect("joined").is_ok(), "a queued upload gets the freed slot");
    }

    #[test]
    fn throttle_counts_failures_per_address_per_minute() {
        let throttle = AuthThrottle::new(&Limits { auth_failures_per_minute: 2, ..Limits::default() });
        let (bad, good): (IpAddr, IpAddr) = ("10.9.9.9".parse().expect("ip"), "10.1.1.1".parse().expect("ip"));
        let answer = |client, at| throttle.answer(Some(client), at);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(answer(bad, t0).is_none());
            assert!(throttle.record_failure(Some(bad), t0), "within the limit: logged");
        }
        assert!(matches!(answer(bad, t0), Some(ApiError::RateLimited { retry_after: 60 })));
        assert!(!throttle.record_failure(Some(bad), t0), "over the limit: not logged");
        assert!(answer(good, t0).is_none(), "other addresses unaffected");
        assert!(answer(bad, t0 + WINDOW).is_none(), "a new window starts afresh");
    }
}
