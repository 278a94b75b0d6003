//! The fleet summary: what the status page, `/v1/devices` and `/metrics`
//! show of the store (per device files, bytes, last upload and the last
//! 24 hours' files; the newest stored files), kept in the store itself so
//! that a start-up and a refresh cost O(devices + recent uploads), not
//! O(files ever stored). ARCHITECTURE.md ("The fleet summary") has the
//! whole argument; in short:
//!
//! - `base.json` is a full count, made by a rebuild from
//!   [`Store::inventory`] (`receiver reindex`, or automatically), of the
//!   files stored before its `built_from`; it names an `epoch`.
//! - Each receiver process writes only its own record,
//!   `receiver-<random>.json`: what it committed since then (its
//!   contribution), built on the base's epoch, rewritten whole at every
//!   fleet refresh and, `closed`, at a clean stop. No two receivers ever
//!   write one record, so none loses another's updates; the summary is the
//!   base plus every record of its epoch (merged on read).
//! - A record that is not closed and was not rewritten for
//!   [`DEAD_AFTER_REFRESHES`] refreshes belongs to a receiver that stopped
//!   without closing it: it may lack its last commits, so the summary is
//!   rebuilt.

mod files;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::TryRng;
use rand::rngs::SysRng;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::fleet::{FleetStatus, RECENT_UPLOADS, RECENT_WINDOW};
use crate::store::{AnyStore, Inventory, Store, StoreError, StoredFile};
pub use files::SUMMARY_DIR;
use files::SummaryFiles;

/// The rebuild's record.
const BASE: &str = "base.json";
/// A record not closed and not rewritten for this many refreshes is a
/// crashed receiver's.
pub const DEAD_AFTER_REFRESHES: u32 = 3;
/// A rebuild logs how far it got every this many files.
const PROGRESS_EVERY: u64 = 100_000;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn millis(at: SystemTime) -> Millis {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

pub fn time_of(at: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(at)
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("cannot read or write the fleet summary in the store ({SUMMARY_DIR}/): {0}")]
    Io(#[from] io::Error),
    #[error("cannot list what the store holds, to rebuild the fleet summary: {0}")]
    Inventory(#[from] StoreError),
}

/// What is known of one device's stored files.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTally {
    pub files: u64,
    pub bytes: u64,
    /// Its last upload, an "already stored" one included.
    pub last_upload: Option<Millis>,
    /// (stored at, size) of its files stored within the last 24 hours.
    pub window: Vec<(Millis, u64)>,
}

/// One stored file among the newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFile {
    /// The device's folder name, its ID: the store already holds it.
    pub device: String,
    pub path: String,
    pub size: u64,
    pub at: Millis,
}

/// Per device totals and the newest stored files: O(devices + files of the
/// last 24 hours), whatever the store holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tallies {
    pub devices: BTreeMap<String, DeviceTally>,
    /// Newest first, at most [`RECENT_UPLOADS`].
    pub recent: Vec<RecentFile>,
}

impl Tallies {
    /// Counts a stored file, keeping it in the window only when it is one
    /// of the last 24 hours' as of `now`.
    pub fn stored(&mut self, device: &str, path: &str, size: u64, at: Millis, now: Millis) {
        let tally = self.devices.entry(device.to_owned()).or_default();
        tally.files += 1;
        tally.bytes += size;
        tally.last_upload = tally.last_upload.max(Some(at));
        if at > window_start(now) {
            tally.window.push((at, size));
        }
        let newer = self.recent.partition_point(|file| file.at >= at);
        if newer < RECENT_UPLOADS {
            let file = RecentFile { device: device.to_owned(), path: path.to_owned(), size, at };
            self.recent.insert(newer, file);
            self.recent.truncate(RECENT_UPLOADS);
        }
    }

    /// A device that uploaded what was already stored: alive, no new file.
    pub fn seen(&mut self, device: &str, at: Millis) {
        let tally = self.devices.entry(device.to_owned()).or_default();
        tally.last_upload = tally.last_upload.max(Some(at));
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Tallies) {
        for (device, theirs) in &other.devices {
            let tally = self.devices.entry(device.clone()).or_default();
            tally.files += theirs.files;
            tally.bytes += theirs.bytes;
            tally.last_upload = tally.last_upload.max(theirs.last_upload);
            tally.window.extend_from_slice(&theirs.window);
        }
        self.recent.extend(other.recent.iter().cloned());
        self.recent.sort_by_key(|file| std::cmp::Reverse(file.at));
        self.recent.truncate(RECENT_UPLOADS);
    }

    /// Drops window entries older than 24 hours before `now`.
    pub fn prune(&mut self, now: Millis) {
        let since = window_start(now);
        for tally in self.devices.values_mut() {
            tally.window.retain(|(at, _)| *at > since);
        }
    }

