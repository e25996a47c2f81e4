//! One worker as the engine sees it: its life ([`Life`], with the legal moves in
//! one place), its connection, and the batches it holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstream_protocol::{Items, Message};

use crate::conn::Conn;
use crate::error::ExitCause;
use crate::launcher::Handle;
use crate::link::Peer;
use crate::vocab::Batch;

/// Why the engine ended a worker.
#[derive(Debug)]
pub(super) enum KillReason {
    /// Over the item time limit; `located` if the worker, alive, had just reported
    /// that it was still on the item at `running`.
    Timeout { located: bool },
    /// It broke the protocol.
    Violation(String),
    /// It did not complete the handshake, or the pool gave up on it.
    Handshake(String),
    /// Its connection across the network was lost (closed, reset, or silent past
    /// the heartbeat limit): no evidence against what it held.
    Lost(String),
}

/// How a worker's connection ended.
#[derive(Debug)]
pub(super) enum Hangup {
    /// The peer closed it at a frame boundary (or our write found it closed).
    Closed,
    /// The connection failed: a reset, a timeout, an end inside a frame.
    Failed(String),
    /// The peer sent bytes that are not a frame of ours.
    Garbage(String),
}

/// Where a worker is in its life. Idle or busy is not a state of its own: it is
/// whether a serving worker holds batches.
#[derive(Debug)]
pub(super) enum Life {
    /// Started; not yet through the handshake.
    Starting,
    /// Through the handshake: takes batches.
    Serving,
    /// Told to shut down once its batches are answered: takes no more.
    Retiring,
    /// Killed, dead, disconnected or told to stop: takes nothing more, and is
    /// settled once its connection is closed and its process reaped. `retired`: it
    /// was retiring when it ended.
    Ending {
        reason: Option<KillReason>,
        retired: bool,
    },
}

/// A batch sent to a worker and not yet answered in full.
#[derive(Debug)]
pub(super) struct InFlight {
    pub seq: u64,
    pub batch: Batch,
    /// How many of its items have results already.
    pub answered: usize,
    /// How many of its items the worker says it has computed (at least `answered`):
    /// the item at this position is the one in work.
    pub running: usize,
    /// When the worker last reported on this batch (a move or a repeat).
    pub heard_at: Option<Instant>,
    /// When it was sent, and whether to a worker that held nothing (then its
    /// first answer measures the round trip).
    pub sent_at: Instant,
    pub to_idle: bool,
    /// Whether anything about it came back yet.
    pub answered_once: bool,
}

