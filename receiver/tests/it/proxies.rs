//! Behind a reverse proxy: with `--trusted-proxies` the throttle and the
//! fleet status use the client address the proxy forwarded; without it,
//! forwarding headers change nothing. Test clients bind loopback addresses
//! of their own (127.0.0.2, 127.0.0.3) to be peers other than the proxy.

use std::net::IpAddr;

use logferry_common::DeviceId;
use logferry_common::wire::endpoint;
use logferry_receiver::Limits;
use serde_json::Value;

use crate::harness::*;

/// One request: from which loopback address, signed by which device, with
/// which X-Forwarded-For, and the status it must get.
type Step = (&'static str, fn() -> DeviceId, &'static str, u16);

/// Sends each step's auth check in turn and checks its status.
async fn check(h: &Harness, steps: &[Step]) {
    for (n, &(peer, id, forwarded_for, expected)) in steps.iter().enumerate() {
        let auth = authorization(&id(), "GET", endpoint::AUTH_CHECK, now(), None);
        let request = from(peer).get(h.url(endpoint::AUTH_CHECK)).header("Authorization", auth);
        let response = request.header("X-Forwarded-For", forwarded_for).send().await.expect("answer");
        assert_eq!(response.status().as_u16(), expected, "step {n}: from {peer}, X-Forwarded-For: {forwarded_for}");
    }
}

/// A client whose connections come from `peer`, a loopback address.
fn from(peer: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(peer.parse::<IpAddr>().expect("ip")).build().expect("client")
}

/// Uploads as [`DEVICE`] from `peer` with this X-Forwarded-For, and returns
/// the device's `last_address` in the fleet status afterwards.
async fn last_address_after_upload(h: &Harness, peer: &str, forwarded_for: &str) -> Value {
    let content = b"t,v\n1,2\n";
    let claim = claim("day.csv", content);
    let auth = authorization(&device(), "POST", endpoint::UPLOAD, now(), Some(&claim));
    let form = upload_form("day.csv", &claim.sha256.to_hex(), &claim.size.to_string(), content);
    let request = from(peer).post(h.url(endpoint::UPLOAD)).header("Authorization", auth).multipart(form);
    let (status, body) = answer(request.header("X-Forwarded-For", forwarded_for).send().await.expect("answer")).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let report: Value = serde_json::from_str(&h.get_text(endpoint::DEVICES).await).expect("JSON");
    report["devices"][0]["last_address"].clone()
}

const A: &str = "192.0.2.7";
const B: &str = "192.0.2.8";

#[tokio::test]
async fn behind_a_trusted_proxy_the_throttle_and_the_fleet_status_use_the_forwarded_address() {
    let mut h = Harness::start_with(Limits { auth_failures_per_minute: 3, ..Limits::default() });
    h.trust_proxies("127.0.0.1");
    check(
        &h,
        &[
            ("127.0.0.1", stranger, A, 401),
            ("127.0.0.1", stranger, A, 401),
            ("127.0.0.1", stranger, A, 401),
            // A used up its failures: its failures get 429...
            ("127.0.0.1", stranger, A, 429),
            // ...but a device signing correctly from A is still served.
            ("127.0.0.1", device, A, 200),
            // B, behind the same proxy, is not held back.
            ("127.0.0.1", stranger, B, 401),
            // B cannot pass for an earlier hop by prepending A: it stays B.
            ("127.0.0.1", stranger, "192.0.2.7, 192.0.2.8", 401),
            // Not the trusted proxy: its header is ignored, it is itself.
            ("127.0.0.2", stranger, A, 401),
        ],
    )
    .await;
    assert_eq!(last_address_after_upload(&h, "127.0.0.1", "198.51.100.1, 192.0.2.9").await, "192.0.2.9");
    let page = h.get_text(endpoint::STATUS_PAGE).await;
    assert!(page.contains("<td><code>192.0.2.9</code></td>"), "{page}");
}

#[tokio::test]
async fn without_trusted_proxies_a_spoofed_forwarding_header_neither_evades_nor_frames() {
    let h = Harness::start_with(Limits { auth_failures_per_minute: 3, ..Limits::default() });
    check(
        &h,
        &[
            ("127.0.0.2", stranger, "192.0.2.1", 401),
            ("127.0.0.2", stranger, "192.0.2.2", 401),
            ("127.0.0.2", stranger, "127.0.0.3", 401),
            // A fresh forged address does not buy fresh attempts...
            ("127.0.0.2", stranger, "192.0.2.4", 429),
            ("127.0.0.2", device, "192.0.2.5", 200),
            // ...and the client it named is not held back.
            ("127.0.0.3", stranger, "192.0.2.6", 401),
        ],
    )
    .await;
    assert_eq!(last_address_after_upload(&h, "127.0.0.3", A).await, "127.0.0.3");
}
