//! The update direction: what the receiver publishes to a device, as a
//! manifest of files, and what a device says it made of it.
//!
//! A release is a set of files (path, size, SHA-256, mode). Its version is
//! the SHA-256 of its [canonical text](Manifest::canonical_text), so both
//! sides compute the same version from the same files, and a device can
//! check that the list it got is the one the version names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{PathError, RelPath, Sha256Digest};

/// The permission bits that travel. Set-uid, set-gid and sticky bits never
/// do: a published file must not become a way to gain privileges on a
/// device.
pub const MODE_MASK: u32 = 0o777;

/// Most files one release may list: a bound on the manifest both sides
/// hold in memory (about 300 bytes of JSON each).
pub const MAX_RELEASE_FILES: usize = 10_000;

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEntry", into = "RawEntry")]
pub struct ManifestEntry {
    pub path: RelPath,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Permission bits, within [`MODE_MASK`].
    pub mode: u32,
}

/// A [`ManifestEntry`] as JSON carries it, before its path and mode are
/// judged.
#[derive(Serialize, Deserialize)]
struct RawEntry {
    path: String,
    size: u64,
    sha256: Sha256Digest,
    mode: u32,
}

impl TryFrom<RawEntry> for ManifestEntry {
    type Error = ManifestError;

    fn try_from(raw: RawEntry) -> Result<Self, Self::Error> {
        let path = RelPath::parse(&raw.path)
            .map_err(|reason| ManifestError::InvalidPath { path: raw.path.clone(), reason })?;
        if raw.mode & !MODE_MASK != 0 {
            return Err(ManifestError::Mode { path: raw.path, mode: raw.mode });
        }
        Ok(Self { path, size: raw.size, sha256: raw.sha256, mode: raw.mode })
    }
}

impl From<ManifestEntry> for RawEntry {
    fn from(entry: ManifestEntry) -> Self {
        Self { path: entry.path.to_string(), size: entry.size, sha256: entry.sha256, mode: entry.mode }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the release lists an invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: PathError },
    #[error("the release gives {path} the mode {mode:o}; only permission bits (at most 777) travel")]
    Mode { path: String, mode: u32 },
    #[error("the release lists {0} twice")]
    Duplicate(String),
    #[error("the release lists both the file {file} and files inside a folder of that name")]
    FileIsFolder { file: String },
    #[error("the release lists {0} files; at most {MAX_RELEASE_FILES} are allowed")]
    TooMany(usize),
    #[error("the release's files hash to version {computed}, not the {claimed} it was sent as")]
    VersionMismatch { claimed: Version, computed: Version },
}

/// The files of one release, sorted by path; a valid one can be laid out
/// as a folder (no path twice, no file where another needs a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    files: Vec<ManifestEntry>,
}

impl Manifest {
    /// Sorts `files` by path and checks that they can form a folder.
    pub fn new(mut files: Vec<ManifestEntry>) -> Result<Self, ManifestError> {
        if files.len() > MAX_RELEASE_FILES {
            return Err(ManifestError::TooMany(files.len()));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for pair in files.windows(2) {
            let (first, next) = (pair[0].path.as_str(), pair[1].path.as_str());
            if first == next {
                return Err(ManifestError::Duplicate(first.to_owned()));
            }
        }
        let names: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        for file in &files {
            let mut folder = String::new();
            for component in file.path.folders() {
                if !folder.is_empty() {
                    folder.push('/');
                }
                folder.push_str(component);
                if names.contains(folder.as_str()) {
                    return Err(ManifestError::FileIsFolder { file: folder });
                }
            }
        }
        Ok(Self { files })
    }

    pub fn files(&self) -> &[ManifestEntry] {
        &self.files
    }

    /// One line per file, sorted by path: `<sha256> <mode, 4 octal digits>
    /// <size> <path>\n`. Paths hold no newline, so the text parses back.
    pub fn canonical_text(&self) -> String {
        self.files.iter().map(|f| format!("{} {:04o} {} {}\n", f.sha256, f.mode, f.size, f.path)).collect()
    }

    /// The SHA-256 of the canonical text.
    pub fn version(&self) -> Version {
        Version(Sha256Digest::of_bytes(self.canonical_text().as_bytes()))
    }

    /// The release a manifest answer lists, checked against the version it
    /// was sent as.
    pub fn checked(version: Version, files: Vec<ManifestEntry>) -> Result<Self, ManifestError> {
        let manifest = Self::new(files)?;
        let computed = manifest.version();
        if computed != version {
            return Err(ManifestError::VersionMismatch { claimed: version, computed });
        }
        Ok(manifest)
    }
}

/// A release's version: the SHA-256 of its manifest's canonical text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub Sha256Digest);

impl Version {
    /// The first 12 hex digits, as people are shown it (like a short
    /// commit hash).
    pub fn short(&self) -> String {
        self.0.to_hex()[..12].to_owned()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.short())
    }
}

impl FromStr for Version {
    type Err = <Sha256Digest as FromStr>::Err;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// Body of a poll (`POST /v1/update/manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRequest {
    /// The version the device runs now; `None` before its first update.
    pub current: Option<Version>,
}

