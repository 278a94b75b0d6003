//! The placement policy, written once for every backend: which names an
//! upload may take and in which order (`RelPath::store_candidates`), when a
//! name counts as holding the same content, where its checksum file goes and
//! what it holds, and which stored files are checksum files (the inventory
//! rule, [`is_data`]).
//!
//! A backend supplies only what it really differs in ([`Backend`]): look at
//! a name, claim it (where creating cannot refuse an existing name by
//! itself), create a file under a name unless one is there, and make names
//! durable.

use logferry_common::RelPath;
use logferry_common::rel_path::CHECKSUM_SUFFIX;
use logferry_common::signing::UploadClaim;
use logferry_common::wire::UploadOutcome;

use super::{Committed, StoreError};

/// What a name holds, judged against the bytes being placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Occupant {
    Free,
    /// Exactly these bytes (for a checksum name: exactly their checksum line).
    SameContent,
    Other,
}

/// What a candidate name and its checksum name hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    pub data: Occupant,
    pub checksum: Occupant,
}

/// What a create-if-absent found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    Created,
    /// Something was there already, and is left as it is.
    Existed,
}

/// Where an upload whose name must be fixed before its body arrives goes.
#[derive(Debug)]
pub(crate) enum Choice {
    Upload(RelPath),
    AlreadyThere(RelPath),
}

/// The primitives of one backend, for one upload (the backend knows its
/// device, content and bytes). Names are relative to the device's folder.
pub(crate) trait Backend {
    /// What `name` holds, and what its checksum name holds against `line`,
    /// the checksum line the upload would put there.
    async fn probe(&mut self, name: &RelPath, line: &str) -> Result<Probe, StoreError>;

    /// Claims `name` for these bytes, on a backend whose create does not
    /// refuse an existing name by itself; true when no other content holds
    /// a claim on it, so that no other bytes will ever be created there.
    async fn claim(&mut self, _name: &RelPath) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Whether other content claimed `name` already (see [`Backend::claim`]).
    async fn claimed_by_others(&mut self, _name: &RelPath) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Creates `name` with the upload's bytes unless something is there.
    async fn create_data(&mut self, name: &RelPath) -> Result<Created, StoreError>;

    /// Creates the checksum file `checksum` holding `line` unless something
    /// is there.
    async fn create_checksum(&mut self, checksum: &RelPath, line: &str) -> Result<Created, StoreError>;

