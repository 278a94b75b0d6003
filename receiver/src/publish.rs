//! The publish folder (`--publish DIR`): what each device's release is.
//!
//! `DIR/all/` goes to every device, `DIR/<label>/` to the devices with that
//! label in the ids file, laid over `all/`. [`PublishFolder::scan`] looks
//! at the folder every second (on a blocking thread), hashing only files
//! whose [`Stamp`] changed, and takes a tree's new state only once nothing
//! in it changed for `settle`: a file still being copied in is never
//! published half-written. Each release is a [`Manifest`]; content is found
//! by SHA-256 within one device's release only, and is served only while
//! the file still has the stamp it was hashed with.
//!
//! Nothing here follows a link: the walk skips symbolic links and special
//! files, and published files are opened with `O_NOFOLLOW`.
//!
//! [`place`] is `receiver publish`: it copies files in atomically, through
//! `DIR/.incoming/`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_common::durable::{create_dirs, sync_dir};
use logferry_common::rel_path::MAX_DEPTH;
use logferry_common::update::{MAX_RELEASE_FILES, MODE_MASK, Manifest, ManifestEntry, Version};
use logferry_common::{PathError, RelPath, Sha256Digest};
use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::ids::Device;

/// The tree every device gets.
pub const ALL: &str = "all";
/// Where `receiver publish` stages its copies; hidden, so never a tree.
const INCOMING: &str = ".incoming";

/// The default for [`Publish::settle`]: longer than a copy pauses between
/// two writes, short enough that an admin does not wonder.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);

/// Where releases are published from, and how long a tree must be still
/// before its new state is taken.
#[derive(Debug, Clone)]
pub struct Publish {
    pub dir: PathBuf,
    pub settle: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot use the publish folder {}: {source}", dir.display())]
    Folder { dir: PathBuf, source: io::Error },
    #[error(
        "{0:?} has no publish folder: give \"all\", or a device label that is a single path component \
         not starting with '.'"
    )]
    Target(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is a symbolic link or a special file; only regular files and folders are published", path.display())]
    NotRegular { path: PathBuf },
    #[error("{} cannot be published under that name: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: PathError },
    #[error("cannot place {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What identifies one version of a file on disk. Any write changes its
/// ctime, so an equal stamp means the bytes hashed are still the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// When an entry last changed, for the settle rule. The ctime alone:
/// every change of the mtime (a write, `touch`, `cp -p`) sets it to the
/// present, and unlike the mtime nobody can set it into the future, where
/// a tree would never settle.
fn changed_at(meta: &Metadata) -> SystemTime {
    let (seconds, nanos) = (meta.ctime(), meta.ctime_nsec());
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(seconds), Ok(nanos)) => UNIX_EPOCH + Duration::new(seconds, nanos),
        _ => UNIX_EPOCH,
    }
}

/// A published file: where it is and what it was when it was hashed.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    stamp: Stamp,
    sha256: Sha256Digest,
    mode: u32,
}

/// Why a published file cannot be served as its manifest lists it.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("the published file {} changed after its release was made; poll for the new release", path.display())]
    Changed { path: PathBuf },
    #[error("cannot read the published file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl Source {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.stamp.size
    }

    /// Opens the file, refusing it unless it is still what was hashed (a
    /// link, a FIFO or a rewrite put there since has another stamp; opening
    /// does not wait on a FIFO).
    pub fn open(&self) -> Result<File, ContentError> {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
            .open(&self.path)
            .and_then(|file| file.metadata().map(|meta| (file, meta)));
        match opened {
            Ok((file, meta)) if meta.is_file() && Stamp::of(&meta) == self.stamp => Ok(file),
            Ok(_) => Err(ContentError::Changed { path: self.path.clone() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                Err(ContentError::Changed { path: self.path.clone() })
            }
            Err(source) => Err(ContentError::Io { path: self.path.clone(), source }),
        }
    }
}

/// One device's release: the manifest, its version, and where each listed
/// content is.
#[derive(Debug)]
pub struct Release {
    manifest: Manifest,
    version: Version,
    by_hash: HashMap<Sha256Digest, Source>,
}

