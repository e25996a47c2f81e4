//! How a worker process is started: the rules that the coordinator (for its local
//! workers, and for the ssh or srun that start host agents) and a host agent (for
//! its host's workers) both start one under, kept in this one place so that they
//! cannot drift apart. The worker crate holds them because the coordinator may
//! depend on it, while the protocol crate knows no processes.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

/// A command for `program`; when that is `/proc/self/exe` (this very program,
/// re-executed), its `argv[0]` names the real program, so that `ps` shows it rather
/// than the link it is executed through.
pub fn worker_command(program: impl AsRef<OsStr>) -> Command {
    let program = program.as_ref();
    let mut cmd = Command::new(program);
    if program == "/proc/self/exe" {
        if let Ok(exe) = std::env::current_exe() {
            cmd.arg0(exe);
        }
    }
    cmd
}

/// Sets on `cmd` the rules every worker starts under:
///
/// * its own process group (a terminal's Ctrl-C goes to its parent, which decides;
///   the processes its functions start join that group, killed whole when the
///   worker ends);
/// * no signal blocked and every signal's action the default but SIGTTOU's and
///   SIGTTIN's (ignored: a worker is a background group of its parent's terminal,
///   if there is one, and with `stty tostop` its first write there would stop it),
///   whatever its parent blocks or ignores;
/// * the descriptors of `inherit` (close-on-exec in the parent) inherited by this
///   child alone; the command holds them open until it is dropped;
/// * killed with SIGKILL when the thread that starts it ends (`PR_SET_PDEATHSIG`),
///   and not started at all if its parent is already gone;
/// * with `memory_limit`, that many bytes of address space at most (`RLIMIT_AS`).
pub fn worker_rules(cmd: &mut Command, inherit: Vec<Arc<OwnedFd>>, memory_limit: Option<u64>) {
    child_rules(cmd, true, inherit, memory_limit);
}

/// The rules of [`worker_rules`] for any child (the coordinator's ssh and srun
/// launchers too): SIGTTOU and SIGTTIN are ignored only if `ignore_terminal_stops`.
pub fn child_rules(
    cmd: &mut Command,
    ignore_terminal_stops: bool,
    inherit: Vec<Arc<OwnedFd>>,
    memory_limit: Option<u64>,
) {
    cmd.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (sigaction, sigprocmask, fcntl, prctl, getppid,
    // setrlimit). It allocates nothing: its errors are errno values (an `io::Error`
    // made from an errno holds the number, no box), which is also all that the
    // standard library passes back to the parent. Setting an action to "default" or
    // "ignore" installs no handler of ours: the disposition survives exec and no
    // code of this process runs on a signal.
    unsafe {
        cmd.pre_exec(move || {
            // A clean slate: the parent may block signals (pstream-coord blocks
            // SIGINT, SIGTERM and SIGHUP for its signal thread) or run with some
            // ignored (nohup, a shell's `&`, whatever ssh or srun left an agent),
            // and the child (a worker and its functions' children, or an ssh that
            // would then not end on SIGTERM) would inherit both through exec.
            for signal in Signal::iterator() {
                if !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
                    let default =
                        SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
                    nix::sys::signal::sigaction(signal, &default)?;
                }
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            // A worker is a background process group of its parent's terminal, if
            // there is one: with `stty tostop`, its first write to the terminal (a
            // function's stderr) would stop it until the time limit killed it.
            if ignore_terminal_stops {
                nix::sys::signal::signal(Signal::SIGTTOU, SigHandler::SigIgn)?;
                nix::sys::signal::signal(Signal::SIGTTIN, SigHandler::SigIgn)?;
            }
            // The parent holds them until the command is dropped: open here.
            for fd in &inherit {
                fcntl(&**fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            if let Some(limit) = memory_limit {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_AS,
                    limit,
                    limit,
                )?;
            }
            Ok(())
        });
    }
}

/// Bytes of a worker's output held before it is welcomed; beyond this, the oldest
/// are written out.
pub const HOLD: usize = 64 << 10;

/// What a report quotes of a worker's output at most: its last lines, and bytes.
pub const LAST_LINES: usize = 20;
/// See [`LAST_LINES`].
pub const LAST_BYTES: usize = 4 << 10;

/// A worker's output (stdout and stderr, one pipe) as whoever started it keeps it:
/// held until the worker is welcomed (the last [`HOLD`] bytes; older bytes are
/// written to this process's stderr), so that a worker that never gets that far is
/// reported with its last lines instead of scattering them; written through after.
/// The coordinator keeps one per local worker, a host agent one per worker it
/// starts.
#[derive(Debug, Default)]
pub struct HeldOutput {
    bytes: Vec<u8>,
    through: bool,
}

impl HeldOutput {
    /// Bytes the worker wrote.
    pub fn take(&mut self, bytes: &[u8]) {
        if self.through {
            write_stderr(bytes);
            return;
        }
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > HOLD {
            // Keep the last part for the report; the rest is shown now.
            let cut = self.bytes.len() - LAST_BYTES;
            write_stderr(&self.bytes[..cut]);
            self.bytes.drain(..cut);
        }
    }

    /// The worker was welcomed: what was held is written now, the rest as it comes.
    pub fn pass_through(&mut self) {
        if !self.through {
            self.through = true;
            write_stderr(&std::mem::take(&mut self.bytes));
        }
    }

    /// Whether output is written through (the worker was welcomed).
    pub fn passing(&self) -> bool {
        self.through
    }

    /// What is held.
    pub fn held(&self) -> &[u8] {
        &self.bytes
    }

    /// What is held, taken out.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Where the last lines of what is held start (at most [`LAST_LINES`] lines and
    /// [`LAST_BYTES`] bytes, a final newline not counted), and those lines, without
    /// that newline.
    pub fn last_lines(&self) -> (usize, &[u8]) {
        let bytes = &self.bytes;
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let mut start = bytes.len().saturating_sub(LAST_BYTES);
        if let Some(at) = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &b)| b == b'\n')
            .nth(LAST_LINES - 1)
            .map(|(at, _)| at + 1)
        {
            start = start.max(at);
        }
        let start = start.min(body.len());
        (start, &body[start..])
    }
}

/// Write to this process's stderr; a failure (closed, full) drops the bytes: a
/// worker's words must not stop whoever started it.
pub fn write_stderr(bytes: &[u8]) {
    use std::io::Write;
    if !bytes.is_empty() {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_at_most_twenty_and_four_kib() {
        let mut out = HeldOutput::default();
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        out.take(text.as_bytes());
        let (start, last) = out.last_lines();
        assert_eq!(
            &text.as_bytes()[start..],
            format!("{}\n", String::from_utf8_lossy(last)).as_bytes()
        );
        assert_eq!(String::from_utf8_lossy(last).lines().count(), LAST_LINES);
        assert!(String::from_utf8_lossy(last).starts_with("line 10\n"));
        // One long line: its last 4 KiB.
        let mut out = HeldOutput::default();
        out.take(&[b'x'; 10_000]);
        let (start, last) = out.last_lines();
        assert_eq!((start, last.len()), (10_000 - LAST_BYTES, LAST_BYTES));
        // Nothing held.
        assert_eq!(HeldOutput::default().last_lines(), (0, &b""[..]));
    }
}
