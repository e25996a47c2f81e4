//! Who drives the engine: whichever thread is waiting for it.
//!
//! The engine (every worker's socket, the queue, the deadlines) sits behind one lock,
//! and the thread holding it *leads*: it steps the engine, blocking in `epoll_wait` when
//! there is nothing to do. A consumer that wants results and finds none leads
//! itself, so a batch's results are read from the socket by the very thread that
//! hands them out, with no thread hop in between. When no consumer is leading (the
//! pool is idle, or the consumers are busy in their own code), the supervisor thread
//! takes over, so crashes, hangs, respawns and shutdown are always dealt with.
//!
//! The hand-over: a thread that wants to lead first registers, then tries the lock;
//! a leader that lets go passes the lead to a registered consumer, if any. Because
//! the registration comes before the attempt and the look at the registrations comes
//! after the release, one of the two always sees the other. The supervisor thread,
//! when it leads, lets go as soon as a consumer registers (registering wakes its
//! `epoll_wait`); when it does not lead, it looks every [`VACANT`] and takes over only if
//! nobody stepped the engine meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::engine::{Engine, Flow};
use crate::error::PoolError;
use crate::vocab::JobMsg;
use crate::vocab::{Event, Events, Wake};

/// How long the engine may go unstepped while consumers are busy elsewhere before
/// the supervisor thread takes over: the longest a crash, a hang or a new worker
/// waits to be noticed.
pub(crate) const VACANT: Duration = Duration::from_millis(5);

/// A message waiting in `rx`, skipping offers of the lead (we hold it).
fn take(rx: &Receiver<JobMsg>) -> Option<JobMsg> {
    loop {
        match rx.try_recv() {
            Ok(JobMsg::Lead) => continue,
            Ok(msg) => return Some(msg),
            Err(_) => return None,
        }
    }
}

