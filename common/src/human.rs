//! Sizes and spans of time for people, as both binaries print them.

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

/// A rough span: `45 s`, `12 min`, `5 h`, `3 d`.
pub fn human_duration(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// Parses `1048576`, `512KiB`, `512MiB`, `2GiB`, `1.5GB`, … (binary and
/// decimal units, any case).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let bytes = value * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes <= u64::MAX as f64) {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("1048576", Ok(1 << 20)),
            ("512MiB", Ok(512 << 20)),
            ("2GiB", Ok(2 << 30)),
            ("2 gib", Ok(2 << 30)),
            ("1.5GB", Ok(1_500_000_000)),
            ("10kb", Ok(10_000)),
            ("0", Err(())),
            ("", Err(())),
            ("MiB", Err(())),
            ("12 parsecs", Err(())),
            ("-5", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_byte_size(text).map_err(|_| ()), *expected, "{text:?}");
        }
    }

    #[test]
    fn sizes() {
        for (bytes, expected) in
            [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (50 << 20, "50.0 MiB"), (3 << 30, "3.0 GiB")]
        {
            assert_eq!(human_bytes(bytes), expected);
        }
    }

    #[test]
    fn spans() {
        for (seconds, expected) in
            [(0, "0 s"), (119, "119 s"), (120, "2 min"), (7199, "119 min"), (7200, "2 h"), (172_800, "2 d")]
        {
            assert_eq!(human_duration(seconds), expected);
        }
    }
}
