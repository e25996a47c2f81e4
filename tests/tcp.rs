//! Workers that join over TCP (on loopback): the same job, the same handshake
//! without the local socket's kernel checks, and every stranger refused.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pstream::protocol::auth::{create_token_file, Role, Token};
use pstream::protocol::{read_frame, write_frame, Frame, Hello, Items, Join, Message};
use pstream::{PoolError, ProcessPool};
use pstream_examples::double;
use support::*;

/// A worker process started by the test; killed and reaped when dropped.
struct Joiner(Option<Child>);

impl Joiner {
    /// The example plugin, joining the pool at `addr` with the token in `token`.
    fn start(addr: SocketAddr, token: &Path) -> Joiner {
        Joiner::spawn(Joiner::command(&addr.to_string(), token))
    }

    /// The command that [`Joiner::start`] runs, to add to.
    fn command(addr: &str, token: &Path) -> Command {
        let mut cmd = Command::new(plugin());
        cmd.args(["--connect", addr, "--token-file"])
            .arg(token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        cmd
    }

    fn spawn(mut cmd: Command) -> Joiner {
        Joiner(Some(cmd.spawn().expect("start the example plugin")))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Wait (with a deadline) for it to exit; its exit code and stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the joining worker did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), stderr)
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh token file (0600) in `dir`.
fn token_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    create_token_file(&path).unwrap();
    path
}

/// A pool with no workers of its own, listening on `listener`.
fn listening_pool(listener: TcpListener, token: &Path) -> pstream::PoolBuilder {
    builder()
        .workers(0)
        .listener(listener)
        .token_file(token)
        .wait_workers(Duration::from_secs(60))
}

#[test]
fn workers_that_join_over_tcp_compute_the_job_exactly_on_ipv4_and_ipv6() {
    let _watchdog = watchdog("the TCP jobs", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    for host in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(host).unwrap_or_else(|e| panic!("bind {host}: {e}"));
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0, "port 0 is any free port");
        let joiners = [Joiner::start(addr, &token), Joiner::start(addr, &token)];
        let pool = listening_pool(listener, &token).build().unwrap();
        assert_eq!(pool.listen_addr(), Some(addr));
        assert!(pool.functions().iter().any(|f| f.name == "double"));
        let n = scale(200_000) as i64;
        let mut expected = 0i64;
        for result in pool.map(double, 0..n).unwrap() {
            assert_eq!(result.unwrap(), expected * 2, "{host}");
            expected += 1;
        }
        assert_eq!(expected, n);
        let stats = pool.stats();
        assert_eq!((stats.crashes, stats.lost), (0, 0), "{host}: {stats:?}");
        assert!(
            pool.worker_pids().is_empty(),
            "no process of the pool's own"
        );
        // The token is on no command line and in no environment of the workers.
        let secret = std::fs::read_to_string(&token).unwrap().trim().to_string();
        for j in &joiners {
            for what in ["cmdline", "environ"] {
                let bytes = std::fs::read(format!("/proc/{}/{what}", j.pid())).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&secret),
                    "the token is in the worker's {what}"
                );
            }
        }
        drop(pool);
        // Told to shut down, the workers exit 0.
        for j in joiners {
            let (code, stderr) = j.exit();
            assert_eq!(code, Some(0), "{host}: {stderr}");
        }
    }
}

#[test]
fn a_pool_with_local_workers_also_takes_workers_that_join() {
    let _watchdog = watchdog("the mixed job", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = listening_pool(listener, &token).workers(1).build().unwrap();
    let _joiner = Joiner::start(addr, &token);
    wait_for("the joining worker", || pool.stats().ready >= 2);
    let n = scale(100_000) as i64;
    let results: Vec<i64> = pool
        .map(double, 0..n)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..n).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(pool.worker_pids().len(), 1, "one local worker, as asked");
}

