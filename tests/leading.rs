//! Who drives the pool: a consumer waiting for results steps the engine itself, and
//! the supervisor thread takes over whenever no consumer does. These tests check
//! that the hand-over loses nothing: several consumers at once, a consumer that
//! stops reading while a worker dies, inputs that block or panic.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pstream::{ItemErrorKind, PoolError};
use pstream_examples::{double, slow_double};
use support::*;

#[test]
fn concurrent_jobs_on_one_pool_each_get_exactly_their_results() {
    let _watchdog = watchdog(
        "concurrent_jobs_on_one_pool_each_get_exactly_their_results",
        Duration::from_secs(240),
    );
    for input_thread in [false, true] {
        let pool = builder().workers(2).window(1000).build().unwrap();
        let n = scale(200_000) as i64;
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let pool = &pool;
                s.spawn(move || {
                    let offset = t * 1_000_000_000;
                    let mut expected = offset;
                    let input: Box<dyn Iterator<Item = i64> + Send> = if t % 2 == 0 {
                        Box::new(offset..offset + n)
                    } else {
                        Box::new((offset..offset + n).collect::<Vec<_>>().into_iter())
                    };
                    let results = if input_thread {
                        pool.input_thread().map(double, input).unwrap()
                    } else {
                        pool.map(double, input).unwrap()
                    };
                    for r in results {
                        assert_eq!(r.unwrap(), expected * 2, "job {t}");
                        expected += 1;
                    }
                    assert_eq!(expected, offset + n, "job {t} ended early");
                });
            }
        });
    }
}

