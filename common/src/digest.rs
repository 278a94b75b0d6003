//! SHA-256 digests as they appear on the wire and in checksum files.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Read size when hashing a file: large enough to keep syscalls rare (larger
/// reads hash no faster, BENCHMARKS.md), small enough that memory stays flat
/// whatever the file size and however many files are hashed at once.
pub const HASH_BUFFER_SIZE: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a SHA-256 checksum is 64 hexadecimal characters")]
pub struct DigestParseError;

impl Sha256Digest {
    /// Hashes everything `reader` yields, streaming; returns the digest and
    /// the number of bytes read.
    pub fn of_reader(reader: impl Read) -> io::Result<(Self, u64)> {
        Self::of_reader_with(reader, &mut vec![0u8; HASH_BUFFER_SIZE])
    }

    /// As [`Self::of_reader`], for a reader expected to yield `expected`
    /// bytes: a small file gets a buffer just large enough (one byte more, so
    /// that the read finding its end shares it), not a full-size one.
    pub fn of_reader_expecting(reader: impl Read, expected: u64) -> io::Result<(Self, u64)> {
        let len = expected.saturating_add(1).min(HASH_BUFFER_SIZE as u64) as usize;
        Self::of_reader_with(reader, &mut vec![0u8; len])
    }

    /// The digest of bytes already in memory.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut hasher = Sha256Hasher::default();
        hasher.update(bytes);
        hasher.finish().0
    }

    fn of_reader_with(mut reader: impl Read, buf: &mut [u8]) -> io::Result<(Self, u64)> {
        let mut hasher = Sha256Hasher::default();
        loop {
            match reader.read(buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Incremental SHA-256 that also counts bytes.
#[derive(Default, Clone)]
pub struct Sha256Hasher {
    inner: Sha256,
    len: u64,
}

impl Sha256Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.len
    }

    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.inner.finalize().into()), self.len)
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256Hasher").field("len", &self.len).finish_non_exhaustive()
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;

    /// Accepts either case, as `sha256sum` users may paste either.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 {
            return Err(DigestParseError);
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| DigestParseError)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers from `printf '' | sha256sum` and `printf 'abc' | sha256sum`.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_answers() {
        for (input, expected) in [(&b""[..], EMPTY), (b"abc", ABC)] {
            let (digest, len) = Sha256Digest::of_reader(input).expect("reading a slice");
            assert_eq!(digest.to_hex(), expected);
            assert_eq!(len, input.len() as u64);
            assert_eq!(Sha256Digest::of_bytes(input).to_hex(), expected);
            // A wrong expectation only sizes the buffer: everything is hashed.
            for expected_len in [0, 1, 3, 1 << 40] {
                let (sized, sized_len) = Sha256Digest::of_reader_expecting(input, expected_len).expect("reading");
                assert_eq!((sized.to_hex().as_str(), sized_len), (expected, input.len() as u64), "{expected_len}");
            }
        }
    }

    #[test]
    fn streaming_matches_one_shot_across_buffer_boundaries() {
        let data: Vec<u8> = (0..(HASH_BUFFER_SIZE * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let (streamed, _) = Sha256Digest::of_reader(&data[..]).expect("reading a slice");
        let mut hasher = Sha256Hasher::default();
        for chunk in data.chunks(1000) {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finish().0, streamed);
    }

    #[test]
    fn parsing() {
        assert_eq!(ABC.to_uppercase().parse::<Sha256Digest>().map(|d| d.to_hex()), Ok(ABC.to_owned()));
        for bad in ["", "abc", &ABC[1..], &format!("{ABC}0"), &ABC.replace('b', "g")] {
            assert_eq!(bad.parse::<Sha256Digest>(), Err(DigestParseError), "{bad:?}");
        }
    }
}
