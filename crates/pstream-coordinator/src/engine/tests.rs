//! The engine without processes: workers are the far ends of socketpairs, played
//! by threads of this test, joining a pool with no launcher.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use pstream_protocol::{
    read_frame, write_frame, Codec, Frame, FunctionInfo, Items, Join, Message, ResultsHeader,
    DEFAULT_MAX_FRAME,
};

use super::{Config, Engine, Flow};
use crate::error::{ExitCause, ItemErrorKind};
use crate::link::UnixLink;
use crate::process::WorkerCommand;
use crate::stats::PoolCounters;
use crate::vocab::{Batch, Event, Events, JobCounters, JobMsg};

/// How long any test may take before it is declared hung.
pub(super) const DEADLINE: Duration = Duration::from_secs(60);

pub(super) fn config(retries: u32, item_timeout: Option<Duration>) -> Config {
    Config {
        workers: 2,
        window: 1000,
        window_bytes: 1 << 20,
        command: WorkerCommand {
            program: PathBuf::from("none"),
            args: Vec::new(),
            env: Vec::new(),
            memory_limit: None,
            shown: Default::default(),
        },
        max_frame: DEFAULT_MAX_FRAME,
        handshake_timeout: Duration::from_secs(30),
        item_timeout,
        retries,
        max_items_per_worker: None,
        max_spawn_failures: 3,
        capacity: 8,
        flush_interval: Duration::from_millis(2),
        spin: crate::tuning::DEFAULT_SPIN,
        shutdown_grace: Duration::from_secs(1),
        heartbeat: Duration::from_secs(1),
        silence: Duration::from_secs(10),
        wait_workers: Duration::from_secs(60),
        min_workers: 1,
        listening: None,
    }
}

/// What a played worker does with a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Play {
    /// Die (close the socket) on receiving a batch that holds `b"poison"`.
    DieAtPoison,
    /// On a batch that holds `b"poison"`, answer the items before it, report that
    /// it is on the poison, and keep repeating that report (alive, stuck).
    StickAtPoison,
    /// Answer each batch after 2 ms (an item that takes that long).
    Slow,
}

pub(super) struct Pool {
    pub(super) engine: Engine,
    pub(super) events: Events,
    results: Receiver<JobMsg>,
    pub(super) workers: Vec<JoinHandle<()>>,
    /// Batches the played workers received, in all.
    pub(super) received: Arc<AtomicUsize>,
    /// Rings the engine awake every few milliseconds, so a step never blocks for
    /// long whatever the test does wrong: the deadlines are checked in between.
    ticker: Option<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)>,
}

impl Pool {
    pub(super) fn new(config: Config) -> Pool {
        let (events, rx, wake) = Events::new().unwrap();
        let (ready, _ready_rx) = crossbeam_channel::bounded(1);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (stop, wake) = (Arc::clone(&stop), Arc::clone(&wake));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    wake.ring();
                    // A pace, not synchronisation: it only bounds how long a step waits.
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let engine = Engine::new(
            Arc::new(config),
            (events.clone(), rx, wake),
            None,
            Arc::new(PoolCounters::default()),
            ready,
        )
        .unwrap();
        let (results_tx, results) = crossbeam_channel::unbounded();
        let (recycle, _) = crossbeam_channel::unbounded();
        let pool = Pool {
            engine,
            events,
            results,
            workers: Vec::new(),
            received: Arc::new(AtomicUsize::new(0)),
            ticker: Some((stop, ticker)),
        };
        pool.events
            .send(Event::NewJob {
                job: 0,
                function: "f".into(),
                codec: Codec::Lines,
                packed: false,
                results: results_tx,
                counters: Arc::new(JobCounters::default()),
                recycle,
            })
            .unwrap();
        pool
    }

    /// A played worker joins with `capacity` items of credit.
    fn join(&mut self, play: Play, capacity: u32) {
        let theirs = self.connect(
            capacity,
            vec![FunctionInfo {
                name: "f".into(),
                input_type: "String".into(),
                output_type: "String".into(),
                input_type_name: "String".into(),
                output_type_name: "String".into(),
            }],
        );
        let received = Arc::clone(&self.received);
        self.workers
            .push(std::thread::spawn(move || worker(theirs, play, &received)));
    }

