//! The engine: every worker and every job's queue, stepped by whichever thread leads
//! the pool (a consumer waiting for results, or the supervisor thread; see
//! [`crate::hub`]).
//!
//! Everything that happens reaches it as an [`Event`], on one channel or handed over
//! directly by the leader: a worker connected, sent a frame, disconnected or exited;
//! a job was submitted, fed a batch, ran out of input or was cancelled; the pool is
//! shutting down. Between events it dispatches queued batches against worker credit
//! and watches deadlines (item time limits, handshakes, respawn backoff, the shutdown
//! grace period).
//!
//! The rooms:
//! * this file: the step loop (events, deadlines, dispatch, writes, `epoll_wait`, reads);
//! * `worker`: one worker's life ([`worker::Life`]) and the batches it holds;
//! * `frames`: what workers say (handshake done, results, progress);
//! * `lifecycle`: starting, killing and settling workers, failing and stopping
//!   the pool, deadlines;
//! * `dispatch`: which worker gets the next queued batch;
//! * `jobs`: each job's bookkeeping and the queue (no I/O);
//! * `blame`: who is to blame for a lost worker (a pure function).

mod agents;
mod blame;
pub(crate) use blame::LOSSES_BEFORE_BLAME;
#[cfg(test)]
mod agent_tests;
mod dispatch;
mod frames;
mod jobs;
mod lifecycle;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use nix::sys::epoll::EpollTimeout;
use pstream_protocol::{DecodeError, FunctionInfo};

use crate::conn::Incoming;
use crate::error::PoolError;
use crate::launcher::Launcher;
use crate::poller::{self, Poller};
use crate::process::WorkerCommand;
use crate::stats::PoolCounters;
use crate::vocab::{Event, Events, Ready, Wake};
use dispatch::RankKey;
use jobs::Jobs;
use worker::{Hangup, Worker};

/// The pool's settings, fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub workers: usize,
    pub window: usize,
    /// Bytes of encoded items read ahead, at most (one batch is let through).
    pub window_bytes: u64,
    pub command: WorkerCommand,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    pub item_timeout: Option<Duration>,
    pub retries: u32,
    pub max_items_per_worker: Option<u64>,
    pub max_spawn_failures: u32,
    pub capacity: u32,
    pub flush_interval: Duration,
    /// How long a wait for frames polls before it sleeps while frames come back
    /// to back (`tuning::DEFAULT_SPIN`); workers are told it in their Welcome.
    pub spin: Duration,
    pub shutdown_grace: Duration,
    /// Over the network: a heartbeat each way after this long with nothing sent.
    pub heartbeat: Duration,
    /// Over the network: a worker heard nothing from for this long is lost (and a
    /// worker gives its coordinator up after as long).
    pub silence: Duration,
    /// With no launcher: how long the pool waits while no worker is connected
    /// (and, at build, until `min_workers` are).
    pub wait_workers: Duration,
    /// With no launcher: how many workers must have joined before `build` returns.
    pub min_workers: usize,
    /// Where workers join, for messages (`None`: no TCP door).
    pub listening: Option<std::net::SocketAddr>,
}

