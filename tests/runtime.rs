//! The core runtime over real processes: order, flat memory, cancellation,
//! degenerate shapes, start-up failures, clean shutdown.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstream::{Codec, PoolBuilder, PoolError, ProcessPool};
use pstream_examples::{double, upper};
use support::*;

/// An input that counts how many items were pulled from it.
struct Counting<I> {
    inner: I,
    pulled: Arc<AtomicU64>,
}

impl<I: Iterator> Iterator for Counting<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.pulled.fetch_add(1, Ordering::SeqCst);
        Some(item)
    }
}

fn counting<I: Iterator>(inner: I) -> (Counting<I>, Arc<AtomicU64>) {
    let pulled = Arc::new(AtomicU64::new(0));
    (
        Counting {
            inner,
            pulled: Arc::clone(&pulled),
        },
        pulled,
    )
}

#[test]
fn double_a_million_in_order_and_unordered() {
    let _watchdog = watchdog(
        "double_a_million_in_order_and_unordered",
        Duration::from_secs(240),
    );
    let pool = pool(2);
    let n = scale(1_000_000) as i64;
    let mut expected = 0i64;
    for result in pool.map(double, 0..n).unwrap() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);

    let mut seen = vec![false; n as usize];
    for (index, result) in pool.map_unordered(double, 0..n).unwrap().indexed() {
        let value = result.unwrap();
        assert_eq!(value, index as i64 * 2);
        assert!(
            !std::mem::replace(&mut seen[index as usize], true),
            "{index} twice"
        );
    }
    assert!(seen.iter().all(|&s| s), "some results are missing");
}

#[test]
fn infinite_input_cut_short_then_the_pool_runs_another_job() {
    let _watchdog = watchdog(
        "infinite_input_cut_short_then_the_pool_runs_another_job",
        Duration::from_secs(240),
    );
    let pool = pool(2);
    let first: Vec<i64> = pool
        .map(double, 0i64..)
        .unwrap()
        .take(10_000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
    // The first job was cancelled when its results were dropped; the pool goes on.
    let second: Vec<String> = pool
        .map(upper, ["a", "b", "c"].map(String::from))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(second, ["A", "B", "C"]);
}

#[test]
fn the_input_is_never_read_more_than_a_window_ahead() {
    let _watchdog = watchdog(
        "the_input_is_never_read_more_than_a_window_ahead",
        Duration::from_secs(240),
    );
    for (window, input_thread) in [1usize, 7, 100, 5000]
        .into_iter()
        .flat_map(|w| [(w, false), (w, true)])
    {
        let pool = builder().workers(2).window(window).build().unwrap();
        let (input, pulled) = counting(0i64..1_000_000);
        let mut results = if input_thread {
            pool.input_thread().map(double, input).unwrap()
        } else {
            pool.map(double, input).unwrap()
        };
        let mut consumed = 0u64;
        for _ in 0..3 * window {
            let value = results.next().unwrap().unwrap();
            assert_eq!(value, consumed as i64 * 2);
            consumed += 1;
            let ahead = pulled.load(Ordering::SeqCst) - consumed;
            assert!(
                ahead <= window as u64,
                "window {window}: {ahead} items pulled ahead"
            );
        }
        // The consumer stops reading: a feeder thread fills the window, and stops
        // there. (Read on the consumer's thread, the input is read only in `next`.)
        if input_thread {
            wait_for("the window to fill", || results.in_flight() == window);
        }
        let ahead = pulled.load(Ordering::SeqCst) - consumed;
        assert!(
            ahead <= window as u64,
            "window {window}: {ahead} items pulled ahead"
        );
        assert!(results.stats().peak_in_flight <= window as u64);
        // Cancelling by drop stops the input for good.
        drop(results);
        let after_drop = pulled.load(Ordering::SeqCst);
        let again: Vec<i64> = pool
            .map(double, 0..10)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(again, (0..10).map(|x| x * 2).collect::<Vec<_>>());
        // At most the item whose read was under way when the results were dropped.
        let late = pulled.load(Ordering::SeqCst) - after_drop;
        assert!(late <= 1, "{late} items read after cancel");
    }
}

fn doubled(pool: &ProcessPool, n: i64) {
    let got: Vec<i64> = pool
        .map(double, 0..n)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..n).map(|x| x * 2).collect::<Vec<_>>(), "n = {n}");
}

#[test]
fn degenerate_shapes() {
    let _watchdog = watchdog("degenerate_shapes", Duration::from_secs(240));
    // One worker.
    doubled(&builder().workers(1).build().unwrap(), 10_000);
    // Window of one item.
    doubled(&builder().workers(2).window(1).build().unwrap(), 500);
    // Window smaller than a batch.
    doubled(
        &builder()
            .workers(2)
            .window(3)
            .max_batch(64)
            .build()
            .unwrap(),
        2_000,
    );
    // Window larger than the input.
    doubled(
        &builder().workers(2).window(1_000_000).build().unwrap(),
        1_000,
    );
    // More workers than items, and an empty input.
    let pool = builder().workers(3).build().unwrap();
    doubled(&pool, 2);
    doubled(&pool, 0);
    let mut empty = pool.map(double, std::iter::empty()).unwrap();
    assert!(empty.next().is_none());
    assert!(empty.next().is_none(), "a finished stream stays finished");
}

