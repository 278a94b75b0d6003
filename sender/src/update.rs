//! The update direction on the device: fetch the release the receiver
//! publishes for it, build it beside the one in use, switch to it in one
//! atomic step, and go back if the hook says it does not work.
//!
//! Layout of the update folder (nothing is ever written outside it, and no
//! link inside it is followed, except `current`, which this module makes):
//!
//! - `current` → `releases/<version>` (a relative symbolic link)
//! - `releases/<version>/` complete releases, `releases/<version>.json` their
//!   files (the manifest), `releases/.build-<version>/` one being built
//! - `.partial/<sha256>` content being fetched (or copied), verified before use
//! - `.state.json` what the last attempts left to remember; `.lock`

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use logferry_common::digest::HASH_BUFFER_SIZE;
use logferry_common::durable::{create_dirs, holds_exactly, sync_dir};
use logferry_common::update::{
    MODE_MASK, Manifest, ManifestEntry, ManifestError, UpdateOutcome, UpdateReport, Version, bounded_reason,
};
use logferry_common::{RelPath, Sha256Digest, Sha256Hasher};
use rustix::fs::{Mode, OFlags, openat};
use serde::{Deserialize, Serialize};

use crate::client::{Client, RequestError};
use crate::config::UpdateConfig;

pub const CURRENT: &str = "current";
pub const RELEASES: &str = "releases";
pub const PARTIAL: &str = ".partial";
pub const STATE_FILE: &str = ".state.json";
pub const LOCK_FILE: &str = ".lock";
const BUILD_PREFIX: &str = ".build-";
/// The new `current` link before it is renamed over the old one.
const NEXT_CURRENT: &str = ".current.next";
/// Largest JSON file read back (a release's manifest, the state): far
/// above what [`logferry_common::update::MAX_RELEASE_FILES`] entries take.
const MAX_JSON_FILE_BYTES: u64 = 16 << 20;
/// How often a running hook is looked at.
const HOOK_POLL: Duration = Duration::from_millis(20);

/// How this run's update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The receiver publishes nothing (it runs without `--publish`).
    NothingPublished,
    UpToDate,
    /// The published version was rolled back before; it is not tried again
    /// until another version is published.
    HeldBack,
    Updated,
    RolledBack,
    Failed,
}

impl RunOutcome {
    /// Whether the run's exit code should say so ([`crate::exit::UPDATE_FAILED`]).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::RolledBack | Self::Failed)
    }
}

/// What the update did in one run, for the summary line and `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateSummary {
    pub outcome: RunOutcome,
    /// The version published for this device, once the receiver said it.
    pub version: Option<Version>,
    /// The version in use when the run began.
    pub previous: Option<Version>,
    /// Files whose content came over the network, and its bytes (every
    /// attempt counted); content found on the device is not counted.
    pub fetched_files: u64,
    pub fetched_bytes: u64,
    /// Why, for everything but `updated`, `up_to_date` and `nothing_published`.
    pub reason: Option<String>,
}

/// Why an attempt at a release failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("another sender run is updating {}; this run left it alone", .0.display())]
    Busy(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{} is not a link to a release this sender made; move it away so that updates can go on", .0.display())]
    StrangeCurrent(PathBuf),
    #[error("cannot ask the receiver for this device's release: {0}")]
    Poll(RequestError),
    #[error("the receiver published version {} without listing its files", .0.short())]
    NoFiles(Version),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot fetch {path}: {source}")]
    Fetch { path: RelPath, source: RequestError },
    #[error(
        "{path} arrived with SHA-256 {got}, not the {expected} its release lists; it was discarded and is fetched \
         again on the next run"
    )]
    Mismatch { path: RelPath, expected: Sha256Digest, got: Sha256Digest },
}

/// A closure for `map_err` that names what failed on which path.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpdateError {
    let path = path.to_owned();
    move |source| UpdateError::Io { what, path, source }
}

/// What the update folder remembers between runs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The release before `current`, kept to go back to and to copy
    /// content from.
    pub previous: Option<Version>,
    /// The last version rolled back, which is not tried again while it is
    /// the one published.
    pub refused: Option<Refused>,
    /// A switch whose hook has not finished: written before the hook runs,
    /// cleared when it has, so that a run that died meanwhile (power cut,
    /// killed) is rolled back by the next one instead of keeping a release
    /// nothing confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Unconfirmed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    pub version: Version,
    /// The release before it, gone back to.
    pub from: Option<Version>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub version: Version,
    pub reason: String,
}

