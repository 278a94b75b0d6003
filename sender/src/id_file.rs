//! Reading the device's ID file.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use logferry_common::{DeviceId, DeviceIdError};

/// Where the ID is looked for unless `--id-file` or `LOGFERRY_ID_FILE` says otherwise.
pub const DEFAULT_ID_FILE: &str = "/etc/logferry/device-id";

#[derive(Debug, thiserror::Error)]
pub enum IdFileError {
    #[error("device ID not found: there is no ID file at {}; put the ID that `receiver add-device` printed there, or give --id-file", .0.display())]
    Missing(PathBuf),
    #[error("cannot read the device ID file {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("the device ID file {} holds no ID (only blank lines or comments)", .0.display())]
    Empty(PathBuf),
    #[error("the device ID file {} holds more than one value; it must hold exactly one ID", .0.display())]
    Several(PathBuf),
    #[error("the device ID file {} does not hold a valid ID: {reason}", path.display())]
    Invalid { path: PathBuf, reason: DeviceIdError },
    #[error(
        "the device ID file {} can be read by other users (mode {mode:04o}); the ID is a secret: run `chmod 600 {}`, \
         or pass --allow-readable-id-file",
        path.display(), path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Whether a file readable by group or others is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    OwnerOnly,
    AllowReadable,
}

/// Reads the one ID in `path`. Whitespace and `#` comments are ignored. The
/// file's content never appears in an error, since it is the secret.
pub fn read(path: &Path, exposure: Exposure) -> Result<DeviceId, IdFileError> {
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => IdFileError::Missing(path.to_owned()),
        _ => IdFileError::Unreadable { path: path.to_owned(), source },
    };
    let mode = std::fs::metadata(path).map_err(unreadable)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 && exposure == Exposure::OwnerOnly {
        return Err(IdFileError::TooOpen { path: path.to_owned(), mode });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let mut tokens = text.lines().flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace());
    let token = tokens.next().ok_or_else(|| IdFileError::Empty(path.to_owned()))?;
    if tokens.next().is_some() {
        return Err(IdFileError::Several(path.to_owned()));
    }
    token.parse().map_err(|reason| IdFileError::Invalid { path: path.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id");
        let check = |content: &str, ok: bool| {
            std::fs::write(&path, content).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            assert_eq!(read(&path, Exposure::OwnerOnly).is_ok(), ok, "{content:?}");
        };
        check("0123456789abcdef", true);
        check("# device id\n  0123456789ABCDEF  \n\n", true);
        check("0123456789ABCDEF # greenhouse\n", true);
        check("", false);
        check("# nothing\n", false);
        check("0123456789ABCDEF\n0123456789ABCDEF\n", false);
        check("0123456789ABCDE", false);
        assert!(matches!(read(&dir.path().join("absent"), Exposure::OwnerOnly), Err(IdFileError::Missing(_))));

        std::fs::write(&path, "0123456789abcdef").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read(&path, Exposure::OwnerOnly).expect_err("readable by others");
        assert!(err.to_string().contains("mode 0644") && err.to_string().contains("chmod 600"), "{err}");
        assert!(read(&path, Exposure::AllowReadable).is_ok());
    }
}
