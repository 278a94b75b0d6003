//! The file being delivered, as one open handle: what is hashed, uploaded,
//! copied and moved is the inode that was opened, whatever a writer later
//! puts under its name.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustix::fs::OFlags;

/// Which inode a file is, and its content as far as metadata tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// The status change time, in nanoseconds: any write, truncation or
    /// `utimensat` moves it forward, so same-size content with its mtime
    /// put back still shows. A rename or link moves it too, so it is only
    /// compared while the file is still under its own name.
    pub changed: i128,
}

impl Snapshot {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// The same inode (of any content).
    pub fn same_inode(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// The same inode with the same size and mtime: what a rename leaves
    /// unchanged.
    pub fn same_content(&self, other: &Self) -> bool {
        self.same_inode(other) && (self.len, self.modified) == (other.len, other.modified)
    }
}

/// A regular file opened for delivery, and what it was when opened.
#[derive(Debug)]
pub struct Opened {
    file: Arc<File>,
    pub at_open: Snapshot,
}

impl Opened {
    /// Opens `path` without following a link and without blocking on a
    /// FIFO someone put in its place since the walk.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("it is no longer a regular file"));
        }
        Ok(Self { file: Arc::new(file), at_open: Snapshot::of(&meta) })
    }

    /// What the open file is now (fstat: it follows the inode, not the name).
    pub fn now(&self) -> io::Result<Snapshot> {
        Ok(Snapshot::of(&self.file.metadata()?))
    }

    /// Reads the file from its start, by position: each reader starts at
    /// byte 0 whatever other readers of the handle did, so a retry rereads
    /// exactly what the first attempt read.
    pub fn rewound(&self) -> Rewound {
        self.reader_from(0)
    }

    /// Reads the file from byte `pos` on, by position like [`Self::rewound`].
    pub fn reader_from(&self, pos: u64) -> Rewound {
        Rewound { file: Arc::clone(&self.file), pos }
    }
}

/// A reader over an [`Opened`] file from a given byte (`pread`, no shared offset).
#[derive(Debug)]
pub struct Rewound {
    file: Arc<File>,
    pos: u64,
}

impl Read for Rewound {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_keeps_reading_the_inode_it_opened_after_a_rename_over_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, new) = (dir.path().join("a.log"), dir.path().join("a.log.tmp"));
        std::fs::write(&path, b"first").expect("write");
        let opened = Opened::open(&path).expect("open");
        std::fs::write(&new, b"other").expect("write");
        std::fs::rename(&new, &path).expect("rename over");
        let mut read = Vec::new();
        opened.rewound().read_to_end(&mut read).expect("read");
        assert_eq!(read, b"first");
        let replaced = Snapshot::of(&std::fs::symlink_metadata(&path).expect("stat"));
        assert!(!replaced.same_inode(&opened.at_open), "the name now holds another inode");
        let mut again = Vec::new();
        opened.rewound().take(3).read_to_end(&mut again).expect("read");
        assert_eq!(again, b"fir", "every reader starts at byte 0");
    }

    #[test]
    fn links_and_fifos_are_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("real"), b"x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).expect("symlink");
        assert!(Opened::open(&dir.path().join("link")).is_err());
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        let err = Opened::open(&fifo).expect_err("a FIFO is refused, without blocking");
        assert!(err.to_string().contains("regular file"), "{err}");
    }
}
