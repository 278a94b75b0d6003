//! A file's bytes as they go on the wire: compressed with zstd when the
//! receiver decodes it and the file compresses, and paced by `--bwlimit`.

use std::io;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
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

/// The zstd levels a run moves between, cheapest first. Level 1 is where
/// it starts: on text logs in 128 KiB frames it compresses as well as
/// levels 2 to 5 and fastest, so a Pi-class CPU keeps up with a fast link.
/// The higher ones (on sensor logs about a tenth and a quarter fewer bytes
/// than level 1, at a ninth and a fiftieth of its speed; levels between
/// them gain less, and 12 nothing over 9: BENCHMARKS.md, case 10; each
/// level used keeps a context per core) are worth it only where the link, not the CPU,
/// sets the pace; [`Compressors`] climbs to them only while the device's
/// CPU is mostly idle, as it is when a slow link keeps it waiting.
pub const ZSTD_LEVELS: [i32; 3] = [1, 9, 15];
/// A file is compressed in blocks of this size, each one zstd frame: the
/// frames need no memory of one another, so a few compressors serve every
/// upload in flight, and on logs independent 128 KiB frames compress as
/// well as one stream (scripts/bench-notes.md). Also how much of a file is
/// compressed to judge whether compressing it pays.
pub const BLOCK_SIZE: usize = 128 * 1024;
/// Compression pays when a block shrinks to less than this share:
/// compressed data, images and archives do not, and are sent as they are.
const WORTH_IT: f64 = 0.9;

/// The zstd compressors of a run, shared by every upload in flight: one
/// worker thread per core (compressing is bound by the CPU, so more would
/// not be faster), each keeping its contexts, one per level it used. Memory
/// does not grow with `--jobs`, and the contexts and blocks stay in those
/// threads' heaps: compressed on whichever of the blocking pool's threads
/// was free, every thread's heap kept some, and the peak RSS grew by half.
#[derive(Debug, Default)]
pub struct Compressors {
    work: Mutex<Option<mpsc::Sender<Job>>>,
    pace: Mutex<Pace>,
}

/// Work for a compressor thread: given its context for the level named.
type Job = (i32, Box<dyn FnOnce(&mut Compressor) + Send>);

/// One zstd context, and its level.
pub struct Compressor {
    inner: zstd::bulk::Compressor<'static>,
    level: i32,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").field("level", &self.level).finish_non_exhaustive()
    }
}

impl Compressor {
    /// `block` as one zstd frame.
    pub fn compress(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        self.inner.compress(block)
    }

    /// `block` as one zstd frame as `compression` says: always with `Zstd`,
    /// with `Auto` only if that pays; never with `Off` (the caller then
    /// needs no compressor).
    pub fn compress_as(&mut self, compression: Compression, block: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match compression {
            Compression::Auto => self.compress_if_worth_it(block),
            Compression::Zstd => Ok(Some(self.compress(block)?)),
            Compression::Off => Ok(None),
        }
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

/// A compressor thread: runs jobs until the run drops its [`Compressors`].
fn compress_jobs(jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut contexts: Vec<Compressor> = Vec::new();
    loop {
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((level, job)) = next else { return };
        let at = match contexts.iter().position(|c| c.level == level) {
            Some(at) => at,
            None => match zstd::bulk::Compressor::new(level) {
                Ok(inner) => {
                    contexts.push(Compressor { inner, level });
                    contexts.len() - 1
                }
                // The job's answer channel closes unanswered: its caller
                // reports the failure.
                Err(_) => continue,
            },
        };
        job(&mut contexts[at]);
    }
}

impl Compressors {
    /// Runs `work` on a compressor thread with its context for the current
    /// level, once that thread is free.
    pub async fn with_compressor<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Compressor) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce(&mut Compressor) + Send> = Box::new(move |compressor| {
            let _ = answer.send(work(compressor));
        });
        self.sender()?.send((self.level(), job)).map_err(|_| io::Error::other("the compressor threads stopped"))?;
        let result = answered.await.map_err(|_| io::Error::other("a zstd context could not be made"))?;
        self.pace.lock().unwrap_or_else(PoisonError::into_inner).look(Instant::now(), CpuTimes::now);
        result
    }

