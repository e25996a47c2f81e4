//! The seed's memory tests, with far stricter bounds, against both executors: a large
//! dataset, a generator, memory monitoring while running, the collect-first approach
//! against streaming, and the `max_memory_items` configurations.
//!
//! The seed allowed 500 MB of growth for 10 000 items and 100 MB for a 50 000-item
//! generator; here 1 000 000 items may grow this process's RSS by less than 32 MiB.
//! Alone in its test binary, and its tests take turns (`SERIAL`), so no other
//! test's allocations blur the figures. Growth is peak RSS (VmHWM, reset before each
//! measurement) over the RSS before the run.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pstream::{Executor, Function, ItemError, ProcessExecutor, ThreadExecutor};
use pstream_examples::double;
use support::*;

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 32 * MIB;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn threads(max_memory_items: Option<usize>) -> ThreadExecutor {
    let b = ThreadExecutor::builder().max_workers(2);
    match max_memory_items {
        Some(n) => b.max_memory_items(n),
        None => b,
    }
    .build()
}

fn processes(max_memory_items: Option<usize>) -> ProcessExecutor {
    let b = ProcessExecutor::builder().pool(builder()).max_workers(2);
    match max_memory_items {
        Some(n) => b.max_memory_items(n),
        None => b,
    }
    .build()
    .expect("start a process executor of the example plugin")
}

/// Run `f` and return its value with how much it grew peak RSS over the RSS before.
fn growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    assert!(reset_peak_rss(), "cannot reset VmHWM on this kernel");
    let before = current_rss();
    let value = f();
    (value, peak_rss().saturating_sub(before))
}

/// Warm up threads, channels and the allocator, so the baseline includes them.
fn warm<E: Executor<i64, Function<i64, i64>>>(ex: &E) {
    let sum: i64 = ex.execute(double, 0..20_000i64).map(Result::unwrap).sum();
    assert_eq!(sum, 19_999 * 20_000);
}

/// Consume a stream of `double` over `0..n` without keeping it; check every value.
fn drain(results: impl Iterator<Item = Result<i64, ItemError>>, n: u64) {
    let mut expected = 0i64;
    for r in results {
        assert_eq!(r, Ok(2 * expected));
        expected += 1;
    }
    assert_eq!(expected as u64, n);
}

// 1. Large dataset ----------------------------------------------------------------

fn large_dataset<E: Executor<i64, Function<i64, i64>>>(name: &str, ex: E) {
    let n = scale(1_000_000);
    warm(&ex);
    let ((), grew) = growth(|| drain(ex.execute(double, 0..n as i64), n));
    eprintln!("{name}: {n} items grew peak RSS by {} KiB", grew / 1024);
    assert!(grew < BUDGET, "{name}: grew {} MiB", grew / MIB);
}

#[test]
fn large_dataset_threads() {
    let _turn = serial();
    large_dataset("threads", threads(None));
}

#[test]
fn large_dataset_processes() {
    let _turn = serial();
    large_dataset("processes", processes(None));
}

// 2. Generator --------------------------------------------------------------------

fn generator<E: Executor<i64, Function<i64, i64>>>(name: &str, ex: E) {
    let n = scale(1_000_000);
    warm(&ex);
    let ((), grew) = growth(|| {
        let mut next = 0i64;
        let generator = std::iter::from_fn(move || {
            next += 1;
            Some(next - 1)
        })
        .take(n as usize);
        drain(ex.execute(double, generator), n);
    });
    eprintln!(
        "{name}: a {n}-item generator grew peak RSS by {} KiB",
        grew / 1024
    );
    assert!(grew < BUDGET, "{name}: grew {} MiB", grew / MIB);
}

#[test]
fn generator_threads() {
    let _turn = serial();
    generator("threads", threads(None));
}

#[test]
fn generator_processes() {
    let _turn = serial();
    generator("processes", processes(None));
}

// 3. Memory monitoring -------------------------------------------------------------

