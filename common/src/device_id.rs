//! The device ID: a 64-bit secret shared by one device and the receiver.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Number of hex characters in a device ID.
pub const DEVICE_ID_HEX_LEN: usize = 16;

/// How many trailing characters of an ID may appear in logs and pages.
const VISIBLE_CHARS: usize = 4;

/// Domain-separation label for key ids, so a key id can never be confused
/// with a request signature made with the same key.
const KEY_ID_LABEL: &[u8] = b"logferry key id v2";

/// Argon2id's cost for turning an ID into its key. Every request and key id
/// is an HMAC keyed by that key, so whoever captured one and wants to test
/// candidate IDs offline pays this for each candidate: 8 MiB of memory and
/// 20,000 to 29,000 times one HMAC-SHA256 (BENCHMARKS.md, `kdf_cost`), and the
/// memory keeps GPUs from running many at once.
/// 8 MiB also keeps the sender, which derives its key once per run, within
/// its memory budget on a Pi.
const KDF_MEMORY_KIB: u32 = 8 * 1024;
const KDF_PASSES: u32 = 2;
/// Argon2 needs a salt. It is fixed, as both sides must derive the same key
/// from the ID alone; with 2^64 possible IDs a table over all of them is out
/// of reach anyway, so a per-deployment salt would add little.
const KDF_SALT: &[u8] = b"logferry device key v2";

/// A validated device ID, kept in canonical (uppercase) form.
///
/// It is a secret: `Debug` masks it, there is no `Display`, and the full value
/// is only reachable through [`DeviceId::reveal`], which callers use to sign
/// requests, name the device's store folder, or print it once for the admin.
#[derive(Clone)]
pub struct DeviceId {
    canonical: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("a device ID is 16 hexadecimal characters, but this one has {0}")]
    WrongLength(usize),
    #[error("a device ID may only contain 0-9 and A-F, but this one contains {0:?}")]
    NotHex(char),
}

impl DeviceId {
    /// Builds an ID from 8 random bytes (the receiver's `add-device`).
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self { canonical: hex::encode_upper(bytes) }
    }

    /// The full ID. Only for signing, the store folder name, and printing a
    /// freshly made ID once.
    pub fn reveal(&self) -> &str {
        &self.canonical
    }

    /// The ID with all but its last four characters hidden, for logs.
    pub fn masked(&self) -> String {
        let hidden = DEVICE_ID_HEX_LEN - VISIBLE_CHARS;
        format!("{}{}", "*".repeat(hidden), &self.canonical[hidden..])
    }

    /// Derives the key that signs this device's requests and names it in
    /// them. Deliberately slow (Argon2id, see `KDF_MEMORY_KIB`): derive it
    /// once and keep it, never on a request path. For many IDs, a
    /// [`KeyDeriver`] reuses its memory.
    pub fn derive_key(&self) -> DeviceKey {
        KeyDeriver::default().derive(self)
    }
}

/// Derives keys with one Argon2 working memory, reused from one derivation
/// to the next: an allocator keeps freed 8 MiB buffers resident (glibc
/// raises its mmap threshold once one is freed), so deriving a thousand
/// keys with fresh buffers each left the receiver holding hundreds of MiB.
pub struct KeyDeriver {
    argon2: argon2::Argon2<'static>,
    memory: Vec<argon2::Block>,
}

impl Default for KeyDeriver {
    fn default() -> Self {
        let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32))
            .unwrap_or_else(|e| unreachable!("constant Argon2 parameters are valid: {e}"));
        let memory = vec![argon2::Block::default(); params.block_count()];
        Self { argon2: argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params), memory }
    }
}

impl fmt::Debug for KeyDeriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDeriver").field("memory_blocks", &self.memory.len()).finish_non_exhaustive()
    }
}

impl KeyDeriver {
    /// The key of `id`, as [`DeviceId::derive_key`] makes it.
    pub fn derive(&mut self, id: &DeviceId) -> DeviceKey {
        let mut secret = [0u8; 32];
        self.argon2
            .hash_password_into_with_memory(id.canonical.as_bytes(), KDF_SALT, &mut secret, &mut self.memory)
            .unwrap_or_else(|e| unreachable!("an ID and the constant salt fit Argon2's limits: {e}"));
        let mut mac = hmac_keyed(&secret);
        mac.update(KEY_ID_LABEL);
        let key_id = KeyId(hex::encode(&mac.finalize().into_bytes()[..16]));
        DeviceKey { secret, key_id }
    }
}