pub(crate) struct Engine {
    config: Arc<Config>,
    events: Receiver<Event>,
    events_tx: Events,
    wake: Arc<Wake>,
    /// Every connection and `wake`: what a step waits on.
    poller: Arc<Poller>,
    /// What the last wait found (kept to reuse its allocation).
    ready_list: Vec<poller::Ready>,
    /// Connections to write to (kept to reuse its allocation).
    flushing: Vec<u64>,
    /// The receive buffer, lent to each connection as it is read.
    scratch: Vec<u8>,
    /// What starts workers; none: workers join on their own.
    launcher: Option<Box<dyn Launcher>>,
    counters: Arc<PoolCounters>,
    workers: HashMap<u64, Worker>,
    next_wid: u64,
    next_seq: u64,
    /// Counts the changes to workers' free credit: the last element of a
    /// worker's [`RankKey`], so that ties go to the worker changed last.
    rank_clock: u64,
    /// The earliest of the workers' deadlines as of the last look at them all
    /// (`None`: none). Steps before it look at none of them: with hundreds of
    /// workers across the network, a look at each on every step cost more than
    /// the items.
    timers_at: Option<Instant>,
    /// A worker came, went, or took work while idle (with an item time limit)
    /// since that look: a deadline may be earlier than `timers_at`.
    timers_stale: bool,
    /// Serving workers by [`RankKey`]: where `dispatch` finds the next (see
    /// `dispatch::pick`). May hold entries of workers that no longer serve.
    ranked: BTreeSet<RankKey>,
    jobs: Jobs,
    functions: Option<Vec<FunctionInfo>>,
    ready: Option<Ready>,
    consecutive_failures: u32,
    last_failure: String,
    respawn_at: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    failed: Option<Arc<PoolError>>,
    /// Shut down for good: every step is a no-op.
    exited: bool,
    /// Since when no worker is connected, in a pool with no launcher.
    alone_since: Option<Instant>,
    /// The last wait that blocked ended within `tuning::SPIN_HOT` (or the spin,
    /// if longer) with results:
    /// they come back to back, so the next wait polls for `config.spin` before it
    /// sleeps. Heartbeats and progress reports do not count: 512 idle workers'
    /// heartbeats, or reports every few milliseconds from a long item, would keep
    /// an idle engine polling.
    spin_hot: bool,
    /// A `Results` frame was read since the last wait began.
    results_read: bool,
    /// Host agents connected, by id (from 1).
    agents: HashMap<u64, agents::Agent>,
    next_agent: u64,
    /// The last start failure an agent reported, for the message of a pool that
    /// gets no worker.
    agent_failure: Option<String>,
    /// The last connection over TCP refused at its handshake, for that message
    /// when no agent reported a failure (an agent's report says more).
    last_refusal: Option<String>,
    /// The last item in work on a worker that was lost: its job, its index, and
    /// what happened, for the message of a pool left with no worker.
    last_loss: Option<(u64, u64, String)>,
}

/// What a descriptor in the epoll set is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Wake,
    Worker(u64),
    Agent(u64),
}

/// Agents' tokens in the epoll set have this bit set (worker ids never reach it).
const AGENT_TOKEN: u64 = 1 << 62;

/// The token of agent `id` in the epoll set.
fn agent_token(id: u64) -> u64 {
    AGENT_TOKEN | id
}

/// What the epoll set's `token` stands for.
fn slot(token: u64) -> Slot {
    if token == poller::WAKE {
        Slot::Wake
    } else if token & AGENT_TOKEN != 0 {
        Slot::Agent(token & !AGENT_TOKEN)
    } else {
        Slot::Worker(token)
    }
}

/// Whether the engine goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Go,
    Exit,
}

/// How many reads (of up to the connection's read budget each) a gone worker's
/// socket gets to be emptied.
const DRAIN_ROUNDS: usize = 16;

impl Engine {
    pub fn new(
        config: Arc<Config>,
        (events_tx, events, wake): (Events, Receiver<Event>, Arc<Wake>),
        launcher: Option<Box<dyn Launcher>>,
        counters: Arc<PoolCounters>,
        ready: Ready,
    ) -> std::io::Result<Engine> {
        let poller = Arc::new(Poller::new(wake.fd())?);
        Ok(Engine {
            config,
            events,
            events_tx,
            wake,
            poller,
            ready_list: Vec::new(),
            flushing: Vec::new(),
            scratch: Vec::new(),
            launcher,
            counters,
            workers: HashMap::new(),
            rank_clock: 0,
            timers_at: None,
            timers_stale: true,
            ranked: BTreeSet::new(),
            next_wid: 0,
            next_seq: 0,
            jobs: Jobs::default(),
            functions: None,
            ready: Some(ready),
            consecutive_failures: 0,
            last_failure: String::new(),
            respawn_at: None,
            shutdown_deadline: None,
            failed: None,
            exited: false,
            alone_since: Some(Instant::now()),
            spin_hot: false,
            results_read: false,
            agents: HashMap::new(),
            next_agent: 1,
            agent_failure: None,
            last_refusal: None,
            last_loss: None,
        })
    }

    /// Start the first workers.
    pub fn start(&mut self) {
        self.top_up_workers();
    }

    /// Take events from a thread that holds the engine: after those already in
    /// the channel, which may come first (a job's start, say).
    pub fn accept(&mut self, events: impl Iterator<Item = Event>) {
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
        for event in events {
            self.handle(event);
        }
    }

