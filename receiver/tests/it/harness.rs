//! A receiver in a temporary folder (storing there, or in a fresh prefix of
//! the test bucket), and requests signed like a device's.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use logferry_common::signing::{SignedFields, SignedRequest, UploadClaim};
use logferry_common::wire::endpoint;
use logferry_common::{DeviceId, DeviceKey, RelPath, Sha256Digest};
use logferry_receiver::store::s3::{S3Settings, parse_store_url};
use logferry_receiver::{Config, Limits, Options, Publish, StoreLocation, TrustedProxies};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tempfile::TempDir;

pub use crate::background::BackgroundReceiver;

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

/// The key of `id`, derived once per test binary: a derivation costs an
/// Argon2id.
pub fn key(id: &DeviceId) -> DeviceKey {
    static KEYS: std::sync::Mutex<Vec<(String, DeviceKey)>> = std::sync::Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, key)) = keys.iter().find(|(known, _)| known == id.reveal()) {
        return key.clone();
    }
    let key = id.derive_key();
    keys.push((id.reveal().to_owned(), key.clone()));
    key
}

pub fn authorization(
    id: &DeviceId,
    method: &str,
    endpoint: &str,
    timestamp: u64,
    upload: Option<&UploadClaim>,
) -> String {
    signed_head(id, method, endpoint, timestamp, upload.map(SignedFields::from).as_ref())
}

/// Signs fields exactly as given, valid or not.
pub fn signed_head(
    id: &DeviceId,
    method: &str,
    endpoint: &str,
    timestamp: u64,
    fields: Option<&SignedFields>,
) -> String {
    SignedRequest { method, path: endpoint, timestamp, clock_offset: 0, fields }.authorization(&key(id)).to_string()
}

/// Where a test receiver keeps uploads.
#[derive(Debug, Clone)]
pub enum Backend {
    Disk,
    /// A bucket; each harness uses its own random prefix inside it.
    S3(S3Settings),
}

impl Backend {
    /// The test bucket that scripts/test.sh starts (LOGFERRY_TEST_S3 and the
    /// AWS_* variables of scripts/garage.sh). Without it the S3 tests are
    /// skipped, unless LOGFERRY_REQUIRE_S3 says they must run.
    pub fn s3() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(url) = var("LOGFERRY_TEST_S3") else {
            assert!(var("LOGFERRY_REQUIRE_S3").is_none(), "LOGFERRY_REQUIRE_S3 is set but LOGFERRY_TEST_S3 is not");
            eprintln!("skipped: no test bucket (run scripts/test.sh, which starts Garage)");
            return None;
        };
        let (bucket, prefix) = parse_store_url(&url).expect("an s3:// URL").expect("a valid s3:// URL");
        Some(Self::S3(S3Settings {
            bucket,
            prefix,
            endpoint: var("AWS_ENDPOINT_URL"),
            region: var("AWS_REGION").unwrap_or_else(|| "garage".to_owned()),
            access_key_id: var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
            session_token: None,
        }))
    }

    /// The same backend in a prefix of its own, so tests never see each
    /// other's objects.
    fn fresh(self) -> Self {
        match self {
            Self::Disk => Self::Disk,
            Self::S3(settings) => {
                let mut nonce = [0u8; 8];
                rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut nonce).expect("random");
                let parts = [settings.prefix.as_str(), &hex::encode(nonce)];
                let prefix = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
                Self::S3(S3Settings { prefix, ..settings })
            }
        }
    }
}