    /// Only the files stored from `from` on (which are all in the windows,
    /// `from` being recent): what a receiver keeps of its contribution when
    /// a rebuild counted everything before `from`.
    pub(crate) fn since(&self, from: Millis) -> Tallies {
        let mut kept = Tallies::default();
        for (device, tally) in &self.devices {
            let window: Vec<_> = tally.window.iter().copied().filter(|(at, _)| *at >= from).collect();
            if !window.is_empty() {
                kept.devices.insert(
                    device.clone(),
                    DeviceTally {
                        files: window.len() as u64,
                        bytes: window.iter().map(|(_, size)| size).sum(),
                        last_upload: window.iter().map(|(at, _)| *at).max(),
                        window,
                    },
                );
            }
        }
        kept.recent = self.recent.iter().filter(|file| file.at >= from).cloned().collect();
        kept
    }

    /// The tallies of `files`, as of `now`.
    pub fn of(files: impl IntoIterator<Item = StoredFile>, now: SystemTime) -> Tallies {
        let mut tally = Tally { before: Millis::MAX, now: millis(now), seen: 0, tallies: Tallies::default() };
        files.into_iter().for_each(|file| tally.found(file));
        tally.tallies
    }
}

fn window_start(now: Millis) -> Millis {
    now.saturating_sub(RECENT_WINDOW.as_millis() as Millis)
}

/// Counts an inventory as it streams by, keeping only tallies.
#[derive(Debug)]
struct Tally {
    /// Files stored from here on are the receivers' to count.
    before: Millis,
    now: Millis,
    seen: u64,
    tallies: Tallies,
}

impl Inventory for Tally {
    fn found(&mut self, file: StoredFile) {
        let at = millis(file.stored_at);
        if at < self.before {
            self.tallies.stored(file.device.reveal(), file.path.as_str(), file.size, at, self.now);
        }
        self.seen += 1;
        if self.seen.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(files = self.seen, "rebuilding the fleet summary from the store");
        }
    }
}

/// One record of `.summary/`: the base or a receiver's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The base's epoch this builds on (the base's own, for the base).
    epoch: String,
    written_at: Millis,
    /// The base holds the files stored before this; receivers count the rest.
    built_from: Millis,
    /// It will not be written again (the base; a receiver that stopped).
    closed: bool,
    /// How often its receiver rewrites it (its fleet refresh).
    every: Millis,
    tallies: Tallies,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        // Serializing plain maps, strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Not closed, and not rewritten for [`DEAD_AFTER_REFRESHES`] of its
    /// receiver's own refresh intervals (receivers may differ in theirs).
    fn dead(&self, now: Millis) -> bool {
        !self.closed && self.written_at < now.saturating_sub(self.every * Millis::from(DEAD_AFTER_REFRESHES))
    }
}

/// What a receiver knows of `.summary/`.
#[derive(Debug)]
struct View {
    epoch: String,
    built_from: Millis,
    base: Tallies,
    /// What the base's listing showed when it was read.
    base_tag: Option<String>,
    /// The records of receivers that stopped, of this epoch, summed (they
    /// never change: one start's worth of memory, however many there are).
    closed: Tallies,
    closed_names: HashSet<String>,
    /// Every running receiver's record as last read, by name, with its tag.
    others: HashMap<String, (String, Record)>,
}

impl View {
    fn of_base(base: Record, base_tag: Option<String>) -> Self {
        Self {
            epoch: base.epoch,
            built_from: base.built_from,
            base: base.tallies,
            base_tag,
            closed: Tallies::default(),
            closed_names: HashSet::new(),
            others: HashMap::new(),
        }
    }

    /// The base and every other receiver's record of its epoch.
    fn merged(&self) -> Tallies {
        let mut merged = self.base.clone();
        merged.add(&self.closed);
        for (_, record) in self.others.values() {
            if record.epoch == self.epoch {
                merged.add(&record.tallies);
            }
        }
        merged
    }

    fn has_dead(&self, now: Millis) -> bool {
        self.others.values().any(|(_, record)| record.epoch == self.epoch && record.dead(now))
    }
}

/// This receiver's side of the summary.
#[derive(Debug)]
pub struct Summary {
    files: SummaryFiles,
    /// This receiver's record.
    name: String,
    every: Duration,
    view: Mutex<View>,
}

