//! The rules for the relative path a device gives each file.
//!
//! The receiver joins this path onto the device's folder, so these rules are
//! what keeps every byte inside the store. They are deliberately strict and
//! identical on both sides: the sender checks a name before uploading, so a
//! file the receiver would refuse is reported on the device, not retried.

use std::fmt;
use std::path::{Component, Path};

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::Sha256Digest;

/// Longest accepted path, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most folders-plus-file in one path.
pub const MAX_DEPTH: usize = 32;
/// Longest accepted component, in bytes. File systems allow 255; the margin
/// leaves room for the `.data`, `.conflict-…` and `.sha256` suffixes the
/// store adds.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// Suffix of the checksum file stored beside each file.
pub const CHECKSUM_SUFFIX: &str = ".sha256";
/// Added to a data file's stored name that would otherwise end in
/// [`CHECKSUM_SUFFIX`] (see [`RelPath::store_candidates`]).
const ESCAPE_SUFFIX: &str = ".data";
/// Hex characters of the content's SHA-256 in the first conflict name: short
/// names for the common case.
const SHORT_TAG_HEX: usize = 16;
/// Hex characters in the last conflict name: 128 bits. Other bytes reach it
/// by the rules only with the same first 128 bits of SHA-256, which takes
/// about 2^64 work to arrange for some two files and 2^128 for a given one
/// (the first conflict name's 64 bits take only 2^32). Not all 64: a 200-byte
/// name, escaped, tagged and with its checksum suffix would exceed `NAME_MAX`.
const LONG_TAG_HEX: usize = 32;
/// What the longest conflict name adds: `.conflict-` and the long tag.
const CONFLICT_TAG_BYTES: usize = ".conflict-".len() + LONG_TAG_HEX;
/// Longest file name the file systems we write to accept.
pub const NAME_MAX: usize = 255;

// Every name the store derives (stored name, its conflict names, then their
// checksum files) must still fit the file system, or a valid upload could
// not be stored.
const _: () =
    assert!(MAX_COMPONENT_BYTES + ESCAPE_SUFFIX.len() + CONFLICT_TAG_BYTES + CHECKSUM_SUFFIX.len() <= NAME_MAX);

/// A relative path that is safe to join onto a folder: `/`-separated, with no
/// empty, `.` or `..` components, no leading `/`, no drive letter, no
/// backslash, no control or invisible format characters, and bounded in
/// length and depth.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is {0} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    TooLong(usize),
    #[error("the path has {0} components; at most {MAX_DEPTH} are allowed")]
    TooDeep(usize),
    #[error("a path component is {0} bytes long; at most {MAX_COMPONENT_BYTES} are allowed")]
    ComponentTooLong(usize),
    #[error("the path is absolute; it must be relative to the log folder")]
    Absolute,
    #[error("the path starts with a drive letter")]
    DriveLetter,
    #[error("the path has an empty component (a doubled or trailing '/')")]
    EmptyComponent,
    #[error("the path has a '.' or '..' component")]
    DotComponent,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character (U+{0:04X})")]
    ControlChar(u32),
    #[error("the path contains an invisible format character (U+{0:04X}), which can make a name look like another")]
    FormatChar(u32),
    #[error("the file name is not valid UTF-8")]
    NotUtf8,
}

