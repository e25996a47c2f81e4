//! One test suite, run against both executors: the same test functions, generic over
//! [`Executor`], instantiated by `executor_suite!` for threads and for processes (the
//! example plugin as workers). Then a few tests of what only one of them does.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pstream::{Executor, Function, ItemErrorKind, ProcessExecutor, ThreadExecutor};
use pstream_examples::double;
use support::*;

/// What the sequential map gives for `double`, as the executors report it.
fn sequential(data: impl Iterator<Item = i64>) -> Vec<Result<i64, String>> {
    data.map(|x| double.call(x)).collect()
}

/// An input that counts how many items were pulled from it.
fn counted(
    data: impl Iterator<Item = i64> + Send + 'static,
) -> (Arc<AtomicU64>, impl Iterator<Item = i64> + Send + 'static) {
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let input = data.inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    (pulled, input)
}

/// The test functions, generic over the executor.
mod suite {
    use super::*;

    pub fn ten_thousand_items_in_order<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        let n = scale(20_000) as i64;
        let mut expected = 0i64;
        for result in ex.execute(double, 0..n) {
            assert_eq!(result, Ok(expected * 2));
            expected += 1;
        }
        assert_eq!(expected, n);
    }

    pub fn results_identical_to_the_sequential_map<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        // Negative, positive, and values whose double overflows, mixed.
        let data: Vec<i64> = (0..scale(10_000) as i64)
            .map(|i| match i % 7 {
                0 => i64::MAX - i,
                1 => -i * 1_000_003,
                3 => i64::MIN + i,
                _ => i * 31,
            })
            .collect();
        let got: Vec<Result<i64, String>> = ex
            .execute(double, data.clone())
            .map(|r| r.map_err(|e| failed_message(&e.kind)))
            .collect();
        assert_eq!(got, sequential(data.iter().copied()));

        // Unordered: the same multiset, each index exactly once.
        let mut got: Vec<(u64, Result<i64, String>)> = ex
            .execute_unordered(double, data.clone())
            .indexed()
            .map(|(i, r)| (i, r.map_err(|e| failed_message(&e.kind))))
            .collect();
        got.sort_by_key(|&(i, _)| i);
        let want: Vec<(u64, Result<i64, String>)> = sequential(data.iter().copied())
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect();
        assert_eq!(got, want);
    }

    pub fn fifty_thousand_item_generator<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        let n = scale(50_000);
        // A generator: items made one by one as they are pulled, never a collection.
        let mut state = 0i64;
        let generator = std::iter::from_fn(move || {
            state += 1;
            Some(state * 3)
        })
        .take(n as usize);
        let mut count = 0u64;
        let mut sum = 0i64;
        for (i, result) in ex.execute(double, generator).enumerate() {
            let value = result.unwrap();
            assert_eq!(value, (i as i64 + 1) * 6);
            sum += value;
            count += 1;
        }
        assert_eq!(count, n);
        assert_eq!(sum, 6 * (n * (n + 1) / 2) as i64);
    }

    pub fn infinite_generator_abandoned_with_break<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        let (pulled, input) = counted(0i64..);
        let take = 1_000u64;
        let mut consumed = 0u64;
        for result in ex.execute(double, input) {
            assert_eq!(result, Ok(2 * consumed as i64));
            consumed += 1;
            if consumed == take {
                break;
            }
        }
        // The job is cancelled: the reader holds no permit to read more.
        let bound = take + ex.max_memory_items() as u64;
        assert!(pulled.load(Ordering::SeqCst) <= bound);
        // The executor runs the next job; the abandoned one pulled nothing more.
        let sum: i64 = ex.execute(double, 0..100i64).map(Result::unwrap).sum();
        assert_eq!(sum, 99 * 100);
        let after = pulled.load(Ordering::SeqCst);
        assert!(after <= bound, "pulled {after} items, more than {bound}");
    }

    /// Never more than `max_memory_items` items pulled ahead of the consumer, checked
    /// at every step, with a consumer that is slower than the workers (it does the
    /// work of a thousand items between two results, now and then).
    pub fn items_ahead_of_the_consumer_stay_within_the_bound<
        E: Executor<i64, Function<i64, i64>>,
    >(
        ex: E,
    ) {
        let max = ex.max_memory_items() as u64;
        let n = scale(20_000).max(3 * max.min(1_000_000));
        let (pulled, input) = counted(0..n as i64);
        let mut results = ex.execute(double, input);
        let mut consumed = 0u64;
        let mut peak = 0u64;
        while let Some(result) = results.next() {
            assert_eq!(result, Ok(2 * consumed as i64));
            consumed += 1;
            let ahead = pulled.load(Ordering::SeqCst) - consumed;
            peak = peak.max(ahead);
            assert!(ahead <= max, "{ahead} items pulled ahead, max {max}");
            assert!(results.in_flight() as u64 <= max);
            if consumed % 997 == 0 {
                // A slow consumer: the readers must wait, not read on.
                std::hint::black_box((0..1_000i64).filter(|&x| double.call(x).is_ok()).count());
            }
        }
        assert_eq!(consumed, n);
        eprintln!("max_memory_items {max}: at most {peak} items pulled ahead");
    }

    pub fn max_memory_items_honoured<E: Executor<i64, Function<i64, i64>>>(
        ex: E,
        max_memory_items: usize,
    ) {
        assert_eq!(ex.max_memory_items(), max_memory_items);
        let n = scale(5_000) as i64;
        let (pulled, input) = counted(0..n);
        let mut consumed = 0u64;
        for result in ex.execute(double, input) {
            assert_eq!(result, Ok(2 * consumed as i64));
            consumed += 1;
            let ahead = pulled.load(Ordering::SeqCst) - consumed;
            assert!(ahead <= max_memory_items as u64, "{ahead} items ahead");
        }
        assert_eq!(consumed, n as u64);
    }

    pub fn a_failing_item_does_not_stop_the_stream<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        let data = vec![1, 2, i64::MAX, 4, i64::MIN, 6];
        let results: Vec<_> = ex.execute(double, data).collect();
        assert_eq!(results.len(), 6);
        assert_eq!(results[0], Ok(2));
        assert_eq!(results[1], Ok(4));
        let err = results[2].as_ref().unwrap_err();
        assert_eq!(err.index, 2);
        assert!(
            matches!(&err.kind, ItemErrorKind::Failed { message } if message.contains("overflows")),
            "{err}"
        );
        assert_eq!(results[3], Ok(8));
        assert_eq!(results[4].as_ref().unwrap_err().index, 4);
        assert_eq!(results[5], Ok(12));
    }

    pub fn empty_input<E: Executor<i64, Function<i64, i64>>>(ex: E) {
        assert_eq!(ex.execute(double, Vec::new()).count(), 0);
        assert_eq!(ex.execute_unordered(double, Vec::new()).count(), 0);
    }
}

