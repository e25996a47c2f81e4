//! What workers say: the end of a handshake, results, progress.

use std::sync::atomic::Ordering;
use std::time::Instant;

use pstream_protocol::{write_frame, Frame, Items, Join, Message};

use super::jobs::convert_failure;
use super::worker::{KillReason, Life, Worker};
use super::Engine;
use crate::conn::Conn;
use crate::link::Link;
use crate::vocab::{JobMsg, ResultBatch};

impl Engine {
    /// A peer passed the door's checks: it becomes a worker of the pool.
    pub(super) fn on_connected(
        &mut self,
        mut link: Box<dyn Link>,
        join: Join,
        agent: Option<(u64, u32)>,
    ) {
        self.timers_changed();
        let peer = link.peer();
        let pid = peer.pid();
        let starting = self
            .workers
            .iter()
            .find(|(_, w)| matches!(w.life, Life::Starting) && pid.is_some() && w.pid() == pid)
            .map(|(&wid, _)| wid);
        let closing = self.shutdown_deadline.is_some() || self.failed.is_some();
        if closing && (agent.is_some() || (starting.is_none() && peer.is_remote())) {
            // The job is ending (or the pool failed): `Shutdown` in place of the
            // welcome, and the link is dropped. The worker exits 0, and its host
            // agent does not take that for a start failure.
            crate::door::turn_away(&mut link, self.config.max_frame);
            return;
        }
        let wid = match (starting, agent) {
            (_, Some((agent, agent_pid))) => {
                // A host agent started it: its end is the agent's report.
                let handle = match self.agent_handle(agent, agent_pid, peer) {
                    Ok(handle) => handle,
                    Err(why) => {
                        // Dropped: it sees the end of its connection and exits.
                        tracing::warn!(%peer, "dropped a worker that joined: {why}");
                        return;
                    }
                };
                let wid = self.next_wid;
                self.next_wid += 1;
                let w = Worker::by_agent(handle, agent, agent_pid, Instant::now());
                self.workers.insert(wid, w);
                wid
            }
            (Some(wid), None) => wid,
            // A pool with no launcher takes whoever the door lets in; any pool
            // takes workers that join across the network (they add to its own).
            (None, None) if self.launcher.is_none() || peer.is_remote() => {
                if closing {
                    return; // Closing: the link is dropped, the worker sees the end.
                }
                let wid = self.next_wid;
                self.next_wid += 1;
                self.workers.insert(wid, Worker::joined(Instant::now()));
                wid
            }
            (None, None) => return, // It died or was replaced while its handshake was under way.
        };
        // Every worker of a pool runs the same program; insist on the same functions.
        if let Some(known) = &self.functions {
            if *known != join.functions {
                let why = "serves other functions than the pool's first worker";
                self.kill(wid, KillReason::Handshake(why.into()));
                return;
            }
        }
        // Heartbeats only across the network: on this machine the kernel tells
        // each side of the other's death.
        let (heartbeat_ms, silence_ms) = if peer.is_remote() {
            let ms = |d: std::time::Duration| d.as_millis().clamp(1, u32::MAX as u128) as u32;
            (ms(self.config.heartbeat), ms(self.config.silence))
        } else {
            (0, 0)
        };
        let welcome = Message::Welcome {
            worker_id: wid as u32,
            max_frame: self.config.max_frame as u32,
            flush_interval_us: self.config.flush_interval.as_micros() as u32,
            heartbeat_ms,
            silence_ms,
            spin_us: self.config.spin.as_micros() as u32,
        };
        let greeted = write_frame(&mut link, &welcome, &Items::new(), self.config.max_frame);
        let conn = greeted.map_err(|e| e.to_string()).and_then(|()| {
            let mut conn = Conn::new(link, self.config.max_frame).map_err(|e| e.to_string())?;
            conn.register(&self.poller, wid)
                .map_err(|e| e.to_string())?;
            Ok(conn)
        });
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                let reason = format!("connection failed during the handshake: {e}");
                self.kill(wid, KillReason::Handshake(reason));
                return;
            }
        };
        if self.functions.is_none() {
            self.functions = Some(join.functions);
        }
        let w = self.workers.get_mut(&wid).expect("found above");
        w.connected(conn, peer, join.capacity as usize, Instant::now());
        self.rerank(wid);
        self.consecutive_failures = 0;
        self.counters.ready.fetch_add(1, Ordering::Relaxed);
        self.counters.host(&peer.host(), |h| h.workers += 1);
        self.alone_since = None;
        self.count_serving();
        match pid {
            Some(pid) => tracing::debug!(wid, pid, "worker ready"),
            None => tracing::debug!(wid, %peer, "worker ready"),
        }
        if self.ready.is_some() {
            let connected = self.workers.values().filter(|w| w.usable()).count();
            if connected >= self.ready_at() {
                let ready = self.ready.take().expect("checked");
                let _ = ready.send(Ok(self.functions.clone().unwrap_or_default()));
            }
        }
    }

    /// One of our workers failed the door's checks.
    pub(super) fn on_rejected(&mut self, pid: u32, reason: String) {
        let starting = self
            .workers
            .iter()
            .find(|(_, w)| matches!(w.life, Life::Starting) && w.pid() == Some(pid))
            .map(|(&wid, _)| wid);
        if let Some(wid) = starting {
            let why = format!("failed the handshake: {reason}");
            self.kill(wid, KillReason::Handshake(why));
        }
    }

    pub(super) fn on_frame(&mut self, wid: u64, frame: Frame) {
        let Some(w) = self.workers.get(&wid) else {
            return;
        };
        if w.is_ending() {
            return; // Being killed: its frames no longer count.
        }
        let header = match frame.message {
            Message::Results(header) => {
                self.results_read = true;
                header
            }
            Message::Progress { job, seq, done } => {
                self.on_progress(wid, job, seq, done as usize);
                return;
            }
            // A sign of life, noted when it was read.
            Message::Heartbeat => return,
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
                let what = "sent results while holding no batch";
                self.kill(wid, KillReason::Violation(what.into()));
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
        let job = self.jobs.get(header.job);
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
                let what = "sent results that do not match its batch";
                self.kill(wid, KillReason::Violation(what.into()));
                return;
            }
            if live {
                let state_failure = header.failures.iter().find_map(|f| match f.kind {
                    pstream_protocol::FailureKind::State { pid } => Some((pid, f.message.clone())),
                    _ => None,
                });
                let batch = ResultBatch {
                    first_index: first_index + answered as u64,
                    items,
                    failures: header.failures.into_iter().map(convert_failure).collect(),
                    state_failure,
                };
                self.jobs.send(header.job, JobMsg::Results(batch));
            }
            count
        };
        let w = self.workers.get_mut(&wid).expect("present");
        let now = Instant::now();
        let head = w.in_flight.front_mut().expect("present");
        let first = !std::mem::replace(&mut head.answered_once, true);
        let (sent_at, to_idle) = (head.sent_at, head.to_idle);
        if first && to_idle {
            w.rtt_sample(sent_at, now);
        }
        let head = w.in_flight.front_mut().expect("present");
        head.answered += advance;
        head.running = head.running.max(head.answered);
        w.outstanding -= advance;
        w.items_done += advance as u64;
        w.busy_items += advance as u64;
        w.progress_at = Instant::now();
        if head.answered == total {
            let done = w.in_flight.pop_front().expect("present");
            if let Some(peer) = w.peer {
                let n = total as u64;
                self.counters.host(&peer.host(), |h| h.items += n);
            }
            w.batch_answered();
            if done.to_idle {
                w.rate_sample(total, done.sent_at, now);
            }
            self.check_link(wid, total, now);
            self.jobs.batch_done(header.job, done.batch.items);
        }
        let w = self.workers.get_mut(&wid).expect("present");
        if let Some(limit) = self.config.max_items_per_worker {
            if w.items_done >= limit && matches!(w.life, Life::Serving) {
                tracing::debug!(wid, items = w.items_done, "recycling worker");
                w.retire();
                // Its replacement starts now, while it finishes.
                self.top_up_workers();
            }
        }
        self.rerank(wid);
    }

    /// Worker `wid` just answered a batch of `batch` items: across a link (a
    /// round trip of at least [`crate::tuning::LINK_RTT`]), did the window limit
    /// it? It did if, at the rate the worker answered items since it last held
    /// none, a round trip held most of the window (more than three quarters):
    /// then the window was on the way to it or back, and it waited for batches.
    /// If so, say so once, naming the setting, with the items it needs in flight
    /// (what it computes in a round trip, up to its capacity). A worker whose
    /// items are answered at once, and a worker fed no faster than the
    /// coordinator can cut batches, hold a batch at a time: far from the window,
    /// whatever its compute rate (with trivial items, a compute rate measured
    /// from a batch answered at once came to millions of items per round trip).
    fn check_link(&mut self, wid: u64, batch: usize, now: Instant) {
        let Some(w) = self.workers.get(&wid) else {
            return;
        };
        let Some(rtt) = w.rtt else { return };
        let rtt_us = rtt.as_micros().min(u64::MAX as u128) as u64;
        self.counters
            .max_rtt_us
            .fetch_max(rtt_us, Ordering::Relaxed);
        if rtt < crate::tuning::LINK_RTT {
            return; // A wake-up, not a link.
        }
        let window = self.config.window as u64;
        let Some(in_transit) = w.in_transit(now) else {
            return;
        };
        if in_transit * 4.0 <= window as f64 * 3.0 {
            return; // The window was not what it waited for.
        }
        let Some(credit) = w.credit(batch) else {
            return;
        };
        self.counters
            .max_credit
            .fetch_max(credit, Ordering::Relaxed);
        if credit > window && !self.counters.window_short.swap(true, Ordering::Relaxed) {
            let peer = w.peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::warn!(
                "the window ({window} items) is too small to keep the link to the worker at \
                 {peer} busy: its round trip is {rtt:?}, which held about {} items at the \
                 rate it was fed, and it computes about {credit} items in that time, so it \
                 waits for batches; raise the window (--window, PoolBuilder::window) to at \
                 least {credit} items (it bounds the coordinator's memory: items times \
                 their size)",
                in_transit as u64
            );
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
        if !std::mem::replace(&mut head.answered_once, true) && head.to_idle {
            let sent_at = head.sent_at;
            w.rtt_sample(sent_at, now);
        }
        let head = w.in_flight.front_mut().expect("present");
        if done > head.running {
            head.running = done;
            w.progress_at = now;
        }
    }
}