impl State {
    /// The state in `dir`; none yet is the default state. A state file that
    /// cannot be understood is set aside as the default too, with a warning:
    /// losing what it said costs one more attempt, never a stuck device.
    pub fn read(dir: &Path) -> Result<Self, UpdateError> {
        let path = dir.join(STATE_FILE);
        let text = match read_bounded(&path, MAX_JSON_FILE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        Ok(serde_json::from_slice(&text).unwrap_or_else(|e| {
            eprintln!("sender: update: {} cannot be understood ({e}); starting from an empty state", path.display());
            Self::default()
        }))
    }

    /// Replaces the state file in one step, durably.
    pub fn write(&self, dir: &Path) -> Result<(), UpdateError> {
        let json = serde_json::to_vec(self).map_err(|e| io_error("write", &dir.join(STATE_FILE))(e.into()))?;
        write_atomically(dir, STATE_FILE, &json)
    }

    /// Whether the published `version` is one this device gave up on.
    pub fn holds_back(&self, version: Version) -> Option<&Refused> {
        self.refused.as_ref().filter(|refused| refused.version == version)
    }
}

/// Writes `name` in `dir` via a temporary file, fsynced, renamed over it,
/// and the folder fsynced: a reader (or a crash) sees the old or the new
/// content, never a mix.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), UpdateError> {
    let (path, temporary) = (dir.join(name), dir.join(format!(".{name}.tmp")));
    remove_if_present(&temporary).map_err(io_error("remove", &temporary))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_error("write", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("replace", &path))?;
    sync_dir(dir).map_err(io_error("sync", dir))
}

/// Reads a whole small file, not following a link, refusing more than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new().read(true).custom_flags(OFlags::NOFOLLOW.bits() as i32).open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::other(format!("it is larger than {limit} bytes")));
    }
    Ok(bytes)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The version `DIR/current` points at; `None` before the first release.
pub fn current_version(dir: &Path) -> Result<Option<Version>, UpdateError> {
    let link = dir.join(CURRENT);
    let target = match fs::read_link(&link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(UpdateError::StrangeCurrent(link)),
    };
    let version = target
        .strip_prefix(RELEASES)
        .ok()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse::<Version>().ok())
        .filter(|version| target == release_link(*version))
        .ok_or_else(|| UpdateError::StrangeCurrent(link.clone()))?;
    match fs::symlink_metadata(dir.join(&target)) {
        Ok(meta) if meta.is_dir() => Ok(Some(version)),
        _ => Err(UpdateError::StrangeCurrent(link)),
    }
}

/// What `current` holds to point at `version`.
fn release_link(version: Version) -> PathBuf {
    Path::new(RELEASES).join(version.to_string())
}

/// Points `DIR/current` at `version` in one step (a new link renamed over
/// the old one), or removes it; durable when this returns.
pub fn switch_current(dir: &Path, version: Option<Version>) -> Result<(), UpdateError> {
    let current = dir.join(CURRENT);
    match version {
        Some(version) => {
            let next = dir.join(NEXT_CURRENT);
            remove_if_present(&next).map_err(io_error("remove", &next))?;
            std::os::unix::fs::symlink(release_link(version), &next).map_err(io_error("create the link", &next))?;
            fs::rename(&next, &current).map_err(io_error("switch", &current))?;
        }
        None => remove_if_present(&current).map_err(io_error("remove", &current))?,
    }
    sync_dir(dir).map_err(io_error("sync", dir))
}

/// Opens `rel` below `base` for reading, following no link on the way (a
/// folder or file replaced by one is refused).
fn open_below(base: &Path, rel: &RelPath) -> io::Result<File> {
    let folder_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut folder: OwnedFd = rustix::fs::open(base, folder_flags, Mode::empty())?;
    for name in rel.folders() {
        folder = openat(&folder, name, folder_flags, Mode::empty())?;
    }
    let file_flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(openat(&folder, rel.file_name(), file_flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!("{rel} is not a regular file")));
    }
    Ok(file)
}

