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

use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;
use nix::unistd::{getpgrp, getpid};

/// This process leads its own process group: the group is the worker's.
static LEADER: AtomicBool = AtomicBool::new(false);
/// The handshake is done: functions may have run, and started processes.
static SERVING: AtomicBool = AtomicBool::new(false);
/// The coordinator asked this worker to stop: it is alive and reaps the group.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

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

/// The worker is about to end. If it served without being told to stop (its
/// coordinator is gone, or gave up on it), end its process group, itself included:
/// this does not return then.
pub(crate) fn end() {
    if LEADER.load(Ordering::SeqCst)
        && SERVING.load(Ordering::SeqCst)
        && !SHUTDOWN.load(Ordering::SeqCst)
    {
        take_the_group_down(0);
    }
}