#[test]
fn item_failures_are_values_and_the_stream_goes_on() {
    let _watchdog = watchdog(
        "item_failures_are_values_and_the_stream_goes_on",
        Duration::from_secs(240),
    );
    let pool = pool(2);
    let input = vec![1, i64::MAX, 3];
    let results: Vec<_> = pool.map(double, input).unwrap().collect();
    assert_eq!(results[0].as_ref().unwrap(), &2);
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.index, 1);
    assert_eq!(err.kind.name(), "failed");
    assert!(err.to_string().contains("overflows"), "{err}");
    assert_eq!(results[2].as_ref().unwrap(), &6);

    // Raw JSON: bad JSON and wrong types are decode errors of their items.
    let lines = ["1", "{oops", "\"text\"", "4"];
    let mut raw = pool.map_raw("double", Codec::Json, true, lines).unwrap();
    let mut seen = Vec::new();
    while let Some((index, result)) = raw.next_raw() {
        seen.push((
            index,
            result
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .map_err(|e| e.kind.name()),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (0, Ok("2".into())),
            (1, Err("decode")),
            (2, Err("decode")),
            (3, Ok("8".into()))
        ]
    );
    let stats = raw.stats();
    assert_eq!((stats.items_ok, stats.items_failed), (2, 2));
}

#[test]
fn lines_codec_passes_strings_raw() {
    let _watchdog = watchdog("lines_codec_passes_strings_raw", Duration::from_secs(240));
    let pool = pool(1);
    let mut raw = pool
        .map_raw("upper", Codec::Lines, true, ["hello", "wörld", "a\"b"])
        .unwrap();
    let mut out = Vec::new();
    while let Some((_, r)) = raw.next_raw() {
        out.push(String::from_utf8(r.unwrap().to_vec()).unwrap());
    }
    assert_eq!(out, ["HELLO", "WÖRLD", "A\"B"]);
}

