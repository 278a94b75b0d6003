//! The `receiver` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::harness::{DEVICE, authorization, claim, device, now, upload_form};

/// The `receiver` binary in `dir`, with none of the settings the
/// environment could give it.
pub fn receiver(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_receiver"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("LOGFERRY_IDS")
        .env_remove("LOGFERRY_STORE")
        .env_remove("LOGFERRY_PORT")
        .env_remove("LOGFERRY_BIND")
        .env_remove("LOGFERRY_PUBLISH")
        .env_remove("LOGFERRY_PUBLISH_SETTLE");
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    receiver(dir, args).output().expect("receiver runs")
}

/// Starts the server on a free loopback port and returns it with its address,
/// read from its "listening" log line. The log pipe is closed on return,
/// as when a log collector goes away.
fn serve(dir: &Path) -> (Child, String) {
    let child = receiver(dir, &["--bind", "127.0.0.1", "--port", "0"]).stderr(Stdio::piped()).spawn().expect("spawn");
    listening(child)
}

/// The address a receiver started with a piped stderr listens on, read from
/// its "listening" log line; its log pipe is closed on return.
pub fn listening(mut child: Child) -> (Child, String) {
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let address = stderr.lines().map_while(Result::ok).find_map(|line| {
        assert!(!line.contains(DEVICE), "the ID was logged whole: {line}");
        line.split("address=").nth(1).map(|a| a.trim().to_owned())
    });
    match address {
        Some(address) => (child, address),
        None => {
            let _ = child.kill();
            panic!("receiver exited before listening: {:?}", child.wait());
        }
    }
}

/// One plain HTTP/1.1 GET, so this test needs no client library or tool.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn start_up_refuses_a_missing_or_malformed_ids_file_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), &["--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read ids.txt"), "{stderr}");

    std::fs::write(dir.path().join("ids.txt"), format!("# fleet\n{DEVICE}\n0123 too-short\n")).expect("write");
    let out = run(dir.path(), &["--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ids.txt:3:") && stderr.contains("16 hexadecimal"), "{stderr}");
    assert!(!dir.path().join("received_files").exists(), "nothing created before the ids file is valid");
}

#[test]
fn start_up_refuses_unusable_tls_files_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ids.txt"), format!("{DEVICE}\n")).expect("ids");
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").expect("write");
    let cases: &[(&[&str], &str)] = &[
        (&["--tls-cert", "cert.pem"], "--tls-key"),
        (&["--tls-cert", "absent.pem", "--tls-key", "absent.key"], "absent.pem"),
        (&["--tls-cert", "cert.pem", "--tls-key", "absent.key"], "cert.pem"),
    ];
    for (args, says) in cases {
        let out = run(dir.path(), &[&["--port", "0"], *args].concat());
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn start_up_refuses_limits_of_zero_naming_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ids.txt"), format!("{DEVICE}\n")).expect("ids");
    for option in ["--max-uploads", "--max-uploads-per-device", "--head-timeout", "--idle-timeout", "--partial-ttl"] {
        let out = run(dir.path(), &["--port", "0", option, "0"]);
        assert_eq!(out.status.code(), Some(1), "{option}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{option} must be more than 0")), "{option}: {stderr}");
    }
    assert!(!dir.path().join("received_files").exists(), "nothing created for a configuration refused");
}

#[test]
fn add_device_prints_a_fresh_id_once_and_appends_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = dir.path().join("ids.txt");
    let mut made = Vec::new();
    for label in ["pi-1", "pi-2"] {
        let out = run(dir.path(), &["add-device", "--label", label]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()), "{id:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&id), "the ID is printed once, on stdout");
        made.push(id);
    }
    assert_ne!(made[0], made[1]);
    let text = std::fs::read_to_string(&ids).expect("ids written");
    assert_eq!(text, format!("{}  pi-1\n{}  pi-2\n", made[0], made[1]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ids).expect("stat").permissions().mode() & 0o777, 0o600);
}

#[test]
fn help_documents_every_option_and_its_environment_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = String::from_utf8(run(dir.path(), &["--help"]).stdout).expect("utf-8");
    for expected in [
        "--bind",
        "LOGFERRY_BIND",
        "--port",
        "3500",
        "--ids",
        "LOGFERRY_IDS",
        "--store",
        "LOGFERRY_STORE",
        "--stale-after",
        "LOGFERRY_STALE_AFTER",
        "--trusted-proxies",
        "LOGFERRY_TRUSTED_PROXIES",
        "--log-format",
        "--publish",
        "LOGFERRY_PUBLISH",
        "--publish-settle",
        "LOGFERRY_PUBLISH_SETTLE",
        "add-device",
        "publish",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, expected) in [
        (&["completions", "bash"][..], "--stale-after"),
        (&["completions", "zsh"], "#compdef receiver"),
        (&["man"], ".TH receiver"),
        (&["man"], "LOGFERRY_MAX_FILE_SIZE"),
    ] {
        let out = run(dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(expected), "{args:?} lacks {expected:?}");
    }
    assert!(!dir.path().join("received_files").exists(), "printing them serves nothing");
}

