//! What the logferry sender and receiver must agree on.
//!
//! Everything that crosses the wire, or decides where bytes land, is defined
//! here once so the two binaries cannot drift apart: the device ID and the key
//! (and key id) derived from it, SHA-256 digests, the request-signing scheme, the rules
//! for relative paths, the manifests of published releases, and the JSON bodies and header names of the protocol.
//! PROTOCOL.md describes the same things for people writing another client.

pub mod device_id;
pub mod digest;
pub mod durable;
pub mod human;
pub mod rel_path;
pub mod signing;
pub mod update;
pub mod wire;

pub use device_id::{DeviceId, DeviceIdError, DeviceKey, KeyDeriver, KeyId};
pub use digest::{Sha256Digest, Sha256Hasher};
pub use human::{human_bytes, human_duration, parse_byte_size};
pub use rel_path::{PathError, RelPath};