impl RelPath {
    /// Validates a path as received on the wire.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        if text.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(text.len()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(PathError::ControlChar(c as u32));
        }
        // Bidi overrides, zero-width characters, BOMs, soft hyphens, tags:
        // invisible, they let a name shown on the status page, in a log or
        // in `ls` read as another (`evil\u{202E}gol.exe` shows as
        // `evilexe.log`). Nothing a log file needs.
        if let Some(c) = text.chars().find(|c| c.general_category() == GeneralCategory::Format) {
            return Err(PathError::FormatChar(c as u32));
        }
        if text.contains('\\') {
            return Err(PathError::Backslash);
        }
        if text.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if has_drive_prefix(text) {
            return Err(PathError::DriveLetter);
        }
        let depth = text.split('/').count();
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep(depth));
        }
        for component in text.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                long if long.len() > MAX_COMPONENT_BYTES => {
                    return Err(PathError::ComponentTooLong(long.len()));
                }
                _ => {}
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// Builds the wire path of a file found under a local folder, from its
    /// path relative to that folder.
    pub fn from_local(relative: &Path) -> Result<Self, PathError> {
        let mut parts = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => parts.push(name.to_str().ok_or(PathError::NotUtf8)?),
                Component::CurDir | Component::ParentDir => return Err(PathError::DotComponent),
                Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
            }
        }
        Self::parse(&parts.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The folders that lead to the file: every component but the last.
    pub fn folders(&self) -> impl Iterator<Item = &str> {
        let depth = self.components().count();
        self.components().take(depth - 1)
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Where the checksum file of this path is kept: the same path plus
    /// `.sha256`.
    pub fn checksum_path(&self) -> Self {
        Self(format!("{}{CHECKSUM_SUFFIX}", self.0))
    }

    /// The names under which the receiver may store the content with SHA-256
    /// `content` sent as this path, in the order they are tried: the
    /// [`candidates`](Self::candidates) of its stored name.
    ///
    /// The stored name is the path as sent, except that a file name ending
    /// in `.sha256`, or in `.sha256` and one or more `.data`, gets one more
    /// `.data`: `x.sha256` → `x.sha256.data`, `x.sha256.data` →
    /// `x.sha256.data.data`. So no data file is stored under a name ending in
    /// `.sha256`, and `sha256sum -c` over a folder's `*.sha256` files checks
    /// the receiver's own lines only, whatever names a device sends; and no
    /// two sent names share a stored name. No conflict name ends in `.sha256`
    /// either: its tag or the escaped `.data` comes last.
    pub fn store_candidates(&self, content: &Sha256Digest) -> [Self; 3] {
        self.stored_name().candidates(content)
    }

    /// Where the content with SHA-256 `content` goes when this name holds
    /// other bytes, in order: this name, then two conflict names, which put
    /// 16 and then 32 hex characters of the SHA-256 before the extension
    /// (`logs/day.csv` → `logs/day.conflict-0123456789abcdef.csv` →
    /// `logs/day.conflict-0123456789abcdef0123456789abcdef.csv`). Derived
    /// from the content, they are the same on every retry. Other bytes reach
    /// the last one by these rules only with the same first 128 bits of
    /// SHA-256, so in practice it holds other bytes only when a device sent
    /// a file under that very name.
    pub fn candidates(&self, content: &Sha256Digest) -> [Self; 3] {
        let hex = content.to_hex();
        [self.clone(), self.tagged(&hex[..SHORT_TAG_HEX]), self.tagged(&hex[..LONG_TAG_HEX])]
    }

    fn stored_name(&self) -> Self {
        let mut name = self.file_name();
        while let Some(shorter) = name.strip_suffix(ESCAPE_SUFFIX) {
            name = shorter;
        }
        if name.ends_with(CHECKSUM_SUFFIX) { Self(format!("{}{ESCAPE_SUFFIX}", self.0)) } else { self.clone() }
    }

    fn tagged(&self, tag: &str) -> Self {
        let name = self.file_name();
        let dir = &self.0[..self.0.len() - name.len()];
        let (stem, extension) = match name.rfind('.') {
            Some(dot) if dot > 0 && dot + 1 < name.len() => name.split_at(dot),
            _ => (name, ""),
        };
        Self(format!("{dir}{stem}.conflict-{tag}{extension}"))
    }

    /// The line `sha256sum -c` expects, run inside the file's folder.
    pub fn checksum_line(&self, digest: &Sha256Digest) -> String {
        format!("{digest}  {}\n", self.file_name())
    }
}

/// `C:`, `c:foo` and the like: meaningless on the receiver's own file system,
/// but a trap for anyone who later copies the store to Windows.
fn has_drive_prefix(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), PathError>) {
        let got = RelPath::parse(input).map(|p| assert_eq!(p.as_str(), input));
        assert_eq!(got, expected, "input {input:?}");
    }

    #[test]
    fn rules() {
        let long_component = "a".repeat(MAX_COMPONENT_BYTES + 1);
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let long_path = vec!["a".repeat(100); 11].join("/");
        let cases: &[(&str, Result<(), PathError>)] = &[
            ("a.log", Ok(())),
            ("nested/dir/a.log", Ok(())),
            ("name with spaces.txt", Ok(())),
            ("données/été.csv", Ok(())),
            (".hidden", Ok(())),
            ("a..b", Ok(())),
            ("12:00.log", Ok(())),
            ("", Err(PathError::Empty)),
            ("/etc/passwd", Err(PathError::Absolute)),
            ("../a", Err(PathError::DotComponent)),
            ("a/../b", Err(PathError::DotComponent)),
            ("a/..", Err(PathError::DotComponent)),
            ("./a", Err(PathError::DotComponent)),
            ("a//b", Err(PathError::EmptyComponent)),
            ("a/", Err(PathError::EmptyComponent)),
            ("a\\b", Err(PathError::Backslash)),
            ("..\\a", Err(PathError::Backslash)),
            ("C:/a", Err(PathError::DriveLetter)),
            ("c:a", Err(PathError::DriveLetter)),
            ("a\0b", Err(PathError::ControlChar(0))),
            ("a\nb", Err(PathError::ControlChar(10))),
            ("a\u{7f}b", Err(PathError::ControlChar(0x7f))),
            ("a\u{85}b", Err(PathError::ControlChar(0x85))),
            ("evil\u{202e}gol.exe", Err(PathError::FormatChar(0x202e))),
            ("\u{2066}a\u{2069}.log", Err(PathError::FormatChar(0x2066))),
            ("a\u{200b}.log", Err(PathError::FormatChar(0x200b))),
            ("a\u{200d}b", Err(PathError::FormatChar(0x200d))),
            ("\u{feff}a.log", Err(PathError::FormatChar(0xfeff))),
            ("soft\u{ad}hyphen", Err(PathError::FormatChar(0xad))),
            ("a\u{2060}b", Err(PathError::FormatChar(0x2060))),
            ("d/\u{e0001}\u{e0041}.log", Err(PathError::FormatChar(0xe0001))),
            ("\u{600}.log", Err(PathError::FormatChar(0x600))),
            // Visible neighbours of those: ordinary characters.
            ("a\u{2010}b\u{a0}c", Ok(())),
            ("\u{5d0}\u{5d1}.log", Ok(())),
            (&long_component, Err(PathError::ComponentTooLong(MAX_COMPONENT_BYTES + 1))),
            (&deep, Err(PathError::TooDeep(MAX_DEPTH + 1))),
            (&long_path, Err(PathError::TooLong(long_path.len()))),
        ];
        for (input, expected) in cases {
            check(input, expected.clone());
        }
    }

    #[test]
    fn from_local_joins_with_slashes() {
        let p = RelPath::from_local(Path::new("a/b/c.txt")).expect("valid");
        assert_eq!(p.as_str(), "a/b/c.txt");
        assert_eq!(RelPath::from_local(Path::new("/abs")), Err(PathError::Absolute));
    }

    /// Found by fuzzing: derived names may exceed the limit for names a device
    /// sends, but must fit the file system and stay in the same folder.
    #[test]
    fn derived_names_of_the_longest_allowed_name_fit_the_file_system() {
        let digest = Sha256Digest::of_reader(&b"x"[..]).expect("hash").0;
        let most = MAX_COMPONENT_BYTES;
        for name in [
            "1".repeat(180),
            "a".repeat(most),
            format!("{}.csv", "b".repeat(most - 4)),
            format!("{}.sha256", "c".repeat(most - 7)),
            format!("{}.sha256.data", "d".repeat(most - 12)),
        ] {
            let path = RelPath::parse(&format!("dir/{name}")).expect("valid");
            for candidate in path.store_candidates(&digest) {
                let longest = candidate.checksum_path();
                assert!(longest.file_name().len() <= NAME_MAX, "{longest:?}");
                assert_eq!(longest.folders().collect::<Vec<_>>(), ["dir"]);
            }
        }
    }

    #[test]
    fn derived_names() {
        let digest: Sha256Digest =
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().expect("valid");
        let (short, long) = ("ba7816bf8f01cfea", "ba7816bf8f01cfea414140de5dae2223");
        // The stored name, and the conflict names with `{T}` for the tag.
        let cases = [
            ("day.csv", "day.csv", "day.conflict-{T}.csv"),
            ("logs/x.y.txt", "logs/x.y.txt", "logs/x.y.conflict-{T}.txt"),
            ("messages", "messages", "messages.conflict-{T}"),
            ("d/.bashrc", "d/.bashrc", "d/.bashrc.conflict-{T}"),
            ("trailing.", "trailing.", "trailing..conflict-{T}"),
            // Names a checksum file could have are escaped, injectively.
            ("a.log.sha256", "a.log.sha256.data", "a.log.sha256.conflict-{T}.data"),
            ("x.sha256.data", "x.sha256.data.data", "x.sha256.data.conflict-{T}.data"),
            ("x.sha256.data.data", "x.sha256.data.data.data", "x.sha256.data.data.conflict-{T}.data"),
            ("d/.sha256", "d/.sha256.data", "d/.sha256.conflict-{T}.data"),
            ("x.SHA256", "x.SHA256", "x.conflict-{T}.SHA256"),
            ("x.data", "x.data", "x.conflict-{T}.data"),
            ("sha256", "sha256", "sha256.conflict-{T}"),
            ("x.sha256x", "x.sha256x", "x.conflict-{T}.sha256x"),
            ("x.sha256.datax", "x.sha256.datax", "x.sha256.conflict-{T}.datax"),
            ("d.sha256/a.log", "d.sha256/a.log", "d.sha256/a.conflict-{T}.log"),
        ];
        for (input, stored, conflict) in cases {
            let path = RelPath::parse(input).expect("valid");
            let got = path.store_candidates(&digest);
            let expected = [stored.to_owned(), conflict.replace("{T}", short), conflict.replace("{T}", long)];
            assert_eq!(got.each_ref().map(RelPath::as_str), expected.each_ref().map(String::as_str), "{input:?}");
            for candidate in &got {
                assert!(!candidate.as_str().ends_with(CHECKSUM_SUFFIX), "{candidate:?}");
                assert!(RelPath::parse(candidate.checksum_path().as_str()).is_ok());
            }
        }
        // Outside the store (the sender's sent folder) names are not escaped.
        let sent = RelPath::parse("a.sha256").expect("valid").candidates(&digest);
        assert_eq!(sent[0].as_str(), "a.sha256");
        assert_eq!(sent[2].as_str(), format!("a.conflict-{long}.sha256"));
        let path = RelPath::parse("a/x.y.txt").expect("valid");
        assert_eq!(path.checksum_path().as_str(), "a/x.y.txt.sha256");
        assert_eq!(path.checksum_line(&digest), format!("{digest}  x.y.txt\n"));
    }
}
