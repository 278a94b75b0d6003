//! Setting a delivered file aside: moved into the sent folder, never
//! replacing anything, or deleted (`--keep-sent 0`); in both cases only the
//! inode that was delivered, whatever a writer has put under its name since.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use logferry_common::durable::{create_dirs, exists_no_follow, holds_exactly, sync_dir};
use logferry_common::{RelPath, Sha256Digest, Sha256Hasher};
use rustix::fs::{CWD, RenameFlags, renameat_with};
use rustix::io::Errno;

use crate::opened::{Opened, Snapshot};

/// Prefix of the name a delivered file is taken to, beside its own, before
/// it leaves the log folder (`Taken`). A run killed in between leaves it
/// there; the next run's walk sends it under the name it was taken from
/// ([`taken_from`]), so the receiver finds those bytes already stored there
/// instead of keeping a second copy under the hidden name.
pub const TAKING_PREFIX: &str = ".logferry-taking.";

/// The name a file found under its taken name (`.logferry-taking.<name>`)
/// was taken from.
pub fn taken_from(name: &str) -> Option<&str> {
    name.strip_prefix(TAKING_PREFIX).filter(|original| !original.is_empty())
}

/// Where a delivered file goes.
#[derive(Debug, Clone)]
pub enum Disposal {
    /// Into this sent folder, under its relative path.
    Keep(PathBuf),
    /// Nowhere: it is deleted.
    Delete,
}

/// What became of a delivered file.
#[derive(Debug, PartialEq, Eq)]
pub enum SetAside {
    /// Moved here (or already there, byte for byte, and the original removed).
    Moved(PathBuf),
    Deleted,
    /// Its name no longer holds the delivered file as it was delivered (a
    /// writer replaced, truncated or changed it): nothing was moved, and
    /// what the name holds now waits for the next run.
    Changed,
}

/// Sets `file`, opened from `source` and delivered as `digest` and its
/// length, aside as `to` says. In the sent folder it goes to `rel`, or, when
/// that name is taken, to the first free one of the conflict names the
/// receiver uses (`RelPath::candidates`); a name that already holds exactly
/// these bytes takes the place of a move, and the original is removed.
pub fn set_aside(
    source: &Path,
    file: &Opened,
    rel: &RelPath,
    digest: &Sha256Digest,
    to: &Disposal,
) -> io::Result<SetAside> {
    let mut pending = PendingSyncs::default();
    let set_aside = set_aside_deferring(source, file, rel, digest, to, &mut pending)?;
    pending.sync()?;
    Ok(set_aside)
}

/// The folders of the sent folder that gained a name by a rename and are
/// not yet fsynced. A rename moves a file in one step, so until the fsync
/// a crash can only bring back its old (hidden) name in the log folder,
/// which the next run sends again: a batch of files fsyncs each folder
/// once, after all of them.
#[derive(Debug, Default)]
pub struct PendingSyncs(BTreeSet<PathBuf>);

impl PendingSyncs {
    pub fn sync(self) -> io::Result<()> {
        self.0.iter().try_for_each(|folder| sync_dir(folder))
    }
}

/// [`set_aside`], leaving the fsync of the folder it moved the file to in
/// `pending`.
pub fn set_aside_deferring(
    source: &Path,
    file: &Opened,
    rel: &RelPath,
    digest: &Sha256Digest,
    to: &Disposal,
    pending: &mut PendingSyncs,
) -> io::Result<SetAside> {
    let Some(taken) = Taken::take(source, file)? else {
        return Ok(SetAside::Changed);
    };
    let Disposal::Keep(sent_dir) = to else {
        taken.remove()?;
        return Ok(SetAside::Deleted);
    };
    match place(&taken, sent_dir, rel, digest, pending) {
        Ok(placed) => Ok(SetAside::Moved(placed)),
        Err(e) => {
            taken.put_back()?;
            Err(e)
        }
    }
}

fn place(
    taken: &Taken<'_>,
    sent_dir: &Path,
    rel: &RelPath,
    digest: &Sha256Digest,
    pending: &mut PendingSyncs,
) -> io::Result<PathBuf> {
    let candidates = rel.candidates(digest);
    for name in &candidates {
        let folder = create_dirs(sent_dir, name.folders())?;
        let target = folder.join(name.file_name());
        if taken.move_to(&target, digest, pending)? {
            return Ok(target);
        }
        if holds_exactly(&target, digest, taken.file.at_open.len)? {
            taken.remove()?;
            return Ok(target);
        }
    }
    let [rel, first, last] = &candidates;
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{rel}, {first} and {last} all exist in {} with other content", sent_dir.display()),
    ))
}

