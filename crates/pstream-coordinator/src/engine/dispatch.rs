//! Which worker gets the next queued batch: the one with the most credit free
//! (among equals, a new one, else the one freed last).

use std::time::Instant;

use pstream_protocol::{BatchHeader, Message};

use super::worker::InFlight;
use super::Engine;

impl Engine {
    /// Send queued batches to the workers with the most free credit.
    pub(super) fn dispatch(&mut self) {
        if self.shutdown_deadline.is_some() || self.failed.is_some() {
            return;
        }
        let limit = self.config.max_items_per_worker;
        while let Some(batch) = self.jobs.queue.front() {
            if self.jobs.live(batch.job).is_none() {
                let batch = self.jobs.queue.pop_front().expect("front");
                self.jobs.batch_gone(batch.job);
                continue;
            }
            let n = batch.items.len();
            let Some(wid) = self.pick(n, limit) else {
                return;
            };
            let batch = self.jobs.queue.front().expect("front");
            let job = self.jobs.live(batch.job).expect("live");
            let header = BatchHeader {
                job: batch.job,
                seq: self.next_seq,
                function: job.function.to_string(),
                codec: job.codec,
                first_index: batch.first_index,
                packed_results: job.packed,
            };
            let batch = self.jobs.queue.pop_front().expect("front");
            self.next_seq += 1;
            let w = self.workers.get_mut(&wid).expect("chosen");
            w.fed = true;
            let was_idle = w.in_flight.is_empty();
            let now = Instant::now();
            if was_idle {
                w.progress_at = now;
                w.busy_since = now;
                w.busy_items = 0;
            }
            w.outstanding += n;
            w.send(&Message::Batch(header), Some(&batch.items));
            w.in_flight.push_back(InFlight {
                seq: header_seq(self.next_seq),
                batch,
                answered: 0,
                running: 0,
                heard_at: None,
                sent_at: now,
                to_idle: was_idle,
                answered_once: false,
            });
            self.rerank(wid);
            if was_idle && self.config.item_timeout.is_some() {
                // A progress deadline from now: maybe the earliest.
                self.timers_changed();
            }
        }
    }
}

/// Where a serving worker stands in `Engine::ranked`, highest first: its free
/// credit; then whether it has never been sent a batch (a worker that just
/// joined gets one before a warm one gets another); then how recently its credit
/// changed (among idle workers, the one whose last batch was answered last: its
/// memory and its connection are still warm); then its id.
pub(super) type RankKey = (usize, bool, u64, u64);

impl Engine {
    /// The worker for a batch of `n` items: the one with the most credit free;
    /// among equals (idle workers, say) one never sent a batch, else the one
    /// whose credit changed last. With many more workers than batches in flight
    /// (512 workers and a few batches of trivial items), batches then keep going
    /// to the few workers just freed, as with few workers, instead of round all
    /// of them in turn, each asleep since its last batch: that cost each batch a
    /// cold process and cold caches on both ends (a 512-worker fan-out spent
    /// twice the CPU of 2 workers on the same job). Every worker still gets a
    /// batch when it joins, and workers busy with slow items all take work since
    /// an idle one always has more free credit than a busy one.
    ///
    /// Found in `ranked` (no look at every worker per batch: with hundreds of
    /// them, that look cost more than the batch); entries of workers that are
    /// gone, no longer serving or filed again are dropped as they are met.
    fn pick(&mut self, n: usize, limit: Option<u64>) -> Option<u64> {
        loop {
            let key = *self.ranked.last()?;
            let wid = key.3;
            match self.workers.get(&wid) {
                Some(w) if w.usable() && w.ranked_as == Some(key) => {
                    if w.within_allowance(limit) && (key.0 >= n || w.outstanding == 0) {
                        return Some(wid);
                    }
                    // A rarer case (a worker at its item allowance, or credits
                    // of different sizes): the same rule, by a look at each.
                    return self.pick_by_scan(n, limit);
                }
                _ => {
                    self.ranked.remove(&key);
                }
            }
        }
    }

    /// [`Engine::pick`], by a look at every worker.
    fn pick_by_scan(&self, n: usize, limit: Option<u64>) -> Option<u64> {
        self.workers
            .iter()
            .filter(|(_, w)| w.usable() && w.within_allowance(limit))
            .filter(|(_, w)| w.free() >= n || w.outstanding == 0)
            .max_by_key(|(&wid, w)| (w.free(), !w.fed, w.ranked_as.map(|k| k.2), wid))
            .map(|(&wid, _)| wid)
    }

    /// Worker `wid`'s free credit may have changed (or it may no longer serve):
    /// file it again, as changed last.
    pub(super) fn rerank(&mut self, wid: u64) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if let Some(old) = w.ranked_as.take() {
            self.ranked.remove(&old);
        }
        if w.usable() {
            self.rank_clock += 1;
            let key = (w.free(), !w.fed, self.rank_clock, wid);
            self.ranked.insert(key);
            w.ranked_as = Some(key);
        }
    }
}

/// The sequence number of the batch just sent.
fn header_seq(next: u64) -> u64 {
    next - 1
}
