//! HTTPS with the lab's own CA: accepted when pinned, refused otherwise,
//! never quietly downgraded.

use std::path::Path;
use std::process::Command;

use logferry_receiver::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::harness::*;

/// Writes `<name>-ca.pem`, and a certificate for 127.0.0.1 signed by that
/// CA as `<name>-cert.pem` with its key `<name>-key.pem`, into `dir`.
fn make_ca_and_cert(dir: &Path, name: &str) -> TlsFiles {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write");
    let files = TlsFiles { cert: dir.join(format!("{name}-cert.pem")), key: dir.join(format!("{name}-key.pem")) };
    std::fs::write(&files.cert, cert.pem()).expect("write");
    std::fs::write(&files.key, key.serialize_pem()).expect("write");
    files
}

fn https_harness() -> Harness {
    Harness::start_with(|dir, config| config.tls = Some(make_ca_and_cert(dir, "lab")))
}

#[test]
fn delivers_over_https_when_the_receivers_ca_is_pinned() {
    let h = https_harness();
    h.log("secure/reading.csv", b"t,v\n1,2\n");
    let url = format!("https://{}", h.host());
    let ca = h.path("lab-ca.pem").display().to_string();
    let run = sender(
        h.dir.path(),
        &[
            url,
            h.logs().display().to_string(),
            "--id-file".into(),
            h.path("device-id").display().to_string(),
            "--ca-cert".into(),
            ca,
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(std::fs::read(h.stored().join("secure/reading.csv")).expect("stored"), b"t,v\n1,2\n");
}

#[test]
fn an_unverifiable_certificate_is_its_own_failure_and_nothing_is_sent() {
    let h = https_harness();
    make_ca_and_cert(h.dir.path(), "other");
    h.log("kept.log", b"stays\n");
    let url = format!("https://{}", h.host());
    let base = vec![
        url,
        h.logs().display().to_string(),
        "--id-file".into(),
        h.path("device-id").display().to_string(),
        "--retries".into(),
        "0".into(),
    ];
    let cases = [
        (
            "another CA pinned",
            vec!["--ca-cert".to_owned(), h.path("other-ca.pem").display().to_string()],
            "certificate",
        ),
        ("only the system's roots", vec![], "certificate"),
        (
            "CA file missing",
            vec!["--ca-cert".to_owned(), h.path("absent.pem").display().to_string()],
            "CA certificate file",
        ),
    ];
    for (name, extra, says) in cases {
        let run = sender(h.dir.path(), &[base.clone(), extra].concat());
        assert_eq!(run.code, Some(7), "{name}: {run:?}");
        assert!(run.stderr.contains("TLS failed") && run.stderr.contains(says), "{name}: {run:?}");
        assert_eq!(files(&h.logs()), ["kept.log"], "{name}");
    }
    assert!(!h.stored().exists(), "nothing arrived");
}

/// A receiver serving HTTPS with a pair `scripts/make-cert.sh` made (valid
/// from now on, for 825 days), and the sender's arguments to reach it.
fn receiver_with_a_script_made_pair() -> (Harness, Vec<String>, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-cert.sh");
    let made = Command::new("bash").arg(&script).arg("127.0.0.1").arg(certs.path()).output().expect("script runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls = TlsFiles { cert: certs.path().join("receiver.pem"), key: certs.path().join("receiver.key") };
    let h = Harness::start_with(|_, config| config.tls = Some(tls));
    let args = vec![
        format!("https://{}", h.host()),
        h.logs().display().to_string(),
        "--id-file".into(),
        h.path("device-id").display().to_string(),
        "--ca-cert".into(),
        certs.path().join("ca.pem").display().to_string(),
    ];
    (h, args, certs)
}

#[test]
fn the_make_cert_script_makes_a_pair_that_works_end_to_end() {
    let (h, args, _certs) = receiver_with_a_script_made_pair();
    h.log("via-script.log", b"ok\n");
    let run = sender(h.dir.path(), &args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(files(&h.sent()), ["via-script.log"]);
}

/// A Pi's clock after a power cut lies before the certificate was made, or
/// long after it expired: with the lab's CA pinned, its dates are not held
/// against the device (the chain, the name and the signatures still are),
/// so it still delivers, and learns the receiver's time over HTTPS.
#[test]
fn with_a_pinned_ca_a_device_clock_outside_the_certificates_dates_still_delivers() {
    let (h, args, _certs) = receiver_with_a_script_made_pair();
    for (n, spec) in ["-3h", "@2000-01-01 00:00:00", "+3000d"].into_iter().enumerate() {
        let name = format!("run-{n}.log");
        h.log(&name, b"ok\n");
        let mut faked = Command::new("faketime");
        faked.arg("-f").arg(spec).arg(env!("CARGO_BIN_EXE_sender"));
        let run = run_sender(faked, h.dir.path(), &args);
        assert_eq!(run.code, Some(0), "{spec}: {run:?}");
        assert!(files(&h.sent()).contains(&name), "{spec}: {run:?}");
    }
}
