//! Worker processes: starting them (re-executed, never bare `fork`), signalling them
//! without racing their reaping, and turning their end into an event; and what they
//! write on stdout and stderr, which is held until their handshake so that a
//! worker that never completes it is reported with its last words.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use pstream_protocol::auth::Token;
use pstream_protocol::ENV_TOKEN_FD;

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pstream_worker::spawn::{write_stderr, HeldOutput};

use crate::error::ExitCause;

/// What to start as a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// RLIMIT_AS for the worker, in bytes.
    pub memory_limit: Option<u64>,
    /// What the pool's workers that never connected wrote and was shown already.
    pub shown: Shown,
}

/// A started worker process. Signals go through [`Proc::signal`], which never sends
/// one after the process was reaped (so never to a recycled pid).
#[derive(Debug)]
pub(crate) struct Proc {
    pub pid: u32,
    /// Set, under the lock, between seeing the exit and reaping: a signal sent while
    /// holding the lock with this false reaches the worker or its zombie, nothing else.
    exited: Mutex<bool>,
    /// Its stdout and stderr.
    output: Arc<Output>,
}

impl Proc {
    /// Signal the worker and every process it started (its process group, which
    /// it leads), so a function's own children do not outlive it.
    pub fn signal(&self, signal: Signal) {
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if !*exited {
            let _ = killpg(Pid::from_raw(self.pid as i32), signal);
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Block until the process ends, kill what is left of its process group, reap
    /// it, and say how it ended.
    pub fn wait(&self) -> ExitCause {
        let pid = Pid::from_raw(self.pid as i32);
        // Wait without reaping, so the pid stays ours while `signal` may run.
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        // The worker is a zombie, not yet reaped: its pid, and so the id of the group
        // it leads, cannot be anybody else's yet. What is still in the group was
        // started by its functions (and did not leave): it ends with the worker,
        // however the worker ended (a clean Shutdown included).
        let _ = killpg(pid, Signal::SIGKILL);
        *exited = true;
        let cause = loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => break ExitCause::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break ExitCause::Signal(sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                // Already reaped by someone else (a program that reaps all children).
                Err(_) => break ExitCause::Code(-1),
            }
        };
        // Everything it wrote is in the pipe by now: take it in before its end is
        // reported, so the report can quote it.
        self.output.drain();
        cause
    }

    /// It completed its handshake: what it wrote so far goes to stderr, and from now
    /// on everything as it comes.
    pub fn connected(&self) {
        self.output.connected();
    }

    /// For the report of a worker that never completed its handshake: the last lines
    /// it wrote (stdout and stderr), if any. With `reported`, the report reaches the
    /// user, and they are not written to stderr again when the worker is dropped.
    pub fn last_words(&self, reported: bool) -> Option<String> {
        self.output.last_words(reported)
    }
}

/// The outputs of a pool's workers that never connected which were shown already
/// (written to stderr, or quoted in a reported error), by hash: N workers of a
/// plugin that cannot start all write the same, and it is shown once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shown(Arc<Mutex<ShownState>>);

#[derive(Debug, Default)]
struct ShownState {
    hashes: HashSet<u64>,
    /// The whole of the last output quoted in a report.
    quoted: Option<Vec<u8>>,
}

impl Shown {
    /// The report that quoted a worker's output did not reach the user after all
    /// (another error replaced it): that output, to be shown some other way.
    pub fn unquote(&self) -> Option<Vec<u8>> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.hashes.clear();
        state.quoted.take()
    }

    /// Record `bytes` as shown; false if they were already.
    fn first_time(&self, bytes: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.hashes.len() >= 1000 {
            state.hashes.clear();
        }
        state.hashes.insert(hasher.finish())
    }

    /// Record `bytes` as quoted in a report; false if they were shown already.
    fn quoted(&self, bytes: &[u8]) -> bool {
        let first = self.first_time(bytes);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).quoted = Some(bytes.to_vec());
        first
    }
}

/// A worker's stdout and stderr: one pipe, read by a thread of ours. Until the
/// worker completes its handshake what it writes is held ([`HeldOutput`]); then it
/// goes to our stderr as it comes. Every read happens under the lock, so
/// whoever reads has recorded the bytes before anyone else can look.
#[derive(Debug)]
struct Output {
    pipe: OwnedFd,
    state: Mutex<Held>,
    shown: Shown,
}

