//! Crash isolation over real processes: a worker that dies or hangs costs exactly
//! the item that did it, named; every other item comes back, in order, once.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proptest::prelude::*;
use pstream::{Codec, ItemError, ItemErrorKind, PoolBuilder, ProcessPool};
use pstream_examples::{double, slow_double, upper, Fault};
use support::*;

/// `misbehave` inputs: item i has value i and behaves, except the poisoned ones.
fn inputs(n: u64, poison: &BTreeMap<u64, Fault>) -> Vec<String> {
    (0..n)
        .map(|i| {
            let fault = poison.get(&i).copied().unwrap_or(Fault::None);
            format!(r#"{{"value":{i},"fault":"{}"}}"#, fault.name())
        })
        .collect()
}

/// Run `misbehave` and check: every good item is back, in order, exactly once;
/// the poisoned ones are errors at their index. Returns the errors.
fn run_and_check(pool: &ProcessPool, n: u64, poison: &BTreeMap<u64, Fault>) -> Vec<ItemError> {
    let _watchdog = watchdog("a misbehave job", Duration::from_secs(300));
    let mut results = pool
        .map_raw("misbehave", Codec::Json, true, inputs(n, poison))
        .unwrap();
    let mut errors = Vec::new();
    let mut next = 0u64;
    while let Some((index, result)) = results.next_raw() {
        assert_eq!(index, next, "results out of order");
        match result {
            Ok(bytes) => {
                assert!(
                    !poison.contains_key(&index),
                    "poisoned item {index} succeeded"
                );
                assert_eq!(
                    bytes,
                    index.to_string().as_bytes(),
                    "wrong value for item {index}"
                );
            }
            Err(e) => {
                assert!(poison.contains_key(&index), "good item {index} failed: {e}");
                errors.push(e);
            }
        }
        next += 1;
    }
    assert_eq!(next, n, "{:?}", results.pool_error());
    assert_eq!(errors.len(), poison.len());
    errors
}

/// No item time limit here: on a loaded machine a healthy item may wait long for
/// a CPU, and only the hang tests need one.
fn crash_pool() -> PoolBuilder {
    builder().workers(2).memory_limit(1 << 30)
}

fn hang_pool() -> PoolBuilder {
    crash_pool().item_timeout(Duration::from_secs(3))
}

fn one_poison(fault: Fault) -> (ItemError, ProcessPool, Vec<u32>) {
    one_poison_in(crash_pool(), fault)
}

fn one_poison_in(pool: PoolBuilder, fault: Fault) -> (ItemError, ProcessPool, Vec<u32>) {
    let pool = pool.build().unwrap();
    let pids = pool.worker_pids();
    let n = scale(20_000);
    let at = n * 61 / 100;
    let poison = BTreeMap::from([(at, fault)]);
    let mut errors = run_and_check(&pool, n, &poison);
    let error = errors.pop().unwrap();
    assert_eq!(error.index, at);
    (error, pool, pids)
}

#[test]
fn panic_is_an_item_error_and_the_worker_lives_on() {
    let _watchdog = watchdog(
        "panic_is_an_item_error_and_the_worker_lives_on",
        Duration::from_secs(240),
    );
    let (error, pool, pids) = one_poison(Fault::Panic);
    match &error.kind {
        ItemErrorKind::Panicked { message, location } => {
            assert!(message.contains("asked to panic"), "{message}");
            assert!(
                location.as_deref().unwrap_or("").contains("lib.rs"),
                "{location:?}"
            );
        }
        other => panic!("expected a panic, got {other}"),
    }
    assert_eq!(pool.worker_pids(), pids, "a panic must not cost a worker");
    assert_eq!(pool.stats().crashes, 0);
}

fn assert_crashed_by(fault: Fault, signal: Option<Signal>, code: Option<i32>) {
    assert_crashed_in(crash_pool(), fault, signal, code)
}

fn assert_crashed_in(pool: PoolBuilder, fault: Fault, signal: Option<Signal>, code: Option<i32>) {
    let (error, pool, _) = one_poison_in(pool, fault);
    assert!(error.is_crash(), "{fault:?}: {error}");
    // Tried alone once, and once more (the default retry): exactly.
    assert!(
        matches!(error.kind, ItemErrorKind::Crashed { attempts: 2, .. }),
        "{fault:?}: {:?}",
        error.kind
    );
    if let Some(signal) = signal {
        assert_eq!(error.signal(), Some(signal as i32), "{error}");
    }
    if code.is_some() {
        assert_eq!(error.exit_code(), code, "{error}");
    }
    assert!(
        pool.stats().crashes >= 2,
        "the item was tried at least twice"
    );
}

#[test]
fn abort_costs_one_item() {
    let _watchdog = watchdog("abort_costs_one_item", Duration::from_secs(240));
    assert_crashed_by(Fault::Abort, Some(Signal::SIGABRT), None);
}

#[test]
fn segfault_costs_one_item() {
    let _watchdog = watchdog("segfault_costs_one_item", Duration::from_secs(240));
    assert_crashed_by(Fault::Segv, Some(Signal::SIGSEGV), None);
}

#[test]
fn exit_costs_one_item() {
    let _watchdog = watchdog("exit_costs_one_item", Duration::from_secs(240));
    assert_crashed_by(Fault::Exit, None, Some(3));
}

#[test]
fn sigkill_costs_one_item() {
    let _watchdog = watchdog("sigkill_costs_one_item", Duration::from_secs(240));
    assert_crashed_by(Fault::Kill, Some(Signal::SIGKILL), None);
}

#[test]
fn an_allocation_bomb_costs_one_item() {
    let _watchdog = watchdog(
        "an_allocation_bomb_costs_one_item",
        Duration::from_secs(240),
    );
    // Under the memory limit the bomb fails in its worker (Rust aborts on a failed
    // allocation) instead of waking the machine's OOM killer. No time limit here:
    // on a loaded machine filling the allocation may take a while.
    let pool = builder().workers(2).memory_limit(256 << 20);
    assert_crashed_in(pool, Fault::Oom, None, None);
}

#[test]
fn a_hang_costs_one_item_reported_as_timed_out() {
    let _watchdog = watchdog(
        "a_hang_costs_one_item_reported_as_timed_out",
        Duration::from_secs(240),
    );
    let (error, pool, _) = one_poison_in(hang_pool(), Fault::Hang);
    assert!(error.is_timeout(), "{error}");
    assert_eq!(
        error.kind,
        ItemErrorKind::TimedOut {
            limit: Duration::from_secs(3),
            attempts: 2
        }
    );
    assert!(pool.stats().crashes >= 2);
}

#[test]
fn a_located_hang_with_no_retries_costs_one_time_limit() {
    let _watchdog = watchdog(
        "a_located_hang_with_no_retries_costs_one_time_limit",
        Duration::from_secs(240),
    );
    let pool = hang_pool().retries(0).build().unwrap();
    let poison = BTreeMap::from([(50, Fault::Hang)]);
    let mut results = pool
        .map_raw("misbehave", Codec::Json, true, inputs(200, &poison))
        .unwrap();
    let mut errors = Vec::new();
    while let Some((_, r)) = results.next_raw() {
        if let Err(e) = r {
            errors.push(e);
        }
    }
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].index, 50);
    assert_eq!(
        errors[0].kind,
        ItemErrorKind::TimedOut {
            limit: Duration::from_secs(3),
            attempts: 1
        }
    );
    assert_eq!(results.stats().timeouts, 1, "{:?}", results.stats());
}

