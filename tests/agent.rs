//! Host agents on loopback: `pstream-coord --agent --connect ADDR` starts a host's
//! workers, and the coordinator judges their ends as it judges its own workers':
//! the same output, the same errors for a segfault or a hang, nothing charged when
//! an agent is lost, and nothing left behind when either side is killed.
//! (tests/agent_cluster.rs does the same across network namespaces.)

#[path = "support/cli.rs"]
#[allow(dead_code)]
mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;
use util::*;

/// A child process, killed and reaped when dropped (also when a test fails).
struct Guarded(Option<Child>);

impl Guarded {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Wait for it to exit (a hang guard); its exit code and what it wrote on
    /// stderr.
    fn finish(mut self, what: &str) -> (Option<i32>, String) {
        let mut child = self.0.take().unwrap();
        let status = wait_exit(&mut child, what);
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        (status.code(), stderr)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A coordinator listening on loopback, its stderr read as it comes.
struct Coordinator {
    child: Guarded,
    addr: String,
    stderr: StderrLines,
}

impl Coordinator {
    fn start(dir: &Path, function: &str, extra: &[&str]) -> Coordinator {
        let mut cmd = coord(&["run", "--function", function, "--format", "jsonl"]);
        if !extra.contains(&"--wait-workers") {
            cmd.args(["--wait-workers", "60s"]);
        }
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(files(dir))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the coordinator");
        let mut stderr = StderrLines::new(child.stderr.take().unwrap());
        let child = Guarded(Some(child));
        assert!(
            stderr.wait_for("listening on "),
            "the coordinator never said where it listens: {}",
            stderr.seen
        );
        let addr = stderr
            .seen
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_string();
        Coordinator {
            child,
            addr,
            stderr,
        }
    }

    /// Wait for the job to end: its exit code and its stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = wait_exit(self.child.child(), "the coordinator");
        let text = self.stderr.rest().to_string();
        (status.code(), text)
    }
}

/// The job's files in `dir`, as options of `run`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut args = Vec::new();
    for (opt, name) in [
        ("--token-file", "job.token"),
        ("--input", "in.txt"),
        ("--output", "out.txt"),
        ("--errors", "err.txt"),
        ("--stats-json", "stats.json"),
    ] {
        args.push(PathBuf::from(opt));
        args.push(dir.join(name));
    }
    args
}

/// How an agent gets the token.
#[derive(Clone, Copy)]
enum TokenVia {
    Stdin,
    File,
}

/// A host agent with `workers` workers joining `addr`.
fn agent(dir: &Path, addr: &str, workers: u32, via: TokenVia) -> Guarded {
    let mut cmd = Command::new(bin());
    cmd.args([
        "--agent",
        "--connect",
        addr,
        "--workers",
        &workers.to_string(),
    ])
    .env_remove("RUST_LOG")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    match via {
        TokenVia::File => {
            cmd.arg("--token-file")
                .arg(dir.join("job.token"))
                .stdin(Stdio::null());
        }
        TokenVia::Stdin => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().expect("start an agent");
    if let TokenVia::Stdin = via {
        let token = std::fs::read_to_string(dir.join("job.token")).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", token.trim()).unwrap();
    }
    Guarded(Some(child))
}

/// Numbers 1..=n as input, a fresh token; the doubled numbers as the output.
fn numbers(dir: &Path, n: u64) -> String {
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("in.txt"), input).unwrap();
    pstream::protocol::auth::create_token_file(&dir.join("job.token")).unwrap();
    (1..=n).map(|i| format!("{}\n", 2 * i)).collect()
}

/// `n` items for `misbehave`, each `{"fault": "none", "value": i}` but those at
/// `faults` (0-based), which commit the given fault.
fn misbehaving(dir: &Path, n: usize, faults: &[(usize, &str)]) {
    let input: String = (0..n)
        .map(|i| {
            let fault = faults
                .iter()
                .find(|(at, _)| *at == i)
                .map_or("none", |(_, f)| f);
            format!("{{\"fault\":\"{fault}\",\"value\":{i}}}\n")
        })
        .collect();
    std::fs::write(dir.join("in.txt"), input).unwrap();
    let token = dir.join("job.token");
    if !token.exists() {
        pstream::protocol::auth::create_token_file(&token).unwrap();
    }
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&dir.join("stats.json"))).unwrap()
}

/// The same job run on this machine alone, with `workers` local workers: its exit
/// code, output and errors file.
/// Map `double` over `0..n` on `pool`: every result exact, in order, and no crash
/// or lost connection counted.
fn doubles_exactly(pool: &pstream::ProcessPool, n: i64) {
    let results: Vec<i64> = pool
        .map(pstream_examples::double, 0..n)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..n).map(|x| x * 2).collect::<Vec<_>>());
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.lost), (0, 0), "{stats:?}");
}