pub(super) struct Worker {
    /// The process, if a launcher of ours started it.
    pub handle: Option<Arc<dyn Handle>>,
    pub life: Life,
    /// Whether it ever completed the handshake.
    pub served: bool,
    /// The connection, once the handshake is done and until it ends.
    pub conn: Option<Conn>,
    /// How it ended, once reaped.
    pub exit: Option<ExitCause>,
    pub started_at: Instant,
    /// Items it will hold at once (its credit when idle).
    pub capacity: usize,
    pub in_flight: VecDeque<InFlight>,
    /// Items sent and not yet answered.
    pub outstanding: usize,
    pub items_done: u64,
    /// When the worker last showed progress on its oldest batch.
    pub progress_at: Instant,
    /// Who is at the other end of its connection, once connected.
    pub peer: Option<Peer>,
    /// When a frame last came from it (any frame: over the network, a sign of life).
    pub heard_at: Instant,
    /// When we last sent it a heartbeat (over the network).
    pub beat_at: Instant,
    /// For a worker a host agent started: the agent's id, and the worker's pid on
    /// the agent's host. Its end is what the agent reports.
    pub agent: Option<(u64, u32)>,
    /// When its connection ended, for a worker whose end its agent reports.
    pub hung_up_at: Option<Instant>,
    /// The round trip to it: the least time from a batch sent while it was idle
    /// to its first answer (it rises slowly with longer ones).
    pub rtt: Option<Duration>,
    /// Items it computes per second while it has work (from batches sent while
    /// it was idle: their time less the round trip), smoothed.
    pub rate: Option<f64>,
    /// Whether it was ever sent a batch.
    pub fed: bool,
    /// Since when it has held work without a break (from a batch sent while it
    /// held none), and how many items it answered since.
    pub busy_since: Instant,
    pub busy_items: u64,
    /// Where it is filed in the engine's `ranked`, if anywhere.
    pub ranked_as: Option<super::RankKey>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.pid())
            .field("life", &self.life)
            .field("connected", &self.conn.is_some())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker a launcher just started.
    pub fn started(handle: Arc<dyn Handle>, now: Instant) -> Worker {
        Worker {
            handle: Some(handle),
            ..Worker::started_inner(now)
        }
    }

    /// A worker that host agent `agent` started as `pid` on its host.
    pub fn by_agent(handle: Arc<dyn Handle>, agent: u64, pid: u32, now: Instant) -> Worker {
        Worker {
            handle: Some(handle),
            agent: Some((agent, pid)),
            ..Worker::started_inner(now)
        }
    }

    /// A worker that joined on its own (no launcher of ours started it).
    pub fn joined(now: Instant) -> Worker {
        Worker::started_inner(now)
    }

    fn started_inner(now: Instant) -> Worker {
        Worker {
            handle: None,
            life: Life::Starting,
            served: false,
            conn: None,
            exit: None,
            started_at: now,
            capacity: 0,
            in_flight: VecDeque::new(),
            outstanding: 0,
            items_done: 0,
            progress_at: now,
            peer: None,
            heard_at: now,
            beat_at: now,
            agent: None,
            hung_up_at: None,
            rtt: None,
            rate: None,
            fed: false,
            ranked_as: None,
            busy_since: now,
            busy_items: 0,
        }
    }

    /// Whether it is across the network (its connection may be lost while it lives).
    pub fn is_remote(&self) -> bool {
        self.peer.is_some_and(|p| p.is_remote())
    }

    /// Its pid, where it has one here.
    pub fn pid(&self) -> Option<u32> {
        self.handle.as_ref().and_then(|h| h.pid())
    }

    /// Starting → Serving: the handshake is done.
    pub fn connected(&mut self, conn: Conn, peer: Peer, capacity: usize, now: Instant) {
        debug_assert!(matches!(self.life, Life::Starting));
        self.life = Life::Serving;
        self.served = true;
        if let Some(handle) = &self.handle {
            handle.connected();
        }
        self.conn = Some(conn);
        self.peer = Some(peer);
        self.capacity = capacity.max(1);
        self.progress_at = now;
        self.heard_at = now;
        self.beat_at = now;
    }

    /// Serving → Retiring: it finishes what it holds, then is told to stop.
    pub fn retire(&mut self) {
        if matches!(self.life, Life::Serving) {
            self.life = Life::Retiring;
            if self.in_flight.is_empty() {
                self.send(&Message::Shutdown, None);
            }
        }
    }

    /// Its last batch is answered: a retiring worker is told to stop now.
    pub fn batch_answered(&mut self) {
        if matches!(self.life, Life::Retiring) && self.in_flight.is_empty() {
            self.send(&Message::Shutdown, None);
        }
    }

    /// → Ending, killed (the first reason given is kept).
    pub fn kill(&mut self, reason: KillReason) {
        if !self.is_ending() {
            tracing::warn!(pid = self.pid().unwrap_or(0), ?reason, "killing worker");
            self.end(Some(reason));
        }
        self.kill_process();
    }

    /// → Ending, asked to stop: `Shutdown`, then our side closed so a worker that
    /// misses it sees the end of the stream. One not yet connected is killed.
    pub fn stop(&mut self) {
        self.end(None);
        match &mut self.conn {
            Some(conn) => {
                conn.push(&Message::Shutdown, None);
                conn.close_when_sent();
            }
            None => self.kill_process(),
        }
    }

    /// Its connection ended: → Ending; whatever the process does now, it is no
    /// longer a worker of ours. Bytes that are not frames are a violation. A
    /// connection across the network that closed or failed is lost (the host may
    /// be cut off, the worker alive); on this machine, the process's exit says
    /// what happened, and a failed connection is a violation.
    ///
    /// A worker a host agent started is not lost when its connection ends: its
    /// agent reports how it ended (a crash, say), and that is awaited.
    pub fn disconnected(&mut self, hangup: Hangup) {
        self.conn = None;
        if self.agent.is_some() {
            self.hung_up_at = Some(Instant::now());
            if let Hangup::Garbage(what) = hangup {
                self.end(Some(KillReason::Violation(what)));
                self.kill_process();
            } else {
                self.end(None);
            }
            return;
        }
        let reason = match hangup {
            Hangup::Garbage(what) => Some(KillReason::Violation(what)),
            Hangup::Closed if self.is_remote() => {
                Some(KillReason::Lost("it closed the connection".into()))
            }
            Hangup::Failed(why) if self.is_remote() => Some(KillReason::Lost(why)),
            Hangup::Failed(why) => Some(KillReason::Violation(why)),
            Hangup::Closed => None,
        };
        self.end(reason);
        self.kill_process();
    }

    /// Its process ended and was reaped: → Ending.
    pub fn exited(&mut self, cause: ExitCause) {
        self.exit = Some(cause);
        self.end(None);
    }

    /// → Ending, lost (unless it is already ending).
    pub fn end_lost(&mut self, why: String) {
        self.end(Some(KillReason::Lost(why)));
    }

    /// → Ending, unless it is already.
    fn end(&mut self, reason: Option<KillReason>) {
        if !self.is_ending() {
            let retired = matches!(self.life, Life::Retiring);
            self.life = Life::Ending { reason, retired };
        }
    }

    /// Ending, with nothing more to read and (if we started it) reaped.
    pub fn settled(&self) -> bool {
        self.is_ending() && self.conn.is_none() && (self.exit.is_some() || self.handle.is_none())
    }

    pub fn is_ending(&self) -> bool {
        matches!(self.life, Life::Ending { .. })
    }

    /// It counts toward the pool's size: not ending, not retiring.
    pub fn counts(&self) -> bool {
        matches!(self.life, Life::Starting | Life::Serving)
    }

    /// It takes batches.
    pub fn usable(&self) -> bool {
        matches!(self.life, Life::Serving) && self.conn.is_some()
    }

    /// It stopped as asked: retired with nothing held, exit 0.
    pub fn retired_cleanly(&self) -> bool {
        matches!(self.life, Life::Ending { retired: true, .. })
            && self.in_flight.is_empty()
            && self.exit == Some(ExitCause::Code(0))
    }

    /// Why it was ended, taken once.
    pub fn take_reason(&mut self) -> Option<KillReason> {
        match &mut self.life {
            Life::Ending { reason, .. } => reason.take(),
            _ => None,
        }
    }

    /// Whether it may take more work under `max_items_per_worker`.
    pub fn within_allowance(&self, limit: Option<u64>) -> bool {
        limit.is_none_or(|l| self.items_done + (self.outstanding as u64) < l)
    }

    /// Its first answer to a batch sent at `sent_at`, while it was idle, came
    /// at `now`: a round trip (with the start of the work).
    pub fn rtt_sample(&mut self, sent_at: Instant, now: Instant) {
        let sample = now.saturating_duration_since(sent_at);
        self.rtt = Some(match self.rtt {
            Some(rtt) if sample > rtt => rtt + (sample - rtt) / 8,
            _ => sample,
        });
    }

    /// A batch of `items` sent at `sent_at` while it was idle was answered in
    /// full at `now`: its rate, from the time less the round trip (at least
    /// 10 µs: a batch answered at once says only that it is fast).
    pub fn rate_sample(&mut self, items: usize, sent_at: Instant, now: Instant) {
        let Some(rtt) = self.rtt else { return };
        let work = now
            .saturating_duration_since(sent_at)
            .saturating_sub(rtt)
            .max(Duration::from_micros(10));
        let sample = items as f64 / work.as_secs_f64();
        self.rate = Some(match self.rate {
            Some(rate) => rate + (sample - rate) / 4.0,
            None => sample,
        });
    }

    /// Items it needs in flight to stay busy: what it computes in a round trip,
    /// plus the batch it is on (`batch` items), but no more than it takes at
    /// once (its capacity: the most dispatch puts in flight to it).
    pub fn credit(&self, batch: usize) -> Option<u64> {
        let (rtt, rate) = (self.rtt?, self.rate?);
        let need = (rate * rtt.as_secs_f64()).min(u64::MAX as f64 / 2.0) as u64 + batch as u64;
        Some(need.min(self.capacity as u64))
    }

    /// The items a round trip held in flight to it, at the rate it answered
    /// them since it last held none (what the coordinator fed it, over its link):
    /// by Little's law, the part of what it held that was on the way.
    pub fn in_transit(&self, now: Instant) -> Option<f64> {
        let rtt = self.rtt?;
        let busy = now.saturating_duration_since(self.busy_since).as_secs_f64();
        (busy > 0.0).then(|| self.busy_items as f64 / busy * rtt.as_secs_f64())
    }

    /// Items it has room for.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.outstanding)
    }

    pub fn send(&mut self, message: &Message, items: Option<&Arc<Items>>) {
        if let Some(conn) = &mut self.conn {
            conn.push(message, items);
        }
    }

    pub fn kill_process(&mut self) {
        match &self.handle {
            Some(handle) => handle.kill(),
            // Joined on its own: all we can end is the connection.
            None => self.conn = None,
        }
    }
}
