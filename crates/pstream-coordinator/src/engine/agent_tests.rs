//! Host agents in the engine, without processes: the agent and its workers are the
//! far ends of socketpairs, played by this test. The races between an agent's
//! report and its worker's own connection, and an agent's loss.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstream_protocol::{
    read_frame, write_frame, AgentJoin, ExitStatus, Frame, FunctionInfo, Items, Join, Message,
    WorkerExit, DEFAULT_MAX_FRAME,
};

use super::tests::{config, worker, Play, Pool, DEADLINE};
use super::Config;
use crate::error::{ExitCause, ItemErrorKind};
use crate::link::UnixLink;
use crate::vocab::Event;

/// A played host agent joins: its end of the connection, past its welcome.
fn agent(pool: &mut Pool) -> UnixStream {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    pool.events
        .send(Event::AgentConnected {
            link: Box::new(UnixLink::new(ours).unwrap()),
            agent: AgentJoin {
                proof: Default::default(),
                hostname: "node-1".into(),
                pid: 1,
                workers: 1,
            },
        })
        .unwrap();
    pool.engine.accept(std::iter::empty());
    match read_frame(&mut theirs, DEFAULT_MAX_FRAME) {
        Ok(Some(Frame {
            message: Message::AgentWelcome { agent_id, .. },
            ..
        })) => assert_eq!(agent_id, 1),
        other => panic!("no AgentWelcome: {other:?}"),
    }
    theirs
}

fn join() -> Join {
    Join {
        proof: Default::default(),
        capacity: 8,
        max_frame: DEFAULT_MAX_FRAME as u32,
        functions: vec![FunctionInfo {
            name: "f".into(),
            input_type: "String".into(),
            output_type: "String".into(),
            input_type_name: "String".into(),
            output_type_name: "String".into(),
        }],
    }
}

/// A worker that agent 1 started as `pid` joins; played as `play`, or, with
/// `None`, its end of the connection is returned instead.
fn agents_worker(pool: &mut Pool, pid: u32, play: Option<Play>) -> Option<UnixStream> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    pool.events
        .send(Event::Connected {
            link: Box::new(UnixLink::new(ours).unwrap()),
            join: join(),
            agent: Some((1, pid)),
        })
        .unwrap();
    pool.engine.accept(std::iter::empty());
    match play {
        Some(play) => {
            let received = Arc::clone(&pool.received);
            pool.workers
                .push(std::thread::spawn(move || worker(theirs, play, &received)));
            None
        }
        None => Some(theirs),
    }
}

fn report(agent: &mut UnixStream, pid: u32, status: ExitStatus) {
    let exit = Message::WorkerExited(WorkerExit {
        pid,
        status,
        max_rss_kb: 1024,
        served: true,
        last_words: String::new(),
    });
    write_frame(agent, &exit, &Items::new(), DEFAULT_MAX_FRAME).unwrap();
}

/// Step the engine until `done` holds (a hang guard of [`DEADLINE`]).
fn step_until(pool: &mut Pool, what: &str, mut done: impl FnMut(&Pool) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(pool) {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        pool.engine.step(true);
    }
}

#[test]
fn a_report_that_comes_before_the_join_drops_the_join() {
    let mut pool = Pool::new(config(0, None));
    let mut agent = agent(&mut pool);
    report(&mut agent, 4242, ExitStatus::Signal(9));
    step_until(&mut pool, "the report", |p| {
        p.engine.agents[&1].dead.contains_key(&4242)
    });
    let mut theirs = agents_worker(&mut pool, 4242, None).unwrap();
    assert!(pool.engine.workers.is_empty(), "a dead worker was taken");
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    assert!(
        matches!(read_frame(&mut theirs, DEFAULT_MAX_FRAME), Ok(None)),
        "the dead worker's connection was not closed"
    );
}

