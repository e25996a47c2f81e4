//! [`RawResults`]: a job's results as encoded bytes, handed out in input order (or
//! as they come) while the consumer's thread steps the engine and, by default,
//! reads the input.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use pstream_protocol::decode_bincode;
use serde::de::DeserializeOwned;

use super::feeder::{Pumped, Source};
use super::{Reorder, Window};
use crate::error::{ItemError, ItemErrorKind, PoolError};
use crate::hub::Hub;
use crate::stats::{JobStats, PoolCounters};
use crate::vocab::{Event, Events, JobCounters, JobMsg, ResultBatch};

/// The results of a job as encoded bytes, in input order or as they come.
///
/// Read with [`RawResults::next_raw`], which lends each result's bytes without a
/// copy. Dropping it cancels the job: no more input is read, queued batches are
/// dropped, and the pool can run the next job.
///
/// `'input` is the lifetime of the job's input when the consumer's thread reads it
/// (it may borrow local data): the results cannot outlive what they read. With an
/// input thread ([`crate::ProcessPool::input_thread`]) it is `'static`.
pub struct RawResults<'input> {
    job: u64,
    ordered: bool,
    rx: Receiver<JobMsg>,
    /// Sends to `rx`: how a leader passes us the lead.
    me: Sender<JobMsg>,
    hub: Arc<Hub>,
    events: Events,
    window: Arc<Window>,
    counters: Arc<JobCounters>,
    pool_counters: Arc<PoolCounters>,
    spawned_at_start: u64,
    /// The input, when the consumer's thread reads it (no feeder thread).
    source: Option<Box<dyn Source + 'input>>,
    /// Events the source made, for the engine.
    outbox: Vec<Event>,
    reorder: Reorder<ResultBatch>,
    current: Option<Current>,
    yielded: u64,
    total: Option<u64>,
    /// The input failed: the error comes after the last item's result.
    input_error: Option<Arc<PoolError>>,
    error: Option<Arc<PoolError>>,
    finished: bool,
    ok: u64,
    failed: u64,
}

#[derive(Debug)]
struct Current {
    batch: ResultBatch,
    pos: usize,
    next_failure: usize,
    /// Items before this slot are ready to hand out as they are: the batch's end,
    /// or its next failed item (kept so that the common case is one compare).
    stop: usize,
    /// In packed items: where the next one starts.
    cursor: usize,
    /// In packed items: one did not decode, so where the next starts is unknown.
    lost: bool,
    /// `stop` while the items are packed and none was `lost`, else 0: items
    /// before it decode on [`RawResults::next_decoded`]'s short path.
    packed_stop: usize,
}

impl Current {
    fn new(batch: ResultBatch) -> Current {
        let mut cur = Current {
            batch,
            pos: 0,
            next_failure: 0,
            stop: 0,
            cursor: 0,
            lost: false,
            packed_stop: 0,
        };
        cur.set_stop();
        cur
    }

    /// Where the items ready as they are end, from `next_failure`.
    fn set_stop(&mut self) {
        let len = self.batch.items.len();
        self.stop = self
            .batch
            .failures
            .get(self.next_failure)
            .map_or(len, |(slot, _)| (*slot as usize).min(len));
        self.packed_stop = if self.batch.items.is_packed() && !self.lost {
            self.stop
        } else {
            0
        };
    }
}

/// What [`RawResults::advance`] found.
enum Advanced {
    /// Every result is out.
    Done,
    /// This item failed (or the job stopped).
    Failed(u64, ItemError),
    /// The current batch's next item is ready and did not fail.
    Ready,
}

