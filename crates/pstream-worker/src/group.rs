//! Nothing a function starts outlives its worker.
//!
//! A coordinator starts each worker as the leader of a process group of its own; the
//! processes a function starts join that group. The coordinator kills the group when
//! the worker ends while it runs. When the coordinator itself dies (SIGKILL, say),
//! the worker ends the group:
//!
//! * its parent-death signal is a real-time signal whose handler sends SIGKILL to
//!   the whole group (itself included), so a worker busy in a function ends with it;
//! * a worker whose connection ends without a `Shutdown` (the coordinator is gone:
//!   the kernel closes a dead process's sockets before it signals its children, so
//!   the end of the connection may come first) does the same instead of exiting.
//!
//! Only a worker that leads its process group does any of this: one started by
//! something else (by hand, in a shell's job) never signals a group it does not own.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::libc;
use nix::unistd::{getpgrp, getpid};

/// This process leads its own process group: the group is the worker's.
static LEADER: AtomicBool = AtomicBool::new(false);
/// The handshake is done: functions may have run, and started processes.
static SERVING: AtomicBool = AtomicBool::new(false);
/// The coordinator asked this worker to stop: it is alive and reaps the group.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// A host agent started this worker: it reaps the group, and reports the end.
static AGENT: AtomicBool = AtomicBool::new(false);
/// The pipe on which to tell the agent that the coordinator welcomed us (-1: none).
static READY_FD: AtomicI32 = AtomicI32::new(-1);

/// The parent-death signal. A real-time signal, which no library uses by default,
/// so that no function's own handling of a common signal (SIGHUP, SIGUSR1)
/// replaces ours or is triggered by it.
fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// Runs in a signal handler: only async-signal-safe calls.
extern "C" fn take_the_group_down(_: libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe; 0 is this process's own group.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// At the start of a worker: if it leads its process group, make the coordinator's
/// death take the group down (instead of the worker alone).
pub(crate) fn guard() {
    if getpgrp() != getpid() {
        return;
    }
    LEADER.store(true, Ordering::SeqCst);
    let signal = parent_death_signal();
    // SAFETY: a zeroed `sigaction` is a valid value of the C struct (no handler, no
    // flags, empty mask); the handler installed makes one async-signal-safe call.
    // The parent-death signal the coordinator set before exec (SIGKILL) stays in
    // force until the prctl replaces it, after the handler is in place: there is
    // no moment at which the coordinator's death would go unnoticed.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = take_the_group_down as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
    };
    if installed {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0);
        }
    }
}

/// The handshake is done: from now on, processes a function started may exist.
pub(crate) fn serving() {
    SERVING.store(true, Ordering::SeqCst);
}

/// The coordinator said `Shutdown`: it is alive, and ends what is left of the group
/// once this worker has exited.
pub(crate) fn shutdown_received() {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// A host agent started this worker; `ready`: the pipe on which to tell it that
/// the coordinator welcomed us.
pub(crate) fn under_agent(ready: Option<i32>) {
    AGENT.store(true, Ordering::SeqCst);
    if let Some(fd) = ready {
        READY_FD.store(fd, Ordering::SeqCst);
    }
}

/// The coordinator welcomed this worker: its agent hears it (one byte on the pipe,
/// which is closed then), so that an end from now on is a worker's, not a start
/// failure.
pub(crate) fn welcomed() {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let fd = READY_FD.swap(-1, Ordering::SeqCst);
    if fd >= 3 {
        // SAFETY: `inherited_pipe` saw the descriptor open, a pipe numbered 3 or
        // more that the agent passed for this one write; the swap above makes this
        // the only owner, and nothing else in this process uses it.
        let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = pipe.write_all(b"1");
    }
}

/// The worker is about to end. If it served without being told to stop (its
/// coordinator is gone, or gave up on it), end its process group, itself included:
/// this does not return then. A worker a host agent started exits with
/// [`pstream_protocol::EXIT_LOST`] instead: its agent kills what is left of the
/// group when it reaps it, and reports it lost, not crashed.
pub(crate) fn end() {
    if SERVING.load(Ordering::SeqCst) && !SHUTDOWN.load(Ordering::SeqCst) {
        if AGENT.load(Ordering::SeqCst) {
            // Its agent kills what is left of the group when it reaps the worker,
            // but it may be stopped (which is why the coordinator gave up on
            // it), and killed before it resumes: the worker ends the rest of its
            // group itself, and leaves its own end to the agent's report.
            if LEADER.load(Ordering::SeqCst) {
                kill_the_rest_of_the_group();
            }
            std::process::exit(pstream_protocol::EXIT_LOST);
        }
        if LEADER.load(Ordering::SeqCst) {
            take_the_group_down(0);
        }
    }
}

/// SIGKILL every other process of this worker's group (what its functions
/// started), not the worker: passes over /proc until one finds none alive (a
/// process that forked while a pass ran is caught by the next), at most 100.
fn kill_the_rest_of_the_group() {
    let me = getpid().as_raw();
    let group = getpgrp().as_raw();
    for _ in 0..100 {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut found = false;
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the command's name: state, ppid, pgrp.
            let Some((_, after)) = stat.rsplit_once(')') else {
                continue;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
            if pgrp == Some(group) && state != Some("Z") {
                found = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !found {
            return;
        }
        std::thread::yield_now();
    }
}