#[derive(Debug, Default)]
struct Held {
    /// Held until the handshake, then written through.
    out: HeldOutput,
    /// The pipe reached its end.
    eof: bool,
}

impl Output {
    /// Read what the pipe holds now, without blocking.
    fn read_available(&self, held: &mut Held) {
        let mut buf = [0u8; 16 << 10];
        while !held.eof {
            match nix::unistd::read(&self.pipe, &mut buf) {
                Ok(0) => held.eof = true,
                Ok(n) => held.out.take(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => held.eof = true,
            }
        }
    }

    fn drain(&self) {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.read_available(&mut held);
    }

    fn connected(&self) {
        // Under the lock, as the pump writes: what was held comes out first.
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.read_available(&mut held);
        held.out.pass_through();
    }

    fn last_words(&self, reported: bool) -> Option<String> {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.read_available(&mut held);
        if held.out.passing() || held.out.held().is_empty() {
            return None;
        }
        let (start, last) = held.out.last_lines();
        let text = String::from_utf8_lossy(last);
        let mut quoted = String::new();
        if start > 0 {
            quoted.push_str("  | ...\n");
        }
        for line in text.lines() {
            quoted.push_str("  | ");
            quoted.push_str(line);
            quoted.push('\n');
        }
        if reported && self.shown.quoted(held.out.held()) {
            // What is not quoted is shown now; the quote is shown by the report.
            write_stderr(&held.out.held()[..start]);
        }
        Some(quoted.trim_end().to_string())
    }
}

impl Drop for Output {
    /// A worker that never connected and whose report did not reach the user: what
    /// it wrote is shown now (once for all the pool's workers that wrote the same).
    fn drop(&mut self) {
        let held = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !held.out.passing() && !held.out.held().is_empty() {
            let bytes = held.out.take_held();
            if self.shown.first_time(&bytes) {
                write_stderr(&bytes);
            }
        }
    }
}

/// The thread that reads a worker's pipe until its end (the worker, and whatever it
/// started, closed it).
fn pump(output: Arc<Output>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(output.pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        let mut held = output.state.lock().unwrap_or_else(|e| e.into_inner());
        output.read_available(&mut held);
        if held.eof {
            return;
        }
    }
}

/// Start one worker. The child is in its own process group (a terminal's Ctrl-C goes
/// to the coordinator, which decides; the processes its functions start join that
/// group, and it is killed whole when the worker ends), starts with no signal
/// blocked and every signal's action the default but SIGTTOU's and SIGTTIN's
/// (ignored), whatever the coordinator blocks or ignores, dies with the thread that
/// started it (`PR_SET_PDEATHSIG`), and writes its stdout to our stderr so it can
/// never mix into a job's output. The `token`, if any, is passed on a pipe that only
/// this child inherits (named by `PSTREAM_TOKEN_FD`), never in the environment.
pub(crate) fn spawn(
    command: &WorkerCommand,
    extra_env: &[(&str, String)],
    token: Option<&Token>,
) -> io::Result<Proc> {
    let mut cmd = pstream_worker::spawn::worker_command(&command.program);
    // Its stdout and stderr: one pipe, ours to read (see `Output`). Its stdout must
    // never mix into a job's output, which may be ours.
    let (pipe, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone()?))
        .stderr(Stdio::from(write_end));
    // Close-on-exec in this process, so no other child inherits it; cleared in this
    // child alone, between fork and exec.
    let mut inherit = Vec::new();
    if let Some(token) = token {
        let pipe = Arc::new(token_pipe(token)?);
        cmd.env(ENV_TOKEN_FD, pipe.as_raw_fd().to_string());
        inherit.push(pipe);
    }
    pstream_worker::spawn::worker_rules(&mut cmd, inherit, command.memory_limit);
    let child = cmd.spawn()?;
    // Our copies of the pipe's write end go with the command: the pipe ends when the
    // worker (and whatever it started) is done with it.
    drop(cmd);
    let output = Arc::new(Output {
        pipe,
        state: Mutex::new(Held::default()),
        shown: command.shown.clone(),
    });
    let pid = child.id();
    {
        let output = Arc::clone(&output);
        std::thread::Builder::new()
            .name(format!("pstream-output-{pid}"))
            .spawn(move || pump(output))?;
    }
    // The std handle is dropped without waiting: `Proc::wait` reaps.
    Ok(Proc {
        pid,
        exited: Mutex::new(false),
        output,
    })
}

