//! The engine's side of the jobs: each job's channel to its consumer and how many
//! of its batches are still queued or in flight, and the queue of batches waiting
//! for a worker. Bookkeeping only: no sockets, no processes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;
use pstream_protocol::{Codec, Items};

use super::blame::Verdict;
use crate::error::{ItemErrorKind, PoolError};
use crate::vocab::{Batch, JobCounters, JobMsg, ResultBatch};

pub(super) struct Job {
    pub function: Arc<str>,
    pub codec: Codec,
    /// Its results travel packed (typed bincode jobs).
    pub packed: bool,
    pub results: Sender<JobMsg>,
    pub counters: Arc<JobCounters>,
    /// Where finished batch buffers go back to the feeder for reuse.
    pub recycle: Sender<Items>,
    /// Batches queued or in flight.
    pub pending: usize,
    pub input_done: bool,
    pub cancelled: bool,
}

#[derive(Default)]
pub(super) struct Jobs {
    jobs: HashMap<u64, Job>,
    /// Batches waiting for a worker, in the order they go.
    pub queue: VecDeque<Batch>,
}

impl Jobs {
    pub fn insert(&mut self, id: u64, job: Job) {
        self.jobs.insert(id, job);
    }

    pub fn get(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// The job, if it still wants results.
    pub fn live(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id).filter(|j| !j.cancelled)
    }

    /// Whether some job still wants results (and so, workers).
    pub fn waiting(&self) -> bool {
        self.jobs.values().any(|j| !j.cancelled)
    }

    /// A batch the feeder cut.
    pub fn submit(&mut self, batch: Batch) {
        if let Some(job) = self.jobs.get_mut(&batch.job).filter(|j| !j.cancelled) {
            job.pending += 1;
            self.queue.push_back(batch);
        }
    }

    pub fn send(&self, id: u64, message: JobMsg) {
        if let Some(job) = self.jobs.get(&id) {
            let _ = job.results.send(message);
        }
    }

    /// The job's input ended (`error`: with a failure) after `total` items.
    pub fn input_ended(&mut self, id: u64, total: u64, error: Option<String>) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.input_done = true;
            let message = match error {
                None => JobMsg::InputDone { total },
                Some(error) => JobMsg::InputFailed { total, error },
            };
            let _ = job.results.send(message);
        }
        self.maybe_end(id);
    }

    /// Mark the job cancelled and drop its queued batches; whether any worker
    /// still holds one is for the caller to tell them.
    pub fn cancel(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.cancelled = true;
        let before = self.queue.len();
        self.queue.retain(|b| b.job != id);
        job.pending -= before - self.queue.len();
        self.maybe_end(id);
    }

    /// A batch came back answered in full; its buffer goes back to the feeder.
    pub fn batch_done(&mut self, id: u64, items: Arc<Items>) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.pending -= 1;
            // No fresh allocation (and no fresh pages) per batch.
            if let Ok(items) = Arc::try_unwrap(items) {
                let _ = job.recycle.try_send(items);
            }
        }
        self.maybe_end(id);
    }

    /// A batch of the job is settled without going through a worker again.
    pub fn batch_gone(&mut self, id: u64) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.pending -= 1;
        }
        self.maybe_end(id);
    }

    /// Put the unanswered rest of a batch a worker held (and never started) back at
    /// the front of the queue, uncharged.
    pub fn requeue(&mut self, batch: Batch, answered: usize) {
        let Some(job) = self.live(batch.job) else {
            self.batch_gone(batch.job);
            return;
        };
        job.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.queue.push_front(rest(batch, answered));
    }

    /// Carry out a [`Verdict`] on `batch`: its parts go to the front of the queue,
    /// in order; its failed items are reported.
    pub fn apply(&mut self, batch: Batch, verdict: Verdict) {
        let Some(job) = self.jobs.get_mut(&batch.job) else {
            return;
        };
        for (at, kind) in verdict.failed {
            let index = batch.first_index + at as u64;
            let _ = job
                .results
                .send(JobMsg::Results(ResultBatch::single_failure(index, kind)));
        }
        if !verdict.again.is_empty() {
            job.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        // The batch was one pending; now it is as many as its parts.
        job.pending = job.pending + verdict.again.len() - 1;
        let whole = verdict.again.len() == 1
            && verdict.again[0].start == 0
            && verdict.again[0].end == batch.items.len();
        for part in verdict.again.iter().rev() {
            let items = if whole {
                Arc::clone(&batch.items)
            } else {
                Arc::new(batch.items.slice(part.start..part.end))
            };
            self.queue.push_front(Batch {
                job: batch.job,
                first_index: batch.first_index + part.start as u64,
                items,
                attempts: part.attempts,
                losses: part.losses,
            });
        }
        self.maybe_end(batch.job);
    }

    /// Count a worker lost while it held the job's batch.
    pub fn count_loss(&self, id: u64, timeout: bool) {
        if let Some(job) = self.jobs.get(&id) {
            let counter = if timeout {
                &job.counters.timeouts
            } else {
                &job.counters.crashes
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// End every job with `error`; nothing is queued after.
    pub fn fail_all(&mut self, error: &Arc<PoolError>) {
        for (_, job) in self.jobs.drain() {
            let _ = job.results.send(JobMsg::Failed(Arc::clone(error)));
        }
        self.queue.clear();
    }

    pub fn clear(&mut self) {
        self.jobs.clear();
        self.queue.clear();
    }

    /// A job whose input is done (or that was cancelled) with nothing pending is over.
    fn maybe_end(&mut self, id: u64) {
        let finished = self
            .jobs
            .get(&id)
            .is_some_and(|j| j.pending == 0 && (j.input_done || j.cancelled));
        if finished {
            self.jobs.remove(&id);
        }
    }
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
        losses: batch.losses,
    }
}

/// An item failure as the worker reported it, as the consumer gets it.
pub(super) fn convert_failure(f: pstream_protocol::ItemFailure) -> (u32, ItemErrorKind) {
    use pstream_protocol::FailureKind;
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
        // The batch's `state_failure` carries it to the consumer, which ends the job.
        FailureKind::State { .. } => ItemErrorKind::Failed { message },
    };
    (f.slot, kind)
}