impl Release {
    fn of(files: &BTreeMap<RelPath, Source>) -> Result<Self, logferry_common::update::ManifestError> {
        let entries = files
            .iter()
            .map(|(path, source)| ManifestEntry {
                path: path.clone(),
                size: source.stamp.size,
                sha256: source.sha256,
                mode: source.mode,
            })
            .collect();
        let manifest = Manifest::new(entries)?;
        let by_hash = files.values().map(|source| (source.sha256, source.clone())).collect();
        Ok(Self { version: manifest.version(), manifest, by_hash })
    }

    /// Nothing to install: what a device gets before anything is published.
    fn empty() -> Self {
        let manifest = Manifest::new(Vec::new()).expect("no files cannot clash or be too many");
        Self { version: manifest.version(), manifest, by_hash: HashMap::new() }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The file with this content, if this release lists it.
    pub fn source(&self, sha256: &Sha256Digest) -> Option<&Source> {
        self.by_hash.get(sha256)
    }
}

/// Every release as the last scan left them.
#[derive(Debug)]
struct Releases {
    /// `all/` alone, for devices without a tree of their own.
    all: Arc<Release>,
    by_label: HashMap<String, Arc<Release>>,
}

/// The files of one settled tree, by path.
type Tree = BTreeMap<RelPath, Source>;

/// What the scans remember between runs.
#[derive(Debug, Default)]
struct Scanner {
    /// The last hash of each file, with the stamp it was taken at.
    hashes: HashMap<PathBuf, (Stamp, Sha256Digest)>,
    /// Each tree's published state: the last one that had settled.
    trees: BTreeMap<String, Tree>,
    /// Problems already logged, so each is said once, not every second.
    warned: HashSet<String>,
}

impl Scanner {
    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            tracing::warn!("publish folder: {message}");
        }
    }
}

/// The publish folder and the releases made from it, shared by every
/// request; [`scan`](Self::scan) keeps them current.
#[derive(Debug)]
pub struct PublishFolder {
    config: Publish,
    scanner: Mutex<Scanner>,
    releases: Mutex<Arc<Releases>>,
}

/// The tree of a device's label: its label itself, if that can be a folder
/// name of its own (a single path component that is not hidden).
pub fn label_folder(label: &str) -> Option<&str> {
    let path = RelPath::parse(label).ok()?;
    (path.components().count() == 1 && !label.starts_with('.')).then_some(label)
}