/// A poison that freezes its whole worker (its progress reports included) is found
/// by bisection: O(log batch) time limits, not one per item before it.
#[test]
fn a_frozen_worker_is_bisected_in_few_time_limits() {
    let _watchdog = watchdog(
        "a_frozen_worker_is_bisected_in_few_time_limits",
        Duration::from_secs(240),
    );
    for retries in [0, 1] {
        let limit = Duration::from_millis(700);
        let pool = crash_pool()
            .item_timeout(limit)
            .retries(retries)
            .build()
            .unwrap();
        let n = 4000;
        let poison = BTreeMap::from([(2500, Fault::Freeze)]);
        let errors = run_and_check(&pool, n, &poison);
        assert_eq!(
            errors[0].kind,
            ItemErrorKind::TimedOut {
                limit,
                attempts: retries + 1
            }
        );
        // The batch holding it is at most n items: log2(n) halvings, then the tries
        // alone; a little more where another worker's batch was cut by a halving.
        // Every time limit kills a worker: the pool counts it as a crash.
        let timeouts = pool.stats().crashes;
        let bound = (n as f64).log2().ceil() as u64 + 2 + u64::from(retries);
        eprintln!("retries {retries}: {timeouts} time limits (bound {bound})");
        assert!(
            timeouts <= bound,
            "{timeouts} time limits to find one frozen item (bound {bound}), retries {retries}"
        );
    }
}