#[test]
fn a_consumer_that_stops_reading_does_not_stop_the_supervision() {
    let _watchdog = watchdog(
        "a_consumer_that_stops_reading_does_not_stop_the_supervision",
        Duration::from_secs(240),
    );
    // The consumer takes one result, then does something else while a worker is
    // killed: the supervisor thread must notice, start a replacement and requeue the
    // dead worker's batch, with nobody calling `next`.
    let pool = builder().workers(2).build().unwrap();
    let n = scale(20_000) as i64;
    let mut results = pool.map(slow_double, 0..n).unwrap();
    assert_eq!(results.next().unwrap().unwrap(), 0);
    let ready = pool.stats().ready;
    let victim = pool.worker_pids()[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    wait_for("a replacement worker", || pool.stats().ready > ready);
    assert!(!pool.worker_pids().contains(&victim));
    let mut expected = 1;
    for r in results.by_ref() {
        assert_eq!(r.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
    assert_eq!(pool.stats().crashes, 1);
}

#[test]
fn with_an_input_thread_results_flow_while_the_input_blocks() {
    let _watchdog = watchdog(
        "with_an_input_thread_results_flow_while_the_input_blocks",
        Duration::from_secs(240),
    );
    let pool = builder().workers(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<i64>();
    let mut results = pool.input_thread().map(double, rx).unwrap();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    // The input iterator now blocks in `recv`; the first ten results come anyway.
    for i in 0..10 {
        assert_eq!(results.next().unwrap().unwrap(), i * 2);
    }
    tx.send(10).unwrap();
    drop(tx);
    assert_eq!(results.next().unwrap().unwrap(), 20);
    assert!(results.next().is_none());
}

#[test]
fn an_input_that_panics_ends_the_job_with_an_input_error_and_nothing_before_is_lost() {
    let _watchdog = watchdog(
        "an_input_that_panics_ends_the_job_with_an_input_error_and_nothing_before_is_lost",
        Duration::from_secs(240),
    );
    for input_thread in [false, true] {
        let pool = builder().workers(2).window(100).build().unwrap();
        let input = (0..1000i64).inspect(|&i| assert!(i != 500, "input broke at 500"));
        let mut results = if input_thread {
            pool.input_thread().map(double, input).unwrap()
        } else {
            pool.map(double, input).unwrap()
        };
        let mut expected = 0;
        let error = loop {
            match results.next().expect("an error before the end") {
                Ok(v) => {
                    assert_eq!(v, expected * 2);
                    expected += 1;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(expected, 500, "every item before the panic has its result");
        assert!(
            matches!(error.kind, ItemErrorKind::Aborted { .. }),
            "{error}"
        );
        match results.pool_error() {
            Some(PoolError::Input(message)) => {
                assert!(message.contains("input broke at 500"), "{message}")
            }
            other => panic!("expected an input error, got {other:?}"),
        }
        assert!(results.next().is_none());
        // The pool serves the next job.
        let again: Vec<i64> = pool
            .map(double, 0..3)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(again, [0, 2, 4]);
    }
}

#[test]
fn dropping_the_pool_ends_the_stream_another_thread_is_leading() {
    let _watchdog = watchdog(
        "dropping_the_pool_ends_the_stream_another_thread_is_leading",
        Duration::from_secs(240),
    );
    // The consumer's thread leads the engine, mostly blocked in its poll waiting
    // for slow items, when another thread drops the pool: the drop must not
    // deadlock on the lead, the stream must end with the pool's error, and every
    // worker must be gone.
    let pool = builder().workers(2).build().unwrap();
    let pids = pool.worker_pids();
    let mut results = pool.map(slow_double, 0i64..).unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        assert_eq!(results.next().unwrap().unwrap(), 0);
        started_tx.send(()).unwrap();
        let mut last_error = None;
        for (index, r) in (1i64..).zip(results.by_ref()) {
            match r {
                Ok(v) => assert_eq!(v, index * 2),
                Err(e) => last_error = Some(e),
            }
        }
        last_error
    });
    started.recv().unwrap();
    drop(pool);
    let last = consumer
        .join()
        .unwrap()
        .expect("the stream ends with an error");
    assert_eq!(last.kind.name(), "aborted", "{last}");
    assert_gone(&pids);
}

/// CPU time (user + system) this thread has used.
fn thread_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).unwrap();
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    d(u.user_time()) + d(u.system_time())
}

/// Run `misbehave` over `inputs` on this thread: each item's outcome (its error's
/// kind name), the CPU this thread (the consumer, leading the engine) used, and
/// the time it took.
fn outcomes_and_cpu(
    pool: &pstream::ProcessPool,
    inputs: Vec<String>,
) -> (Vec<Result<(), &'static str>>, Duration, Duration) {
    let started = std::time::Instant::now();
    let cpu = thread_cpu();
    let mut results = pool
        .map_raw("misbehave", pstream::Codec::Json, true, inputs)
        .unwrap();
    let mut outcomes = Vec::new();
    while let Some((_, r)) = results.next_raw() {
        outcomes.push(r.map(|_| ()).map_err(|e| e.kind.name()));
    }
    (outcomes, thread_cpu() - cpu, started.elapsed())
}

#[test]
fn a_consumer_waiting_on_a_long_item_sleeps_instead_of_spinning() {
    let _watchdog = watchdog(
        "a_consumer_waiting_on_a_long_item_sleeps_instead_of_spinning",
        Duration::from_secs(120),
    );
    // The longest spin there is, and an item that hangs until its time limit: the
    // consumer leads the engine all that time, woken by the worker's progress
    // reports every few milliseconds. Fast items first, so that the waits are
    // back to back (and polled) when the hang begins.
    let pool = builder()
        .workers(1)
        .spin(Duration::from_millis(5))
        .item_timeout(Duration::from_secs(2))
        .retries(0)
        .build()
        .unwrap();
    let sum: i64 = pool
        .map(double, 0..20_000i64)
        .unwrap()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(sum, 19_999 * 20_000);
    let inputs = vec![
        r#"{"value":1,"fault":"none"}"#.to_string(),
        r#"{"value":2,"fault":"hang"}"#.to_string(),
    ];
    let (outcomes, cpu, wall) = outcomes_and_cpu(&pool, inputs);
    assert_eq!(outcomes, [Ok(()), Err("timed_out")]);
    // Polling at every progress report cost 0.6 s of CPU in 2 s (seen with the
    // engine made to poll after every wait); one poll, then sleeps, ~30 ms. Load
    // only lowers it.
    assert!(
        cpu < wall / 10,
        "the consumer used {cpu:?} of CPU in {wall:?} waiting for a hung item"
    );
}

#[test]
fn a_spin_longer_than_five_milliseconds_is_refused() {
    let err = builder()
        .workers(1)
        .spin(Duration::from_millis(6))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("spin"), "{err}");
}

#[test]
fn a_consumer_waiting_on_many_hung_workers_sleeps_between_their_progress_reports() {
    let _watchdog = watchdog(
        "a_consumer_waiting_on_many_hung_workers_sleeps_between_their_progress_reports",
        Duration::from_secs(120),
    );
    // A hung worker repeats its progress report every 8 flush intervals (16 ms):
    // 16 of them, one item each, report about once a millisecond between them,
    // so the consumer's waits end within the spin although no result
    // comes for 2 s. A report is no result: it must not make the consumer poll.
    let n = 16;
    let pool = builder()
        .workers(n)
        .max_batch(1)
        .spin(Duration::from_millis(5))
        .item_timeout(Duration::from_secs(2))
        .retries(0)
        .build()
        .unwrap();
    let inputs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"value":{i},"fault":"hang"}}"#))
        .collect();
    let (outcomes, cpu, wall) = outcomes_and_cpu(&pool, inputs);
    assert_eq!(outcomes, vec![Err("timed_out"); n]);
    // Polling at each report cost 1.0 s of CPU in 2.1 s (seen before progress
    // reports were told apart from results); not polling, 0.1 s, as with no spin.
    assert!(
        cpu < wall / 10,
        "the consumer used {cpu:?} of CPU in {wall:?} waiting for {n} hung workers"
    );
}