impl PublishFolder {
    /// Opens the folder (creating it if missing) and takes its settled
    /// state, so the first polls already get the releases.
    pub fn open(config: Publish) -> Result<Self, PublishError> {
        fs::create_dir_all(&config.dir)
            .and_then(|()| fs::read_dir(&config.dir).map(drop))
            .map_err(|source| PublishError::Folder { dir: config.dir.clone(), source })?;
        let folder = Self {
            config,
            scanner: Mutex::default(),
            releases: Mutex::new(Arc::new(Releases { all: Arc::new(Release::empty()), by_label: HashMap::new() })),
        };
        folder.scan();
        Ok(folder)
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The release of `device`: its label's tree over `all/`, or `all/`.
    pub fn release_for(&self, device: &Device) -> Arc<Release> {
        let releases = Arc::clone(&self.releases.lock().unwrap_or_else(PoisonError::into_inner));
        let own = device.label.as_deref().and_then(label_folder).and_then(|label| releases.by_label.get(label));
        Arc::clone(own.unwrap_or(&releases.all))
    }

    /// Looks at the folder once, and publishes the trees that changed and
    /// have settled. Blocking (it hashes): run it off the async threads.
    pub fn scan(&self) {
        let mut scanner = self.scanner.lock().unwrap_or_else(PoisonError::into_inner);
        let names = match tree_names(&self.config.dir, &mut scanner) {
            Ok(names) => names,
            Err(err) => {
                scanner.warn_once(format!("{err}; the releases stay as they were"));
                return;
            }
        };
        let now = SystemTime::now();
        let mut seen = HashSet::new();
        let mut changed = false;
        scanner.trees.retain(|name, _| {
            let kept = names.contains(name);
            changed |= !kept;
            kept
        });
        for name in names {
            let root = self.config.dir.join(&name);
            if let Some(tree) = self.settled_tree(&root, now, &mut scanner, &mut seen)
                && scanner.trees.get(&name).is_none_or(|old| !same_tree(old, &tree))
            {
                scanner.trees.insert(name, tree);
                changed = true;
            }
        }
        scanner.hashes.retain(|path, _| seen.contains(path));
        if changed {
            let releases = releases(&mut scanner);
            *self.releases.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(releases);
        }
    }

    /// The tree below `root` if it has settled and every file could be
    /// hashed as it is; `None` keeps the tree's previous state.
    fn settled_tree(
        &self,
        root: &Path,
        now: SystemTime,
        scanner: &mut Scanner,
        seen: &mut HashSet<PathBuf>,
    ) -> Option<Tree> {
        let mut files = Vec::new();
        let mut latest = UNIX_EPOCH;
        let walked = walk(root, &mut |found| match found {
            Found::Folder(meta) => latest = latest.max(changed_at(&meta)),
            Found::File(relative, meta) => {
                latest = latest.max(changed_at(&meta));
                seen.insert(root.join(&relative));
                files.push((relative, meta));
            }
            Found::Skipped(message) => scanner.warn_once(message),
        });
        if let Err(err) = walked {
            scanner.warn_once(format!("cannot read {}: {err}", root.display()));
            return None;
        }
        if now.duration_since(latest).unwrap_or_default() < self.config.settle {
            return None;
        }
        if files.len() > MAX_RELEASE_FILES {
            scanner.warn_once(format!(
                "{} holds {} files; a release lists at most {MAX_RELEASE_FILES}, so it is not published",
                root.display(),
                files.len()
            ));
            return None;
        }
        let mut tree = Tree::new();
        for (relative, meta) in files {
            let path = root.join(&relative);
            let name = match RelPath::from_local(&relative) {
                Ok(name) => name,
                Err(reason) => {
                    scanner.warn_once(PublishError::InvalidPath { path, reason }.to_string());
                    continue;
                }
            };
            let stamp = Stamp::of(&meta);
            let sha256 = match scanner.hashes.get(&path) {
                Some((hashed, sha256)) if *hashed == stamp => *sha256,
                _ => match hash_unchanged(&path, stamp) {
                    Ok(Some(sha256)) => {
                        scanner.hashes.insert(path.clone(), (stamp, sha256));
                        sha256
                    }
                    // Changed while it was hashed: it has not settled after all.
                    Ok(None) => return None,
                    Err(err) => {
                        scanner.warn_once(format!("cannot read {}: {err}", path.display()));
                        return None;
                    }
                },
            };
            tree.insert(name, Source { path, stamp, sha256, mode: meta.mode() & MODE_MASK });
        }
        Some(tree)
    }
}

/// The non-hidden folders at the top of `dir`: the trees.
fn tree_names(dir: &Path, scanner: &mut Scanner) -> io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            scanner.warn_once(format!("{} is not a valid UTF-8 name; skipped", entry.path().display()));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            names.insert(name);
        } else {
            scanner.warn_once(format!(
                "{} is not a folder; only the files in {ALL}/ and in label folders are published",
                entry.path().display()
            ));
        }
    }
    Ok(names)
}

fn same_tree(a: &Tree, b: &Tree) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((pa, sa), (pb, sb))| pa == pb && sa.stamp == sb.stamp)
}

/// Hashes the file at `path` if it is still the one with `stamp`, before and
/// after; `None` if it changed.
fn hash_unchanged(path: &Path, stamp: Stamp) -> io::Result<Option<Sha256Digest>> {
    let file =
        OpenOptions::new().read(true).custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32).open(path)?;
    if Stamp::of(&file.metadata()?) != stamp {
        return Ok(None);
    }
    let (sha256, _) = Sha256Digest::of_reader_expecting(&file, stamp.size)?;
    Ok((Stamp::of(&file.metadata()?) == stamp).then_some(sha256))
}

