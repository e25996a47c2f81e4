//! Ctrl-C and SIGTERM.
//!
//! Both signals are blocked in every thread (the mask is set before any thread
//! starts, and threads inherit it; worker processes get a clean mask from
//! `std::process::Command`), and one thread takes them with `sigwait`, so no code
//! runs in a signal handler. The first signal asks the job to stop reading input and
//! finish what is in flight; a second one runs the hard-stop action: kill the
//! workers, write what is done, exit.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// What the job's parts look at.
#[derive(Debug, Default)]
pub struct Stop {
    /// Stop reading input (a signal, a closed output, --on-error fail).
    pub requested: AtomicBool,
    /// The first signal received, 0 if none.
    signal: AtomicI32,
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
    /// Block SIGINT and SIGTERM and start the thread that takes them. Call before
    /// any other thread starts.
    pub fn install() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
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