/// The key derived from a device ID: what signs requests and answers. As
/// secret as the ID (it is all a forger needs), so `Debug` shows only the
/// key id.
#[derive(Clone)]
pub struct DeviceKey {
    secret: [u8; 32],
    key_id: KeyId,
}

impl DeviceKey {
    /// The public, one-way name of this key that travels in requests instead
    /// of the ID.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// An HMAC-SHA256 keyed by this key.
    pub(crate) fn mac(&self) -> Hmac<Sha256> {
        hmac_keyed(&self.secret)
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey").field("key_id", &self.key_id.short()).finish_non_exhaustive()
    }
}

fn hmac_keyed(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len != DEVICE_ID_HEX_LEN {
            return Err(DeviceIdError::WrongLength(len));
        }
        if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(DeviceIdError::NotHex(bad));
        }
        Ok(Self { canonical: s.to_ascii_uppercase() })
    }
}

/// Compared in constant time, so that timing reveals nothing about an ID.
impl PartialEq for DeviceId {
    fn eq(&self, other: &Self) -> bool {
        self.canonical.as_bytes().ct_eq(other.canonical.as_bytes()).into()
    }
}

impl Eq for DeviceId {}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DeviceId").field(&self.masked()).finish()
    }
}

/// The key id: 32 lowercase hex characters derived one-way from a device ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a key id received on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        let well_formed = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Self(s.to_owned()))
    }

    /// The first eight characters, enough to tell devices apart in a log line.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, DeviceIdError>) {
        let got = input.parse::<DeviceId>().map(|id| id.reveal().to_owned());
        assert_eq!(got.as_deref().map_err(Clone::clone), expected, "input {input:?}");
    }

    #[test]
    fn parsing() {
        check("0123456789abcdef", Ok("0123456789ABCDEF"));
        check("0123456789ABCDEF", Ok("0123456789ABCDEF"));
        check("0123456789ABCDE", Err(DeviceIdError::WrongLength(15)));
        check("0123456789ABCDEF0", Err(DeviceIdError::WrongLength(17)));
        check("0123456789ABCDEG", Err(DeviceIdError::NotHex('G')));
        check("0123456789ABCDé0", Err(DeviceIdError::NotHex('é')));
        check("", Err(DeviceIdError::WrongLength(0)));
    }

    #[test]
    fn masking_and_debug_hide_all_but_four() {
        let id: DeviceId = "0123456789ABCDEF".parse().expect("valid");
        assert_eq!(id.masked(), "************CDEF");
        assert!(!format!("{id:?}").contains("0123"));
    }

    #[test]
    fn key_id_is_stable_case_insensitive_and_not_the_id() {
        let upper = "0123456789ABCDEF".parse::<DeviceId>().expect("valid").derive_key();
        let lower = "0123456789abcdef".parse::<DeviceId>().expect("valid").derive_key();
        let other = "0123456789ABCDEE".parse::<DeviceId>().expect("valid").derive_key();
        assert_eq!(upper.key_id(), lower.key_id());
        assert_ne!(upper.key_id(), other.key_id());
        assert!(KeyId::parse(upper.key_id().as_str()).is_some());
        assert!(!upper.key_id().as_str().to_uppercase().contains("0123456789ABCDEF"));
        assert!(!format!("{upper:?}").contains(&hex::encode(upper.secret)), "Debug hides the key");
    }

    #[test]
    fn a_reused_deriver_makes_the_same_keys_as_fresh_ones() {
        let ids: Vec<DeviceId> = [[1u8; 8], [2u8; 8], [1u8; 8]].map(DeviceId::from_bytes).into();
        let mut deriver = KeyDeriver::default();
        let reused: Vec<_> = ids.iter().map(|id| deriver.derive(id).key_id().clone()).collect();
        let fresh: Vec<_> = ids.iter().map(|id| id.derive_key().key_id().clone()).collect();
        assert_eq!(reused, fresh);
        assert_ne!(reused[0], reused[1]);
    }

    #[test]
    fn equality() {
        let a: DeviceId = "0123456789ABCDEF".parse().expect("valid");
        let b: DeviceId = "0123456789abcdef".parse().expect("valid");
        let c: DeviceId = "FEDCBA9876543210".parse().expect("valid");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
