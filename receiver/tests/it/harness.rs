//! A receiver in a temporary folder, and requests signed like a device's.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use logferry_common::signing::{SignedRequest, UploadClaim};
use logferry_common::wire::endpoint;
use logferry_common::{DeviceId, RelPath, Sha256Digest};
use logferry_receiver::{BackgroundReceiver, Config, Limits};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tempfile::TempDir;

pub const DEVICE: &str = "0123456789ABCDEF";
pub const STRANGER: &str = "FEDCBA9876543210";

pub fn device() -> DeviceId {
    DEVICE.parse().expect("valid ID")
}

pub fn stranger() -> DeviceId {
    STRANGER.parse().expect("valid ID")
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

pub fn digest(content: &[u8]) -> Sha256Digest {
    Sha256Digest::of_reader(content).expect("hashing a slice").0
}

pub fn claim(path: &str, content: &[u8]) -> UploadClaim {
    UploadClaim { path: RelPath::parse(path).expect("valid path"), sha256: digest(content), size: content.len() as u64 }
}

pub fn authorization(
    id: &DeviceId,
    method: &str,
    endpoint: &str,
    timestamp: u64,
    upload: Option<&UploadClaim>,
) -> String {
    SignedRequest { method, path: endpoint, timestamp, upload }.authorization(id).to_string()
}

pub struct Harness {
    pub dir: TempDir,
    receiver: Option<BackgroundReceiver>,
    limits: Limits,
    pub http: reqwest::Client,
}

impl Harness {
    /// A receiver accepting [`DEVICE`], labelled "bench-pi".
    pub fn start() -> Self {
        Self::start_with(Limits::default())
    }

    pub fn start_with(limits: Limits) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), limits)
    }

    /// A receiver in `dir`, whose `store` folder may already exist.
    pub fn start_in(dir: TempDir, limits: Limits) -> Self {
        std::fs::write(dir.path().join("ids.txt"), format!("# test fleet\n{}  bench-pi\n", DEVICE.to_lowercase()))
            .expect("ids");
        let mut harness = Self { dir, receiver: None, limits, http: reqwest::Client::new() };
        harness.restart();
        harness
    }

    pub fn config(&self) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ids_file: self.dir.path().join("ids.txt"),
            store: logferry_receiver::StoreLocation::Disk(self.store()),
            limits: self.limits.clone(),
            tls: None,
        }
    }

    /// Stops the receiver (if running) and starts a new one on the same folder.
    pub fn restart(&mut self) {
        if let Some(old) = self.receiver.take() {
            old.stop().expect("stopped");
        }
        let ready = logferry_receiver::open(&self.config()).expect("receiver opens");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        self.receiver = Some(BackgroundReceiver::start(listener, ready.state, ready.tls).expect("started"));
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.receiver.as_ref().expect("running").addr
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!("http://{}{endpoint}", self.addr())
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn device_dir(&self) -> PathBuf {
        self.store().join(DEVICE)
    }

    pub fn ids_file(&self) -> PathBuf {
        self.dir.path().join("ids.txt")
    }

    /// Sends a correctly signed upload of `content` as `path`.
    pub async fn upload(&self, path: &str, content: &[u8]) -> (u16, Value) {
        let claim = claim(path, content);
        let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
        self.send_form(Some(auth), upload_form(path, &claim.sha256.to_hex(), &claim.size.to_string(), content)).await
    }

    pub async fn send_form(&self, auth: Option<String>, form: Form) -> (u16, Value) {
        let mut request = self.http.post(self.url(endpoint::UPLOAD)).multipart(form);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        answer(request.send().await.expect("receiver answers")).await
    }

    /// Every file under the store, relative to it, except the staging folder
    /// (which must be empty whenever no upload is in flight).
    pub fn stored_files(&self) -> Vec<String> {
        let staging = self.store().join(".staging");
        let leftovers: Vec<_> =
            std::fs::read_dir(&staging).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(leftovers.is_empty(), "staging not empty: {leftovers:?}");
        let mut files = Vec::new();
        collect(&self.store(), &self.store(), &staging, &mut files);
        files.sort();
        files
    }
}

fn collect(root: &Path, dir: &Path, skip: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            collect(root, &path, skip, out);
        } else {
            out.push(path.strip_prefix(root).expect("inside").to_string_lossy().into_owned());
        }
    }
}

pub fn upload_form(path: &str, sha256: &str, size: &str, content: &[u8]) -> Form {
    Form::new()
        .text("path", path.to_owned())
        .text("sha256", sha256.to_owned())
        .text("size", size.to_owned())
        .part("file", Part::bytes(content.to_vec()).file_name("f"))
}

pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let is_json = response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = response.bytes().await.expect("body");
    assert!(is_json, "HTTP {status} answer is not JSON: {}", String::from_utf8_lossy(&body));
    (status, serde_json::from_slice(&body).expect("JSON body"))
}
