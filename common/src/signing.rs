//! Request signing: how a device proves it holds its ID without sending it.
//!
//! Every request carries
//! `Authorization: LOGFERRY-HMAC-SHA256 KeyId=<key id>, Timestamp=<unix seconds>, Signature=<hex>`
//! (with `ClockOffset=<seconds>` before `Signature` from a device signing by
//! the receiver's time)
//! where the signature is HMAC-SHA256, keyed by the device's key (derived
//! from its ID by [`DeviceId::derive_key`](crate::DeviceId::derive_key)),
//! over the newline-joined canonical string built by
//! [`SignedRequest::canonical_string`]. PROTOCOL.md spells out the same.

use std::fmt;
use std::str::FromStr;

use hmac::Mac;

use crate::{DeviceKey, KeyId, RelPath, Sha256Digest};

/// The `Authorization` scheme name.
pub const AUTH_SCHEME: &str = "LOGFERRY-HMAC-SHA256";
/// First line of every canonical string; a new scheme gets a new version.
pub const CANONICAL_VERSION: &str = "LOGFERRY-HMAC-SHA256-V2";
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

/// The text of a head's `sha256` field that says the digest follows the
/// file, in a trailer signed by [`trailer_signature`].
pub const TRAILER: &str = "trailer";

/// An upload's SHA-256 as its head gives it: known before the file, or
/// sent after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadDigest {
    Known(Sha256Digest),
    /// The head's `sha256` is [`TRAILER`].
    Trailer,
}

impl HeadDigest {
    /// The `sha256` field's text.
    pub fn to_field(&self) -> String {
        match self {
            Self::Known(sha256) => sha256.to_hex(),
            Self::Trailer => TRAILER.to_owned(),
        }
    }
}

/// What an upload's signed head declares; its digest may still be to come.
/// Only an [`UploadClaim`] names a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHead {
    pub path: RelPath,
    pub sha256: HeadDigest,
    pub size: u64,
}

impl UploadHead {
    /// The claim, once the digest is known (from the head or its trailer).
    pub fn with_digest(&self, sha256: Sha256Digest) -> UploadClaim {
        UploadClaim { path: self.path.clone(), sha256, size: self.size }
    }
}

impl From<&UploadClaim> for UploadHead {
    fn from(claim: &UploadClaim) -> Self {
        Self { path: claim.path.clone(), sha256: HeadDigest::Known(claim.sha256), size: claim.size }
    }
}

/// The fields a request declares beyond its method and path, as the text
/// that travels, which is what the signature covers: the receiver checks the
/// signature over exactly what it read before it judges any of it, so every
/// later refusal is one it can sign. An upload (and an offset query)
/// declares its file's path, SHA-256 and size; an update request its JSON
/// body's SHA-256 and length ([`SignedFields::body`]), or the content it
/// fetches ([`SignedFields::content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFields {
    pub path: String,
    pub sha256: String,
    pub size: String,
}

impl From<&UploadClaim> for SignedFields {
    /// The one spelling a valid claim has on the wire.
    fn from(claim: &UploadClaim) -> Self {
        Self { path: claim.path.to_string(), sha256: claim.sha256.to_hex(), size: claim.size.to_string() }
    }
}

impl From<&UploadHead> for SignedFields {
    fn from(head: &UploadHead) -> Self {
        Self { path: head.path.to_string(), sha256: head.sha256.to_field(), size: head.size.to_string() }
    }
}

impl SignedFields {
    /// The fields of a request whose body is `body` (JSON): its SHA-256 and
    /// length, so that nobody in the path can change what it says.
    pub fn body(body: &[u8]) -> Self {
        Self { path: String::new(), sha256: Sha256Digest::of_bytes(body).to_hex(), size: body.len().to_string() }
    }

    /// The fields of a request for the content with this SHA-256: the hash
    /// alone, so that the signature names what is fetched.
    pub fn content(sha256: &Sha256Digest) -> Self {
        Self { path: String::new(), sha256: sha256.to_hex(), size: String::new() }
    }
}

