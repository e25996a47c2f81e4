//! Ctrl-C, SIGTERM and SIGHUP (a closed terminal).
//!
//! The three signals are blocked in every thread (the mask is set before any thread
//! starts, and threads inherit it; worker processes start with a clean mask, set
//! between fork and exec), and one thread takes them with `sigwait`, so no code
//! runs in a signal handler. The first signal asks the job to stop reading input and
//! finish what is in flight; a second one runs the hard-stop action: kill the
//! workers, write what is done, exit. A signal the launcher was started with
//! ignored (`nohup` ignores SIGHUP; a shell's `&` without job control, SIGINT) stays
//! ignored.
//!
//! Exactly one summary is printed, whoever ends the job: the normal end and the
//! hard stop both print it through [`Stop::report`], and only the first does.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals that stop a job.
const STOPPING: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// What the job's parts look at.
#[derive(Debug, Default)]
pub struct Stop {
    /// Stop reading input (a signal, a closed output, --on-error fail); before
    /// the job runs, stop starting its workers.
    pub requested: Arc<AtomicBool>,
    /// The first signal received, 0 if none.
    signal: AtomicI32,
    /// The exit code of the run whose summary was printed; held while it is.
    reported: Mutex<Option<u8>>,
}

impl Stop {
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The signal that stopped the job, if one did.
    pub fn signal(&self) -> Option<Signal> {
        Signal::try_from(self.signal.load(Ordering::SeqCst)).ok()
    }

    /// Print the summary with `print` (which returns the exit code it reports),
    /// unless it was printed already: then `print` is not called, and the code of
    /// the summary printed is returned. One caller at a time: a hard stop that comes
    /// while the normal end prints waits for it, and the other way round.
    pub fn report(&self, print: impl FnOnce() -> u8) -> u8 {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        *reported.get_or_insert_with(print)
    }

    /// Run `task` (an `open` that may block: a FIFO waits for a writer) on a thread
    /// of its own; its result, or the signal that stopped the job first (the thread
    /// is then left blocked, and ends with the process).
    pub fn unless_stopped<T: Send + 'static>(
        &self,
        task: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Signal> {
        let (done, result) = mpsc::channel();
        let task = Arc::new(Mutex::new(Some(task)));
        let spawned = {
            let task = Arc::clone(&task);
            std::thread::Builder::new()
                .name("pstream-coord-open".into())
                .spawn(move || {
                    let task = task.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(task) = task {
                        let _ = done.send(task());
                    }
                })
        };
        if spawned.is_err() {
            // No thread to spare: do it here, uninterruptible as it is.
            let task = task.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Ok(task.expect("the task did not run")());
        }
        loop {
            if let Some(signal) = self.signal() {
                return Err(signal);
            }
            match result.recv_timeout(Duration::from_millis(20)) {
                Ok(value) => return Ok(value),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The task panicked: say so where it would have.
                    panic!("the open thread died")
                }
            }
        }
    }
}

/// The shell's exit status for a job stopped by `signal`: 128 + its number.
pub fn exit_status(signal: Signal) -> u8 {
    128 + signal as i32 as u8
}

type HardStop = Box<dyn Fn(Signal) + Send>;

/// The signal thread's handle: set the action of a second signal.
#[derive(Clone)]
pub struct Signals {
    pub stop: Arc<Stop>,
    hard_stop: Arc<Mutex<Option<HardStop>>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Signals {
    /// Block SIGINT, SIGTERM and SIGHUP (those not ignored) and start the thread
    /// that takes them. Call before any other thread starts.
    pub fn install() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        for signal in STOPPING {
            if !ignored(signal)? {
                set.add(signal);
            }
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let signals = Signals {
            stop: Arc::new(Stop::default()),
            hard_stop: Arc::new(Mutex::new(None)),
        };
        let handle = signals.clone();
        std::thread::Builder::new()
            .name("pstream-coord-signals".into())
            .spawn(move || loop {
                let Ok(signal) = set.wait() else { continue };
                handle.received(signal);
            })
            .map_err(|_| nix::Error::EAGAIN)?;
        Ok(signals)
    }

    /// What a second signal does (the first only requests a stop).
    pub fn on_second(&self, action: impl Fn(Signal) + Send + 'static) {
        *self.hard_stop.lock().unwrap() = Some(Box::new(action));
    }

    fn received(&self, signal: Signal) {
        let first = self
            .stop
            .signal
            .compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if first {
            // The job's ticker says so on stderr (above the progress bar).
            self.stop.request();
            return;
        }
        let action = self.hard_stop.lock().unwrap();
        match &*action {
            Some(action) => action(signal),
            None => std::process::exit(exit_status(self.stop.signal().unwrap_or(signal)).into()),
        }
    }
}

/// Whether `signal` is ignored (the launcher was started so).
fn ignored(signal: Signal) -> nix::Result<bool> {
    let mut old = std::mem::MaybeUninit::<nix::libc::sigaction>::uninit();
    // SAFETY: with a null new action, sigaction only writes the current one into
    // `old`, which has room for it; on success it is initialised.
    let rc = unsafe { nix::libc::sigaction(signal as i32, std::ptr::null(), old.as_mut_ptr()) };
    nix::errno::Errno::result(rc)?;
    // SAFETY: sigaction succeeded, so it wrote `old`.
    let old = unsafe { old.assume_init() };
    Ok(old.sa_sigaction == nix::libc::SIG_IGN)
}