/// Copies `source` into a new file `target` while hashing it, and keeps the
/// copy (fsynced) only if it is exactly `size` bytes hashing to `sha256`.
/// Memory stays at one buffer whatever the size.
fn copy_verified(source: File, target: &Path, sha256: &Sha256Digest, size: u64) -> io::Result<bool> {
    remove_if_present(target)?;
    let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(target)?;
    let mut hasher = Sha256Hasher::default();
    let mut buf = vec![0u8; HASH_BUFFER_SIZE.min(size as usize + 1)];
    // One byte past the size is enough to tell a longer file.
    let mut source = source.take(size + 1);
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (digest, len) = hasher.finish();
    if len != size || digest != *sha256 {
        drop(out);
        fs::remove_file(target)?;
        return Ok(false);
    }
    out.sync_all()?;
    Ok(true)
}

/// Where a content already on the device may be copied from: a file of a
/// release in `releases/`, as its manifest lists it.
#[derive(Debug, Default)]
struct LocalContent {
    by_hash: HashMap<Sha256Digest, (PathBuf, RelPath)>,
}

impl LocalContent {
    /// What the releases of `versions` hold. A release whose manifest
    /// cannot be read just offers nothing: its files are fetched instead.
    fn of(dir: &Path, versions: impl IntoIterator<Item = Version>) -> Self {
        let releases = dir.join(RELEASES);
        let mut by_hash = HashMap::new();
        for version in versions {
            let Ok(text) = read_bounded(&releases.join(format!("{version}.json")), MAX_JSON_FILE_BYTES) else {
                continue;
            };
            let Ok(files) = serde_json::from_slice::<Vec<ManifestEntry>>(&text) else { continue };
            let folder = releases.join(version.to_string());
            for file in files {
                by_hash.entry(file.sha256).or_insert_with(|| (folder.clone(), file.path));
            }
        }
        Self { by_hash }
    }

    /// Copies the content `entry` lists into `target` from a release that
    /// holds it, if one does and its copy there is still intact.
    fn copy(&self, entry: &ManifestEntry, target: &Path) -> bool {
        let Some((folder, rel)) = self.by_hash.get(&entry.sha256) else { return false };
        open_below(folder, rel)
            .and_then(|source| copy_verified(source, target, &entry.sha256, entry.size))
            .unwrap_or(false)
    }
}

/// Network traffic of one attempt, counted as it goes.
#[derive(Debug, Default)]
struct Traffic {
    files: u64,
    bytes: u64,
}

/// Every content of a release, verified against its manifest, waiting in
/// `.partial/`: the only way to a [`Built`] release.
#[derive(Debug)]
struct Fetched {
    manifest: Manifest,
    version: Version,
    partial: PathBuf,
}

/// Makes sure every content `manifest` lists is in `.partial/<sha256>`,
/// verified: left complete by an earlier run, copied from a release on
/// the device, or fetched (continuing what an earlier run got of it).
async fn fetch(
    client: &Client,
    dir: &Path,
    version: Version,
    manifest: Manifest,
    local: &LocalContent,
    traffic: &mut Traffic,
) -> Result<Fetched, UpdateError> {
    let partial = create_dirs(dir, [PARTIAL]).map_err(io_error("create", &dir.join(PARTIAL)))?;
    let mut seen = HashSet::new();
    for entry in manifest.files() {
        if !seen.insert(entry.sha256) {
            continue;
        }
        let path = partial.join(entry.sha256.to_hex());
        if holds_exactly(&path, &entry.sha256, entry.size).map_err(io_error("read", &path))? || local.copy(entry, &path)
        {
            continue;
        }
        let file = open_partial(&path, entry.size).map_err(io_error("open", &path))?;
        traffic.files += 1;
        let fetched = client.fetch_content(&entry.sha256, entry.size, &file).await;
        let arrived = fetched.map_err(|source| UpdateError::Fetch { path: entry.path.clone(), source })?;
        traffic.bytes += arrived;
        file.sync_all().map_err(io_error("sync", &path))?;
        let reread = OpenOptions::new().read(true).custom_flags(OFlags::NOFOLLOW.bits() as i32).open(&path);
        let (got, _) = reread.and_then(Sha256Digest::of_reader).map_err(io_error("read", &path))?;
        if got != entry.sha256 {
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            return Err(UpdateError::Mismatch { path: entry.path.clone(), expected: entry.sha256, got });
        }
    }
    Ok(Fetched { manifest, version, partial })
}

