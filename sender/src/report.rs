//! The run's tally, its one summary line (or JSON), and the progress bar.

use std::fmt;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
pub use logferry_common::human_bytes;
use logferry_common::human_duration;
use logferry_common::update::Version;
use serde::Serialize;

use crate::update::{RunOutcome, UpdateSummary};

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// A dry run: `planned` lists what would be sent; nothing was sent.
    pub dry_run: bool,
    /// (relative path, size) of each file a dry run would send.
    pub planned: Vec<(String, u64)>,
    pub sent: u64,
    pub sent_bytes: u64,
    /// File bytes put on the wire, every attempt counted: less than the
    /// files' sizes when compressed or resumed.
    pub wire_bytes: u64,
    pub already_stored: u64,
    /// Files that stay for the next run, with the reason.
    pub failed: Vec<(String, String)>,
    /// Symbolic links and special files, never sent.
    pub skipped: u64,
    /// Files still being written (or changed during this run): left for a
    /// later run, which is normal, not a failure.
    pub not_yet: u64,
    /// Seconds the device's clock is ahead of the receiver's (negative:
    /// behind), when it was off by more than the receiver allows and the
    /// run signed with the receiver's time instead.
    pub clock_offset: Option<i64>,
    /// What the update did, with `--update-dir`.
    pub update: Option<UpdateSummary>,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            let bytes = self.planned.iter().map(|(_, size)| size).sum();
            write!(
                f,
                "logferry: dry run: {} would be sent ({}), {} failed",
                self.planned.len(),
                human_bytes(bytes),
                self.failed.len()
            )?;
        } else {
            let on_wire = if self.wire_bytes == self.sent_bytes {
                String::new()
            } else {
                format!("; {} on the wire", human_bytes(self.wire_bytes))
            };
            write!(
                f,
                "logferry: {} sent ({}{on_wire}), {} already stored, {} failed",
                self.sent,
                human_bytes(self.sent_bytes),
                self.already_stored,
                self.failed.len()
            )?;
        }
        if self.not_yet > 0 {
            write!(f, ", {} still being written (left for a later run)", self.not_yet)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} skipped (links or special files)", self.skipped)?;
        }
        if let Some(offset) = self.clock_offset {
            let direction = if offset > 0 { "ahead of" } else { "behind" };
            write!(
                f,
                ", this device's clock is {} ({offset} s) {direction} the receiver's, so this run signed by the receiver's",
                human_duration(offset.unsigned_abs())
            )?;
        }
        if let Some(update) = &self.update {
            write!(f, "; update: {update}")?;
        }
        write!(f, ", in {:.1} s", self.elapsed.as_secs_f64())
    }
}

impl fmt::Display for UpdateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |version: Option<Version>| version.map_or_else(|| "no release".to_owned(), |v| v.short());
        let (version, previous) = (short(self.version), short(self.previous));
        let reason = self.reason.as_deref().unwrap_or("no reason given");
        match self.outcome {
            RunOutcome::NothingPublished => write!(f, "the receiver publishes nothing"),
            RunOutcome::UpToDate => write!(f, "up to date ({version})"),
            RunOutcome::HeldBack => write!(f, "{version} held back: {reason}"),
            RunOutcome::Updated => write!(
                f,
                "updated from {previous} to {version} ({} fetched, {})",
                count(self.fetched_files, "file"),
                human_bytes(self.fetched_bytes)
            ),
            RunOutcome::RolledBack => write!(f, "{version} rolled back to {previous}: {reason}"),
            RunOutcome::Failed if self.version.is_some() => write!(f, "{version} failed, {previous} stays: {reason}"),
            RunOutcome::Failed => write!(f, "failed: {reason}"),
        }
    }
}

