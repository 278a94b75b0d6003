//! ARCHITECTURE.md names files, types and functions in code spans; each of
//! them must exist, so that the map cannot silently drift from the code.
//! (It lives with `common`, the crate both sides share; it reads the whole
//! workspace.)

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Names in ARCHITECTURE.md that come from outside the workspace: std's
/// traits, rustls, the kernel's flags and limits.
const EXTERNAL: [&str; 8] =
    ["Debug", "Display", "Eq", "FromStr", "ServerConfig", "O_NOFOLLOW", "O_NONBLOCK", "RENAME_NOREPLACE"];
/// Extensions of the workspace's own files that a span may name.
const FILE_EXTENSIONS: [&str; 6] = [".rs", ".sh", ".py", ".toml", ".service", ".md"];

#[test]
fn every_name_architecture_md_gives_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let doc = fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let files = workspace_files(root);
    let code = Code::of(&files);
    let missing: Vec<String> = code_spans(&doc)
        .filter(|span| !EXTERNAL.contains(span))
        .filter_map(|span| match Named::of(span) {
            Named::File(name) if !files.iter().any(|file| file.ends_with(name)) => Some(format!("file `{span}`")),
            Named::Code(segments) => {
                let absent: Vec<&str> = segments.into_iter().filter(|s| !code.has(s)).collect();
                (!absent.is_empty()).then(|| format!("`{span}` (no {})", absent.join(", ")))
            }
            _ => None,
        })
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md names what the code does not have:\n{}", missing.join("\n"));
}

#[test]
fn the_check_tells_names_from_prose() {
    let check = |span, expected: Named| assert_eq!(Named::of(span), expected, "{span}");
    check("store/disk.rs", Named::File("store/disk.rs"));
    check("DiskStore::commit_group", Named::Code(vec!["DiskStore", "commit_group"]));
    check("commit(staged, checked)", Named::Code(vec!["commit"]));
    check("code()", Named::Code(vec!["code"]));
    check("BATCH_FILE_MAX", Named::Code(vec!["BATCH_FILE_MAX"]));
    check("create_dirs", Named::Code(vec!["create_dirs"]));
    check("AppState", Named::Code(vec!["AppState"]));
    // A plain word may be prose, a command or a folder: not checked.
    for prose in ["commit", "ls", "--jobs", "GET /v1/devices", ".partial/", "sha256sum -c", "<store>/.staging/"] {
        check(prose, Named::Other);
    }
    let code = Code::of(&[]);
    assert!(!code.has("commit_group"));
    let mut code = code;
    code.add("    // DiskStore is named in a comment only\n    fn commit_group(&self) {}");
    assert!(code.has("commit_group") && !code.has("DiskStore"), "comments do not count");
}

/// What a code span names.
#[derive(Debug, PartialEq, Eq)]
enum Named<'a> {
    /// One of the workspace's files, by the end of its path.
    File(&'a str),
    /// An item, by its path (`Type::method`, `module::function`).
    Code(Vec<&'a str>),
    /// Prose, a command, an option, a folder or a placeholder.
    Other,
}

impl<'a> Named<'a> {
    fn of(span: &'a str) -> Self {
        if FILE_EXTENSIONS.iter().any(|ext| span.ends_with(ext))
            && span.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            return Self::File(span);
        }
        // A call's arguments say nothing of its name.
        let (path, called) = match span.split_once('(') {
            Some((path, _)) if span.ends_with(')') => (path, true),
            _ => (span, false),
        };
        let segments: Vec<&str> = path.split("::").collect();
        let identifier = |s: &&str| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !segments.iter().all(identifier) {
            return Self::Other;
        }
        let unmistakable = called
            || segments.len() > 1
            || path.contains('_')
            || path.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && path.chars().any(|c| c.is_lowercase());
        if unmistakable { Self::Code(segments) } else { Self::Other }
    }
}

/// The words of the workspace's Rust code, comments left out, and the
/// stems of its files (a module path may name a file: `client::Hashed`).
struct Code {
    words: HashSet<String>,
}

impl Code {
    fn of(files: &[PathBuf]) -> Self {
        let mut code = Self { words: HashSet::new() };
        for file in files.iter().filter(|f| f.extension().is_some_and(|ext| ext == "rs")) {
            code.add(&fs::read_to_string(file).expect("a source file"));
            if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
                code.words.insert(stem.to_owned());
            }
        }
        code
    }

    fn add(&mut self, source: &str) {
        for line in source.lines() {
            let code = line.split_once("//").map_or(line, |(code, _)| code);
            let words = code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            self.words.extend(words.filter(|w| !w.is_empty()).map(str::to_owned));
        }
    }

    fn has(&self, word: &str) -> bool {
        self.words.contains(word)
    }
}

/// The text of each `code span` of a Markdown document (fenced blocks
/// have none here).
fn code_spans(doc: &str) -> impl Iterator<Item = &str> {
    doc.split('`').skip(1).step_by(2)
}

/// Every file of the workspace, build output and stores left out.
fn workspace_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).expect("a workspace folder") {
            let entry = entry.expect("a folder entry");
            let path = entry.path();
            let name = entry.file_name();
            if [".git", "target", "received_files"].iter().any(|skip| name == *skip) {
                continue;
            }
            if entry.file_type().expect("a file type").is_dir() {
                folders.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}