impl std::fmt::Debug for RawResults<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResults")
            .field("job", &self.job)
            .field("ordered", &self.ordered)
            .field("yielded", &self.yielded)
            .field("total", &self.total)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<'input> RawResults<'input> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        job: u64,
        ordered: bool,
        rx: Receiver<JobMsg>,
        hub: Arc<Hub>,
        events: Events,
        window: Arc<Window>,
        counters: Arc<JobCounters>,
        pool_counters: Arc<PoolCounters>,
        me: Sender<JobMsg>,
        source: Option<Box<dyn Source + 'input>>,
    ) -> RawResults<'input> {
        let spawned_at_start = pool_counters.spawned.load(Ordering::Relaxed);
        RawResults {
            job,
            ordered,
            rx,
            me,
            hub,
            events,
            window,
            counters,
            pool_counters,
            spawned_at_start,
            source,
            outbox: Vec::new(),
            reorder: Reorder::new(ordered),
            current: None,
            yielded: 0,
            total: None,
            input_error: None,
            error: None,
            finished: false,
            ok: 0,
            failed: 0,
        }
    }

    /// The next result: the item's index, and its encoded value or why it has none.
    /// `None` when every item has been yielded, or after the job stopped with a pool
    /// error (yielded once as an [`ItemErrorKind::Aborted`] item).
    #[inline(always)]
    pub fn next_raw(&mut self) -> Option<(u64, Result<&[u8], ItemError>)> {
        // The common case, small enough to inline into the caller's loop: the
        // current batch has another item, and it did not fail.
        if let Err(end) = self.make_ready() {
            return end.map(|(index, error)| (index, Err(error)));
        }
        let (index, slot) = self.take_slot();
        self.ok += 1;
        let cur = self.current.as_ref().expect("an item is ready");
        Some((
            index,
            Ok(cur.batch.items.get(slot).expect("slot within batch")),
        ))
    }

    /// The next result decoded from bincode as `T`: for packed items (the common
    /// case of typed results), from the item's start, the next item starting where
    /// the value ended; else the item's bytes, all of which the value must take.
    /// For typed results.
    ///
    /// The reader is called directly (not through a closure handed in), so that
    /// it is inlined into the caller's loop: passed as a function, it stayed a
    /// call whose result went through memory. Errors become messages out of line.
    /// Through pstream's own reader of the bincode format: every length a worker
    /// sends is checked against the bytes left before anything is allocated, so a
    /// worker claiming a string of 2^50 bytes costs that item a decode error, not
    /// this process an abort on a failed allocation.
    #[inline(always)]
    pub(crate) fn next_decoded<T: DeserializeOwned>(
        &mut self,
    ) -> Option<(u64, Result<T, ItemError>)> {
        // The common case in one compare: the current batch is packed, has a next
        // item that did not fail, and no earlier one failed to decode.
        if let Some(cur) = self.current.as_mut() {
            if cur.pos < cur.packed_stop {
                let rest = cur.batch.items.data_from(cur.cursor);
                // A value that does not decode is left to the slow path, which
                // reads it again and makes its error.
                if let Ok((value, used)) = decode_bincode::<T>(rest) {
                    let slot = cur.pos;
                    cur.pos += 1;
                    cur.cursor += used;
                    self.yielded += 1;
                    self.ok += 1;
                    return Some((cur.batch.first_index + slot as u64, Ok(value)));
                }
            }
        }
        self.next_decoded_slow()
    }

    /// [`Self::next_decoded`] at a batch's end or a failed item, for items with
    /// lengths, and for packed items that do not decode or follow one that did not.
    #[inline(never)]
    fn next_decoded_slow<T: DeserializeOwned>(&mut self) -> Option<(u64, Result<T, ItemError>)> {
        if let Err(end) = self.make_ready() {
            return end.map(|(index, error)| (index, Err(error)));
        }
        let (index, slot) = self.take_slot();
        let cur = self.current.as_mut().expect("an item is ready");
        let items = &cur.batch.items;
        if items.is_packed() && !cur.lost {
            let rest = items.data_from(cur.cursor);
            match decode_bincode::<T>(rest) {
                Ok((value, used)) => {
                    cur.cursor += used;
                    self.ok += 1;
                    Some((index, Ok(value)))
                }
                Err(error) => {
                    cur.lost = true;
                    cur.set_stop();
                    Some((index, Err(self.decode_failed(index, error.to_string()))))
                }
            }
        } else {
            self.next_decoded_cold(index, slot)
        }
    }

    /// [`Self::next_decoded`] for an item of a batch with lengths, or of a packed
    /// batch in which an earlier item did not decode.
    #[cold]
    #[inline(never)]
    fn next_decoded_cold<T: DeserializeOwned>(
        &mut self,
        index: u64,
        slot: usize,
    ) -> Option<(u64, Result<T, ItemError>)> {
        let cur = self.current.as_ref().expect("an item is ready");
        let items = &cur.batch.items;
        let message = if items.is_packed() {
            "an earlier result of its batch did not decode, so where this one starts is \
             unknown"
                .to_string()
        } else {
            let bytes = items.get(slot).expect("slot within batch");
            match decode_bincode::<T>(bytes) {
                Ok((value, used)) if used == bytes.len() => {
                    self.ok += 1;
                    return Some((index, Ok(value)));
                }
                Ok((_, used)) => format!("{} bytes left over after the value", bytes.len() - used),
                Err(error) => error.to_string(),
            }
        };
        Some((index, Err(self.decode_failed(index, message))))
    }

    /// A result that did not decode: counted, and its error.
    #[cold]
    #[inline(never)]
    fn decode_failed(&mut self, index: u64, message: String) -> ItemError {
        self.failed += 1;
        ItemError {
            index,
            kind: ItemErrorKind::Decode {
                message: format!("the result does not decode as the output type: {message}"),
            },
        }
    }

    /// Leave the current batch's next item ready (there, and not failed), or say
    /// what to hand out instead: the end (`None`), or a failed item.
    #[inline(always)]
    fn make_ready(&mut self) -> Result<(), Option<(u64, ItemError)>> {
        if self.ready() {
            return Ok(());
        }
        match self.advance() {
            Advanced::Done => Err(None),
            Advanced::Failed(index, error) => Err(Some((index, error))),
            Advanced::Ready => Ok(()),
        }
    }

    /// Whether the current batch's next item is there and did not fail.
    #[inline(always)]
    fn ready(&self) -> bool {
        self.current.as_ref().is_some_and(|cur| cur.pos < cur.stop)
    }

    /// Take the current batch's next item, known to be ready: its index and slot.
    #[inline(always)]
    fn take_slot(&mut self) -> (u64, usize) {
        let cur = self.current.as_mut().expect("an item is ready");
        let slot = cur.pos;
        cur.pos += 1;
        self.yielded += 1;
        (cur.batch.first_index + slot as u64, slot)
    }

    /// When the current batch has no ready item: the end of a batch, a failed item,
    /// or a wait for the engine. Leaves a ready item current, or says why not.
    #[inline(never)]
    fn advance(&mut self) -> Advanced {
        loop {
            if let Some(cur) = &self.current {
                if cur.pos < cur.batch.items.len() {
                    break;
                }
                let (first, n) = (cur.batch.first_index, cur.batch.items.len());
                self.current = None;
                self.window.release_results(first, n);
            }
            if self.finished {
                return Advanced::Done;
            }
            if let Some((_, batch)) = self.reorder.ready() {
                self.current = Some(Current::new(batch));
                continue;
            }
            if self.total == Some(self.yielded) {
                match self.input_error.take() {
                    // Every item read has its result: now the input's error.
                    Some(error) => self.error = Some(error),
                    None => {
                        self.finish();
                        return Advanced::Done;
                    }
                }
            }
            if let Some(error) = &self.error {
                let index = self.reorder.next_index(self.yielded);
                let reason = error.to_string();
                self.finish();
                self.failed += 1;
                return Advanced::Failed(
                    index,
                    ItemError {
                        index,
                        kind: ItemErrorKind::Aborted { reason },
                    },
                );
            }
            match self.next_msg() {
                JobMsg::Results(batch) => {
                    let (first, len) = (batch.first_index, batch.items.len());
                    self.counters
                        .delivered
                        .fetch_add(len as u64, Ordering::Relaxed);
                    if let Some((_, batch)) = self.reorder.arrive(first, len, batch) {
                        self.current = Some(Current::new(batch));
                    }
                }
                JobMsg::InputDone { total } => self.total = Some(total),
                JobMsg::InputFailed { total, error } => {
                    self.total = Some(total);
                    self.input_error = Some(Arc::new(PoolError::Input(error)));
                }
                JobMsg::Failed(error) => self.error = Some(error),
                JobMsg::Lead => {}
            }
        }
        let cur = self.current.as_mut().expect("checked above");
        let slot = cur.pos;
        if let Some((failed_slot, kind)) = cur.batch.failures.get_mut(cur.next_failure) {
            if *failed_slot as usize == slot {
                let kind = std::mem::replace(
                    kind,
                    ItemErrorKind::Failed {
                        message: String::new(),
                    },
                );
                cur.pos += 1;
                cur.next_failure += 1;
                cur.set_stop();
                self.yielded += 1;
                self.failed += 1;
                let index = cur.batch.first_index + slot as u64;
                if let Some((pid, reason)) = &cur.batch.state_failure {
                    let (pid, reason) = (*pid, reason.clone());
                    return self.state_failed(index, pid, &reason);
                }
                return Advanced::Failed(index, ItemError { index, kind });
            }
        }
        Advanced::Ready
    }

    /// A worker could not build the function's state: the job ends with that
    /// error, yielded for this item as the job's end.
    #[cold]
    fn state_failed(&mut self, index: u64, pid: u32, reason: &str) -> Advanced {
        let error = PoolError::WorkerState {
            pid,
            message: reason.to_string(),
        };
        let reason = error.to_string();
        self.error = Some(Arc::new(error));
        self.finish();
        Advanced::Failed(
            index,
            ItemError {
                index,
                kind: ItemErrorKind::Aborted { reason },
            },
        )
    }

    /// The next message from the engine. When this thread reads the input, it
    /// first reads what the window allows, handing each batch to the engine as it
    /// is cut, so the workers start on it at once.
    fn next_msg(&mut self) -> JobMsg {
        while let Some(source) = self.source.as_mut() {
            match source.pump(&mut self.outbox) {
                Pumped::Cut => self.hub.offer(&mut self.outbox),
                Pumped::Starved => break,
                Pumped::Ended | Pumped::Cancelled => self.source = None,
            }
        }
        self.hub
            .recv(self.job, &self.rx, &self.me, &mut self.outbox)
    }

    /// The pool error that ended the job early, if one did.
    pub fn pool_error(&self) -> Option<&PoolError> {
        self.error.as_deref()
    }

    /// What the job has seen so far.
    pub fn stats(&self) -> JobStats {
        JobStats {
            items_ok: self.ok,
            items_failed: self.failed,
            ..self.probe().stats()
        }
    }

    /// A handle on the job's figures for another thread: it reads them while this
    /// one waits for the next result (a signal handler's summary, say).
    pub fn probe(&self) -> StatsProbe {
        StatsProbe {
            window: Arc::clone(&self.window),
            counters: Arc::clone(&self.counters),
            pool_counters: Arc::clone(&self.pool_counters),
            spawned_at_start: self.spawned_at_start,
        }
    }

    /// Items read from the input and not yet handed out (or held by the consumer's
    /// current batch).
    pub fn in_flight(&self) -> usize {
        self.window.in_use()
    }

    fn finish(&mut self) {
        self.finished = true;
        self.window.close();
    }
}

