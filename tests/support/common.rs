//! What every end-to-end test binary shares, whichever binary it drives.

/// Scales the sizes of the bigger tests (`PSTREAM_TEST_SCALE=0.1` for a quick run).
pub fn scale(n: u64) -> u64 {
    let factor: f64 = std::env::var("PSTREAM_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as u64).max(1)
}
