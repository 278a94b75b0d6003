//! Request signing: how a device proves it holds its ID without sending it.
//!
//! Every request carries
//! `Authorization: LOGFERRY-HMAC-SHA256 KeyId=<key id>, Timestamp=<unix seconds>, Signature=<hex>`
//! where the signature is HMAC-SHA256, keyed by the device ID (canonical
//! uppercase ASCII), over the newline-joined canonical string built by
//! [`SignedRequest::canonical_string`]. PROTOCOL.md spells out the same.

use std::fmt;
use std::str::FromStr;

use hmac::Mac;

use crate::{DeviceId, KeyId, RelPath, Sha256Digest};

/// The `Authorization` scheme name.
pub const AUTH_SCHEME: &str = "LOGFERRY-HMAC-SHA256";
/// First line of every canonical string; a new scheme gets a new version.
pub const CANONICAL_VERSION: &str = "LOGFERRY-HMAC-SHA256-V1";
/// How far a request's timestamp may be from the receiver's clock, either way.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// What an upload declares about its file; signed, so none of it can be
/// changed in transit without the signature failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadClaim {
    pub path: RelPath,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// The parts of a request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The protocol's endpoint path (e.g. `/v1/upload`), without any prefix a
    /// reverse proxy might add, and without a query string.
    pub path: &'a str,
    pub timestamp: u64,
    pub upload: Option<&'a UploadClaim>,
}

impl SignedRequest<'_> {
    /// The exact bytes that are signed: seven lines joined by `\n`, with
    /// empty lines for the upload fields of a request that uploads nothing.
    /// The relative path comes last and cannot contain a newline, so the
    /// string always splits back into the same fields.
    pub fn canonical_string(&self) -> String {
        let (sha256, size, path) = match self.upload {
            Some(claim) => (claim.sha256.to_hex(), claim.size.to_string(), claim.path.as_str()),
            None => (String::new(), String::new(), ""),
        };
        [
            CANONICAL_VERSION,
            &self.method.to_ascii_uppercase(),
            self.path,
            &self.timestamp.to_string(),
            &sha256,
            &size,
            path,
        ]
        .join("\n")
    }

    /// Signs the request with `id`, returning the `Authorization` header.
    pub fn authorization(&self, id: &DeviceId) -> AuthHeader {
        let mut mac = id.mac();
        mac.update(self.canonical_string().as_bytes());
        AuthHeader { key_id: id.key_id(), timestamp: self.timestamp, signature: mac.finalize().into_bytes().into() }
    }

    /// Checks `signature` in constant time.
    pub fn verify(&self, id: &DeviceId, signature: &[u8; 32]) -> bool {
        let mut mac = id.mac();
        mac.update(self.canonical_string().as_bytes());
        mac.verify_slice(signature).is_ok()
    }
}

/// Response header carrying the receiver's proof that it holds the device's
/// ID: an HMAC over the request's own signature and the answer's body.
pub const RECEIPT_HEADER: &str = "X-Logferry-Receipt";
/// First line of the string a receipt signs.
pub const RECEIPT_VERSION: &str = "LOGFERRY-RECEIPT-V1";

/// Signs a 2xx answer for the request that carried `request_signature`:
/// only a receiver that knows the ID can make it, and it cannot be reused
/// for another request or another answer. Without TLS this is what stops an
/// impostor on the network from "accepting" files the device then moves aside.
pub fn receipt(id: &DeviceId, request_signature: &[u8; 32], body: &[u8]) -> String {
    hex::encode(receipt_mac(id, request_signature, body).finalize().into_bytes())
}

/// Checks a receipt from [`receipt`] in constant time.
pub fn verify_receipt(id: &DeviceId, request_signature: &[u8; 32], body: &[u8], tag: &str) -> bool {
    let mut bytes = [0u8; 32];
    tag.len() == 64
        && hex::decode_to_slice(tag, &mut bytes).is_ok()
        && receipt_mac(id, request_signature, body).verify_slice(&bytes).is_ok()
}

fn receipt_mac(id: &DeviceId, request_signature: &[u8; 32], body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = id.mac();
    mac.update(RECEIPT_VERSION.as_bytes());
    mac.update(b"\n");
    mac.update(hex::encode(request_signature).as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// How a request's timestamp relates to the receiver's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// The request claims to be from this many seconds in the future.
    Ahead(u64),
    /// The request is this many seconds old.
    Behind(u64),
}

/// Whether a request made at `timestamp` is acceptable at `now`.
pub fn freshness(timestamp: u64, now: u64) -> Freshness {
    if timestamp > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        Freshness::Ahead(timestamp - now)
    } else if now > timestamp.saturating_add(MAX_CLOCK_SKEW_SECS) {
        Freshness::Behind(now - timestamp)
    } else {
        Freshness::Fresh
    }
}

