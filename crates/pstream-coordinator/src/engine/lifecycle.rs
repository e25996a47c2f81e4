//! Workers coming and going: starting them, killing them, settling what a lost one
//! held; failing and stopping the pool; the deadlines that drive all of it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstream_protocol::{Message, PROGRESS_HEARTBEAT};

use super::blame::{judge, Cause, Held};
use super::worker::{Hangup, KillReason, Life, Worker};
use super::{Config, Engine};
use crate::error::{ExitCause, PoolError};

/// How long after the last progress a worker with work in hand may stay silent,
/// beyond the item time limit, before it is judged hung.
const PROGRESS_SLACK: Duration = Duration::from_millis(50);

/// What is due by a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The worker's handshake.
    Handshake,
    /// Progress on the batch it holds.
    Progress,
    /// Over the network: a sign of life from it (any frame).
    Word,
    /// Over the network: our heartbeat to it.
    Beat,
    /// The report of its end, from the host agent that started it.
    Report,
}

/// The one place the deadline rules live: when `w` must have shown what, and when
/// we owe it a heartbeat.
fn deadlines(w: &Worker, config: &Config) -> impl Iterator<Item = (Instant, Due)> {
    let own = match w.life {
        Life::Starting => Some((w.started_at + config.handshake_timeout, Due::Handshake)),
        Life::Serving | Life::Retiring if !w.in_flight.is_empty() => config
            .item_timeout
            .map(|limit| (w.progress_at + limit + PROGRESS_SLACK, Due::Progress)),
        _ => None,
    };
    let remote = w.is_remote() && w.conn.is_some() && !w.is_ending();
    let word = remote.then(|| (w.heard_at + config.silence, Due::Word));
    let beat = remote.then(|| (w.beat_at + config.heartbeat, Due::Beat));
    let report =
        (w.agent.is_some() && w.is_ending() && w.conn.is_none() && w.exit.is_none()).then(|| {
            (
                w.hung_up_at.unwrap_or(w.started_at) + config.silence,
                Due::Report,
            )
        });
    own.into_iter().chain(word).chain(beat).chain(report)
}

impl Engine {
    /// Its process ended and was reaped.
    pub(super) fn on_exited(&mut self, wid: u64, cause: ExitCause) {
        self.timers_changed();
        // Take what it sent before it died; then its connection is over, even if a
        // process it forked still holds the socket open.
        if self.workers.get(&wid).is_some_and(|w| w.conn.is_some()) {
            self.drain(wid);
            if self.workers.get(&wid).is_some_and(|w| w.conn.is_some()) {
                self.on_disconnected(wid, Hangup::Closed);
            }
        }
        if let Some(w) = self.workers.get_mut(&wid) {
            w.exited(cause);
        }
        self.settle(wid);
    }

    /// The worker's connection ended (cleanly or not); no more frames will come.
    pub(super) fn on_disconnected(&mut self, wid: u64, hangup: Hangup) {
        self.timers_changed();
        if let Some(w) = self.workers.get_mut(&wid) {
            w.disconnected(hangup);
        }
        self.settle(wid);
    }

    /// Kill a worker; what it held is dealt with when it is gone.
    pub(super) fn kill(&mut self, wid: u64, reason: KillReason) {
        self.timers_changed();
        if let Some(w) = self.workers.get_mut(&wid) {
            w.kill(reason);
        }
        self.settle(wid);
    }

