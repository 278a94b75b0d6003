//! `/metrics` as the monitoring an admin already has sees it: promtool lints
//! the exposition, and a real Prometheus (Debian's, which scripts/test.sh
//! installs) scrapes the receiver and answers queries with what arrived.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logferry_common::wire::endpoint;
use serde_json::Value;

use crate::harness::*;
use crate::status::fleet_with_a_quiet_device;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// A bound on waiting for Prometheus to start and scrape, so a broken set-up
/// fails the test instead of stalling the suite.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(120);

/// Stops the Prometheus server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("finished");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{metrics}");
}

/// The result vector of an instant query.
async fn query(h: &Harness, prometheus: &str, expression: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params(&format!("http://{prometheus}/api/v1/query"), [("query", expression)])
        .expect("url");
    let Ok(response) = h.http.get(url).send().await else { return Vec::new() };
    let body: Value = response.json().await.unwrap_or_default();
    body["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_a_real_prometheus_scrapes_them() {
    if !Path::new(PROMETHEUS).exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must run this; scripts/test.sh installs prometheus");
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the Prometheus test: {PROMETHEUS} is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    let mut h = Harness::start();
    fleet_with_a_quiet_device(&h);
    h.restart();
    assert_eq!(h.upload("a.log", b"first\n").await.0, 201);
    assert_eq!(h.upload("b.log", b"second\n").await.0, 201);
    let claim = claim("c.log", b"declared");
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    assert_eq!(h.send_form(Some(auth), upload_form("c.log", &claim.sha256.to_hex(), "8", b"received")).await.0, 422);
    promtool_check(&h.get_text(endpoint::METRICS).await);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: logferry\n    static_configs:\n      - targets: [\"{}\"]\n",
            h.addr()
        ),
    )
    .expect("config");
    let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let prometheus = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _server = Server(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );

    let started = Instant::now();
    let stored = loop {
        let result = query(&h, &prometheus, r#"logferry_uploads_total{job="logferry",outcome="stored"}"#).await;
        if let Some(sample) = result.first() {
            break sample["value"][1].clone();
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        assert!(started.elapsed() < SCRAPE_DEADLINE, "Prometheus did not scrape the receiver:\n{log}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(stored, "2");
    let rejected = query(&h, &prometheus, r#"logferry_uploads_total{outcome="rejected"}"#).await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["metric"]["reason"], "checksum_mismatch");
    let quiet = query(&h, &prometheus, "time() - logferry_device_last_upload_timestamp_seconds > 24 * 3600").await;
    let labels: Vec<_> = quiet.iter().map(|s| s["metric"]["label"].clone()).collect();
    assert_eq!(labels, ["cold-room"], "an alert expression like the README's finds the quiet device");
}
