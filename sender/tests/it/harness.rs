//! A device folder and a receiver, and a way to run the sender between them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use logferry_receiver::{Config, Options};
use tempfile::TempDir;

pub use crate::background::BackgroundReceiver;

pub const DEVICE: &str = "0123456789ABCDEF";

/// What one sender run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct Harness {
    pub dir: TempDir,
    pub receiver: Option<BackgroundReceiver>,
}

impl Harness {
    /// A receiver that accepts [`DEVICE`], an ID file holding it, and an
    /// empty `logs` folder.
    pub fn start() -> Self {
        Self::start_with(|_, _| {})
    }

    /// Like [`Harness::start`], with the receiver's options adjusted by
    /// `adjust` (given the test folder) before it starts.
    pub fn start_with(adjust: impl FnOnce(&Path, &mut Options)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ids.txt"), format!("{DEVICE} test-pi\n")).expect("ids");
        write_secret(&dir.path().join("device-id"), &format!("# this device\n{}\n", DEVICE.to_lowercase()));
        std::fs::create_dir(dir.path().join("logs")).expect("logs");
        let store = logferry_receiver::StoreLocation::Disk(dir.path().join("store"));
        let mut options = Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            fleet_refresh: None,
            ..Options::new(dir.path().join("ids.txt"), store)
        };
        adjust(dir.path(), &mut options);
        let config = Config::new(options).expect("a valid receiver configuration");
        let receiver = BackgroundReceiver::start(config).expect("receiver starts");
        Self { dir, receiver: Some(receiver) }
    }

    pub fn host(&self) -> String {
        self.receiver.as_ref().expect("running").addr.to_string()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    pub fn sent(&self) -> PathBuf {
        self.path("sent_files")
    }

    pub fn stored(&self) -> PathBuf {
        self.path("store").join(DEVICE)
    }

    /// The body of `GET <path>` from the receiver.
    pub fn get(&self, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(self.host()).expect("connect");
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").expect("ask");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer.split_once("\r\n\r\n").expect("a head").1.to_owned()
    }

    /// `GET /v1/devices` of the receiver.
    pub fn devices(&self) -> serde_json::Value {
        let body = self.get("/v1/devices");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Writes `content` to `logs/<relative>`, creating folders.
    pub fn log(&self, relative: &str, content: &[u8]) {
        let path = self.logs().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write log");
    }

    /// Runs `sender <receiver> logs --id-file device-id` plus `extra`.
    pub fn send(&self, extra: &[&str]) -> Run {
        self.send_to(&self.host(), extra)
    }

    /// Like [`Harness::send`], to `host` instead (a proxy in front of the receiver).
    pub fn send_to(&self, host: &str, extra: &[&str]) -> Run {
        sender(self.dir.path(), &self.args(host, extra))
    }

    /// The arguments of [`Harness::send_to`].
    pub fn args(&self, host: &str, extra: &[&str]) -> Vec<String> {
        let id_file = self.path("device-id");
        let mut args =
            vec![host.to_owned(), self.logs().display().to_string(), "--id-file".into(), id_file.display().to_string()];
        args.extend(extra.iter().map(ToString::to_string));
        args
    }
}

/// The sender to run: the binary cargo built for these tests, or the
/// command line in `LOGFERRY_TEST_SENDER` (split at whitespace; a relative
/// path is taken from the workspace root), such as an emulator and a
/// cross-compiled binary:
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/sender`
/// (scripts/test.sh runs a subset of these tests so).
pub fn sender_command() -> Command {
    let line = std::env::var("LOGFERRY_TEST_SENDER").unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut words = line.split_whitespace().map(|word| {
        let path = Path::new(word);
        if word.contains('/') && path.is_relative() { root.join(path).into_os_string() } else { word.into() }
    });
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words);
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_sender")),
    }
}

/// Writes a file only its owner may read, as an ID file must be.
pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Runs the sender binary with `args` in `dir`, with no inherited settings
/// and no terminal, as under cron. Files count as finished at once (tests
/// write them just before sending) unless `args` give `--min-age`.
pub fn sender(dir: &Path, args: &[String]) -> Run {
    run_sender(sender_command(), dir, args)
}

/// Like [`sender`], with `command` running the binary (under `faketime`, say).
pub fn run_sender(mut command: Command, dir: &Path, args: &[String]) -> Run {
    let out = command
        .args(args)
        .current_dir(dir)
        .env_remove("LOGFERRY_PORT")
        .env_remove("LOGFERRY_ID_FILE")
        .env_remove("LOGFERRY_SENT_DIR")
        .env_remove("LOGFERRY_CA_CERT")
        .env_remove("LOGFERRY_RETRIES")
        .env_remove("LOGFERRY_ALLOW_READABLE_ID_FILE")
        .env_remove("LOGFERRY_QUIET")
        .env_remove("LOGFERRY_JSON")
        .env_remove("LOGFERRY_KEEP_SENT")
        .env("LOGFERRY_MIN_AGE", "0")
        .output()
        .expect("sender runs");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let all = format!("{}{}", run.stdout, run.stderr).to_uppercase();
    assert!(!all.contains(DEVICE), "the device ID appeared in the output: {run:?}");
    run
}

/// Every file below `root`, relative to it, sorted; the sender's own lock
/// file in the sent folder is left out.
pub fn files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if root.exists() {
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.expect("walk");
            if !entry.file_type().is_dir() && entry.file_name() != logferry_sender::deliver::LOCK_FILE {
                found.push(entry.path().strip_prefix(root).expect("inside").to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// Bytes that differ per file and per seed, and that no compressor shrinks.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
