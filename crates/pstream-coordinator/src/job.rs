//! One job: the feeder that reads the input into batches within the window (on the
//! consumer's thread, or on a thread of its own for inputs that may block), and the
//! result iterators that hand results back in order (or as they come).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pstream_protocol::{FlushClock, Items};
use serde::de::DeserializeOwned;

use crate::error::{ItemError, ItemErrorKind, PoolError};
use crate::hub::Hub;
use crate::stats::{JobStats, PoolCounters};
use crate::vocab::{Batch, Event, Events, JobCounters, JobMsg, ResultBatch};

/// The flow-control window: how many items, and how many of their bytes, may be read
/// from the input and not yet handed to the consumer. The feeder takes permits
/// before reading and registers each batch it sends with its bytes; the consumer
/// gives them back as it takes results; closing it (the consumer went away) wakes
/// and stops the feeder. Shared by the process pool and the thread executor (which
/// counts items only).
#[derive(Debug)]
pub struct Window {
    size: usize,
    /// Set with `state.closed`, read without the lock before every item.
    cancelled: AtomicBool,
    state: Mutex<WindowState>,
    freed: Condvar,
}

#[derive(Debug)]
struct WindowState {
    available: usize,
    closed: bool,
    /// Threads waiting for permits: with none, giving permits back makes no
    /// system call (a condition variable's notify always does).
    waiting: usize,
    /// Bytes of the batches sent and not yet wholly handed out, and the most there
    /// may be before the feeder waits (it never waits with nothing in flight).
    bytes: u64,
    max_bytes: u64,
    /// The batches sent and not yet wholly handed out: first index → (items, items
    /// not yet handed out, bytes).
    batches: BTreeMap<u64, (u64, u64, u64)>,
}

impl Window {
    /// A window of `size` permits, all free, and no bound on bytes.
    pub fn new(size: usize) -> Window {
        Window::with_bytes(size, u64::MAX)
    }