    /// A worker whose handshake is done joins with `capacity` items of credit,
    /// serving `functions`; the test plays it through the returned end.
    fn connect(&mut self, capacity: u32, functions: Vec<FunctionInfo>) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let join = Join {
            proof: Default::default(),
            capacity,
            max_frame: DEFAULT_MAX_FRAME as u32,
            functions,
        };
        self.events
            .send(Event::Connected {
                link: Box::new(UnixLink::new(ours).unwrap()),
                join,
                agent: None,
            })
            .unwrap();
        // Handled now: it counts as usable from here on.
        self.engine.accept(std::iter::empty());
        theirs
    }

    /// Feed `items` as batches of `size`, then say the input is done.
    pub(super) fn submit(&self, items: &[&[u8]], size: usize) {
        for (i, chunk) in items.chunks(size).enumerate() {
            let mut batch = Items::new();
            for item in chunk {
                batch.push(item);
            }
            self.events
                .send(Event::Submit(Batch {
                    job: 0,
                    first_index: (i * size) as u64,
                    items: Arc::new(batch),
                    attempts: 0,
                    losses: 0,
                }))
                .unwrap();
        }
        self.events
            .send(Event::InputDone {
                job: 0,
                total: items.len() as u64,
            })
            .unwrap();
    }

    fn usable(&self) -> usize {
        self.engine.workers.values().filter(|w| w.usable()).count()
    }

    /// Step the engine until the job has an outcome for each of `n` items, keeping
    /// `keep` played workers of kind `play` joined (0: join nobody new).
    pub(super) fn run(
        &mut self,
        n: usize,
        play: Play,
        keep: usize,
    ) -> BTreeMap<u64, Result<Vec<u8>, ItemErrorKind>> {
        let deadline = Instant::now() + DEADLINE;
        let mut outcomes = BTreeMap::new();
        while outcomes.len() < n {
            assert!(Instant::now() < deadline, "the job hangs: {outcomes:?}");
            while self.usable() < keep {
                self.join(play, 8);
            }
            if self.engine.step(true) == Flow::Exit {
                break;
            }
            while let Ok(message) = self.results.try_recv() {
                if let JobMsg::Results(batch) = message {
                    let failed: BTreeMap<u32, ItemErrorKind> = batch.failures.into_iter().collect();
                    for slot in 0..batch.items.len() {
                        let index = batch.first_index + slot as u64;
                        let outcome = match failed.get(&(slot as u32)) {
                            Some(kind) => Err(kind.clone()),
                            None => Ok(batch.items.get(slot).unwrap().to_vec()),
                        };
                        assert!(
                            outcomes.insert(index, outcome).is_none(),
                            "item {index} came back twice"
                        );
                    }
                }
            }
        }
        outcomes
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the engine's ends ends every played worker.
        self.engine.workers.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some((stop, ticker)) = self.ticker.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = ticker.join();
        }
    }
}

/// A played worker: read the Welcome, then batches until the socket ends.
pub(super) fn worker(mut stream: UnixStream, play: Play, received: &AtomicUsize) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let max = DEFAULT_MAX_FRAME;
    match read_frame(&mut stream, max) {
        Ok(Some(Frame {
            message: Message::Welcome { .. },
            ..
        })) => {}
        _ => return,
    }
    while let Ok(Some(frame)) = read_frame(&mut stream, max) {
        let Message::Batch(header) = frame.message else {
            continue;
        };
        received.fetch_add(1, Ordering::SeqCst);
        let items = frame.items;
        let poison = (0..items.len()).find(|&i| items.get(i) == Some(&b"poison"[..]));
        let answer = |stream: &mut UnixStream, upto: usize| {
            let mut out = Items::new();
            for i in 0..upto {
                out.push(items.get(i).unwrap());
            }
            let message = Message::Results(ResultsHeader {
                job: header.job,
                seq: header.seq,
                offset: 0,
                failures: Vec::new(),
                packed: false,
            });
            if upto > 0 {
                write_frame(stream, &message, &out, max).unwrap();
            }
        };
        match (play, poison) {
            (Play::DieAtPoison, Some(_)) => return,
            (Play::StickAtPoison, Some(at)) => {
                answer(&mut stream, at);
                // Alive and stuck: repeat "on item `at`" until the engine hangs up.
                loop {
                    let progress = Message::Progress {
                        job: header.job,
                        seq: header.seq,
                        done: at as u32,
                    };
                    if write_frame(&mut stream, &progress, &Items::new(), max).is_err() {
                        return;
                    }
                    // The heartbeat's pace, as a worker's reporter keeps it.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            (Play::Slow, _) => {
                // The item's time, not synchronisation.
                std::thread::sleep(Duration::from_millis(2));
                answer(&mut stream, items.len())
            }
            // Answer every item with its own bytes.
            _ => answer(&mut stream, items.len()),
        }
    }
}

