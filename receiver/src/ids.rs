//! The ids file: which devices the receiver accepts.
//!
//! Format: one device per line, `<16 hex ID> [label]`; `#` starts a comment;
//! blank lines are ignored. The file is re-read when it changes on disk
//! ([`IdsFile::refresh`], run every second off the request path), so adding
//! or removing a device needs no restart.
//!
//! Each device's key is derived from its ID when the file is loaded (a
//! deliberately slow Argon2id, so on all cores at once) and kept: a request
//! only looks its key id up.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use logferry_common::durable::sync_dir;
use logferry_common::{DeviceId, DeviceKey, KeyDeriver, KeyId};
use rand::TryRng;
use rand::rngs::SysRng;

/// Longest label accepted, in characters.
const MAX_LABEL_CHARS: usize = 64;

/// One accepted device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: DeviceId,
    /// Derived from `id` once, when the ids file was loaded.
    pub key: DeviceKey,
    pub label: Option<String>,
}

/// A valid line of the ids file, before its key is derived.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: DeviceId,
    pub label: Option<String>,
}

/// A problem on one line of the ids file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}", format_line_errors(path, errors))]
    Malformed { path: PathBuf, errors: Vec<LineError> },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("invalid label: {0}")]
    Label(String),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

fn format_line_errors(path: &Path, errors: &[LineError]) -> String {
    errors.iter().map(|e| format!("{}:{}: {}", path.display(), e.line, e.message)).collect::<Vec<_>>().join("\n")
}

/// Parses the whole file. Valid lines are returned even when others are
/// malformed, so a running receiver can keep serving every correct entry.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<LineError>) {
    let mut devices: Vec<Entry> = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (id_text, label) = match content.split_once(char::is_whitespace) {
            Some((id, rest)) => (id, Some(rest.trim())),
            None => (content, None),
        };
        let id = match id_text.parse::<DeviceId>() {
            Ok(id) => id,
            Err(e) => {
                errors.push(LineError { line, message: format!("{e} (expected '<16 hex ID> [label]')") });
                continue;
            }
        };
        if let Err(message) = label.map_or(Ok(()), check_label) {
            errors.push(LineError { line, message });
            continue;
        }
        if let Some(first) = first_seen.insert(id.reveal().to_owned(), line) {
            errors.push(LineError { line, message: format!("this device ID is already listed on line {first}") });
            continue;
        }
        devices.push(Entry { id, label: label.map(str::to_owned) });
    }
    (devices, errors)
}

fn check_label(label: &str) -> Result<(), String> {
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(format!("the label is longer than {MAX_LABEL_CHARS} characters"));
    }
    if label.chars().any(char::is_control) {
        return Err("the label contains a control character".to_owned());
    }
    Ok(())
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            inode: meta.ino(),
        }
    }
}

/// The devices by key id, as requests look them up.
pub type Devices = HashMap<KeyId, Device>;

#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    by_key: Arc<Devices>,
}

/// The ids file, re-read whenever it changes.
pub struct IdsFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for IdsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdsFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl IdsFile {
    /// Loads the file, refusing any malformed line: at start-up the admin is
    /// watching, so a typo should stop the receiver rather than lock out a device.
    pub fn load_strict(path: &Path) -> Result<Self, IdsError> {
        let (stamp, text) = read(path)?;
        let (entries, errors) = parse(&text);
        if !errors.is_empty() {
            return Err(IdsError::Malformed { path: path.to_owned(), errors });
        }
        let by_key = Arc::new(derive_keys(entries, &Devices::new()));
        Ok(Self { path: path.to_owned(), loaded: Mutex::new(Loaded { stamp: Some(stamp), by_key }) })
    }

    /// The devices as loaded last: no file system access, no derivation.
    pub fn current(&self) -> Arc<Devices> {
        Arc::clone(&self.loaded.lock().unwrap_or_else(PoisonError::into_inner).by_key)
    }

    /// Re-reads the file if it changed since it was last read, deriving the
    /// keys of devices that are new to it (the others keep theirs). A
    /// malformed line is logged and skipped, so the rest of the fleet keeps
    /// working; a file that cannot be read at all leaves the previous list
    /// in force (an editor may be mid-save). Blocking, and slow when many
    /// devices were added: run it off the request path.
    pub fn refresh(&self) {
        let (stamp, known) = {
            let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            (loaded.stamp, Arc::clone(&loaded.by_key))
        };
        let now = fs::metadata(&self.path).map(|m| Stamp::of(&m)).ok();
        if now.is_some() && now == stamp {
            return;
        }
        let outcome = read(&self.path).map(|(stamp, text)| {
            let (entries, errors) = parse(&text);
            if !errors.is_empty() {
                let err = IdsError::Malformed { path: self.path.clone(), errors };
                tracing::error!("ignoring malformed lines of the edited ids file:\n{err}");
            }
            (stamp, derive_keys(entries, &known))
        });
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok((stamp, devices)) => {
                tracing::info!(devices = devices.len(), file = %self.path.display(), "ids file changed; reloaded");
                loaded.stamp = Some(stamp);
                loaded.by_key = Arc::new(devices);
            }
            // Said once, not every second until the file is back.
            Err(err) if loaded.stamp.is_some() => {
                tracing::error!("{err}; keeping the {} devices loaded before", loaded.by_key.len());
                loaded.stamp = None;
            }
            Err(_) => {}
        }
    }
}

