//! The library as a Rust program uses it (issue 18): borrowed input, per-worker
//! state, the async face, one vocabulary.

mod support;

use std::time::Duration;

use pstream::Codec;
use pstream_examples::{lookup, upper, LOAD_LOG_ENV, WORDS_ENV};
use support::*;

/// A local `Vec<String>`, borrowed (not moved, not `'static`) by the job that reads
/// it: ordered, unordered and raw, and the data is used again afterwards.
#[test]
fn a_job_reads_a_borrowed_local_vec() {
    let _watchdog = watchdog("a_job_reads_a_borrowed_local_vec", Duration::from_secs(240));
    let pool = builder().workers(2).window(7).build().unwrap();
    let words: Vec<String> = (0..500).map(|i| format!("word{i}-ü")).collect();
    let expected: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();

    let got: Vec<String> = pool
        .map(upper, words.iter().cloned())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, expected);

    let mut unordered: Vec<(u64, String)> = pool
        .map_unordered(upper, words.iter().cloned())
        .unwrap()
        .indexed()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    let unordered: Vec<String> = unordered.into_iter().map(|(_, s)| s).collect();
    assert_eq!(unordered, expected);

    // Raw items borrowed as `&str`: lines of text, results as text.
    let mut raw = pool
        .map_raw(
            "upper",
            Codec::Lines,
            true,
            words.iter().map(String::as_str),
        )
        .unwrap();
    let mut n = 0;
    while let Some((index, result)) = raw.next_raw() {
        assert_eq!(result.unwrap(), expected[index as usize].as_bytes());
        n += 1;
    }
    assert_eq!(n, words.len());
    drop(raw);
    // Still ours.
    assert_eq!(words.len(), 500);
}

/// The pids in the load log, one line per loading of the word list.
fn loads(log: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a pid per line"))
        .collect()
}

/// A word list file and a load log in a fresh directory.
fn word_files(words: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("words.txt");
    std::fs::write(&list, words).unwrap();
    let log = dir.path().join("loads.log");
    (dir, list, log)
}

/// The state is built once in each worker process that computes an item, and
/// lives as long as that process: with workers recycled every 50 items, each of the
/// many processes loaded the list exactly once.
#[test]
fn per_worker_state_is_built_once_per_worker_across_recycles() {
    let _watchdog = watchdog(
        "per_worker_state_is_built_once_per_worker_across_recycles",
        Duration::from_secs(240),
    );
    let (_dir, list, log) = word_files("cat\ndog\n");
    let pool = builder()
        .workers(2)
        .max_items_per_worker(50)
        .max_batch(10)
        .env(WORDS_ENV, &list)
        .env(LOAD_LOG_ENV, &log)
        .build()
        .unwrap();
    let words: Vec<String> = (0..600)
        .map(|i| ["cat", "cow", "dog"][i % 3].to_string())
        .collect();
    let mut served = std::collections::BTreeSet::new();
    for (i, result) in pool.map(lookup, words.iter().cloned()).unwrap().enumerate() {
        let found = result.unwrap();
        assert_eq!(found.known, i % 3 != 1, "item {i}");
        served.insert(found.worker);
    }
    let mut loaded = loads(&log);
    let n = loaded.len();
    loaded.sort_unstable();
    loaded.dedup();
    assert_eq!(
        loaded.len(),
        n,
        "a worker loaded the list twice: {loaded:?}"
    );
    let loaded: std::collections::BTreeSet<u32> = loaded.into_iter().collect();
    // Every process that computed an item loaded the list, and only once; a
    // worker that never got an item (started as the job ended) loaded nothing.
    assert!(
        served.is_subset(&loaded),
        "{served:?} served, {loaded:?} loaded"
    );
    assert!(
        served.len() >= 600 / 50,
        "workers were recycled: {served:?}"
    );
    assert!(pool.stats().spawned >= served.len() as u64);
}

/// A loader that fails ends the job with a pool error naming the worker and the
/// loader's message; no worker is restarted for it (each loaded once, at most), and
/// the same workers still serve other functions.
#[test]
fn a_failing_state_initialiser_is_a_pool_error_not_a_crash_loop() {
    let _watchdog = watchdog(
        "a_failing_state_initialiser_is_a_pool_error_not_a_crash_loop",
        Duration::from_secs(240),
    );
    let (dir, _list, log) = word_files("");
    let missing = dir.path().join("no-such-list.txt");
    let pool = builder()
        .workers(2)
        .env(WORDS_ENV, &missing)
        .env(LOAD_LOG_ENV, &log)
        .build()
        .unwrap();
    let workers = pool.worker_pids();
    let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
    let mut results = pool.map(lookup, words.iter().cloned()).unwrap();
    let first = results.next().expect("one item: the job's end");
    let error = first.unwrap_err();
    assert_eq!(error.kind.name(), "aborted", "{error}");
    assert!(results.next().is_none(), "the job ended");
    let pool_error = results.pool_error().expect("a pool error").to_string();
    match results.pool_error() {
        Some(pstream::PoolError::WorkerState { pid, message }) => {
            assert!(workers.contains(pid), "{pid} is not one of {workers:?}");
            assert!(
                message.contains("Words")
                    && message.contains("failed to initialise")
                    && message.contains(&format!(
                        "read the word list {}: No such file or directory",
                        missing.display()
                    )),
                "{message}"
            );
        }
        other => panic!("not a state error: {other:?}"),
    }
    assert!(pool_error.starts_with("worker "), "{pool_error}");
    drop(results);
    // No respawn: the workers are the first two, each tried to load at most once.
    assert_eq!(pool.stats().spawned, 2);
    assert_eq!(pool.worker_pids(), workers);
    let mut loaded = loads(&log);
    assert!(!loaded.is_empty() && loaded.len() <= 2, "{loaded:?}");
    loaded.dedup();
    assert!(loaded.iter().all(|p| workers.contains(p)), "{loaded:?}");
    // The workers still serve the functions that need no state.
    let upper_words: Vec<String> = pool
        .map(upper, words.iter().take(100).cloned())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(upper_words[99], "W99");
}

