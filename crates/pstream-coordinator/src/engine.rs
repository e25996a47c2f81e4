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

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use pstream_protocol::{
    write_frame, BatchHeader, Codec, FailureKind, Frame, FunctionInfo, ItemFailure, Items, Join,
    Message, ENV_CAPACITY, ENV_COORDINATOR_PID, ENV_MAX_FRAME, ENV_SOCKET, PROGRESS_HEARTBEAT,
};

use crate::conn::{Conn, Incoming};
use crate::door::Checks;
use crate::error::{ExitCause, ItemErrorKind, PoolError};
use crate::process::{spawn, Proc, WorkerCommand};
use crate::stats::PoolCounters;
use crate::vocab::{Batch, Event, Events, JobCounters, JobMsg, Ready, ResultBatch, Wake};

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
    pub shutdown_grace: Duration,
}

#[derive(Debug)]
enum KillReason {
    /// Over the item time limit; `located` if the worker, alive, had just reported
    /// that it was still on the item at `running`.
    Timeout {
        located: bool,
    },
    Violation(String),
    Handshake(String),
}

struct InFlight {
    seq: u64,
    batch: Batch,
    /// How many of its items have results already.
    answered: usize,
    /// How many of its items the worker says it has computed (at least `answered`):
    /// the item at this position is the one in work.
    running: usize,
    /// When the worker last reported on this batch (a move or a repeat).
    heard_at: Option<Instant>,
}

struct Worker {
    proc: Arc<Proc>,
    spawned_at: Instant,
    /// The connection, once the handshake is done and until it ends.
    conn: Option<Conn>,
    /// Whether it ever completed the handshake.
    served: bool,
    capacity: usize,
    in_flight: VecDeque<InFlight>,
    /// Items sent and not yet answered.
    outstanding: usize,
    items_done: u64,
    /// When the worker last showed progress on its oldest batch.
    progress_at: Instant,
    kill_reason: Option<KillReason>,
    /// Dead or being killed: no more batches.
    dead: bool,
    disconnected: bool,
    exit: Option<ExitCause>,
    /// Told to shut down after `max_items_per_worker`.
    retiring: bool,
}

impl Worker {
    fn usable(&self) -> bool {
        self.conn.is_some() && !self.dead && !self.retiring
    }

    /// Whether it may take more work under `max_items_per_worker`.
    fn within_allowance(&self, limit: Option<u64>) -> bool {
        limit.is_none_or(|l| self.items_done + (self.outstanding as u64) < l)
    }

    fn free(&self) -> usize {
        self.capacity.saturating_sub(self.outstanding)
    }

    fn send(&mut self, message: &Message, items: Option<&Arc<Items>>) {
        if let Some(conn) = &mut self.conn {
            conn.push(message, items);
        }
    }
}

struct Job {
    function: Arc<str>,
    codec: Codec,
    packed: bool,
    results: Sender<JobMsg>,
    counters: Arc<JobCounters>,
    /// Where finished batch buffers go back to the feeder for reuse.
    recycle: Sender<Items>,
    /// Batches queued or in flight.
    pending: usize,
    input_done: bool,
    cancelled: bool,
}

pub(crate) struct Engine {
    config: Arc<Config>,
    events: Receiver<Event>,
    events_tx: Events,
    wake: Arc<Wake>,
    socket: PathBuf,
    checks: Arc<Checks>,
    counters: Arc<PoolCounters>,
    workers: HashMap<u64, Worker>,
    next_wid: u64,
    next_seq: u64,
    /// The worker the last batch went to (ties in `dispatch` go round from it).
    last_served: u64,
    jobs: HashMap<u64, Job>,
    queue: VecDeque<Batch>,
    functions: Option<Vec<FunctionInfo>>,
    ready: Option<Ready>,
    consecutive_failures: u32,
    last_failure: String,
    respawn_at: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    failed: Option<Arc<PoolError>>,
    /// Shut down for good: every step is a no-op.
    exited: bool,
}

/// Whether the engine goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Go,
    Exit,
}

/// How long after the last progress a worker with work in hand may stay silent,
/// beyond the item time limit, before it is judged hung.
const PROGRESS_SLACK: Duration = Duration::from_millis(50);

