//! What `pstream-coord` leaves behind, and what it does with its signals: end-to-end
//! tests over the built launcher, each with its own `$TMPDIR` so that its socket
//! directories can be watched (and no other test's are touched).

#[path = "support/cli.rs"]
#[allow(dead_code)] // shared with the other launcher tests
mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::*;

/// How long a launcher that has nothing left to do may take to exit: a hang guard.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// The socket directories (`pstream-*`) in `tmp`, sorted.
fn socket_dirs(tmp: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pstream-"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// Wait until a socket directory that is not in `known` appears in `tmp`; return it.
fn new_socket_dir(tmp: &Path, known: &[PathBuf]) -> PathBuf {
    let mut found = None;
    wait_until("a new socket directory", || {
        found = socket_dirs(tmp).into_iter().find(|d| !known.contains(d));
        found.is_some()
    });
    found.unwrap()
}

/// `pstream-coord run` of `double` over stdin, with `tmp` as its `$TMPDIR`.
fn double(tmp: &Path) -> Command {
    let mut cmd = coord(&[
        "run",
        "--function",
        "double",
        "--format",
        "jsonl",
        "--workers",
        "2",
    ]);
    cmd.env("TMPDIR", tmp);
    cmd
}

/// Wait for `child` to exit within `deadline`; kill it and fail the test if it does
/// not.
fn exit_within(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Launchers started by a test: killed and reaped when the test ends, whether it
/// passed or not.
#[derive(Default)]
struct Launchers(Vec<Child>);

impl Launchers {
    fn start(&mut self, cmd: &mut Command) -> &mut Child {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
        self.0.push(child);
        self.0.last_mut().unwrap()
    }
}

impl Drop for Launchers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// The socket directory.

#[test]
fn a_launcher_whose_socket_directory_was_deleted_still_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut launchers = Launchers::default();
    let child = launchers.start(
        double(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let dir = new_socket_dir(tmp.path(), &[]);
    // A first result: the pool is up, every worker connected.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"2\n");
    // Somebody cleans $TMPDIR while the job runs.
    std::fs::remove_dir_all(&dir).unwrap();
    stdin.write_all(b"2\n3\n").unwrap();
    drop(stdin);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher");
    let (mut rest, mut err) = (String::new(), String::new());
    stdout.read_to_string(&mut rest).unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let out = format!("2\n{rest}");
    let explain = report(
        "double with its socket directory deleted",
        status,
        out.as_bytes(),
        err.as_bytes(),
    );
    assert_eq!(status.code(), Some(0), "{explain}");
    assert_eq!(out, "2\n4\n6\n", "{explain}");
    assert!(err.contains("3 ok, 0 failed"), "{explain}");
}

#[test]
fn a_killed_launchers_directory_is_swept_and_a_live_ones_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut launchers = Launchers::default();
    // A live pool: it waits for its input.
    let quiet = |cmd: &mut Command| {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut live_cmd = double(tmp.path());
    quiet(&mut live_cmd);
    launchers.start(&mut live_cmd);
    let live_dir = new_socket_dir(tmp.path(), &[]);
    // Another, SIGKILLed: nothing of it runs to remove its directory.
    let mut killed_cmd = double(tmp.path());
    quiet(&mut killed_cmd);
    let killed = launchers.start(&mut killed_cmd);
    let killed_dir = new_socket_dir(tmp.path(), std::slice::from_ref(&live_dir));
    let workers = children(killed.id());
    signal(killed, Signal::SIGKILL);
    killed.wait().unwrap();
    wait_gone(&workers);
    assert!(
        killed_dir.exists(),
        "the killed launcher's directory vanished by itself"
    );

    // The next launcher sweeps the stale directory, and only that one.
    let out = expect_code(&mut double(tmp.path()), Some(b"21\n"), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    assert!(
        !killed_dir.exists(),
        "the killed launcher's directory {} is still there",
        killed_dir.display()
    );
    assert!(
        live_dir.join("socket").exists(),
        "the live launcher's socket {} was removed",
        live_dir.display()
    );
    assert_eq!(socket_dirs(tmp.path()), vec![live_dir.clone()]);

    // The live one still works, and cleans up after itself.
    let live = &mut launchers.0[0];
    let mut stdin = live.stdin.take().unwrap();
    stdin.write_all(b"5\n").unwrap();
    drop(stdin);
    let status = exit_within(live, EXIT_DEADLINE, "the live launcher");
    assert_eq!(status.code(), Some(0));
    assert!(
        socket_dirs(tmp.path()).is_empty(),
        "{:?}",
        socket_dirs(tmp.path())
    );
}

// ---------------------------------------------------------------------------------
// What functions start.

/// The processes alive with `PSTREAM_SLEEPER=<marker>` in their environment (the
/// sleeps `spawn_sleeper` starts); a zombie shows no environment.
fn sleepers(marker: &str) -> Vec<u32> {
    let needle = format!("PSTREAM_SLEEPER={marker}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A marker of this test run, and a guard that kills its sleeps whatever happens.
struct Marker(String);

impl Marker {
    fn new(test: &str) -> Marker {
        Marker(format!("{test}-{}", std::process::id()))
    }

    /// A `spawn_sleeper` input line.
    fn line(&self, fault: &str) -> String {
        format!("{{\"marker\":\"{}\",\"fault\":\"{fault}\"}}\n", self.0)
    }

    /// Wait until none of this run's sleeps is alive; fail (after killing them) if
    /// some still are after a generous deadline.
    fn assert_none_survive(&self, when: &str) {
        let start = Instant::now();
        loop {
            let alive = sleepers(&self.0);
            if alive.is_empty() {
                return;
            }
            if start.elapsed() > EXIT_DEADLINE {
                panic!("{when}: the sleeps {alive:?} a function started are still alive");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        for pid in sleepers(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn spawn_sleeper(retries: &str) -> Command {
    coord(&[
        "run",
        "--function",
        "spawn_sleeper",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--retries",
        retries,
    ])
}

/// Read `n` lines from a child's stdout, failing the test after a generous deadline
/// (the reading thread stays blocked until the test's guards kill the child).
fn read_lines(stdout: &ChildStdout, n: usize) -> String {
    use std::os::fd::AsFd;
    let mut stdout = std::fs::File::from(stdout.as_fd().try_clone_to_owned().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while got.iter().filter(|&&b| b == b'\n').count() < n {
            match stdout.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                _ => break,
            }
        }
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("no {n} lines on stdout within {PATIENCE:?}"));
    let got = String::from_utf8(got).unwrap();
    assert_eq!(got.lines().count(), n, "stdout ended after {got:?}");
    got
}

/// Seen failing before the fix: all four sleeps outlived the job.
#[test]
fn a_clean_job_leaves_no_child_of_a_function_behind() {
    let marker = Marker::new("clean");
    let input = marker.line("none").repeat(4);
    let out = expect_code(&mut spawn_sleeper("1"), Some(input.as_bytes()), 0);
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "{out:?}");
    marker.assert_none_survive("after a clean job");
}

/// Seen failing before the fix: the crashed worker's sleep lived on.
#[test]
fn a_crashed_workers_children_die_with_it() {
    let marker = Marker::new("crash");
    let mut launchers = Launchers::default();
    let child = launchers.start(
        spawn_sleeper("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(marker.line("segv").as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    assert!(
        stderr.wait_for("line 1: "),
        "no error for the crashing line: {}",
        stderr.seen
    );
    assert!(stderr.seen.contains("crashed"), "{}", stderr.seen);
    // The launcher still runs (its input is open): the pool ended the group.
    marker.assert_none_survive("after a worker crashed");
    assert!(child.try_wait().unwrap().is_none());
    drop(stdin);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher");
    assert_eq!(status.code(), Some(1), "{}", stderr.rest());
}

/// Seen failing before the fix: the sleeps of a launcher killed by SIGKILL lived on,
/// both of a worker busy in a function and of an idle one.
#[test]
fn a_killed_launchers_functions_children_die_too() {
    let marker = Marker::new("sigkill");
    let mut launchers = Launchers::default();
    let child = launchers.start(
        spawn_sleeper("1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdin = child.stdin.take().unwrap();
    // Two that return (answered: their workers are idle), then one that starts its
    // sleep and hangs in the function.
    let input = [marker.line("none"), marker.line("none")].concat();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    read_lines(&stdout, 2);
    stdin.write_all(marker.line("hang").as_bytes()).unwrap();
    stdin.flush().unwrap();
    wait_until("the third sleep", || sleepers(&marker.0).len() == 3);
    let workers = children(child.id());
    signal(child, Signal::SIGKILL);
    child.wait().unwrap();
    wait_gone(&workers);
    marker.assert_none_survive("after the launcher was killed");
    drop(stdin);
}

/// Seen failing before the fix: SigBlk 0000000000004002 (SIGINT and SIGTERM), in
/// the worker and in the sleep it started.
#[test]
fn workers_and_their_children_have_no_signal_blocked() {
    let marker = Marker::new("sigblk");
    let mut launchers = Launchers::default();
    let child = launchers.start(
        spawn_sleeper("1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(marker.line("none").as_bytes()).unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    read_lines(&stdout, 1);
    let mut pids = children(child.id());
    assert!(!pids.is_empty(), "no worker found");
    pids.extend(sleepers(&marker.0));
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
        assert_eq!(
            blocked.split_whitespace().nth(1),
            Some("0000000000000000"),
            "process {pid}: {blocked}"
        );
    }
    drop(stdin);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher");
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Signals.

/// The summary lines in `stderr` (not the notice "stopping after the items in
/// flight").
fn summaries(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| {
            l.starts_with("pstream-coord: ") && l.contains(" items in ") && l.contains("/s): ")
        })
        .count()
}

/// Wait until `pid` has started its signal thread (a signal before that would find
/// the default action).
fn wait_for_signal_thread(pid: u32) {
    wait_until("the launcher's signal thread", || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("pstream-coord-s"))
                })
            })
            .unwrap_or(false)
    });
}

/// Seen failing before the fix: the launcher died of SIGHUP (no summary, exit by
/// signal 1) and left its socket directory.
#[test]
fn sighup_stops_the_job_like_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut launchers = Launchers::default();
    let child = launchers.start(
        double(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    assert_eq!(read_lines(&stdout, 1), "2\n");
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    signal(child, Signal::SIGHUP);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher after SIGHUP");
    let stderr = stderr.rest().to_string();
    assert_eq!(shell_status(status), 129, "{stderr}");
    assert_eq!(summaries(&stderr), 1, "{stderr}");
    assert!(stderr.contains("1 ok, 0 failed"), "{stderr}");
    assert!(stderr.contains("stopped early: SIGHUP"), "{stderr}");
    assert!(
        socket_dirs(tmp.path()).is_empty(),
        "{:?}",
        socket_dirs(tmp.path())
    );
    drop(stdin);
}

/// stderr gone (a terminal hung up: EIO; a pipe no one reads: EPIPE, here) and a
/// failure to report: the launcher goes on, says nothing, and stops on SIGHUP as
/// usual. Before, `eprintln!` panicked on the failed write.
#[test]
fn a_launcher_whose_stderr_is_gone_does_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut launchers = Launchers::default();
    let child = launchers.start(
        double(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    assert_eq!(read_lines(&stdout, 1), "2\n");
    // The reader of stderr goes: every write to it fails from now on.
    drop(child.stderr.take());
    // A line that fails (its message cannot be written), then one that does not.
    stdin.write_all(b"x\n3\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(read_lines(&stdout, 1), "6\n");
    signal(child, Signal::SIGHUP);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher after SIGHUP");
    assert_eq!(shell_status(status), 129);
    assert!(socket_dirs(tmp.path()).is_empty());
    drop(stdin);
}

/// Seen failing before the fix: the launcher stayed blocked in open() of the FIFO
/// ("did not exit within 30s").
#[test]
fn sigterm_stops_a_launcher_waiting_for_a_fifo_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("input.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let stats = tmp.path().join("stats.json");
    let mut launchers = Launchers::default();
    let child = launchers.start(
        coord(&[
            "run",
            "--function",
            "double",
            "--input",
            fifo.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    wait_for_signal_thread(child.id());
    signal(child, Signal::SIGTERM);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher after SIGTERM");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(shell_status(status), 143, "{stderr}");
    assert_eq!(summaries(&stderr), 1, "{stderr}");
    assert!(stderr.contains("stopped early: SIGTERM"), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&read(&stats)).unwrap();
    assert_eq!(stats["exit_code"], 143, "{stats}");
    assert!(socket_dirs(tmp.path()).is_empty());
}

/// An --output or --errors FIFO that no one reads: the open waits, and SIGTERM
/// ends the wait (it blocked the launcher for good before: the test timed out in
/// exit_within with the launcher still in open()).
#[test]
fn sigterm_stops_a_launcher_waiting_for_an_output_fifo_reader() {
    for flag in ["--output", "--errors"] {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("out.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, "1\n2\n").unwrap();
        let stats = tmp.path().join("stats.json");
        let mut launchers = Launchers::default();
        let child = launchers.start(
            coord(&[
                "run",
                "--function",
                "double",
                "--input",
                input.to_str().unwrap(),
                flag,
                fifo.to_str().unwrap(),
                "--stats-json",
                stats.to_str().unwrap(),
            ])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        );
        wait_for_signal_thread(child.id());
        // The signal comes while the launcher waits in the FIFO's open.
        let pid = child.id();
        wait_until("the launcher waiting in the FIFO's open", || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().any(|t| {
                        std::fs::read_to_string(t.path().join("wchan"))
                            .is_ok_and(|w| w == "wait_for_partner")
                    })
                })
                .unwrap_or(false)
        });
        signal(child, Signal::SIGTERM);
        let status = exit_within(child, EXIT_DEADLINE, "the launcher after SIGTERM");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(shell_status(status), 143, "{flag}: {stderr}");
        assert_eq!(summaries(&stderr), 1, "{flag}: {stderr}");
        assert!(
            stderr.contains("stopped while opening") && stderr.contains("out.fifo"),
            "{flag}: {stderr}"
        );
        let stats: serde_json::Value = serde_json::from_slice(&read(&stats)).unwrap();
        assert_eq!(stats["exit_code"], 143, "{flag}: {stats}");
        assert!(socket_dirs(tmp.path()).is_empty(), "{flag}");
    }
}

/// Two SIGINTs just as the job ends: the normal end and the hard stop both printed
/// a summary (seen before the fix in about one run in three; ten runs here).
#[test]
fn two_sigints_print_exactly_one_summary() {
    // The first line fails and stops the job (--on-error fail) while the second
    // hangs in the other worker: the job's end waits for it, and two SIGINTs come
    // as soon as the summary is out.
    let input = "{\"value\":1,\"fault\":\"panic\"}\n{\"value\":2,\"fault\":\"hang\"}\n";
    for run in 0..10 {
        let mut launchers = Launchers::default();
        let child = launchers.start(
            coord(&[
                "run",
                "--function",
                "misbehave",
                "--format",
                "jsonl",
                "--workers",
                "2",
                "--window",
                "2",
                "--on-error",
                "fail",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        );
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut stderr = StderrLines::new(child.stderr.take().unwrap());
        assert!(stderr.wait_for(" items in "), "run {run}: {}", stderr.seen);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGINT,
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGINT,
        );
        let status = exit_within(child, EXIT_DEADLINE, "the launcher after two SIGINTs");
        let stderr = stderr.rest().to_string();
        assert_eq!(summaries(&stderr), 1, "run {run}, {status}: {stderr}");
        drop(stdin);
    }
}

/// Seen failing before the fix: the hard stop's summary had 0 respawns, 0 retries
/// and a peak of 0 in flight whatever happened (and the crashes published last).
#[test]
fn a_hard_stops_summary_has_the_real_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats.json");
    let mut launchers = Launchers::default();
    let child = launchers.start(
        coord(&[
            "run",
            "--function",
            "misbehave",
            "--format",
            "jsonl",
            "--workers",
            "2",
            "--retries",
            "0",
            "--stats-json",
            stats.to_str().unwrap(),
        ])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped()),
    );
    // A crash (a respawn follows), then items that hang: only a hard stop ends it.
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"{\"value\":1,\"fault\":\"segv\"}\n{\"value\":2,\"fault\":\"hang\"}\n\
              {\"value\":3,\"fault\":\"hang\"}\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    assert!(stderr.wait_for("line 1: "), "{}", stderr.seen);
    signal(child, Signal::SIGINT);
    assert!(stderr.wait_for("again to stop at once"), "{}", stderr.seen);
    signal(child, Signal::SIGINT);
    let status = exit_within(child, EXIT_DEADLINE, "the launcher after two SIGINTs");
    let stderr = stderr.rest().to_string();
    assert_eq!(shell_status(status), 130, "{stderr}");
    assert_eq!(summaries(&stderr), 1, "{stderr}");
    assert!(stderr.contains("SIGINT twice"), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&read(&stats)).unwrap();
    assert_eq!(stats["items_failed"], 1, "{stats}");
    assert!(stats["crashes"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["respawns"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["peak_in_flight"].as_u64().unwrap() >= 1, "{stats}");
    // The hard stop exits at once, but not without its socket directory.
    assert!(
        socket_dirs(tmp.path()).is_empty(),
        "{:?}",
        socket_dirs(tmp.path())
    );
    drop(stdin);
}

/// A launcher started with SIGHUP ignored (`nohup`, `trap '' HUP`) ignores it: the
/// signal thread must not take it back (a blocked signal is queued even if
/// ignored).
#[test]
fn sighup_ignored_at_start_stays_ignored() {
    let mut launchers = Launchers::default();
    let child = launchers.start(
        Command::new("sh")
            .arg("-c")
            .arg("trap '' HUP; exec \"$0\" run --function double --format jsonl")
            .arg(bin())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    assert_eq!(read_lines(&stdout, 1), "2\n");
    signal(child, Signal::SIGHUP);
    stdin.write_all(b"2\n").unwrap();
    drop(stdin);
    assert_eq!(read_lines(&stdout, 1), "4\n");
    let status = exit_within(child, EXIT_DEADLINE, "the launcher");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 ok, 0 failed"), "{stderr}");
    assert!(!stderr.contains("SIGHUP"), "{stderr}");
}