    /// Once a worker is settled (disconnected and reaped), deal with what it held.
    pub(super) fn settle(&mut self, wid: u64) {
        self.timers_changed();
        self.count_serving();
        if !self.workers.get(&wid).is_some_and(Worker::settled) {
            return;
        }
        let mut w = self.workers.remove(&wid).expect("present");
        let exit = w.exit.unwrap_or(ExitCause::Disconnected);
        if self.shutdown_deadline.is_some() {
            return;
        }
        if !w.served && (w.handle.is_none() || w.agent.is_some()) {
            // It joined on its own (or its host agent started it) and failed
            // before serving (its Welcome could not be sent): nothing of ours to
            // restart, nothing it held. An agent counts its own start failures.
            tracing::warn!(wid, "a joining worker was lost during its handshake");
            return;
        }
        if !w.served {
            // It never became a worker: a start failure.
            let reason = match w.take_reason() {
                Some(KillReason::Handshake(r))
                | Some(KillReason::Violation(r))
                | Some(KillReason::Lost(r)) => r,
                Some(KillReason::Timeout { .. }) => "timed out".into(),
                None => format!("{exit} before completing the handshake"),
            };
            // Quote what it wrote. The report reaches the user when it fails the
            // pool's start or its last respawn (see start_failed); otherwise only the
            // log has it, and the launcher shows the output when the worker is gone.
            let reported = self.ready.is_some()
                || self.consecutive_failures + 1 >= self.config.max_spawn_failures;
            let words = w.handle.as_ref().and_then(|h| h.last_words(reported));
            let reason = match words {
                Some(words) => format!("{reason}; its last output:\n{words}"),
                None => reason,
            };
            self.start_failed(reason);
            return;
        }
        if !w.retired_cleanly() {
            let reason = w.take_reason();
            let host = w.peer.map(|p| p.host());
            let lost_why = match &reason {
                Some(KillReason::Lost(why)) => Some(why.clone()),
                _ => None,
            };
            if let Some(KillReason::Lost(why)) = &reason {
                tracing::warn!(wid, peer = ?w.peer, "lost a worker: {why}");
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                if let Some(host) = &host {
                    self.counters.host(host, |h| h.lost += 1);
                }
            } else {
                self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                if let Some(host) = &host {
                    self.counters.host(host, |h| h.crashes += 1);
                }
            }
            let cause = match reason {
                Some(KillReason::Lost(_)) => Cause::Lost,
                Some(KillReason::Timeout { located }) => Cause::Timeout { located },
                Some(KillReason::Violation(what)) => {
                    tracing::warn!(wid, "worker broke the protocol: {what}");
                    Cause::Crash(ExitCause::Disconnected)
                }
                Some(KillReason::Handshake(_)) | None => Cause::Crash(exit),
            };
            if cause != Cause::Lost {
                tracing::info!(wid, pid = w.pid().unwrap_or(0), %exit, "worker died");
            }
            let mut held = std::mem::take(&mut w.in_flight);
            // What it answered of the batches it held was delivered (only the rest
            // is sent again): count it for its host, as a batch answered whole is.
            let answered: u64 = held.iter().map(|f| f.answered as u64).sum();
            if answered > 0 {
                if let Some(host) = &host {
                    self.counters.host(host, |h| h.items += answered);
                }
            }
            // Younger batches never started: back to the front of the queue, in order.
            while held.len() > 1 {
                let young = held.pop_back().expect("len > 1");
                self.jobs.requeue(young.batch, young.answered);
            }
            if let Some(head) = held.pop_front() {
                let job = head.batch.job;
                if let Some(why) = lost_why {
                    let item = head.batch.first_index + head.running as u64;
                    let on = match w.peer {
                        Some(peer) => format!("the worker at {peer}"),
                        None => "its worker".into(),
                    };
                    self.last_loss = Some((
                        job,
                        item,
                        format!("item {item} was in work on {on} when it was lost ({why})"),
                    ));
                }
                if self.jobs.live(job).is_none() {
                    self.jobs.batch_gone(job);
                } else {
                    if cause != Cause::Lost {
                        self.jobs
                            .count_loss(job, matches!(cause, Cause::Timeout { .. }));
                    }
                    let verdict = judge(
                        Held {
                            len: head.batch.items.len(),
                            attempts: head.batch.attempts,
                            losses: head.batch.losses,
                            answered: head.answered,
                            running: head.running,
                        },
                        cause,
                        self.config.retries,
                        self.config.item_timeout.unwrap_or_default(),
                    );
                    self.jobs.apply(head.batch, verdict);
                }
            }
        }
        self.top_up_workers();
    }

