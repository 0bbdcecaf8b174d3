//! Durations and sizes as a file, a variable or a flag writes them. A leaf: the config
//! sections (`policy.rs`, `cli.rs`, `file.rs`) use it and it uses none of them.

use std::time::Duration;

/// Seconds as a plain number (`300`, `0.5`), or a humantime duration (`5m`, `10s`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a size: bytes (`67108864`) or with a unit (`64MiB`, `512 KiB`, `1GB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<usize>() {
        return Ok(bytes);
    }
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("{text:?}: {e} (a size like 67108864 or 64MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?}: too large"))
}