fn local_run(dir: &Path, function: &str, extra: &[&str]) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let local = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("in.txt"), local.path().join("in.txt")).unwrap();
    let mut cmd = coord(&["run", "--function", function, "--format", "jsonl"]);
    cmd.args(["--workers", "2"])
        .arg("--input")
        .arg(local.path().join("in.txt"))
        .arg("--output")
        .arg(local.path().join("out.txt"))
        .arg("--errors")
        .arg(local.path().join("err.txt"))
        .args(extra);
    let out = output_of(&mut cmd);
    (
        out.status.code(),
        read(&local.path().join("out.txt")),
        read(&local.path().join("err.txt")),
    )
}

#[test]
fn bad_agent_arguments_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--agent"], "--connect HOST:PORT is missing"),
        (&["--agent", "--connect"], "--connect needs an address"),
        (
            &["--agent", "--connect", "--workers", "2"],
            "--connect needs an address, HOST:PORT, not the flag `--workers`",
        ),
        (
            &["--agent", "--connect", "127.0.0.1:1", "--workers", "0"],
            "--workers 0 is not a number of 1 or more",
        ),
        (
            &[
                "--agent",
                "--connect",
                "127.0.0.1:1",
                "--workers",
                "100000000",
            ],
            "--workers 100000000: an agent runs at most 4096 workers",
        ),
        (
            &["--agent", "--connect", "127.0.0.1:1", "--token", "ab"],
            "never given on the command line",
        ),
        (
            &["--agent", "--connect", "127.0.0.1:1", "--frobnicate"],
            "unknown argument `--frobnicate`",
        ),
    ];
    for (args, needle) in cases {
        let out = output_of(
            Command::new(bin())
                .args(args)
                .env_remove("PSTREAM_CONNECT")
                .stdin(Stdio::null()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // No token file and nothing on stdin; a token file that is not private.
    let out = output_of(
        Command::new(bin())
            .args(["--agent", "--connect", "127.0.0.1:1"])
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no token"), "{stderr}");
    let open = dir.path().join("open.token");
    std::fs::write(&open, "00".repeat(32)).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = output_of(
        Command::new(bin())
            .args(["--agent", "--connect", "127.0.0.1:1", "--token-file"])
            .arg(&open)
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mode 0644"), "{stderr}");
}

#[test]
fn more_workers_than_a_host_agent_runs_are_refused_before_anything_starts() {
    for (args, needle) in [
        (
            ["--ssh", "node:100000000"],
            "100000000 workers: a host agent runs at most 4096",
        ),
        (["--workers-per-host", "5000"], "5000 is not in 1..=4096"),
    ] {
        let mut cmd = coord(&["run", "--function", "double", "--no-progress"]);
        cmd.args(args);
        if args[0] != "--ssh" {
            cmd.args(["--ssh", "node"]);
        }
        let out = expect_code(&mut cmd, Some(b"1\n"), 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("starting a host agent"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn agents_compute_the_job_exactly_and_keep_the_token_out_of_sight() {
    let dir = tempfile::tempdir().unwrap();
    let n = scale(200_000);
    let expected = numbers(dir.path(), n);
    let coordinator = Coordinator::start(dir.path(), "slow_double", &[]);
    let a = agent(dir.path(), &coordinator.addr, 2, TokenVia::Stdin);
    let b = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    // While they run: the token is on no command line and in no environment of
    // the agents' workers.
    wait_until("the agents' workers", || {
        children(a.pid()).len() == 2 && children(b.pid()).len() == 2
    });
    let secret = std::fs::read_to_string(dir.path().join("job.token"))
        .unwrap()
        .trim()
        .to_string();
    for pid in children(a.pid()).into_iter().chain(children(b.pid())) {
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&secret),
                    "the token is in the worker's {what}"
                );
            }
        }
    }
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        read(&dir.path().join("out.txt")) == expected.as_bytes(),
        "the output differs from the expected one"
    );
    let stats = stats(dir.path());
    assert_eq!(stats["crashes"], 0, "{stats}");
    assert!(
        stats["hosts"]["127.0.0.1"]["workers"].as_u64() >= Some(4),
        "{stats}"
    );
    // Told to shut down, the agents exit 0, their workers with them.
    for (agent, name) in [(a, "agent a"), (b, "agent b")] {
        let pid = agent.pid();
        let workers = children(pid);
        let (code, stderr) = agent.finish(name);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        wait_gone(&workers);
    }
}

#[test]
fn a_segfault_on_an_agents_worker_is_reported_as_a_local_run_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    misbehaving(dir.path(), 400, &[(137, "segv")]);
    let extra = ["--retries", "2"];
    let (local_code, local_out, local_err) = local_run(dir.path(), "misbehave", &extra);
    assert_eq!(local_code, Some(1));
    let coordinator = Coordinator::start(dir.path(), "misbehave", &extra);
    let _agent = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, local_code, "{stderr}");
    let errors = read(&dir.path().join("err.txt"));
    assert_eq!(
        String::from_utf8_lossy(&errors),
        String::from_utf8_lossy(&local_err),
        "the errors differ from a local run's"
    );
    let errors = String::from_utf8_lossy(&errors);
    assert!(
        errors.contains("\"line\":138")
            && errors.contains("SIGSEGV")
            && errors.contains("tried 3 times"),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(
        read(&dir.path().join("out.txt")) == local_out,
        "the output differs"
    );
    let stats = stats(dir.path());
    assert!(
        stats["hosts"]["127.0.0.1"]["crashes"].as_u64() >= Some(3),
        "{stats}"
    );
    assert_eq!(stats["lost_workers"], 0, "{stats}");
}

#[test]
fn an_item_timeout_on_an_agents_worker_kills_it_through_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    misbehaving(dir.path(), 60, &[(20, "hang")]);
    let extra = ["--timeout", "1s", "--retries", "0"];
    let (local_code, local_out, local_err) = local_run(dir.path(), "misbehave", &extra);
    let coordinator = Coordinator::start(dir.path(), "misbehave", &extra);
    let agent = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    // A hung worker is killed only through its agent: without the kill, its
    // report never comes and the job never ends (the hang guard fails the test).
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, local_code, "{stderr}");
    let errors = read(&dir.path().join("err.txt"));
    assert_eq!(
        String::from_utf8_lossy(&errors),
        String::from_utf8_lossy(&local_err),
        "the errors differ from a local run's"
    );
    assert!(String::from_utf8_lossy(&errors).contains("\"line\":21"));
    assert!(
        read(&dir.path().join("out.txt")) == local_out,
        "the output differs"
    );
    let (code, stderr) = agent.finish("the agent");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_killed_agent_takes_its_workers_along_and_the_job_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = scale(400_000);
    let expected = numbers(dir.path(), n);
    let coordinator = Coordinator::start(dir.path(), "slow_double", &["--retries", "0"]);
    let mut doomed = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    let survivor = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    wait_until("the doomed agent's workers to take work", || {
        children(doomed.pid()).len() == 2 && !read(&dir.path().join("out.txt")).is_empty()
    });
    let workers = children(doomed.pid());
    signal(doomed.child(), Signal::SIGKILL);
    let _ = doomed.finish("the killed agent");
    // Its workers die with it (their parent-death signal).
    wait_gone(&workers);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        read(&dir.path().join("out.txt")) == expected.as_bytes(),
        "the output differs from the expected one"
    );
    let stats = stats(dir.path());
    assert_eq!(
        (&stats["crashes"], &stats["items_failed"]),
        (&0.into(), &0.into()),
        "{stats}"
    );
    assert!(stats["lost_workers"].as_u64() >= Some(1), "{stats}");
    let (code, stderr) = survivor.finish("the surviving agent");
    assert_eq!(code, Some(0), "{stderr}");
}

