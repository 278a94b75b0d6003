//! The run's tally and its one summary line.

use std::fmt;
use std::time::Duration;

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub sent: u64,
    pub sent_bytes: u64,
    pub already_stored: u64,
    /// Files that stay for the next run, with the reason.
    pub failed: Vec<(String, String)>,
    /// Symbolic links and special files, never sent.
    pub skipped: u64,
    /// Files still being written (or changed during this run): left for a
    /// later run, which is normal, not a failure.
    pub not_yet: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "logferry: {} sent ({}), {} already stored, {} failed",
            self.sent,
            human_bytes(self.sent_bytes),
            self.already_stored,
            self.failed.len()
        )?;
        if self.not_yet > 0 {
            write!(f, ", {} still being written (left for a later run)", self.not_yet)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} skipped (links or special files)", self.skipped)?;
        }
        write!(f, ", in {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (bytes, expected) in
            [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (50 << 20, "50.0 MiB"), (3 << 30, "3.0 GiB")]
        {
            assert_eq!(human_bytes(bytes), expected);
        }
    }

    #[test]
    fn line() {
        let summary = Summary {
            sent: 2,
            sent_bytes: 2048,
            already_stored: 1,
            failed: vec![("a".into(), "b".into())],
            skipped: 1,
            not_yet: 3,
            elapsed: Duration::from_millis(1250),
        };
        assert_eq!(
            summary.to_string(),
            "logferry: 2 sent (2.0 KiB), 1 already stored, 1 failed, 3 still being written (left for a later run), \
             1 skipped (links or special files), in 1.2 s"
        );
    }
}