/// Every release from the settled trees: each label's over `all/`.
fn releases(scanner: &mut Scanner) -> Releases {
    let all = scanner.trees.get(ALL).cloned().unwrap_or_default();
    let mut made = Vec::new();
    for (label, own) in scanner.trees.iter().filter(|(name, _)| name.as_str() != ALL) {
        made.push((label.clone(), overlay(&all, own)));
    }
    let mut by_label = HashMap::new();
    for (label, (files, dropped)) in made {
        for path in dropped {
            scanner.warn_once(format!(
                "{ALL}/{path} is not given to devices labelled {label:?}: their folder has a file or folder in its way"
            ));
        }
        match Release::of(&files) {
            Ok(release) => {
                tracing::info!(label, version = %release.version.short(), files = files.len(), "release published");
                by_label.insert(label, Arc::new(release));
            }
            Err(err) => scanner.warn_once(format!("the release of {label:?} is not published: {err}")),
        }
    }
    let all = match Release::of(&all) {
        Ok(release) => release,
        Err(err) => {
            scanner.warn_once(format!("the release of {ALL}/ is not published: {err}"));
            Release::empty()
        }
    };
    tracing::info!(label = ALL, version = %all.version.short(), files = all.by_hash.len(), "release published");
    Releases { all: Arc::new(all), by_label }
}

