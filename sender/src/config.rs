//! The validated configuration of one run.

use std::io;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logferry_common::wire::DEFAULT_PORT;
use reqwest::Url;

pub use crate::body::Compression;
use crate::exit;
use crate::id_file::Exposure;
use crate::sent::Disposal;

/// Default folder name for delivered files, beside the log folder, as in the
/// tool logferry replaces.
pub const DEFAULT_SENT_DIR_NAME: &str = "sent_files";

/// What the user asked for, before validation.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: Option<u16>,
    pub folder: PathBuf,
    pub id_file: PathBuf,
    pub sent_dir: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub id_exposure: Exposure,
    pub retries: u32,
    pub min_age: Duration,
    pub keep_sent: Option<Duration>,
    pub jobs: usize,
    pub compression: Compression,
    pub bwlimit: Option<NonZeroU64>,
    pub verbose: bool,
    /// `--update-dir` and what goes with it; `None`: no updates.
    pub update: Option<UpdateOptions>,
    /// `--dry-run`: check everything, create nothing.
    pub dry_run: bool,
}

/// What the user asked for about updates, before validation.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    pub dir: PathBuf,
    /// `--on-update`: a shell command line.
    pub on_update: Option<String>,
    pub timeout: Duration,
}

/// Where releases are kept and what runs once one is in place.
#[derive(Debug, Clone)]
pub struct UpdateConfig {
    /// The update folder, canonical: every file the update writes is below it.
    pub dir: PathBuf,
    /// Run with `sh -c` after each switch of `current`, and after a switch back.
    pub hook: Option<String>,
    /// How long the hook may run before it counts as failed and is killed.
    pub hook_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the receiver, ending in `/`.
    pub receiver: Url,
    /// The log folder, canonical.
    pub folder: PathBuf,
    pub id_file: PathBuf,
    /// Where delivered files are moved, canonical once it exists.
    pub sent_dir: PathBuf,
    /// PEM file of the CA that signed the receiver's certificate, trusted
    /// instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    pub id_exposure: Exposure,
    /// Further attempts after a transient failure.
    pub retries: u32,
    /// Files modified more recently than this are taken to be still being
    /// written, and wait for a later run.
    pub min_age: Duration,
    /// How long delivered files stay in the sent folder, counted from their
    /// move there; `None`: forever; zero: they are deleted instead of moved.
    pub keep_sent: Option<Duration>,
    /// Uploads in flight at once.
    pub jobs: usize,
    /// When files are compressed on the wire.
    pub compression: Compression,
    /// The cap on file bytes sent per second, over all uploads at once.
    pub bwlimit: Option<NonZeroU64>,
    /// Print a line per file (interactive use); otherwise only failures and
    /// the summary, as cron mails whatever is printed.
    pub verbose: bool,
    pub update: Option<UpdateConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Host(String),
    #[error("the log folder {} {reason}", path.display())]
    Folder { path: PathBuf, reason: String },
    #[error("cannot use the sent folder {}: {source}", path.display())]
    SentDir { path: PathBuf, source: io::Error },
    #[error("cannot use the update folder {}: {reason}", path.display())]
    UpdateDir { path: PathBuf, reason: String },
}

impl ConfigError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Host(_) => exit::USAGE,
            Self::Folder { .. } | Self::SentDir { .. } | Self::UpdateDir { .. } => exit::FOLDER,
        }
    }
}

impl Config {
    /// Checks what can be checked before contacting anyone. Creates the sent
    /// folder (unless a dry run, which creates nothing), so that a folder that
    /// cannot be made stops the run before any upload rather than after each
    /// one.
    pub fn new(options: Options) -> Result<Self, ConfigError> {
        let Options {
            host,
            port,
            folder,
            id_file,
            sent_dir,
            ca_cert,
            id_exposure,
            retries,
            min_age,
            keep_sent,
            jobs,
            compression,
            bwlimit,
            verbose,
            update,
            dry_run,
        } = options;
        let receiver = receiver_url(&host, port)?;
        let folder = folder.as_path();
        let folder_error = |reason: String| ConfigError::Folder { path: folder.to_owned(), reason };
        match std::fs::metadata(folder) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(folder_error("is not a folder".to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(folder_error("does not exist".to_owned())),
            Err(e) => return Err(folder_error(format!("cannot be read: {e}"))),
        }
        let folder = folder.canonicalize().map_err(|e| folder_error(format!("cannot be read: {e}")))?;
        let sent_dir = match sent_dir {
            Some(dir) => dir,
            None => folder
                .parent()
                .ok_or_else(|| folder_error("has no parent folder to put sent_files in; give --sent-dir".to_owned()))?
                .join(DEFAULT_SENT_DIR_NAME),
        };
        let sent_error = |source| ConfigError::SentDir { path: sent_dir.clone(), source };
        if !dry_run {
            std::fs::create_dir_all(&sent_dir).map_err(sent_error)?;
        }
        let sent_dir = canonical(&sent_dir).map_err(sent_error)?;
        if sent_dir == folder {
            return Err(sent_error(io::Error::other("it is the log folder itself")));
        }
        let update = update.map(|update| update_config(update, &folder, &sent_dir, !dry_run)).transpose()?;
        Ok(Self {
            receiver,
            folder,
            id_file,
            sent_dir,
            ca_cert,
            id_exposure,
            retries,
            min_age,
            keep_sent,
            jobs,
            compression,
            bwlimit,
            verbose,
            update,
        })
    }

    /// Where a delivered file goes.
    pub fn disposal(&self) -> Disposal {
        match self.keep_sent {
            Some(Duration::ZERO) => Disposal::Delete,
            _ => Disposal::Keep(self.sent_dir.clone()),
        }
    }
}

/// `path` made canonical; a folder not made yet (in a dry run) as its
/// nearest existing ancestor, made canonical, and the names below it.
fn canonical(path: &Path) -> io::Result<PathBuf> {
    match path.canonicalize() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return Err(e) };
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            Ok(canonical(parent)?.join(name))
        }
        done => done,
    }
}