fn failed_message(kind: &ItemErrorKind) -> String {
    match kind {
        ItemErrorKind::Failed { message } => message.clone(),
        other => panic!("expected a failed item, got {other}"),
    }
}

/// Instantiates every test of `suite` for one executor. `$make` builds it from
/// `Option<max_memory_items>` (None: the default); `$default` is that default.
macro_rules! executor_suite {
    ($module:ident, $make:expr, $default:expr) => {
        mod $module {
            use super::*;

            fn make(max_memory_items: Option<usize>) -> impl Executor<i64, Function<i64, i64>> {
                ($make)(max_memory_items)
            }

            #[test]
            fn ten_thousand_items_in_order() {
                suite::ten_thousand_items_in_order(make(None));
            }

            #[test]
            fn results_identical_to_the_sequential_map() {
                suite::results_identical_to_the_sequential_map(make(None));
            }

            #[test]
            fn fifty_thousand_item_generator() {
                suite::fifty_thousand_item_generator(make(None));
            }

            #[test]
            fn infinite_generator_abandoned_with_break() {
                suite::infinite_generator_abandoned_with_break(make(Some(100)));
                suite::infinite_generator_abandoned_with_break(make(None));
            }

            #[test]
            fn items_ahead_of_the_consumer_stay_within_the_bound() {
                suite::items_ahead_of_the_consumer_stay_within_the_bound(make(Some(64)));
                suite::items_ahead_of_the_consumer_stay_within_the_bound(make(None));
            }

            #[test]
            fn max_memory_items_of_one() {
                suite::max_memory_items_honoured(make(Some(1)), 1);
            }

            #[test]
            fn max_memory_items_of_ten() {
                suite::max_memory_items_honoured(make(Some(10)), 10);
            }

            #[test]
            fn max_memory_items_default() {
                suite::max_memory_items_honoured(make(None), $default);
            }

            #[test]
            fn max_memory_items_very_large() {
                suite::max_memory_items_honoured(make(Some(100_000_000)), 100_000_000);
            }

            #[test]
            fn a_failing_item_does_not_stop_the_stream() {
                suite::a_failing_item_does_not_stop_the_stream(make(None));
            }

            #[test]
            fn empty_input() {
                suite::empty_input(make(None));
            }
        }
    };
}

