//! What an offline guess at a device ID costs: one key derivation
//! (`DeviceId::derive_key`, Argon2id) against one HMAC-SHA256 of a short
//! message, the whole cost of a guess before protocol v2. Timed in
//! interleaved rounds on one thread; prints one JSON object. The process's
//! first derivation is timed on its own: its 8 MiB are fresh pages, as in a
//! sender run, which derives once; later ones reuse freed memory, as a
//! guesser's loop does.
//! scripts/bench.py runs it (release build):
//!
//!     cargo run --release -p logferry-common --example kdf_cost -- [ROUNDS [DERIVATIONS [HMACS]]]

use std::hint::black_box;
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use logferry_common::DeviceId;
use sha2::Sha256;

/// The message an auth check signs: what a captured request lets a guesser test.
const MESSAGE: &[u8] = b"LOGFERRY-HMAC-SHA256-V2\nGET\n/v1/auth-check\n1700000000\n\n\n";

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>().unwrap_or_else(|_| usage()));
    let rounds = args.next().unwrap_or(5).max(1);
    let derivations = args.next().unwrap_or(10).max(1);
    let hmacs = args.next().unwrap_or(200_000).max(1);

    let started = Instant::now();
    black_box(black_box(DeviceId::from_bytes([0xFF; 8])).derive_key());
    let first_derive_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut derive_ms = Vec::new();
    let mut hmac_ns = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        for n in 0..derivations {
            let id = DeviceId::from_bytes((u64::from(round) << 32 | u64::from(n)).to_be_bytes());
            black_box(black_box(&id).derive_key());
        }
        derive_ms.push(started.elapsed().as_secs_f64() * 1e3 / f64::from(derivations));

        // Keyed anew each time, as a guesser with a new candidate key must.
        let started = Instant::now();
        for n in 0..hmacs {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&key))
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
            mac.update(black_box(MESSAGE));
            black_box(mac.finalize().into_bytes());
        }
        hmac_ns.push(started.elapsed().as_secs_f64() * 1e9 / f64::from(hmacs));
    }
    let ratios: Vec<f64> = derive_ms.iter().zip(&hmac_ns).map(|(ms, ns)| ms * 1e6 / ns).collect();
    let list = |values: &[f64]| values.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(",");
    println!(
        r#"{{"first_derive_ms":{first_derive_ms:.3},"rounds":{rounds},"derivations_per_round":{derivations},"hmacs_per_round":{hmacs},"message_bytes":{},"derive_ms":[{}],"hmac_ns":[{}],"ratio":[{}]}}"#,
        MESSAGE.len(),
        list(&derive_ms),
        list(&hmac_ns),
        list(&ratios)
    );
}

fn usage() -> ! {
    eprintln!("usage: kdf_cost [ROUNDS [DERIVATIONS [HMACS]]]");
    std::process::exit(2)
}