/// `own` over `base`: own files win at the same path, and a base file that
/// would be a folder of an own file, or whose folder is an own file, is
/// dropped (and returned).
fn overlay(base: &Tree, own: &Tree) -> (Tree, Vec<RelPath>) {
    let own_folders: HashSet<String> = own
        .keys()
        .flat_map(|path| {
            let mut prefix = String::new();
            path.folders()
                .map(|folder| {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(folder);
                    prefix.clone()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut files = own.clone();
    let mut dropped = Vec::new();
    for (path, source) in base {
        if own.contains_key(path) {
            continue;
        }
        let mut prefix = String::new();
        let under_own_file = path.folders().any(|folder| {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(folder);
            RelPath::parse(&prefix).is_ok_and(|p| own.contains_key(&p))
        });
        if under_own_file || own_folders.contains(path.as_str()) {
            dropped.push(path.clone());
        } else {
            files.insert(path.clone(), source.clone());
        }
    }
    (files, dropped)
}

/// What a walk finds.
enum Found {
    /// A folder's metadata (the root's included).
    Folder(Metadata),
    /// A regular file, relative to the root.
    File(PathBuf, Metadata),
    /// Something skipped, and why.
    Skipped(String),
}

/// Every folder and regular file below `root`, never following a link;
/// links, special files and anything deeper than a path may be are
/// skipped.
fn walk(root: &Path, visit: &mut impl FnMut(Found)) -> io::Result<()> {
    visit(Found::Folder(fs::symlink_metadata(root)?));
    walk_below(root, Path::new(""), visit)
}

fn walk_below(root: &Path, relative: &Path, visit: &mut impl FnMut(Found)) -> io::Result<()> {
    for entry in fs::read_dir(root.join(relative))? {
        let entry = entry?;
        let child = relative.join(entry.file_name());
        let meta = entry.metadata()?;
        if meta.is_dir() {
            if child.components().count() >= MAX_DEPTH {
                visit(Found::Skipped(format!("{} is deeper than a path may be; skipped", root.join(&child).display())));
                continue;
            }
            visit(Found::Folder(meta));
            walk_below(root, &child, visit)?;
        } else if meta.is_file() {
            visit(Found::File(child, meta));
        } else {
            visit(Found::Skipped(format!("{}; skipped", PublishError::NotRegular { path: root.join(child) })));
        }
    }
    Ok(())
}

/// One file `receiver publish` placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub path: PathBuf,
    pub size: u64,
    pub mode: u32,
}

/// Copies `src` (a file, or a folder's files with their relative paths)
/// into `dir/<to>/`, each through a copy in `dir/.incoming/` that is
/// fsynced, given its mode (masked), and renamed into place, its folder
/// fsynced after: a scan sees each file whole or not at all. Links and
/// special files in a source folder are skipped and returned as warnings.
pub fn place(dir: &Path, src: &Path, to: &str) -> Result<(Vec<Placed>, Vec<String>), PublishError> {
    if to != ALL && label_folder(to).is_none() {
        return Err(PublishError::Target(to.to_owned()));
    }
    let read = |source| PublishError::Read { path: src.to_owned(), source };
    let meta = fs::symlink_metadata(src).map_err(read)?;
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    if meta.is_file() {
        let name = src.file_name().map(PathBuf::from).unwrap_or_default();
        files.push((src.to_owned(), name));
    } else if meta.is_dir() {
        walk(src, &mut |found| match found {
            Found::File(relative, _) => files.push((src.join(&relative), relative)),
            Found::Folder(_) => {}
            Found::Skipped(message) => warnings.push(message),
        })
        .map_err(read)?;
    } else {
        return Err(PublishError::NotRegular { path: src.to_owned() });
    }
    let folder = |source| PublishError::Folder { dir: dir.to_owned(), source };
    fs::create_dir_all(dir).map_err(folder)?;
    let incoming = create_dirs(dir, [INCOMING]).map_err(folder)?;
    let mut placed = Vec::new();
    for (from, relative) in files {
        let name = RelPath::from_local(&relative)
            .map_err(|reason| PublishError::InvalidPath { path: from.clone(), reason })?;
        placed.push(place_one(dir, &incoming, to, &from, &name)?);
    }
    Ok((placed, warnings))
}

/// Makes temporary names unique within one `receiver publish`.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

fn place_one(dir: &Path, incoming: &Path, to: &str, from: &Path, name: &RelPath) -> Result<Placed, PublishError> {
    let read = |source| PublishError::Read { path: from.to_owned(), source };
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(from)
        .map_err(read)?;
    let meta = source.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(PublishError::NotRegular { path: from.to_owned() });
    }
    let mode = meta.mode() & MODE_MASK;
    let temporary = incoming.join(format!(
        "{}-{}-{}",
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed),
        name.file_name()
    ));
    let target_folder = create_dirs(dir, std::iter::once(to).chain(name.folders()))
        .map_err(|source| PublishError::Write { path: dir.join(to), source })?;
    let target = target_folder.join(name.file_name());
    let write = |source| PublishError::Write { path: target.clone(), source };
    let copied = (|| {
        let mut copy = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        let size = io::copy(&mut source, &mut copy)?;
        copy.set_permissions(fs::Permissions::from_mode(mode))?;
        copy.sync_all()?;
        fs::rename(&temporary, &target)?;
        sync_dir(&target_folder)?;
        Ok(size)
    })();
    match copied {
        Ok(size) => Ok(Placed { path: target.clone(), size, mode }),
        Err(err) => {
            let _ = fs::remove_file(&temporary);
            Err(write(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> Source {
        let meta = fs::metadata("/").expect("root");
        Source {
            path: PathBuf::from(name),
            stamp: Stamp::of(&meta),
            sha256: Sha256Digest::of_bytes(name.as_bytes()),
            mode: 0o644,
        }
    }

    fn tree(paths: &[&str]) -> Tree {
        paths.iter().map(|p| (RelPath::parse(p).expect("valid"), source(p))).collect()
    }

    #[test]
    fn a_label_overlays_all_and_clashing_files_of_all_are_dropped() {
        let base = tree(&["a.conf", "bin/run", "lib", "x/y/z"]);
        let own = tree(&["a.conf", "lib/mod.py", "x"]);
        let (files, dropped) = overlay(&base, &own);
        let paths: Vec<&str> = files.keys().map(RelPath::as_str).collect();
        assert_eq!(paths, ["a.conf", "bin/run", "lib/mod.py", "x"]);
        assert_eq!(files[&RelPath::parse("a.conf").expect("valid")].path, PathBuf::from("a.conf"));
        let dropped: Vec<&str> = dropped.iter().map(RelPath::as_str).collect();
        assert_eq!(dropped, ["lib", "x/y/z"]);
    }

    #[test]
    fn label_folders_are_single_visible_components() {
        for (label, folder) in [
            ("greenhouse", Some("greenhouse")),
            ("greenhouse 3", Some("greenhouse 3")),
            ("a/b", None),
            (".incoming", None),
            ("..", None),
            ("", None),
        ] {
            assert_eq!(label_folder(label), folder, "{label:?}");
        }
    }
}