/// An item hangs, then its worker goes with its agent and no other comes: the job
/// does not wait for ever; after `--wait-workers` it fails, naming the work left
/// and what became of the item in work.
#[test]
fn a_job_left_without_workers_while_an_item_hangs_names_the_item() {
    let dir = tempfile::tempdir().unwrap();
    misbehaving(dir.path(), 3, &[(1, "hang")]);
    let coordinator = Coordinator::start(dir.path(), "misbehave", &["--wait-workers", "2s"]);
    let mut agent = agent(dir.path(), &coordinator.addr, 1, TokenVia::File);
    // Item 0 is written (the output is ordered): its worker is on item 1, hung.
    wait_until("the first item's result", || {
        !read(&dir.path().join("out.txt")).is_empty()
    });
    let workers = children(agent.pid());
    signal(agent.child(), Signal::SIGKILL);
    let _ = agent.finish("the killed agent");
    wait_gone(&workers);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(3), "{stderr}");
    for needed in [
        "no worker for 2s",
        "2 items were not done, the first item 1 (counting from 0)",
        "item 1 was in work on the worker at 127.0.0.1:",
        "when it was lost (its host agent was lost",
    ] {
        assert!(stderr.contains(needed), "no `{needed}` in: {stderr}");
    }
}

#[test]
fn a_killed_coordinator_leaves_no_agent_and_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), scale(2_000_000));
    let mut coordinator = Coordinator::start(dir.path(), "slow_double", &[]);
    let mut a = agent(dir.path(), &coordinator.addr, 2, TokenVia::File);
    wait_until("the agent's workers to take work", || {
        children(a.pid()).len() == 2 && !read(&dir.path().join("out.txt")).is_empty()
    });
    let workers = children(a.pid());
    signal(coordinator.child.child(), Signal::SIGKILL);
    let status = wait_exit(a.child(), "the agent");
    assert_eq!(
        status.code(),
        Some(1),
        "the agent exits 1 when its coordinator is gone"
    );
    wait_gone(&workers);
}

