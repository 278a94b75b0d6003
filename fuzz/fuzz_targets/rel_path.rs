//! Any string either fails the path rules or yields a path that cannot
//! leave its folder, and whose derived names (stored name, conflict name,
//! checksum file) stay in the same folder and fit the file system, no data
//! name looking like a checksum file's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_common::rel_path::NAME_MAX;
use logferry_common::{RelPath, Sha256Digest};

fuzz_target!(|text: &str| {
    let Ok(path) = RelPath::parse(text) else { return };
    assert_eq!(path.as_str(), text);
    assert!(!text.starts_with('/') && !text.contains('\\') && !text.chars().any(char::is_control));
    for component in path.components() {
        assert!(!matches!(component, "" | "." | ".."), "{text:?}");
    }
    let digest = Sha256Digest::of_reader(text.as_bytes()).expect("hashing a slice").0;
    for candidate in path.store_candidates(&digest) {
        assert!(!candidate.is_checksum_file(), "{text:?}");
        for derived in [candidate.checksum_path(), candidate] {
            assert_eq!(derived.folders().collect::<Vec<_>>(), path.folders().collect::<Vec<_>>(), "{text:?}");
            let name = derived.file_name();
            assert!(name.len() <= NAME_MAX && !name.is_empty() && name != "." && name != ".." && !name.contains('/'));
        }
    }
});