/// A parsed `Authorization` header value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub key_id: KeyId,
    pub timestamp: u64,
    pub signature: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("the Authorization header does not use the {AUTH_SCHEME} scheme")]
    WrongScheme,
    #[error("the Authorization header has no {0} parameter")]
    Missing(&'static str),
    #[error("the Authorization header gives {0} twice")]
    Duplicate(&'static str),
    #[error("the Authorization header has an unknown parameter {0:?}")]
    Unknown(String),
    #[error("the Authorization header's {0} value is malformed")]
    Malformed(&'static str),
}

impl FromStr for AuthHeader {
    type Err = AuthHeaderError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let params = value
            .strip_prefix(AUTH_SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(AuthHeaderError::WrongScheme)?;
        let (mut key_id, mut timestamp, mut signature) = (None, None, None);
        for param in params.split(',') {
            let (name, value) =
                param.trim().split_once('=').ok_or_else(|| AuthHeaderError::Unknown(param.trim().to_owned()))?;
            let (label, slot): (&'static str, &mut Option<&str>) = match name {
                "KeyId" => ("KeyId", &mut key_id),
                "Timestamp" => ("Timestamp", &mut timestamp),
                "Signature" => ("Signature", &mut signature),
                other => return Err(AuthHeaderError::Unknown(other.to_owned())),
            };
            if slot.replace(value).is_some() {
                return Err(AuthHeaderError::Duplicate(label));
            }
        }
        let key_id = key_id.ok_or(AuthHeaderError::Missing("KeyId"))?;
        let timestamp = timestamp.ok_or(AuthHeaderError::Missing("Timestamp"))?;
        let signature = signature.ok_or(AuthHeaderError::Missing("Signature"))?;
        let mut sig_bytes = [0u8; 32];
        Ok(Self {
            key_id: KeyId::parse(key_id).ok_or(AuthHeaderError::Malformed("KeyId"))?,
            timestamp: (timestamp.len() <= 20 && timestamp.bytes().all(|b| b.is_ascii_digit()))
                .then(|| timestamp.parse().ok())
                .flatten()
                .ok_or(AuthHeaderError::Malformed("Timestamp"))?,
            signature: (signature.len() == 64 && hex::decode_to_slice(signature, &mut sig_bytes).is_ok())
                .then_some(sig_bytes)
                .ok_or(AuthHeaderError::Malformed("Signature"))?,
        })
    }
}

impl fmt::Display for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{AUTH_SCHEME} KeyId={}, Timestamp={}, Signature={}",
            self.key_id,
            self.timestamp,
            hex::encode(self.signature)
        )
    }
}

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthHeader")
            .field("key_id", &self.key_id.short())
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceId {
        "0123456789ABCDEF".parse().expect("valid")
    }

    fn claim() -> UploadClaim {
        UploadClaim {
            path: RelPath::parse("sub/été.log").expect("valid"),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().expect("valid"),
            size: 3,
        }
    }

    #[test]
    fn canonical_string_layout() {
        let claim = claim();
        let req = SignedRequest { method: "post", path: "/v1/upload", timestamp: 1_700_000_000, upload: Some(&claim) };
        assert_eq!(
            req.canonical_string(),
            "LOGFERRY-HMAC-SHA256-V1\nPOST\n/v1/upload\n1700000000\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n3\nsub/été.log"
        );
        let bare = SignedRequest { method: "GET", path: "/v1/auth-check", timestamp: 5, upload: None };
        assert_eq!(bare.canonical_string(), "LOGFERRY-HMAC-SHA256-V1\nGET\n/v1/auth-check\n5\n\n\n");
    }

    #[test]
    fn sign_round_trips_through_the_header_and_any_change_breaks_it() {
        let id = device();
        let claim = claim();
        let req = SignedRequest { method: "POST", path: "/v1/upload", timestamp: 42, upload: Some(&claim) };
        let header: AuthHeader = req.authorization(&id).to_string().parse().expect("own header parses");
        assert_eq!(header.key_id, id.key_id());
        assert!(req.verify(&id, &header.signature));

        let other_id: DeviceId = "0123456789ABCDEE".parse().expect("valid");
        assert!(!req.verify(&other_id, &header.signature));
        let mut bigger = claim.clone();
        bigger.size = 4;
        let mut renamed = claim.clone();
        renamed.path = RelPath::parse("sub/other.log").expect("valid");
        let variants = [
            SignedRequest { method: "PUT", ..req },
            SignedRequest { path: "/v1/auth-check", ..req },
            SignedRequest { timestamp: 43, ..req },
            SignedRequest { upload: Some(&bigger), ..req },
            SignedRequest { upload: Some(&renamed), ..req },
            SignedRequest { upload: None, ..req },
        ];
        for variant in variants {
            assert!(!variant.verify(&id, &header.signature), "{variant:?}");
        }
    }

    #[test]
    fn header_parsing() {
        let good = device().key_id();
        let sig = "ab".repeat(32);
        let check = |input: String, expected: Result<(), AuthHeaderError>| {
            assert_eq!(input.parse::<AuthHeader>().map(|_| ()), expected, "{input:?}");
        };
        check(format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, Signature={sig}"), Ok(()));
        check(format!("{AUTH_SCHEME} Signature={sig},Timestamp=1,KeyId={good}"), Ok(()));
        check(format!("Bearer KeyId={good}, Timestamp=1, Signature={sig}"), Err(AuthHeaderError::WrongScheme));
        check(format!("{AUTH_SCHEME}KeyId={good}"), Err(AuthHeaderError::WrongScheme));
        check(format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1"), Err(AuthHeaderError::Missing("Signature")));
        check(
            format!("{AUTH_SCHEME} KeyId={good}, KeyId={good}, Timestamp=1, Signature={sig}"),
            Err(AuthHeaderError::Duplicate("KeyId")),
        );
        check(
            format!("{AUTH_SCHEME} KeyId=XYZ, Timestamp=1, Signature={sig}"),
            Err(AuthHeaderError::Malformed("KeyId")),
        );
        check(
            format!("{AUTH_SCHEME} KeyId={good}, Timestamp=-1, Signature={sig}"),
            Err(AuthHeaderError::Malformed("Timestamp")),
        );
        check(
            format!("{AUTH_SCHEME} KeyId={good}, Timestamp=+1, Signature={sig}"),
            Err(AuthHeaderError::Malformed("Timestamp")),
        );
        check(
            format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, Signature=abc"),
            Err(AuthHeaderError::Malformed("Signature")),
        );
        check(
            format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, Signature={sig}, Extra=1"),
            Err(AuthHeaderError::Unknown("Extra".into())),
        );
        check(format!("{AUTH_SCHEME} garbage"), Err(AuthHeaderError::Unknown("garbage".into())));
    }

    #[test]
    fn receipts_bind_the_answer_to_the_request_and_the_id() {
        let id = device();
        let (sig, other_sig) = ([1u8; 32], [2u8; 32]);
        let tag = receipt(&id, &sig, b"{\"outcome\":\"stored\"}");
        assert!(verify_receipt(&id, &sig, b"{\"outcome\":\"stored\"}", &tag));
        assert!(!verify_receipt(&id, &other_sig, b"{\"outcome\":\"stored\"}", &tag), "replayed for another request");
        assert!(!verify_receipt(&id, &sig, b"{\"outcome\":\"already_stored\"}", &tag), "another answer");
        let other_id: DeviceId = "0123456789ABCDEE".parse().expect("valid");
        assert!(!verify_receipt(&other_id, &sig, b"{\"outcome\":\"stored\"}", &tag), "made without the ID");
        assert!(!verify_receipt(&id, &sig, b"{\"outcome\":\"stored\"}", "zz"));
    }

    /// The worked example of PROTOCOL.md, computed there independently (with
    /// Python's hmac module): the two implementations must agree.
    #[test]
    fn protocol_md_worked_example() {
        let id: DeviceId = "0123456789ABCDEF".parse().expect("valid");
        assert_eq!(id.key_id().as_str(), "59475830a56536e98dfcf60e424f8414");
        let claim = UploadClaim {
            path: RelPath::parse("sub/a.log").expect("valid"),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().expect("valid"),
            size: 3,
        };
        let upload =
            SignedRequest { method: "POST", path: "/v1/upload", timestamp: 1_700_000_000, upload: Some(&claim) };
        let header = upload.authorization(&id);
        assert_eq!(hex::encode(header.signature), "5ae3923bee269ecc20a65edebf20f93eb7f5c0315200620062e84423d6dc1e32");
        let body = br#"{"outcome":"stored","stored_as":"sub/a.log","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3}"#;
        assert_eq!(
            receipt(&id, &header.signature, body),
            "3540987dbeb0a377eca747c37b89feaeefeaa74233881fab89ff1dedae9f8a01"
        );
        let check = SignedRequest { method: "GET", path: "/v1/auth-check", timestamp: 1_700_000_000, upload: None };
        assert_eq!(
            hex::encode(check.authorization(&id).signature),
            "427205ad3081f5e68d1b9b44915c9ea18b9101dd75f8581f593d59c10a948705"
        );
    }

    #[test]
    fn freshness_window() {
        let now = 10_000;
        assert_eq!(freshness(now, now), Freshness::Fresh);
        assert_eq!(freshness(now + MAX_CLOCK_SKEW_SECS, now), Freshness::Fresh);
        assert_eq!(freshness(now - MAX_CLOCK_SKEW_SECS, now), Freshness::Fresh);
        assert_eq!(freshness(now + MAX_CLOCK_SKEW_SECS + 1, now), Freshness::Ahead(MAX_CLOCK_SKEW_SECS + 1));
        assert_eq!(freshness(now - MAX_CLOCK_SKEW_SECS - 1, now), Freshness::Behind(MAX_CLOCK_SKEW_SECS + 1));
        assert_eq!(freshness(u64::MAX, now), Freshness::Ahead(u64::MAX - now));
    }
}