#[test]
fn a_host_whose_workers_cannot_start_is_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 100);
    // 1 MiB of address space: no worker gets as far as its handshake.
    let coordinator = Coordinator::start(
        dir.path(),
        "double",
        &["--memory-limit", "1M", "--wait-workers", "3s"],
    );
    let agent = agent(dir.path(), &coordinator.addr, 1, TokenVia::File);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the last start failure: a worker started by the host agent on")
            && stderr.contains("before it was welcomed"),
        "{stderr}"
    );
    let (code, agent_stderr) = agent.finish("the agent");
    assert!(
        agent_stderr.contains("a worker failed to start"),
        "{agent_stderr}"
    );
    // It was told the job is over (or saw it end): it exits, its workers with it.
    assert!(matches!(code, Some(0) | Some(1)), "{agent_stderr}");
}

#[test]
fn an_agent_replaces_recycled_workers_and_the_job_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 1);
    let token = dir.path().join("job.token");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let agent = agent(dir.path(), &addr, 2, TokenVia::File);
    let pool = pstream::ProcessPool::builder()
        .workers(0)
        .listener(listener)
        .token_file(&token)
        .max_items_per_worker(2000)
        .wait_workers(PATIENCE)
        .build()
        .unwrap();
    doubles_exactly(&pool, scale(20_000) as i64);
    // Each worker served about 2000 items: the agent started many more than two.
    let host = &pool.host_stats()["127.0.0.1"];
    assert!(host.workers >= 5, "workers were not recycled: {host:?}");
    drop(pool);
    let (code, stderr) = agent.finish("the agent");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_agent_with_another_token_refuses_the_coordinator_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let expected = numbers(dir.path(), 1000);
    let coordinator = Coordinator::start(dir.path(), "double", &[]);
    let wrong = tempfile::tempdir().unwrap();
    numbers(wrong.path(), 1);
    let stranger = agent(wrong.path(), &coordinator.addr, 1, TokenVia::Stdin);
    let (code, stderr) = stranger.finish("the agent with a wrong token");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("could not prove that it holds the job's token")
            && stderr.contains("it is not this agent's coordinator"),
        "{stderr}"
    );
    let good = agent(dir.path(), &coordinator.addr, 1, TokenVia::Stdin);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(read(&dir.path().join("out.txt")) == expected.as_bytes());
    assert_eq!(good.finish("the agent").0, Some(0));
}

#[test]
fn what_a_function_started_ends_with_its_worker_when_the_agent_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // One item whose function starts a `sleep 600` in the worker's group and hangs.
    std::fs::write(
        dir.path().join("in.txt"),
        "{\"marker\":\"stopped-agent\",\"fault\":\"hang\"}\n",
    )
    .unwrap();
    pstream::protocol::auth::create_token_file(&dir.path().join("job.token")).unwrap();
    let heartbeats = ["--heartbeat", "100ms", "--heartbeat-timeout", "1s"];
    let coordinator = Coordinator::start(dir.path(), "spawn_sleeper", &heartbeats);
    let mut stopped = agent(dir.path(), &coordinator.addr, 1, TokenVia::File);
    let mut sleeps = Vec::new();
    wait_until("the worker's function to start its sleep", || {
        sleeps = children(stopped.pid())
            .into_iter()
            .flat_map(children)
            .collect();
        !sleeps.is_empty()
    });
    // The agent falls silent: the coordinator gives it up and hangs up on its
    // worker, which ends. Its agent cannot end the worker's group now (nor ever,
    // if it is killed while stopped): the worker itself must.
    signal(stopped.child(), Signal::SIGSTOP);
    wait_until("the sleep to end with its worker", || {
        sleeps
            .iter()
            .all(|&pid| process_state(pid).is_none_or(|state| state == 'Z'))
    });
    signal(stopped.child(), Signal::SIGKILL);
    let _ = stopped.finish("the killed agent");
    drop(coordinator);
}

#[test]
fn an_agent_sent_to_something_else_than_a_coordinator_says_so_naming_its_host() {
    let dir = tempfile::tempdir().unwrap();
    pstream::protocol::auth::create_token_file(&dir.path().join("job.token")).unwrap();
    // A web server where the coordinator should be: it answers in HTTP and hangs up.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = web.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = web.accept().unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = conn.read(&mut [0u8; 512]);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let (code, stderr) = agent(dir.path(), &addr, 1, TokenVia::File).finish("the agent");
    server.join().unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for needed in [
        format!("pstream agent on {} (pid ", host.trim()),
        format!("what answered at {addr} is not a pstream coordinator"),
    ] {
        assert!(stderr.contains(&needed), "no `{needed}` in: {stderr}");
    }
}