#[test]
fn job_statistics_count_what_happened() {
    let _watchdog = watchdog(
        "job_statistics_count_what_happened",
        Duration::from_secs(240),
    );
    let pool = hang_pool().retries(2).build().unwrap();
    let poison = BTreeMap::from([(10, Fault::Exit), (500, Fault::Panic), (900, Fault::Hang)]);
    let mut results = pool
        .map_raw("misbehave", Codec::Json, true, inputs(1000, &poison))
        .unwrap();
    while results.next_raw().is_some() {}
    let stats = results.stats();
    assert_eq!(stats.items_ok, 997);
    assert_eq!(stats.items_failed, 3);
    // Each poison tried alone three times, plus the splits that isolated it.
    assert!(stats.crashes >= 6, "{stats:?}");
    assert!(stats.timeouts >= 3, "{stats:?}");
    assert!(stats.retries >= 4, "{stats:?}");
    assert!(stats.respawns >= stats.crashes, "{stats:?}");
    assert!(
        stats.peak_in_flight >= 1 && stats.peak_in_flight <= 5000,
        "{stats:?}"
    );
}

/// The per-host figures count every item a host's workers answered, also those a
/// worker answered (results it had sent) before it crashed on a later item of the
/// same batch: with crashes only, the host's items are the items that came back.
/// (They used to be counted when a batch was answered whole, so every batch a
/// crash cut lost its answered part from `host_stats` and `--stats-json`.)
#[test]
fn host_figures_count_the_items_answered_before_a_crash() {
    let _watchdog = watchdog(
        "host_figures_count_the_items_answered_before_a_crash",
        Duration::from_secs(240),
    );
    let n = scale(20_000);
    let pool = crash_pool().retries(0).build().unwrap();
    let poison = BTreeMap::from([(n * 3 / 4, Fault::Segv), (n / 3, Fault::Exit)]);
    run_and_check(&pool, n, &poison);
    let hosts = pool.host_stats();
    assert_eq!(
        hosts["local"].items,
        n - poison.len() as u64,
        "the items answered, per host: {hosts:?}; the pool's: {:?}",
        pool.stats()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn random_poison_sets_cost_exactly_their_items(
        n in 1u64..3000,
        window in 1usize..3000,
        picks in proptest::collection::vec((any::<u64>(), 0usize..4), 0..6),
    ) {
        let faults = [Fault::Exit, Fault::Kill, Fault::Panic, Fault::Abort];
        let poison: BTreeMap<u64, Fault> =
            picks.into_iter().map(|(at, f)| (at % n, faults[f])).collect();
        let pool = crash_pool().window(window).build().unwrap();
        let errors = run_and_check(&pool, n, &poison);
        for e in errors {
            let expect_panic = poison[&e.index] == Fault::Panic;
            prop_assert_eq!(e.is_panic(), expect_panic, "{}", e);
            prop_assert_eq!(e.is_crash(), !expect_panic, "{}", e);
        }
    }
}

/// Many poison items, of every kind of death, over several runs and both retry
/// settings, two of them under a flood of connections to the pool's socket: not one innocent item may be blamed (`run_and_check` fails on any good
/// item that does not come back), and each poison is tried exactly `retries + 1`
/// times alone. `close` shuts the worker's socket while results of its earlier
/// batches may still be unread, and batches for it queued: those results count.
#[test]
fn many_poisons_blame_no_innocent_item() {
    let _watchdog = watchdog(
        "many_poisons_blame_no_innocent_item",
        Duration::from_secs(240),
    );
    let faults = [Fault::Close, Fault::Segv, Fault::Kill, Fault::Exit];
    let n = scale(40_000);
    let poisons = 12;
    for round in 0..8u64 {
        let retries = (round % 2) as u32;
        let pool = crash_pool().window(5000).retries(retries).build().unwrap();
        let every = n / (poisons + 1);
        let poison: BTreeMap<u64, Fault> = (1..=poisons)
            .map(|k| (k * every + round, faults[((k + round) % 4) as usize]))
            .collect();
        // Two runs under a flood of connections to the pool's socket.
        let flood = (round % 4 == 2).then(|| {
            let (path, stop) = (
                pool.socket_path().to_path_buf(),
                Arc::new(AtomicBool::new(false)),
            );
            let thread = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&path) {
                            let _ = std::io::Write::write_all(&mut s, &[0xff; 64]);
                        }
                        // The flood's pace (a thousand a second), not synchronisation.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            (stop, thread)
        });
        let errors = run_and_check(&pool, n, &poison);
        if let Some((stop, thread)) = flood {
            stop.store(true, Ordering::SeqCst);
            thread.join().unwrap();
        }
        for e in errors {
            match e.kind {
                ItemErrorKind::Crashed { attempts, .. } => assert_eq!(
                    attempts,
                    retries + 1,
                    "item {} ({:?}) with --retries {retries}",
                    e.index,
                    poison[&e.index]
                ),
                ref other => panic!("item {}: expected a crash, got {other:?}", e.index),
            }
        }
    }
}