/// What the pool answered a peer that must be refused: never a Welcome.
fn assert_refused(mut stream: TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    loop {
        match read_frame(&mut stream, 1 << 20) {
            Ok(Some(Frame {
                message: Message::Reject { reason },
                ..
            })) => {
                eprintln!("{what}: rejected: {reason}");
                return;
            }
            // The coordinator's half of the handshake, before it learns the proof
            // is wrong.
            Ok(Some(Frame {
                message: Message::Challenge { .. },
                ..
            })) => continue,
            Ok(None) => return eprintln!("{what}: closed"),
            Err(e) => return eprintln!("{what}: connection ended: {e}"),
            Ok(Some(other)) => panic!("{what}: the pool answered {:?}", other.message),
        }
    }
}

#[test]
fn strangers_over_tcp_are_refused_while_a_job_runs_exactly() {
    let _watchdog = watchdog("the hostile TCP peers", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let wrong = token_file(dir.path(), "wrong.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _good = Joiner::start(addr, &token);
    let pool = listening_pool(listener, &token)
        .handshake_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let n = scale(300_000) as i64;
    let mut results = pool.map(double, 0..n).unwrap();
    let mut expected = 0i64;
    let mut take = |k: i64, results: &mut pstream::MapResults<i64>| {
        for _ in 0..k.min(n - expected) {
            assert_eq!(results.next().unwrap().unwrap(), expected * 2);
            expected += 1;
        }
    };
    take(1000, &mut results);

    // A worker with another token: it finds that the coordinator cannot prove
    // that it holds the worker's token, and gives nothing away.
    let (code, stderr) = Joiner::start(addr, &wrong).exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("could not prove"), "{stderr}");
    take(1000, &mut results);

    // A peer that plays the worker's part with a wrong proof.
    let mut s = TcpStream::connect(addr).unwrap();
    let nonce = [9u8; 32];
    let hello = Message::Hello(Hello {
        protocol_version: pstream::protocol::PROTOCOL_VERSION,
        pid: 1,
        nonce,
        agent: None,
    });
    write_frame(&mut s, &hello, &Items::new(), 1 << 20).unwrap();
    let theirs = match read_frame(&mut s, 1 << 20).unwrap().unwrap().message {
        Message::Challenge { nonce: theirs, .. } => theirs,
        other => panic!("expected a Challenge, got {other:?}"),
    };
    let other = Token::random().unwrap();
    let join = Message::Join(Join {
        proof: other.prove(Role::Worker, &nonce, &theirs),
        capacity: 8,
        max_frame: 1 << 20,
        functions: Vec::new(),
    });
    write_frame(&mut s, &join, &Items::new(), 1 << 20).unwrap();
    assert_refused(s, "a wrong proof");
    take(1000, &mut results);

    // Garbage.
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: pstream\r\n\r\n");
    assert_refused(s, "garbage");
    take(1000, &mut results);

    // A length prefix of 4 GiB, then silence.
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(&u32::MAX.to_le_bytes());
    assert_refused(s, "4 GiB prefix");
    take(1000, &mut results);

    // Nothing at all: dropped after the handshake timeout.
    assert_refused(TcpStream::connect(addr).unwrap(), "silence");

    for result in results {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
    let stats = pool.stats();
    assert_eq!(stats.ready, 1, "only the good worker joined: {stats:?}");
    assert_eq!((stats.crashes, stats.lost), (0, 0), "{stats:?}");
}

#[test]
fn a_token_file_that_others_may_read_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ProcessPool::builder()
        .workers(0)
        .listen("127.0.0.1:0".parse().unwrap())
        .token_file(&token)
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PoolError::Token(_)), "{text}");
    assert!(
        text.contains("mode 0644") && text.contains("chmod 600"),
        "{text}"
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = Joiner::start(listener.local_addr().unwrap(), &token).exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("mode 0644"), "{stderr}");
    // It refused before connecting.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the worker connected anyway");
}