/// A loader that panics: the same, with the panic's message and where it was.
#[test]
fn a_panicking_state_initialiser_is_a_pool_error_with_the_panic_message() {
    let _watchdog = watchdog(
        "a_panicking_state_initialiser_is_a_pool_error_with_the_panic_message",
        Duration::from_secs(240),
    );
    let (_dir, list, _log) = word_files("  \n");
    let pool = builder().workers(2).env(WORDS_ENV, &list).build().unwrap();
    let mut results = pool.map(lookup, ["cat".to_string()]).unwrap();
    assert!(results.next().unwrap().is_err());
    assert!(results.next().is_none());
    let error = results.pool_error().expect("a pool error").to_string();
    assert!(
        error.contains("panicked while initialising")
            && error.contains(&format!("the word list {} is empty", list.display()))
            && error.contains("words.rs"),
        "{error}"
    );
    assert_eq!(pool.stats().spawned, 2);
}

/// The async face on a current-thread runtime: the input comes from a channel that
/// another task on the same runtime fills one item at a time, each only after the
/// consumer has awaited the result of the one before. Were the runtime's only
/// thread blocked while results are awaited (or while the input is read), that
/// task could never send, and the test would hang (the watchdog ends it).
#[test]
fn results_are_awaited_on_a_current_thread_runtime_while_other_tasks_run() {
    use futures::StreamExt;
    use pstream::stream::{IntoResultStream, MapStream};
    use pstream_examples::double;

    let _watchdog = watchdog(
        "results_are_awaited_on_a_current_thread_runtime_while_other_tasks_run",
        Duration::from_secs(120),
    );
    let pool = builder().workers(2).build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (items, items_rx) = tokio::sync::mpsc::channel::<i64>(1);
        let (acks, mut acks_rx) = tokio::sync::mpsc::channel::<i64>(1);
        let producer = tokio::spawn(async move {
            for i in 0..50i64 {
                items.send(i).await.unwrap();
                // The next item only once its result was seen.
                assert_eq!(acks_rx.recv().await, Some(i * 2));
            }
        });
        let input = futures::stream::unfold(items_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut results = pool.map_stream(double, input).unwrap();
        for i in 0..50i64 {
            let result = results.next().await.expect("a result").unwrap();
            assert_eq!(result, i * 2);
            acks.send(result).await.unwrap();
        }
        producer.await.unwrap();
        // The producer is done and its sender dropped: the input ends, so do the
        // results.
        assert!(results.next().await.is_none());
        assert!(results.pool_error().is_none());

        // Results of an iterator's items, while a ticker task counts its turns: it
        // runs between results.
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ticker = {
            let ticks = std::sync::Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut results = pool
            .map(double, 0..20_000i64)
            .unwrap()
            .into_stream()
            .unwrap();
        let mut n = 0i64;
        while let Some(result) = results.next().await {
            assert_eq!(result.unwrap(), n * 2);
            n += 1;
        }
        assert_eq!(n, 20_000);
        ticker.abort();
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
    });
}

/// Dropping the stream part way cancels the job, and the pool runs the next one.
#[test]
fn dropping_a_result_stream_cancels_its_job() {
    use futures::StreamExt;
    use pstream::stream::IntoResultStream;
    use pstream_examples::double;

    let _watchdog = watchdog(
        "dropping_a_result_stream_cancels_its_job",
        Duration::from_secs(120),
    );
    let pool = builder().workers(2).window(100).build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut results = pool.map(double, 0i64..).unwrap().into_stream().unwrap();
        for i in 0..10 {
            assert_eq!(results.next().await.unwrap().unwrap(), i * 2);
        }
        drop(results);
        let mut again = pool.map(double, 0..5i64).unwrap().into_stream().unwrap();
        let mut got = Vec::new();
        while let Some(r) = again.next().await {
            got.push(r.unwrap());
        }
        assert_eq!(got, [0, 2, 4, 6, 8]);
    });
}

/// Every error's message carries its cause: a worker program that does not exist
/// says so in the pool error's own text, once, as the launcher shows it too.
#[test]
fn errors_say_their_cause() {
    let _watchdog = watchdog("errors_say_their_cause", Duration::from_secs(120));
    let err = pstream::ProcessPool::builder()
        .workers(1)
        .program("/nonexistent")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "start worker program /nonexistent: No such file or directory (os error 2)"
    );
    // Its source is the io error, for a program that wants to look at it.
    let source = std::error::Error::source(&err).expect("the io error");
    assert_eq!(source.to_string(), "No such file or directory (os error 2)");
}
