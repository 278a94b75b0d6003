//! The sender's exit codes, so cron and scripts can tell failures apart.
//! README.md lists the same table.

/// Every eligible file was delivered and moved aside, or there was nothing to send.
pub const SUCCESS: u8 = 0;
/// Some files could not be delivered (or moved aside); they stay for the next run.
pub const SOME_FILES_FAILED: u8 = 1;
/// The command line is wrong (missing or unknown arguments).
pub const USAGE: u8 = 2;
/// The device ID file is missing, unreadable, or holds no valid ID.
pub const ID_FILE: u8 = 3;
/// The log folder is not a folder, or the sent folder cannot be used.
pub const FOLDER: u8 = 4;
/// The receiver could not be reached, or what answered was not a logferry receiver.
pub const UNREACHABLE: u8 = 5;
/// The receiver refused this device's credentials.
pub const AUTH_FAILED: u8 = 6;
/// TLS failed: the receiver's certificate could not be verified (or the CA
/// file could not be read). Never falls back to plain HTTP.
pub const TLS: u8 = 7;
/// Another run is already using this sent folder (cron overlap); this one
/// stopped at once without sending anything.
pub const ALREADY_RUNNING: u8 = 8;
/// Anything else: a bug or an unexpected system failure.
pub const INTERNAL: u8 = 9;
/// Every file was delivered (or there was nothing to send), but the update
/// failed or was rolled back; every other code takes precedence.
pub const UPDATE_FAILED: u8 = 10;
/// The receiver answered, as a logferry receiver, but could not serve the
/// run even after the retries: busy (429) or failing (5xx, 408).
pub const RECEIVER_UNAVAILABLE: u8 = 11;
