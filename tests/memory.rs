//! The coordinator's memory stays flat however long the input is. Alone in its
//! test binary, so no other test's allocations blur the figures.

mod support;

use std::time::Duration;

use pstream_examples::double;
use support::*;

const MIB: u64 = 1 << 20;

#[test]
fn coordinator_memory_is_flat_over_twenty_million_items() {
    let _watchdog = watchdog(
        "coordinator_memory_is_flat_over_twenty_million_items",
        Duration::from_secs(600),
    );
    let n = scale(20_000_000);
    let pool = pool(2);
    // Warm up allocator and threads, then take the baseline.
    let warm: i64 = pool
        .map(double, 0..10_000i64)
        .unwrap()
        .map(Result::unwrap)
        .sum();
    assert_eq!(warm, 9_999 * 10_000);
    let baseline = current_rss();

    let checkpoint = (n / 10).max(1);
    let mut samples = Vec::new();
    let mut expected = 0i64;
    for result in pool.map(double, 0..n as i64).unwrap() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
        if expected as u64 % checkpoint == 0 {
            samples.push((expected, current_rss()));
        }
    }
    assert_eq!(expected as u64, n);
    let peak = peak_rss();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "baseline {} MiB, peak {} MiB, samples (items, MiB): {:?}",
        baseline / MIB,
        peak / MIB,
        samples
            .iter()
            .map(|&(i, r)| (i, r / MIB))
            .collect::<Vec<_>>()
    );
    assert!(growth < 64 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    // Flat: what it holds after the first tenth is what it holds at the end.
    let first = samples.first().unwrap().1;
    let max = samples.iter().map(|&(_, r)| r).max().unwrap();
    assert!(
        max.saturating_sub(first) < 16 * MIB,
        "RSS grew from {} MiB to {} MiB as the input went on",
        first / MIB,
        max / MIB
    );
}
