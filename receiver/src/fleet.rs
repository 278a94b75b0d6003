//! The fleet status: per device, what has arrived and when, and the last
//! rejection. The page (`GET /`), its JSON twin and the per-device metrics
//! are all rendered from one [`FleetReport`].
//!
//! What was stored comes from the fleet summary ([`crate::summary`]) at
//! start, so it survives restarts, and is updated on each commit; this
//! receiver's own commits since it started are also kept apart
//! ([`FleetStatus::own`]), as its record in the summary.
//! Rejections leave nothing in the store, and the store does not know who
//! sent a file: the last rejection and the last client address are kept in
//! memory only, one of each per device.
//!
//! So are the update polls and reports ([`FleetStatus::record_poll`],
//! [`FleetStatus::record_report`]): the version a device runs and its last
//! attempt survive a restart only through the devices' next polls (and,
//! for the last attempt, their next report).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_common::update::{UpdateOutcome, UpdateReport, Version, bounded_reason};
use logferry_common::wire::{ErrorCode, UploadOutcome, UploadReceipt};
use serde::Serialize;

use crate::ids::{Device, Devices};
use crate::summary::{Tallies, millis, time_of};

/// The window of the "last 24 h" columns.
pub(crate) const RECENT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Uploads listed under "recent uploads".
pub(crate) const RECENT_UPLOADS: usize = 20;

/// What is known of one device folder.
#[derive(Debug, Default)]
struct DeviceRecord {
    files: u64,
    bytes: u64,
    last_upload: Option<SystemTime>,
    /// (stored at, size) of the files stored within [`RECENT_WINDOW`],
    /// oldest first; older ones are dropped as time passes.
    window: VecDeque<(SystemTime, u64)>,
    rejections: u64,
    last_rejection: Option<Rejection>,
    /// Whence the last upload this receiver answered came.
    last_address: Option<IpAddr>,
    /// The device's clock less the receiver's, from its last auth check,
    /// and when that was.
    clock: Option<(i64, SystemTime)>,
    update: UpdateRecord,
}

/// What a device said about its release.
#[derive(Debug, Default, Clone)]
struct UpdateRecord {
    /// The version it runs, from its last poll or `updated` report; the
    /// inner `None`: it said it runs none yet.
    current: Option<Option<Version>>,
    last: Option<Attempt>,
}

/// A device's last reported attempt at a version.
#[derive(Debug, Clone)]
struct Attempt {
    outcome: UpdateOutcome,
    version: Version,
    at: SystemTime,
    reason: Option<String>,
}

impl UpdateRecord {
    fn status(&self, published: Version) -> UpdateStatus {
        let failed_now = self.last.as_ref().filter(|last| last.version == published).map(|last| last.outcome);
        let state = match (self.current, failed_now) {
            (Some(Some(current)), _) if current == published => UpdateState::Current,
            (_, Some(UpdateOutcome::RolledBack)) => UpdateState::RolledBack,
            (_, Some(UpdateOutcome::Failed)) => UpdateState::Failed,
            (Some(_), _) => UpdateState::Behind,
            (None, _) if self.last.is_some() => UpdateState::Behind,
            (None, _) => UpdateState::Unknown,
        };
        UpdateStatus {
            current_version: self.current.flatten(),
            published_version: published,
            state,
            last_outcome: self.last.as_ref().map(|last| last.outcome),
            last_version: self.last.as_ref().map(|last| last.version),
            last_at: self.last.as_ref().map(|last| timestamp(last.at)),
            last_reason: self.last.as_ref().and_then(|last| last.reason.clone()),
        }
    }
}

impl DeviceRecord {
    fn add(&mut self, at: SystemTime, size: u64) {
        self.files += 1;
        self.bytes += size;
        self.last_upload = self.last_upload.max(Some(at));
        self.window.push_back((at, size));
    }

    fn prune(&mut self, now: SystemTime) {
        let since = now.checked_sub(RECENT_WINDOW).unwrap_or(UNIX_EPOCH);
        self.window.retain(|(at, _)| *at > since);
    }
}

#[derive(Debug, Clone)]
struct Rejection {
    at: SystemTime,
    code: ErrorCode,
    message: String,
}