#[test]
fn an_agent_whose_standard_input_stays_open_and_silent_gives_up_on_the_token() {
    // As `ssh host PLUGIN --agent ...` without -n and without the token piped in.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = Command::new(bin())
        .args(["--agent", "--connect", &addr, "--workers", "1"])
        .env_remove("RUST_LOG")
        .env_remove("PSTREAM_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start an agent");
    // Held open, never written to, until the agent has exited.
    let silent = child.stdin.take();
    let (code, stderr) = Guarded(Some(child)).finish("the agent waiting for its token");
    drop(silent);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no token: standard input gave no line in"),
        "{stderr}"
    );
}

/// `double` over 1, 2, 3 with `--ssh 127.0.0.1,127.0.0.2`, one worker per host, through
/// the stand-in ssh `script` (`script HOST LINE`): checks the output is exact and
/// returns the coordinator's stderr.
fn two_host_ssh_job(script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-ssh");
    std::fs::write(&fake, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--format",
            "jsonl",
            "--ssh",
            "127.0.0.1,127.0.0.2",
            "--ssh-command",
            fake.to_str().unwrap(),
            "--workers-per-host",
            "1",
            "--no-progress",
        ]),
        Some(b"1\n2\n3\n"),
        0,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n4\n6\n");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A host whose "ssh" is still connecting when the job ends is stopped by the pool
/// (SIGTERM to its process group after the grace period), and ssh so stopped exits
/// 255: that says nothing about the host, and is not reported as ssh failing. (A
/// stand-in for ssh runs the agent here for one host and, for the other, hangs as a
/// slow connection would, exiting 255 on SIGTERM as ssh does.)
#[test]
fn an_ssh_still_connecting_when_the_job_ends_is_stopped_without_a_failure() {
    let stderr = two_host_ssh_job(
        "#!/bin/sh\n\
         host=$1; line=$2\n\
         if [ \"$host\" = 127.0.0.2 ]; then trap 'exit 255' TERM; sleep 120 & wait; exit 255; fi\n\
         exec sh -c \"$line\"\n",
    );
    assert!(!stderr.contains("ssh failed"), "{stderr}");
    assert!(
        stderr.contains("pstream: host 127.0.0.2: ssh stopped as the job ended"),
        "{stderr}"
    );
}

/// What the [`Relay`] saw, and what it waits for.
#[derive(Debug, Default)]
struct Seen {
    /// Agents and workers that said who they are (`AgentJoin`, `Join`).
    agents: usize,
    workers: usize,
    /// The coordinator told the first agent `Shutdown` (held back from it).
    shutdown: bool,
    /// The first agent reported a worker that ended before its welcome.
    unwelcomed: Option<pstream::protocol::WorkerExit>,
}

/// What a connection through the relay turned out to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Unknown,
    FirstAgent,
    Other,
}

/// A relay on loopback between host agents (and their workers) and a
/// coordinator, frame by frame, that holds three frames back so that a job ends
/// in the order a loaded host can make it end, every time:
/// * the second worker's `Join`, and a second agent's `AgentJoin`, until the
///   coordinator tells the first agent `Shutdown`: the worker's handshake ends as
///   the job does, and the agent joins it late;
/// * that `Shutdown`, until the first agent reported a worker that ended before
///   its welcome: the agent hears of the end after its worker's handshake was cut
///   (on a host with hundreds of workers exiting at once, its reader thread may
///   run hundreds of milliseconds later than its workers' waiters).
///
/// With `hold` false, nothing is held. `inject`: frames written to the first
/// agent right after its `AgentWelcome`, as if the coordinator had sent them.
struct Relay {
    addr: String,
    seen: std::sync::Arc<(std::sync::Mutex<Seen>, std::sync::Condvar)>,
}

impl Relay {
    fn start(
        coordinator: std::net::SocketAddr,
        hold: bool,
        inject: Vec<pstream::protocol::Message>,
    ) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new((
            std::sync::Mutex::new(Seen::default()),
            std::sync::Condvar::new(),
        ));
        let shared = std::sync::Arc::clone(&seen);
        // Detached: each thread ends when its connections do (or with the test).
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let seen = std::sync::Arc::clone(&shared);
                let inject = inject.clone();
                std::thread::spawn(move || {
                    relay_connection(client, coordinator, seen, hold, inject)
                });
            }
        });
        Relay { addr, seen }
    }

    fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.seen.0.lock().unwrap())
    }
}

