//! Moving a delivered file into the sent folder, never replacing anything.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use logferry_common::durable::{create_dirs, holds_exactly, sync_dir};
use logferry_common::{RelPath, Sha256Digest};

/// Moves `source` to `<sent_dir>/<rel>`, or, when that name is taken, to the
/// first free one of the conflict names the receiver uses
/// (`RelPath::candidates`). When a name already holds exactly these bytes,
/// the source is a duplicate of what was set aside and is removed.
pub fn move_aside(
    source: &Path,
    sent_dir: &Path,
    rel: &RelPath,
    digest: &Sha256Digest,
    size: u64,
) -> io::Result<PathBuf> {
    let candidates = rel.candidates(digest);
    for name in &candidates {
        let folder = create_dirs(sent_dir, name.folders())?;
        let target = folder.join(name.file_name());
        if move_no_replace(source, &target)? {
            return Ok(target);
        }
        if holds_exactly(&target, digest, size)? {
            remove_delivered(source)?;
            return Ok(target);
        }
    }
    let [rel, first, last] = &candidates;
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{rel}, {first} and {last} all exist in {} with other content", sent_dir.display()),
    ))
}

/// Moves `source` to `target` unless `target` exists; returns whether it moved.
/// A hard link is atomic and cannot replace; where links are impossible
/// (another file system), the file is copied, fsynced, then put in place.
fn move_no_replace(source: &Path, target: &Path) -> io::Result<bool> {
    match fs::hard_link(source, target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(_) => {
            if !copy_no_replace(source, target)? {
                return Ok(false);
            }
        }
    }
    sync_dir(target.parent().unwrap_or(Path::new(".")))?;
    remove_delivered(source)?;
    Ok(true)
}

fn copy_no_replace(source: &Path, target: &Path) -> io::Result<bool> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = target.with_file_name(format!(".{name}.logferry-partial-{}", std::process::id()));
    let result = (|| {
        let mut from = File::open(source)?;
        let mut to = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        match fs::hard_link(&temp, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // No links at all on this file system (FAT): a rename is the
            // next best, after checking the name is free.
            Err(_) if !target.exists() => fs::rename(&temp, target).map(|()| true),
            Err(_) => Ok(false),
        }
    })();
    let _ = fs::remove_file(&temp);
    result
}

/// Removes the delivered original. Its folder is not fsynced: should a
/// crash bring the name back, the next run sends the file again, the
/// receiver answers "already stored", and the copy is removed then. Nothing
/// can be lost that way, and a burst of small files saves an fsync each.
fn remove_delivered(path: &Path) -> io::Result<()> {
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_replaces_and_removes_true_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = dir.path().join("sent");
        fs::create_dir(&sent).expect("mkdir");
        let rel = RelPath::parse("sub/a.log").expect("valid");
        let put = |content: &[u8]| {
            let source = dir.path().join("a.log");
            fs::write(&source, content).expect("write");
            let (digest, size) = Sha256Digest::of_reader(content).expect("hash");
            (source.clone(), move_aside(&source, &sent, &rel, &digest, size))
        };

        let (source, first) = put(b"one");
        assert_eq!(first.expect("moved"), sent.join("sub/a.log"));
        assert!(!source.exists());

        let (_, second) = put(b"two");
        let second = second.expect("moved under the conflict name");
        assert_ne!(second, sent.join("sub/a.log"));
        assert_eq!(fs::read(&second).expect("read"), b"two");
        assert_eq!(fs::read(sent.join("sub/a.log")).expect("read"), b"one");

        for (content, kept_as) in [(&b"one"[..], sent.join("sub/a.log")), (b"two", second)] {
            let (source, again) = put(content);
            assert_eq!(again.expect("duplicate removed"), kept_as);
            assert!(!source.exists());
        }
        assert_eq!(fs::read_dir(sent.join("sub")).expect("list").count(), 2);
    }

    #[test]
    fn a_taken_conflict_name_leads_to_the_last_one_and_then_to_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = dir.path().join("sent");
        fs::create_dir(&sent).expect("mkdir");
        let source = dir.path().join("a.log");
        let rel = RelPath::parse("a.log").expect("valid");
        let (digest, size) = Sha256Digest::of_reader(&b"new"[..]).expect("hash");
        let [_, first, last] = rel.candidates(&digest);
        for name in [&rel, &first] {
            fs::write(sent.join(name.as_str()), b"other").expect("write");
        }
        fs::write(&source, b"new").expect("write");
        assert_eq!(move_aside(&source, &sent, &rel, &digest, size).expect("moved"), sent.join(last.as_str()));

        fs::write(sent.join(last.as_str()), b"other").expect("replace, as a user might");
        fs::write(&source, b"new").expect("write");
        let err = move_aside(&source, &sent, &rel, &digest, size).expect_err("every name taken");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(source.exists(), "the file stays where it was");
    }

    #[test]
    fn the_copy_used_across_file_systems_never_replaces_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, target) = (dir.path().join("src.log"), dir.path().join("dst.log"));
        fs::write(&source, b"payload").expect("write");
        assert!(copy_no_replace(&source, &target).expect("copied"));
        assert_eq!(fs::read(&target).expect("read"), b"payload");

        fs::write(&source, b"other payload").expect("write");
        assert!(!copy_no_replace(&source, &target).expect("refused"), "an existing name is never replaced");
        assert_eq!(fs::read(&target).expect("read"), b"payload");
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary copy left behind: {names:?}");
    }
}