fn items(n: usize, poison: Option<usize>) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if Some(i) == poison {
                b"poison".to_vec()
            } else {
                format!("item {i}").into_bytes()
            }
        })
        .collect()
}

fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
    items.iter().map(Vec::as_slice).collect()
}

#[test]
fn dispatch_never_sends_a_worker_more_than_its_credit() {
    let mut pool = Pool::new(config(1, None));
    // Credit for two batches of 4; five are queued.
    let mut theirs = pool.connect(8, Vec::new());
    let data = items(20, None);
    pool.submit(&refs(&data), 4);
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    // Step until the worker holds what it can.
    let deadline = Instant::now() + DEADLINE;
    while pool.engine.workers.values().all(|w| w.in_flight.len() < 2) {
        assert!(Instant::now() < deadline);
        pool.engine.step(false);
    }
    for _ in 0..10 {
        pool.engine.step(false);
    }
    let w = pool.engine.workers.values().next().unwrap();
    assert_eq!(w.in_flight.len(), 2, "two batches of 4 fill a credit of 8");
    assert_eq!(w.outstanding, 8);
    assert_eq!(pool.engine.jobs.queue.len(), 3, "the rest waits for credit");
    // What reached the worker is exactly the two batches.
    let mut seen = 0;
    for _ in 0..3 {
        let frame = read_frame(&mut theirs, DEFAULT_MAX_FRAME).unwrap().unwrap();
        if let Message::Batch(_) = frame.message {
            seen += frame.items.len();
        }
    }
    assert_eq!(seen, 8, "welcome and two batches of 4");
}

#[test]
fn a_dead_workers_batches_are_sent_again_exactly_once() {
    let mut pool = Pool::new(config(1, None));
    let data = items(64, Some(40));
    pool.submit(&refs(&data), 8);
    let outcomes = pool.run(64, Play::DieAtPoison, 2);
    for (i, outcome) in &outcomes {
        if *i == 40 {
            assert!(
                matches!(
                    outcome,
                    Err(ItemErrorKind::Crashed {
                        cause: ExitCause::Disconnected,
                        attempts: 2
                    })
                ),
                "{outcome:?}"
            );
        } else {
            assert_eq!(outcome.as_ref().unwrap(), &data[*i as usize], "item {i}");
        }
    }
    assert_eq!(outcomes.len(), 64);
}

#[test]
fn bisection_names_the_poison_and_only_it() {
    for poison in [0usize, 17, 99] {
        for retries in [0, 2] {
            let mut pool = Pool::new(config(retries, None));
            let data = items(100, Some(poison));
            pool.submit(&refs(&data), 50);
            let outcomes = pool.run(100, Play::DieAtPoison, 2);
            let failed: Vec<u64> = outcomes
                .iter()
                .filter(|(_, o)| o.is_err())
                .map(|(&i, _)| i)
                .collect();
            assert_eq!(failed, vec![poison as u64], "retries {retries}");
            assert!(matches!(
                outcomes[&(poison as u64)],
                Err(ItemErrorKind::Crashed { attempts, .. }) if attempts == retries + 1
            ));
            // Deaths: halvings of a batch of 50, then the tries alone.
            let bound = 6 + 1 + retries as usize;
            let received = pool.received.load(Ordering::SeqCst);
            assert!(received < 2 + 2 * bound + 10, "{received} batches sent");
        }
    }
}

#[test]
fn a_located_hang_blames_the_item_in_work_not_the_next() {
    // The played worker must report where it is stuck before the limit: at 300 ms a
    // loaded machine sometimes delayed that report past it (and the engine bisected).
    let limit = Duration::from_secs(1);
    let mut pool = Pool::new(config(0, Some(limit)));
    let data = items(30, Some(12));
    pool.submit(&refs(&data), 30);
    let outcomes = pool.run(30, Play::StickAtPoison, 1);
    for (i, outcome) in &outcomes {
        if *i == 12 {
            assert_eq!(
                outcome,
                &Err(ItemErrorKind::TimedOut { limit, attempts: 1 }),
                "the hung item, located by the live worker's repeated report"
            );
        } else {
            assert_eq!(outcome.as_ref().unwrap(), &data[*i as usize], "item {i}");
        }
    }
    assert_eq!(
        pool.engine.counters.crashes.load(Ordering::SeqCst),
        1,
        "located at once: one time limit, no bisection"
    );
}