executor_suite!(
    threads,
    |max_memory_items: Option<usize>| {
        let builder = ThreadExecutor::builder().max_workers(2);
        match max_memory_items {
            Some(n) => builder.max_memory_items(n),
            None => builder,
        }
        .build()
    },
    ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS
);

executor_suite!(
    processes,
    |max_memory_items: Option<usize>| {
        let builder = ProcessExecutor::builder().pool(builder()).max_workers(2);
        match max_memory_items {
            Some(n) => builder.max_memory_items(n),
            None => builder,
        }
        .build()
        .expect("start a process executor of the example plugin")
    },
    ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS
);

#[test]
fn defaults_are_the_seeds() {
    assert_eq!(ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS, 10_000);
    assert_eq!(ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS, 5_000);
    assert_eq!(ThreadExecutor::new().max_memory_items(), 10_000);
    let ex = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(1)
        .build()
        .unwrap();
    assert_eq!(ex.max_memory_items(), 5_000);
}

#[test]
fn threads_take_closures() {
    let ex = ThreadExecutor::builder().max_workers(3).build();
    let words = ["a", "bb", "ccc"].map(String::from);
    let lengths: Vec<usize> = ex
        .execute(|s: String| s.len(), words)
        .map(Result::unwrap)
        .collect();
    assert_eq!(lengths, [1, 2, 3]);
    // A closure's own Result is its value, not an item error.
    let parsed: Vec<_> = ex
        .execute(|s: &'static str| s.parse::<u8>().is_ok(), ["1", "x"])
        .map(Result::unwrap)
        .collect();
    assert_eq!(parsed, [true, false]);
}

#[test]
fn threads_catch_a_panic_per_item() {
    let ex = ThreadExecutor::builder().max_workers(2).build();
    let results: Vec<_> = ex
        .execute(
            |x: u32| {
                if x % 100 == 42 {
                    panic!("no {x} here");
                }
                x + 1
            },
            0..1_000u32,
        )
        .collect();
    assert_eq!(results.len(), 1_000);
    for (i, r) in results.iter().enumerate() {
        if i % 100 == 42 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_panic());
            assert_eq!(e.index, i as u64);
            match &e.kind {
                ItemErrorKind::Panicked { message, location } => {
                    assert_eq!(message, &format!("no {i} here"));
                    let location = location.as_deref().expect("a location");
                    assert!(location.contains("executors.rs"), "{location}");
                }
                other => panic!("{other}"),
            }
        } else {
            assert_eq!(r, &Ok(i as u32 + 1));
        }
    }
}

