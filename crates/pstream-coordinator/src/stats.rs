//! Counters kept while pools and jobs run, and the snapshots users read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Pool-wide counters, shared by the supervisor and the pool handle.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub spawned: AtomicU64,
    pub ready: AtomicU64,
    pub crashes: AtomicU64,
    pub spawn_failures: AtomicU64,
    pub lost: AtomicU64,
    /// Workers connected and taking batches now (kept by the engine): what a job
    /// sizes its batches for.
    pub serving: AtomicU64,
    /// See [`PoolStats`].
    pub max_rtt_us: AtomicU64,
    pub max_credit: AtomicU64,
    pub window_short: std::sync::atomic::AtomicBool,
    /// Per host: updated when a worker joins, answers a batch or ends.
    pub hosts: Mutex<BTreeMap<String, HostStats>>,
}

/// What the workers of one host did: the workers on this machine's socket under
/// `"local"`, workers across the network under their IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostStats {
    /// Workers that completed the handshake.
    pub workers: u64,
    /// Items they answered.
    pub items: u64,
    /// Of its workers, those that died or were killed while serving.
    pub crashes: u64,
    /// Of its workers, those whose connection was lost.
    pub lost: u64,
}

impl PoolCounters {
    /// Update host `host`'s figures.
    pub fn host(&self, host: &str, update: impl FnOnce(&mut HostStats)) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        match hosts.get_mut(host) {
            Some(h) => update(h),
            None => update(hosts.entry(host.to_string()).or_default()),
        }
    }

    /// Every host's figures.
    pub fn hosts(&self) -> BTreeMap<String, HostStats> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a pool has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Worker processes started, first ones and replacements.
    pub spawned: u64,
    /// Of those, how many completed the handshake and served.
    pub ready: u64,
    /// Workers that died or were killed while serving.
    pub crashes: u64,
    /// Workers that failed before completing the handshake.
    pub spawn_failures: u64,
    /// Workers across the network whose connection was lost (closed, reset, or
    /// silent past the heartbeat limit); what they held was sent again, uncharged.
    pub lost: u64,
    /// The largest round trip measured to a worker, in microseconds (0: none
    /// measured): from a batch sent to an idle worker to its first answer.
    pub max_rtt_us: u64,
    /// The most items one worker needed in flight to stay busy across its link
    /// (its rate times its round trip, plus a batch, up to its capacity), over
    /// workers whose round trip is a link's (at least
    /// [`crate::tuning::LINK_RTT`]) and held most of the window (more than three
    /// quarters of it, at the rate the worker was fed): the credit a window must
    /// hold for it. 0: none such.
    pub max_credit: u64,
    /// The window was found too small to keep a link busy: a round trip held
    /// most of it, and the worker needs more (said once, as a warning that names
    /// the window's setting).
    pub window_short: bool,
}

impl PoolCounters {
    pub fn snapshot(&self) -> PoolStats {
        PoolStats {
            spawned: self.spawned.load(Ordering::Relaxed),
            ready: self.ready.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            spawn_failures: self.spawn_failures.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            max_rtt_us: self.max_rtt_us.load(Ordering::Relaxed),
            max_credit: self.max_credit.load(Ordering::Relaxed),
            window_short: self.window_short.load(Ordering::Relaxed),
        }
    }
}

/// What one job has seen so far ([`crate::RawResults::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobStats {
    /// Items yielded with a value.
    pub items_ok: u64,
    /// Items yielded as errors.
    pub items_failed: u64,
    /// Workers that died (or were killed for hanging) while computing this job.
    pub crashes: u64,
    /// Of those, workers killed for exceeding the item time limit.
    pub timeouts: u64,
    /// Replacement workers started while the job ran.
    pub respawns: u64,
    /// Batches (or parts of batches) sent again after a worker died.
    pub retries: u64,
    /// The most items read from the input and not yet handed to the consumer.
    pub peak_in_flight: u64,
}