    /// One turn of the engine: handle every pending event, enforce deadlines, send
    /// queued batches, write what is queued, then wait (if `block`) for a socket,
    /// an event or the next deadline, and read what came. Whoever leads the pool
    /// (a consumer waiting for results, or the supervisor thread) calls this.
    pub fn step(&mut self, block: bool) -> Flow {
        match self.prepare() {
            Flow::Go => self.wait(block),
            Flow::Exit => Flow::Exit,
        }
    }

    /// The first half of a step: events, deadlines, dispatch, writes. A leader
    /// looks at its messages between the halves: what this half sent it (a pool
    /// failure, say) must not wait for the poll of the second.
    pub fn prepare(&mut self) -> Flow {
        if self.exited || self.finish_shutdown() {
            return Flow::Exit;
        }
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
        self.on_timers();
        self.dispatch();
        self.flush_all();
        if self.finish_shutdown() {
            // The last worker was settled just now: do not wait for the deadline.
            return Flow::Exit;
        }
        Flow::Go
    }

    /// The second half of a step: wait (if `block`) for a socket, an event or the
    /// next deadline, and read what came.
    pub fn wait(&mut self, block: bool) -> Flow {
        if self.exited {
            return Flow::Exit;
        }
        let block = block && self.events.is_empty();
        let mut ready = std::mem::take(&mut self.ready_list);
        let timeout = self.timeout(block);
        let waited = if block {
            let spin = if self.spin_hot {
                self.config.spin
            } else {
                Duration::ZERO
            };
            let started = Instant::now();
            self.poller.wait_spinning(timeout, spin, &mut ready);
            Some(started.elapsed())
        } else {
            self.poller.wait(timeout, &mut ready);
            None
        };
        self.results_read = false;
        for r in &ready {
            match slot(r.token) {
                Slot::Wake => self.wake.drain(),
                Slot::Agent(id) => {
                    if r.writable {
                        self.flush_agent(id);
                    }
                    if r.readable {
                        self.read_agent(id);
                    }
                }
                Slot::Worker(wid) => {
                    if r.writable {
                        self.flush(wid);
                    }
                    if r.readable {
                        self.read(wid);
                    }
                }
            }
        }
        self.ready_list = ready;
        if let Some(waited) = waited {
            // Results back to back: poll next time. Results further apart (items
            // of milliseconds, say) would only cost it CPU.
            self.spin_hot =
                self.results_read && pstream_protocol::spin::back_to_back(waited, self.config.spin);
        }
        Flow::Go
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { link, join, agent } => self.on_connected(link, join, agent),
            Event::AgentConnected { link, agent } => self.on_agent_connected(link, agent),
            Event::AgentKill { agent, pid } => self.on_agent_kill(agent, pid),
            Event::Rejected { pid, reason } => self.on_rejected(pid, reason),
            // For the message of a pool that gets no worker: who tried, and why
            // they were turned away.
            Event::Refused { reason } => self.last_refusal = Some(reason),
            Event::Exited { wid, cause } => self.on_exited(wid, cause),
            Event::NewJob {
                job,
                function,
                codec,
                packed,
                results,
                counters,
                recycle,
            } => {
                if let Some(err) = &self.failed {
                    let _ = results.send(crate::vocab::JobMsg::Failed(Arc::clone(err)));
                    return;
                }
                if self.shutdown_deadline.is_some() {
                    let _ = results.send(crate::vocab::JobMsg::Failed(Arc::new(PoolError::Closed)));
                    return;
                }
                let job_state = jobs::Job {
                    function,
                    codec,
                    packed,
                    results,
                    counters,
                    recycle,
                    pending: 0,
                    input_done: false,
                    cancelled: false,
                };
                self.jobs.insert(job, job_state);
            }
            Event::Submit(batch) => self.jobs.submit(batch),
            Event::LocalFailure { job, index, kind } => self.jobs.send(
                job,
                crate::vocab::JobMsg::Results(crate::vocab::ResultBatch::single_failure(
                    index, kind,
                )),
            ),
            Event::InputDone { job, total } => self.jobs.input_ended(job, total, None),
            Event::InputFailed { job, total, error } => {
                self.jobs.input_ended(job, total, Some(error))
            }
            Event::Cancel { job } => self.cancel_job(job),
            Event::Shutdown => self.begin_shutdown(),
            Event::KillAll => {
                self.begin_shutdown();
                self.shutdown_deadline = Some(Instant::now());
            }
        }
    }

    /// During shutdown, once every worker is settled: the engine is done.
    fn finish_shutdown(&mut self) -> bool {
        if self.shutdown_deadline.is_some() && self.workers.is_empty() {
            self.exited = true;
            // Connections that passed the handshake from now on are told that the
            // job is over by the door; those handed on already, here.
            self.events_tx.set_door(crate::vocab::DoorState::Closed);
            while let Ok(event) = self.events.try_recv() {
                if matches!(
                    event,
                    Event::Connected { .. } | Event::AgentConnected { .. }
                ) {
                    crate::door::job_over(event);
                }
            }
            self.jobs.clear();
            // Their connections close: having been told `Shutdown`, they exit 0.
            self.agents.clear();
        }
        self.exited
    }

    /// How long the wait may block: until the next deadline, or not at all.
    fn timeout(&self, block: bool) -> EpollTimeout {
        match self.next_deadline() {
            _ if !block => EpollTimeout::ZERO,
            None => EpollTimeout::NONE,
            Some(at) => poller::timeout_for(at.saturating_duration_since(Instant::now())),
        }
    }

    /// Write to every connection whose send queue filled since the last time
    /// (those waiting for room in their socket are written when the wait says so).
    fn flush_all(&mut self) {
        let mut pending = std::mem::take(&mut self.flushing);
        self.poller.take_pending(&mut pending);
        for &token in &pending {
            match slot(token) {
                Slot::Worker(wid) => self.flush(wid),
                Slot::Agent(id) => self.flush_agent(id),
                Slot::Wake => {}
            }
        }
        pending.clear();
        self.flushing = pending;
    }

    fn flush(&mut self, wid: u64) {
        let failed = match self.workers.get_mut(&wid).and_then(|w| w.conn.as_mut()) {
            Some(conn) => conn.flush().is_err(),
            None => false,
        };
        if failed {
            // The worker is gone, or has shut its end. What it sent before is still
            // in the socket: results of batches it finished. Take them first, or
            // those batches would be blamed for a death that came after them.
            self.drain(wid);
            if self.workers.get(&wid).is_some_and(|w| w.conn.is_some()) {
                self.on_disconnected(wid, Hangup::Closed);
            }
        }
    }

    /// Read everything a worker that is gone (or going) left in its socket, up to
    /// its end. Bounded: a dead peer left at most a socket buffer's worth; a live
    /// one that keeps writing is cut off after `DRAIN_ROUNDS` reads.
    fn drain(&mut self, wid: u64) {
        for _ in 0..DRAIN_ROUNDS {
            if !self.read(wid) {
                return;
            }
        }
    }

    /// Read what came on a worker's connection and handle it. Whether more may be
    /// waiting (the read stopped at its budget, not at the end of what was there).
    fn read(&mut self, wid: u64) -> bool {
        let Some(conn) = self.workers.get_mut(&wid).and_then(|w| w.conn.as_mut()) else {
            return false;
        };
        let (frames, end) = match conn.read_with(&mut self.scratch) {
            Incoming::Frames(frames) => (frames, None),
            Incoming::Closed(frames) => (frames, Some(Hangup::Closed)),
            Incoming::Broken(frames, e)
                if e.is_io() || matches!(e, DecodeError::Truncated { .. }) =>
            {
                (frames, Some(Hangup::Failed(chain(&e))))
            }
            Incoming::Broken(frames, e) => (frames, Some(Hangup::Garbage(chain(&e)))),
        };
        let more = !frames.is_empty() && end.is_none();
        if !frames.is_empty() {
            if let Some(w) = self.workers.get_mut(&wid) {
                w.heard_at = Instant::now();
            }
        }
        for frame in frames {
            self.on_frame(wid, frame);
        }
        if let Some(hangup) = end {
            self.on_disconnected(wid, hangup);
        }
        more
    }
}

/// An error with its causes, for a log line or a reason.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