/// What a played worker across the network does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Remote {
    /// Answer every batch, with heartbeats while idle.
    Echo,
    /// Close the connection on its first batch (the host went away), once in the
    /// whole test (`flag`); after that, like `Echo`.
    DropOnce,
    /// Take its first batch and fall silent (no heartbeat, no result) for `late`,
    /// then send the results anyway.
    Silent { late: Duration },
}

impl Pool {
    /// A played worker joins over TCP on loopback: its peer is remote.
    fn join_remote(&mut self, play: Remote, flag: &Arc<std::sync::atomic::AtomicBool>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let link = Box::new(crate::link::TcpLink::new(ours).unwrap());
        let join = Join {
            proof: Default::default(),
            capacity: 8,
            max_frame: DEFAULT_MAX_FRAME as u32,
            functions: Vec::new(),
        };
        let flag = Arc::clone(flag);
        self.workers.push(std::thread::spawn(move || {
            remote_worker(theirs, play, &flag)
        }));
        self.events
            .send(Event::Connected {
                link,
                join,
                agent: None,
            })
            .unwrap();
        self.engine.accept(std::iter::empty());
    }

    /// Step until `n` outcomes, keeping one `Echo` worker across the network joined.
    fn run_remote(
        &mut self,
        n: usize,
        flag: &Arc<std::sync::atomic::AtomicBool>,
    ) -> BTreeMap<u64, Result<Vec<u8>, ItemErrorKind>> {
        let deadline = Instant::now() + DEADLINE;
        let mut outcomes = BTreeMap::new();
        while outcomes.len() < n {
            assert!(Instant::now() < deadline, "the job hangs: {outcomes:?}");
            let echoes = self
                .engine
                .workers
                .values()
                .filter(|w| w.usable() && w.capacity == 8)
                .count();
            if echoes == 0 {
                self.join_remote(Remote::Echo, flag);
            }
            self.engine.step(true);
            while let Ok(JobMsg::Results(batch)) = self.results.try_recv() {
                let failed: BTreeMap<u32, ItemErrorKind> = batch.failures.into_iter().collect();
                for slot in 0..batch.items.len() {
                    let index = batch.first_index + slot as u64;
                    let outcome = match failed.get(&(slot as u32)) {
                        Some(kind) => Err(kind.clone()),
                        None => Ok(batch.items.get(slot).unwrap().to_vec()),
                    };
                    assert!(
                        outcomes.insert(index, outcome).is_none(),
                        "item {index} came back twice"
                    );
                }
            }
        }
        outcomes
    }
}