/// Body of a 2xx answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestReply {
    /// The version published for this device; `None` when this receiver
    /// publishes nothing (it runs without `--publish`).
    pub version: Option<Version>,
    /// The release's files; left out when the device already runs
    /// `version`, so that a poll with nothing new costs a tiny answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ManifestEntry>>,
}

/// What a device made of a published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The release is in place and its hook (if any) succeeded.
    Updated,
    /// The device already ran the published version (the poll says so;
    /// no report is sent for it).
    UpToDate,
    /// The hook failed or timed out on the new release; the device went
    /// back to the one before, and will not try this version again.
    RolledBack,
    /// The release could not be fetched or built; the device runs what it
    /// ran, and tries again on its next run.
    Failed,
    /// An outcome from a newer sender that this build does not know.
    #[serde(other)]
    Unknown,
}

impl UpdateOutcome {
    /// The outcome as it appears on the wire (`rolled_back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::UpToDate => "up_to_date",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// Body of a report (`POST /v1/update/report`): one attempt at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub version: Version,
    pub outcome: UpdateOutcome,
    /// Why, for `rolled_back` and `failed`: a sentence for the admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Longest report reason the receiver keeps, in bytes.
pub const MAX_REASON_BYTES: usize = 500;

/// `reason` cut at a character boundary to at most [`MAX_REASON_BYTES`]:
/// what a sender sends and a receiver keeps.
pub fn bounded_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, content: &[u8], mode: u32) -> ManifestEntry {
        ManifestEntry {
            path: RelPath::parse(path).expect("valid"),
            size: content.len() as u64,
            sha256: Sha256Digest::of_bytes(content),
            mode,
        }
    }

    #[test]
    fn the_version_is_the_hash_of_the_sorted_canonical_text() {
        let manifest =
            Manifest::new(vec![entry("sensors/main.py", b"print(1)\n", 0o755), entry("app.conf", b"x=1\n", 0o644)])
                .expect("valid");
        let text = manifest.canonical_text();
        assert_eq!(
            text,
            format!(
                "{} 0644 4 app.conf\n{} 0755 9 sensors/main.py\n",
                Sha256Digest::of_bytes(b"x=1\n"),
                Sha256Digest::of_bytes(b"print(1)\n")
            )
        );
        assert_eq!(manifest.version().0, Sha256Digest::of_bytes(text.as_bytes()));
        let chmodded =
            Manifest::new(vec![entry("sensors/main.py", b"print(1)\n", 0o700), entry("app.conf", b"x=1\n", 0o644)])
                .expect("valid");
        assert_ne!(chmodded.version(), manifest.version(), "a mode change is a new version");
        assert!(Manifest::checked(manifest.version(), manifest.files().to_vec()).is_ok());
        assert!(matches!(
            Manifest::checked(chmodded.version(), manifest.files().to_vec()),
            Err(ManifestError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn a_release_must_form_a_folder() {
        let check = |files: Vec<ManifestEntry>, expected: Result<(), ManifestError>| {
            assert_eq!(Manifest::new(files).map(|_| ()), expected);
        };
        check(vec![entry("a", b"1", 0o644), entry("b/c", b"2", 0o644)], Ok(()));
        check(vec![entry("a", b"1", 0o644), entry("a", b"2", 0o644)], Err(ManifestError::Duplicate("a".into())));
        check(
            vec![entry("a/b", b"1", 0o644), entry("a/b/c", b"2", 0o644)],
            Err(ManifestError::FileIsFolder { file: "a/b".into() }),
        );
        check(Vec::new(), Ok(()));
    }

    #[test]
    fn json_entries_are_judged_like_every_path_and_carry_no_setuid_bit() {
        let sha = Sha256Digest::of_bytes(b"");
        let parse = |path: &str, mode: u32| {
            serde_json::from_str::<ManifestEntry>(&format!(
                r#"{{"path":{},"size":0,"sha256":"{sha}","mode":{mode}}}"#,
                serde_json::to_string(path).expect("json")
            ))
        };
        assert!(parse("bin/run.sh", 0o755).is_ok());
        assert!(parse("../etc/passwd", 0o644).is_err());
        assert!(parse("/etc/passwd", 0o644).is_err());
        assert!(parse("bin/run.sh", 0o4755).is_err(), "set-uid");
        assert!(parse("bin/run.sh", 0o2755).is_err(), "set-gid");
        let json = serde_json::to_string(&entry("a b.txt", b"", 0o600)).expect("json");
        assert_eq!(json, format!(r#"{{"path":"a b.txt","size":0,"sha256":"{sha}","mode":384}}"#));
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1, "{}", cut.len());
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn unknown_outcomes_do_not_break_old_receivers() {
        let report: UpdateReport = serde_json::from_str(&format!(
            r#"{{"version":"{}","outcome":"quarantined"}}"#,
            Sha256Digest::of_bytes(b"")
        ))
        .expect("valid");
        assert_eq!(report.outcome, UpdateOutcome::Unknown);
        assert_eq!(serde_json::to_string(&UpdateOutcome::RolledBack).expect("json"), r#""rolled_back""#);
    }
}