pub struct Harness {
    pub dir: TempDir,
    receiver: Option<BackgroundReceiver>,
    limits: Limits,
    backend: Backend,
    fleet_refresh: Option<Duration>,
    trusted_proxies: TrustedProxies,
    publish: Option<Publish>,
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
        Self::start_with_backend(dir, limits, Backend::Disk)
    }

    /// A receiver storing on `backend`.
    pub fn start_on(backend: Backend) -> Self {
        Self::start_with_backend(tempfile::tempdir().expect("tempdir"), Limits::default(), backend)
    }

    fn start_with_backend(dir: TempDir, limits: Limits, backend: Backend) -> Self {
        std::fs::write(dir.path().join("ids.txt"), format!("# test fleet\n{}  bench-pi\n", DEVICE.to_lowercase()))
            .expect("ids");
        let backend = backend.fresh();
        let mut harness = Self {
            dir,
            receiver: None,
            limits,
            backend,
            fleet_refresh: None,
            trusted_proxies: TrustedProxies::default(),
            publish: None,
            http: reqwest::Client::new(),
        };
        harness.restart();
        harness
    }

    pub fn config(&self) -> Config {
        let store = match &self.backend {
            Backend::Disk => StoreLocation::Disk(self.store()),
            Backend::S3(settings) => StoreLocation::S3(settings.clone()),
        };
        Config::new(Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            limits: self.limits.clone(),
            fleet_refresh: self.fleet_refresh,
            trusted_proxies: self.trusted_proxies.clone(),
            publish: self.publish.clone(),
            ..Options::new(self.dir.path().join("ids.txt"), store)
        })
        .expect("a valid configuration")
    }

    /// Restarts the receiver so that it, and those started after, publish
    /// releases from `<dir>/publish`, taking a tree once it was still for
    /// `settle`.
    pub fn publish_with_settle(&mut self, settle: Duration) {
        self.publish = Some(Publish { dir: self.publish_dir(), settle });
        self.restart();
    }

    pub fn publish_dir(&self) -> PathBuf {
        self.dir.path().join("publish")
    }

    /// Restarts the receiver so that it, and those started after, take the
    /// client's address from these proxies' forwarding headers.
    pub fn trust_proxies(&mut self, proxies: &str) {
        self.trusted_proxies = proxies.parse().expect("a valid list");
        self.restart();
    }

    /// Restarts the receiver so that it, and those started after, re-read the
    /// store for the fleet status this often.
    pub fn refresh_fleet_every(&mut self, every: Duration) {
        self.fleet_refresh = Some(every);
        self.restart();
    }

    /// Stops the receiver (if running) and starts a new one on the same folder.
    pub fn restart(&mut self) {
        if let Some(old) = self.receiver.take() {
            old.stop().expect("stopped");
        }
        self.receiver = Some(self.start_another());
    }

    /// One more receiver on the same ids file and store.
    pub fn start_another(&self) -> BackgroundReceiver {
        BackgroundReceiver::start(self.config()).expect("started")
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
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

    /// Replaces the ids file and waits until the receiver lists `devices`
    /// devices: it applies edits off the request path, within a second or
    /// so (plus an Argon2id per new device).
    pub async fn edit_ids(&self, text: &str, devices: usize) {
        std::fs::write(self.ids_file(), text).expect("ids file written");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let report: Value = serde_json::from_str(&self.get_text(endpoint::DEVICES).await).expect("JSON");
            let listed = report["devices"].as_array().map_or(0, Vec::len);
            if listed == devices {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the receiver lists {listed} devices, not {devices}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn ids_file(&self) -> PathBuf {
        self.dir.path().join("ids.txt")
    }

    /// Sends a correctly signed upload of `content` as `path`.
    pub async fn upload(&self, path: &str, content: &[u8]) -> (u16, Value) {
        self.upload_as(&device(), path, content).await
    }

    /// Sends an upload of `content` as `path`, signed by `id`.
    pub async fn upload_as(&self, id: &DeviceId, path: &str, content: &[u8]) -> (u16, Value) {
        self.upload_to(self.addr(), id, path, content).await
    }

    /// Sends a correctly signed upload by `id` to the receiver at `addr`.
    pub async fn upload_to(
        &self,
        addr: std::net::SocketAddr,
        id: &DeviceId,
        path: &str,
        content: &[u8],
    ) -> (u16, Value) {
        let claim = claim(path, content);
        let auth = authorization(id, "POST", endpoint::UPLOAD, now(), Some(&claim));
        let form = upload_form(path, &claim.sha256.to_hex(), &claim.size.to_string(), content);
        let request = self.http.post(format!("http://{addr}{}", endpoint::UPLOAD)).multipart(form);
        answer(request.header("Authorization", auth).send().await.expect("receiver answers")).await
    }

    /// As [`Harness::upload_to`], retrying a 429 after its Retry-After as the
    /// sender does (a bounded number of times).
    pub async fn upload_retrying(
        &self,
        addr: std::net::SocketAddr,
        id: &DeviceId,
        path: &str,
        content: &[u8],
    ) -> (u16, Value) {
        let mut answer = self.upload_to(addr, id, path, content).await;
        for _ in 0..10 {
            if answer.0 != 429 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            answer = self.upload_to(addr, id, path, content).await;
        }
        answer
    }

    /// The body of `GET endpoint`, which must answer 200.
    pub async fn get_text(&self, endpoint: &str) -> String {
        let response = self.http.get(self.url(endpoint)).send().await.expect("receiver answers");
        assert_eq!(response.status().as_u16(), 200, "GET {endpoint}");
        response.text().await.expect("body")
    }

    /// A signed upload of `claim` whose file part is `file` (compressed, or
    /// only the bytes from `offset` on), with the optional `offset` and
    /// `encoding` fields.
    pub async fn upload_part(
        &self,
        claim: &UploadClaim,
        offset: Option<u64>,
        encoding: Option<&str>,
        file: Vec<u8>,
    ) -> (u16, Value) {
        let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(claim));
        let mut form = Form::new()
            .text("path", claim.path.to_string())
            .text("sha256", claim.sha256.to_hex())
            .text("size", claim.size.to_string());
        if let Some(offset) = offset {
            form = form.text("offset", offset.to_string());
        }
        if let Some(encoding) = encoding {
            form = form.text("encoding", encoding.to_owned());
        }
        self.send_form(Some(auth), form.part("file", Part::bytes(file).file_name("f"))).await
    }

    /// The offset query for `claim`: how much of it the receiver holds.
    pub async fn held(&self, claim: &UploadClaim) -> (u16, Value) {
        let auth = authorization(&device(), "POST", endpoint::UPLOAD_OFFSET, now(), Some(claim));
        let form = Form::new()
            .text("path", claim.path.to_string())
            .text("sha256", claim.sha256.to_hex())
            .text("size", claim.size.to_string());
        let request = self.http.post(self.url(endpoint::UPLOAD_OFFSET)).multipart(form);
        answer(request.header("Authorization", auth).send().await.expect("receiver answers")).await
    }

    /// Sends an upload of `content` as `path` whose body stops after
    /// `file_bytes` of the file, as a broken connection does, and waits for
    /// the receiver's answer (which nobody would read in the field).
    pub fn cut_upload(&self, path: &str, content: &[u8], file_bytes: usize) -> String {
        let mut stream = start_upload_of(self, path, content, file_bytes);
        stream.shutdown(Shutdown::Write).expect("shutdown");
        read_answer(&mut stream).0
    }

    pub async fn send_form(&self, auth: Option<String>, form: Form) -> (u16, Value) {
        let mut request = self.http.post(self.url(endpoint::UPLOAD)).multipart(form);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        answer(request.send().await.expect("receiver answers")).await
    }

    /// Every object or file in the store, relative to it (`<ID>/<path>`),
    /// on either backend.
    pub async fn objects(&self) -> Vec<String> {
        match &self.backend {
            Backend::Disk => self.stored_files(),
            Backend::S3(settings) => {
                let root = Key::from(settings.prefix.as_str());
                let listed: Vec<_> = bucket(settings).list(Some(&root)).try_collect().await.expect("list");
                // The claims on names and the fleet summary are the
                // receiver's bookkeeping, not layout.
                let mut keys: Vec<String> = listed
                    .iter()
                    .map(|o| o.location.as_ref()[settings.prefix.len() + 1..].to_owned())
                    .filter(|key| !key.starts_with(".claims/") && !key.starts_with(".summary/"))
                    .collect();
                keys.sort();
                keys
            }
        }
    }

    /// The bytes stored at `name` (relative to the store), on either backend.
    pub async fn read(&self, name: &str) -> Vec<u8> {
        match &self.backend {
            Backend::Disk => std::fs::read(self.store().join(name)).expect("stored file"),
            Backend::S3(settings) => {
                let got = bucket(settings).get(&s3_key(settings, name)).await.expect("stored object");
                got.bytes().await.expect("object body").to_vec()
            }
        }
    }

    /// Puts `bytes` at `name` (relative to the store), on either backend, as
    /// a crash or an admin might leave it.
    pub async fn write(&self, name: &str, bytes: Vec<u8>) {
        match &self.backend {
            Backend::Disk => std::fs::write(self.store().join(name), bytes).expect("write"),
            Backend::S3(settings) => {
                bucket(settings).put(&s3_key(settings, name), bytes.into()).await.expect("put");
            }
        }
    }

    /// The names of the fleet summary's records, on either backend.
    pub async fn summary_records(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.backend {
            Backend::Disk => std::fs::read_dir(self.store().join(".summary"))
                .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            Backend::S3(settings) => {
                let root = Key::from(format!("{}/.summary", settings.prefix));
                let listed: Vec<_> = bucket(settings).list(Some(&root)).try_collect().await.expect("list");
                listed.iter().filter_map(|o| o.location.filename().map(str::to_owned)).collect()
            }
        };
        names.sort();
        names
    }

    /// Deletes what is stored at `name`, as a crash or an admin might.
    pub async fn remove(&self, name: &str) {
        match &self.backend {
            Backend::Disk => std::fs::remove_file(self.store().join(name)).expect("remove"),
            Backend::S3(settings) => bucket(settings).delete(&s3_key(settings, name)).await.expect("delete"),
        }
    }

    /// Puts `content` at `name` in the store directly, as an older receiver
    /// or an admin might have.
    pub async fn plant(&self, name: &str, content: &[u8]) {
        match &self.backend {
            Backend::Disk => {
                let at = self.store().join(name);
                std::fs::create_dir_all(at.parent().expect("in a folder")).expect("mkdir");
                std::fs::write(at, content).expect("write");
            }
            Backend::S3(settings) => {
                let payload = object_store::PutPayload::from(content.to_vec());
                bucket(settings).put(&s3_key(settings, name), payload).await.expect("put");
            }
        }
    }

    /// Every file under the store, relative to it, except the staging folder
    /// (which must hold no file whenever no upload is in flight) and the
    /// fleet summary.
    pub fn stored_files(&self) -> Vec<String> {
        let staging = self.store().join(".staging");
        let leftovers = staged_files(&self.store());
        assert!(leftovers.is_empty(), "staging not empty: {leftovers:?}");
        let mut files = Vec::new();
        let skipped = [staging, self.store().join(".partial"), self.store().join(".summary")];
        collect(&self.store(), &self.store(), &skipped, &mut files);
        files.sort();
        files
    }

    /// The sizes of what cut-off uploads left for a resume (never visible
    /// among the stored files).
    pub fn partials(&self) -> Vec<u64> {
        let partial = self.store().join(".partial");
        let mut sizes: Vec<u64> = std::fs::read_dir(partial)
            .map(|d| d.flatten().map(|e| e.metadata().expect("stat").len()).collect())
            .unwrap_or_default();
        sizes.sort();
        sizes
    }
}

/// The files in the staging folders of the store at `store` (one folder
/// per receiver that has it open).
pub fn staged_files(store: &Path) -> Vec<PathBuf> {
    let folders =
        std::fs::read_dir(store.join(".staging")).map(|d| d.flatten().collect()).unwrap_or_else(|_| Vec::new());
    folders
        .iter()
        .flat_map(|folder| {
            std::fs::read_dir(folder.path())
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_else(|_| vec![folder.path()])
        })
        .collect()
}

fn collect(root: &Path, dir: &Path, skip: &[PathBuf], out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if skip.contains(&path) {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            collect(root, &path, skip, out);
        } else {
            out.push(path.strip_prefix(root).expect("inside").to_string_lossy().into_owned());
        }
    }
}

