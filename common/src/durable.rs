//! File-system steps that both sides take to make data durable without ever
//! replacing what is already there.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::Sha256Digest;

/// Makes a folder's entries (new names, removed names) survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates each of `names` in turn below `base` (which must exist), fsyncing
/// the parent of every folder it creates or finds just created by a racing
/// caller (which may not have fsynced it yet), and returns the innermost
/// folder.
/// Anything in the way that is not a real folder, including a symbolic link,
/// is refused with [`io::ErrorKind::NotADirectory`], naming the offending
/// prefix of `names`, so a planted link can never lead elsewhere.
pub fn create_dirs<'a>(base: &Path, names: impl IntoIterator<Item = &'a str>) -> io::Result<PathBuf> {
    let mut folder = base.to_owned();
    let mut shown = String::new();
    for name in names {
        if !shown.is_empty() {
            shown.push('/');
        }
        shown.push_str(name);
        let next = folder.join(name);
        loop {
            match fs::symlink_metadata(&next) {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{shown} is not a folder (a file or a symbolic link is in the way)"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&next) {
                    Ok(()) => {
                        sync_dir(&folder)?;
                        break;
                    }
                    // Made meanwhile by a concurrent request, whose fsync
                    // of the parent may still be to come: ours makes the
                    // name durable before anything is placed in it.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => sync_dir(&folder)?,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        folder = next;
    }
    Ok(folder)
}

/// Whether `path` exists, without following a symbolic link there.
pub fn exists_no_follow(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `path` is a regular file (not a link) of exactly `size` bytes
/// hashing to `digest`. Sizes are compared first, so a mismatch is cheap.
pub fn holds_exactly(path: &Path, digest: &Sha256Digest, size: u64) -> io::Result<bool> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != size {
        return Ok(false);
    }
    Ok(Sha256Digest::of_reader(file)?.0 == *digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dirs_makes_nested_folders_and_refuses_links_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = create_dirs(dir.path(), ["a", "b", "c"]).expect("created");
        assert!(made.is_dir());
        assert_eq!(made, dir.path().join("a/b/c"));
        create_dirs(dir.path(), ["a", "b"]).expect("existing folders are fine");

        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).expect("symlink");
        let err = create_dirs(dir.path(), ["link", "x"]).expect_err("link refused");
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
        assert!(err.to_string().starts_with("link "), "{err}");

        fs::write(dir.path().join("a/file"), b"x").expect("write");
        let err = create_dirs(dir.path(), ["a", "file", "y"]).expect_err("file refused");
        assert!(err.to_string().starts_with("a/file "), "{err}");
    }

    #[test]
    fn holds_exactly_checks_size_content_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, b"abc").expect("write");
        let (digest, _) = Sha256Digest::of_reader(&b"abc"[..]).expect("hash");
        let (other, _) = Sha256Digest::of_reader(&b"abd"[..]).expect("hash");
        assert!(holds_exactly(&path, &digest, 3).expect("read"));
        assert!(!holds_exactly(&path, &digest, 4).expect("read"));
        assert!(!holds_exactly(&path, &other, 3).expect("read"));
        assert!(!holds_exactly(&dir.path().join("absent"), &digest, 3).expect("read"));
        std::os::unix::fs::symlink(&path, dir.path().join("l")).expect("symlink");
        assert!(!holds_exactly(&dir.path().join("l"), &digest, 3).expect("read"));
    }
}