/// The parts of a request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The protocol's endpoint path (e.g. `/v1/upload`) as PROTOCOL.md lists
    /// it: not the request line's spelling of it (percent-encoding), without
    /// any prefix a reverse proxy might add, and without a query string.
    pub path: &'a str,
    pub timestamp: u64,
    /// The device's clock less `timestamp`, when the device signs by the
    /// receiver's time because its own clock is off; 0 otherwise (and then
    /// not sent). Signed, so the receiver can trust it for the status page.
    pub clock_offset: i64,
    /// What the request declares beyond its method and path; `None` for a
    /// request without a body (the auth check).
    pub fields: Option<&'a SignedFields>,
}

impl SignedRequest<'_> {
    /// The exact bytes that are signed: seven lines joined by `\n`, with
    /// empty lines for the fields of a request that declares none,
    /// and an eighth with the clock offset when there is one. The relative
    /// path comes before it; a valid one cannot contain a newline, so the
    /// string splits back into the same fields.
    pub fn canonical_string(&self) -> String {
        let (sha256, size, path) = match self.fields {
            // Hex may be sent in either case; it is signed in lowercase.
            Some(head) => (head.sha256.to_ascii_lowercase(), head.size.as_str(), head.path.as_str()),
            None => (String::new(), "", ""),
        };
        [
            CANONICAL_VERSION,
            &self.method.to_ascii_uppercase(),
            self.path,
            &self.timestamp.to_string(),
            &sha256,
            size,
            path,
            &self.clock_offset.to_string(),
        ][..if self.clock_offset == 0 { 7 } else { 8 }]
            .join("\n")
    }

    /// Signs the request with `key`, returning the `Authorization` header.
    pub fn authorization(&self, key: &DeviceKey) -> AuthHeader {
        let mut mac = key.mac();
        mac.update(self.canonical_string().as_bytes());
        AuthHeader {
            key_id: key.key_id().clone(),
            timestamp: self.timestamp,
            clock_offset: self.clock_offset,
            signature: mac.finalize().into_bytes().into(),
        }
    }

    /// Checks `signature` in constant time.
    pub fn verify(&self, key: &DeviceKey, signature: &[u8; 32]) -> bool {
        let mut mac = key.mac();
        mac.update(self.canonical_string().as_bytes());
        mac.verify_slice(signature).is_ok()
    }
}

/// Response header carrying the receiver's proof that it holds the device's
/// key: an HMAC over the answer's status, the request's own signature and
/// the answer's body.
pub const RECEIPT_HEADER: &str = "X-Logferry-Receipt";
/// First line of the string a receipt signs.
pub const RECEIPT_VERSION: &str = "LOGFERRY-RECEIPT-V2";

/// Signs an answer with HTTP `status` to the request that carried
/// `request_signature`: only a receiver that knows the key can make it, and
/// it cannot be reused for another request, another status or another
/// answer. Without TLS this is what stops an impostor on the network from
/// "accepting" files the device then moves aside, or from refusing them so
/// that the device gives up on them.
pub fn receipt(key: &DeviceKey, status: u16, request_signature: &[u8; 32], body: &[u8]) -> String {
    hex::encode(receipt_mac(key, status, request_signature, body).finalize().into_bytes())
}

/// Checks a receipt from [`receipt`] in constant time.
pub fn verify_receipt(key: &DeviceKey, status: u16, request_signature: &[u8; 32], body: &[u8], tag: &str) -> bool {
    let mut bytes = [0u8; 32];
    tag.len() == 64
        && hex::decode_to_slice(tag, &mut bytes).is_ok()
        && receipt_mac(key, status, request_signature, body).verify_slice(&bytes).is_ok()
}