/// `1 file`, `2 files`.
fn count(n: u64, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// The summary as `--json` prints it.
#[derive(Debug, Serialize)]
struct SummaryJson<'a> {
    dry_run: bool,
    sent: u64,
    sent_bytes: u64,
    wire_bytes: u64,
    already_stored: u64,
    failed: Vec<FileJson<'a>>,
    not_yet: u64,
    skipped: u64,
    /// See [`Summary::clock_offset`]; `null` when the clock was within bounds.
    clock_offset_seconds: Option<i64>,
    /// `null` without `--update-dir`, and when the run stopped before it.
    update: Option<&'a UpdateSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    would_send: Option<Vec<FileJson<'a>>>,
    elapsed_seconds: f64,
    exit_code: u8,
    /// What stopped the run early, if anything.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FileJson<'a> {
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl Summary {
    /// One JSON object with the tally, how the run ended and why.
    pub fn to_json(&self, exit_code: u8, error: Option<String>) -> String {
        let json = SummaryJson {
            dry_run: self.dry_run,
            sent: self.sent,
            sent_bytes: self.sent_bytes,
            wire_bytes: self.wire_bytes,
            already_stored: self.already_stored,
            failed: self
                .failed
                .iter()
                .map(|(file, reason)| FileJson { file, size: None, reason: Some(reason) })
                .collect(),
            not_yet: self.not_yet,
            skipped: self.skipped,
            clock_offset_seconds: self.clock_offset,
            update: self.update.as_ref(),
            would_send: self.dry_run.then(|| {
                self.planned.iter().map(|(file, size)| FileJson { file, size: Some(*size), reason: None }).collect()
            }),
            elapsed_seconds: self.elapsed.as_secs_f64(),
            exit_code,
            error,
        };
        serde_json::to_string(&json).unwrap_or_else(|e| format!("{{\"error\":\"cannot format the summary: {e}\"}}"))
    }
}

/// What a run tells the person watching: a progress bar on a terminal,
/// nothing under cron (which mails whatever is printed) but failures.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `files` files when `interactive`, else nothing.
    pub fn new(interactive: bool, files: usize) -> Self {
        let bar = interactive.then(|| {
            let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            ProgressBar::new(files as u64).with_style(style)
        });
        Self { bar }
    }

    /// Prints a line on stderr without tearing the bar.
    pub fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// One more file is done with.
    pub fn advance(&self, file: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(file.to_owned());
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line() {
        let summary = Summary {
            sent: 2,
            sent_bytes: 2048,
            wire_bytes: 2048,
            already_stored: 1,
            failed: vec![("a".into(), "b".into())],
            skipped: 1,
            not_yet: 3,
            elapsed: Duration::from_millis(1250),
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "logferry: 2 sent (2.0 KiB), 1 already stored, 1 failed, 3 still being written (left for a later run), \
             1 skipped (links or special files), in 1.2 s"
        );
        let compressed = Summary { wire_bytes: 300, ..summary.clone() };
        assert!(compressed.to_string().starts_with("logferry: 2 sent (2.0 KiB; 300 B on the wire), "), "{compressed}");
        let behind = Summary { clock_offset: Some(-10_800), ..summary };
        assert!(
            behind.to_string().ends_with(
                ", this device's clock is 3 h (-10800 s) behind the receiver's, so this run signed by the receiver's, \
                 in 1.2 s"
            ),
            "{behind}"
        );
        let json: serde_json::Value = serde_json::from_str(&behind.to_json(0, None)).expect("JSON");
        assert_eq!(json["clock_offset_seconds"], -10_800);
        assert_eq!(json["wire_bytes"], 2048);
    }

    #[test]
    fn the_update_in_the_line_and_json() {
        let (old, new): (Version, Version) =
            ("ab".repeat(32).parse().expect("hex"), "cd".repeat(32).parse().expect("hex"));
        let update = UpdateSummary {
            outcome: RunOutcome::Updated,
            version: Some(new),
            previous: Some(old),
            fetched_files: 2,
            fetched_bytes: 3072,
            reason: None,
        };
        let summary = Summary { update: Some(update.clone()), ..Summary::default() };
        assert_eq!(
            summary.to_string(),
            "logferry: 0 sent (0 B), 0 already stored, 0 failed; update: updated from abababababab to cdcdcdcdcdcd \
             (2 files fetched, 3.0 KiB), in 0.0 s"
        );
        let json: serde_json::Value = serde_json::from_str(&summary.to_json(0, None)).expect("JSON");
        assert_eq!(json["update"]["outcome"], "updated");
        assert_eq!(json["update"]["version"], "cd".repeat(32));
        assert_eq!(json["update"]["previous"], "ab".repeat(32));
        assert_eq!(
            (json["update"]["fetched_files"].as_u64(), json["update"]["fetched_bytes"].as_u64()),
            (Some(2), Some(3072))
        );

        let rolled_back =
            UpdateSummary { outcome: RunOutcome::RolledBack, reason: Some("the hook failed".into()), ..update.clone() };
        assert_eq!(rolled_back.to_string(), "cdcdcdcdcdcd rolled back to abababababab: the hook failed");
        let first_failed = UpdateSummary {
            outcome: RunOutcome::Failed,
            previous: None,
            reason: Some("no disk".into()),
            ..update.clone()
        };
        assert_eq!(first_failed.to_string(), "cdcdcdcdcdcd failed, no release stays: no disk");
        let unreachable = UpdateSummary { version: None, ..first_failed };
        assert_eq!(unreachable.to_string(), "failed: no disk");
        let json: serde_json::Value =
            serde_json::from_str(&Summary { update: Some(unreachable), ..Summary::default() }.to_json(10, None))
                .expect("JSON");
        assert_eq!((json["update"]["outcome"].as_str(), json["update"]["version"].is_null()), (Some("failed"), true));
        let none: serde_json::Value = serde_json::from_str(&Summary::default().to_json(0, None)).expect("JSON");
        assert!(none["update"].is_null(), "{none}");
    }

    #[test]
    fn dry_run_line_and_json() {
        let summary = Summary {
            dry_run: true,
            planned: vec![("a.log".into(), 1024), ("b/c.log".into(), 512)],
            not_yet: 1,
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "logferry: dry run: 2 would be sent (1.5 KiB), 0 failed, 1 still being written (left for a later run), in 0.0 s"
        );
        let json: serde_json::Value = serde_json::from_str(&summary.to_json(0, None)).expect("JSON");
        assert_eq!(json["would_send"][1]["file"], "b/c.log");
        assert_eq!(json["would_send"][0]["size"], 1024);
        assert_eq!((json["dry_run"].as_bool(), json["exit_code"].as_u64()), (Some(true), Some(0)));
        assert_eq!(json["clock_offset_seconds"], serde_json::Value::Null);
    }
}