/// Sample RSS and the items pulled ahead of the consumer while the job runs: the
/// bound holds at every item, and RSS after the first tenth stays where it was.
fn monitoring<E: Executor<i64, Function<i64, i64>>>(name: &str, ex: E) {
    let n = scale(1_000_000);
    let max = ex.max_memory_items() as u64;
    warm(&ex);
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0..n as i64).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let checkpoint = (n / 10).max(1);
    let mut samples = Vec::new();
    let mut consumed = 0u64;
    let mut peak_ahead = 0u64;
    for r in ex.execute(double, input) {
        assert_eq!(r, Ok(2 * consumed as i64));
        consumed += 1;
        let ahead = pulled.load(Ordering::Relaxed) - consumed;
        peak_ahead = peak_ahead.max(ahead);
        assert!(ahead <= max, "{name}: {ahead} items ahead, max {max}");
        if consumed % checkpoint == 0 {
            samples.push(current_rss());
        }
    }
    assert_eq!(consumed, n);
    eprintln!(
        "{name}: at most {peak_ahead} of {max} items ahead; RSS samples (MiB): {:?}",
        samples.iter().map(|r| r / MIB).collect::<Vec<_>>()
    );
    let first = samples[0];
    let top = *samples.iter().max().unwrap();
    assert!(
        top.saturating_sub(first) < 8 * MIB,
        "{name}: RSS grew from {} MiB to {} MiB as the input went on",
        first / MIB,
        top / MIB
    );
}

#[test]
fn monitoring_threads() {
    let _turn = serial();
    monitoring("threads", threads(None));
}

#[test]
fn monitoring_processes() {
    let _turn = serial();
    monitoring("processes", processes(None));
}

// 4. Before/after: collecting the input first (the seed's bug) against streaming ---

fn before_after<E: Executor<i64, Function<i64, i64>>>(name: &str, ex: E) {
    let n = scale(1_000_000);
    warm(&ex);
    // Before: `list(data)` and a list of results, as the seed's executor did.
    let (kept, before) = growth(|| {
        let data: Vec<i64> = (0..n as i64).collect();
        let results: Vec<Result<i64, ItemError>> = ex.execute(double, data).collect();
        results.len()
    });
    assert_eq!(kept as u64, n);
    // After: stream in, stream out.
    let ((), after) = growth(|| drain(ex.execute(double, 0..n as i64), n));
    eprintln!(
        "{name}: collect-first grew {} MiB, streaming {} KiB",
        before / MIB,
        after / 1024
    );
    // Collecting holds every input and every result: at least their size.
    let held =
        n * (std::mem::size_of::<i64>() + std::mem::size_of::<Result<i64, ItemError>>()) as u64;
    assert!(
        before >= held / 2,
        "{name}: collect-first grew only {before} bytes"
    );
    assert!(after < BUDGET, "{name}: streaming grew {} MiB", after / MIB);
    assert!(after * 4 < before, "{name}: streaming saved less than 4×");
}

#[test]
fn before_after_threads() {
    let _turn = serial();
    before_after("threads", threads(None));
}

#[test]
fn before_after_processes() {
    let _turn = serial();
    before_after("processes", processes(None));
}

// 5. Configuration -----------------------------------------------------------------

/// Each setting is honoured: never more items ahead than configured, and memory
/// within the budget (a large setting lets the reader run far ahead, which is the
/// point of the setting; 1,000,000 i64 still fit the budget).
fn configuration<E: Executor<i64, Function<i64, i64>>>(
    name: &str,
    make: impl Fn(Option<usize>) -> E,
    default: usize,
) {
    let n = scale(200_000);
    for setting in [Some(1), Some(10), Some(1_000), None, Some(1_000_000)] {
        let ex = make(setting);
        let max = setting.unwrap_or(default);
        assert_eq!(ex.max_memory_items(), max);
        warm(&ex);
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&pulled);
        let input = (0..n as i64).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let (peak_ahead, grew) = growth(|| {
            let mut peak_ahead = 0;
            let mut consumed = 0u64;
            for r in ex.execute(double, input) {
                assert_eq!(r, Ok(2 * consumed as i64));
                consumed += 1;
                peak_ahead = peak_ahead.max(pulled.load(Ordering::Relaxed) - consumed);
            }
            assert_eq!(consumed, n);
            peak_ahead
        });
        eprintln!(
            "{name}, max_memory_items {max}: at most {peak_ahead} ahead, grew {} KiB",
            grew / 1024
        );
        assert!(
            peak_ahead <= max as u64,
            "{name}: {peak_ahead} ahead of {max}"
        );
        assert!(grew < BUDGET, "{name}: grew {} MiB", grew / MIB);
    }
}

#[test]
fn configuration_threads() {
    let _turn = serial();
    configuration("threads", threads, ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS);
}

#[test]
fn configuration_processes() {
    let _turn = serial();
    configuration(
        "processes",
        processes,
        ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS,
    );
}