fn receipt_mac(key: &DeviceKey, status: u16, request_signature: &[u8; 32], body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac();
    mac.update(RECEIPT_VERSION.as_bytes());
    mac.update(b"\n");
    mac.update(status.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(hex::encode(request_signature).as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// First line of the string a trailer's signature signs.
pub const TRAILER_VERSION: &str = "LOGFERRY-TRAILER-V2";

/// Signs the digest an upload sends after its file, bound to the request
/// whose head carried `request_signature`: a trailer cannot be moved to
/// another upload, and nobody without the key can make one, so the digest
/// is as authenticated as a head's.
pub fn trailer_signature(key: &DeviceKey, request_signature: &[u8; 32], sha256: &Sha256Digest) -> String {
    hex::encode(trailer_mac(key, request_signature, sha256).finalize().into_bytes())
}

/// Checks a signature from [`trailer_signature`] in constant time.
pub fn verify_trailer(key: &DeviceKey, request_signature: &[u8; 32], sha256: &Sha256Digest, tag: &str) -> bool {
    let mut bytes = [0u8; 32];
    tag.len() == 64
        && hex::decode_to_slice(tag, &mut bytes).is_ok()
        && trailer_mac(key, request_signature, sha256).verify_slice(&bytes).is_ok()
}

fn trailer_mac(key: &DeviceKey, request_signature: &[u8; 32], sha256: &Sha256Digest) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac();
    mac.update(TRAILER_VERSION.as_bytes());
    mac.update(b"\n");
    mac.update(hex::encode(request_signature).as_bytes());
    mac.update(b"\n");
    mac.update(sha256.to_hex().as_bytes());
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

/// Parses a number as the protocol writes it: decimal digits without a
/// sign, spaces or leading zeros ("0" itself is fine). Being the only
/// spelling, it is the same text as the number in the canonical string.
pub fn parse_decimal(text: &str) -> Option<u64> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// A clock offset as the protocol writes it: [`parse_decimal`]'s spelling
/// with an optional `-`, never zero (zero is not sent).
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, digits) = text.strip_prefix('-').map_or((1, text), |rest| (-1, rest));
    let magnitude = i64::try_from(parse_decimal(digits)?).ok()?;
    (magnitude != 0).then_some(sign * magnitude)
}

/// A parsed `Authorization` header value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub key_id: KeyId,
    pub timestamp: u64,
    /// [`SignedRequest::clock_offset`]; the `ClockOffset` parameter, absent
    /// when 0.
    pub clock_offset: i64,
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
        let (mut key_id, mut timestamp, mut clock_offset, mut signature) = (None, None, None, None);
        for param in params.split(',') {
            let (name, value) =
                param.trim().split_once('=').ok_or_else(|| AuthHeaderError::Unknown(param.trim().to_owned()))?;
            let (label, slot): (&'static str, &mut Option<&str>) = match name {
                "KeyId" => ("KeyId", &mut key_id),
                "Timestamp" => ("Timestamp", &mut timestamp),
                "ClockOffset" => ("ClockOffset", &mut clock_offset),
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
            timestamp: parse_decimal(timestamp).ok_or(AuthHeaderError::Malformed("Timestamp"))?,
            clock_offset: clock_offset
                .map_or(Some(0), parse_offset)
                .ok_or(AuthHeaderError::Malformed("ClockOffset"))?,
            signature: (signature.len() == 64 && hex::decode_to_slice(signature, &mut sig_bytes).is_ok())
                .then_some(sig_bytes)
                .ok_or(AuthHeaderError::Malformed("Signature"))?,
        })
    }
}