/// `.partial/<sha256>` opened to append the rest of its content; a file
/// as long as the content (or longer) that did not verify starts over.
fn open_partial(path: &Path, size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if file.metadata()?.len() >= size {
        file.set_len(0)?;
    }
    Ok(file)
}

/// A complete release in `releases/<version>/`, every file and folder
/// fsynced: the only thing `current` is switched to.
#[derive(Debug)]
struct Built {
    version: Version,
}

impl Fetched {
    /// Lays the release out in `releases/.build-<version>/` (content moved
    /// in from `.partial/`, modes set, everything fsynced), writes its
    /// manifest beside it, then renames it to `releases/<version>`.
    fn build(self, dir: &Path) -> Result<Built, UpdateError> {
        let releases = create_dirs(dir, [RELEASES]).map_err(io_error("create", &dir.join(RELEASES)))?;
        let build = releases.join(format!("{BUILD_PREFIX}{}", self.version));
        remove_any(&build).map_err(io_error("remove", &build))?;
        fs::create_dir(&build).map_err(io_error("create", &build))?;
        let mut placed: HashMap<Sha256Digest, &RelPath> = HashMap::new();
        let mut folders = HashSet::from([build.clone()]);
        for entry in self.manifest.files() {
            let parent = create_dirs(&build, entry.path.folders()).map_err(io_error("create", &build))?;
            let target = parent.join(entry.path.file_name());
            folders.insert(parent);
            match placed.get(&entry.sha256) {
                None => {
                    let source = self.partial.join(entry.sha256.to_hex());
                    fs::rename(&source, &target).map_err(io_error("move into the release", &source))?;
                    placed.insert(entry.sha256, &entry.path);
                }
                // The same content twice in one release: a copy of the first.
                Some(first) => {
                    let source = open_below(&build, first).map_err(io_error("read", &build.join(first.as_str())))?;
                    if !copy_verified(source, &target, &entry.sha256, entry.size)
                        .map_err(io_error("copy to", &target))?
                    {
                        return Err(io_error("copy to", &target)(io::Error::other("the copy does not verify")));
                    }
                }
            }
            let file = open_below(&build, &entry.path).map_err(io_error("open", &target))?;
            file.set_permissions(fs::Permissions::from_mode(entry.mode & MODE_MASK))
                .and_then(|()| file.sync_all())
                .map_err(io_error("set the mode of", &target))?;
        }
        for folder in &folders {
            sync_dir(folder).map_err(io_error("sync", folder))?;
        }
        let files = serde_json::to_vec(self.manifest.files())
            .map_err(|e| io_error("write the manifest of", &build)(e.into()))?;
        write_atomically(&releases, &format!("{}.json", self.version), &files)?;
        let release = releases.join(self.version.to_string());
        remove_any(&release).map_err(io_error("remove", &release))?;
        fs::rename(&build, &release).map_err(io_error("rename", &build))?;
        sync_dir(&releases).map_err(io_error("sync", &releases))?;
        Ok(Built { version: self.version })
    }
}

/// Removes a folder tree or a file; a link is removed, not followed.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `current` points at a new release; the hook decides whether it stays.
#[derive(Debug)]
struct Switched {
    from: Option<Version>,
}

impl Built {
    fn switch(self, dir: &Path, from: Option<Version>) -> Result<Switched, UpdateError> {
        switch_current(dir, Some(self.version))?;
        Ok(Switched { from })
    }
}

impl Switched {
    /// The new release stays; the one before becomes the previous.
    fn keep(self, state: &mut State) {
        if self.from.is_some() {
            state.previous = self.from;
        }
        state.refused = None;
    }

    /// Back to the release before (or to none, if there was none).
    fn back(self, dir: &Path) -> Result<(), UpdateError> {
        switch_current(dir, self.from)
    }
}

/// Why the hook is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Apply,
    Rollback,
}

impl HookPhase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Rollback => "rollback",
        }
    }
}

/// The `--on-update` command, as it is run for one update folder.
#[derive(Debug, Clone, Copy)]
pub struct Hook<'a> {
    pub command: &'a str,
    pub timeout: Duration,
    /// `DIR/current`, which it is told to use.
    pub release_dir: &'a Path,
}