pub(crate) struct Hub {
    engine: Mutex<Engine>,
    wake: Arc<Wake>,
    /// The engine's event channel, for events that cannot be handed over directly.
    events: Events,
    /// Consumers waiting to lead: their job and the channel that wakes them.
    waiting: Mutex<Vec<(u64, Sender<JobMsg>)>>,
    /// Steps taken by anyone: the supervisor takes over only when this stands still.
    steps: AtomicU64,
    /// Wakes the supervisor thread at once (the pool is dropped, a job ended).
    kick: Sender<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("steps", &self.steps.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// The hub, and what wakes its supervisor thread (for [`Hub::supervise`]).
    pub fn new(engine: Engine, wake: Arc<Wake>, events: Events) -> (Arc<Hub>, Receiver<()>) {
        let (kick, kicked) = crossbeam_channel::unbounded();
        let hub = Arc::new(Hub {
            engine: Mutex::new(engine),
            wake,
            events,
            waiting: Mutex::new(Vec::new()),
            steps: AtomicU64::new(0),
            kick,
        });
        (hub, kicked)
    }

    /// Wake the supervisor thread now rather than at its next look.
    pub fn kick(&self) {
        let _ = self.kick.send(());
    }

    /// The next message for job `job`: taken from `rx` if one is there, else led
    /// into being. `me` sends to `rx` (it is how another leader passes the lead).
    /// Events in `outbox` (a job's own batches) reach the engine first.
    pub fn recv(
        &self,
        job: u64,
        rx: &Receiver<JobMsg>,
        me: &Sender<JobMsg>,
        outbox: &mut Vec<Event>,
    ) -> JobMsg {
        if !outbox.is_empty() {
            self.offer(outbox);
        }
        loop {
            match rx.try_recv() {
                Ok(JobMsg::Lead) => {
                    // Offered after we stopped waiting: pass it on.
                    self.pass_lead();
                    continue;
                }
                Ok(msg) => return msg,
                Err(_) => {}
            }
            self.waiting.lock().unwrap().push((job, me.clone()));
            match self.engine.try_lock() {
                Ok(mut engine) => {
                    self.unregister(job);
                    let msg = self.lead(&mut engine, rx);
                    drop(engine);
                    self.pass_lead();
                    return msg;
                }
                Err(TryLockError::Poisoned(_)) => {
                    self.unregister(job);
                    return JobMsg::Failed(Arc::new(PoolError::Closed));
                }
                Err(TryLockError::WouldBlock) => {
                    // Whoever leads hears of us: the supervisor lets go, a consumer
                    // passes the lead when it is done.
                    self.wake.ring();
                    match rx.recv() {
                        Ok(JobMsg::Lead) => continue,
                        Ok(msg) => {
                            self.unregister(job);
                            return msg;
                        }
                        Err(_) => return JobMsg::Failed(Arc::new(PoolError::Closed)),
                    }
                }
            }
        }
    }

    /// Hand events to the engine: directly, with a step to send them on, if nobody
    /// leads; else through the event channel to the leader.
    pub fn offer(&self, outbox: &mut Vec<Event>) {
        match self.engine.try_lock() {
            Ok(mut engine) => {
                engine.accept(outbox.drain(..));
                engine.step(false);
                self.steps.fetch_add(1, Ordering::Relaxed);
                drop(engine);
                self.pass_lead();
            }
            Err(_) => {
                let _ = self.events.send_all(outbox.drain(..));
            }
        }
    }

    /// Step the engine until `rx` has a message.
    fn lead(&self, engine: &mut MutexGuard<'_, Engine>, rx: &Receiver<JobMsg>) -> JobMsg {
        let mut block = false;
        loop {
            let mut flow = engine.prepare();
            if flow == Flow::Go {
                // What the first half sent us must not wait for the poll.
                if let Some(msg) = take(rx) {
                    self.steps.fetch_add(1, Ordering::Relaxed);
                    return msg;
                }
                flow = engine.wait(block);
            }
            self.steps.fetch_add(1, Ordering::Relaxed);
            if let Some(msg) = take(rx) {
                return msg;
            }
            if flow == Flow::Exit {
                return JobMsg::Failed(Arc::new(PoolError::Closed));
            }
            block = true;
        }
    }

    fn unregister(&self, job: u64) {
        self.waiting.lock().unwrap().retain(|(j, _)| *j != job);
    }

    /// Offer the lead to a waiting consumer, if any.
    fn pass_lead(&self) {
        let next = self.waiting.lock().unwrap().pop();
        if let Some((_, tx)) = next {
            let _ = tx.send(JobMsg::Lead);
        }
    }

    /// Take one step now if nobody leads (a consumer that went away, say).
    pub fn step_if_free(&self) {
        if let Ok(mut engine) = self.engine.try_lock() {
            engine.step(false);
            self.steps.fetch_add(1, Ordering::Relaxed);
            drop(engine);
            self.pass_lead();
        }
    }

    /// The supervisor thread: lead whenever no consumer does, until the engine
    /// has shut down.
    pub fn supervise(&self, kicked: Receiver<()>) {
        loop {
            let seen = self.steps.load(Ordering::Relaxed);
            match kicked.recv_timeout(VACANT) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if self.steps.load(Ordering::Relaxed) != seen {
                        continue; // Consumers are leading.
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let mut engine = match self.engine.try_lock() {
                Ok(engine) => engine,
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Poisoned(_)) => return,
            };
            loop {
                let flow = engine.step(true);
                self.steps.fetch_add(1, Ordering::Relaxed);
                if flow == Flow::Exit {
                    drop(engine);
                    // Waiting consumers find the engine gone when they try to lead.
                    let waiting = std::mem::take(&mut *self.waiting.lock().unwrap());
                    for (_, tx) in waiting {
                        let _ = tx.send(JobMsg::Lead);
                    }
                    return;
                }
                if !self.waiting.lock().unwrap().is_empty() {
                    drop(engine);
                    self.pass_lead();
                    break;
                }
            }
        }
    }
}