/// The delivered inode, moved off its name onto a private one beside it.
///
/// Linux cannot unlink or rename a name only if it still holds a given
/// inode, so the name is first renamed (atomically, whatever it holds) to
/// its hidden name in the same folder ([`TAKING_PREFIX`]), and what arrived
/// there is checked by device and inode against the open file: only then is
/// it the file that was delivered, now out of every writer's way. Anything
/// else is renamed back. The hidden name is in the log folder, so should the
/// run die before the file leaves it, the next run sends it again under its
/// own name: nothing is lost, and the receiver answers "already stored".
#[derive(Debug)]
struct Taken<'a> {
    hidden: PathBuf,
    source: &'a Path,
    file: &'a Opened,
}

impl<'a> Taken<'a> {
    /// Takes the delivered file off `source`; `None` when the name no longer
    /// holds it unchanged (then nothing has moved).
    fn take(source: &'a Path, file: &'a Opened) -> io::Result<Option<Self>> {
        // Checked while the file still has its name: the rename changes the
        // status change time, which is what shows a same-size rewrite whose
        // mtime was put back.
        if file.now()? != file.at_open {
            return Ok(None);
        }
        let name = source.file_name().unwrap_or_default();
        if name.to_str().and_then(taken_from).is_some() {
            // Left by a run that died after taking it: already off every
            // writer's name, so it is taken where it is.
            let there = Snapshot::of(&fs::symlink_metadata(source)?);
            let unchanged = there.same_inode(&file.at_open) && file.now()?.same_content(&file.at_open);
            return Ok(unchanged.then(|| Self { hidden: source.to_owned(), source, file }));
        }
        let mut hidden_name = std::ffi::OsString::from(TAKING_PREFIX);
        hidden_name.push(name);
        let hidden = source.with_file_name(hidden_name);
        match rename_no_replace(source, &hidden) {
            Ok(true) => {}
            Ok(false) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", hidden.display())));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        let taken = Self { hidden, source, file };
        let arrived = Snapshot::of(&fs::symlink_metadata(&taken.hidden)?);
        // A write between the check above and the rename shows in size or mtime.
        if arrived.same_inode(&file.at_open) && file.now()?.same_content(&file.at_open) {
            return Ok(Some(taken));
        }
        taken.put_back()?;
        Ok(None)
    }

    /// Moves the file to `target` unless that name exists; returns whether
    /// it moved. Across file systems the delivered bytes are copied from the
    /// open file (and hashed again on the way), fsynced, then put in place.
    fn move_to(&self, target: &Path, digest: &Sha256Digest, pending: &mut PendingSyncs) -> io::Result<bool> {
        let folder = target.parent().unwrap_or(Path::new("."));
        match rename_no_replace(&self.hidden, target) {
            Ok(false) => Ok(false),
            Ok(true) => {
                pending.0.insert(folder.to_owned());
                Ok(true)
            }
            // A copy's name must be durable before the original goes.
            Err(e) if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                if !copy_no_replace(self.file, digest, target)? {
                    return Ok(false);
                }
                sync_dir(folder)?;
                self.remove()?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the taken file. Its folder is not fsynced: should a crash
    /// bring the name back, the next run sends the file again, the receiver
    /// answers "already stored", and the copy is removed then. Nothing can be
    /// lost that way, and a burst of small files saves an fsync each.
    fn remove(&self) -> io::Result<()> {
        fs::remove_file(&self.hidden)
    }

    /// Gives the taken file its name back. Should a writer have made a new
    /// file under that name meanwhile, that one is never replaced: the taken
    /// one stays under its hidden name, which the next run sends.
    fn put_back(&self) -> io::Result<()> {
        if self.hidden == self.source || rename_no_replace(&self.hidden, self.source)? {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "a new file took the name {} meanwhile; the one that was there is kept as {} and goes with the next run",
                self.source.display(),
                self.hidden.display()
            ),
        ))
    }
}

/// `rename` that fails rather than replace: returns whether it renamed.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE (some FUSE and network
        // ones): check, then rename. Only this run (it holds the lock)
        // makes names in the sent folder and the hidden names.
        Err(Errno::INVAL) if !exists_no_follow(to)? => fs::rename(from, to).map(|()| true),
        Err(Errno::INVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Copies the delivered bytes of `file` to `target` unless that exists;
/// returns whether it did. They must hash to `digest`, or nothing is placed.
fn copy_no_replace(file: &Opened, digest: &Sha256Digest, target: &Path) -> io::Result<bool> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = target.with_file_name(format!(".{name}.logferry-partial-{}", std::process::id()));
    let result = (|| {
        let mut to = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        let mut from = file.rewound().take(file.at_open.len);
        let (mut hasher, mut buf) = (Sha256Hasher::default(), vec![0u8; 64 * 1024]);
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n])?;
        }
        if hasher.finish() != (*digest, file.at_open.len) {
            return Err(io::Error::other("the file changed while it was copied to the sent folder"));
        }
        to.sync_all()?;
        match fs::hard_link(&temp, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // No links at all on this file system (FAT): a rename is the
            // next best, after checking the name is free.
            Err(_) => rename_no_replace(&temp, target),
        }
    })();
    let _ = fs::remove_file(&temp);
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn digest(content: &[u8]) -> Sha256Digest {
        Sha256Digest::of_reader(content).expect("hash").0
    }

    /// Writes `content` as `name` in `dir` and opens it, as a delivery does.
    fn opened(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, Opened) {
        let source = dir.join(name);
        fs::write(&source, content).expect("write");
        let file = Opened::open(&source).expect("open");
        (source.clone(), file)
    }

    #[test]
    fn never_replaces_and_removes_true_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = dir.path().join("sent");
        fs::create_dir(&sent).expect("mkdir");
        let rel = RelPath::parse("sub/a.log").expect("valid");
        let put = |content: &[u8]| {
            let (source, file) = opened(dir.path(), "a.log", content);
            let result = set_aside(&source, &file, &rel, &digest(content), &Disposal::Keep(sent.clone()));
            (source, result)
        };

        let (source, first) = put(b"one");
        assert_eq!(first.expect("moved"), SetAside::Moved(sent.join("sub/a.log")));
        assert!(!source.exists());

        let (_, second) = put(b"two");
        let SetAside::Moved(second) = second.expect("moved under the conflict name") else { panic!("not moved") };
        assert_ne!(second, sent.join("sub/a.log"));
        assert_eq!(fs::read(&second).expect("read"), b"two");
        assert_eq!(fs::read(sent.join("sub/a.log")).expect("read"), b"one");

        for (content, kept_as) in [(&b"one"[..], sent.join("sub/a.log")), (b"two", second)] {
            let (source, again) = put(content);
            assert_eq!(again.expect("duplicate removed"), SetAside::Moved(kept_as));
            assert!(!source.exists());
        }
        assert_eq!(fs::read_dir(sent.join("sub")).expect("list").count(), 2);
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1, "no hidden name left in the log folder");
    }

    #[test]
    fn a_taken_conflict_name_leads_to_the_last_one_and_then_to_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = dir.path().join("sent");
        fs::create_dir(&sent).expect("mkdir");
        let rel = RelPath::parse("a.log").expect("valid");
        let [_, first, last] = rel.candidates(&digest(b"new"));
        for name in [&rel, &first] {
            fs::write(sent.join(name.as_str()), b"other").expect("write");
        }
        let (source, file) = opened(dir.path(), "a.log", b"new");
        let moved = set_aside(&source, &file, &rel, &digest(b"new"), &Disposal::Keep(sent.clone())).expect("moved");
        assert_eq!(moved, SetAside::Moved(sent.join(last.as_str())));

        fs::write(sent.join(last.as_str()), b"other").expect("replace, as a user might");
        let (source, file) = opened(dir.path(), "a.log", b"new");
        let err =
            set_aside(&source, &file, &rel, &digest(b"new"), &Disposal::Keep(sent.clone())).expect_err("all taken");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&source).expect("read"), b"new", "the file is back under its name");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 2, "no hidden name left: {source:?}");
    }

    /// What a writer does to the file between its open and its move.
    struct Meddling {
        name: &'static str,
        meddle: fn(&Path),
        /// What the log folder's name holds afterwards (`None`: no file).
        leaves: Option<&'static [u8]>,
    }

    const DELIVERED: &[u8] = b"delivered\n";

    /// Sets the mtime back to what the delivered file had, as a writer that
    /// copies timestamps (`cp -p`, `rsync -t`, `touch -r`) does.
    fn with_old_mtime(path: &Path, write: impl FnOnce(&Path)) {
        let mtime = fs::symlink_metadata(path).expect("stat").modified().expect("mtime");
        write(path);
        fs::File::options().write(true).open(path).expect("open").set_modified(mtime).expect("utimens");
    }

    const MEDDLINGS: &[Meddling] = &[
        Meddling { name: "untouched", meddle: |_| {}, leaves: None },
        Meddling {
            name: "replaced by a rename over it, same size and mtime",
            meddle: |path| {
                let new = path.with_extension("new");
                fs::write(&new, b"replaced!\n").expect("write");
                let mtime = fs::symlink_metadata(path).expect("stat").modified().expect("mtime");
                fs::File::options().write(true).open(&new).expect("open").set_modified(mtime).expect("utimens");
                fs::rename(&new, path).expect("rename over");
            },
            leaves: Some(b"replaced!\n"),
        },
        Meddling {
            name: "rewritten in place, same size, mtime put back",
            meddle: |path| {
                // Timestamps advance by the kernel's clock tick (a few ms): a
                // rewrite within the tick of the open is not visible at all.
                std::thread::sleep(Duration::from_millis(20));
                with_old_mtime(path, |path| fs::write(path, b"rewritten\n").expect("write"))
            },
            leaves: Some(b"rewritten\n"),
        },
        Meddling {
            name: "truncated in place (logrotate copytruncate)",
            meddle: |path| fs::File::options().write(true).open(path).expect("open").set_len(0).expect("truncate"),
            leaves: Some(b""),
        },
        Meddling {
            name: "appended to",
            meddle: |path| {
                fs::File::options().append(true).open(path).expect("open").write_all(b"more\n").expect("append")
            },
            leaves: Some(b"delivered\nmore\n"),
        },
        Meddling { name: "removed", meddle: |path| fs::remove_file(path).expect("rm"), leaves: None },
    ];

    #[test]
    fn only_the_delivered_inode_unchanged_is_ever_set_aside() {
        for keep in [true, false] {
            for case in MEDDLINGS {
                let dir = tempfile::tempdir().expect("tempdir");
                let sent = dir.path().join("sent");
                fs::create_dir(&sent).expect("mkdir");
                let to = if keep { Disposal::Keep(sent.clone()) } else { Disposal::Delete };
                let (source, file) = opened(dir.path(), "a.log", DELIVERED);
                (case.meddle)(&source);
                let rel = RelPath::parse("a.log").expect("valid");
                let got = set_aside(&source, &file, &rel, &digest(DELIVERED), &to).expect(case.name);
                let untouched = case.name == "untouched";
                let expected = match (untouched, keep) {
                    (false, _) => SetAside::Changed,
                    (true, true) => SetAside::Moved(sent.join("a.log")),
                    (true, false) => SetAside::Deleted,
                };
                assert_eq!(got, expected, "{} (keep {keep})", case.name);
                assert_eq!(fs::read(&source).ok().as_deref(), case.leaves, "{} (keep {keep})", case.name);
                let in_sent: Vec<_> = fs::read_dir(&sent).expect("list").flatten().map(|e| e.file_name()).collect();
                assert_eq!(in_sent.len(), usize::from(untouched && keep), "{}: {in_sent:?}", case.name);
                let in_logs = fs::read_dir(dir.path()).expect("list").count();
                assert_eq!(in_logs, 1 + usize::from(case.leaves.is_some()), "{}: no hidden name left", case.name);
            }
        }
    }

    #[test]
    fn what_the_rename_took_is_checked_by_inode_and_never_put_back_over_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = dir.path().join("sent");
        fs::create_dir(&sent).expect("mkdir");
        // The name holds another inode than the one delivered, unchanged as
        // far as the delivered one's own metadata tells: as when a writer
        // renames over the name between the last check and the move.
        let (_, delivered) = opened(dir.path(), "delivered.log", DELIVERED);
        let (source, _) = opened(dir.path(), "a.log", b"never delivered\n");
        let rel = RelPath::parse("a.log").expect("valid");
        let got = set_aside(&source, &delivered, &rel, &digest(DELIVERED), &Disposal::Keep(sent.clone()));
        assert_eq!(got.expect("checked"), SetAside::Changed);
        assert_eq!(fs::read(&source).expect("put back"), b"never delivered\n");
        assert_eq!(fs::read_dir(&sent).expect("list").count(), 0);

        // Put back while a writer has made a new file under the name.
        let hidden = dir.path().join(".logferry-taking.test");
        fs::rename(&source, &hidden).expect("take");
        fs::write(&source, b"newer\n").expect("a writer makes the name anew");
        let taken = Taken { hidden: hidden.clone(), source: &source, file: &delivered };
        let err = taken.put_back().expect_err("the name is taken");
        assert!(err.to_string().contains("goes with the next run"), "{err}");
        assert_eq!(fs::read(&source).expect("read"), b"newer\n", "the new file is never replaced");
        assert_eq!(fs::read(&hidden).expect("read"), b"never delivered\n", "the taken one is kept");
    }

    #[test]
    fn the_copy_used_across_file_systems_never_replaces_checks_the_bytes_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("dst.log");
        let (_, file) = opened(dir.path(), "src.log", b"payload");
        assert!(copy_no_replace(&file, &digest(b"payload"), &target).expect("copied"));
        assert_eq!(fs::read(&target).expect("read"), b"payload");

        let (_, other) = opened(dir.path(), "other.log", b"other payload");
        assert!(!copy_no_replace(&other, &digest(b"other payload"), &target).expect("refused"), "never replaces");
        assert_eq!(fs::read(&target).expect("read"), b"payload");

        let elsewhere = dir.path().join("changed.log");
        let err = copy_no_replace(&other, &digest(b"what was delivered"), &elsewhere).expect_err("other bytes");
        assert!(err.to_string().contains("changed"), "{err}");
        assert!(!elsewhere.exists(), "bytes other than the delivered ones are never placed");
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 3, "no temporary copy left behind: {names:?}");
    }
}
