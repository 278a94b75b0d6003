//! What keeps one client from taking the receiver for itself: a size limit,
//! upload slots overall and per device, deadlines for slow clients, and a
//! throttle on failed authentications per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use logferry_common::KeyId;

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
    /// How long the receiver waits for the request head.
    pub header_timeout: Duration,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: 4 << 30,
            max_uploads: 64,
            max_uploads_per_device: 4,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            min_bytes_per_sec: 8 << 10,
            auth_failures_per_minute: 30,
            min_free_space: 512 << 20,
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

/// Parses `1048576`, `512KiB`, `512MiB`, `2GiB`, `1.5GB`, … (binary and
/// decimal units, any case).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let bytes = value * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes <= u64::MAX as f64) {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

/// Like [`parse_byte_size`], but also accepts 0 (for "no reserve").
pub fn parse_byte_size_or_zero(text: &str) -> Result<u64, String> {
    if text.trim() == "0" { Ok(0) } else { parse_byte_size(text) }
}

/// Upload slots, overall and per device.
#[derive(Debug)]
pub struct UploadSlots {
    max_total: usize,
    max_per_device: usize,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    per_device: HashMap<KeyId, usize>,
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<UploadSlots>,
    key: KeyId,
}

/// How long a client is asked to wait when every slot is taken.
const BUSY_RETRY_AFTER_SECS: u64 = 2;

impl UploadSlots {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_uploads,
            max_per_device: limits.max_uploads_per_device,
            taken: Mutex::default(),
        })
    }

    pub fn try_take(self: &Arc<Self>, key: &KeyId) -> Result<Slot, ApiError> {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = taken.per_device.get(key).copied().unwrap_or(0);
        if taken.total >= self.max_total {
            return Err(ApiError::Busy { what: "all upload slots are in use", retry_after: BUSY_RETRY_AFTER_SECS });
        }
        if mine >= self.max_per_device {
            return Err(ApiError::Busy {
                what: "this device already has the most uploads in progress it may have",
                retry_after: BUSY_RETRY_AFTER_SECS,
            });
        }
        taken.total += 1;
        taken.per_device.insert(key.clone(), mine + 1);
        Ok(Slot { slots: Arc::clone(self), key: key.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.total -= 1;
        if let Some(count) = taken.per_device.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                taken.per_device.remove(&self.key);
            }
        }
    }
}

/// Counts failed authentications per address in one-minute windows.
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

    /// Refuses an address that used up its failures for this window.
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        let Some(peer) = peer else { return Ok(()) };
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(&peer) {
            Some(&(start, failures)) if failures >= self.per_minute && now < start + WINDOW => {
                let retry_after = (start + WINDOW - now).as_secs().max(1);
                Err(ApiError::RateLimited { retry_after })
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, peer: Option<IpAddr>, now: Instant) {
        let Some(peer) = peer else { return };
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (start, _)| now < *start + WINDOW);
        }
        let window = windows.entry(peer).or_insert((now, 0));
        if now >= window.0 + WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("1048576", Ok(1 << 20)),
            ("512MiB", Ok(512 << 20)),
            ("2GiB", Ok(2 << 30)),
            ("2 gib", Ok(2 << 30)),
            ("1.5GB", Ok(1_500_000_000)),
            ("10kb", Ok(10_000)),
            ("0", Err(())),
            ("", Err(())),
            ("MiB", Err(())),
            ("12 parsecs", Err(())),
            ("-5", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_byte_size(text).map_err(|_| ()), *expected, "{text:?}");
        }
    }

    fn key(n: u8) -> KeyId {
        logferry_common::DeviceId::from_bytes([n; 8]).key_id()
    }

    #[test]
    fn slots_are_bounded_overall_and_per_device_and_freed_on_drop() {
        let slots = UploadSlots::new(&Limits { max_uploads: 3, max_uploads_per_device: 2, ..Limits::default() });
        let a1 = slots.try_take(&key(1)).expect("free");
        let a2 = slots.try_take(&key(1)).expect("free");
        assert!(matches!(slots.try_take(&key(1)), Err(ApiError::Busy { .. })), "per device");
        let _b1 = slots.try_take(&key(2)).expect("free");
        assert!(matches!(slots.try_take(&key(3)), Err(ApiError::Busy { .. })), "overall");
        drop(a1);
        let _c1 = slots.try_take(&key(3)).expect("freed");
        drop(a2);
        assert!(slots.try_take(&key(1)).is_ok());
    }

    #[test]
    fn throttle_counts_failures_per_address_per_minute() {
        let throttle = AuthThrottle::new(&Limits { auth_failures_per_minute: 2, ..Limits::default() });
        let (bad, good): (IpAddr, IpAddr) = ("10.9.9.9".parse().expect("ip"), "10.1.1.1".parse().expect("ip"));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(throttle.check(Some(bad), t0).is_ok());
            throttle.record_failure(Some(bad), t0);
        }
        assert!(matches!(throttle.check(Some(bad), t0), Err(ApiError::RateLimited { retry_after: 60 })));
        assert!(throttle.check(Some(good), t0).is_ok(), "other addresses unaffected");
        assert!(throttle.check(Some(bad), t0 + WINDOW).is_ok(), "a new window starts afresh");
    }
}