impl fmt::Display for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{AUTH_SCHEME} KeyId={}, Timestamp={}, ", self.key_id, self.timestamp)?;
        if self.clock_offset != 0 {
            write!(f, "ClockOffset={}, ", self.clock_offset)?;
        }
        write!(f, "Signature={}", hex::encode(self.signature))
    }
}

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthHeader")
            .field("key_id", &self.key_id.short())
            .field("timestamp", &self.timestamp)
            .field("clock_offset", &self.clock_offset)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::LazyLock;

    use crate::DeviceId;

    static KEY: LazyLock<DeviceKey> = LazyLock::new(|| derive("0123456789ABCDEF"));
    static OTHER_KEY: LazyLock<DeviceKey> = LazyLock::new(|| derive("0123456789ABCDEE"));

    fn derive(id: &str) -> DeviceKey {
        id.parse::<DeviceId>().expect("valid").derive_key()
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
        let head = SignedFields::from(&claim());
        let req = SignedRequest {
            method: "post",
            path: "/v1/upload",
            timestamp: 1_700_000_000,
            clock_offset: 0,
            fields: Some(&head),
        };
        assert_eq!(
            req.canonical_string(),
            "LOGFERRY-HMAC-SHA256-V2\nPOST\n/v1/upload\n1700000000\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n3\nsub/été.log"
        );
        let shouted = SignedFields { sha256: head.sha256.to_ascii_uppercase(), ..head.clone() };
        assert_eq!(SignedRequest { fields: Some(&shouted), ..req }.canonical_string(), req.canonical_string());
        let bare = SignedRequest { method: "GET", path: "/v1/auth-check", timestamp: 5, clock_offset: 0, fields: None };
        assert_eq!(bare.canonical_string(), "LOGFERRY-HMAC-SHA256-V2\nGET\n/v1/auth-check\n5\n\n\n");
        let corrected = SignedRequest { clock_offset: -10_800, ..bare };
        assert_eq!(corrected.canonical_string(), "LOGFERRY-HMAC-SHA256-V2\nGET\n/v1/auth-check\n5\n\n\n\n-10800");
    }

    #[test]
    fn sign_round_trips_through_the_header_and_any_change_breaks_it() {
        let key = &*KEY;
        let claim = claim();
        let head = SignedFields::from(&claim);
        let req =
            SignedRequest { method: "POST", path: "/v1/upload", timestamp: 42, clock_offset: 0, fields: Some(&head) };
        let header: AuthHeader = req.authorization(key).to_string().parse().expect("own header parses");
        assert_eq!(&header.key_id, key.key_id());
        assert!(req.verify(key, &header.signature));
        assert!(!req.verify(&OTHER_KEY, &header.signature));
        let mut bigger = claim.clone();
        bigger.size = 4;
        let mut renamed = claim.clone();
        renamed.path = RelPath::parse("sub/other.log").expect("valid");
        let (bigger, renamed) = (SignedFields::from(&bigger), SignedFields::from(&renamed));
        let variants = [
            SignedRequest { method: "PUT", ..req },
            SignedRequest { path: "/v1/auth-check", ..req },
            SignedRequest { timestamp: 43, ..req },
            SignedRequest { fields: Some(&bigger), ..req },
            SignedRequest { fields: Some(&renamed), ..req },
            SignedRequest { fields: None, ..req },
            SignedRequest { clock_offset: 1, ..req },
        ];
        for variant in variants {
            assert!(!variant.verify(key, &header.signature), "{variant:?}");
        }
        let corrected = SignedRequest { clock_offset: -10_800, ..req };
        let header: AuthHeader = corrected.authorization(key).to_string().parse().expect("own header parses");
        assert_eq!(header.clock_offset, -10_800);
        assert!(corrected.verify(key, &header.signature) && !req.verify(key, &header.signature));
    }

    #[test]
    fn header_parsing() {
        let good = KEY.key_id();
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
        check(
            format!("{AUTH_SCHEME} KeyId={good}, Timestamp=01, Signature={sig}"),
            Err(AuthHeaderError::Malformed("Timestamp")),
        );
        check(format!("{AUTH_SCHEME} KeyId={good}, Timestamp=0, Signature={sig}"), Ok(()));
        check(format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, ClockOffset=-10800, Signature={sig}"), Ok(()));
        check(format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, ClockOffset=172800, Signature={sig}"), Ok(()));
        for offset in ["0", "-0", "+5", "05", "-05", "--5", "", "-", "9223372036854775808"] {
            check(
                format!("{AUTH_SCHEME} KeyId={good}, Timestamp=1, ClockOffset={offset}, Signature={sig}"),
                Err(AuthHeaderError::Malformed("ClockOffset")),
            );
        }
        check(format!("{AUTH_SCHEME} garbage"), Err(AuthHeaderError::Unknown("garbage".into())));
    }

    #[test]
    fn decimals_have_one_spelling() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1700000000", Some(1_700_000_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("007", None),
            ("00", None),
            ("", None),
            ("+1", None),
            ("-1", None),
            (" 1", None),
            ("1e3", None),
            ("١٢", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_decimal(text), *expected, "{text:?}");
        }
    }

    #[test]
    fn receipts_bind_the_answer_to_the_request_the_status_and_the_key() {
        let key = &*KEY;
        let (sig, other_sig) = ([1u8; 32], [2u8; 32]);
        let body = b"{\"outcome\":\"stored\"}";
        let tag = receipt(key, 201, &sig, body);
        assert!(verify_receipt(key, 201, &sig, body, &tag));
        assert!(!verify_receipt(key, 201, &other_sig, body, &tag), "replayed for another request");
        assert!(!verify_receipt(key, 200, &sig, body, &tag), "another status");
        assert!(!verify_receipt(key, 201, &sig, b"{\"outcome\":\"already_stored\"}", &tag), "another answer");
        assert!(!verify_receipt(&OTHER_KEY, 201, &sig, body, &tag), "made without the key");
        assert!(!verify_receipt(key, 201, &sig, body, "zz"));
    }

    #[test]
    fn trailers_bind_the_digest_to_the_request_and_the_key() {
        let key = &*KEY;
        let (sig, other_sig) = ([1u8; 32], [2u8; 32]);
        let (digest, other) = (Sha256Digest::of_bytes(b"abc"), Sha256Digest::of_bytes(b"abd"));
        let tag = trailer_signature(key, &sig, &digest);
        assert!(verify_trailer(key, &sig, &digest, &tag));
        assert!(!verify_trailer(key, &other_sig, &digest, &tag), "moved to another request");
        assert!(!verify_trailer(key, &sig, &other, &tag), "another digest");
        assert!(!verify_trailer(&OTHER_KEY, &sig, &digest, &tag), "made without the key");
        assert!(!verify_trailer(key, &sig, &digest, "zz"));
        assert_ne!(tag, receipt(key, 201, &sig, digest.to_hex().as_bytes()), "not a receipt");
    }

    /// The worked example of PROTOCOL.md, computed there independently (with
    /// Python's argon2-cffi and hmac modules): the two implementations must
    /// agree.
    #[test]
    fn protocol_md_worked_example() {
        let key = &*KEY;
        assert_eq!(key.key_id().as_str(), "fae1a7e5c836dd72ac4df54fe64964aa");
        let claim = UploadClaim {
            path: RelPath::parse("sub/a.log").expect("valid"),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().expect("valid"),
            size: 3,
        };
        let head = SignedFields::from(&claim);
        let upload = SignedRequest {
            method: "POST",
            path: "/v1/upload",
            timestamp: 1_700_000_000,
            clock_offset: 0,
            fields: Some(&head),
        };
        let header = upload.authorization(key);
        assert_eq!(hex::encode(header.signature), "9106a4b8b15016ed5ea908132c72a016cafa1595c0b941d74d36df8df9946286");
        let body = br#"{"outcome":"stored","stored_as":"sub/a.log","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3}"#;
        assert_eq!(
            receipt(key, 201, &header.signature, body),
            "98810f3cbb10e23c4e62aa508d6643b880cadfa7612aa2c342be3782cf705fad"
        );
        let trailed = SignedFields::from(&UploadHead { sha256: HeadDigest::Trailer, ..UploadHead::from(&claim) });
        let header = SignedRequest { fields: Some(&trailed), ..upload }.authorization(key);
        assert_eq!(hex::encode(header.signature), "96bc86fb82b74f96db49397ccb335326826dcd7c1924d0a2947a06e0a8c77712");
        assert_eq!(
            trailer_signature(key, &header.signature, &claim.sha256),
            "cd9428111f3cbafd83732481db22efa10bee4a35d6a5eeb37f276914b04bdcad"
        );
        assert_eq!(
            receipt(key, 201, &header.signature, body),
            "d1b69901cf80191b7d729c17c0733b954f85e19e68362a430bc562098e4b24ed"
        );
        let check = SignedRequest {
            method: "GET",
            path: "/v1/auth-check",
            timestamp: 1_700_000_000,
            clock_offset: 0,
            fields: None,
        };
        assert_eq!(
            hex::encode(check.authorization(key).signature),
            "a87d9db00b53204748a795a39455933729f6ac42896526d76ba0241af9668f6a"
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