impl Summary {
    /// Reads the summary (rebuilding it when it is missing, damaged or a
    /// crashed receiver's record is found) and writes this receiver's first,
    /// empty record; returns it with what it shows. `every` is how often
    /// records are rewritten (the fleet refresh).
    pub async fn open(store: &AnyStore, every: Duration) -> Result<(Self, Tallies), SummaryError> {
        let files = SummaryFiles::of(store).await?;
        let mut nonce = [0u8; 8];
        SysRng.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
        let name = format!("receiver-{}.json", hex::encode(nonce));
        let now = millis(SystemTime::now());
        let listed = files.list().await?;
        let base_tag = listed.iter().find(|(name, _)| name == BASE).map(|(_, tag)| tag.clone());
        let mut view = match files.read(BASE).await?.as_deref().and_then(Record::decode) {
            Some(base) => View::of_base(base, base_tag),
            None => {
                tracing::info!("the fleet summary is missing or damaged; rebuilding it from the store");
                View::of_base(rebuild(store, &files).await?, None)
            }
        };
        read_others(&files, &listed, &name, &mut view).await?;
        if view.has_dead(now) {
            tracing::warn!("a receiver stopped without closing its part of the fleet summary; rebuilding it");
            view = View::of_base(rebuild(store, &files).await?, None);
        }
        let summary = Self { files, name, every, view: Mutex::new(view) };
        let shown = {
            let view = summary.view.lock().await;
            summary.write_own(&view, &Tallies::default(), false).await?;
            view.merged()
        };
        Ok((summary, shown))
    }

    /// Rewrites this receiver's record from `fleet`, takes the others' that
    /// changed (all of them, after a rebuild by another receiver) and, with
    /// `take_others`, shows the merged summary in `fleet`. A crashed
    /// receiver's record found here makes this receiver rebuild the summary.
    pub async fn refresh(&self, store: &AnyStore, fleet: &FleetStatus, take_others: bool) -> Result<(), SummaryError> {
        let listed = self.files.list().await?;
        let mut view = self.view.lock().await;
        let base_tag = listed.iter().find(|(name, _)| name == BASE).map(|(_, tag)| tag.clone());
        if base_tag.is_some() && base_tag != view.base_tag {
            match self.files.read(BASE).await?.as_deref().and_then(Record::decode) {
                Some(base) if base.epoch != view.epoch => {
                    // Another receiver rebuilt: it counted what this one
                    // committed before its walk began.
                    fleet.rebase(base.built_from);
                    *view = View::of_base(base, base_tag);
                }
                _ => view.base_tag = base_tag,
            }
        }
        self.write_own(&view, &fleet.own(), false).await?;
        read_others(&self.files, &listed, &self.name, &mut view).await?;
        if view.has_dead(millis(SystemTime::now())) {
            tracing::warn!("a receiver stopped without closing its part of the fleet summary; rebuilding it");
            let base = rebuild(store, &self.files).await?;
            fleet.rebase(base.built_from);
            *view = View::of_base(base, None);
            self.write_own(&view, &fleet.own(), false).await?;
        }
        if take_others {
            fleet.refresh(view.merged(), SystemTime::now());
        }
        Ok(())
    }

    /// Writes this receiver's record for the last time, at a clean stop.
    pub async fn close(&self, fleet: &FleetStatus) -> Result<(), SummaryError> {
        let view = self.view.lock().await;
        self.write_own(&view, &fleet.own(), true).await
    }

    async fn write_own(&self, view: &View, tallies: &Tallies, closed: bool) -> Result<(), SummaryError> {
        let record = Record {
            epoch: view.epoch.clone(),
            written_at: millis(SystemTime::now()),
            built_from: view.built_from,
            closed,
            every: self.every.as_millis() as Millis,
            tallies: tallies.clone(),
        };
        Ok(self.files.write(&self.name, record.encode()).await?)
    }
}

/// Reads the records of other receivers that are new or changed since last
/// read (`listed` is the folder's listing), and forgets those removed.
async fn read_others(files: &SummaryFiles, listed: &[files::Listed], own: &str, view: &mut View) -> io::Result<()> {
    view.others.retain(|name, _| listed.iter().any(|(listed, _)| listed == name));
    let now = millis(SystemTime::now());
    view.closed.prune(now);
    for (name, tag) in listed {
        if name == BASE
            || name == own
            || view.closed_names.contains(name)
            || view.others.get(name).is_some_and(|(known, _)| known == tag)
        {
            continue;
        }
        // A record that does not parse is being replaced or is damaged: it
        // counts once it is whole again (a receiver rewrites its own at
        // every refresh), and until then its receiver's part is missing.
        match files.read(name).await?.as_deref().and_then(Record::decode) {
            Some(mut record) => {
                record.tallies.prune(now);
                if record.closed && record.epoch == view.epoch {
                    view.others.remove(name);
                    view.closed.add(&record.tallies);
                    view.closed_names.insert(name.clone());
                } else {
                    view.others.insert(name.clone(), (tag.clone(), record));
                }
            }
            None => tracing::warn!(record = name, "a record of the fleet summary does not parse; skipped"),
        }
    }
    Ok(())
}