/// A played worker across the network. Writes go through one lock: the heartbeat
/// thread and the answers share the connection.
fn remote_worker(
    stream: std::net::TcpStream,
    play: Remote,
    dropped: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    let max = DEFAULT_MAX_FRAME;
    let mut reader = stream.try_clone().unwrap();
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let writer = Arc::new(Mutex::new(stream));
    let quiet = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let beater = {
        let (writer, quiet, done) = (Arc::clone(&writer), Arc::clone(&quiet), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if !quiet.load(Ordering::SeqCst) {
                    let mut w = writer.lock().unwrap();
                    if write_frame(&mut *w, &Message::Heartbeat, &Items::new(), max).is_err() {
                        return;
                    }
                }
                // The heartbeat's pace, as a worker keeps it: not synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let finish = |beater: JoinHandle<()>| {
        done.store(true, Ordering::SeqCst);
        let _ = beater.join();
    };
    match read_frame(&mut reader, max) {
        Ok(Some(Frame {
            message: Message::Welcome { heartbeat_ms, .. },
            ..
        })) => assert!(heartbeat_ms > 0, "a remote worker gets heartbeats"),
        _ => return finish(beater),
    }
    let mut first = true;
    while let Ok(Some(frame)) = read_frame(&mut reader, max) {
        let Message::Batch(header) = frame.message else {
            continue;
        };
        match play {
            Remote::DropOnce if first && !dropped.swap(true, Ordering::SeqCst) => {
                let _ = reader.shutdown(std::net::Shutdown::Both);
                return finish(beater);
            }
            Remote::Silent { late } if first => {
                quiet.store(true, Ordering::SeqCst);
                std::thread::sleep(late);
            }
            _ => {}
        }
        first = false;
        let message = Message::Results(ResultsHeader {
            job: header.job,
            seq: header.seq,
            offset: 0,
            failures: Vec::new(),
            packed: false,
        });
        let mut w = writer.lock().unwrap();
        if write_frame(&mut *w, &message, &frame.items, max).is_err() {
            break; // Declared lost: the engine hung up.
        }
    }
    finish(beater)
}

fn remote_config(retries: u32) -> Config {
    Config {
        heartbeat: Duration::from_millis(50),
        silence: Duration::from_millis(400),
        ..config(retries, None)
    }
}

#[test]
fn a_lost_connection_is_no_evidence_against_an_item() {
    // Batches of one item, no retries: a local worker's death would fail the
    // item it held at once. A connection across the network that drops charges
    // nothing.
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pool = Pool::new(remote_config(0));
    pool.join_remote(Remote::DropOnce, &flag);
    let data = items(20, None);
    pool.submit(&refs(&data), 1);
    let outcomes = pool.run_remote(20, &flag);
    assert!(flag.load(Ordering::SeqCst), "a connection was dropped");
    for (i, outcome) in &outcomes {
        assert_eq!(outcome.as_ref().unwrap(), &data[*i as usize], "item {i}");
    }
    assert_eq!(pool.engine.counters.lost.load(Ordering::SeqCst), 1);
    assert_eq!(pool.engine.counters.crashes.load(Ordering::SeqCst), 0);
}

#[test]
fn a_local_workers_death_is_still_charged() {
    // The same job with played local workers (socketpairs): the item held when
    // the worker died is charged, and with no retries, fails.
    let mut pool = Pool::new(config(0, None));
    let data = items(20, Some(7));
    pool.submit(&refs(&data), 1);
    let outcomes = pool.run(20, Play::DieAtPoison, 2);
    assert!(outcomes[&7].is_err(), "{:?}", outcomes[&7]);
    assert_eq!(pool.engine.counters.lost.load(Ordering::SeqCst), 0);
}

#[test]
fn a_silent_worker_is_lost_after_the_limit_and_its_late_results_are_discarded() {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pool = Pool::new(remote_config(0));
    // Silent well past the limit, then it answers anyway.
    pool.join_remote(
        Remote::Silent {
            late: Duration::from_millis(1500),
        },
        &flag,
    );
    let data = items(40, None);
    pool.submit(&refs(&data), 4);
    let outcomes = pool.run_remote(40, &flag);
    for (i, outcome) in &outcomes {
        assert_eq!(outcome.as_ref().unwrap(), &data[*i as usize], "item {i}");
    }
    assert_eq!(pool.engine.counters.lost.load(Ordering::SeqCst), 1);
    // Step on past its late answer: nothing comes twice (run_remote would have
    // panicked), and nothing more comes at all.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        pool.engine.step(true);
        assert!(
            pool.results.try_recv().is_err(),
            "a late result got through"
        );
    }
}

#[test]
fn a_remote_worker_that_dies_on_an_item_every_time_ends_its_retries() {
    // With no agent to report exits, a remote worker killed by an item looks like
    // a lost connection; past the limit of losses in a row, it is a crash.
    let mut pool = Pool::new(remote_config(1));
    let data = items(16, Some(5));
    pool.submit(&refs(&data), 8);
    let deadline = Instant::now() + DEADLINE;
    let mut outcomes = BTreeMap::new();
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    while outcomes.len() < 16 {
        assert!(Instant::now() < deadline, "the job hangs: {outcomes:?}");
        if pool.usable() == 0 {
            pool.join_remote_dying();
        }
        pool.engine.step(true);
        while let Ok(JobMsg::Results(batch)) = pool.results.try_recv() {
            let failed: BTreeMap<u32, ItemErrorKind> = batch.failures.into_iter().collect();
            for slot in 0..batch.items.len() {
                let index = batch.first_index + slot as u64;
                let outcome = failed.get(&(slot as u32)).cloned();
                assert!(outcomes.insert(index, outcome).is_none());
            }
        }
    }
    drop(flag);
    for (i, failure) in &outcomes {
        if *i == 5 {
            assert_eq!(
                failure,
                &Some(ItemErrorKind::Crashed {
                    cause: ExitCause::Lost,
                    attempts: 2
                })
            );
        } else {
            assert_eq!(failure, &None, "item {i}");
        }
    }
}

