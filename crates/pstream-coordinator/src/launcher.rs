//! A launcher starts workers and reports how they ended. The engine asks it for a
//! worker and gets a [`Handle`] back; the worker's end (reaped, with its exit)
//! reaches the engine as an [`Event::Exited`]. The engine never learns what kind of
//! process it is, nor where it runs.
//!
//! [`LocalLauncher`] re-executes the current binary or a plugin on this machine. A
//! pool may also have no launcher at all: then workers are started by someone else
//! and only join through the door.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use nix::sys::signal::Signal;
use pstream_protocol::{ENV_CAPACITY, ENV_COORDINATOR_PID, ENV_MAX_FRAME, ENV_SOCKET};

use crate::door::Checks;
use crate::process::{spawn, Proc, WorkerCommand};
use crate::vocab::{Event, Events};

/// A started worker, as the engine holds it.
pub(crate) trait Handle: Send + Sync + fmt::Debug {
    /// Its process id, where there is one on this machine.
    fn pid(&self) -> Option<u32>;
    /// End it now, and whatever it started.
    fn kill(&self);
    /// It completed its handshake: what it wrote so far may be shown.
    fn connected(&self) {}
    /// For the report of a worker that never completed its handshake: the last lines
    /// it wrote, if the launcher kept them. With `reported`, the report reaches the
    /// user, and they need not be shown again.
    fn last_words(&self, _reported: bool) -> Option<String> {
        None
    }
}

impl Handle for Proc {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn connected(&self) {
        Proc::connected(self);
    }

    fn last_words(&self, reported: bool) -> Option<String> {
        Proc::last_words(self, reported)
    }
}

/// What starts workers.
pub(crate) trait Launcher: Send + fmt::Debug {
    /// Start worker `wid`; when it has ended, send `Event::Exited { wid, .. }`.
    fn launch(&self, wid: u64, events: &Events) -> io::Result<Arc<dyn Handle>>;
    /// The program it starts, for messages.
    fn program(&self) -> &Path;
}

/// Workers as child processes of this one, re-executed (never a bare fork).
#[derive(Debug)]
pub(crate) struct LocalLauncher {
    command: WorkerCommand,
    /// What a worker needs to find and join the pool.
    env: Vec<(&'static str, String)>,
    checks: Arc<Checks>,
}

impl LocalLauncher {
    /// Start `command` as workers of the pool whose socket is at `socket`.
    pub fn new(
        command: WorkerCommand,
        socket: &Path,
        checks: Arc<Checks>,
        max_frame: usize,
        capacity: u32,
    ) -> LocalLauncher {
        let env = vec![
            (ENV_SOCKET, socket.to_string_lossy().into_owned()),
            (ENV_COORDINATOR_PID, std::process::id().to_string()),
            (ENV_MAX_FRAME, max_frame.to_string()),
            (ENV_CAPACITY, capacity.to_string()),
        ];
        LocalLauncher {
            command,
            env,
            checks,
        }
    }
}

impl Launcher for LocalLauncher {
    fn launch(&self, wid: u64, events: &Events) -> io::Result<Arc<dyn Handle>> {
        // The worker is started by the thread that will reap it. A worker dies with
        // the thread that started it (PR_SET_PDEATHSIG), and this one lives exactly
        // as long as the worker does, whichever thread leads the pool now.
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let command = self.command.clone();
        let env = self.env.clone();
        let checks = Arc::clone(&self.checks);
        let events = events.clone();
        std::thread::Builder::new()
            .name(format!("pstream-waiter-{wid}"))
            .spawn(move || {
                // Hold the lock across spawn so the pid is known before the child
                // can connect.
                let mut spawned = checks.spawned.lock().unwrap_or_else(|e| e.into_inner());
                let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
                let proc = match spawn(&command, &env, Some(&checks.token)) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        drop(spawned);
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                spawned.insert(proc.pid);
                drop(spawned);
                let _ = started_tx.send(Ok(Arc::clone(&proc)));
                let cause = proc.wait();
                // Reaped: the pid may be anybody's from now on.
                checks
                    .spawned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&proc.pid);
                let _ = events.send(Event::Exited { wid, cause });
            })?;
        let proc = started
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the waiter thread died")))?;
        Ok(proc)
    }

    fn program(&self) -> &Path {
        &self.command.program
    }
}