#[derive(Debug, Clone)]
struct RecentUpload {
    device: DeviceFolder,
    masked: String,
    path: String,
    size: u64,
    at: SystemTime,
    outcome: UploadOutcome,
}

/// Records are kept by the device's folder name in the store, its ID:
/// deriving the key ids of the store's folders would cost an Argon2id each.
/// Never shown; only masked IDs leave this module.
type DeviceFolder = String;

#[derive(Debug, Default)]
struct FleetState {
    devices: HashMap<DeviceFolder, DeviceRecord>,
    /// Newest first.
    recent: VecDeque<RecentUpload>,
    /// What this receiver committed since it started (since the last
    /// rebuild of the summary, if one happened meanwhile).
    own: Tallies,
}

impl FleetState {
    fn shown(tallies: &Tallies, now: SystemTime) -> Self {
        let mut state = Self::default();
        for (device, tally) in &tallies.devices {
            let record = state.devices.entry(device.clone()).or_default();
            record.files = tally.files;
            record.bytes = tally.bytes;
            record.last_upload = tally.last_upload.map(time_of);
            let mut window: Vec<_> = tally.window.iter().map(|(at, size)| (time_of(*at), *size)).collect();
            window.sort();
            record.window = window.into();
            record.prune(now);
        }
        state.recent = tallies
            .recent
            .iter()
            .filter_map(|file| {
                Some(RecentUpload {
                    device: file.device.clone(),
                    masked: file.device.parse::<logferry_common::DeviceId>().ok()?.masked(),
                    path: file.path.clone(),
                    size: file.size,
                    at: time_of(file.at),
                    outcome: UploadOutcome::Stored,
                })
            })
            .collect();
        state
    }
}

/// The live fleet status, shared by every request.
#[derive(Debug)]
pub struct FleetStatus {
    stale_after: Duration,
    state: Mutex<FleetState>,
}

impl FleetStatus {
    /// The status of what the summary shows, before this receiver
    /// committed anything.
    pub fn from_summary(shown: &Tallies, stale_after: Duration, now: SystemTime) -> Self {
        Self { stale_after, state: Mutex::new(FleetState::shown(shown, now)) }
    }

    /// Takes what the store shows (files, bytes, last uploads, recent
    /// uploads) from the summary's other parts (`others`) and this
    /// receiver's own, so that receivers sharing one store show the uploads
    /// the others took. Rejections are known only to the receiver that
    /// answered them, and stay.
    pub fn refresh(&self, mut others: Tallies, now: SystemTime) {
        let mut state = self.state();
        others.add(&state.own);
        let mut fresh = FleetState::shown(&others, now);
        fresh.own = std::mem::take(&mut state.own);
        for (key, known) in state.devices.drain() {
            let record = fresh.devices.entry(key).or_default();
            record.rejections = known.rejections;
            record.last_rejection = known.last_rejection;
            record.last_address = known.last_address;
            record.clock = known.clock;
            record.update = known.update;
            // An "already stored" answer shows a live device but leaves no trace in the store.
            record.last_upload = record.last_upload.max(known.last_upload);
        }
        *state = fresh;
    }

    /// This receiver's commits, as its record in the summary.
    pub fn own(&self) -> Tallies {
        let mut state = self.state();
        state.own.prune(millis(SystemTime::now()));
        state.own.clone()
    }