#[test]
fn unknown_function_is_a_clear_error() {
    let _watchdog = watchdog(
        "unknown_function_is_a_clear_error",
        Duration::from_secs(240),
    );
    let pool = pool(1);
    let err = pool
        .map_raw("no_such_function", Codec::Json, true, ["1"])
        .unwrap_err();
    match &err {
        PoolError::UnknownFunction { name, available } => {
            assert_eq!(name, "no_such_function");
            assert!(available.iter().any(|f| f == "double"), "{available:?}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("double"), "{err}");
}

#[test]
fn a_missing_worker_binary_is_a_clear_error() {
    let _watchdog = watchdog(
        "a_missing_worker_binary_is_a_clear_error",
        Duration::from_secs(240),
    );
    let start = Instant::now();
    let err = ProcessPool::builder()
        .workers(2)
        .program("./no/such/pstream-plugin")
        .build()
        .unwrap_err();
    assert!(matches!(err, PoolError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("no/such/pstream-plugin"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_worker_that_exits_at_once_is_a_clear_error() {
    let _watchdog = watchdog(
        "a_worker_that_exits_at_once_is_a_clear_error",
        Duration::from_secs(240),
    );
    let err = ProcessPool::builder()
        .workers(2)
        .program("true")
        .build()
        .unwrap_err();
    match &err {
        PoolError::WorkerStart { reason, .. } => {
            assert!(reason.contains("exited with status 0"), "{reason}")
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn a_worker_that_never_says_hello_is_a_clear_error() {
    let _watchdog = watchdog(
        "a_worker_that_never_says_hello_is_a_clear_error",
        Duration::from_secs(240),
    );
    let err = ProcessPool::builder()
        .workers(1)
        .program("sleep")
        .arg("600")
        .handshake_timeout(Duration::from_millis(500))
        .build()
        .unwrap_err();
    match &err {
        PoolError::WorkerStart { reason, .. } => {
            assert!(
                reason.contains("did not complete the handshake"),
                "{reason}"
            )
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn dropping_the_pool_stops_and_reaps_every_worker() {
    let _watchdog = watchdog(
        "dropping_the_pool_stops_and_reaps_every_worker",
        Duration::from_secs(240),
    );
    let pool = pool(3);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    for &pid in &pids {
        assert!(
            process_state(pid).is_some(),
            "worker {pid} should be running"
        );
    }
    // Also with a job in the middle of its input.
    let mut results = pool.map(double, 0i64..).unwrap();
    assert_eq!(results.next().unwrap().unwrap(), 0);
    let dropping = Instant::now();
    drop(pool);
    // Not asserted (timings do not belong in tests), but shown: workers finish the
    // batches they hold and exit at the Shutdown, well within the grace period.
    eprintln!("dropping the pool took {:?}", dropping.elapsed());
    assert_gone(&pids);
    // The orphaned result stream ends rather than hangs.
    let rest: Vec<_> = results.by_ref().take(100_000).collect();
    assert!(
        rest.len() < 100_000,
        "the stream should end once the pool is gone"
    );
    if let Some(Err(last)) = rest.last() {
        assert_eq!(last.kind.name(), "aborted");
    }
}

#[test]
fn dropping_the_pool_does_not_wait_out_the_grace_period() {
    let _watchdog = watchdog(
        "dropping_the_pool_does_not_wait_out_the_grace_period",
        Duration::from_secs(240),
    );
    // Workers exit at the Shutdown at once; the pool must not then sit until the
    // (here absurd) grace period ends. Several rounds: the bug this guards against
    // depended on the order in which the last exits were seen.
    for _ in 0..5 {
        let pool = builder()
            .workers(2)
            .shutdown_grace(Duration::from_secs(3600))
            .build()
            .unwrap();
        let pids = pool.worker_pids();
        doubled(&pool, 1000);
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(pool);
            let _ = done.send(());
        });
        dropped
            .recv_timeout(Duration::from_secs(120))
            .expect("dropping an idle pool waited for its grace period");
        assert_gone(&pids);
    }
}

#[test]
fn a_handle_whose_output_type_is_not_the_workers_gets_decode_errors_not_wrong_values() {
    let _watchdog = watchdog(
        "a_handle_whose_output_type_is_not_the_workers_gets_decode_errors_not_wrong_values",
        Duration::from_secs(240),
    );
    // A stale handle: the workers' `double` returns i64, this one says u8. Packed
    // u8s would be read out of the i64s' bytes and come back as wrong numbers; the
    // results must travel with lengths and each fail to decode instead.
    let stale: pstream::Function<i64, u8> = pstream::Function::__new("double", |_| Ok(0));
    let pool = pool(2);
    let results: Vec<_> = pool.map(stale, 100..300).unwrap().collect();
    assert_eq!(results.len(), 200);
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(e) => {
                assert_eq!(e.index, i as u64);
                assert_eq!(e.kind.name(), "decode", "{e}");
                assert!(e.to_string().contains("left over"), "{e}");
            }
            Ok(v) => panic!("item {i} decoded as {v}"),
        }
    }
    // The right handle on the same pool: packed, exact.
    let got: Vec<i64> = pool
        .map(double, 0..50_000)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..50_000).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn large_items_are_read_ahead_by_bytes_not_only_by_count() {
    let _watchdog = watchdog(
        "large_items_are_read_ahead_by_bytes_not_only_by_count",
        Duration::from_secs(240),
    );
    // 16 KiB items, a window of 20,000 items but of 1 MiB: about 64 items may be in
    // flight (plus a batch in the making), not the whole input.
    let pool = builder()
        .workers(2)
        .window(20_000)
        .window_bytes(1 << 20)
        .build()
        .unwrap();
    let n = 3000usize;
    let blob = |i: usize| pstream_examples::Blob(vec![(i % 251) as u8; 16 << 10]);
    let mut results = pool
        .map(pstream_examples::sha256_bytes, (0..n).map(blob))
        .unwrap();
    let mut count = 0;
    for (i, r) in results.by_ref().enumerate() {
        let want: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&blob(i).0).into();
        assert_eq!(r.unwrap(), want, "item {i}");
        count += 1;
    }
    assert_eq!(count, n);
    let peak = results.stats().peak_in_flight;
    assert!(
        peak <= 200,
        "{peak} items of 16 KiB were in flight with a window of 1 MiB"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_a_clear_error_and_starts_nothing() {
    let _watchdog = watchdog(
        "a_bad_configuration_is_refused_with_a_clear_error_and_starts_nothing",
        Duration::from_secs(240),
    );
    let cases: [(PoolBuilder, &str); 5] = [
        (builder().workers(0), "at least one worker"),
        (builder().window(0), "at least one item"),
        (builder().window_bytes(0), "at least one byte"),
        (builder().max_frame(100), "between 4 KiB and 4 GiB"),
        (builder().max_frame(1 << 33), "between 4 KiB and 4 GiB"),
    ];
    for (bad, says) in cases {
        match bad.build() {
            Err(e @ PoolError::Config(_)) => assert!(e.to_string().contains(says), "{e}"),
            Err(other) => panic!("expected a configuration error saying {says:?}: {other}"),
            Ok(pool) => panic!("started a pool of {} workers: {says:?}", pool.workers()),
        }
    }
}
