//! Host agents: one process per host that starts the host's workers and reports
//! their ends (docs/cluster.md). The engine keeps each agent's connection (polled
//! like a worker's, with heartbeats both ways), turns its reports into the ends of
//! the workers it started ([`AgentHandle`]), and sends it `Kill` for them.
//!
//! The races: a report may come before the worker's join is handled (the worker
//! died right after its handshake) — then the pid is remembered as dead and the
//! join is dropped; a worker's connection may close before its report comes —
//! then the worker waits for the report, at most the heartbeat limit, and is lost
//! after that.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstream_protocol::{write_frame, AgentJoin, ExitStatus, Items, Message, WorkerExit, EXIT_LOST};

use super::worker::{KillReason, Life};
use super::Engine;
use crate::conn::{Conn, Incoming};
use crate::error::ExitCause;
use crate::launcher::Handle;
use crate::link::{Link, Peer};
use crate::vocab::{Event, Events};

/// Dead pids an agent reported before their join came, remembered this long.
const REMEMBER_DEAD: Duration = Duration::from_secs(600);

/// A host agent, as the engine holds it.
pub(super) struct Agent {
    pub conn: Conn,
    pub peer: Peer,
    pub hostname: String,
    pub pid: u32,
    /// When a frame last came from it.
    pub heard_at: Instant,
    /// When we last sent it a heartbeat.
    pub beat_at: Instant,
    /// Pids it reported dead that no worker of ours had: a join from one of them
    /// that comes later is a dead worker's.
    pub dead: HashMap<u32, Instant>,
    /// Its workers that failed to start, in a row.
    pub start_failures: u32,
}

impl Agent {
    /// How it is named in messages.
    pub fn name(&self) -> String {
        format!(
            "the host agent on {} ({}, pid {})",
            self.hostname, self.peer, self.pid
        )
    }
}

/// A worker a host agent started: killed through the agent; its end is the
/// agent's report.
#[derive(Debug)]
pub(crate) struct AgentHandle {
    pub agent: u64,
    pub pid: u32,
    events: Events,
}

impl Handle for AgentHandle {
    fn pid(&self) -> Option<u32> {
        // Not a process of this machine.
        None
    }

    fn kill(&self) {
        let _ = self.events.send(Event::AgentKill {
            agent: self.agent,
            pid: self.pid,
        });
    }
}