/// A joining worker's `--capacity` and `--max-frame` (or their variables) out of
/// range: refused with the range, before it connects, not taken as something else.
#[test]
fn a_joining_worker_refuses_a_capacity_frame_limit_or_address_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Arguments, environment, what stderr must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 7] = [
        (
            &["--capacity", "0"],
            &[],
            "--capacity 0: a worker holds 1 to 4294967295 items",
        ),
        (
            &["--capacity=99999999999"],
            &[],
            "--capacity 99999999999: a worker holds 1 to 4294967295 items",
        ),
        (
            &["--max-frame", "0"],
            &[],
            "--max-frame 0: a frame limit is 4096 to 4294967295 bytes",
        ),
        (
            &["--max-frame", "10"],
            &[],
            "--max-frame 10: a frame limit is 4096",
        ),
        (
            &[],
            &[("PSTREAM_CAPACITY", "0")],
            "PSTREAM_CAPACITY=0: a worker holds 1 to",
        ),
        (
            &[],
            &[("PSTREAM_MAX_FRAME", "100")],
            "PSTREAM_MAX_FRAME=100: a frame limit is 4096",
        ),
        // An address without a port (the last --connect is the one taken).
        (
            &["--connect", "localhost"],
            &[],
            "--connect localhost is not HOST:PORT",
        ),
    ];
    for (args, env, needle) in cases {
        let mut cmd = Joiner::command(&addr, &token);
        cmd.args(args).envs(env.iter().copied());
        let (code, stderr) = Joiner::spawn(cmd).exit();
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
    // Each refused before connecting.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a worker connected anyway");
}

#[test]
fn a_pool_that_no_worker_joins_fails_saying_whom_it_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let err = listening_pool(listener, &token)
        .wait_workers(Duration::from_millis(300))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PoolError::NoWorkers { .. }), "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("--connect"), "{text}");
}