/// Pairs each entry with its key: taken from `known` when the ID was loaded
/// before, else derived, the derivations spread over every core, each
/// thread reusing one working memory.
fn derive_keys(entries: Vec<Entry>, known: &Devices) -> Devices {
    let known: HashMap<&str, &DeviceKey> = known.values().map(|d| (d.id.reveal(), &d.key)).collect();
    let (reused, fresh): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| known.contains_key(e.id.reveal()));
    let mut devices: Vec<Device> =
        reused.into_iter().map(|Entry { id, label }| Device { key: known[id.reveal()].clone(), id, label }).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = fresh.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = fresh
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut deriver = KeyDeriver::default();
                    chunk
                        .iter()
                        .map(|e| Device { key: deriver.derive(&e.id), id: e.id.clone(), label: e.label.clone() })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            devices.extend(worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
    });
    devices.into_iter().map(|d| (d.key.key_id().clone(), d)).collect()
}

fn read(path: &Path) -> Result<(Stamp, String), IdsError> {
    let fail = |source| IdsError::Read { path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(fail)?;
    let stamp = Stamp::of(&file.metadata().map_err(fail)?);
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(fail)?;
    Ok((stamp, text))
}

/// Makes a new device ID from the operating system's random generator and
/// appends it (with its label) to the ids file, creating the file readable
/// by its owner only if it does not exist yet. Returns once the line, and a
/// new file's name in its folder, are durable: the ID is printed only once.
pub fn add_device(path: &Path, label: Option<&str>) -> Result<DeviceId, IdsError> {
    if let Some(label) = label {
        check_label(label).map_err(IdsError::Label)?;
        if label.contains('#') {
            return Err(IdsError::Label("a label cannot contain '#', which starts a comment".to_owned()));
        }
    }
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(IdsError::Read { path: path.to_owned(), source }),
    };
    let (devices, _) = parse(&existing);
    let id = loop {
        let mut bytes = [0u8; 8];
        SysRng.try_fill_bytes(&mut bytes).map_err(|e| IdsError::Random(e.to_string()))?;
        let candidate = DeviceId::from_bytes(bytes);
        if !devices.iter().any(|d| d.id == candidate) {
            break candidate;
        }
    };
    let separator = if existing.is_empty() || existing.ends_with('\n') { "" } else { "\n" };
    let line = match label {
        Some(label) => format!("{separator}{}  {label}\n", id.reveal()),
        None => format!("{separator}{}\n", id.reveal()),
    };
    let fail = |source| IdsError::Write { path: path.to_owned(), source };
    let mut file = OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(fail)?;
    file.write_all(line.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    if existing.is_empty() {
        let folder = path.parent().filter(|folder| !folder.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(folder).map_err(fail)?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected_ids: &[(&str, Option<&str>)], expected_error_lines: &[usize]) {
        let (devices, errors) = parse(text);
        let got: Vec<_> = devices.iter().map(|d| (d.id.reveal(), d.label.as_deref())).collect();
        assert_eq!(got, expected_ids, "devices of {text:?}");
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, expected_error_lines, "errors of {text:?}: {errors:?}");
    }

    #[test]
    fn format() {
        check("", &[], &[]);
        check("# only a comment\n\n   \n", &[], &[]);
        check("0123456789abcdef\n", &[("0123456789ABCDEF", None)], &[]);
        check("0123456789ABCDEF  greenhouse 3  # north wall\n", &[("0123456789ABCDEF", Some("greenhouse 3"))], &[]);
        check("\t0123456789ABCDEF\tpi-1", &[("0123456789ABCDEF", Some("pi-1"))], &[]);
        check("0123456789ABCDE\n", &[], &[1]);
        check("0123456789ABCDEF\n0123456789abcdef dup\n", &[("0123456789ABCDEF", None)], &[2]);
        check("xyz\nFEDCBA9876543210\n0123\n", &[("FEDCBA9876543210", None)], &[1, 3]);
        check(&format!("0123456789ABCDEF {}\n", "x".repeat(MAX_LABEL_CHARS + 1)), &[], &[1]);
    }

    #[test]
    fn refresh_applies_edits_with_new_keys_and_keeps_the_list_when_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ids.txt");
        fs::write(&path, "0123456789ABCDEF old-label\n").expect("write");
        let ids = IdsFile::load_strict(&path).expect("loads");
        let first = ids.current();
        let kept = first.values().next().expect("one device").clone();
        assert_eq!(kept.key.key_id(), &kept.id.derive_key().key_id().clone(), "the key is the ID's");

        fs::write(&path, "0123456789abcdef new-label\nFEDCBA9876543210\nnot-an-id\n").expect("edit");
        ids.refresh();
        let edited = ids.current();
        assert_eq!(edited.len(), 2, "the malformed line is skipped, the rest applies");
        let same = &edited[kept.key.key_id()];
        assert_eq!(same.label.as_deref(), Some("new-label"));
        let new: DeviceId = "FEDCBA9876543210".parse().expect("valid");
        assert!(edited.contains_key(new.derive_key().key_id()), "the new device's key was derived");

        fs::remove_file(&path).expect("remove");
        ids.refresh();
        assert_eq!(ids.current().len(), 2, "an unreadable file keeps the list");
        assert_eq!(first.len(), 1, "callers keep the snapshot they took");
    }

    #[test]
    fn add_device_appends_a_fresh_id_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ids.txt");
        fs::write(&path, "# fleet\n0123456789ABCDEF no-newline").expect("write");
        let made = add_device(&path, Some("pi 7")).expect("added");
        let (devices, errors) = parse(&fs::read_to_string(&path).expect("read"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].id, made);
        assert_eq!(devices[1].label.as_deref(), Some("pi 7"));

        let fresh = dir.path().join("new-ids.txt");
        add_device(&fresh, None).expect("created");
        assert_eq!(fs::metadata(&fresh).expect("stat").mode() & 0o777, 0o600);
        assert!(add_device(&fresh, Some("a#b")).is_err());
    }
}
