//! Counters for `GET /metrics`, in the Prometheus text exposition format
//! (version 0.0.4). Hand-written: a few counters, one gauge and one
//! histogram need less code than a metrics library's registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use logferry_common::update::UpdateOutcome;
use logferry_common::wire::{ErrorCode, UploadOutcome};

use crate::fleet::{DeviceState, FleetReport, UpdateState};

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds: quick answers up to the
/// minutes a large upload over a slow link takes.
const LATENCY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`].
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// The receiver's counters since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Uploads by (outcome, reason); reason is empty unless rejected.
    uploads: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    stored_bytes: AtomicU64,
    auth_failures: AtomicU64,
    in_flight: AtomicU64,
    /// Request latency by route pattern.
    latency: Mutex<BTreeMap<String, Histogram>>,
    update_polls: AtomicU64,
    update_content_bytes: AtomicU64,
    /// Update reports by outcome.
    update_reports: Mutex<BTreeMap<&'static str, u64>>,
}

/// The outcomes a report may carry, as the metrics list them.
const REPORTED: [UpdateOutcome; 4] =
    [UpdateOutcome::Updated, UpdateOutcome::RolledBack, UpdateOutcome::Failed, UpdateOutcome::Unknown];

/// Counts an upload in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn upload_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn upload_done(&self, outcome: UploadOutcome, size: u64) {
        if outcome == UploadOutcome::Stored {
            self.stored_bytes.fetch_add(size, Ordering::Relaxed);
        }
        self.count_upload(outcome.as_str(), "");
    }

    pub fn upload_rejected(&self, code: ErrorCode) {
        self.count_upload("rejected", code.as_str());
    }

    fn count_upload(&self, outcome: &'static str, reason: &'static str) {
        *self.uploads.lock().unwrap_or_else(PoisonError::into_inner).entry((outcome, reason)).or_default() += 1;
    }

    pub fn update_polled(&self) {
        self.update_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes of published content as they are sent.
    pub fn update_content_sent(&self, bytes: u64) {
        self.update_content_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn update_reported(&self, outcome: UpdateOutcome) {
        *self.update_reports.lock().unwrap_or_else(PoisonError::into_inner).entry(outcome.as_str()).or_default() += 1;
    }

    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a request to `route` (a route pattern, never a
    /// client's path, so the label set stays small) took.
    pub fn request_done(&self, route: &str, took: Duration) {
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        latency.entry(route.to_owned()).or_default().observe(took.as_secs_f64());
    }

    /// Every metric, with the per-device ones taken from `fleet`.
    pub fn render(&self, fleet: &FleetReport) -> String {
        let mut out = String::new();
        let uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner).clone();
        header(
            &mut out,
            "logferry_uploads_total",
            "counter",
            "Uploads answered, by outcome (and reason when rejected).",
        );
        for outcome in [UploadOutcome::Stored, UploadOutcome::AlreadyStored].map(UploadOutcome::as_str) {
            let count = uploads.get(&(outcome, "")).copied().unwrap_or(0);
            sample(&mut out, "logferry_uploads_total", &[("outcome", outcome)], count as f64);
        }
        for ((outcome, reason), count) in uploads.iter().filter(|((outcome, _), _)| *outcome == "rejected") {
            sample(&mut out, "logferry_uploads_total", &[("outcome", outcome), ("reason", reason)], *count as f64);
        }
        header(&mut out, "logferry_stored_bytes_total", "counter", "Bytes of newly stored files.");
        sample(&mut out, "logferry_stored_bytes_total", &[], self.stored_bytes.load(Ordering::Relaxed) as f64);
        header(&mut out, "logferry_auth_failures_total", "counter", "Requests refused because authentication failed.");
        sample(&mut out, "logferry_auth_failures_total", &[], self.auth_failures.load(Ordering::Relaxed) as f64);
        header(&mut out, "logferry_uploads_in_flight", "gauge", "Uploads being received now.");
        sample(&mut out, "logferry_uploads_in_flight", &[], self.in_flight.load(Ordering::Relaxed) as f64);

        let name = "logferry_request_duration_seconds";
        header(&mut out, name, "histogram", "Time from a request's arrival to its answer, by route.");
        let latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (route, histogram) in &latency {
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
                sample(
                    &mut out,
                    &format!("{name}_bucket"),
                    &[("route", route), ("le", &bound.to_string())],
                    count as f64,
                );
            }
            let route = [("route", route.as_str())];
            sample(&mut out, &format!("{name}_bucket"), &[route[0], ("le", "+Inf")], histogram.count as f64);
            sample(&mut out, &format!("{name}_sum"), &route, histogram.sum);
            sample(&mut out, &format!("{name}_count"), &route, histogram.count as f64);
        }

        header(&mut out, "logferry_devices", "gauge", "Devices listed in the ids file, by state.");
        for (state, label) in [(DeviceState::Ok, "ok"), (DeviceState::Stale, "stale"), (DeviceState::Never, "never")] {
            let count = fleet.devices.iter().filter(|d| d.state == state).count();
            sample(&mut out, "logferry_devices", &[("state", label)], count as f64);
        }
        header(&mut out, "logferry_update_polls_total", "counter", "Verified polls for a device's release.");
        sample(&mut out, "logferry_update_polls_total", &[], self.update_polls.load(Ordering::Relaxed) as f64);
        let name = "logferry_update_content_bytes_total";
        header(&mut out, name, "counter", "Bytes of published files sent to devices.");
        sample(&mut out, name, &[], self.update_content_bytes.load(Ordering::Relaxed) as f64);
        let name = "logferry_update_reports_total";
        header(&mut out, name, "counter", "Update reports from devices, by outcome.");
        let reports = self.update_reports.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for outcome in REPORTED.map(UpdateOutcome::as_str) {
            sample(&mut out, name, &[("outcome", outcome)], reports.get(outcome).copied().unwrap_or(0) as f64);
        }
        let name = "logferry_devices_update";
        header(&mut out, name, "gauge", "Devices listed in the ids file, by where they stand with their release.");
        for state in UpdateState::ALL {
            let count = fleet.devices.iter().filter(|d| d.update.as_ref().is_some_and(|u| u.state == state)).count();
            sample(&mut out, name, &[("state", state.as_str())], count as f64);
        }
        let name = "logferry_device_last_upload_timestamp_seconds";
        header(&mut out, name, "gauge", "When each device last uploaded (Unix time), by masked ID and label.");
        for device in &fleet.devices {
            if let Some(last) = &device.last_upload {
                let labels = [("device", device.device.as_str()), ("label", device.label.as_deref().unwrap_or(""))];
                sample(&mut out, name, &labels, last.unix as f64);
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        let _ = write!(out, "{{{}}}", pairs.join(","));
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let metrics = Metrics::default();
        metrics.upload_done(UploadOutcome::Stored, 100);
        metrics.upload_done(UploadOutcome::AlreadyStored, 100);
        metrics.upload_rejected(ErrorCode::ChecksumMismatch);
        metrics.auth_failed();
        let _in_flight = metrics.upload_started();
        metrics.request_done("/v1/upload", Duration::from_millis(30));
        metrics.update_polled();
        metrics.update_content_sent(42);
        metrics.update_reported(UpdateOutcome::RolledBack);
        let fleet = FleetReport {
            generated_at: crate::fleet::Timestamp { utc: String::new(), unix: 0 },
            stale_after_seconds: 0,
            devices: Vec::new(),
            recent_uploads: Vec::new(),
        };
        let text = metrics.render(&fleet);
        for line in [
            "logferry_uploads_total{outcome=\"stored\"} 1",
            "logferry_uploads_total{outcome=\"already_stored\"} 1",
            "logferry_uploads_total{outcome=\"rejected\",reason=\"checksum_mismatch\"} 1",
            "logferry_stored_bytes_total 100",
            "logferry_auth_failures_total 1",
            "logferry_uploads_in_flight 1",
            "logferry_request_duration_seconds_bucket{route=\"/v1/upload\",le=\"0.025\"} 0",
            "logferry_request_duration_seconds_bucket{route=\"/v1/upload\",le=\"0.05\"} 1",
            "logferry_request_duration_seconds_bucket{route=\"/v1/upload\",le=\"+Inf\"} 1",
            "logferry_request_duration_seconds_count{route=\"/v1/upload\"} 1",
            "logferry_devices{state=\"never\"} 0",
            "logferry_update_polls_total 1",
            "logferry_update_content_bytes_total 42",
            "logferry_update_reports_total{outcome=\"rolled_back\"} 1",
            "logferry_update_reports_total{outcome=\"updated\"} 0",
            "logferry_devices_update{state=\"behind\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