#[test]
fn a_worker_whose_connection_closes_is_judged_by_its_agents_report() {
    let mut pool = Pool::new(config(0, None));
    let mut agent = agent(&mut pool);
    agents_worker(&mut pool, 77, Some(Play::DieAtPoison));
    pool.submit(&[b"poison"], 1);
    // Its connection closes (it "died"): not lost, not settled; the report is
    // awaited.
    step_until(&mut pool, "the worker's hang-up", |p| {
        p.engine.workers.values().all(|w| w.conn.is_none())
    });
    assert_eq!(pool.engine.workers.len(), 1, "settled without its report");
    report(&mut agent, 77, ExitStatus::Signal(11));
    let outcomes = pool.run(1, Play::DieAtPoison, 0);
    assert_eq!(
        outcomes[&0],
        Err(ItemErrorKind::Crashed {
            cause: ExitCause::Signal(11),
            attempts: 1
        }),
        "judged as a local segfault"
    );
    assert_eq!(pool.engine.counters.lost.load(Ordering::Relaxed), 0);
}

/// A config whose heartbeat limit is short.
fn quick() -> Config {
    Config {
        heartbeat: Duration::from_millis(50),
        silence: Duration::from_millis(300),
        ..config(0, None)
    }
}

#[test]
fn a_report_that_never_comes_makes_the_worker_lost_not_crashed() {
    let mut pool = Pool::new(quick());
    let mut agent = agent(&mut pool);
    agents_worker(&mut pool, 78, Some(Play::DieAtPoison));
    pool.submit(&[b"poison"], 1);
    // The agent stays alive (heartbeats) but says nothing of its worker.
    let deadline = Instant::now() + DEADLINE;
    while !pool.engine.workers.is_empty() {
        assert!(Instant::now() < deadline, "the worker was never given up");
        let beat = write_frame(
            &mut agent,
            &Message::Heartbeat,
            &Items::new(),
            DEFAULT_MAX_FRAME,
        );
        beat.unwrap();
        pool.engine.step(true);
    }
    assert!(
        pool.engine.agents.contains_key(&1),
        "the agent itself was lost"
    );
    assert_eq!(pool.engine.counters.lost.load(Ordering::Relaxed), 1);
    assert_eq!(pool.engine.counters.crashes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_lost_agent_takes_its_workers_along_uncharged() {
    let mut pool = Pool::new(config(0, None));
    let agent = agent(&mut pool);
    // A worker that holds its batch and says nothing (its end is kept open).
    let _held = agents_worker(&mut pool, 79, None);
    pool.submit(&[b"one", b"two"], 2);
    step_until(&mut pool, "the batch to be sent", |p| {
        p.engine.workers.values().any(|w| !w.in_flight.is_empty())
    });
    drop(agent);
    step_until(&mut pool, "the agent's loss", |p| {
        p.engine.workers.is_empty()
    });
    assert!(pool.engine.agents.is_empty());
    assert_eq!(pool.engine.counters.lost.load(Ordering::Relaxed), 1);
    assert_eq!(pool.engine.counters.crashes.load(Ordering::Relaxed), 0);
    // What it held is back in the queue, whole and uncharged, for other workers.
    let outcomes = pool.run(2, Play::DieAtPoison, 1);
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.values().all(Result::is_ok), "{outcomes:?}");
}

#[test]
fn a_kill_of_an_agents_worker_goes_to_its_agent() {
    let mut pool = Pool::new(config(0, Some(Duration::from_millis(100))));
    let mut agent = agent(&mut pool);
    // Alive and stuck on the poison: over the item time limit.
    agents_worker(&mut pool, 80, Some(Play::StickAtPoison));
    pool.submit(&[b"poison"], 1);
    let deadline = Instant::now() + DEADLINE;
    let kill = loop {
        assert!(Instant::now() < deadline, "no Kill reached the agent");
        pool.engine.step(false);
        agent
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match read_frame(&mut agent, DEFAULT_MAX_FRAME) {
            Ok(Some(Frame {
                message: Message::Heartbeat,
                ..
            }))
            | Err(_) => continue,
            Ok(Some(frame)) => break frame.message,
            Ok(None) => panic!("the agent was hung up on"),
        }
    };
    assert_eq!(kill, Message::Kill { pid: 80 });
    // The agent kills it and reports: judged as a timeout.
    report(&mut agent, 80, ExitStatus::Signal(9));
    let outcomes = pool.run(1, Play::DieAtPoison, 0);
    assert!(
        matches!(
            outcomes[&0],
            Err(ItemErrorKind::TimedOut { attempts: 1, .. })
        ),
        "{outcomes:?}"
    );
}

#[test]
fn a_worker_whose_own_connection_broke_is_lost_not_crashed() {
    let mut pool = Pool::new(config(0, None));
    let mut agent = agent(&mut pool);
    agents_worker(&mut pool, 81, Some(Play::DieAtPoison));
    pool.submit(&[b"poison"], 1);
    step_until(&mut pool, "the worker's hang-up", |p| {
        p.engine.workers.values().all(|w| w.conn.is_none())
    });
    // It exited because its connection ended, as its agent reports (status 75).
    report(
        &mut agent,
        81,
        ExitStatus::Code(pstream_protocol::EXIT_LOST),
    );
    step_until(&mut pool, "the report", |p| p.engine.workers.is_empty());
    assert_eq!(pool.engine.counters.lost.load(Ordering::Relaxed), 1);
    assert_eq!(pool.engine.counters.crashes.load(Ordering::Relaxed), 0);
}

/// A worker joins claiming to be `pid` of agent 1 over `link`; `theirs` is its end.
fn claims(pool: &mut Pool, link: Box<dyn crate::link::Link>, pid: u32) {
    pool.events
        .send(Event::Connected {
            link,
            join: join(),
            agent: Some((1, pid)),
        })
        .unwrap();
    pool.engine.accept(std::iter::empty());
}

/// Whether the far end sees its connection closed without a word.
fn hung_up(theirs: &mut impl std::io::Read) -> bool {
    matches!(read_frame(theirs, DEFAULT_MAX_FRAME), Ok(None))
}

#[test]
fn a_second_worker_claiming_a_pid_of_an_agent_is_dropped() {
    let mut pool = Pool::new(config(0, None));
    let mut agent = agent(&mut pool);
    let _first = agents_worker(&mut pool, 90, None).unwrap();
    let (ours, mut liar) = UnixStream::pair().unwrap();
    liar.set_read_timeout(Some(DEADLINE)).unwrap();
    claims(&mut pool, Box::new(UnixLink::new(ours).unwrap()), 90);
    assert_eq!(
        pool.engine.workers.len(),
        1,
        "two workers of the pool are pid 90 of one agent"
    );
    assert!(hung_up(&mut liar), "the second claimant was not hung up on");
    // The agent's report of pid 90 settles the one worker that is pid 90.
    report(&mut agent, 90, ExitStatus::Signal(9));
    step_until(&mut pool, "the report", |p| p.engine.workers.is_empty());
}

#[test]
fn a_worker_naming_an_agent_on_another_host_is_dropped() {
    let mut pool = Pool::new(config(0, None));
    // The agent is on this machine (a Unix socket); the worker comes over TCP.
    let _agent = agent(&mut pool);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ours, _) = listener.accept().unwrap();
    claims(
        &mut pool,
        Box::new(crate::link::TcpLink::new(ours).unwrap()),
        91,
    );
    assert!(
        pool.engine.workers.is_empty(),
        "a worker from another host was taken as the agent's"
    );
    assert!(hung_up(&mut theirs), "it was not hung up on");
}

#[test]
fn an_agent_that_joins_as_the_job_ends_is_told_to_stop() {
    let mut pool = Pool::new(config(0, None));
    pool.engine.shutdown_deadline = Some(Instant::now() + DEADLINE);
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    pool.events
        .send(Event::AgentConnected {
            link: Box::new(UnixLink::new(ours).unwrap()),
            agent: AgentJoin {
                proof: Default::default(),
                hostname: "late-node".into(),
                pid: 2,
                workers: 1,
            },
        })
        .unwrap();
    pool.engine.accept(std::iter::empty());
    // `Shutdown` in place of its welcome: it exits 0, nothing failed.
    match read_frame(&mut theirs, DEFAULT_MAX_FRAME) {
        Ok(Some(Frame {
            message: Message::Shutdown,
            ..
        })) => {}
        other => panic!("the late agent was not told to stop: {other:?}"),
    }
    assert!(hung_up(&mut theirs), "the late agent was not hung up on");
    assert!(pool.engine.agents.is_empty());
}