/// With `create`, creates the update folder if it is missing (so that a
/// folder that cannot be made stops the run at once); keeps it apart from the
/// log and sent folders: the sender would upload its releases, or move them
/// aside.
fn update_config(
    options: UpdateOptions,
    folder: &Path,
    sent_dir: &Path,
    create: bool,
) -> Result<UpdateConfig, ConfigError> {
    let UpdateOptions { dir, on_update, timeout } = options;
    let fail = |reason: String| ConfigError::UpdateDir { path: dir.clone(), reason };
    if create {
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("it cannot be created: {e}")))?;
    }
    let canonical = canonical(&dir).map_err(|e| fail(format!("it cannot be read: {e}")))?;
    if canonical.metadata().is_ok_and(|meta| !meta.is_dir()) {
        return Err(fail("it is not a folder".to_owned()));
    }
    for (other, name) in [(folder, "log folder"), (sent_dir, "sent folder")] {
        if canonical.starts_with(other) || other.starts_with(&canonical) {
            return Err(fail(format!("it overlaps the {name} {}; give a folder of its own", other.display())));
        }
    }
    Ok(UpdateConfig { dir: canonical, hook: on_update.filter(|hook| !hook.trim().is_empty()), hook_timeout: timeout })
}

/// Turns `ip`, `ip:port`, `name`, `name:port`, `[v6]:port` or a full
/// `http(s)://` URL into the receiver's base URL. A bare host gets port 3500
/// unless `--port` says otherwise; a URL keeps its own (or its scheme's) port.
fn receiver_url(host: &str, port: Option<u16>) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::Host(format!("cannot use {host:?} as the receiver: {why}"));
    let (url_text, has_port) = if host.contains("://") {
        (host.to_owned(), None)
    } else if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(bad("give an IP address or host name, optionally with :port, or a full http:// URL"));
    } else if let Ok(IpAddr::V6(v6)) = host.parse::<IpAddr>() {
        (format!("http://[{v6}]"), Some(false))
    } else {
        let has_port = !host.ends_with(']') && host.contains(':');
        (format!("http://{host}"), Some(has_port))
    };
    let mut url = Url::parse(&url_text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// are supported"));
    }
    if url.host().is_none() {
        return Err(bad("it names no host"));
    }
    let has_port = has_port.unwrap_or(url.port().is_some());
    let chosen = match (has_port, port) {
        (true, Some(_)) => return Err(bad("the port is given both in the host and with --port; give it once")),
        (false, Some(port)) => Some(port),
        (false, None) if !host.contains("://") => Some(DEFAULT_PORT),
        _ => None,
    };
    if let Some(port) = chosen {
        url.set_port(Some(port)).map_err(|()| bad("it cannot take a port"))?;
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str, port: Option<u16>, expected: Result<&str, ()>) {
        let got = receiver_url(host, port).map(|u| u.to_string()).map_err(|_| ());
        assert_eq!(got.as_deref().map_err(|_| ()), expected, "host {host:?} port {port:?}");
    }

    #[test]
    fn host_forms() {
        check("192.168.1.10", None, Ok("http://192.168.1.10:3500/"));
        check("192.168.1.10:8080", None, Ok("http://192.168.1.10:8080/"));
        check("192.168.1.10", Some(9000), Ok("http://192.168.1.10:9000/"));
        check("192.168.1.10:8080", Some(9000), Err(()));
        check("logs.lab", None, Ok("http://logs.lab:3500/"));
        check("logs.lab:4000", None, Ok("http://logs.lab:4000/"));
        check("::1", None, Ok("http://[::1]:3500/"));
        check("[::1]:4000", None, Ok("http://[::1]:4000/"));
        check("[::1]", None, Ok("http://[::1]:3500/"));
        check("http://logs.lab", None, Ok("http://logs.lab/"));
        check("http://logs.lab:3500", None, Ok("http://logs.lab:3500/"));
        check("https://logs.lab/logferry", None, Ok("https://logs.lab/logferry/"));
        check("https://logs.lab", Some(8443), Ok("https://logs.lab:8443/"));
        check("ftp://logs.lab", None, Err(()));
        check("", None, Err(()));
        check("logs.lab/x", None, Err(()));
        check("user@logs.lab", None, Err(()));
        check("logs.lab:99999", None, Err(()));
    }

    #[test]
    fn the_update_folder_is_made_and_kept_apart_from_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (logs, sent) = (dir.path().join("logs"), dir.path().join("sent"));
        std::fs::create_dir_all(&logs).expect("logs");
        std::fs::create_dir_all(&sent).expect("sent");
        let options =
            |update: &Path| UpdateOptions { dir: update.to_owned(), on_update: None, timeout: Duration::ZERO };
        let made = update_config(options(&dir.path().join("app/releases")), &logs, &sent, true).expect("made");
        assert!(made.dir.is_dir() && made.dir.ends_with("app/releases"), "{made:?}");
        for overlapping in [logs.join("app"), sent.clone(), dir.path().to_owned()] {
            let err = update_config(options(&overlapping), &logs, &sent, true).expect_err("overlaps");
            assert!(err.to_string().contains("overlaps the"), "{err}");
            assert_eq!(err.exit_code(), exit::FOLDER);
        }
        std::fs::write(dir.path().join("file"), b"").expect("file");
        let err = update_config(options(&dir.path().join("file/x")), &logs, &sent, true).expect_err("cannot be made");
        assert!(err.to_string().contains("cannot be created"), "{err}");
    }
}
