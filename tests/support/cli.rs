//! Helpers for the launcher's tests: run `pstream-coord`, and panic with the
//! command, the exit status, stdout and stderr when it does not do what was
//! expected, so a failure explains itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[path = "common.rs"]
mod common;
// Not every test binary scales its sizes.
#[allow(unused_imports)]
pub use common::scale;

/// The launcher binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pstream-coord"))
}

/// `pstream-coord` with `args`, with logs off whatever the environment says.
pub fn coord(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

/// A generous limit for things that take a second: a hang guard, not a timing
/// assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn show(bytes: &[u8]) -> String {
    const MAX: usize = 4000;
    let text = String::from_utf8_lossy(bytes);
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}... ({} bytes in all)", &text[..cut], bytes.len())
    } else {
        text.into_owned()
    }
}

/// A report of a finished command.
pub fn report(what: &str, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "{what}\n--- status: {status}\n--- stdout:\n{}\n--- stderr:\n{}",
        show(stdout),
        show(stderr)
    )
}

/// Run `cmd` with `stdin` (nothing if `None`) and check that it exits with `code`.
pub fn expect_code(cmd: &mut Command, stdin: Option<&[u8]>, code: i32) -> Output {
    let output = run(cmd, stdin);
    if output.status.code() != Some(code) {
        panic!(
            "expected exit code {code}\n{}",
            report(
                &describe(cmd),
                output.status,
                &output.stdout,
                &output.stderr
            )
        );
    }
    output
}

/// Run `cmd` with `stdin`, feeding it from a thread so that large inputs cannot
/// deadlock against large outputs.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    let feeder = stdin.map(|bytes| {
        let bytes = bytes.to_vec();
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            // The command may stop reading early; that is its business.
            let _ = pipe.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    output
}

/// Wait until `ready()` holds, checking often; panic with `what` after
/// [`PATIENCE`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > PATIENCE {
            panic!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait for `child` to exit (a hang guard of [`PATIENCE`], then it is killed).
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Send `signal` to `child`.
pub fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// The pids of the children of `pid` (its workers), from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The worker pids named in the pool's debug log ("worker ready ... pid=N").
pub fn workers_in_log(stderr: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = stderr
        .lines()
        .filter(|l| l.contains("worker ready"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether a process exists (including as a zombie): its state letter.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Wait until none of `pids` exists any more, not even as a zombie (orphans are
/// reaped by init, which takes a moment).
pub fn wait_gone(pids: &[u32]) {
    for &pid in pids {
        wait_until(&format!("process {pid} to be gone"), || {
            process_state(pid).is_none()
        });
    }
}

/// Peak resident set size of process `pid` so far (VmHWM), in bytes.
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// `cmd` fed `seq 1 n`, its stdout discarded: its peak resident set size (VmHWM,
/// sampled until it exits), after checking that it and `seq` succeeded. A hang
/// guard of `limit` (then both are killed and the test fails).
pub fn peak_rss_fed_numbers(cmd: &mut Command, n: u64, limit: Duration) -> u64 {
    let mut seq = Command::new("seq")
        .arg("1")
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start seq");
    let mut child = cmd
        .stdin(Stdio::from(seq.stdout.take().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    let mut stderr = child.stderr.take().unwrap();
    // Read as it comes, so that a full pipe cannot stop the command.
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut peak = 0;
    let start = Instant::now();
    // VmHWM only grows: the last reading before the exit is the peak (sampled).
    let status = loop {
        if let Some(rss) = peak_rss_of(child.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            for c in [&mut child, &mut seq] {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("{} did not exit within {limit:?}", describe(cmd));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "{}",
        report(&describe(cmd), status, b"", &stderr)
    );
    assert!(seq.wait().unwrap().success());
    assert!(peak > 0, "could not read the launcher's memory");
    peak
}

/// Lines of a child's stderr as they come, for waiting on messages; also kept
/// whole for the failure report.
pub struct StderrLines {
    rx: Receiver<String>,
    pub seen: String,
}

impl StderrLines {
    pub fn new(stderr: ChildStderr) -> StderrLines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        StderrLines {
            rx,
            seen: String::new(),
        }
    }

    /// Wait for a line containing `needle`; false if stderr closed first.
    pub fn wait_for(&mut self, needle: &str) -> bool {
        loop {
            match self.rx.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(needle) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Everything until stderr closes.
    pub fn rest(&mut self) -> &str {
        while let Ok(line) = self.rx.recv_timeout(PATIENCE) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        &self.seen
    }
}

/// A file's contents (empty if it does not exist).
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        f.read_to_end(&mut v).unwrap();
    }
    v
}

/// The exit status as the shell shows it: the code, or 128 + the signal.
pub fn shell_status(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Start `cmd` (its stdin set up by the caller), collect its stdout and stderr, and
/// wait for it to exit, with a hang guard of [`PATIENCE`] (then it is killed).
pub fn output_of(cmd: &mut Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, &describe(cmd));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Check that `output` has exit code `code`, or panic with a report.
pub fn check_code(cmd: &Command, output: &Output, code: i32) {
    if output.status.code() != Some(code) {
        panic!(
            "expected exit code {code}\n{}",
            report(
                &describe(cmd),
                output.status,
                &output.stdout,
                &output.stderr
            )
        );
    }
}