#[test]
fn threads_name_the_panic_that_ended_the_item_not_an_earlier_one() {
    // Item 3 catches a panic of its own and succeeds; item 7 is ended by a panic
    // passed on with `resume_unwind`, which the panic hook never sees. Item 7's
    // error is its own message, without item 3's.
    let ex = ThreadExecutor::builder().max_workers(1).build();
    let results: Vec<_> = ex
        .execute(
            |x: u32| {
                if x == 3 {
                    let caught = std::panic::catch_unwind(|| panic!("caught inside"));
                    assert!(caught.is_err());
                }
                if x == 7 {
                    std::panic::resume_unwind(Box::new("passed on"));
                }
                x
            },
            0..10u32,
        )
        .collect();
    assert_eq!(results[3], Ok(3));
    let e = results[7].as_ref().unwrap_err();
    match &e.kind {
        ItemErrorKind::Panicked { message, location } => {
            assert_eq!(message, "passed on");
            assert_eq!(location, &None);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn threads_report_a_panicking_input_after_its_items() {
    let ex = ThreadExecutor::builder().max_workers(2).build();
    let input = (0..10u32).map(|x| if x == 7 { panic!("input broke") } else { x });
    let results: Vec<_> = ex.execute(|x: u32| x, input).collect();
    assert_eq!(results.len(), 8);
    for (i, r) in results[..7].iter().enumerate() {
        assert_eq!(r, &Ok(i as u32));
    }
    let e = results[7].as_ref().unwrap_err();
    assert_eq!(e.index, 7);
    assert!(
        matches!(&e.kind, ItemErrorKind::Aborted { reason } if reason.contains("input broke")),
        "{e}"
    );
}

#[test]
fn threads_hand_out_each_item_of_a_slow_input_before_reading_the_next() {
    // Item i+1 comes only once the consumer has the result of item i: an executor
    // that held an item back to fill its batch would wait forever. The input gives
    // up after 30 s, which ends the stream with an `Aborted` item.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let mut next = 0u64;
    let input = std::iter::from_fn(move || {
        if next > 0 {
            go_rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the result of the item before was not handed out");
        }
        next += 1;
        (next <= 200).then_some(next)
    });
    let ex = ThreadExecutor::builder().max_workers(2).build();
    let mut got = Vec::new();
    for r in ex.execute(|x: u64| x * 3, input) {
        got.push(r.unwrap());
        let _ = go_tx.send(());
    }
    assert_eq!(got, (1..=200).map(|x| x * 3).collect::<Vec<_>>());
}

#[test]
fn threads_do_not_sit_on_an_item_while_the_input_waits_for_its_result() {
    // A work queue that results feed (a crawler): items 0 and 1 are queued; only
    // item 1's result queues item 2. Item 0 is computed until the reader has item 1
    // in hand and is waiting for the queue; a reader that kept item 1 to itself
    // while it waited would wait forever (the queue gives up after 30 s, which
    // ends the stream with an `Aborted` item).
    let waiting = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    tx.send(0).unwrap();
    tx.send(1).unwrap();
    let signal = Arc::clone(&waiting);
    let input = std::iter::from_fn(move || match rx.try_recv() {
        Ok(item) => Some(item),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
        Err(std::sync::mpsc::TryRecvError::Empty) => {
            *signal.0.lock().unwrap() = true;
            signal.1.notify_all();
            match rx.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(item) => Some(item),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
                Err(e) => panic!("the queue got nothing more: {e}"),
            }
        }
    });
    let gate = Arc::clone(&waiting);
    let f = move |x: u64| {
        if x == 0 {
            let (lock, cond) = &*gate;
            let guard = lock.lock().unwrap();
            let (_guard, timeout) = cond
                .wait_timeout_while(guard, std::time::Duration::from_secs(30), |w| !*w)
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "the reader never waited for the queue"
            );
        }
        x * 10
    };
    let ex = ThreadExecutor::builder().max_workers(2).build();
    let mut tx = Some(tx);
    let mut got = Vec::new();
    for r in ex.execute_unordered(f, input) {
        let v = r.unwrap();
        got.push(v);
        match v {
            10 => tx.as_ref().unwrap().send(2).unwrap(),
            20 => tx = None, // the queue is done: the input ends
            _ => {}
        }
    }
    got.sort_unstable();
    assert_eq!(got, [0, 10, 20]);
}

#[test]
fn threads_report_an_input_whose_size_hint_panics() {
    // `size_hint` is the input's code too: a panic in it ends the input like one in
    // `next`, after the items read before it, instead of killing the thread that
    // holds the input (its permits and items lost, the stream waiting forever).
    struct Brittle(u32);
    impl Iterator for Brittle {
        type Item = u32;
        fn next(&mut self) -> Option<u32> {
            self.0 += 1;
            (self.0 <= 100).then_some(self.0)
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            panic!("size_hint broke")
        }
    }
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // One thread: after its second item it has nothing else running, and asks
        // the input whether the next read may block.
        let ex = ThreadExecutor::builder().max_workers(1).build();
        let _ = done_tx.send(ex.execute(|x: u32| x, Brittle(0)).collect::<Vec<_>>());
    });
    let results = done
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the stream never ended");
    let (last, items) = results.split_last().unwrap();
    assert!(!items.is_empty());
    for (i, r) in items.iter().enumerate() {
        assert_eq!(r, &Ok(i as u32 + 1));
    }
    let e = last.as_ref().unwrap_err();
    assert_eq!(e.index, items.len() as u64);
    assert!(
        matches!(&e.kind, ItemErrorKind::Aborted { reason } if reason.contains("size_hint broke")),
        "{e}"
    );
}