/// Wait (at most [`PATIENCE`]) until `ready` holds of what the relay saw.
fn await_seen(seen: &(std::sync::Mutex<Seen>, std::sync::Condvar), ready: impl Fn(&Seen) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut state = seen.0.lock().unwrap();
    while !ready(&state) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return; // The test's assertions say what did not happen.
        }
        state = seen.1.wait_timeout(state, left).unwrap().0;
    }
}

fn relay_connection(
    client: std::net::TcpStream,
    coordinator: std::net::SocketAddr,
    seen: std::sync::Arc<(std::sync::Mutex<Seen>, std::sync::Condvar)>,
    hold: bool,
    inject: Vec<pstream::protocol::Message>,
) {
    use pstream::protocol::{read_frame, write_frame, Items, Message};
    let Ok(upstream) = std::net::TcpStream::connect(coordinator) else {
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(PATIENCE));
    }
    let role = std::sync::Arc::new(std::sync::Mutex::new(Role::Unknown));
    let max = 1 << 30;
    // Coordinator → client.
    let down = {
        let (mut from, mut to) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
        let (seen, role) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&role));
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = read_frame(&mut from, max) {
                if hold
                    && frame.message == Message::Shutdown
                    && *role.lock().unwrap() == Role::FirstAgent
                {
                    seen.0.lock().unwrap().shutdown = true;
                    seen.1.notify_all();
                    await_seen(&seen, |s| s.unwelcomed.is_some());
                }
                if write_frame(&mut to, &frame.message, &frame.items, max).is_err() {
                    break;
                }
                if matches!(frame.message, Message::AgentWelcome { .. })
                    && *role.lock().unwrap() == Role::FirstAgent
                {
                    for message in &inject {
                        let _ = write_frame(&mut to, message, &Items::new(), max);
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        })
    };
    // Client → coordinator.
    let (mut from, mut to) = (client, upstream);
    let mut frames = 0;
    while let Ok(Some(frame)) = read_frame(&mut from, max) {
        frames += 1;
        let mut held = false;
        match &frame.message {
            Message::AgentJoin(_) => {
                let mut s = seen.0.lock().unwrap();
                s.agents += 1;
                let first = s.agents == 1;
                *role.lock().unwrap() = if first { Role::FirstAgent } else { Role::Other };
                held = !first;
            }
            Message::Join(_) if frames == 2 => {
                let mut s = seen.0.lock().unwrap();
                s.workers += 1;
                *role.lock().unwrap() = Role::Other;
                held = s.workers == 2;
            }
            Message::WorkerExited(exit) if !exit.served => {
                seen.0.lock().unwrap().unwelcomed = Some(exit.clone());
            }
            _ => {}
        }
        seen.1.notify_all();
        if hold && held {
            await_seen(&seen, |s| s.shutdown);
        }
        if write_frame(&mut to, &frame.message, &frame.items, max).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = down.join();
}

/// The end of a job is calm: a worker whose handshake the end cuts is told that
/// the job is over, exits 0, and its agent, even when it hears of the end only
/// afterwards, does not take it for a start failure; an agent that joins as the
/// job ends is told so, says it had nothing to do, and exits 0.
#[test]
fn the_end_of_a_job_cuts_handshakes_and_turns_late_agents_away_quietly() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 1);
    let token = dir.path().join("job.token");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(listener.local_addr().unwrap(), true, Vec::new());
    let agent = agent(dir.path(), &relay.addr, 2, TokenVia::File);
    let pool = pstream::ProcessPool::builder()
        .workers(0)
        .listener(listener)
        .token_file(&token)
        .wait_workers(PATIENCE)
        .build()
        .unwrap();
    let results: Vec<i64> = pool
        .map(pstream_examples::double, 0..100)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..100).map(|x| x * 2).collect::<Vec<_>>());
    // The second worker is in its handshake, held; a second agent comes.
    let late = self::agent(dir.path(), &relay.addr, 1, TokenVia::File);
    wait_until(
        "the second worker's Join and the late agent's AgentJoin",
        || relay.seen(|s| s.workers == 2 && s.agents == 2),
    );
    drop(pool);
    let (code, stderr) = agent.finish("the agent");
    let cut = relay.seen(|s| s.unwelcomed.clone());
    assert!(
        cut.is_some(),
        "the agent reported no worker that ended before its welcome: {stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("failed to start"), "{stderr}");
    assert_eq!(
        cut.unwrap().status,
        pstream::protocol::ExitStatus::Code(0),
        "the worker whose handshake the end of the job cut did not exit 0: {stderr}"
    );
    let (code, stderr) = late.finish("the late agent");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("was ending when this agent joined")
            && stderr.contains("nothing to do")
            && !stderr.contains("rejected"),
        "{stderr}"
    );
}

