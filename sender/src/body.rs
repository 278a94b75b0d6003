//! A file's bytes as they go on the wire: compressed with zstd when the
//! receiver decodes it and the file compresses, and paced by `--bwlimit`.

use std::io;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
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
/// A file is compressed in blocks of this size, each one zstd frame: the
/// frames need no memory of one another, so a few compressors serve every
/// upload in flight, and on logs independent 128 KiB frames compress as
/// well as one stream (scripts/bench-notes.md). Also how much of a file is
/// compressed to judge whether compressing it pays.
pub const BLOCK_SIZE: usize = 128 * 1024;
/// Compression pays when a block shrinks to less than this share:
/// compressed data, images and archives do not, and are sent as they are.
const WORTH_IT: f64 = 0.9;

/// The zstd compressors of a run, shared by every upload in flight: at most
/// one per core at work at once (compressing is bound by the CPU, so more
/// would not be faster), each reused, so that memory does not grow with
/// `--jobs`.
#[derive(Debug)]
pub struct Compressors {
    idle: Mutex<Vec<Compressor>>,
    at_work: Semaphore,
}

/// One reusable zstd context.
pub struct Compressor(zstd::bulk::Compressor<'static>);

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    /// `block` as one zstd frame.
    pub fn compress(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        self.0.compress(block)
    }

    /// `block` as one zstd frame when that shrinks it enough to be worth it.
    pub fn compress_if_worth_it(&mut self, block: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if block.is_empty() {
            return Ok(None);
        }
        let compressed = self.compress(block)?;
        Ok(((compressed.len() as f64) < block.len() as f64 * WORTH_IT).then_some(compressed))
    }
}

impl Default for Compressors {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { idle: Mutex::default(), at_work: Semaphore::new(cores) }
    }
}

impl Compressors {
    /// Runs `work` on the blocking pool with a compressor, once one of the
    /// cores is free for it.
    pub async fn with_compressor<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Compressor) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let _turn = self.at_work.acquire().await.map_err(io::Error::other)?;
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut compressor = match idle {
            Some(compressor) => compressor,
            None => Compressor(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        let (compressor, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut compressor);
            (compressor, result)
        })
        .await
        .map_err(io::Error::other)?;
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(compressor);
        result
    }
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

    #[tokio::test]
    async fn text_is_compressed_and_random_bytes_are_not() {
        let text: Vec<u8> = (0..4000)
            .flat_map(|i| format!("2026-11-30T12:00:{:02}Z greenhouse-3 soil={}\n", i % 60, i % 97).into_bytes())
            .collect();
        let random: Vec<u8> = (0..BLOCK_SIZE).map(|_| rand::random::<u8>()).collect();
        let compressors = Compressors::default();
        let block = text[..BLOCK_SIZE].to_vec();
        let (compressed, noise, empty) = compressors
            .with_compressor(move |c| {
                Ok((c.compress_if_worth_it(&block)?, c.compress_if_worth_it(&random)?, c.compress_if_worth_it(&[])?))
            })
            .await
            .expect("compresses");
        let compressed = compressed.expect("text compresses");
        assert!(compressed.len() < BLOCK_SIZE / 4, "{} bytes", compressed.len());
        assert_eq!(zstd::bulk::decompress(&compressed, BLOCK_SIZE).expect("decodes"), &text[..BLOCK_SIZE]);
        assert_eq!((noise, empty), (None, None));
        assert_eq!(compressors.idle.lock().expect("lock").len(), 1, "the compressor is kept for reuse");
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