    /// A window of `size` items and `max_bytes` bytes of encoded items.
    pub fn with_bytes(size: usize, max_bytes: u64) -> Window {
        Window {
            size,
            cancelled: AtomicBool::new(false),
            state: Mutex::new(WindowState {
                available: size,
                closed: false,
                waiting: 0,
                bytes: 0,
                max_bytes,
                batches: BTreeMap::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// Take up to `want` permits, waiting for at least one if `block`. `None` once
    /// the window is closed (the job was cancelled). None is free while the bytes in
    /// flight are at their bound.
    pub fn acquire(&self, want: usize, block: bool) -> Option<usize> {
        let mut state = self.state.lock().unwrap();
        loop {
            if state.closed {
                return None;
            }
            let full = state.bytes >= state.max_bytes && !state.batches.is_empty();
            if !full && state.available > 0 || !block {
                let got = if full { 0 } else { state.available.min(want) };
                state.available -= got;
                return Some(got);
            }
            state.waiting += 1;
            state = self.freed.wait(state).unwrap();
            state.waiting -= 1;
        }
    }

    /// Give `n` permits back.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.available += n;
        debug_assert!(state.available <= self.size);
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// A batch of `items` items from index `first`, `bytes` bytes in all, was sent.
    /// Whether the bytes in flight are now at their bound (the feeder then gives
    /// back the permits it holds, and reads on once batches are out).
    pub fn sent(&self, first: u64, items: u64, bytes: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.max_bytes == u64::MAX {
            return false;
        }
        state.bytes += bytes;
        state.batches.insert(first, (items, items, bytes));
        state.bytes >= state.max_bytes
    }

    /// The `n` results from index `first` on were handed out: give their permits
    /// back, and the bytes of each batch whose results are now all out.
    pub fn release_results(&self, first: u64, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.available += n;
        debug_assert!(state.available <= self.size);
        // The batch that holds them, if they came from one (an item that failed
        // before it was sent did not).
        let holder = state
            .batches
            .range_mut(..=first)
            .next_back()
            .filter(|(start, (items, _, _))| first < *start + *items)
            .map(|(start, entry)| {
                entry.1 = entry.1.saturating_sub(n as u64);
                (*start, entry.1, entry.2)
            });
        if let Some((start, 0, bytes)) = holder {
            state.batches.remove(&start);
            state.bytes -= bytes;
        }
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// No more permits, ever; wakes a waiting feeder.
    pub fn close(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.state.lock().unwrap().closed = true;
        self.freed.notify_all();
    }

    /// Whether it was closed (cheap: no lock).
    pub fn is_closed(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Permits held now: items read and not yet handed out.
    pub fn in_use(&self) -> usize {
        self.size - self.state.lock().unwrap().available
    }
}

/// How the feeder cuts batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedLimits {
    pub job: u64,
    /// Items per batch, at most. Batches start at one item and double up to this.
    pub max_batch: usize,
    /// Bytes per batch after which it is sent even if not full.
    pub max_batch_bytes: usize,
    /// An item larger than this cannot travel; a batch's bytes and offsets stay
    /// within it too.
    pub max_item: usize,
}

/// How far a [`Feeder::pump`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// It cut a batch (or failed an item): time to send it.
    Cut,
    /// No window permit is free (what it held is sent).
    Starved,
    /// The input ended (or failed): the job's last event is out.
    Ended,
    /// The job was cancelled.
    Cancelled,
}

/// Where a feeder's events go.
enum Out {
    /// Straight to whoever leads, through the event channel (the feeder thread).
    Channel(Events),
    /// Kept for the consumer, which hands them to the engine itself.
    Local(Vec<Event>),
}

/// The feeder thread: reads the input while it holds window permits, encodes items
/// into batches and submits them. For inputs that may block (a pipe, a socket):
/// results keep flowing while it waits.
pub(crate) fn feed<I, E>(
    limits: FeedLimits,
    mut input: I,
    mut encode: E,
    window: Arc<Window>,
    counters: Arc<JobCounters>,
    events: Events,
    recycled: Receiver<Items>,
) where
    I: Iterator,
    E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
{
    let mut feeder = Feeder::new(limits, window, counters, Out::Channel(events), recycled);
    feeder.pump(&mut input, &mut encode, true);
}

/// A job's input read on the consumer's thread, between results: see
/// [`InlineSource::pump`].
pub(crate) trait Source: Send {
    /// Read input while permits last, until a batch is cut; the events it made are
    /// appended to `out`.
    fn pump(&mut self, out: &mut Vec<Event>) -> Pumped;
}

/// The input, its encoder, and the feeder's state, kept by the results iterator.
pub(crate) struct InlineSource<I, E> {
    feeder: Feeder,
    input: I,
    encode: E,
}

impl<I, E> InlineSource<I, E> {
    pub fn new(
        limits: FeedLimits,
        input: I,
        encode: E,
        window: Arc<Window>,
        counters: Arc<JobCounters>,
        recycled: Receiver<Items>,
    ) -> Self {
        InlineSource {
            feeder: Feeder::new(limits, window, counters, Out::Local(Vec::new()), recycled),
            input,
            encode,
        }
    }
}

impl<I, E> Source for InlineSource<I, E>
where
    I: Iterator + Send,
    E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String> + Send,
{
    fn pump(&mut self, out: &mut Vec<Event>) -> Pumped {
        let pumped = self.feeder.pump(&mut self.input, &mut self.encode, false);
        if let Out::Local(events) = &mut self.feeder.out {
            out.append(events);
        }
        pumped
    }
}

struct Feeder {
    limits: FeedLimits,
    window: Arc<Window>,
    counters: Arc<JobCounters>,
    out: Out,
    batch: Items,
    /// Index of the batch's first item.
    first: u64,
    /// Index of the next item to read.
    next: u64,
    target: usize,
    permits: usize,
    submitted: u64,
    /// Buffers of finished batches, to reuse.
    recycled: Receiver<Items>,
    /// A batch was cut since the last pump returned.
    cut: bool,
    /// How long a batch may stay open while the workers have nothing to do.
    idle_clock: FlushClock,
}

/// While the workers have nothing to do, a batch is sent once it is this old, full
/// or not: a slow input's items do not wait for a full batch, and a fast input's
/// batches are not cut to a few items each (a batch costs system calls and wake-ups).
const IDLE_CUT: Duration = Duration::from_micros(100);

impl Feeder {
    fn new(
        limits: FeedLimits,
        window: Arc<Window>,
        counters: Arc<JobCounters>,
        out: Out,
        recycled: Receiver<Items>,
    ) -> Feeder {
        Feeder {
            limits,
            window,
            counters,
            out,
            batch: Items::new(),
            first: 0,
            next: 0,
            target: 1,
            permits: 0,
            submitted: 0,
            recycled,
            cut: false,
            idle_clock: FlushClock::new(IDLE_CUT),
        }
    }

    fn emit(&mut self, event: Event) {
        match &mut self.out {
            Out::Channel(events) => {
                let _ = events.send(event);
            }
            Out::Local(events) => events.push(event),
        }
    }

    /// Read and send input. With `block` (the feeder thread), until the input ends
    /// or the job is cancelled, waiting for permits; without (the consumer's
    /// thread), also stop at each batch cut and when no permit is free. A panic of
    /// the input or the encoder ends the job with an input error.
    fn pump<I, E>(&mut self, input: &mut I, encode: &mut E, block: bool) -> Pumped
    where
        I: Iterator,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
    {
        let run = panic::catch_unwind(AssertUnwindSafe(|| self.run(input, encode, block)));
        let end = match run {
            Ok(Pumped::Ended) => Event::InputDone {
                job: self.limits.job,
                total: self.next,
            },
            Ok(other) => return other,
            Err(payload) => {
                // What was read before the panic still gets its results.
                self.batch.truncate_partial();
                self.flush();
                let what = pstream_protocol::panic_message(&*payload);
                Event::InputFailed {
                    job: self.limits.job,
                    total: self.next,
                    error: format!("the input iterator (or item encoder) panicked: {what}"),
                }
            }
        };
        self.emit(end);
        Pumped::Ended
    }

    fn run<I, E>(&mut self, input: &mut I, encode: &mut E, block: bool) -> Pumped
    where
        I: Iterator,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
    {
        loop {
            if !block && self.cut {
                self.cut = false;
                return Pumped::Cut;
            }
            if self.permits == 0 {
                match self.take_permits(block) {
                    None => return Pumped::Cancelled,
                    Some(false) => {
                        self.cut = false;
                        return Pumped::Starved;
                    }
                    Some(true) => {}
                }
            }
            // Cancelled: read nothing more, even with permits in hand.
            if self.window.is_closed() {
                return Pumped::Cancelled;
            }
            // On its own thread, the next read may block for good (a quiet pipe):
            // unless the input says more items are there at once (`size_hint`), send
            // what we hold first, or its results would wait for the next input.
            if block && !self.batch.is_empty() && input.size_hint().0 == 0 {
                self.flush();
            }
            // Read a run of items with nothing to decide between them but their
            // size: the permits in hand, up to the batch's target; on its own
            // thread, no more than the input says it has at once.
            let mut room = self
                .permits
                .min(self.target.saturating_sub(self.batch.len()).max(1));
            if block {
                room = room.min(input.size_hint().0.max(1));
            }
            if self.read_run(input, encode, room) {
                break;
            }
            if self.batch.len() >= self.target {
                self.flush();
            }
        }
        self.flush();
        self.window.release(self.permits);
        self.permits = 0;
        Pumped::Ended
    }

    /// Read up to `room` items (permitted, and not past the batch's target) into
    /// the batch. Stops early after sending a batch (full of bytes, idle workers,
    /// or an item that did not fit) or failing an item. Whether the input ended.
    #[inline(always)]
    fn read_run<I, E>(&mut self, input: &mut I, encode: &mut E, room: usize) -> bool
    where
        I: Iterator,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
    {
        for _ in 0..room {
            let Some(item) = input.next() else {
                return true;
            };
            self.permits -= 1;
            let index = self.next;
            // Counted once encoded: an encoder that panics leaves `next` at its item.
            let before = self.batch.data_len();
            let pushed = self.batch.push_with(|buf| encode(item, buf));
            self.next += 1;
            match pushed {
                Ok(()) => {
                    let size = self.batch.data_len() - before;
                    if size > self.limits.max_item {
                        self.batch.pop();
                        self.fail_item(
                            index,
                            ItemErrorKind::TooLarge {
                                message: format!(
                                    "the item is {size} bytes, more than a frame of at most {} \
                                     bytes can carry; raise the frame limit (PoolBuilder::max_frame, \
                                     pstream-coord run --max-frame)",
                                    self.limits.max_item
                                ),
                            },
                        );
                        return false;
                    }
                    // The batch must fit in one frame with its offsets: if this item
                    // does not, it starts the next batch.
                    let len = self.batch.len();
                    if len > 1 && self.batch.data_len() + 5 * len > self.limits.max_item + 5 {
                        let item = self.batch.get(len - 1).unwrap_or_default().to_vec();
                        self.batch.pop();
                        self.next -= 1;
                        self.flush();
                        self.next += 1;
                        self.batch.push(&item);
                        return false;
                    }
                }
                Err(message) => {
                    self.fail_item(index, ItemErrorKind::Encode { message });
                    return false;
                }
            }
            if self.batch.data_len() >= self.limits.max_batch_bytes
                || (self.counters.delivered.load(Ordering::Relaxed) >= self.submitted
                    && self.idle_clock.due())
            {
                self.flush();
                return false;
            }
        }
        false
    }

    /// Take window permits: `Some(true)` with some in hand, `Some(false)` if none
    /// is free and we may not wait, `None` once the job is cancelled. Before waiting
    /// (or giving up), send what we hold if no other result is on its way, or the
    /// consumer could wait for items we sit on. While results are on their way, the
    /// batch stays open: the consumer frees permits as it takes them, and the batch
    /// grows instead of going out with the few items the last permits allowed.
    fn take_permits(&mut self, block: bool) -> Option<bool> {
        let want = self.target.saturating_sub(self.batch.len()).max(1);
        match self.window.acquire(want, false)? {
            0 => {
                if self.counters.delivered.load(Ordering::Relaxed) >= self.submitted {
                    self.flush();
                }
                if !block {
                    return Some(false);
                }
                self.permits = self.window.acquire(self.target.max(1), true)?;
            }
            n => self.permits = n,
        }
        Some(true)
    }

    fn fail_item(&mut self, index: u64, kind: ItemErrorKind) {
        // Items before it go first, so every batch covers consecutive indices.
        self.flush();
        self.first = index + 1;
        let job = self.limits.job;
        self.emit(Event::LocalFailure { job, index, kind });
        self.submitted += 1;
        self.cut = true;
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let fresh = match self.recycled.try_recv() {
                Ok(mut spare) => {
                    spare.clear();
                    spare
                }
                Err(_) => Items::with_capacity(self.batch.len(), 0),
            };
            let items = std::mem::replace(&mut self.batch, fresh);
            if self
                .window
                .sent(self.first, items.len() as u64, items.data_len() as u64)
            {
                self.window.release(self.permits);
                self.permits = 0;
            }
            // Items read and not yet handed out: the permits in use but not held.
            let in_flight = self.window.in_use().saturating_sub(self.permits) as u64;
            self.counters
                .peak_in_flight
                .fetch_max(in_flight, Ordering::Relaxed);
            self.submitted += items.len() as u64;
            let batch = Batch {
                job: self.limits.job,
                first_index: self.first,
                items: Arc::new(items),
                attempts: 0,
            };
            self.emit(Event::Submit(batch));
            self.target = (self.target * 2).min(self.limits.max_batch);
            self.cut = true;
            self.idle_clock.restart();
        }
        self.first = self.next;
    }
}

/// The results of a job as encoded bytes, in input order or as they come.
///
/// Read with [`RawResults::next_raw`], which lends each result's bytes without a
/// copy. Dropping it cancels the job: no more input is read, queued batches are
/// dropped, and the pool can run the next job.
pub struct RawResults {
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
    source: Option<Box<dyn Source>>,
    /// Events the source made, for the engine.
    outbox: Vec<Event>,
    reorder: BTreeMap<u64, ResultBatch>,
    current: Option<Current>,
    next_index: u64,
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
    /// In packed items: where the next one starts.
    cursor: usize,
    /// In packed items: one did not decode, so where the next starts is unknown.
    lost: bool,
}

impl Current {
    fn new(batch: ResultBatch) -> Current {
        Current {
            batch,
            pos: 0,
            next_failure: 0,
            cursor: 0,
            lost: false,
        }
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

#[cfg(test)]
mod window_tests {
    use super::Window;

    #[test]
    fn hands_out_at_most_its_size_and_stops_when_closed() {
        let w = Window::new(3);
        assert_eq!(w.acquire(2, true), Some(2));
        assert_eq!(w.acquire(5, false), Some(1));
        assert_eq!(w.acquire(5, false), Some(0));
        assert_eq!(w.in_use(), 3);
        w.release(2);
        assert_eq!(w.in_use(), 1);
        assert_eq!(w.acquire(5, true), Some(2));
        assert!(!w.is_closed());
        w.close();
        assert!(w.is_closed());
        assert_eq!(w.acquire(1, true), None);
    }

    #[test]
    fn bytes_in_flight_hold_the_feeder_until_whole_batches_are_out() {
        let w = Window::with_bytes(100, 10);
        assert_eq!(w.acquire(10, false), Some(10));
        w.sent(0, 5, 8);
        // Under the bound: permits still come.
        assert_eq!(w.acquire(5, false), Some(5));
        w.sent(5, 5, 8);
        assert_eq!(w.acquire(5, false), Some(0), "16 bytes of 10 in flight");
        // Part of the first batch out: its bytes stay in flight.
        w.release_results(0, 3);
        assert_eq!(w.acquire(5, false), Some(0));
        // All of it: 8 bytes left, under the bound.
        w.release_results(3, 2);
        assert_eq!(w.acquire(5, false), Some(5));
        // A result that came from no batch (an item that failed before it was
        // sent) gives back its permit only.
        w.release_results(50, 1);
        w.sent(10, 5, 8);
        assert_eq!(w.acquire(1, false), Some(0));
        // A batch larger than the bound holds the feeder until it is out.
        w.release_results(5, 5);
        w.release_results(10, 5);
        w.sent(15, 1, 1000);
        assert_eq!(w.acquire(1, false), Some(0));
        w.release_results(15, 1);
        assert_eq!(w.acquire(1, false), Some(1), "nothing in flight");
    }

    #[test]
    fn a_feeder_waiting_for_bytes_wakes_when_a_batch_is_out() {
        let w = std::sync::Arc::new(Window::with_bytes(100, 10));
        assert_eq!(w.acquire(4, false), Some(4));
        w.sent(0, 4, 20);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let w = std::sync::Arc::clone(&w);
            std::thread::spawn(move || tx.send(w.acquire(3, true)).unwrap())
        };
        // It cannot have its permits while the batch is in flight: it waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while w.state.lock().unwrap().waiting == 0 {
            if let Ok(got) = rx.try_recv() {
                panic!("got {got:?} while the batch was in flight");
            }
            assert!(std::time::Instant::now() < deadline, "never waited");
            std::thread::yield_now();
        }
        assert!(rx.try_recv().is_err());
        w.release_results(0, 4);
        assert_eq!(rx.recv().unwrap(), Some(3));
        waiter.join().unwrap();
    }
}

impl std::fmt::Debug for RawResults {
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

impl RawResults {
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
        source: Option<Box<dyn Source>>,
    ) -> RawResults {
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
            reorder: BTreeMap::new(),
            current: None,
            next_index: 0,
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

    /// The next result decoded by `decode`, which gets the item's bytes (for packed
    /// items, everything from the item's start to the end of its batch) and returns
    /// the value and how many bytes it took. For typed results.
    #[inline(always)]
    pub(crate) fn next_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<(T, usize), String>,
    ) -> Option<(u64, Result<T, ItemError>)> {
        if let Err(end) = self.make_ready() {
            return end.map(|(index, error)| (index, Err(error)));
        }
        let (index, slot) = self.take_slot();
        let cur = self.current.as_mut().expect("an item is ready");
        let items = &cur.batch.items;
        let decoded = if !items.is_packed() {
            let bytes = items.get(slot).expect("slot within batch");
            match decode(bytes) {
                Ok((_, used)) if used != bytes.len() => Err(format!(
                    "{} bytes left over after the value",
                    bytes.len() - used
                )),
                other => other,
            }
        } else if cur.lost {
            Err(
                "an earlier result of its batch did not decode, so where this one starts \
                 is unknown"
                    .to_string(),
            )
        } else {
            let rest = items.data().get(cur.cursor..).unwrap_or_default();
            let decoded = decode(rest);
            match &decoded {
                Ok((_, used)) => cur.cursor += used,
                Err(_) => cur.lost = true,
            }
            decoded
        };
        match decoded {
            Ok((value, _)) => {
                self.ok += 1;
                Some((index, Ok(value)))
            }
            Err(message) => {
                self.failed += 1;
                Some((
                    index,
                    Err(ItemError {
                        index,
                        kind: ItemErrorKind::Decode {
                            message: format!(
                                "the result does not decode as the output type: {message}"
                            ),
                        },
                    }),
                ))
            }
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
        self.current.as_ref().is_some_and(|cur| {
            cur.pos < cur.batch.items.len()
                && cur
                    .batch
                    .failures
                    .get(cur.next_failure)
                    .is_none_or(|(slot, _)| *slot as usize != cur.pos)
        })
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
            if self.ordered {
                if let Some(entry) = self.reorder.first_entry() {
                    if *entry.key() == self.next_index {
                        let batch = entry.remove();
                        self.next_index += batch.items.len() as u64;
                        self.current = Some(Current::new(batch));
                        continue;
                    }
                }
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
                let index = if self.ordered {
                    self.next_index
                } else {
                    self.yielded
                };
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
                    self.counters
                        .delivered
                        .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
                    if self.ordered {
                        self.reorder.insert(batch.first_index, batch);
                    } else {
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
                cur.pos += 1;
                cur.next_failure += 1;
                self.yielded += 1;
                self.failed += 1;
                let index = cur.batch.first_index + slot as u64;
                let kind = std::mem::replace(
                    kind,
                    ItemErrorKind::Failed {
                        message: String::new(),
                    },
                );
                return Advanced::Failed(index, ItemError { index, kind });
            }
        }
        Advanced::Ready
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

impl Drop for RawResults {
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

/// Decode one bincode value from the front of `bytes`. Inlined into the caller's
/// loop: as a call, its result went through memory, and reading it back wider than
/// it was written stalled the store-to-load forwarding on every item.
///
/// Through pstream's own reader of the bincode format: every length a worker sends
/// is checked against the bytes left before anything is allocated, so a worker
/// claiming a string of 2^50 bytes costs that item a decode error, not this process
/// an abort on a failed allocation.
#[inline(always)]
fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    pstream_protocol::decode_bincode::<T>(bytes).map_err(|e| e.to_string())
}

/// The typed results of [`crate::ProcessPool::map`]: an iterator of
/// `Result<Out, ItemError>`, in input order (or as they come for
/// [`crate::ProcessPool::map_unordered`]). Dropping it cancels the job.
#[derive(Debug)]
pub struct MapResults<Out> {
    raw: RawResults,
    _out: PhantomData<fn() -> Out>,
}

impl<Out: DeserializeOwned> MapResults<Out> {
    pub(crate) fn new(raw: RawResults) -> Self {
        MapResults {
            raw,
            _out: PhantomData,
        }
    }

    /// The next result with its input index (useful when unordered).
    #[inline]
    pub fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        self.raw.next_with(decode_bincode::<Out>)
    }

    /// Yield `(index, result)` pairs instead of results.
    pub fn indexed(self) -> Indexed<Out> {
        Indexed(self)
    }

    /// The pool error that ended the job early, if one did.
    pub fn pool_error(&self) -> Option<&PoolError> {
        self.raw.pool_error()
    }

    /// What the job has seen so far.
    pub fn stats(&self) -> JobStats {
        self.raw.stats()
    }

    /// Items read from the input and not yet handed out.
    pub fn in_flight(&self) -> usize {
        self.raw.in_flight()
    }
}

impl<Out: DeserializeOwned> Iterator for MapResults<Out> {
    type Item = Result<Out, ItemError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|(_, r)| r)
    }
}

/// [`MapResults`] yielding `(index, result)` pairs.
#[derive(Debug)]
pub struct Indexed<Out>(MapResults<Out>);

impl<Out: DeserializeOwned> Iterator for Indexed<Out> {
    type Item = (u64, Result<Out, ItemError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_indexed()
    }
}

impl<Out> Indexed<Out> {
    /// Back to the results.
    pub fn into_inner(self) -> MapResults<Out> {
        self.0
    }
}