    /// The job's consumer went away: drop what is queued, tell whoever holds its
    /// batches.
    pub(super) fn cancel_job(&mut self, job: u64) {
        self.jobs.cancel(job);
        for w in self.workers.values_mut() {
            if w.in_flight.iter().any(|f| f.batch.job == job) {
                w.send(&Message::Cancel { job }, None);
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
        self.events_tx.set_door(crate::vocab::DoorState::Ending);
        // The agents first (see `stop_agents`).
        self.stop_agents();
        self.jobs.fail_all(&Arc::new(PoolError::Closed));
        for w in self.workers.values_mut() {
            w.stop();
        }
        // Workers that were never connected are settled once reaped.
        let wids: Vec<u64> = self.workers.keys().copied().collect();
        for wid in wids {
            self.settle(wid);
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
    pub(super) fn fail_pool(&mut self, error: PoolError) {
        tracing::error!("pool failed: {error}");
        let error = Arc::new(error);
        self.jobs.fail_all(&error);
        self.failed = Some(error);
        let wids: Vec<u64> = self.workers.keys().copied().collect();
        for wid in wids {
            self.kill(wid, KillReason::Handshake("the pool failed".into()));
        }
    }

    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(deadline) = self.shutdown_deadline {
            if now >= deadline {
                for w in self.workers.values_mut() {
                    if let Some(handle) = &w.handle {
                        handle.kill();
                    } else {
                        w.conn = None;
                    }
                    if w.agent.is_some() {
                        // No report awaited any more.
                        w.conn = None;
                        w.exit.get_or_insert(ExitCause::Lost);
                    }
                }
                let wids: Vec<u64> = self.workers.keys().copied().collect();
                for wid in wids {
                    self.settle(wid);
                }
            }
            return;
        }
        if self.timers_stale || self.timers_at.is_some_and(|at| now >= at) {
            self.worker_timers(now);
            // What handling them changed is in this look.
            self.timers_at = self.earliest_worker_deadline();
            self.timers_stale = false;
        }
        self.agent_timers(now);
        self.check_alone(now);
        if self.respawn_at.is_some_and(|at| now >= at) {
            self.respawn_at = None;
            self.top_up_workers();
        }
    }

    /// A deadline of some worker may now be earlier than the one kept: look at
    /// them all on the next step.
    pub(super) fn timers_changed(&mut self) {
        self.timers_stale = true;
    }

    /// The earliest deadline of any worker (a look at each).
    fn earliest_worker_deadline(&self) -> Option<Instant> {
        self.workers
            .values()
            .flat_map(|w| deadlines(w, &self.config).map(|(at, _)| at))
            .min()
    }

    /// Workers past a deadline at `now`: heartbeats owed, and those to end.
    fn worker_timers(&mut self, now: Instant) {
        let beat_slack = self.config.heartbeat / 2;
        let overdue: Vec<(u64, Due)> = self
            .workers
            .iter()
            .flat_map(|(&wid, w)| deadlines(w, &self.config).map(move |(at, due)| (wid, at, due)))
            // A heartbeat due within half an interval goes now too: so the
            // workers' heartbeats fall due together, not one per look at them all.
            .filter(|&(_, at, due)| now >= at || (due == Due::Beat && now + beat_slack >= at))
            .map(|(wid, _, due)| (wid, due))
            .collect();
        for (wid, due) in overdue {
            let reason = match due {
                Due::Beat => {
                    if let Some(w) = self.workers.get_mut(&wid) {
                        w.send(&Message::Heartbeat, None);
                        w.beat_at = now;
                    }
                    continue;
                }
                Due::Report => {
                    if let Some(w) = self.workers.get_mut(&wid) {
                        w.lost(format!(
                            "its host agent did not report its end within {:?} of its \
                             connection's end",
                            self.config.silence
                        ));
                        w.exit = Some(ExitCause::Lost);
                        w.kill_process();
                    }
                    self.settle(wid);
                    continue;
                }
                Due::Word => KillReason::Lost(format!(
                    "no word from it for {:?} (the heartbeat limit): its host is gone \
                     or cut off",
                    self.config.silence
                )),
                Due::Handshake => KillReason::Handshake(format!(
                    "did not complete the handshake within {:?}",
                    self.config.handshake_timeout
                )),
                Due::Progress => {
                    // Located only if the worker repeated its count lately: a
                    // process frozen whole (stopped, say) may have moved on since
                    // its last report.
                    let fresh =
                        self.config.flush_interval * PROGRESS_HEARTBEAT * 3 + PROGRESS_SLACK;
                    let located = self.workers[&wid]
                        .in_flight
                        .front()
                        .and_then(|h| h.heard_at)
                        .is_some_and(|at| now.saturating_duration_since(at) <= fresh);
                    KillReason::Timeout { located }
                }
            };
            if self.workers.get(&wid).is_some_and(|w| !w.is_ending()) {
                self.kill(wid, reason);
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if let Some(deadline) = self.shutdown_deadline {
            return Some(deadline);
        }
        let workers = if self.timers_stale {
            self.earliest_worker_deadline()
        } else {
            self.timers_at
        };
        workers
            .into_iter()
            .chain(self.respawn_at)
            .chain(self.alone_deadline())
            .chain(self.agent_deadline())
            .min()
    }

    /// Keep the count of workers taking batches, which jobs size their batches for.
    pub(super) fn count_serving(&self) {
        let n = self.workers.values().filter(|w| w.usable()).count();
        self.counters.serving.store(n as u64, Ordering::Relaxed);
    }

    /// How many connected workers `build` waits for: its own, or (with no launcher)
    /// `min_workers` that joined.
    pub(super) fn ready_at(&self) -> usize {
        if self.launcher.is_some() {
            self.config.workers
        } else {
            self.config.min_workers.max(1)
        }
    }

    /// With no launcher and no worker connected: when the pool stops waiting.
    fn alone_deadline(&self) -> Option<Instant> {
        if self.launcher.is_some() || self.failed.is_some() {
            return None;
        }
        self.alone_since
            .map(|since| since + self.config.wait_workers)
    }

    /// A pool with no launcher waits for workers to join while it has none; past
    /// `wait_workers`, it fails, saying whom it waited for. Its first worker is
    /// awaited by `build` the same way.
    fn check_alone(&mut self, now: Instant) {
        if self.launcher.is_some() || self.failed.is_some() {
            return;
        }
        let connected = if self.ready.is_some() {
            // At build, enough of them (counted only until then).
            self.workers.values().filter(|w| w.usable()).count() >= self.ready_at()
        } else {
            self.workers.values().any(|w| w.usable())
        };
        let needed = self.ready.is_some() || self.jobs.waiting();
        match (connected || !needed, self.alone_since) {
            (true, _) => self.alone_since = None,
            (false, None) => self.alone_since = Some(now),
            (false, Some(_)) => {}
        }
        if self.alone_deadline().is_none_or(|at| now < at) {
            return;
        }
        let whom = match self.config.listening {
            Some(addr) => format!("joining at {addr} (TCP)"),
            None => "joining the pool".into(),
        };
        let at = self.ready_at();
        let left = self.work_left();
        let error = if self.ready.is_some() && at > 1 {
            // Waiting for `min_workers` at build: say how many came.
            let joined = self.workers.values().filter(|w| w.usable()).count();
            PoolError::NoWorkers {
                waited: self.config.wait_workers,
                expected: format!("{at} workers {whom}, of which {joined} joined"),
                ever: 0,
                failure: self
                    .agent_failure
                    .clone()
                    .or_else(|| self.last_refusal.clone()),
                left,
            }
        } else {
            PoolError::NoWorkers {
                waited: self.config.wait_workers,
                expected: format!("workers {whom}"),
                ever: self.counters.ready.load(Ordering::Relaxed),
                failure: self
                    .agent_failure
                    .clone()
                    .or_else(|| self.last_refusal.clone()),
                left,
            }
        };
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
                self.fail_pool(PoolError::Closed);
            }
            None => self.fail_pool(error),
        }
    }

    /// The work that waits for a worker, for the message of a pool that has none:
    /// how many items, from which, and what became of the last item in work on a
    /// worker that was lost, if it is among them.
    fn work_left(&self) -> Option<String> {
        let queue = &self.jobs.queue;
        let first = queue.front()?;
        let items: usize = queue.iter().map(|b| b.items.len()).sum();
        let mut text = format!(
            "{items} item{} not done, the first item {} (counting from 0)",
            if items == 1 { " was" } else { "s were" },
            queue
                .iter()
                .filter(|b| b.job == first.job)
                .map(|b| b.first_index)
                .min()?
        );
        if let Some((job, item, what)) = &self.last_loss {
            let waiting = queue.iter().any(|b| {
                b.job == *job
                    && b.first_index <= *item
                    && *item < b.first_index + b.items.len() as u64
            });
            if waiting {
                text.push_str("; ");
                text.push_str(what);
            }
        }
        Some(text)
    }

    /// Start workers until the pool has as many as it should.
    pub(super) fn top_up_workers(&mut self) {
        if self.shutdown_deadline.is_some() || self.failed.is_some() || self.respawn_at.is_some() {
            return;
        }
        if self.launcher.is_none() {
            return; // Workers join on their own.
        }
        // Workers that joined on their own are extra: they replace none of ours.
        let live = self
            .workers
            .values()
            .filter(|w| w.counts() && w.handle.is_some() && w.agent.is_none())
            .count();
        for _ in live..self.config.workers {
            if !self.start_worker() {
                return;
            }
        }
    }

    fn start_worker(&mut self) -> bool {
        let Some(launcher) = &self.launcher else {
            return false;
        };
        let wid = self.next_wid;
        self.next_wid += 1;
        let handle = match launcher.launch(wid, &self.events_tx) {
            Ok(handle) => handle,
            Err(source) => {
                let error = PoolError::Spawn {
                    program: launcher.program().to_path_buf(),
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
        self.workers
            .insert(wid, Worker::started(handle, Instant::now()));
        self.timers_changed();
        true
    }
}