impl Engine {
    /// A host agent passed the handshake: welcome it.
    pub(super) fn on_agent_connected(&mut self, mut link: Box<dyn Link>, join: AgentJoin) {
        if self.shutdown_deadline.is_some() {
            // The job is ending: `Shutdown` in place of the welcome, and the link
            // is dropped. The agent exits 0 saying it had nothing to do (a late
            // agent is no failure of its host).
            tracing::info!(
                "a host agent on {} (pid {}) joined as the job ended: told to stop",
                join.hostname,
                join.pid
            );
            crate::door::turn_away(&mut link, self.config.max_frame);
            return;
        }
        if self.failed.is_some() {
            // The pool failed: the agent is told why (else it sees the connection
            // end before its welcome, and cannot say why), and the link is dropped.
            let reject = Message::Reject {
                reason: "the pool failed: it takes no more host agents".into(),
            };
            let _ = write_frame(&mut link, &reject, &Items::new(), self.config.max_frame);
            return;
        }
        let peer = link.peer();
        let id = self.next_agent;
        self.next_agent += 1;
        let ms = |d: Duration| d.as_millis().clamp(1, u32::MAX as u128) as u32;
        let welcome = Message::AgentWelcome {
            agent_id: id,
            heartbeat_ms: ms(self.config.heartbeat),
            silence_ms: ms(self.config.silence),
            capacity: self.config.capacity,
            max_frame: self.config.max_frame as u32,
            memory_limit: self.config.command.memory_limit.unwrap_or(0),
        };
        let greeted = write_frame(&mut link, &welcome, &Items::new(), self.config.max_frame);
        let conn = greeted.map_err(|e| e.to_string()).and_then(|()| {
            let mut conn = Conn::new(link, self.config.max_frame).map_err(|e| e.to_string())?;
            conn.register(&self.poller, super::agent_token(id))
                .map_err(|e| e.to_string())?;
            Ok(conn)
        });
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(%peer, "lost a host agent during its handshake: {e}");
                return;
            }
        };
        let now = Instant::now();
        let agent = Agent {
            conn,
            peer,
            hostname: join.hostname,
            pid: join.pid,
            heard_at: now,
            beat_at: now,
            dead: HashMap::new(),
            start_failures: 0,
        };
        tracing::info!(
            agent = id,
            "{} joined, starting {} workers",
            agent.name(),
            join.workers
        );
        self.agents.insert(id, agent);
    }

    /// The handle of a worker that agent `agent` started as `pid`, joining from
    /// `peer`: if the agent is connected, on the same host as the worker, has not
    /// reported that pid dead, and no worker of the pool is that pid of that agent
    /// already. A worker that names another host's agent, or a pid another worker
    /// holds, would have that agent's worker killed for it (`Kill` goes to the agent
    /// by pid) and its own end blamed on the other.
    pub(super) fn agent_handle(
        &mut self,
        agent: u64,
        pid: u32,
        peer: Peer,
    ) -> Result<Arc<AgentHandle>, String> {
        let Some(a) = self.agents.get_mut(&agent) else {
            return Err(format!(
                "it names host agent {agent}, which is not connected"
            ));
        };
        if a.peer.host() != peer.host() {
            return Err(format!(
                "it names {} but comes from another host ({})",
                a.name(),
                peer.host()
            ));
        }
        if a.dead.remove(&pid).is_some() {
            return Err(format!("{} reported pid {pid} dead already", a.name()));
        }
        let name = a.name();
        if self.workers.values().any(|w| w.agent == Some((agent, pid))) {
            return Err(format!(
                "it claims to be pid {pid} of {name}, which another worker of the pool is"
            ));
        }
        Ok(Arc::new(AgentHandle {
            agent,
            pid,
            events: self.events_tx.clone(),
        }))
    }

    /// A worker's handle asked its agent to kill it.
    pub(super) fn on_agent_kill(&mut self, agent: u64, pid: u32) {
        if let Some(a) = self.agents.get_mut(&agent) {
            a.conn.push(&Message::Kill { pid }, None);
        }
    }

    /// Read what came on an agent's connection.
    pub(super) fn read_agent(&mut self, id: u64) {
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        let (frames, end) = match agent.conn.read_with(&mut self.scratch) {
            Incoming::Frames(frames) => (frames, None),
            Incoming::Closed(frames) => (frames, Some("it closed the connection".to_string())),
            Incoming::Broken(frames, e) => (frames, Some(super::chain(&e))),
        };
        if !frames.is_empty() {
            agent.heard_at = Instant::now();
        }
        for frame in frames {
            match frame.message {
                Message::Heartbeat => {}
                Message::WorkerExited(exit) => self.on_agent_report(id, exit),
                other => {
                    let why = format!("it sent an unexpected {other:?} frame");
                    self.agent_lost(id, why);
                    return;
                }
            }
        }
        if let Some(why) = end {
            self.agent_lost(id, why);
        }
    }

    /// Write what is queued for an agent; a failure loses it.
    pub(super) fn flush_agent(&mut self, id: u64) {
        let failed = match self.agents.get_mut(&id) {
            Some(a) => a.conn.flush().err(),
            None => None,
        };
        if let Some(e) = failed {
            self.read_agent(id);
            if self.agents.contains_key(&id) {
                self.agent_lost(id, format!("write to it: {e}"));
            }
        }
    }

    /// An agent reports that one of its workers ended.
    fn on_agent_report(&mut self, id: u64, exit: WorkerExit) {
        let cause = match exit.status {
            ExitStatus::Code(code) => ExitCause::Code(code),
            ExitStatus::Signal(sig) => ExitCause::Signal(sig),
        };
        let wid = self
            .workers
            .iter()
            .find(|(_, w)| w.agent == Some((id, exit.pid)))
            .map(|(&wid, _)| wid);
        let Some(wid) = wid else {
            self.unclaimed_report(id, exit, cause);
            return;
        };
        tracing::debug!(wid, pid = exit.pid, max_rss_kb = exit.max_rss_kb, %cause, "agent reports worker's end");
        if exit.status == ExitStatus::Code(EXIT_LOST) {
            // Its connection ended under it (it says so): no evidence against
            // what it held.
            if let Some(w) = self.workers.get_mut(&wid) {
                w.lost("its connection to the coordinator ended (it exited, as its host agent reports)".into());
            }
        }
        self.on_exited(wid, cause);
    }

    /// A report of a pid that is no worker of ours: one that failed to start, or
    /// whose join is still on its way (it will be dropped), or one settled
    /// already (lost, then reported).
    fn unclaimed_report(&mut self, id: u64, exit: WorkerExit, cause: ExitCause) {
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        agent
            .dead
            .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_DEAD);
        if exit.pid != 0 {
            agent.dead.insert(exit.pid, now);
        }
        if exit.served {
            agent.start_failures = 0;
            return;
        }
        agent.start_failures += 1;
        let mut reason = format!(
            "a worker started by {} failed to start: {cause} before it was welcomed",
            agent.name()
        );
        if !exit.last_words.is_empty() {
            reason.push_str("; its last output:");
            for line in exit.last_words.lines() {
                reason.push_str("\n  | ");
                reason.push_str(line);
            }
        }
        let n = agent.start_failures;
        // The first, then the 2nd, 4th, 8th… in a row: clear, but not a flood.
        if n.is_power_of_two() && self.shutdown_deadline.is_none() {
            tracing::warn!("{reason} ({n} in a row on that host)");
        }
        self.counters.spawn_failures.fetch_add(1, Ordering::Relaxed);
        self.agent_failure = Some(reason);
    }

    /// An agent's connection ended or failed, or it fell silent: what its workers
    /// held is lost (uncharged) and sent elsewhere; the workers are gone with it
    /// (it kills them when its connection ends).
    pub(super) fn agent_lost(&mut self, id: u64, why: String) {
        let Some(agent) = self.agents.remove(&id) else {
            return;
        };
        if self.shutdown_deadline.is_none() {
            tracing::warn!(agent = id, "lost {}: {why}", agent.name());
        }
        let theirs: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.agent.is_some_and(|(a, _)| a == id))
            .map(|(&wid, _)| wid)
            .collect();
        for wid in theirs {
            if let Some(w) = self.workers.get_mut(&wid) {
                w.lost(format!("its host agent was lost: {why}"));
                w.conn = None;
                w.exit = Some(ExitCause::Lost);
            }
            self.settle(wid);
        }
    }

    /// Heartbeats to agents, and agents fallen silent: at `now`.
    pub(super) fn agent_timers(&mut self, now: Instant) {
        let mut silent = Vec::new();
        for (&id, a) in &mut self.agents {
            if now >= a.heard_at + self.config.silence {
                silent.push(id);
            } else if now >= a.beat_at + self.config.heartbeat {
                a.conn.push(&Message::Heartbeat, None);
                a.beat_at = now;
            }
        }
        for id in silent {
            let why = format!(
                "no word from it for {:?} (the heartbeat limit): its host is gone or cut off",
                self.config.silence
            );
            self.agent_lost(id, why);
        }
    }

    /// The next heartbeat or silence deadline of an agent.
    pub(super) fn agent_deadline(&self) -> Option<Instant> {
        self.agents
            .values()
            .map(|a| (a.heard_at + self.config.silence).min(a.beat_at + self.config.heartbeat))
            .min()
    }

    /// The pool shuts down: agents start no more workers, and exit once theirs
    /// have (each is told `Shutdown` by the pool itself).
    pub(super) fn stop_agents(&mut self) {
        let ids: Vec<u64> = self.agents.keys().copied().collect();
        for &id in &ids {
            if let Some(a) = self.agents.get_mut(&id) {
                a.conn.push(&Message::Shutdown, None);
            }
        }
        // Now, before any worker is told or any handshake cut: an agent that
        // hears of the end first does not take its workers' ends for failures.
        for id in ids {
            self.flush_agent(id);
        }
    }
}

impl Life {
    /// Whether it is ending with no reason given yet.
    fn ending_without_reason(&self) -> bool {
        matches!(self, Life::Ending { reason: None, .. })
    }
}

impl super::worker::Worker {
    /// Its connection was lost (its agent says so, or the agent itself is gone):
    /// → Ending, lost, unless a reason was given already.
    pub fn lost(&mut self, why: String) {
        if self.life.ending_without_reason() {
            if let Life::Ending { reason, .. } = &mut self.life {
                *reason = Some(KillReason::Lost(why));
            }
        } else if !self.is_ending() {
            self.end_lost(why);
        }
    }
}