    /// Makes what was created or found under `name` and its checksum name
    /// durable; an answer follows.
    async fn sync(&mut self, _name: &RelPath) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Places the upload under its stored name or, when that holds other
/// content, under the first of its conflict names that is free or holds
/// these bytes.
pub(crate) async fn place(backend: &mut impl Backend, claim: &UploadClaim) -> Result<Committed, StoreError> {
    let candidates = claim.path.store_candidates(&claim.sha256);
    for name in &candidates {
        if let Some(outcome) = place_at(backend, name, claim).await? {
            return Ok(Committed { outcome, stored_as: name.clone() });
        }
    }
    Err(StoreError::all_names_taken(&candidates))
}

/// Places the upload under `name`, with its checksum file beside it, both
/// durable before this returns; `None` when `name` is not this upload's to
/// take. Data goes before its checksum file, so a checksum file never
/// vouches for bytes that are not there.
pub(crate) async fn place_at(
    backend: &mut impl Backend,
    name: &RelPath,
    claim: &UploadClaim,
) -> Result<Option<UploadOutcome>, StoreError> {
    let (checksum, line) = (name.checksum_path(), name.checksum_line(&claim.sha256));
    let mut found = backend.probe(name, &line).await?;
    let outcome = match found.data {
        Occupant::Other => return Ok(None),
        // A checksum file alone, holding something else: its data was
        // removed, or (in a store written before data names were escaped)
        // it is a device's own file.
        Occupant::Free if found.checksum == Occupant::Other => return Ok(None),
        Occupant::Free if !backend.claim(name).await? => return Ok(None),
        Occupant::Free => match backend.create_data(name).await? {
            Created::Created => UploadOutcome::Stored,
            Created::Existed => {
                // Another upload got there first; judge what it put there.
                found = backend.probe(name, &line).await?;
                if found.data != Occupant::SameContent {
                    return Ok(None);
                }
                UploadOutcome::AlreadyStored
            }
        },
        // An earlier answer was lost, or a crash came between the data and
        // its checksum file.
        Occupant::SameContent => UploadOutcome::AlreadyStored,
    };
    match found.checksum {
        // Should a racing upload of the same bytes create it first, its
        // line is this one.
        Occupant::Free => {
            backend.create_checksum(&checksum, &line).await?;
        }
        Occupant::SameContent => {}
        Occupant::Other => tracing::warn!(
            file = %checksum,
            "checksum file name already used by other content (a device's own file, stored before data names were escaped); left as it is"
        ),
    }
    backend.sync(name).await?;
    Ok(Some(outcome))
}

/// For a backend that must name an upload before its body arrives: the
/// first candidate name that holds these bytes, or else that is free.
pub(crate) async fn choose(backend: &mut impl Backend, claim: &UploadClaim) -> Result<Choice, StoreError> {
    let candidates = claim.path.store_candidates(&claim.sha256);
    for name in &candidates {
        let found = backend.probe(name, &name.checksum_line(&claim.sha256)).await?;
        match found.data {
            Occupant::SameContent => return Ok(Choice::AlreadyThere(name.clone())),
            Occupant::Other => {}
            Occupant::Free if found.checksum == Occupant::Other || backend.claimed_by_others(name).await? => {}
            Occupant::Free => return Ok(Choice::Upload(name.clone())),
        }
    }
    Err(StoreError::all_names_taken(&candidates))
}

/// The inventory rule: every stored file is a data file but the checksum
/// file of a data file stored beside it (`<name>.sha256` beside `<name>`).
/// Checksum files are named so, and the receiver stores no data file under
/// such a name (`RelPath::store_candidates` escapes them); a device's own
/// `x.sha256` stored by a receiver from before that escaping stays a data
/// file, as it was sent.
///
/// `stored` says whether a name is stored in the same device folder; the
/// backends answer it as they walk or list, without holding the inventory.
pub(crate) fn is_data(path: &RelPath, stored: impl FnOnce(&str) -> bool) -> bool {
    path.as_str().strip_suffix(CHECKSUM_SUFFIX).is_none_or(|data| !stored(data))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// (device, path) of stored files.
    type Files<'a> = &'a [(&'a str, &'a str)];

    fn check(stored: Files, expected: Files) {
        let names: HashSet<(&str, &str)> = stored.iter().copied().collect();
        let got: Vec<(&str, &str)> = stored
            .iter()
            .copied()
            .filter(|(device, path)| {
                is_data(&RelPath::parse(path).expect("path"), |data| names.contains(&(*device, data)))
            })
            .collect();
        assert_eq!(got, expected, "{stored:?}");
    }

    #[test]
    fn only_the_checksum_files_of_stored_data_files_are_skipped() {
        const A: &str = "00000000000000AA";
        const B: &str = "00000000000000BB";
        let cases: &[(Files, Files)] = &[
            (&[(A, "a.log"), (A, "a.log.sha256")], &[(A, "a.log")]),
            (&[(A, "d/a.log.sha256"), (A, "d/a.log")], &[(A, "d/a.log")]),
            // A device's own file, stored before names were escaped.
            (&[(A, "own.sha256")], &[(A, "own.sha256")]),
            (&[(A, "x.sha256.data"), (A, "x.sha256.data.sha256")], &[(A, "x.sha256.data")]),
            // Another folder's or another device's data file is not this one's.
            (&[(A, "d/a.log"), (A, "a.log.sha256")], &[(A, "d/a.log"), (A, "a.log.sha256")]),
            (&[(A, "a.log"), (B, "a.log.sha256")], &[(A, "a.log"), (B, "a.log.sha256")]),
            (&[(A, ".sha256")], &[(A, ".sha256")]),
        ];
        for (stored, expected) in cases {
            check(stored, expected);
        }
    }
}