/// Counts what the store holds, streaming (memory bounded by the devices
/// and the last 24 hours' files), and writes the result as the new base,
/// under a new epoch; then removes the receivers' records of older epochs
/// (everything they counted is in the base; running receivers write theirs
/// again, on the new epoch, at their next refresh).
async fn rebuild(store: &AnyStore, files: &SummaryFiles) -> Result<Record, SummaryError> {
    let started = SystemTime::now();
    // Past every commit recorded before now, even in this very millisecond:
    // those are the walk's to count, not their receivers'.
    let built_from = millis(started) + 1;
    let mut nonce = [0u8; 8];
    SysRng.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
    let tally = Tally { before: built_from, now: built_from, seen: 0, tallies: Tallies::default() };
    let tally = store.inventory(tally).await?;
    let record = Record {
        epoch: hex::encode(nonce),
        written_at: millis(SystemTime::now()),
        built_from,
        closed: true,
        every: 0,
        tallies: tally.tallies,
    };
    files.write(BASE, record.encode()).await?;
    for (name, _) in files.list().await? {
        if name != BASE {
            let stale = files.read(&name).await?.as_deref().and_then(Record::decode);
            if stale.is_none_or(|stale| stale.epoch != record.epoch) {
                files.remove(&name).await?;
            }
        }
    }
    tracing::info!(
        files = tally.seen,
        devices = record.tallies.devices.len(),
        seconds = started.elapsed().unwrap_or_default().as_secs_f64(),
        "rebuilt the fleet summary from the store"
    );
    Ok(record)
}

/// `receiver reindex`: rebuilds the summary from the store, whatever it
/// holds now; returns how many files and devices were counted.
pub async fn reindex(store: &AnyStore) -> Result<(u64, usize), SummaryError> {
    let files = SummaryFiles::of(store).await?;
    let record = rebuild(store, &files).await?;
    let counted = record.tallies.devices.values().map(|tally| tally.files).sum();
    Ok((counted, record.tallies.devices.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Millis = 3_600_000;

    #[test]
    fn tallies_merge_and_keep_what_a_rebuild_did_not_count() {
        let now = 1_800_000_000_000;
        let mut a = Tallies::default();
        a.stored("A", "old.log", 5, now - 30 * HOUR, now);
        a.stored("A", "new.log", 7, now - HOUR, now);
        a.seen("B", now);
        let mut b = Tallies::default();
        b.stored("B", "b.log", 11, now - 2 * HOUR, now);
        let mut merged = a.clone();
        merged.add(&b);
        let row = |t: &Tallies, d: &str| t.devices.get(d).map(|t| (t.files, t.bytes, t.last_upload, t.window.len()));
        assert_eq!(row(&merged, "A"), Some((2, 12, Some(now - HOUR), 1)), "the old file is counted, not in the window");
        assert_eq!(row(&merged, "B"), Some((1, 11, Some(now), 1)), "seen counts as an upload, not a file");
        let paths: Vec<_> = merged.recent.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["new.log", "b.log", "old.log"], "newest first");

        let kept = merged.since(now - 90 * 60_000);
        assert_eq!(row(&kept, "A"), Some((1, 7, Some(now - HOUR), 1)));
        assert_eq!(row(&kept, "B"), None, "stored before the rebuild began");
        assert_eq!(kept.recent.len(), 1);

        merged.prune(now + 24 * HOUR);
        assert!(merged.devices.values().all(|t| t.window.is_empty()), "a day later");
        assert_eq!(row(&merged, "A").map(|r| r.0), Some(2), "totals stay");
    }

    #[test]
    fn recent_keeps_the_newest() {
        let now = 1_800_000_000_000;
        let mut t = Tallies::default();
        for n in 0..(RECENT_UPLOADS as u64 * 3) {
            // In no order, as an inventory gives them.
            let at = now - (n * 7919 % 97) * 1000;
            t.stored("A", &format!("{at}"), 1, at, now);
        }
        let mut ats: Vec<_> = t.recent.iter().map(|f| f.at).collect();
        assert_eq!(ats.len(), RECENT_UPLOADS);
        let sorted = {
            ats.sort_by_key(|at| std::cmp::Reverse(*at));
            ats.clone()
        };
        assert_eq!(t.recent.iter().map(|f| f.at).collect::<Vec<_>>(), sorted);
        assert_eq!(t.recent[0].at, now);
    }

    #[test]
    fn a_record_is_dead_when_open_and_not_rewritten_for_three_of_its_refreshes() {
        let now = 1_800_000_000_000;
        let record = |written_at, closed| Record {
            epoch: "e".to_owned(),
            written_at,
            built_from: 0,
            closed,
            every: 60_000,
            tallies: Tallies::default(),
        };
        let cases = [(now - 10_000, false, false), (now - 200_000, false, true), (now - 200_000, true, false)];
        for (written_at, closed, dead) in cases {
            assert_eq!(record(written_at, closed).dead(now), dead, "{written_at} {closed}");
        }
    }
}