/// A job's figures, readable from any thread ([`RawResults::probe`]).
#[derive(Debug, Clone)]
pub struct StatsProbe {
    window: Arc<Window>,
    counters: Arc<JobCounters>,
    pool_counters: Arc<PoolCounters>,
    spawned_at_start: u64,
}

impl StatsProbe {
    /// Items read from the input and not yet handed out, as
    /// [`RawResults::in_flight`].
    pub fn in_flight(&self) -> usize {
        self.window.in_use()
    }

    /// What the job has seen so far, but the items handed out (`items_ok` and
    /// `items_failed` are zero: only the consumer counts those).
    pub fn stats(&self) -> JobStats {
        JobStats {
            items_ok: 0,
            items_failed: 0,
            crashes: self.counters.crashes.load(Ordering::Relaxed)
                + self.counters.timeouts.load(Ordering::Relaxed),
            timeouts: self.counters.timeouts.load(Ordering::Relaxed),
            respawns: self
                .pool_counters
                .spawned
                .load(Ordering::Relaxed)
                .saturating_sub(self.spawned_at_start),
            retries: self.counters.retries.load(Ordering::Relaxed),
            peak_in_flight: self.counters.peak_in_flight.load(Ordering::Relaxed),
        }
    }
}

impl Drop for RawResults<'_> {
    fn drop(&mut self) {
        // Stops the feeder at its next permit, and the engine drops what is queued.
        self.window.close();
        let _ = self.events.send(Event::Cancel { job: self.job });
        // Deal with it now if nobody leads, and have the supervisor take over
        // from this consumer.
        self.hub.step_if_free();
        self.hub.kick();
    }
}