    /// Forgets this receiver's commits from before `from`: a rebuild of the
    /// summary that began then counted them.
    pub fn rebase(&self, from: crate::summary::Millis) {
        let mut state = self.state();
        state.own = state.own.since(from);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a committed upload, sent from `client`. Same bytes already
    /// stored count as an upload (the device is alive) but not as another
    /// file.
    pub fn record_commit(&self, device: &Device, receipt: &UploadReceipt, client: Option<IpAddr>, at: SystemTime) {
        let key = device.id.reveal().to_owned();
        let mut state = self.state();
        let record = state.devices.entry(key.clone()).or_default();
        record.last_address = client;
        match receipt.outcome {
            UploadOutcome::Stored => record.add(at, receipt.size),
            UploadOutcome::AlreadyStored => record.last_upload = record.last_upload.max(Some(at)),
        }
        record.prune(at);
        let (at_ms, own) = (millis(at), &mut state.own);
        match receipt.outcome {
            UploadOutcome::Stored => own.stored(&key, &receipt.stored_as, receipt.size, at_ms, at_ms),
            UploadOutcome::AlreadyStored => own.seen(&key, at_ms),
        }
        state.recent.push_front(RecentUpload {
            device: key,
            masked: device.id.masked(),
            path: receipt.stored_as.clone(),
            size: receipt.size,
            at,
            outcome: receipt.outcome,
        });
        state.recent.truncate(RECENT_UPLOADS);
    }

    /// Keeps the latest rejection of an authenticated device's upload.
    pub fn record_rejection(&self, device: &Device, code: ErrorCode, message: String, at: SystemTime) {
        let mut state = self.state();
        let record = state.devices.entry(device.id.reveal().to_owned()).or_default();
        record.rejections += 1;
        record.last_rejection = Some(Rejection { at, code, message });
    }

    /// Keeps how far a device's clock is off, from a verified request within
    /// the window (a device whose clock is off signs by the receiver's time
    /// and says by how much it corrected, signed). Not a rejection.
    pub fn record_clock(&self, device: &Device, offset: i64, at: SystemTime) {
        self.state().devices.entry(device.id.reveal().to_owned()).or_default().clock = Some((offset, at));
    }

    /// Keeps the version a device's poll says it runs (`None`: none yet).
    pub fn record_poll(&self, device: &Device, current: Option<Version>) {
        self.state().devices.entry(device.id.reveal().to_owned()).or_default().update.current = Some(current);
    }

    /// Keeps a device's report of an attempt (its reason cut to
    /// [`MAX_REASON_BYTES`]); an `updated` one also says what it runs now.
    pub fn record_report(&self, device: &Device, report: &UpdateReport, at: SystemTime) {
        let reason = report.reason.as_deref().map(|reason| bounded_reason(reason).to_owned());
        let mut state = self.state();
        let update = &mut state.devices.entry(device.id.reveal().to_owned()).or_default().update;
        if report.outcome == UpdateOutcome::Updated {
            update.current = Some(Some(report.version));
        }
        update.last = Some(Attempt { outcome: report.outcome, version: report.version, at, reason });
    }

    /// The status of every device listed in the ids file, those that went
    /// quiet first, then those that never uploaded, then the rest, each by
    /// label; with each device's update status when releases are published
    /// (`published` gives the version of a device's release).
    pub fn report(
        &self,
        listed: &Devices,
        published: Option<&dyn Fn(&Device) -> Version>,
        now: SystemTime,
    ) -> FleetReport {
        let mut state = self.state();
        let by_id: HashMap<&str, &Device> = listed.values().map(|d| (d.id.reveal(), d)).collect();
        let mut devices: Vec<DeviceReport> = by_id
            .iter()
            .map(|(id, device)| {
                let record = state.devices.get_mut(*id);
                let masked = device.id.masked();
                let label = device.label.clone();
                let published = published.map(|published| published(device));
                match record {
                    Some(record) => {
                        record.prune(now);
                        DeviceReport::of(masked, label, record, self.stale_after, now, published)
                    }
                    None => DeviceReport::of(masked, label, &DeviceRecord::default(), self.stale_after, now, published),
                }
            })
            .collect();
        devices.sort_by(|a, b| (a.state, &a.label, &a.device).cmp(&(b.state, &b.label, &b.device)));
        let recent_uploads = state
            .recent
            .iter()
            .map(|upload| RecentReport {
                device: upload.masked.clone(),
                label: by_id.get(upload.device.as_str()).and_then(|d| d.label.clone()),
                path: upload.path.clone(),
                size: upload.size,
                at: timestamp(upload.at),
                outcome: upload.outcome,
            })
            .collect();
        FleetReport {
            generated_at: timestamp(now),
            stale_after_seconds: self.stale_after.as_secs(),
            devices,
            recent_uploads,
        }
    }
}

/// Seconds since the Unix epoch, as Prometheus and scripts want them.
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A time as RFC 3339 in UTC, to the second.
fn timestamp(at: SystemTime) -> Timestamp {
    Timestamp { utc: humantime::format_rfc3339_seconds(at).to_string(), unix: unix_seconds(at) }
}

/// A moment, readable and countable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// RFC 3339, UTC (`2026-11-24T09:05:13Z`).
    pub utc: String,
    /// Seconds since the Unix epoch.
    pub unix: u64,
}