/// `Kill` names a worker of the agent by pid. One for a pid that is no worker of
/// the agent (an unrelated process, this test's own: as a coordinator whose
/// report crossed the worker's end might send, or a forged one) is ignored: no
/// signal to that process, no end of the agent, the job exact.
#[test]
fn a_kill_for_a_pid_that_is_no_worker_of_the_agent_is_ignored() {
    use pstream::protocol::Message;
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 1);
    let token = dir.path().join("job.token");
    // An unrelated process, in a process group of its own (a kill of its group
    // would reach nothing else).
    let mut bystander = Guarded(Some(
        std::os::unix::process::CommandExt::process_group(Command::new("sleep").arg("600"), 0)
            .spawn()
            .expect("start a sleep"),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let coordinator = listener.local_addr().unwrap();
    let relay = Relay::start(
        coordinator,
        false,
        vec![
            Message::Kill {
                pid: bystander.pid(),
            },
            Message::Kill {
                pid: std::process::id(),
            },
        ],
    );
    let agent = agent(dir.path(), &relay.addr, 2, TokenVia::File);
    let pool = pstream::ProcessPool::builder()
        .workers(0)
        .listener(listener)
        .token_file(&token)
        .min_workers(2)
        .wait_workers(PATIENCE)
        .build()
        .unwrap();
    doubles_exactly(&pool, 1000);
    drop(pool);
    let (code, stderr) = agent.finish("the agent");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        bystander.child().try_wait().unwrap(),
        None,
        "the unrelated process was signalled"
    );
}

/// An agent the pool started that is still trying to reach the coordinator when
/// the job ends (its ssh connected late, the coordinator's door is closed): the
/// pool closes its standard input, and the agent exits 0 at once, quietly,
/// instead of retrying its connection until the pool stops its ssh 10 s later.
/// (A stand-in for ssh runs the agent for one host at once and, for the other,
/// only once the coordinator's port is closed.)
#[test]
fn an_agent_still_connecting_when_the_job_ends_stops_when_its_launcher_says() {
    let stderr = two_host_ssh_job(
        "#!/bin/bash\n\
         host=$1; line=$2\n\
         if [ \"$host\" = 127.0.0.2 ]; then\n\
           port=$(sed -n 's/.*--connect [^ ]*:\\([0-9]*\\).*/\\1/p' <<< \"$line\")\n\
           while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do sleep 0.05; done\n\
         fi\n\
         exec sh -c \"$line\"\n",
    );
    assert!(!stderr.contains("stopped as the job ended"), "{stderr}");
    assert!(!stderr.contains("127.0.0.2:"), "{stderr}");
}

/// Ctrl-C or SIGTERM while the job waits for its first workers (`--listen`, or host
/// agents over ssh still connecting) ends that wait at once: the launcher exits
/// with the signal's code and the summary of a job that did nothing, touches no
/// output, and leaves no ssh behind. (The first signal used to only ask the job to
/// stop reading input, which it had not started: the launcher went on waiting for
/// the whole `--wait-workers`, 600 s here, and a scheduler's SIGTERM was ignored.)
#[test]
fn a_signal_while_the_job_waits_for_its_first_workers_ends_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 10);
    std::fs::write(dir.path().join("out.txt"), "kept\n").unwrap();
    let mut coordinator = Coordinator::start(dir.path(), "double", &["--wait-workers", "600s"]);
    signal(coordinator.child.child(), Signal::SIGINT);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("stopped early: SIGINT"), "{stderr}");
    assert_eq!(read(&dir.path().join("out.txt")), b"kept\n");

    // The same over ssh: a host whose ssh never gets through (it waits, as one
    // still connecting does, and says when it is ended).
    let fake = dir.path().join("fake-ssh");
    let marker = dir.path().join("ssh-ended");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ntrap 'echo ended > {}; exit 255' TERM\necho connecting >&2\nwhile :; do sleep 0.05; done\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = coord(&["run", "--function", "double", "--ssh", "127.0.0.1"]);
    cmd.args(["--wait-workers", "600s", "--no-progress", "--ssh-command"])
        .arg(&fake)
        .arg("--input")
        .arg(dir.path().join("in.txt"))
        .arg("--output")
        .arg(dir.path().join("out.txt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the coordinator");
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    let mut child = Guarded(Some(child));
    assert!(stderr.wait_for("connecting"), "{}", stderr.seen);
    signal(child.child(), Signal::SIGTERM);
    let (code, _) = child.finish("the coordinator after SIGTERM");
    let text = stderr.rest().to_string();
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("stopped early: SIGTERM"), "{text}");
    assert_eq!(read(&dir.path().join("out.txt")), b"kept\n");
    // Its ssh was stopped (not left to run), and is no child of anyone here.
    assert!(marker.exists(), "the ssh was not stopped: {text}");
}