/// Connections beyond the handshakes the door runs at once (64) wait in the listen
/// backlog instead of being closed: with 64 silent peers holding every handshake,
/// a worker that connects after them joins once their handshakes time out. (A
/// fan-out of 512 workers joining together lost dozens to that closing.)
#[test]
fn a_worker_beyond_the_handshakes_under_way_waits_instead_of_being_refused() {
    let _watchdog = watchdog("the crowded door", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Queued before the pool accepts anything: they come first.
    let silent: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let joiner = Joiner::start(addr, &token);
    let pool = listening_pool(listener, &token)
        .handshake_timeout(Duration::from_secs(2))
        .wait_workers(Duration::from_secs(20))
        .build()
        .expect("the worker joins once a handshake slot is free");
    let results: Vec<i64> = pool
        .map(double, 0..1000)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    drop(pool);
    drop(silent);
    let (code, stderr) = joiner.exit();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A TCP proxy on loopback that holds every byte for `delay` each way before
/// passing it on: a link with a long round trip (the kernel here has no netem).
/// Its threads end with the connections they serve.
struct DelayProxy {
    addr: SocketAddr,
}

impl DelayProxy {
    fn start(to: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(to) else {
                    return;
                };
                for stream in [&client, &server] {
                    stream.set_nodelay(true).unwrap();
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                DelayProxy::pipe(client, server, delay);
                DelayProxy::pipe(s2, c2, delay);
            }
        });
        DelayProxy { addr }
    }

    /// Bytes read from `from` are written to `to` `delay` after they came.
    fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
        std::thread::spawn(move || {
            for (at, bytes) in rx {
                let wait = at.saturating_duration_since(Instant::now());
                std::thread::sleep(wait);
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// A worker behind a link with a 40 ms round trip (a proxy holding bytes 20 ms
/// each way): the coordinator measures the round trip from its batches, works
/// out the items the worker needs in flight to stay busy, and, as the window is
/// smaller than that, says so (once) rather than crawl in silence. The window
/// still bounds what is in flight, and the job is exact.
#[test]
fn a_link_with_a_long_round_trip_is_measured_and_a_window_too_small_for_it_is_reported() {
    let _watchdog = watchdog("the delayed link", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = DelayProxy::start(listener.local_addr().unwrap(), Duration::from_millis(20));
    let joiner = Joiner::start(proxy.addr, &token);
    const WINDOW: usize = 256;
    let pool = listening_pool(listener, &token)
        .window(WINDOW)
        .build()
        .unwrap();
    let n = 6_000i64;
    let results = pool.map(double, 0..n).unwrap();
    let mut expected = 0i64;
    let mut results = results;
    for result in results.by_ref() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
    let job = results.stats();
    let stats = pool.stats();
    assert!(
        stats.max_rtt_us >= 40_000,
        "the round trip through the proxy is at least 40 ms: {stats:?}"
    );
    assert!(
        stats.max_credit > WINDOW as u64,
        "the worker needs more than the window in flight: {stats:?}"
    );
    assert!(
        stats.window_short,
        "the short window was not reported: {stats:?}"
    );
    assert!(
        job.peak_in_flight <= WINDOW as u64,
        "the window no longer bounds what is in flight: {job:?}"
    );
    drop(pool);
    let (code, stderr) = joiner.exit();
    assert_eq!(code, Some(0), "{stderr}");
}

/// Four workers behind a link with a round trip of a few milliseconds (a proxy
/// holding bytes 1 ms each way), on trivial items, with the default window: each
/// worker gets a batch at a time and answers it at once, far from the window's
/// bound (it holds two batches, and they are each other's: the link never held
/// the window), so nothing says the window is too small. The notice used to work
/// out a worker's need from its compute rate, with a batch of trivial items
/// counted as 10 µs of work: millions of items per round trip, asked for here and
/// on simulated hosts of one machine, where the link limited nothing.
#[test]
fn a_link_whose_round_trip_the_window_covers_gets_no_notice_however_fast_the_items() {
    const WORKERS: usize = 4;
    let _watchdog = watchdog("the covered link", Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = DelayProxy::start(listener.local_addr().unwrap(), Duration::from_millis(1));
    let joiners: Vec<Joiner> = (0..WORKERS)
        .map(|_| Joiner::start(proxy.addr, &token))
        .collect();
    let pool = listening_pool(listener, &token)
        .min_workers(WORKERS)
        .build()
        .unwrap();
    let n = 300_000i64;
    let mut expected = 0i64;
    for result in pool.map(double, 0..n).unwrap() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
    let stats = pool.stats();
    assert!(
        stats.max_rtt_us >= 2_000,
        "the round trip through the proxy is at least 2 ms: {stats:?}"
    );
    assert!(
        !stats.window_short,
        "the default window was reported too small for a link it covers: {stats:?}"
    );
    drop(pool);
    for joiner in joiners {
        let (code, stderr) = joiner.exit();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

/// The voluntary context switches of the worker `pid`'s progress reporter thread.
fn reporter_wakeups(pid: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "pstream-worker-" || comm.trim().starts_with("pstream-worker-pr") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            return status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .expect("a voluntary_ctxt_switches line")
                .trim()
                .parse()
                .unwrap();
        }
    }
    panic!("worker {pid} has no progress reporter thread");
}

#[test]
fn an_idle_worker_across_the_network_wakes_about_once_per_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "job.token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let joiner = Joiner::start(addr, &token);
    let every = Duration::from_millis(100);
    let pool = listening_pool(listener, &token)
        .heartbeat(every, Duration::from_secs(10))
        .build()
        .unwrap();
    let sum: i64 = pool
        .map(double, 0..1000i64)
        .unwrap()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(sum, 999 * 1000);
    // Idle now: count its reporter's wake-ups over 20 heartbeat intervals. This is
    // a measurement window, not a wait for an event: load can only lower the count.
    let before = reporter_wakeups(joiner.pid());
    let start = Instant::now();
    std::thread::sleep(every * 20);
    let woke = reporter_wakeups(joiner.pid()) - before;
    let intervals = start.elapsed().as_secs_f64() / every.as_secs_f64();
    // One wake-up per heartbeat, and a few looks before it parks after the job.
    // It woke 4 times per heartbeat, plus a sleep each time, before it waited for
    // the heartbeat's due time.
    assert!(
        (woke as f64) <= 1.5 * intervals + 20.0,
        "the idle reporter woke {woke} times in {intervals:.0} heartbeat intervals"
    );
    drop(pool);
}