impl Pool {
    /// A played worker across the network that drops its connection on a batch
    /// holding the poison, every time (and answers the others).
    fn join_remote_dying(&mut self) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let link = Box::new(crate::link::TcpLink::new(ours).unwrap());
        let join = Join {
            proof: Default::default(),
            capacity: 8,
            max_frame: DEFAULT_MAX_FRAME as u32,
            functions: Vec::new(),
        };
        self.workers.push(std::thread::spawn(move || {
            theirs.set_read_timeout(Some(DEADLINE)).unwrap();
            let max = DEFAULT_MAX_FRAME;
            while let Ok(Some(frame)) = read_frame(&mut theirs, max) {
                let Message::Batch(header) = frame.message else {
                    continue;
                };
                let items = frame.items;
                if (0..items.len()).any(|i| items.get(i) == Some(&b"poison"[..])) {
                    return;
                }
                let message = Message::Results(ResultsHeader {
                    job: header.job,
                    seq: header.seq,
                    offset: 0,
                    failures: Vec::new(),
                    packed: false,
                });
                if write_frame(&mut theirs, &message, &items, max).is_err() {
                    return;
                }
            }
        }));
        self.events
            .send(Event::Connected {
                link,
                join,
                agent: None,
            })
            .unwrap();
        self.engine.accept(std::iter::empty());
    }
}

#[test]
fn heartbeats_coming_back_to_back_do_not_make_the_engine_poll() {
    // A worker that sends nothing but heartbeats, 200 µs apart: every wait ends
    // within the 1 ms that counts as back to back. Only results may make the
    // engine poll; before that rule, 512 idle workers' heartbeats kept an idle
    // coordinator polling (seen: it polled after all 200 of these waits).
    let mut config = config(0, None);
    config.spin = crate::tuning::MAX_SPIN;
    let mut pool = Pool::new(config);
    let mut theirs = pool.connect(8, Vec::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = read_frame(&mut theirs, DEFAULT_MAX_FRAME); // the Welcome
            while !stop.load(Ordering::SeqCst) {
                if write_frame(
                    &mut theirs,
                    &Message::Heartbeat,
                    &Items::new(),
                    DEFAULT_MAX_FRAME,
                )
                .is_err()
                {
                    return;
                }
                // A pace, not synchronisation: the heartbeats' spacing.
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let (mut polled, mut short) = (0, 0);
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(pool.engine.step(true), Flow::Go);
        if started.elapsed() <= Duration::from_millis(1) {
            short += 1;
        }
        if pool.engine.spin_hot {
            polled += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    pool.engine.workers.clear();
    beating.join().unwrap();
    // The test means something only if most waits were short.
    assert!(short > 100, "only {short} of 200 waits ended within 1 ms");
    assert_eq!(polled, 0, "the engine polled after {polled} of 200 waits");
}

#[test]
fn results_slower_than_the_spin_make_the_engine_sleep_at_once() {
    // One worker, one item at a time, each answered 2 ms after it was sent:
    // polling for 300 µs before each wait would never find the results, only
    // cost the CPU. (Counting any results as back to back, it polled after 97
    // of 105 waits, with answers 700 µs apart.)
    let mut config = config(0, None);
    config.spin = Duration::from_micros(300);
    let mut pool = Pool::new(config);
    pool.join(Play::Slow, 1);
    let n = 100;
    let items = items(n, None);
    pool.submit(&refs(&items), 1);
    let deadline = Instant::now() + DEADLINE;
    let (mut done, mut steps, mut polled) = (0, 0, 0);
    while done < n {
        assert!(
            Instant::now() < deadline,
            "the job hangs after {done} items"
        );
        assert_eq!(pool.engine.step(true), Flow::Go);
        steps += 1;
        if pool.engine.spin_hot {
            polled += 1;
        }
        while let Ok(message) = pool.results.try_recv() {
            if let JobMsg::Results(batch) = message {
                done += batch.items.len();
            }
        }
    }
    // A wait can end early now and then (the ticker; under load, a wait that
    // began after the answer was written); most must not be followed by
    // polling.
    assert!(
        polled * 2 <= steps,
        "the engine polled after {polled} of {steps} waits"
    );
}
