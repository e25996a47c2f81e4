//! The feeder: reads a job's input within the window, encodes its items and cuts
//! them into batches for the engine, on a thread of its own ([`feed`]) or on the
//! consumer's thread between results ([`InlineSource`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use pstream_protocol::{frame_overhead, unwind, FlushClock, Items};

use super::Window;
use crate::error::ItemErrorKind;
use crate::tuning::IDLE_CUT;
use crate::vocab::{Batch, Event, Events, JobCounters};

/// How the feeder cuts batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedLimits {
    pub job: u64,
    /// Items per batch, at most. Batches start at one item and double up to this.
    pub max_batch: usize,
    /// Bytes per batch after which it is sent even if not full.
    pub max_batch_bytes: usize,
    /// An item larger than this cannot travel: a batch of it alone fills a frame.
    pub max_item: usize,
    /// The bytes of a batch's frame body not taken by the function's name: its
    /// items, their lengths and the rest of the header stay within it
    /// ([`pstream_protocol::frame_overhead`]).
    pub frame_room: usize,
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
        let run = unwind::catch(|| self.run(input, encode, block));
        let end = match run {
            Ok(Pumped::Ended) => Event::InputDone {
                job: self.limits.job,
                total: self.next,
            },
            Ok(other) => return other,
            Err(panic) => {
                // What was read before the panic still gets its results. The batch
                // holds the items from `first` on, each encoded: the items read
                // (`read_items` counts them in a register, lost to the panic) end
                // there, and the one whose input or encoder panicked is not one.
                self.batch.truncate_partial();
                self.next = self.first + self.batch.len() as u64;
                self.flush();
                Event::InputFailed {
                    job: self.limits.job,
                    total: self.next,
                    error: format!(
                        "the input iterator (or item encoder) panicked: {}",
                        panic.message
                    ),
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
    fn read_run<I, E>(&mut self, input: &mut I, encode: &mut E, mut room: usize) -> bool
    where
        I: Iterator,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
    {
        // The batch may grow to this many bytes with no other check: no item in it
        // can then be larger than an item may be, the batch fits its frame with the
        // lengths of as many items as it can have by the end of the run, and it is
        // not yet full of bytes. Past it, `settle` decides.
        let fits = (self.batch.data_len().saturating_add(self.limits.max_item))
            .min(
                self.limits
                    .frame_room
                    .saturating_sub(frame_overhead(self.batch.len() + room, 0)),
            )
            .min(self.limits.max_batch_bytes.saturating_sub(1));
        loop {
            let (read, end) = read_items(
                &mut self.batch,
                input,
                encode,
                room,
                fits,
                &self.counters.delivered,
                self.submitted,
                &mut self.idle_clock,
            );
            room -= read;
            self.permits -= read;
            self.next += read as u64;
            match end {
                RunEnd::Room => return false,
                RunEnd::Input => return true,
                RunEnd::Idle => {
                    self.flush();
                    return false;
                }
                RunEnd::Settle(pushed) => {
                    if self.settle(pushed, self.next - 1) {
                        return false;
                    }
                    // The idle check `read_items` left for this item.
                    if self.counters.delivered.load(Ordering::Relaxed) >= self.submitted
                        && self.idle_clock.due()
                    {
                        self.flush();
                        return false;
                    }
                    if room == 0 {
                        return false;
                    }
                }
            }
        }
    }

    /// After an item that failed to encode, or that took the batch past the bytes
    /// `read_run` lets through unchecked: fail an item too large to travel, start
    /// the next batch with an item that does not fit this one's frame, send a batch
    /// full of bytes. Whether the run must stop (a batch went out, or an item
    /// failed).
    #[cold]
    #[inline(never)]
    fn settle(&mut self, pushed: Result<(), String>, index: u64) -> bool {
        match pushed {
            Ok(()) => {
                // The item just pushed: the batch's last.
                let size = self
                    .batch
                    .len()
                    .checked_sub(1)
                    .and_then(|last| self.batch.get(last))
                    .map_or(0, <[u8]>::len);
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
                    return true;
                }
                // The batch must fit in one frame with its lengths: if this item
                // does not, it starts the next batch.
                let len = self.batch.len();
                if len > 1
                    && self.batch.data_len() + frame_overhead(len, 0) > self.limits.frame_room
                {
                    let item = self.batch.get(len - 1).unwrap_or_default().to_vec();
                    self.batch.pop();
                    self.next -= 1;
                    self.flush();
                    self.next += 1;
                    self.batch.push(&item);
                    return true;
                }
            }
            Err(message) => {
                self.fail_item(index, ItemErrorKind::Encode { message });
                return true;
            }
        }
        if self.batch.data_len() >= self.limits.max_batch_bytes {
            self.flush();
            return true;
        }
        false
    }

    /// Take window permits: `Some(true)` with some in hand, `Some(false)` if none
    /// is free and we may not wait, `None` once the job is cancelled. Before waiting
    /// (or giving up), send what we hold if no other item holds a permit, or the
    /// consumer would wait for items we sit on. While other items hold permits (their
    /// results on their way, or delivered and not yet taken), the batch stays open:
    /// the consumer frees permits as it takes those results, and the batch grows
    /// instead of going out with the few items the last permits allowed. (Workers
    /// that are idle because the window is full and the consumer is catching up are
    /// not a reason to send a short batch: that cut most batches short at small
    /// windows.)
    fn take_permits(&mut self, block: bool) -> Option<bool> {
        let want = self.target.saturating_sub(self.batch.len()).max(1);
        match self.window.acquire(want, false)? {
            0 => {
                let others = self
                    .window
                    .in_use()
                    .saturating_sub(self.permits + self.batch.len());
                if others == 0 {
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
                losses: 0,
            };
            self.emit(Event::Submit(batch));
            self.target = (self.target * 2).min(self.limits.max_batch);
            self.cut = true;
            self.idle_clock.restart();
        }
        self.first = self.next;
    }
}

/// Why [`read_items`] stopped.
enum RunEnd {
    /// It read the items it was allowed.
    Room,
    /// The input ended.
    Input,
    /// The last item read failed to encode, or took the batch past the bytes it
    /// may have unchecked: [`Feeder::settle`] decides (and then the idle check).
    Settle(Result<(), String>),
    /// Nothing was left in flight and the idle clock ran out: send the batch.
    Idle,
}

/// The run of items of [`Feeder::read_run`]: read and encode up to `room` items
/// into `batch`; how many were read (the input's end is none) and why it stopped.
/// A function of its own, never inlined, taking what the loop changes as `&mut`
/// parameters: they are known apart from the item bytes written through the
/// batch's buffer, so they stay in registers instead of being read back from the
/// feeder after every item; the count of items is the loop's own.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn read_items<I, E>(
    batch: &mut Items,
    input: &mut I,
    encode: &mut E,
    room: usize,
    fits: usize,
    delivered: &AtomicU64,
    submitted: u64,
    idle_clock: &mut FlushClock,
) -> (usize, RunEnd)
where
    I: Iterator,
    E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String>,
{
    for read in 0..room {
        let Some(item) = input.next() else {
            return (read, RunEnd::Input);
        };
        let pushed = batch.push_with(|buf| encode(item, buf));
        if pushed.is_err() || batch.data_len() > fits {
            return (read + 1, RunEnd::Settle(pushed));
        }
        if delivered.load(Ordering::Relaxed) >= submitted && idle_clock.due() {
            return (read + 1, RunEnd::Idle);
        }
    }
    (room, RunEnd::Room)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feeder on the consumer's thread over a window of `window` items, batches of
    /// at most `max_batch`.
    fn feeder(window: &Arc<Window>, counters: &Arc<JobCounters>, max_batch: usize) -> Feeder {
        let limits = FeedLimits {
            job: 1,
            max_batch,
            max_batch_bytes: usize::MAX,
            max_item: 1 << 20,
            frame_room: 1 << 30,
        };
        let (_, recycled) = crossbeam_channel::unbounded();
        Feeder::new(
            limits,
            Arc::clone(window),
            Arc::clone(counters),
            Out::Local(Vec::new()),
            recycled,
        )
    }

    /// Pump until it stops for want of permits (or ends): the sizes of the batches
    /// it cut on the way.
    fn pump_all(f: &mut Feeder, input: &mut std::ops::Range<u64>) -> (Vec<usize>, Pumped) {
        let mut encode = |x: u64, buf: &mut Vec<u8>| {
            buf.extend_from_slice(&x.to_le_bytes());
            Ok(())
        };
        loop {
            let pumped = f.pump(input, &mut encode, false);
            if pumped != Pumped::Cut {
                let Out::Local(events) = &mut f.out else {
                    unreachable!("a local feeder")
                };
                let sizes = events
                    .drain(..)
                    .filter_map(|e| match e {
                        Event::Submit(b) => Some(b.items.len()),
                        _ => None,
                    })
                    .collect();
                return (sizes, pumped);
            }
        }
    }

    #[test]
    fn a_batch_stays_open_while_results_the_consumer_has_not_taken_hold_permits() {
        let window = Arc::new(Window::new(8));
        let counters = Arc::new(JobCounters::default());
        let mut f = feeder(&window, &counters, 4);
        let mut input = 0..1000u64;
        // Batches grow 1, 2, 4; the eighth item opens a batch the window has no
        // more permits for.
        assert_eq!(
            pump_all(&mut f, &mut input),
            (vec![1, 2, 4], Pumped::Starved)
        );
        // Every result is back with the consumer (the workers are idle), and it
        // has taken the first batch's: one permit. The open batch does not go out
        // with two items: six more permits are coming as the consumer goes on.
        counters.delivered.store(7, Ordering::Relaxed);
        window.release_results(0, 1);
        assert_eq!(pump_all(&mut f, &mut input), (vec![], Pumped::Starved));
        // The second batch's two permits fill it.
        window.release_results(1, 2);
        assert_eq!(pump_all(&mut f, &mut input), (vec![4], Pumped::Starved));
    }

    #[test]
    fn a_batch_goes_out_short_when_no_other_item_holds_a_permit() {
        // A window smaller than a batch: no batch can ever be full.
        let window = Arc::new(Window::new(3));
        let counters = Arc::new(JobCounters::default());
        let mut f = feeder(&window, &counters, 8);
        let mut input = 0..1000u64;
        assert_eq!(pump_all(&mut f, &mut input), (vec![1, 2], Pumped::Starved));
        // The consumer takes every result: then the open batch is all that would
        // hold permits, and nothing else would free one, so it goes out as is.
        counters.delivered.store(3, Ordering::Relaxed);
        window.release_results(0, 1);
        window.release_results(1, 2);
        assert_eq!(pump_all(&mut f, &mut input), (vec![3], Pumped::Starved));
    }
}
