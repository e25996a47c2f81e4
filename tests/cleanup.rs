//! What `pstream-coord` leaves behind, and what it does with its signals: end-to-end
//! tests over the built launcher, each with its own `$TMPDIR` so that its socket
//! directories can be watched (and no other test's are touched).

#[path = "support/cli.rs"]
#[allow(dead_code)] // shared with the other launcher tests
mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