impl Hook<'_> {
    /// Runs the command with `sh -c` in its own process group, its output
    /// on stderr (stdout may carry `--json`), and waits at most the
    /// timeout, after which the whole group is killed. `Err` says what
    /// went wrong.
    pub async fn run(&self, phase: HookPhase, version: Version, previous: Option<Version>) -> Result<(), String> {
        let command = self.command;
        let cannot_start = |e: io::Error| format!("cannot start {command:?}: {e}");
        let stderr = io::stderr().as_fd().try_clone_to_owned().map_err(cannot_start)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("LOGFERRY_VERSION", version.to_string())
            .env("LOGFERRY_PREVIOUS_VERSION", previous.map(|v| v.to_string()).unwrap_or_default())
            .env("LOGFERRY_RELEASE_DIR", self.release_dir)
            .env("LOGFERRY_UPDATE", phase.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .process_group(0)
            .spawn()
            .map_err(cannot_start)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{command:?} {}", describe_exit(status))),
                Ok(None) if tokio::time::Instant::now() < deadline => tokio::time::sleep(HOOK_POLL).await,
                waited => {
                    // The group, not just the shell: whatever it started goes too.
                    let group = rustix::process::Pid::from_child(&child);
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                    let _ = child.wait();
                    return Err(match waited {
                        Err(e) => format!("cannot wait for {command:?}: {e}; it was stopped"),
                        _ => format!(
                            "{command:?} ran longer than --update-timeout ({}) and was stopped",
                            humantime::format_duration(self.timeout)
                        ),
                    });
                }
            }
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// Checks for, fetches, installs and reports the release published for
/// this device; see the module's documentation. Never fails: what went
/// wrong is in the summary's reason.
pub async fn update(client: &Client, config: &UpdateConfig) -> UpdateSummary {
    let mut summary = UpdateSummary {
        outcome: RunOutcome::Failed,
        version: None,
        previous: None,
        fetched_files: 0,
        fetched_bytes: 0,
        reason: None,
    };
    match attempt(client, config, &mut summary).await {
        Ok(outcome) => summary.outcome = outcome,
        Err(err) => {
            summary.outcome = RunOutcome::Failed;
            summary.reason = Some(err.to_string());
        }
    }
    // Without a version the receiver never answered the poll: nothing to report.
    if let (Some(version), Some(outcome)) = (summary.version, reported_outcome(summary.outcome)) {
        let report = UpdateReport {
            version,
            outcome,
            reason: summary.reason.as_deref().map(|reason| bounded_reason(reason).to_owned()),
        };
        if let Err(err) = client.report(&report).await {
            eprintln!("sender: update: cannot report {} to the receiver: {err}", outcome.as_str());
        }
    }
    summary
}

/// The outcome the receiver is told of; the poll itself says "up to date".
fn reported_outcome(outcome: RunOutcome) -> Option<UpdateOutcome> {
    match outcome {
        RunOutcome::Updated => Some(UpdateOutcome::Updated),
        RunOutcome::RolledBack => Some(UpdateOutcome::RolledBack),
        RunOutcome::Failed => Some(UpdateOutcome::Failed),
        RunOutcome::NothingPublished | RunOutcome::UpToDate | RunOutcome::HeldBack => None,
    }
}

async fn attempt(
    client: &Client,
    config: &UpdateConfig,
    summary: &mut UpdateSummary,
) -> Result<RunOutcome, UpdateError> {
    let dir = config.dir.as_path();
    let _lock = lock(dir)?;
    let mut state = State::read(dir)?;
    let current = current_version(dir)?;
    if let Some(unconfirmed) = state.unconfirmed.take() {
        if current == Some(unconfirmed.version) {
            return roll_back_unconfirmed(config, unconfirmed, &mut state, summary).await;
        }
        // Not switched to after all (the run died just before): nothing to undo.
        state.write(dir)?;
    }
    summary.previous = current;
    let reply = client.poll(current).await.map_err(UpdateError::Poll)?;
    let Some(version) = reply.version else { return Ok(RunOutcome::NothingPublished) };
    summary.version = Some(version);
    if Some(version) == current {
        return Ok(RunOutcome::UpToDate);
    }
    if let Some(refused) = state.holds_back(version) {
        summary.reason = Some(format!("it was rolled back before ({}); waiting for a newer release", refused.reason));
        return Ok(RunOutcome::HeldBack);
    }
    let manifest = Manifest::checked(version, reply.files.ok_or(UpdateError::NoFiles(version))?)?;
    // The published version itself too: a run that stopped after building
    // it but before the switch left it complete.
    let local = LocalContent::of(dir, current.into_iter().chain(state.previous).chain([version]));
    let mut traffic = Traffic::default();
    let fetched = fetch(client, dir, version, manifest, &local, &mut traffic).await;
    (summary.fetched_files, summary.fetched_bytes) = (traffic.files, traffic.bytes);
    let built = fetched?.build(dir)?;
    state.unconfirmed = Some(Unconfirmed { version, from: current });
    state.write(dir)?;
    let switched = built.switch(dir, current)?;
    let release_dir = dir.join(CURRENT);
    let hook =
        config.hook.as_deref().map(|command| Hook { command, timeout: config.hook_timeout, release_dir: &release_dir });
    let applied = match hook {
        Some(hook) => hook.run(HookPhase::Apply, version, current).await,
        None => Ok(()),
    };
    let outcome = match applied {
        Ok(()) => {
            switched.keep(&mut state);
            RunOutcome::Updated
        }
        Err(why) => {
            switched.back(dir)?;
            let mut reason = format!("the hook failed on the new release: {why}");
            if let (Some(hook), Some(old)) = (hook, current)
                && let Err(again) = hook.run(HookPhase::Rollback, old, Some(version)).await
            {
                reason.push_str(&format!("; on the release gone back to it failed too: {again}"));
            }
            state.refused = Some(Refused { version, reason: reason.clone() });
            summary.reason = Some(reason);
            RunOutcome::RolledBack
        }
    };
    state.unconfirmed = None;
    state.write(dir)?;
    let keep = [current_version(dir)?, state.previous].into_iter().flatten().collect();
    remove_other_releases(dir, &keep);
    Ok(outcome)
}

/// Goes back from a release whose hook never finished (the run before
/// died while it ran): what nothing confirmed does not stay.
async fn roll_back_unconfirmed(
    config: &UpdateConfig,
    unconfirmed: Unconfirmed,
    state: &mut State,
    summary: &mut UpdateSummary,
) -> Result<RunOutcome, UpdateError> {
    let dir = config.dir.as_path();
    let Unconfirmed { version, from } = unconfirmed;
    (summary.version, summary.previous) = (Some(version), Some(version));
    let mut reason = "the sender stopped before the hook on the new release finished".to_owned();
    switch_current(dir, from)?;
    let release_dir = dir.join(CURRENT);
    if let (Some(command), Some(old)) = (config.hook.as_deref(), from) {
        let hook = Hook { command, timeout: config.hook_timeout, release_dir: &release_dir };
        if let Err(again) = hook.run(HookPhase::Rollback, old, Some(version)).await {
            reason.push_str(&format!("; on the release gone back to the hook failed too: {again}"));
        }
    }
    state.refused = Some(Refused { version, reason: reason.clone() });
    state.write(dir)?;
    summary.reason = Some(reason);
    Ok(RunOutcome::RolledBack)
}

/// Holds `DIR/.lock` for the attempt, so that two runs never build or
/// switch at once; the system releases it however the process ends.
fn lock(dir: &Path) -> Result<File, UpdateError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(io_error("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(UpdateError::Busy(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(io_error("lock", &path)(e)),
    }
}

/// Removes every release but `keep` (and leftover builds), and what is in
/// `.partial/`, once a release is settled: content there belonged to a
/// release that is in place or was given up on. Failures are said, not
/// fatal: they only cost space.
fn remove_other_releases(dir: &Path, keep: &HashSet<Version>) {
    let kept_names: HashSet<String> =
        keep.iter().flat_map(|version| [version.to_string(), format!("{version}.json")]).collect();
    for (folder, keep_names) in [(dir.join(RELEASES), kept_names), (dir.join(PARTIAL), HashSet::new())] {
        let Ok(entries) = fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if keep_names.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            if let Err(e) = remove_any(&path) {
                eprintln!("sender: update: cannot remove {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use super::*;

    fn version(seed: &str) -> Version {
        Version(Sha256Digest::of_bytes(seed.as_bytes()))
    }

    fn entry(path: &str, content: &[u8], mode: u32) -> ManifestEntry {
        ManifestEntry {
            path: RelPath::parse(path).expect("valid"),
            size: content.len() as u64,
            sha256: Sha256Digest::of_bytes(content),
            mode,
        }
    }

    #[test]
    fn the_state_file_round_trips_and_a_garbled_one_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(State::read(dir.path()).expect("none yet"), State::default());
        let state = State {
            previous: Some(version("a")),
            refused: Some(Refused { version: version("b"), reason: "hook failed".into() }),
            unconfirmed: Some(Unconfirmed { version: version("c"), from: Some(version("a")) }),
        };
        state.write(dir.path()).expect("written");
        assert_eq!(State::read(dir.path()).expect("read"), state);
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [STATE_FILE], "no temporary file is left behind");
        fs::write(dir.path().join(STATE_FILE), b"{not json").expect("garble");
        assert_eq!(State::read(dir.path()).expect("read"), State::default());
    }

    #[test]
    fn a_refused_version_is_held_back_until_another_is_published() {
        let state = State { refused: Some(Refused { version: version("b"), reason: "no".into() }), ..State::default() };
        assert_eq!(state.holds_back(version("b")).map(|r| r.reason.as_str()), Some("no"));
        assert!(state.holds_back(version("c")).is_none());
        assert!(State::default().holds_back(version("b")).is_none());
    }

    #[test]
    fn current_switches_atomically_and_only_a_link_into_releases_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (version("1"), version("2"));
        for v in [one, two] {
            fs::create_dir_all(dir.path().join(release_link(v))).expect("release");
        }
        assert_eq!(current_version(dir.path()).expect("none"), None);
        switch_current(dir.path(), Some(one)).expect("switch");
        assert_eq!(current_version(dir.path()).expect("one"), Some(one));
        switch_current(dir.path(), Some(two)).expect("switch");
        assert_eq!(current_version(dir.path()).expect("two"), Some(two));
        assert_eq!(fs::read_link(dir.path().join(CURRENT)).expect("link"), release_link(two), "relative");
        assert!(!dir.path().join(NEXT_CURRENT).exists());
        switch_current(dir.path(), None).expect("remove");
        assert_eq!(current_version(dir.path()).expect("none"), None);

        std::os::unix::fs::symlink("/tmp", dir.path().join(CURRENT)).expect("planted");
        assert!(matches!(current_version(dir.path()), Err(UpdateError::StrangeCurrent(_))));
        fs::remove_file(dir.path().join(CURRENT)).expect("rm");
        std::os::unix::fs::symlink(release_link(version("3")), dir.path().join(CURRENT)).expect("dangling");
        assert!(matches!(current_version(dir.path()), Err(UpdateError::StrangeCurrent(_))), "no such release");
    }

    #[test]
    fn open_below_follows_no_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("real")).expect("mkdir");
        fs::write(dir.path().join("real/f"), b"x").expect("write");
        std::os::unix::fs::symlink("real", dir.path().join("linked")).expect("symlink");
        std::os::unix::fs::symlink("f", dir.path().join("real/g")).expect("symlink");
        let open = |rel: &str| open_below(dir.path(), &RelPath::parse(rel).expect("valid"));
        assert!(open("real/f").is_ok());
        assert!(open("linked/f").is_err(), "a linked folder");
        assert!(open("real/g").is_err(), "a linked file");
    }

    #[test]
    fn a_copy_is_kept_only_if_it_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        fs::write(&source, b"hello").expect("write");
        let digest = Sha256Digest::of_bytes(b"hello");
        let open = || File::open(&source).expect("open");
        assert!(copy_verified(open(), &target, &digest, 5).expect("copy"));
        assert_eq!(fs::read(&target).expect("read"), b"hello");
        assert!(!copy_verified(open(), &target, &Sha256Digest::of_bytes(b"other"), 5).expect("copy"));
        assert!(!target.exists(), "a copy that does not verify is removed");
        assert!(!copy_verified(open(), &target, &digest, 4).expect("copy"), "longer than listed");
    }

    #[test]
    fn a_build_lays_out_every_file_with_its_mode_and_fsyncs_it_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files =
            [("run.sh", &b"#!/bin/sh\n"[..], 0o755), ("conf/a.ini", b"same", 0o640), ("conf/b.ini", b"same", 0o600)];
        let manifest = Manifest::new(files.iter().map(|(p, c, m)| entry(p, c, *m)).collect()).expect("valid");
        let v = manifest.version();
        let partial = create_dirs(dir.path(), [PARTIAL]).expect("partial");
        for (_, content, _) in &files {
            fs::write(partial.join(Sha256Digest::of_bytes(content).to_hex()), content).expect("write");
        }
        let built = Fetched { manifest, version: v, partial }.build(dir.path()).expect("built");
        let release = dir.path().join(release_link(built.version));
        for (path, content, mode) in files {
            assert_eq!(fs::read(release.join(path)).expect("read"), content, "{path}");
            assert_eq!(fs::metadata(release.join(path)).expect("meta").mode() & 0o7777, mode, "{path}");
        }
        let listed: Vec<ManifestEntry> =
            serde_json::from_slice(&fs::read(dir.path().join(RELEASES).join(format!("{v}.json"))).expect("json"))
                .expect("parse");
        assert_eq!(Manifest::checked(v, listed).expect("same release").version(), v);
        assert!(!dir.path().join(RELEASES).join(format!("{BUILD_PREFIX}{v}")).exists());
    }

    #[test]
    fn a_local_release_gives_its_content_only_while_it_is_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = entry("app/main.py", b"print(1)\n", 0o644);
        let manifest = Manifest::new(vec![old.clone()]).expect("valid");
        let v = manifest.version();
        let release = dir.path().join(release_link(v));
        fs::create_dir_all(release.join("app")).expect("mkdir");
        fs::write(release.join("app/main.py"), b"print(1)\n").expect("write");
        fs::write(
            dir.path().join(RELEASES).join(format!("{v}.json")),
            serde_json::to_vec(manifest.files()).expect("json"),
        )
        .expect("json");
        let local = LocalContent::of(dir.path(), [v]);
        let wanted = entry("elsewhere/same.py", b"print(1)\n", 0o600);
        let target = dir.path().join("copy");
        assert!(local.copy(&wanted, &target));
        assert_eq!(fs::read(&target).expect("read"), b"print(1)\n");
        fs::write(release.join("app/main.py"), b"print(2)\n").expect("edited in place");
        assert!(!local.copy(&wanted, &target), "an edited file is not taken");
        assert!(!local.copy(&entry("x", b"unknown", 0o644), &target));
    }

    fn hook<'a>(command: &'a str, timeout: Duration, release_dir: &'a Path) -> Hook<'a> {
        Hook { command, timeout, release_dir }
    }

    #[tokio::test]
    async fn the_hook_gets_its_environment_and_its_exit_status_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env");
        let command = format!(
            "echo \"$LOGFERRY_UPDATE $LOGFERRY_VERSION [$LOGFERRY_PREVIOUS_VERSION] $LOGFERRY_RELEASE_DIR\" > {}",
            out.display()
        );
        let release_dir = dir.path().join(CURRENT);
        let run = hook(&command, Duration::from_secs(10), &release_dir);
        run.run(HookPhase::Apply, version("new"), None).await.expect("succeeds");
        assert_eq!(
            fs::read_to_string(&out).expect("written"),
            format!("apply {} [] {}\n", version("new"), release_dir.display())
        );
        run.run(HookPhase::Rollback, version("old"), Some(version("new"))).await.expect("succeeds");
        assert_eq!(
            fs::read_to_string(&out).expect("written"),
            format!("rollback {} [{}] {}\n", version("old"), version("new"), release_dir.display())
        );
        let failed =
            hook("exit 3", Duration::from_secs(10), &release_dir).run(HookPhase::Apply, version("new"), None).await;
        assert_eq!(failed, Err("\"exit 3\" exited with status 3".to_owned()));
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("still-running");
        // The background child would write the marker after 2 s if it survived.
        let command = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let result =
            hook(&command, Duration::from_millis(300), dir.path()).run(HookPhase::Apply, version("v"), None).await;
        let err = result.expect_err("timed out");
        assert!(err.contains("ran longer than --update-timeout (300ms)"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the hook's own child was killed with it");
    }
}
