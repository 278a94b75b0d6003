//! `--keep-sent`: deleting files delivered longer ago than a given time
//! from the sent folder, and the folders that leaves empty.
//!
//! A file's delivery time is its ctime: the move into the sent folder (a
//! rename, or the copy's creation across file systems) sets it, and nobody
//! can set it back; the mtime is the logger's, kept by the move. Anything
//! that touches the file later (chmod, a new link) moves the ctime forward,
//! so an error only ever keeps a file longer. The folder is walked by open
//! folder handles, never through a link, so nothing outside it is reached.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, openat, unlinkat};
use rustix::io::Errno;

use crate::deliver::LOCK_FILE;

/// What a pruning did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files deleted.
    pub removed: u64,
    /// What could not be looked at or deleted, relative to the sent
    /// folder, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Deletes every regular file below `sent_dir` that was moved there more
/// than `keep` before `now`, and each folder below it that this empties.
/// Links, other special files, the folder itself and the run's lock file
/// are left alone.
pub fn prune(sent_dir: &Path, keep: Duration, now: SystemTime) -> Pruned {
    let mut pruned = Pruned::default();
    let Some(cutoff) = now.checked_sub(keep) else {
        return pruned;
    };
    match rustix::fs::open(sent_dir, folder_flags(), Mode::empty()) {
        Ok(folder) => {
            prune_folder(&folder, "", cutoff, &mut pruned);
        }
        Err(e) => pruned.failed.push((sent_dir.display().to_string(), format!("cannot open it to prune: {e}"))),
    }
    pruned
}

fn folder_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Prunes one folder; returns whether it deleted anything in it.
fn prune_folder(folder: &OwnedFd, shown: &str, cutoff: SystemTime, pruned: &mut Pruned) -> bool {
    let names = match list(folder) {
        Ok(names) => names,
        Err(e) => {
            let shown = if shown.is_empty() { "the sent folder" } else { shown };
            pruned.failed.push((shown.to_owned(), format!("cannot list it to prune: {e}")));
            return false;
        }
    };
    let mut deleted_any = false;
    for name in names {
        let text = name.to_string_lossy().into_owned();
        let shown_name = if shown.is_empty() { text.clone() } else { format!("{shown}/{text}") };
        let meta = match metadata(folder, &name) {
            Ok(meta) => meta,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                pruned.failed.push((shown_name, format!("cannot look at it to prune: {e}")));
                continue;
            }
        };
        if meta.is_dir() {
            let inner = match openat(folder, &name, folder_flags(), Mode::empty()) {
                Ok(inner) => inner,
                Err(e) => {
                    pruned.failed.push((shown_name, format!("cannot open it to prune: {e}")));
                    continue;
                }
            };
            if prune_folder(&inner, &shown_name, cutoff, pruned) {
                match unlinkat(folder, &name, AtFlags::REMOVEDIR) {
                    Ok(()) => deleted_any = true,
                    // Still holds what is kept.
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {}
                    Err(e) => pruned.failed.push((shown_name, format!("cannot remove the emptied folder: {e}"))),
                }
            }
        } else if meta.is_file() && !(shown.is_empty() && text == LOCK_FILE) && delivered(&meta) < cutoff {
            match unlinkat(folder, &name, AtFlags::empty()) {
                Ok(()) => {
                    pruned.removed += 1;
                    deleted_any = true;
                }
                Err(e) => pruned.failed.push((shown_name, format!("cannot delete it: {e}"))),
            }
        }
    }
    deleted_any
}