    /// Where jobs go, starting the threads on first use.
    fn sender(&self) -> io::Result<mpsc::Sender<Job>> {
        let mut work = self.work.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = &*work {
            return Ok(sender.clone());
        }
        let (sender, jobs) = mpsc::channel();
        let jobs = Arc::new(Mutex::new(jobs));
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        for n in 0..cores {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new().name(format!("zstd-{n}")).spawn(move || compress_jobs(jobs))?;
        }
        *work = Some(sender.clone());
        Ok(sender)
    }
}

impl Compressors {
    /// The level blocks are compressed at now.
    pub fn level(&self) -> i32 {
        ZSTD_LEVELS[self.pace.lock().unwrap_or_else(PoisonError::into_inner).step]
    }
}

/// How the level follows the device's spare CPU, in the spirit of
/// `zstd --adapt`: at most every [`Pace::EVERY`], while blocks are being
/// compressed, the share of CPU time the whole device left idle since the
/// last look (`/proc/stat`). Over half idle: there is time to spend on
/// fewer bytes, one level up; under a fifth: the CPU is what holds things
/// back, one level down. So a slow link, which leaves the CPU idle, gets
/// the higher levels, and a fast one, which keeps it busy, level 1. Where
/// `/proc/stat` cannot be read the level stays at 1.
#[derive(Debug, Default)]
struct Pace {
    step: usize,
    last: Option<(Instant, CpuTimes)>,
}

/// Jiffies since boot: idle (and waiting for I/O), and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq steal …`.
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> =
            stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().map_while(|f| f.parse().ok()).collect();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        let total = fields.iter().take(8).sum();
        Some(Self { idle, total })
    }
}

impl Pace {
    const EVERY: Duration = Duration::from_millis(250);

    /// Looks at the CPU again if it is time to.
    fn look(&mut self, now: Instant, read: impl FnOnce() -> Option<CpuTimes>) {
        if self.last.is_some_and(|(at, _)| now - at < Self::EVERY) {
            return;
        }
        let Some(times) = read() else { return };
        if let Some((_, before)) = self.last {
            let total = times.total.saturating_sub(before.total);
            if total > 0 {
                self.follow(times.idle.saturating_sub(before.idle) as f64 / total as f64);
            }
        }
        self.last = Some((now, times));
    }

    fn follow(&mut self, idle: f64) {
        if idle > 0.5 {
            self.step = (self.step + 1).min(ZSTD_LEVELS.len() - 1);
        } else if idle < 0.2 {
            self.step = self.step.saturating_sub(1);
        }
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
        let level = compressors.with_compressor(|c| Ok(c.level)).await.expect("runs");
        assert_eq!(level, ZSTD_LEVELS[0]);
    }

    #[test]
    fn the_level_climbs_while_the_cpu_is_idle_and_falls_when_it_is_busy() {
        let stat = |idle: u64, busy: u64| {
            CpuTimes::parse(&format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")).expect("parses")
        };
        assert_eq!(stat(30, 70), CpuTimes { idle: 30, total: 100 });
        assert_eq!(CpuTimes::parse("intr 1 2 3"), None);
        let start = Instant::now();
        let mut pace = Pace::default();
        let at = |pace: &mut Pace, seconds: f64, idle, busy| {
            pace.look(start + Duration::from_secs_f64(seconds), || Some(stat(idle, busy)));
            ZSTD_LEVELS[pace.step]
        };
        assert_eq!(at(&mut pace, 0.0, 0, 0), 1, "the first look only starts counting");
        assert_eq!(at(&mut pace, 0.5, 90, 10), 9, "90% idle: up");
        assert_eq!(at(&mut pace, 0.6, 1000, 10), 9, "too soon to look again");
        assert_eq!(at(&mut pace, 1.0, 130, 70), 9, "between a fifth and a half idle: stays");
        assert_eq!(at(&mut pace, 1.5, 220, 80), 15);
        assert_eq!(at(&mut pace, 2.0, 320, 80), 15, "never past the last");
        assert_eq!(at(&mut pace, 2.5, 330, 170), 9, "10% idle: down");
        assert_eq!(at(&mut pace, 3.0, 330, 270), 1);
        assert_eq!(at(&mut pace, 3.5, 330, 370), 1, "never below the first");
        let mut blind = Pace::default();
        blind.look(start, || None);
        blind.look(start + Duration::from_secs(1), || None);
        assert_eq!(ZSTD_LEVELS[blind.step], 1, "without /proc/stat the level stays");
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