/// Whether a device is uploading. The order is the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Silent for longer than `--stale-after`.
    Stale,
    /// Listed, but nothing of it is in the store.
    Never,
    Ok,
}

/// Body of `GET /v1/devices`; the page shows the same.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub generated_at: Timestamp,
    pub stale_after_seconds: u64,
    pub devices: Vec<DeviceReport>,
    /// Newest first.
    pub recent_uploads: Vec<RecentReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The masked ID: all but the last four characters hidden.
    pub device: String,
    pub label: Option<String>,
    pub state: DeviceState,
    pub last_upload: Option<Timestamp>,
    pub seconds_since_last_upload: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    pub files_24h: u64,
    pub bytes_24h: u64,
    /// Rejected uploads since the receiver started.
    pub rejections: u64,
    pub last_rejection: Option<RejectionReport>,
    /// The client address of the last upload this receiver answered (since
    /// it started).
    pub last_address: Option<IpAddr>,
    /// The device's clock offset at its last auth check (since the receiver
    /// started).
    pub clock_offset: Option<ClockOffsetReport>,
    /// Its release and what it made of it; `None` when nothing is published.
    pub update: Option<UpdateStatus>,
}

/// Where a device stands with its release. The order is the page's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// It runs the published version.
    Current,
    /// It runs another (or none), and has not given up on the published one.
    Behind,
    /// Its hook failed on the published version; it went back, and will
    /// not try that version again.
    RolledBack,
    /// It could not fetch or build the published version.
    Failed,
    /// It has not polled since the receiver started.
    Unknown,
}

impl UpdateState {
    pub const ALL: [Self; 5] = [Self::Current, Self::Behind, Self::RolledBack, Self::Failed, Self::Unknown];

    /// The state as `/v1/devices` and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Behind => "behind",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// The `update` object of a device in `/v1/devices`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    pub current_version: Option<Version>,
    /// Always known: an `UpdateStatus` exists only when releases are published.
    pub published_version: Version,
    pub state: UpdateState,
    pub last_outcome: Option<UpdateOutcome>,
    pub last_version: Option<Version>,
    pub last_at: Option<Timestamp>,
    pub last_reason: Option<String>,
}