/// The names in `folder`, without `.` and `..`.
fn list(folder: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(folder)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The entry's own metadata, a link's not its target's (an `O_PATH` handle).
fn metadata(folder: &OwnedFd, name: &CStr) -> rustix::io::Result<std::fs::Metadata> {
    let handle = openat(folder.as_fd(), name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    File::from(handle).metadata().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

/// When the file was moved into the sent folder: its ctime.
fn delivered(meta: &std::fs::Metadata) -> SystemTime {
    let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
    u64::try_from(meta.ctime()).map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A kept time, how long after the file's delivery the run comes, and
    /// whether that run deletes it.
    const AGES: &[(Duration, Duration, bool)] = &[
        (HOUR, Duration::from_secs(30 * 60), false),
        (HOUR, Duration::from_secs(2 * 3600), true),
        (DAY.saturating_mul(7), DAY.saturating_mul(6), false),
        (DAY.saturating_mul(7), DAY.saturating_mul(8), true),
        (Duration::ZERO, Duration::from_secs(1), true),
        // A delivery time ahead of the clock (set back since): kept.
        (Duration::ZERO, Duration::ZERO, false),
    ];

    #[test]
    fn files_go_by_the_time_they_were_delivered_not_their_mtime() {
        for &(keep, later, deleted) in AGES {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("a.log");
            fs::write(&file, b"x").expect("write");
            // The logger's mtime, kept by the move, is ancient; only the
            // delivery time counts.
            let ancient = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            File::options().write(true).open(&file).expect("open").set_modified(ancient).expect("utimens");
            let meta = fs::metadata(&file).expect("stat");
            let (secs, nanos) =
                (meta.ctime().try_into().expect("after 1970"), meta.ctime_nsec().try_into().expect("ns"));
            let now = UNIX_EPOCH + Duration::new(secs, nanos) + later;
            // Just before the delivery time when `later` is zero: the clock went back.
            let now = if later.is_zero() { now - Duration::from_secs(1) } else { now };
            let pruned = prune(dir.path(), keep, now);
            let case = format!("keep {keep:?}, {later:?} after delivery");
            assert_eq!(pruned, Pruned { removed: u64::from(deleted), failed: vec![] }, "{case}");
            assert_eq!(file.exists(), !deleted, "{case}");
            assert!(dir.path().is_dir(), "the sent folder itself stays: {case}");
        }
    }

    #[test]
    fn emptied_folders_go_links_are_never_followed_and_others_files_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sent, outside) = (dir.path().join("sent"), dir.path().join("outside"));
        for folder in ["a/b/c", "kept/deep", "empty-before"] {
            fs::create_dir_all(sent.join(folder)).expect("mkdir");
        }
        fs::create_dir(&outside).expect("mkdir");
        for file in ["a/b/c/old.log", "a/b/old.log", "kept/deep/old.log", "kept/new.log", LOCK_FILE] {
            fs::write(sent.join(file), b"x").expect("write");
        }
        fs::write(outside.join("not-sent.log"), b"x").expect("write");
        std::os::unix::fs::symlink(&outside, sent.join("link-to-folder")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("not-sent.log"), sent.join("link-to-file")).expect("symlink");
        assert!(std::process::Command::new("mkfifo").arg(sent.join("fifo")).status().expect("mkfifo").success());
        // Delivered later than the rest: its ctime moves on with a chmod,
        // a few clock ticks after theirs.
        std::thread::sleep(Duration::from_millis(50));
        let new = sent.join("kept/new.log");
        fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let now = delivered(&fs::metadata(&new).expect("stat")) + HOUR - Duration::from_millis(1);
        let pruned = prune(&sent, HOUR, now);
        assert_eq!(pruned.failed, Vec::<(String, String)>::new());
        assert_eq!(pruned.removed, 3);

        let mut left: Vec<String> = walkdir::WalkDir::new(&sent)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.expect("walk").path().strip_prefix(&sent).expect("inside").display().to_string())
            .collect();
        left.sort();
        let expected = [LOCK_FILE, "empty-before", "fifo", "kept", "kept/new.log", "link-to-file", "link-to-folder"];
        assert_eq!(left, expected, "emptied folders went, and nothing else");
        assert!(outside.join("not-sent.log").is_file(), "nothing behind a link is touched");
    }
}