/// `--transfer` copies the plugin to each host and runs it there: a plugin that
/// could not run here (missing, a directory, a file that is not executable) is
/// refused before any ssh starts, naming it, once, with exit status 3. (It used to be copied and made
/// executable on every host: a text file given by mistake ran there as a shell
/// script; a missing one or a directory failed each host with a message of `cat`
/// or about copying.)
#[test]
fn transfer_refuses_a_plugin_that_could_not_run_here_before_any_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-ssh");
    let marker = dir.path().join("ssh-ran");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho ran >> {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "echo this is no plugin\n").unwrap();
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o644)).unwrap();
    let missing = dir.path().join("missing-plugin");
    for (plugin, why) in [
        (&text, "it is not executable (mode 0644)"),
        (&missing, "No such file or directory"),
        (&dir.path().to_path_buf(), "it is not a file"),
    ] {
        let mut cmd = coord(&["run", "--function", "double", "--no-progress"]);
        cmd.args([
            "--ssh",
            "127.0.0.1,127.0.0.2",
            "--transfer",
            "--ssh-command",
        ])
        .arg(&fake)
        .arg("--plugin")
        .arg(plugin);
        // Exit 3, as for a plugin that does not start without --transfer.
        let out = expect_code(&mut cmd, Some(b"1\n"), 3);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "cannot transfer the program {} to the hosts: ",
                plugin.display()
            )) && stderr.contains(why),
            "{stderr}"
        );
        assert_eq!(stderr.matches(why).count(), 1, "{stderr}");
        assert!(!marker.exists(), "ssh ran: {stderr}");
    }
}

/// A worker joining by hand with a frame limit below the job's (`--max-frame`
/// given to the coordinator, not to the worker) is refused at its handshake,
/// told which `--max-frame` to give. (It used to be taken: the first item larger
/// than its own limit made it exit, 'a frame of N bytes exceeds the limit', which
/// the coordinator saw as a lost connection; every worker joining the same way
/// went the same way, and the job ended for want of workers.) One given the
/// job's limit computes the job.
#[test]
fn a_worker_whose_frame_limit_is_below_the_jobs_is_refused_saying_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let expected = numbers(dir.path(), 100);
    let coordinator = Coordinator::start(dir.path(), "double", &["--max-frame", "128M"]);
    let worker = |extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(["--connect", &coordinator.addr, "--token-file"])
            .arg(dir.path().join("job.token"))
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Guarded(Some(cmd.spawn().expect("start a worker")))
    };
    let (code, stderr) = worker(&[]).finish("the worker with the default limit");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("67108864") && stderr.contains("--max-frame 134217728"),
        "{stderr}"
    );
    let good = worker(&["--max-frame", "134217728"]);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(read(&dir.path().join("out.txt")) == expected.as_bytes());
    let (code, stderr) = good.finish("the worker with the job's limit");
    assert_eq!(code, Some(0), "{stderr}");
}

/// A job that no worker joins because those that tried were refused (another
/// token, here) says so when it gives up, with the reason: the refusals used to
/// be in the log only (`RUST_LOG=warn`), and the job said just `no worker for
/// 3s`, as if nobody had tried.
#[test]
fn a_job_whose_joiners_were_refused_says_why_when_it_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    numbers(dir.path(), 10);
    let coordinator = Coordinator::start(dir.path(), "double", &["--wait-workers", "3s"]);
    let other = dir.path().join("other.token");
    pstream::protocol::auth::create_token_file(&other).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["--connect", &coordinator.addr, "--token-file"])
        .arg(&other)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (code, stderr) = Guarded(Some(cmd.spawn().unwrap())).finish("the worker");
    assert_eq!(code, Some(1), "{stderr}");
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("no worker for 3s")
            && stderr.contains("was refused")
            && stderr.contains("it most likely holds another token"),
        "{stderr}"
    );
}

/// `--min-workers` works with `--ssh` alone (the pool listens for the agents'
/// workers on its own): it used to require `--listen`, which `--ssh` does not
/// need, so `--ssh a:2,b:2 --min-workers 4` was refused by the parser. Without
/// any way for workers to join, it is still refused, saying what to give.
#[test]
fn min_workers_goes_with_ssh_without_listen() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-ssh");
    std::fs::write(&fake, "#!/bin/sh\necho 'no route to host' >&2\nexit 255\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = coord(&["run", "--function", "double", "--no-progress"]);
    cmd.args(["--ssh", "127.0.0.1:2,127.0.0.2:2", "--min-workers", "4"])
        .arg("--ssh-command")
        .arg(&fake);
    let out = expect_code(&mut cmd, Some(b"1\n"), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no host could start workers"), "{stderr}");

    let mut cmd = coord(&["run", "--function", "double", "--min-workers", "4"]);
    let out = expect_code(&mut cmd, Some(b"1\n"), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--min-workers") && stderr.contains("--listen") && stderr.contains("--ssh"),
        "{stderr}"
    );
}
