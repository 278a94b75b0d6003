//! Finding the files to send.

use std::path::{Path, PathBuf};

use logferry_common::RelPath;
use walkdir::WalkDir;

use crate::sent;

/// A file to deliver.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub rel: RelPath,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<Candidate>,
    /// Entries that cannot be sent, with the reason; they stay where they are.
    pub unusable: Vec<(String, String)>,
    /// Symbolic links and special files, which are never followed or sent.
    pub skipped: Vec<String>,
}

/// Walks `folder` recursively, in name order, without following symbolic
/// links and without entering `sent_dir` when it lies inside.
pub fn walk(folder: &Path, sent_dir: &Path) -> Found {
    let mut found = Found::default();
    let entries = WalkDir::new(folder)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.path() != sent_dir);
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                let shown = err.path().map_or_else(|| folder.display().to_string(), |p| p.display().to_string());
                let reason = err.io_error().map_or_else(|| err.to_string(), ToString::to_string);
                found.unusable.push((shown, format!("cannot be read: {reason}")));
                continue;
            }
        };
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(folder).unwrap_or(entry.path());
        if !kind.is_file() {
            found.skipped.push(relative.display().to_string());
            continue;
        }
        // A file a killed run had taken after delivering it goes under the
        // name it was taken from (see `sent::TAKING_PREFIX`).
        let original = relative.file_name().and_then(|n| n.to_str()).and_then(sent::taken_from);
        let sent_as = original.map_or_else(|| relative.to_owned(), |name| relative.with_file_name(name));
        match RelPath::from_local(&sent_as) {
            Ok(rel) => found.files.push(Candidate { path: entry.into_path(), rel }),
            Err(reason) => {
                found.unusable.push((relative.display().to_string(), format!("its name cannot be sent: {reason}")))
            }
        }
    }
    found
}