/// A signed upload of `content` as `path`, as raw HTTP/1.1 bytes: the head,
/// and the body split into what comes before the file's bytes and the rest.
pub fn raw_upload(h: &Harness, path: &str, content: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let claim = claim(path, content);
    let mut before = Vec::new();
    for (name, value) in
        [("path", path.to_owned()), ("sha256", claim.sha256.to_hex()), ("size", content.len().to_string())]
    {
        before.extend(
            format!("--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    before.extend(b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n");
    let mut rest = content.to_vec();
    rest.extend(b"\r\n--B0undary--\r\n");
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: multipart/form-data; boundary=B0undary\r\nContent-Length: {}\r\n\r\n",
        endpoint::UPLOAD,
        h.addr(),
        before.len() + rest.len()
    );
    (head.into_bytes(), before, rest)
}

/// Opens a connection and sends the head, the fields and `file_bytes` of
/// the file of an upload of `content` as `path`, then stops sending.
pub fn start_upload_of(h: &Harness, path: &str, content: &[u8], file_bytes: usize) -> TcpStream {
    let (head, before, rest) = raw_upload(h, path, content);
    let mut stream = TcpStream::connect(h.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(&head).expect("head");
    stream.write_all(&before).expect("fields");
    stream.write_all(&rest[..file_bytes]).expect("part of the file");
    stream
}

/// Reads one answer: its status line and JSON body.
pub fn read_answer(stream: &mut TcpStream) -> (String, String) {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
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

fn bucket(settings: &S3Settings) -> AmazonS3 {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(true);
    }
    builder.build().expect("S3 client")
}

fn s3_key(settings: &S3Settings, name: &str) -> Key {
    Key::parse(format!("{}/{name}", settings.prefix)).expect("valid key")
}
