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
            let Some(job) = self.jobs.live(batch.job) else {
                let batch = self.jobs.queue.pop_front().expect("front");
                self.jobs.batch_gone(batch.job);
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
            let batch = self.jobs.queue.pop_front().expect("front");
            self.next_seq += 1;
            self.last_served = wid;
            let w = self.workers.get_mut(&wid).expect("chosen");
            if w.in_flight.is_empty() {
                w.progress_at = Instant::now();
            }
            w.outstanding += n;
            w.send(&Message::Batch(header), Some(&batch.items));
            w.in_flight.push_back(InFlight {
                seq: header_seq(self.next_seq),
                batch,
                answered: 0,
                running: 0,
                heard_at: None,
            });
        }
    }
}

/// The sequence number of the batch just sent.
fn header_seq(next: u64) -> u64 {
    next - 1
}