/// How many reads (of up to the connection's read budget each) a gone worker's
/// socket gets to be emptied.
const DRAIN_ROUNDS: usize = 16;

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        events: Receiver<Event>,
        events_tx: Events,
        wake: Arc<Wake>,
        socket: PathBuf,
        checks: Arc<Checks>,
        counters: Arc<PoolCounters>,
        ready: Ready,
    ) -> Engine {
        Engine {
            config,
            events,
            events_tx,
            wake,
            socket,
            checks,
            counters,
            workers: HashMap::new(),
            last_served: 0,
            next_wid: 0,
            next_seq: 0,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            functions: None,
            ready: Some(ready),
            consecutive_failures: 0,
            last_failure: String::new(),
            respawn_at: None,
            shutdown_deadline: None,
            failed: None,
            exited: false,
        }
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
        for (wid, flags) in self.poll(block) {
            match wid {
                None => self.wake.drain(),
                Some(wid) => {
                    if flags.intersects(PollFlags::POLLOUT) {
                        self.flush(wid);
                    }
                    if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    {
                        self.read(wid);
                    }
                }
            }
        }
        Flow::Go
    }

    /// During shutdown, once every worker is settled: the engine is done.
    fn finish_shutdown(&mut self) -> bool {
        if self.shutdown_deadline.is_some() && self.workers.is_empty() {
            self.exited = true;
            self.jobs.clear();
            self.queue.clear();
        }
        self.exited
    }

    /// Wait for a connection to be readable (or writable, if it has bytes queued),
    /// for an event, or for the next deadline.
    fn poll(&self, block: bool) -> Vec<(Option<u64>, PollFlags)> {
        let timeout = match self.next_deadline() {
            _ if !block => PollTimeout::ZERO,
            None => PollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Round up, so we never wake just before the deadline.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut ids = vec![None];
        let mut fds = vec![PollFd::new(self.wake.fd(), PollFlags::POLLIN)];
        for (&wid, w) in &self.workers {
            if let Some(conn) = &w.conn {
                let mut flags = PollFlags::POLLIN;
                if conn.wants_to_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(conn.stream.as_fd(), flags));
                ids.push(Some(wid));
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) => ids
                .into_iter()
                .zip(
                    fds.iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty())),
                )
                .filter(|(_, flags)| !flags.is_empty())
                .collect(),
            Err(_) => Vec::new(), // EINTR: go round again.
        }
    }

    fn flush_all(&mut self) {
        let pending: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.conn.as_ref().is_some_and(Conn::wants_to_write))
            .map(|(&wid, _)| wid)
            .collect();
        for wid in pending {
            self.flush(wid);
        }
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
                self.on_disconnected(wid, None);
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
        let (frames, end) = match conn.read() {
            Incoming::Frames(frames) => (frames, None),
            Incoming::Closed(frames) => (frames, Some(None)),
            Incoming::Broken(frames, e) => (frames, Some(Some(e.to_string()))),
        };
        let more = !frames.is_empty() && end.is_none();
        for frame in frames {
            self.on_frame(wid, frame);
        }
        if let Some(error) = end {
            self.on_disconnected(wid, error);
        }
        more
    }

    /// The worker's connection ended (cleanly or not); no more frames will come.
    fn on_disconnected(&mut self, wid: u64, error: Option<String>) {
        if let Some(w) = self.workers.get_mut(&wid) {
            w.conn = None;
            w.disconnected = true;
            if !w.dead {
                w.dead = true;
                if let Some(error) = error {
                    w.kill_reason.get_or_insert(KillReason::Violation(error));
                }
            }
            // Whatever it is doing now, it is no longer a worker of ours.
            w.proc.signal(Signal::SIGKILL);
        }
        self.maybe_finalize(wid);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { pid, stream, join } => self.on_connected(pid, stream, join),
            Event::Rejected { pid, reason } => {
                let starting = self
                    .workers
                    .iter()
                    .find(|(_, w)| w.proc.pid == pid && !w.served && !w.dead)
                    .map(|(&wid, _)| wid);
                if let Some(wid) = starting {
                    self.kill(
                        wid,
                        KillReason::Handshake(format!("failed the handshake: {reason}")),
                    );
                }
            }
            Event::Exited { wid, cause } => {
                // Take what it sent before it died; then its connection is over, even
                // if a process it forked still holds the socket open.
                if self.workers.get(&wid).is_some_and(|w| w.conn.is_some()) {
                    self.drain(wid);
                    if self.workers.get(&wid).is_some_and(|w| w.conn.is_some()) {
                        self.on_disconnected(wid, None);
                    }
                }
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.exit = Some(cause);
                    w.dead = true;
                    if w.conn.is_none() {
                        // Not connected (never, or no more): nothing more to read.
                        w.disconnected = true;
                    }
                }
                self.maybe_finalize(wid);
            }
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
                    let _ = results.send(JobMsg::Failed(Arc::clone(err)));
                    return;
                }
                if self.shutdown_deadline.is_some() {
                    let _ = results.send(JobMsg::Failed(Arc::new(PoolError::Closed)));
                    return;
                }
                self.jobs.insert(
                    job,
                    Job {
                        function,
                        codec,
                        packed,
                        results,
                        counters,
                        recycle,
                        pending: 0,
                        input_done: false,
                        cancelled: false,
                    },
                );
            }
            Event::Submit(batch) => match self.jobs.get_mut(&batch.job) {
                Some(job) if !job.cancelled => {
                    job.pending += 1;
                    self.queue.push_back(batch);
                }
                _ => {}
            },
            Event::LocalFailure { job, index, kind } => {
                if let Some(job) = self.jobs.get(&job) {
                    let _ = job
                        .results
                        .send(JobMsg::Results(ResultBatch::single_failure(index, kind)));
                }
            }
            Event::InputDone { job, total } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.input_done = true;
                    let _ = j.results.send(JobMsg::InputDone { total });
                }
                self.maybe_end_job(job);
            }
            Event::InputFailed { job, total, error } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.input_done = true;
                    let _ = j.results.send(JobMsg::InputFailed { total, error });
                }
                self.maybe_end_job(job);
            }
            Event::Cancel { job } => self.cancel_job(job),
            Event::Shutdown => self.begin_shutdown(),
            Event::KillAll => {
                self.begin_shutdown();
                self.shutdown_deadline = Some(Instant::now());
            }
        }
    }

    fn on_connected(&mut self, pid: u32, stream: UnixStream, hello: Join) {
        let Some((&wid, _)) = self
            .workers
            .iter()
            .find(|(_, w)| w.proc.pid == pid && !w.served && !w.dead)
        else {
            return; // It died or was replaced while its handshake was under way.
        };
        // Every worker of a pool runs the same program; insist on the same functions.
        if let Some(known) = &self.functions {
            if *known != hello.functions {
                self.kill(
                    wid,
                    KillReason::Handshake(
                        "serves other functions than the pool's first worker".into(),
                    ),
                );
                return;
            }
        }
        let welcome = Message::Welcome {
            worker_id: wid as u32,
            max_frame: self.config.max_frame as u32,
            flush_interval_us: self.config.flush_interval.as_micros() as u32,
        };
        let greeted = write_frame(&mut &stream, &welcome, &Items::new(), self.config.max_frame);
        let conn = greeted
            .map_err(|e| e.to_string())
            .and_then(|()| Conn::new(stream, self.config.max_frame).map_err(|e| e.to_string()));
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                let reason = format!("connection failed during the handshake: {e}");
                self.kill(wid, KillReason::Handshake(reason));
                return;
            }
        };
        if self.functions.is_none() {
            self.functions = Some(hello.functions);
        }
        let w = self.workers.get_mut(&wid).expect("found above");
        w.conn = Some(conn);
        w.served = true;
        w.capacity = hello.capacity.max(1) as usize;
        w.progress_at = Instant::now();
        self.consecutive_failures = 0;
        self.counters.ready.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(wid, pid, "worker ready");
        if self.ready.is_some() {
            let connected = self.workers.values().filter(|w| w.usable()).count();
            if connected >= self.config.workers {
                let ready = self.ready.take().expect("checked");
                let _ = ready.send(Ok(self.functions.clone().unwrap_or_default()));
            }
        }
    }

    fn on_frame(&mut self, wid: u64, frame: Frame) {
        let Some(w) = self.workers.get(&wid) else {
            return;
        };
        if w.dead {
            return; // Being killed: its frames no longer count.
        }
        let header = match frame.message {
            Message::Results(header) => header,
            Message::Progress { job, seq, done } => {
                self.on_progress(wid, job, seq, done as usize);
                return;
            }
            other => {
                let what = format!("sent an unexpected {other:?} frame");
                self.kill(wid, KillReason::Violation(what));
                return;
            }
        };
        let items = frame.items;
        let count = items.len();
        let (first_index, answered, total) = match w.in_flight.front() {
            None => {
                self.kill(
                    wid,
                    KillReason::Violation("sent results while holding no batch".into()),
                );
                return;
            }
            Some(head) if head.seq != header.seq || head.batch.job != header.job => {
                let what = format!(
                    "sent results for batch {}/{} while its oldest batch is {}/{}",
                    header.job, header.seq, head.batch.job, head.seq
                );
                self.kill(wid, KillReason::Violation(what));
                return;
            }
            Some(head) => (
                head.batch.first_index,
                head.answered,
                head.batch.items.len(),
            ),
        };
        let job = self.jobs.get(&header.job);
        let live = job.is_some_and(|j| !j.cancelled);
        if job.is_some_and(|j| j.packed != header.packed) {
            let what = if header.packed {
                "sent packed results for a batch that asked for lengths"
            } else {
                "sent results with lengths for a batch that asked for packed ones"
            };
            self.kill(wid, KillReason::Violation(what.into()));
            return;
        }
        let skipped = count == 0 && header.offset == 0 && header.failures.is_empty();
        let advance = if skipped && !live {
            total - answered
        } else {
            let in_order = header.offset as usize == answered;
            let fits = count > 0 && answered + count <= total;
            let slots_ok = header.failures.windows(2).all(|p| p[0].slot < p[1].slot)
                && header.failures.iter().all(|f| (f.slot as usize) < count);
            if !(in_order && fits && slots_ok) {
                self.kill(
                    wid,
                    KillReason::Violation("sent results that do not match its batch".into()),
                );
                return;
            }
            if live {
                let batch = ResultBatch {
                    first_index: first_index + answered as u64,
                    items,
                    failures: header.failures.into_iter().map(convert_failure).collect(),
                };
                let _ = self.jobs[&header.job].results.send(JobMsg::Results(batch));
            }
            count
        };
        let w = self.workers.get_mut(&wid).expect("present");
        let head = w.in_flight.front_mut().expect("present");
        head.answered += advance;
        head.running = head.running.max(head.answered);
        w.outstanding -= advance;
        w.items_done += advance as u64;
        w.progress_at = Instant::now();
        if head.answered == total {
            let done = w.in_flight.pop_front().expect("present");
            if w.retiring && w.in_flight.is_empty() {
                w.send(&Message::Shutdown, None);
            }
            if let Some(job) = self.jobs.get_mut(&header.job) {
                job.pending -= 1;
                // Hand the batch's buffer back to the feeder: no fresh allocation
                // (and no fresh pages) per batch.
                if let Ok(items) = Arc::try_unwrap(done.batch.items) {
                    let _ = job.recycle.try_send(items);
                }
            }
            self.maybe_end_job(header.job);
        }
        let w = self.workers.get_mut(&wid).expect("present");
        if let Some(limit) = self.config.max_items_per_worker {
            if w.items_done >= limit && !w.retiring {
                w.retiring = true;
                tracing::debug!(wid, items = w.items_done, "recycling worker");
                if w.in_flight.is_empty() {
                    w.send(&Message::Shutdown, None);
                }
                // Its replacement starts now, while it finishes.
                self.top_up_workers();
            }
        }
    }

    /// The worker says how far its oldest batch has come.
    fn on_progress(&mut self, wid: u64, job: u64, seq: u64, done: usize) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        // Progress of a batch already answered in full is stale, not wrong.
        let Some(head) = w
            .in_flight
            .front_mut()
            .filter(|h| h.seq == seq && h.batch.job == job)
        else {
            return;
        };
        let len = head.batch.items.len();
        if done > len {
            let what = format!("claimed {done} items done of a batch of {len}");
            self.kill(wid, KillReason::Violation(what));
            return;
        }
        let now = Instant::now();
        head.heard_at = Some(now);
        if done > head.running {
            head.running = done;
            w.progress_at = now;
        }
    }

    /// Kill a worker; what it held is dealt with when it is gone.
    fn kill(&mut self, wid: u64, reason: KillReason) {
        if let Some(w) = self.workers.get_mut(&wid) {
            if !w.dead {
                tracing::warn!(wid, pid = w.proc.pid, ?reason, "killing worker");
                w.dead = true;
                w.kill_reason = Some(reason);
            }
            w.proc.signal(Signal::SIGKILL);
        }
    }

    /// Once a worker is both disconnected and reaped, settle what it held.
    fn maybe_finalize(&mut self, wid: u64) {
        let done = self
            .workers
            .get(&wid)
            .is_some_and(|w| w.disconnected && w.exit.is_some());
        if !done {
            return;
        }
        let mut w = self.workers.remove(&wid).expect("present");
        self.checks.spawned.lock().unwrap().remove(&w.proc.pid);
        let exit = w.exit.expect("checked");
        if self.shutdown_deadline.is_some() {
            return;
        }
        let served = w.served;
        if !served {
            // It never became a worker: a start failure.
            let reason = match w.kill_reason.take() {
                Some(KillReason::Handshake(r)) | Some(KillReason::Violation(r)) => r,
                Some(KillReason::Timeout { .. }) => "timed out".into(),
                None => format!("{exit} before completing the handshake"),
            };
            self.start_failed(reason);
            return;
        }
        let planned = w.retiring && w.in_flight.is_empty() && exit == ExitCause::Code(0);
        if !planned {
            self.counters.crashes.fetch_add(1, Ordering::Relaxed);
            let blame = match w.kill_reason.take() {
                Some(KillReason::Timeout { located }) => Blame::Timeout { located },
                Some(KillReason::Violation(what)) => {
                    tracing::warn!(wid, "worker broke the protocol: {what}");
                    Blame::Crash(ExitCause::Disconnected)
                }
                Some(KillReason::Handshake(_)) | None => Blame::Crash(exit),
            };
            tracing::info!(wid, pid = w.proc.pid, %exit, "worker died");
            let mut held = std::mem::take(&mut w.in_flight);
            // Younger batches never started: back to the front of the queue, in order.
            while held.len() > 1 {
                let young = held.pop_back().expect("len > 1");
                self.requeue(young.batch, young.answered);
            }
            if let Some(head) = held.pop_front() {
                self.blame(head, blame);
            }
        }
        self.top_up_workers();
    }

    /// Put the unanswered rest of a batch back at the front of the queue.
    fn requeue(&mut self, batch: Batch, answered: usize) {
        let live = self.jobs.get(&batch.job).is_some_and(|j| !j.cancelled);
        if !live {
            self.batch_gone(batch.job);
            return;
        }
        if let Some(job) = self.jobs.get(&batch.job) {
            job.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.queue.push_front(rest(batch, answered));
    }

    /// The batch was in work when its worker died or hung.
    ///
    /// Items the worker reported computed are innocent and go back as they are. A
    /// hang located by a fresh report (the worker, alive, said it was still on that
    /// item) is exactly that item, so it is tried alone. A crash, or a hang of a
    /// worker that fell silent (frozen whole), may have happened anywhere after the
    /// last report: the rest is split in halves until one item is left. Only an item
    /// alone in its batch, or located exactly, is ever charged an attempt.
    fn blame(&mut self, head: InFlight, blame: Blame) {
        let InFlight {
            batch,
            answered,
            running,
            ..
        } = head;
        let live = self.jobs.get(&batch.job).is_some_and(|j| !j.cancelled);
        if !live {
            self.batch_gone(batch.job);
            return;
        }
        let job = &self.jobs[&batch.job];
        match blame {
            Blame::Timeout { .. } => job.counters.timeouts.fetch_add(1, Ordering::Relaxed),
            Blame::Crash(_) => job.counters.crashes.fetch_add(1, Ordering::Relaxed),
        };
        let attempts = batch.attempts;
        let len = batch.items.len();
        if running >= len {
            // It computed every item and died before it sent the last results:
            // nothing of this batch was running.
            self.requeue(batch, answered);
            return;
        }
        let cuts: Vec<usize> = match blame {
            Blame::Timeout { located: true } => [answered, running, running + 1, len].to_vec(),
            Blame::Timeout { located: false } | Blame::Crash(_) => {
                let suspect = len - running;
                if suspect > 1 {
                    [answered, running, running + suspect / 2, len].to_vec()
                } else {
                    [answered, running, len].to_vec()
                }
            }
        };
        let mut parts: Vec<(usize, usize)> = cuts
            .windows(2)
            .map(|w| (w[0], w[1].min(len)))
            .filter(|(a, b)| a < b)
            .collect();
        if parts.is_empty() {
            // The worker claims it computed everything: blame the last item.
            parts.push((len - 1, len));
        }
        // A hang located by progress is that item's first attempt alone.
        let located = matches!(blame, Blame::Timeout { located: true });
        let whole = parts.len() == 1 && parts[0] == (0, len);
        let single = whole && len == 1;
        if single {
            let attempts = attempts + 1;
            if attempts > self.config.retries {
                let kind = match blame {
                    Blame::Timeout { .. } => ItemErrorKind::TimedOut {
                        limit: self.config.item_timeout.unwrap_or_default(),
                        attempts,
                    },
                    Blame::Crash(cause) => ItemErrorKind::Crashed { cause, attempts },
                };
                let _ = job
                    .results
                    .send(JobMsg::Results(ResultBatch::single_failure(
                        batch.first_index,
                        kind,
                    )));
                self.batch_gone(batch.job);
            } else {
                job.counters.retries.fetch_add(1, Ordering::Relaxed);
                self.queue.push_front(Batch { attempts, ..batch });
            }
            return;
        }
        job.counters.retries.fetch_add(1, Ordering::Relaxed);
        let job = self.jobs.get_mut(&batch.job).expect("live");
        job.pending += parts.len() - 1;
        for &(start, end) in parts.iter().rev() {
            let suspect = located && start == running && end == running + 1;
            if suspect && self.config.retries == 0 {
                // Located exactly, and no retry allowed: that was its one attempt.
                let kind = ItemErrorKind::TimedOut {
                    limit: self.config.item_timeout.unwrap_or_default(),
                    attempts: 1,
                };
                let index = batch.first_index + start as u64;
                let _ = job
                    .results
                    .send(JobMsg::Results(ResultBatch::single_failure(index, kind)));
                job.pending -= 1;
                continue;
            }
            self.queue.push_front(Batch {
                job: batch.job,
                first_index: batch.first_index + start as u64,
                items: Arc::new(batch.items.slice(start..end)),
                attempts: u32::from(suspect),
            });
        }
        self.maybe_end_job(batch.job);
    }

    /// A batch of the job is settled without going through a worker again.
    fn batch_gone(&mut self, job: u64) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending -= 1;
        }
        self.maybe_end_job(job);
    }

    fn maybe_end_job(&mut self, job: u64) {
        let finished = self
            .jobs
            .get(&job)
            .is_some_and(|j| j.pending == 0 && (j.input_done || j.cancelled));
        if finished {
            self.jobs.remove(&job);
        }
    }

    fn cancel_job(&mut self, job: u64) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.cancelled = true;
        let before = self.queue.len();
        self.queue.retain(|b| b.job != job);
        j.pending -= before - self.queue.len();
        for w in self.workers.values_mut() {
            if w.in_flight.iter().any(|f| f.batch.job == job) {
                w.send(&Message::Cancel { job }, None);
            }
        }
        self.maybe_end_job(job);
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
        for (_, job) in self.jobs.drain() {
            let _ = job
                .results
                .send(JobMsg::Failed(Arc::new(PoolError::Closed)));
        }
        self.queue.clear();
        for w in self.workers.values_mut() {
            w.dead = true;
            match &mut w.conn {
                Some(conn) => {
                    conn.push(&Message::Shutdown, None);
                    // Closing our end makes a worker that misses the Shutdown see EOF.
                    conn.close_when_sent();
                }
                None => w.proc.signal(Signal::SIGKILL),
            }
        }
    }

    /// A worker failed before it could serve.
    fn start_failed(&mut self, reason: String) {
        tracing::warn!("worker failed to start: {reason}");
        self.counters.spawn_failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures += 1;
        self.last_failure = reason.clone();
        if let Some(ready) = self.ready.take() {
            // At startup there is nobody to serve yet: report at once, clearly.
            let _ = ready.send(Err(PoolError::WorkerStart {
                program: self.config.command.program.clone(),
                reason,
            }));
            self.fail_pool(PoolError::Closed);
            return;
        }
        if self.consecutive_failures >= self.config.max_spawn_failures {
            self.fail_pool(PoolError::RespawnsExhausted {
                failures: self.consecutive_failures,
                last: self.last_failure.clone(),
            });
            return;
        }
        let backoff = Duration::from_millis(10 << self.consecutive_failures.min(7));
        self.respawn_at = Some(Instant::now() + backoff);
    }

    /// The pool can no longer serve: end every job with the error.
    fn fail_pool(&mut self, error: PoolError) {
        tracing::error!("pool failed: {error}");
        let error = Arc::new(error);
        for (_, job) in self.jobs.drain() {
            let _ = job.results.send(JobMsg::Failed(Arc::clone(&error)));
        }
        self.queue.clear();
        self.failed = Some(error);
        let wids: Vec<u64> = self.workers.keys().copied().collect();
        for wid in wids {
            self.kill(wid, KillReason::Handshake("the pool failed".into()));
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(deadline) = self.shutdown_deadline {
            if now >= deadline {
                for w in self.workers.values() {
                    w.proc.signal(Signal::SIGKILL);
                }
            }
            return;
        }
        let mut hung = Vec::new();
        let mut silent = Vec::new();
        for (&wid, w) in &self.workers {
            if w.dead {
                continue;
            }
            if !w.served {
                if now >= w.spawned_at + self.config.handshake_timeout {
                    silent.push(wid);
                }
            } else if let Some(limit) = self.config.item_timeout {
                if !w.in_flight.is_empty() && now >= w.progress_at + limit + PROGRESS_SLACK {
                    hung.push(wid);
                }
            }
        }
        for wid in hung {
            // Located only if the worker repeated its count lately: a process frozen
            // whole (stopped, say) may have moved on since its last report.
            let fresh = self.config.flush_interval * PROGRESS_HEARTBEAT * 3 + PROGRESS_SLACK;
            let located = self.workers[&wid]
                .in_flight
                .front()
                .and_then(|h| h.heard_at)
                .is_some_and(|at| now.saturating_duration_since(at) <= fresh);
            self.kill(wid, KillReason::Timeout { located });
        }
        for wid in silent {
            let reason = format!(
                "did not complete the handshake within {:?}",
                self.config.handshake_timeout
            );
            self.kill(wid, KillReason::Handshake(reason));
        }
        if self.respawn_at.is_some_and(|at| now >= at) {
            self.respawn_at = None;
            self.top_up_workers();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if let Some(deadline) = self.shutdown_deadline {
            return Some(deadline);
        }
        let mut next = self.respawn_at;
        let mut consider = |at: Instant| {
            next = Some(next.map_or(at, |n: Instant| n.min(at)));
        };
        for w in self.workers.values() {
            if w.dead {
                continue;
            }
            if !w.served {
                consider(w.spawned_at + self.config.handshake_timeout);
            } else if let Some(limit) = self.config.item_timeout {
                if !w.in_flight.is_empty() {
                    consider(w.progress_at + limit + PROGRESS_SLACK);
                }
            }
        }
        next
    }

    /// Start workers until the pool has as many as it should.
    fn top_up_workers(&mut self) {
        if self.shutdown_deadline.is_some() || self.failed.is_some() || self.respawn_at.is_some() {
            return;
        }
        let live = self
            .workers
            .values()
            .filter(|w| !w.dead && !w.retiring)
            .count();
        for _ in live..self.config.workers {
            if !self.spawn_worker() {
                return;
            }
        }
    }

    fn spawn_worker(&mut self) -> bool {
        let env = [
            (ENV_SOCKET, self.socket.to_string_lossy().into_owned()),
            (ENV_COORDINATOR_PID, std::process::id().to_string()),
            (ENV_MAX_FRAME, self.config.max_frame.to_string()),
            (ENV_CAPACITY, self.config.capacity.to_string()),
        ];
        let wid = self.next_wid;
        self.next_wid += 1;
        // The worker is started by the thread that will reap it. A worker dies with
        // the thread that started it (PR_SET_PDEATHSIG), and this one lives exactly
        // as long as the worker does, whichever thread leads the pool now.
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let command = self.config.command.clone();
        let checks = Arc::clone(&self.checks);
        let events = self.events_tx.clone();
        let waiter = std::thread::Builder::new()
            .name(format!("pstream-waiter-{wid}"))
            .spawn(move || {
                // Hold the lock across spawn so the pid is known before the child
                // can connect.
                let mut spawned = checks.spawned.lock().unwrap();
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
                let _ = events.send(Event::Exited { wid, cause });
            });
        let started = match waiter {
            Ok(_) => started
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the waiter thread died"))),
            Err(e) => Err(e),
        };
        let proc = match started {
            Ok(proc) => proc,
            Err(source) => {
                let error = PoolError::Spawn {
                    program: self.config.command.program.clone(),
                    source,
                };
                match self.ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(error));
                        self.fail_pool(PoolError::Closed);
                    }
                    None => self.fail_pool(error),
                }
                return false;
            }
        };
        self.counters.spawned.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.workers.insert(
            wid,
            Worker {
                proc,
                spawned_at: now,
                conn: None,
                served: false,
                capacity: 0,
                in_flight: VecDeque::new(),
                outstanding: 0,
                items_done: 0,
                progress_at: now,
                kill_reason: None,
                dead: false,
                disconnected: false,
                exit: None,
                retiring: false,
            },
        );
        true
    }

    /// Send queued batches to the workers with the most free credit.
    fn dispatch(&mut self) {
        if self.shutdown_deadline.is_some() || self.failed.is_some() {
            return;
        }
        let limit = self.config.max_items_per_worker;
        while let Some(batch) = self.queue.front() {
            let Some(job) = self.jobs.get(&batch.job).filter(|j| !j.cancelled) else {
                let batch = self.queue.pop_front().expect("front");
                self.batch_gone(batch.job);
                continue;
            };
            let n = batch.items.len();
            // The worker with the most credit free; among equals (idle workers, say)
            // the next after the one served last, so that a job whose batches are
            // answered before the next is cut still goes round every worker.
            let last = self.last_served;
            let best = self
                .workers
                .iter()
                .filter(|(_, w)| w.usable() && w.within_allowance(limit))
                .filter(|(_, w)| w.free() >= n || w.outstanding == 0)
                .max_by_key(|(&wid, w)| (w.free(), wid > last, std::cmp::Reverse(wid)))
                .map(|(&wid, _)| wid);
            let Some(wid) = best else {
                return;
            };
            let header = BatchHeader {
                job: batch.job,
                seq: self.next_seq,
                function: job.function.to_string(),
                codec: job.codec,
                first_index: batch.first_index,
                packed_results: job.packed,
            };
            let batch = self.queue.pop_front().expect("front");
            self.next_seq += 1;
            self.last_served = wid;
            let w = self.workers.get_mut(&wid).expect("chosen");
            if w.in_flight.is_empty() {
                w.progress_at = Instant::now();
            }
            w.outstanding += n;
            w.send(&Message::Batch(header), Some(&batch.items));
            w.in_flight.push_back(InFlight {
                seq: self.next_seq - 1,
                batch,
                answered: 0,
                running: 0,
                heard_at: None,
            });
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Blame {
    /// Over the time limit; `located`: at the item in work, exactly.
    Timeout {
        located: bool,
    },
    Crash(ExitCause),
}

/// The part of a batch from `answered` on.
fn rest(batch: Batch, answered: usize) -> Batch {
    if answered == 0 {
        return batch;
    }
    let n = batch.items.len();
    Batch {
        job: batch.job,
        first_index: batch.first_index + answered as u64,
        items: Arc::new(batch.items.slice(answered..n)),
        attempts: 0,
    }
}

fn convert_failure(f: ItemFailure) -> (u32, ItemErrorKind) {
    let message = f.message;
    let kind = match f.kind {
        FailureKind::Panicked => ItemErrorKind::Panicked {
            message,
            location: f.location,
        },
        FailureKind::Failed => ItemErrorKind::Failed { message },
        FailureKind::Decode => ItemErrorKind::Decode { message },
        FailureKind::Encode => ItemErrorKind::Encode { message },
        FailureKind::UnknownFunction => ItemErrorKind::UnknownFunction { message },
        FailureKind::TooLarge => ItemErrorKind::TooLarge { message },
    };
    (f.slot, kind)
}