#[test]
fn chaos_random_sigkills_lose_nothing() {
    let _watchdog = watchdog(
        "chaos_random_sigkills_lose_nothing",
        Duration::from_secs(240),
    );
    // The kills also land on replacements still in their handshake: each is a start
    // failure, and on a loaded machine a few may come in a row. The test is about
    // items, not about the pool giving up on a program that cannot start.
    let pool = builder()
        .workers(2)
        .retries(4)
        .max_spawn_failures(1000)
        .build()
        .unwrap();
    let n = scale(1_000_000) as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let pool = Arc::new(pool);
    let killer = {
        let (pool, stop, kills) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&kills));
        std::thread::spawn(move || {
            let mut rng = 0x9e3779b97f4a7c15u64;
            while !stop.load(Ordering::SeqCst) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // The pacing of the chaos, not synchronisation.
                std::thread::sleep(Duration::from_millis(50 + rng % 51));
                let pids = pool.worker_pids();
                if let Some(&pid) = pids.get(rng as usize % pids.len().max(1)) {
                    if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                        kills.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let mut results = pool.map(slow_double, 0..n).unwrap();
    let mut expected = 0i64;
    for result in results.by_ref() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    stop.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    assert_eq!(expected, n);
    let stats = results.stats();
    eprintln!(
        "{} kills sent, job stats {stats:?}, pool stats {:?}",
        kills.load(Ordering::SeqCst),
        pool.stats()
    );
    if kills.load(Ordering::SeqCst) > 0 {
        assert!(
            stats.crashes > 0,
            "kills landed but no crash was counted: {stats:?}"
        );
    }
    assert!(pool.stats().crashes >= stats.crashes);
}

#[test]
fn recycled_workers_lose_nothing() {
    let _watchdog = watchdog("recycled_workers_lose_nothing", Duration::from_secs(240));
    let pool = builder()
        .workers(2)
        .max_items_per_worker(1000)
        .build()
        .unwrap();
    let first = pool.worker_pids();
    let n = 20_000i64;
    let got: Vec<i64> = pool
        .map(double, 0..n)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..n).map(|x| x * 2).collect::<Vec<_>>());
    let stats = pool.stats();
    assert!(stats.spawned >= 8, "{stats:?}");
    // The last replacements may still be starting: wait for their handshakes.
    wait_for("every replacement to complete its handshake", || {
        let stats = pool.stats();
        stats.ready == stats.spawned
    });
    let stats = pool.stats();
    assert_eq!(stats.crashes, 0, "a recycled worker is no crash: {stats:?}");
    assert!(
        first.iter().all(|p| !pool.worker_pids().contains(p)),
        "workers were not replaced"
    );
    drop(pool);
    assert_gone(&first);
}

fn evil_pool(mode: &str) -> (ProcessPool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("evil-marker");
    let pool = builder()
        .workers(2)
        .env(
            "PSTREAM_EXAMPLES_EVIL",
            format!("{mode}:{}", marker.display()),
        )
        .build()
        .unwrap();
    (pool, dir)
}

fn assert_job_survives_evil_worker(mode: &str) {
    let (pool, _dir) = evil_pool(mode);
    let n = 20_000i64;
    let got: Vec<i64> = pool
        .map(double, 0..n)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..n).map(|x| x * 2).collect::<Vec<_>>(), "{mode}");
    assert!(
        pool.stats().crashes >= 1,
        "{mode}: the evil worker was not caught"
    );
}

#[test]
fn a_worker_sending_garbage_is_killed_and_the_job_goes_on() {
    let _watchdog = watchdog(
        "a_worker_sending_garbage_is_killed_and_the_job_goes_on",
        Duration::from_secs(240),
    );
    assert_job_survives_evil_worker("garbage");
}

#[test]
fn a_worker_sending_an_oversized_frame_is_killed_and_the_job_goes_on() {
    let _watchdog = watchdog(
        "a_worker_sending_an_oversized_frame_is_killed_and_the_job_goes_on",
        Duration::from_secs(240),
    );
    assert_job_survives_evil_worker("oversized");
}

#[test]
fn a_worker_answering_a_batch_it_never_got_is_killed_and_the_job_goes_on() {
    let _watchdog = watchdog(
        "a_worker_answering_a_batch_it_never_got_is_killed_and_the_job_goes_on",
        Duration::from_secs(240),
    );
    assert_job_survives_evil_worker("wrong-batch");
    assert_job_survives_evil_worker("unasked");
}