impl DeviceReport {
    fn of(
        device: String,
        label: Option<String>,
        record: &DeviceRecord,
        stale_after: Duration,
        now: SystemTime,
        published: Option<Version>,
    ) -> Self {
        let silent_for = record.last_upload.map(|at| now.duration_since(at).unwrap_or_default());
        let state = match silent_for {
            None => DeviceState::Never,
            Some(silent) if silent > stale_after => DeviceState::Stale,
            Some(_) => DeviceState::Ok,
        };
        Self {
            device,
            label,
            state,
            last_upload: record.last_upload.map(timestamp),
            seconds_since_last_upload: silent_for.map(|d| d.as_secs()),
            files: record.files,
            bytes: record.bytes,
            files_24h: record.window.len() as u64,
            bytes_24h: record.window.iter().map(|(_, size)| size).sum(),
            rejections: record.rejections,
            last_rejection: record.last_rejection.as_ref().map(|r| RejectionReport {
                at: timestamp(r.at),
                code: r.code,
                message: r.message.clone(),
            }),
            last_address: record.last_address,
            clock_offset: record.clock.map(|(seconds, at)| ClockOffsetReport { seconds, at: timestamp(at) }),
            update: published.map(|published| record.update.status(published)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClockOffsetReport {
    /// The device's clock less the receiver's: negative when it is behind.
    pub seconds: i64,
    /// When the receiver saw it.
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectionReport {
    pub at: Timestamp,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentReport {
    pub device: String,
    pub label: Option<String>,
    /// Where it was stored, relative to the device's folder.
    pub path: String,
    pub size: u64,
    pub at: Timestamp,
    pub outcome: UploadOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::update::MAX_REASON_BYTES;
    use logferry_common::{DeviceId, RelPath, Sha256Digest};

    use crate::store::StoredFile;

    const HOUR: Duration = Duration::from_secs(3600);

    fn device(id: &str, label: &str) -> Device {
        let id = id.parse::<DeviceId>().expect("valid");
        Device { key: id.derive_key(), id, label: Some(label.to_owned()) }
    }

    fn stored(device: &Device, path: &str, size: u64, at: SystemTime) -> StoredFile {
        StoredFile { device: device.id.clone(), path: RelPath::parse(path).expect("path"), size, stored_at: at }
    }

    /// Three listed devices with these labels.
    fn fleet_of(labels: [&str; 3]) -> (Devices, [Device; 3]) {
        let ids = ["0123456789ABCDEF", "FEDCBA9876543210", "00000000000000AA"];
        let devices = [0, 1, 2].map(|i| device(ids[i], labels[i]));
        (devices.iter().map(|d| (d.key.key_id().clone(), d.clone())).collect(), devices)
    }

    /// (label, state, files, bytes, files_24h, bytes_24h) per listed device.
    type Row = (&'static str, DeviceState, u64, u64, u64, u64);

    fn check(report: &FleetReport, expected: &[Row]) {
        let got: Vec<Row> = report
            .devices
            .iter()
            .map(|d| {
                let label: &'static str =
                    expected.iter().map(|row| row.0).find(|l| Some(*l) == d.label.as_deref()).expect("a listed label");
                (label, d.state, d.files, d.bytes, d.files_24h, d.bytes_24h)
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn rebuilt_from_the_store_then_updated_by_commits_and_rejections() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (listed, [fresh, quiet, never]) = fleet_of(["fresh", "quiet", "never"]);
        let inventory = vec![
            stored(&fresh, "a.log", 10, now - 30 * HOUR),
            stored(&fresh, "b.log", 20, now - 2 * HOUR),
            stored(&quiet, "old.log", 5, now - 48 * HOUR),
        ];
        let fleet = FleetStatus::from_summary(&Tallies::of(inventory, now), 24 * HOUR, now);
        let report = fleet.report(&listed, None, now);
        check(
            &report,
            &[
                ("quiet", DeviceState::Stale, 1, 5, 0, 0),
                ("never", DeviceState::Never, 0, 0, 0, 0),
                ("fresh", DeviceState::Ok, 2, 30, 1, 20),
            ],
        );
        assert_eq!(
            report.recent_uploads.iter().map(|u| u.path.as_str()).collect::<Vec<_>>(),
            ["b.log", "a.log", "old.log"]
        );
        assert!(report.devices.iter().any(|d| d.device == "************CDEF"), "masked IDs");
        let json = serde_json::to_string(&report).expect("serializes");
        assert!(!json.contains("0123456789ABCDEF") && !json.contains("FEDCBA9876543210"), "{json}");

        let later = now + HOUR;
        let receipt = |path: &str, size, outcome| UploadReceipt {
            outcome,
            stored_as: path.to_owned(),
            sha256: "0".repeat(64).parse().expect("hex"),
            size,
        };
        let (quiet_from, fresh_from): (IpAddr, IpAddr) =
            ("192.0.2.7".parse().expect("ip"), "2001:db8::7".parse().expect("ip"));
        fleet.record_commit(&quiet, &receipt("new.log", 7, UploadOutcome::Stored), Some(quiet_from), later);
        fleet.record_commit(&fresh, &receipt("b.log", 20, UploadOutcome::AlreadyStored), Some(fresh_from), later);
        fleet.record_rejection(&never, ErrorCode::ChecksumMismatch, "checksum mismatch".to_owned(), later);
        fleet.record_clock(&quiet, -10_800, later);
        let report = fleet.report(&listed, None, later);
        check(
            &report,
            &[
                ("never", DeviceState::Never, 0, 0, 0, 0),
                ("fresh", DeviceState::Ok, 2, 30, 1, 20),
                ("quiet", DeviceState::Ok, 2, 12, 1, 7),
            ],
        );
        let rejected = &report.devices[0];
        assert_eq!(
            (rejected.rejections, rejected.last_rejection.as_ref().map(|r| r.code)),
            (1, Some(ErrorCode::ChecksumMismatch))
        );
        assert_eq!(report.recent_uploads[0].path, "b.log");
        assert_eq!(report.recent_uploads[0].outcome, UploadOutcome::AlreadyStored);
        let addresses =
            |report: &FleetReport| -> Vec<Option<IpAddr>> { report.devices.iter().map(|d| d.last_address).collect() };
        assert_eq!(addresses(&report), [None, Some(fresh_from), Some(quiet_from)], "never, fresh, quiet");
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["devices"][0]["last_address"], serde_json::Value::Null);
        assert_eq!(json["devices"][1]["last_address"], "2001:db8::7");
        assert_eq!(json["devices"][2]["clock_offset"]["seconds"], -10_800, "quiet: {json}");
        assert_eq!(json["devices"][1]["clock_offset"], serde_json::Value::Null, "fresh: {json}");
        assert_eq!(report.devices[2].rejections, 0, "a clock offset is not a rejection");

        // A day later the window is empty but the totals stay.
        check(
            &fleet.report(&listed, None, later + 25 * HOUR),
            &[
                ("fresh", DeviceState::Stale, 2, 30, 0, 0),
                ("quiet", DeviceState::Stale, 2, 12, 0, 0),
                ("never", DeviceState::Never, 0, 0, 0, 0),
            ],
        );

        // What only this receiver saw outlives a re-read of the store.
        fleet.refresh(Tallies::default(), later);
        let report = fleet.report(&listed, None, later);
        assert_eq!(addresses(&report), [None, Some(fresh_from), Some(quiet_from)], "never, fresh, quiet");
        assert_eq!(report.devices[2].clock_offset.as_ref().map(|c| c.seconds), Some(-10_800));
    }

    #[test]
    fn update_states_follow_polls_and_reports() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (listed, [polled, reporting, _silent]) = fleet_of(["polled", "reporting", "silent"]);
        let (v1, v2) = (Version(Sha256Digest::of_bytes(b"1")), Version(Sha256Digest::of_bytes(b"2")));
        let fleet = FleetStatus::from_summary(&Tallies::default(), HOUR, now);
        let states = |published: Version| -> Vec<(String, UpdateState)> {
            let published = move |_: &Device| published;
            let report = fleet.report(&listed, Some(&published), now);
            let mut states: Vec<_> = report
                .devices
                .iter()
                .map(|d| (d.label.clone().unwrap_or_default(), d.update.as_ref().expect("published").state))
                .collect();
            states.sort_by(|a, b| a.0.cmp(&b.0));
            states
        };
        let named = |rows: &[(&str, UpdateState)]| -> Vec<(String, UpdateState)> {
            rows.iter().map(|(label, state)| ((*label).to_owned(), *state)).collect()
        };
        assert!(fleet.report(&listed, None, now).devices.iter().all(|d| d.update.is_none()), "nothing published");

        fleet.record_poll(&polled, None);
        fleet.record_poll(&reporting, Some(v1));
        let long = format!("x{}", "é".repeat(MAX_REASON_BYTES));
        let report = UpdateReport { version: v2, outcome: UpdateOutcome::RolledBack, reason: Some(long) };
        fleet.record_report(&reporting, &report, now);
        assert_eq!(
            states(v2),
            named(&[
                ("polled", UpdateState::Behind),
                ("reporting", UpdateState::RolledBack),
                ("silent", UpdateState::Unknown)
            ])
        );
        let update = fleet.report(&listed, Some(&move |_: &Device| v2), now).devices;
        let reason = update.iter().find_map(|d| d.update.as_ref()?.last_reason.clone()).expect("a reason");
        assert_eq!(reason.len(), MAX_REASON_BYTES - 1, "cut before the character that would cross the limit");
        assert_eq!(states(v1)[1], ("reporting".to_owned(), UpdateState::Current), "it runs v1, which is published");

        fleet.record_report(&polled, &UpdateReport { version: v2, outcome: UpdateOutcome::Updated, reason: None }, now);
        assert_eq!(states(v2)[0], ("polled".to_owned(), UpdateState::Current), "an update says what it runs");
        // Survives a re-read of the store.
        fleet.refresh(Tallies::default(), now);
        assert_eq!(states(v2)[0].1, UpdateState::Current);
    }
}
