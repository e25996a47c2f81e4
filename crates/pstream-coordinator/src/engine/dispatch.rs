//! Which worker gets the next queued batch: the one with the most credit free.

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
            self.last_served = wid;
            let w = self.workers.get_mut(&wid).expect("chosen");
            let before = w.free();
            let was_idle = w.in_flight.is_empty();
            let now = Instant::now();
            if was_idle {
                w.progress_at = now;
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
            self.rerank(wid, before);
            if was_idle && self.config.item_timeout.is_some() {
                // A progress deadline from now: maybe the earliest.
                self.timers_changed();
            }
        }
    }
}

impl Engine {
    /// The worker for a batch of `n` items: the one with the most credit free;
    /// among equals (idle workers, say) the next after the one served last, so
    /// that a job whose batches are answered before the next is cut still goes
    /// round every worker. Found in `ranked` (no look at every worker per batch:
    /// with hundreds of them, that look cost more than the batch), which holds
    /// each serving worker under its free credit; entries of workers that are
    /// gone or no longer serving are dropped as they are met.
    fn pick(&mut self, n: usize, limit: Option<u64>) -> Option<u64> {
        let last = self.last_served;
        loop {
            let &(free, _) = self.ranked.last()?;
            let (free, wid) = self
                .ranked
                .range((free, last.saturating_add(1))..=(free, u64::MAX))
                .next()
                .or_else(|| self.ranked.range((free, 0)..=(free, u64::MAX)).next())
                .copied()
                .expect("the group of the last entry");
            match self.workers.get(&wid) {
                Some(w) if w.usable() && w.free() == free => {
                    if w.within_allowance(limit) && (free >= n || w.outstanding == 0) {
                        return Some(wid);
                    }
                    // A rarer case (a worker at its item allowance, or credits
                    // of different sizes): the same rule, by a look at each.
                    return self.pick_by_scan(n, limit);
                }
                _ => {
                    self.ranked.remove(&(free, wid));
                }
            }
        }
    }

    /// [`Engine::pick`], by a look at every worker.
    fn pick_by_scan(&self, n: usize, limit: Option<u64>) -> Option<u64> {
        let last = self.last_served;
        self.workers
            .iter()
            .filter(|(_, w)| w.usable() && w.within_allowance(limit))
            .filter(|(_, w)| w.free() >= n || w.outstanding == 0)
            .max_by_key(|(&wid, w)| (w.free(), wid > last, std::cmp::Reverse(wid)))
            .map(|(&wid, _)| wid)
    }

    /// Worker `wid`'s free credit was `before` and may have changed (or it may no
    /// longer serve): file it again.
    pub(super) fn rerank(&mut self, wid: u64, before: usize) {
        self.ranked.remove(&(before, wid));
        if let Some(w) = self.workers.get(&wid).filter(|w| w.usable()) {
            self.ranked.insert((w.free(), wid));
        }
    }
}

/// The sequence number of the batch just sent.
fn header_seq(next: u64) -> u64 {
    next - 1
}