#[test]
fn the_binary_serves_creates_its_store_clears_stale_staging_and_outlives_its_log_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ids.txt"), format!("{DEVICE}\n")).expect("ids");
    let (mut child, address) = serve(dir.path());
    let staging = dir.path().join("received_files/.staging");
    assert!(staging.is_dir(), "store created");
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let [killed] = folders_in(&staging);
    std::fs::write(killed.join("upload-0123"), b"half an upload").expect("plant");
    let (mut child, address_again) = serve(dir.path());
    let [own] = folders_in(&staging);
    assert_ne!(own, killed, "the killed receiver's staging folder is removed");
    assert_eq!(std::fs::read_dir(&own).expect("list").count(), 0, "stale staging removed");
    let health = http_get(&address_again, "/v1/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains(r#""status":"ok""#), "{health}");
    assert_ne!(address, address_again, "port 0 gives a fresh free port each start");
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// The one staging folder in `staging`: that of the one receiver running.
fn folders_in(staging: &Path) -> [std::path::PathBuf; 1] {
    let folders: Vec<_> = std::fs::read_dir(staging).expect("list").flatten().map(|e| e.path()).collect();
    folders.try_into().unwrap_or_else(|folders| panic!("one staging folder, not {folders:?}"))
}

/// Starts the server with `--log-format FORMAT` and returns it with its
/// log lines, each checked not to show the whole ID.
fn serve_logging(dir: &Path, format: &str) -> (Child, impl Iterator<Item = String>) {
    std::fs::write(dir.join("ids.txt"), format!("{DEVICE}\n")).expect("ids");
    let mut child = receiver(dir, &["--bind", "127.0.0.1", "--port", "0", "--log-format", format])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok).inspect(|line| {
        assert!(!line.contains(DEVICE), "the ID was logged whole: {line}");
    });
    (child, lines)
}

/// Uploads `content` as `path`, signed by [`DEVICE`], to the receiver at `address`.
async fn upload(address: &str, path: &str, content: &[u8]) {
    let claim = claim(path, content);
    let auth = authorization(&device(), "POST", logferry_common::wire::endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form(path, &claim.sha256.to_hex(), &claim.size.to_string(), content);
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/upload"))
        .header("Authorization", auth)
        .multipart(form)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 201);
}

/// A file name that would add fields of its own to a log line that shows
/// it unquoted.
const FORGING: &str = "x outcome=stored device=************0000";

#[tokio::test]
async fn json_logs_give_one_line_per_upload_with_the_masked_id_path_size_outcome_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, lines) = serve_logging(dir.path(), "json");
    let mut events = lines.map(|line| {
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    });
    let listening = events.find(|event| event["message"] == "listening").expect("a listening line");
    let address = listening["address"].as_str().expect("address").to_owned();

    let content = b"t,v\n1,2\n";
    upload(&address, "2026/day.csv", content).await;
    upload(&address, FORGING, content).await;
    let mut uploads = events.filter(|event| event["message"] == "upload");
    let (first, forging) = (uploads.next().expect("an upload line"), uploads.next().expect("another"));
    child.kill().expect("kill");
    child.wait().expect("reaped");
    assert_eq!(first["client"], "127.0.0.1", "{first}");
    assert_eq!(first["device"], "************CDEF", "{first}");
    assert_eq!(first["path"], "2026/day.csv", "{first}");
    assert_eq!(first["size"], content.len(), "{first}");
    assert_eq!(first["outcome"], "stored", "{first}");
    assert!(first["timestamp"].as_str().is_some_and(|t| t.starts_with("20")), "{first}");
    assert_eq!((&forging["path"], &forging["device"]), (&FORGING.into(), &"************CDEF".into()), "{forging}");
}

/// The `name=value` fields of a human log line, splitting at spaces
/// outside quoted values (as a reader of the line would).
fn fields(line: &str) -> Vec<(String, String)> {
    let mut words = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            ' ' if !quoted => words.push(String::new()),
            '"' if !escaped => quoted = !quoted,
            _ => {}
        }
        escaped = quoted && c == '\\' && !escaped;
        if c != ' ' || quoted {
            words.last_mut().expect("a word").push(c);
        }
    }
    words.iter().filter_map(|word| word.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[tokio::test]
async fn human_logs_quote_what_clients_send_so_a_file_name_forges_no_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, mut lines) = serve_logging(dir.path(), "human");
    let listening = lines.find(|line| line.contains(" listening ")).expect("a listening line");
    let address = listening.split("address=").nth(1).expect("address").trim().to_owned();

    upload(&address, FORGING, b"t,v\n1,2\n").await;
    let line = lines.find(|line| line.contains("logferry_receiver::handlers: upload ")).expect("an upload line");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    assert!(line.contains(&format!("path={FORGING:?}")), "{line}");
    let fields = fields(&line);
    let named = |name: &str| fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(named("outcome"), [r#""stored""#], "{line}");
    assert_eq!(named("device"), [r#""************CDEF""#], "{line}");
    assert_eq!(named("client"), [r#""127.0.0.1""#], "{line}");
}
