//! A file's bytes as they go on the wire: compressed with zstd when the
//! receiver decodes it and the file compresses, and paced by `--bwlimit`.

use std::io::{self, Read};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// When files are compressed on the wire (`--compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// When the receiver decodes zstd and a first block of the file
    /// compresses well enough to be worth it.
    Auto,
    /// Every file, when the receiver decodes zstd.
    Zstd,
    /// Never.
    Off,
}

/// zstd level 1, its fastest regular level: on text logs it compresses
/// within 2% of level 3 (better on sensor logs) and a third faster, so a
/// Pi-class CPU keeps up with a 100 Mbit/s link with room to spare
/// (scripts/bench-notes.md has the figures per level).
pub const ZSTD_LEVEL: i32 = 1;
/// The window the encoder may use: 1 MiB. Text logs repeat themselves
/// within a few lines, so a larger window buys little, and this bounds
/// the encoder's memory (the window plus its match tables) to a few MiB.
const ZSTD_WINDOW_LOG: u32 = 20;
/// How much of a file is compressed to judge whether compressing it pays.
pub const SAMPLE_SIZE: usize = 128 * 1024;
/// Compression pays when the sample shrinks to less than this share:
/// compressed data, images and archives do not, and are sent as they are.
const WORTH_IT: f64 = 0.9;

/// Whether zstd shrinks `sample` (a file's first bytes, or all of a small
/// one) enough to be worth it; the compressed bytes when it does.
pub fn compressed_if_worth_it(sample: &[u8]) -> Option<Vec<u8>> {
    if sample.is_empty() {
        return None;
    }
    let compressed = zstd::bulk::compress(sample, ZSTD_LEVEL).ok()?;
    ((compressed.len() as f64) < sample.len() as f64 * WORTH_IT).then_some(compressed)
}

/// A reader of `source`'s `len` bytes, compressed as they are read.
pub fn zstd_reader<R: Read>(source: R, len: u64) -> io::Result<impl Read + use<R>> {
    let mut encoder = zstd::stream::read::Encoder::new(source, ZSTD_LEVEL)?;
    encoder.set_pledged_src_size(Some(len))?;
    encoder.window_log(ZSTD_WINDOW_LOG)?;
    // The declared SHA-256 covers the bytes; zstd's own checksum adds nothing.
    encoder.include_checksum(false)?;
    Ok(encoder)
}

/// The `--bwlimit` cap on the bytes of file parts sent, shared by every
/// upload of the run. Each piece may start once the pieces before it would
/// have taken their time at the cap: the average never exceeds it, and a
/// burst is at most one piece.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    bytes_per_sec: NonZeroU64,
    next_start: Arc<Mutex<Option<Instant>>>,
}

impl Bandwidth {
    pub fn new(bytes_per_sec: NonZeroU64) -> Self {
        Self { bytes_per_sec, next_start: Arc::default() }
    }

    /// The size of the pieces sent under this cap: about an eighth of a
    /// second's worth, so that the pace is even at any rate.
    pub fn piece_size(&self, largest: usize) -> usize {
        ((self.bytes_per_sec.get() / 8) as usize).clamp(1024, largest)
    }

    /// Waits until `len` more bytes may be sent.
    pub async fn take(&self, len: usize) {
        let start = {
            let mut next = self.next_start.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let start = next.map_or(now, |next| next.max(now));
            *next = Some(start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec.get() as f64));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_compressed_and_random_bytes_are_not() {
        let text: Vec<u8> = (0..4000)
            .flat_map(|i| format!("2026-11-30T12:00:{:02}Z greenhouse-3 soil={}\n", i % 60, i % 97).into_bytes())
            .collect();
        let compressed = compressed_if_worth_it(&text[..SAMPLE_SIZE]).expect("text compresses");
        assert!(compressed.len() < SAMPLE_SIZE / 4, "{} bytes", compressed.len());
        assert_eq!(zstd::bulk::decompress(&compressed, SAMPLE_SIZE).expect("decodes"), &text[..SAMPLE_SIZE]);
        let random: Vec<u8> = (0..SAMPLE_SIZE).map(|_| rand::random::<u8>()).collect();
        assert_eq!(compressed_if_worth_it(&random), None);
        assert_eq!(compressed_if_worth_it(&[]), None);
    }

    #[test]
    fn the_streamed_encoding_decodes_to_the_bytes() {
        let text: Vec<u8> = (0..100_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let mut encoded = Vec::new();
        zstd_reader(&text[..], text.len() as u64).expect("encoder").read_to_end(&mut encoded).expect("encodes");
        assert!(encoded.len() < text.len() / 4);
        assert_eq!(zstd::stream::decode_all(&encoded[..]).expect("decodes"), text);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_paces_pieces_from_every_upload() {
        let cap = Bandwidth::new(NonZeroU64::new(1000).expect("non-zero"));
        assert_eq!(cap.piece_size(128 * 1024), 1024);
        let started = Instant::now();
        let (a, b) = (cap.clone(), cap.clone());
        let one = async move {
            for _ in 0..5 {
                a.take(500).await;
            }
        };
        let other = async move {
            for _ in 0..5 {
                b.take(500).await;
            }
        };
        tokio::join!(one, other);
        // Ten pieces of 500 bytes at 1000 bytes/s: the last may start after 4.5 s.
        assert_eq!(started.elapsed(), Duration::from_millis(4500));
    }
}