/// A pipe holding the token as 64 hex digits, its write end closed: the read end,
/// close-on-exec, numbered 3 or more (never a standard stream, which the child's
/// stdio setup would replace).
fn token_pipe(token: &Token) -> io::Result<OwnedFd> {
    use std::io::Write;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // 64 bytes: far below a pipe's buffer, so the write cannot block.
    std::fs::File::from(write).write_all(token.to_hex().as_bytes())?;
    if read.as_raw_fd() < 3 {
        // `try_clone` duplicates to the lowest free descriptor from 3, close-on-exec.
        return read.try_clone();
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, SigmaskHow};

    fn sh(script: &str) -> WorkerCommand {
        WorkerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            memory_limit: None,
            shown: Shown::default(),
        }
    }

    /// Seen failing before the fix: the worker inherited the spawning thread's
    /// blocked SIGINT and SIGTERM (SigBlk 0x4002 under pstream-coord).
    #[test]
    fn a_worker_starts_with_no_signal_blocked() {
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGINT);
        blocked.add(Signal::SIGTERM);
        // This thread only; spawn forks from it.
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).unwrap();
        let p = spawn(
            &sh("exec awk '/^SigBlk:/ { exit ($2 != \"0000000000000000\") }' /proc/self/status"),
            &[],
            None,
        );
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked), None).unwrap();
        assert_eq!(
            p.unwrap().wait(),
            ExitCause::Code(0),
            "the worker has signals blocked"
        );
    }

    /// Seen failing before the fix: the sleep outlived its worker.
    #[test]
    fn what_a_worker_started_dies_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let script = format!("sleep 600 & echo $! > '{}'; exit 0", file.display());
        let p = spawn(&sh(&script), &[], None).unwrap();
        assert_eq!(p.wait(), ExitCause::Code(0));
        let pid: i32 = std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Gone, or a zombie waiting for init to reap it.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().to_string())
                });
            if state.as_deref().is_none_or(|s| s.starts_with('Z')) {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                panic!("the worker's child {pid} outlived it");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn exit_causes_are_seen() {
        let sh = |script: &str| WorkerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            memory_limit: None,
            shown: Shown::default(),
        };
        let p = spawn(&sh("exit 7"), &[], None).unwrap();
        assert_eq!(p.wait(), ExitCause::Code(7));
        let p = spawn(&sh("kill -SEGV $$"), &[], None).unwrap();
        assert_eq!(p.wait(), ExitCause::Signal(libc_sigsegv()));
        let p = spawn(&sh("sleep 30"), &[], None).unwrap();
        p.signal(Signal::SIGKILL);
        assert_eq!(p.wait(), ExitCause::Signal(Signal::SIGKILL as i32));
        // After reaping, signalling is a no-op rather than a shot at a recycled pid.
        p.signal(Signal::SIGKILL);
    }

    #[test]
    fn what_a_worker_writes_before_its_handshake_is_quoted() {
        let sh = WorkerCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo out; for i in $(seq 1 30); do echo err $i >&2; done; exit 3".into(),
            ],
            env: vec![],
            memory_limit: None,
            shown: Shown::default(),
        };
        let p = spawn(&sh, &[], None).unwrap();
        assert_eq!(p.wait(), ExitCause::Code(3));
        let words = p.last_words(false).unwrap();
        let lines: Vec<&str> = words.lines().collect();
        // The last 20 lines, after a mark for the ones left out.
        assert_eq!(lines.len(), 21, "{words}");
        assert_eq!(lines[0], "  | ...");
        assert_eq!(lines[1], "  | err 11");
        assert_eq!(lines[20], "  | err 30");
        // Nothing written: nothing to quote.
        let p = spawn(
            &WorkerCommand {
                args: vec!["-c".into(), "exit 0".into()],
                ..sh
            },
            &[],
            None,
        )
        .unwrap();
        p.wait();
        assert_eq!(p.last_words(false), None);
    }

    fn libc_sigsegv() -> i32 {
        Signal::SIGSEGV as i32
    }
}