#[test]
fn a_worker_answering_with_the_wrong_packing_is_killed_and_the_job_goes_on() {
    let _watchdog = watchdog(
        "a_worker_answering_with_the_wrong_packing_is_killed_and_the_job_goes_on",
        Duration::from_secs(240),
    );
    // A typed job's batches are packed: results with item lengths are refused.
    assert_job_survives_evil_worker("unpacked");
    // A JSON job's batches carry lengths: packed results are refused.
    let (pool, _dir) = evil_pool("unpacked");
    let n = 5_000u64;
    let mut results = pool
        .map_raw("double", Codec::Json, true, (0..n).map(|i| i.to_string()))
        .unwrap();
    let mut next = 0;
    while let Some((index, result)) = results.next_raw() {
        assert_eq!(index, next);
        assert_eq!(result.unwrap(), (index * 2).to_string().as_bytes());
        next += 1;
    }
    assert_eq!(next, n);
    drop(results);
    assert!(pool.stats().crashes >= 1, "the evil worker was not caught");
}

/// Map `upper` over 20,000 words: every result that came back is the word in
/// upper case, every failure a decode error; the failures, by index with their
/// message.
fn upper_with_decode_errors(pool: &ProcessPool) -> Vec<(usize, String)> {
    let n = 20_000usize;
    let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let results: Vec<_> = pool.map(upper, words.clone()).unwrap().collect();
    assert_eq!(results.len(), n);
    let mut failed = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v, &words[i].to_uppercase(), "item {i}"),
            Err(e) => {
                assert_eq!(e.kind.name(), "decode", "item {i}: {e}");
                failed.push((i, e.to_string()));
            }
        }
    }
    failed
}

#[test]
fn a_result_claiming_a_huge_length_is_a_decode_error_not_an_abort() {
    let _watchdog = watchdog(
        "a_result_claiming_a_huge_length_is_a_decode_error_not_an_abort",
        Duration::from_secs(240),
    );
    // The coordinator would die on a failed allocation if it believed the length.
    let (pool, _dir) = evil_pool("lying-length");
    let lied = upper_with_decode_errors(&pool);
    assert_eq!(lied.len(), 1, "exactly the item the evil worker answered");
    assert!(
        pool.stats().crashes >= 1,
        "the evil worker's exit is a crash"
    );
}

#[test]
fn a_packed_result_after_one_that_does_not_decode_is_an_error_not_a_guess() {
    let _watchdog = watchdog(
        "a_packed_result_after_one_that_does_not_decode_is_an_error_not_a_guess",
        Duration::from_secs(240),
    );
    // Packed results carry no lengths: once one does not decode, where the next
    // starts is unknown, and its bytes (a valid "X" here) must not be taken for it.
    let (pool, _dir) = evil_pool("lying-then-valid");
    let failed = upper_with_decode_errors(&pool);
    assert_eq!(failed.len(), 2, "the lie and the item after it: {failed:?}");
    assert_eq!(failed[1].0, failed[0].0 + 1, "{failed:?}");
    assert!(
        failed[1]
            .1
            .contains("an earlier result of its batch did not decode"),
        "{failed:?}"
    );
}

#[test]
fn failing_respawns_end_the_job_with_a_clear_error() {
    let _watchdog = watchdog(
        "failing_respawns_end_the_job_with_a_clear_error",
        Duration::from_secs(240),
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("broken");
    let script = dir.path().join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e '{}' ] && exit 1\nexec '{}'\n",
            marker.display(),
            plugin().display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pool = ProcessPool::builder()
        .workers(2)
        .program(&script)
        .max_spawn_failures(3)
        .build()
        .unwrap();
    let pids = pool.worker_pids();
    let mut results = pool.map(double, 0i64..).unwrap();
    assert_eq!(results.next().unwrap().unwrap(), 0);
    // From now on every replacement fails at once.
    std::fs::write(&marker, b"").unwrap();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let last = results
        .by_ref()
        .find(|r| r.is_err())
        .expect("the job must end");
    let error = last.unwrap_err();
    assert_eq!(error.kind.name(), "aborted", "{error}");
    assert!(results.next().is_none(), "nothing after the abort");
    let pool_error = results.pool_error().expect("the pool error is kept");
    assert!(
        pool_error.to_string().contains("3 times in a row"),
        "{pool_error}"
    );
    assert!(
        pool_error.to_string().contains("exited with status 1"),
        "{pool_error}"
    );
}