#[test]
fn threads_and_processes_agree_on_sha256() {
    use pstream_examples::{sha256_bytes, Blob};
    let blobs = |n: u64| (0..n).map(|i| Blob(vec![(i % 251) as u8; 1024 + i as usize % 7]));
    let n = scale(2_000);
    let threads: Vec<_> = ThreadExecutor::builder()
        .max_workers(2)
        .build()
        .execute(sha256_bytes, blobs(n))
        .map(Result::unwrap)
        .collect();
    let ex = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(2)
        .build()
        .unwrap();
    let processes: Vec<_> = ex
        .execute(sha256_bytes, blobs(n))
        .map(Result::unwrap)
        .collect();
    assert_eq!(threads.len() as u64, n);
    assert_eq!(threads, processes);
}

pstream::function! {
    /// Defined here, so the plugin's workers do not serve it.
    fn not_in_the_plugin(x: i64) -> i64 { x }
}

#[test]
fn a_pool_error_ends_the_stream_with_one_aborted_item() {
    let ex = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(1)
        .build()
        .unwrap();
    let mut results = ex.execute(not_in_the_plugin, 0..10i64);
    let e = results.next().unwrap().unwrap_err();
    assert!(matches!(e.kind, ItemErrorKind::Aborted { .. }), "{e}");
    assert!(
        matches!(
            results.pool_error(),
            Some(pstream::PoolError::UnknownFunction { .. })
        ),
        "{:?}",
        results.pool_error()
    );
    assert!(results.next().is_none());
    // The same handle runs on threads: its body is linked into this binary.
    let sum: i64 = ThreadExecutor::new()
        .execute(not_in_the_plugin, 0..10i64)
        .map(Result::unwrap)
        .sum();
    assert_eq!(sum, 45);
}

#[test]
fn a_process_executor_dropped_before_its_results_serves_them_all() {
    // The results hold the pool: `ProcessExecutor::new()?.execute(f, data)` with a
    // temporary executor works, and the workers go when the results do.
    let ex = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(2)
        .build()
        .unwrap();
    let pids = ex.pool().worker_pids();
    let results = ex.execute(double, 0..20_000i64);
    // While results are alive, the pool cannot be taken out of the executor.
    let ex = ex.into_pool().expect_err("the results hold the pool");
    drop(ex);
    let got: Vec<i64> = results.map(Result::unwrap).collect();
    assert_eq!(got, (0..20_000).map(|x| x * 2).collect::<Vec<_>>());
    assert_gone(&pids);

    let got: Vec<i64> = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(1)
        .build()
        .unwrap()
        .execute(double, 0..100i64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..100).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn dropping_a_process_executor_leaves_no_worker() {
    let ex = ProcessExecutor::builder()
        .pool(builder())
        .max_workers(2)
        .build()
        .unwrap();
    let pids = ex.pool().worker_pids();
    assert_eq!(pids.len(), 2);
    let first: Vec<_> = ex.execute(double, 0..10i64).take(3).collect();
    assert_eq!(first, [Ok(0), Ok(2), Ok(4)]);
    // No results alive: the pool comes out whole, and dropping it reaps its workers.
    let pool = ex.into_pool().expect("no results hold the pool");
    drop(pool);
    assert_gone(&pids);
}
