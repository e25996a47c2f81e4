//! [`ThreadExecutor`]: a bounded pool of threads in this process that take turns
//! reading the input within the memory bound, with results reassembled in input
//! order.
//!
//! ```text
//!  input ◀──read── the worker in the reader's role ──publishes batches for idle workers──┐
//!                    │ computes its last batch                                           │
//!                    ▼                                                                   ▼
//!            pstream-thread-N (× max_workers) ──────────results──────────▶ consumer
//!                    ▲ the reader takes permits                              │
//!                    └────────────── Window (max_memory_items) ◀─────────────┘
//! ```
//!
//! There is no feeder thread: one worker at a time reads a round of items and
//! computes the last batch it read, so an item is usually made and dropped on the
//! same thread, and the allocator's arena is not shared between a thread that
//! allocates every item and threads that free them. See `docs/executors.md` (and
//! `docs/benchmarks.md`, "History behind the code", for what a feeder cost).
//!
//! The threads belong to the job: they start with `execute` and end when the input is
//! done or the consumer drops its results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;
use pstream_coordinator::tuning::{self, IDLE_CUT, THREAD_MAX_BATCH};
use pstream_coordinator::{Reorder, Window};
use pstream_protocol::unwind::{self, Panic};
use pstream_protocol::FlushClock;

use super::{Executor, Results, Task};
use crate::{ItemError, ItemErrorKind};

/// Runs functions on a bounded pool of threads in this process.
///
/// Takes any `Fn(In) -> Out + Send + Sync + 'static` closure, or a registered
/// [`Function`](crate::Function) handle (called in this process, see
/// [`Function::call`](crate::Function::call)). See [`Executor`] for the contract
/// and [`ProcessExecutor`](crate::ProcessExecutor) for its twin over processes.
///
/// ```
/// use pstream::{Executor, ThreadExecutor};
///
/// let ex = ThreadExecutor::builder().max_workers(2).max_memory_items(100).build();
/// let squares: Vec<u64> = ex
///     .execute(|x: u64| x * x, 0..1000u64)
///     .map(|r| r.expect("squaring does not fail"))
///     .collect();
/// assert_eq!(squares[999], 999 * 999);
/// ```
#[derive(Debug, Clone)]
pub struct ThreadExecutor {
    max_workers: usize,
    max_memory_items: usize,
}

impl Default for ThreadExecutor {
    fn default() -> Self {
        ThreadExecutor::new()
    }
}

impl ThreadExecutor {
    /// The default bound on items held in memory: 10 000.
    pub const DEFAULT_MAX_MEMORY_ITEMS: usize = 10_000;

    /// An executor with one thread per CPU and [`Self::DEFAULT_MAX_MEMORY_ITEMS`].
    pub fn new() -> ThreadExecutor {
        ThreadExecutor::builder().build()
    }

    /// A builder, to set `max_workers` and `max_memory_items`.
    pub fn builder() -> ThreadExecutorBuilder {
        ThreadExecutorBuilder::default()
    }

    /// How many threads a job runs the function on.
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// The most items read from the input and not yet handed to the consumer.
    pub fn max_memory_items(&self) -> usize {
        self.max_memory_items
    }

    fn start<In, F, I>(&self, func: F, data: I, ordered: bool) -> Results<F::Output>
    where
        In: Send + 'static,
        F: Task<In> + Send + Sync + 'static,
        F::Output: Send + 'static,
        I: Iterator<Item = In> + Send + 'static,
    {
        let workers = self.max_workers;
        let window = Arc::new(Window::new(self.max_memory_items));
        let shared = Arc::new(Shared {
            cancelled: AtomicBool::new(false),
            completed: AtomicU64::new(0),
        });
        let sched = Arc::new(Sched {
            state: Mutex::new(SchedState {
                published: VecDeque::new(),
                parked: 0,
                reading: false,
                ended: false,
            }),
            wake: Condvar::new(),
            slot: CachePadded::new(Mutex::new(Slot {
                in_hand: None,
                exposures: 0,
            })),
            input: Mutex::new(Input {
                iter: data,
                read: 0,
                target: 1,
                max_batch: tuning::max_batch(self.max_memory_items, workers, THREAD_MAX_BATCH),
                clock: FlushClock::new(IDLE_CUT),
            }),
        });
        // Unbounded: the window bounds what is in it.
        let (results_tx, results_rx) = crossbeam_channel::unbounded::<Msg<F::Output>>();
        let func = Arc::new(func);

        let mut spawn_failed = None;
        for n in 0..workers {
            let worker = Worker {
                func: Arc::clone(&func),
                sched: Arc::clone(&sched),
                workers,
                window: Arc::clone(&window),
                results: results_tx.clone(),
                shared: Arc::clone(&shared),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("pstream-thread-{n}"))
                .spawn(move || worker.run());
            if let Err(e) = spawned {
                spawn_failed = Some(e);
                break;
            }
        }
        drop(results_tx);
        let results = ThreadResults {
            rx: results_rx,
            window,
            shared,
            waker: sched,
            reorder: Reorder::new(ordered),
            current: None,
            yielded: 0,
            total: None,
            input_error: None,
            finished: false,
        };
        match spawn_failed {
            None => Results::threads(results),
            Some(e) => {
                // Dropping `results` stops the threads that did start.
                drop(results);
                Results::failed(None, format!("could not start the executor's threads: {e}"))
            }
        }
    }
}

impl<In, F> Executor<In, F> for ThreadExecutor
where
    In: Send + 'static,
    F: Task<In> + Send + Sync + 'static,
    F::Output: Send + 'static,
{
    fn execute<I>(&self, func: F, data: I) -> Results<F::Output>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        self.start(func, data.into_iter(), true)
    }

    fn execute_unordered<I>(&self, func: F, data: I) -> Results<F::Output>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        self.start(func, data.into_iter(), false)
    }

    fn max_workers(&self) -> usize {
        self.max_workers
    }

    fn max_memory_items(&self) -> usize {
        self.max_memory_items
    }
}

/// Configures a [`ThreadExecutor`].
#[derive(Debug, Clone)]
pub struct ThreadExecutorBuilder {
    max_workers: Option<usize>,
    max_memory_items: usize,
}

impl Default for ThreadExecutorBuilder {
    fn default() -> Self {
        ThreadExecutorBuilder {
            max_workers: None,
            max_memory_items: ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS,
        }
    }
}

impl ThreadExecutorBuilder {
    /// How many threads run the function (default: the number of CPUs; at least 1).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// The most items read from the input and not yet handed to the consumer
    /// (default [`ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS`]; at least 1).
    pub fn max_memory_items(mut self, n: usize) -> Self {
        self.max_memory_items = n;
        self
    }

    /// The executor. Threads start with each job, not here.
    pub fn build(self) -> ThreadExecutor {
        let max_workers = self
            .max_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ThreadExecutor {
            max_workers: max_workers.max(1),
            max_memory_items: self.max_memory_items.max(1),
        }
    }
}

/// What the threads of one job share.
#[derive(Debug)]
struct Shared {
    /// The consumer dropped its results: workers stop before their next item.
    cancelled: AtomicBool,
    /// Items computed by the workers. Equal to the items read before the ones the
    /// reader holds, it means no other worker has anything to do: the reader then
    /// publishes what it holds rather than keep it through a read that may be slow.
    completed: AtomicU64,
}

/// Who reads the input, and the batches cut for idle workers. One worker at a time
/// holds the reader's role; the others compute, or wait on `wake` for a published
/// batch or the role.
struct Sched<I: Iterator> {
    state: Mutex<SchedState<I::Item>>,
    wake: Condvar,
    /// Where the reader leaves its items during a read that may block. A lock of
    /// its own, on cache lines of its own: the reader takes it twice per such read,
    /// and does not contend for the cache line of `state`, which the other workers
    /// keep taking.
    slot: CachePadded<Mutex<Slot<I::Item>>>,
    /// Locked only by the worker in the reader's role: never contended.
    input: Mutex<Input<I>>,
}

struct SchedState<In> {
    /// Batches the reader cut for workers with nothing to do.
    published: VecDeque<Work<In>>,
    /// Workers waiting on `wake` (nobody to wake: no system call).
    parked: usize,
    /// A worker holds the reader's role.
    reading: bool,
    /// The input is over (ended, panicked, or the job was cancelled).
    ended: bool,
}

/// The items the reader holds while it is in a read that may block: a worker with
/// nothing to do takes them, or the reader takes them back after the read.
struct Slot<In> {
    in_hand: Option<Work<In>>,
    /// Counts the reader's reads with items exposed: the same count a
    /// `STEAL_AFTER` later means the reader is still in the same read.
    exposures: u64,
}

/// Consecutive items for a worker.
struct Work<In> {
    first_index: u64,
    items: Vec<In>,
}

/// The job's input, read by the worker in the reader's role.
struct Input<I> {
    iter: I,
    /// Items read so far: the index of the next one.
    read: u64,
    /// A reader's round starts at one item (a first result at once) and doubles up
    /// to `max_batch`.
    target: usize,
    max_batch: usize,
    /// How long the items in hand have been waiting, looked at every so many items.
    clock: FlushClock,
}

/// How long a waiting worker lets the reader sit in one read with items in hand
/// before it takes them (at least this, at most twice).
const STEAL_AFTER: Duration = Duration::from_millis(1);

/// Wakes the workers waiting for work (the consumer went away).
trait WakeAll: Send + Sync {
    fn wake_all(&self);
}

impl<I: Iterator + Send> WakeAll for Sched<I>
where
    I::Item: Send,
{
    fn wake_all(&self) {
        // Under the lock: a worker checks for cancellation under it before waiting.
        let _state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// What the consumer hears.
enum Msg<Out> {
    /// Outcomes of consecutive items.
    Results {
        first_index: u64,
        outcomes: Vec<Result<Out, ItemErrorKind>>,
    },
    /// The input ended after `total` items.
    InputDone { total: u64 },
    /// The input iterator panicked after `total` items.
    InputPanicked { total: u64, message: String },
}

/// What a worker does next.
enum Next<In> {
    Compute(Work<In>),
    Read,
}

/// What a reader's round leaves it: its own batch, and the message saying how the
/// input ended, if it did.
struct Round<In, Out> {
    own: Work<In>,
    end: Option<Msg<Out>>,
}

/// One thread computing batches, and reading the input when nobody else does.
struct Worker<I: Iterator, F: Task<I::Item>> {
    func: Arc<F>,
    sched: Arc<Sched<I>>,
    /// How many workers the job has (one alone never publishes).
    workers: usize,
    window: Arc<Window>,
    results: Sender<Msg<F::Output>>,
    shared: Arc<Shared>,
}

impl<I: Iterator, F: Task<I::Item>> Worker<I, F> {
    fn run(self) {
        // Panics of the function become item errors, not messages on stderr.
        unwind::capture_on_this_thread();
        while let Some(next) = self.next() {
            let more = match next {
                Next::Compute(work) => self.compute(work),
                Next::Read => {
                    let round = self.read();
                    let ended = round.end.is_some() || self.window.is_closed();
                    {
                        let mut state = self.lock();
                        state.reading = false;
                        state.ended |= ended;
                        if ended {
                            self.sched.wake.notify_all();
                        } else if state.parked > 0 {
                            self.sched.wake.notify_one();
                        }
                    }
                    let more = self.compute(round.own);
                    if let Some(end) = round.end {
                        let _ = self.results.send(end);
                    }
                    more
                }
            };
            if !more {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SchedState<I::Item>> {
        self.sched.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A published batch, else the reader's role; `None` when the job is over.
    fn next(&self) -> Option<Next<I::Item>> {
        let mut state = self.lock();
        let mut seen = None;
        loop {
            if self.shared.cancelled.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(work) = state.published.pop_front() {
                return Some(Next::Compute(work));
            }
            if state.ended {
                return None;
            }
            if !state.reading {
                state.reading = true;
                return Some(Next::Read);
            }
            // The reader is at work: wait for a published batch or the role, and look
            // again after a while in case the reader is stuck in a read with items in
            // hand (it does not wake anyone for that: it happens before every read
            // that may block).
            {
                let mut slot = self.slot();
                if slot.in_hand.is_some() && seen == Some(slot.exposures) {
                    // The reader has been in the same read for a while: take its items.
                    let work = slot.in_hand.take().expect("checked");
                    return Some(Next::Compute(work));
                }
                seen = slot.in_hand.is_some().then_some(slot.exposures);
            }
            state.parked += 1;
            state = self
                .sched
                .wake
                .wait_timeout(state, STEAL_AFTER)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.parked -= 1;
        }
    }

    /// Compute a batch and send its outcomes; false if the job is over.
    fn compute(&self, work: Work<I::Item>) -> bool {
        let n = work.items.len();
        if n == 0 {
            return true;
        }
        let mut outcomes = Vec::with_capacity(n);
        for item in work.items {
            if self.shared.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            outcomes.push(self.call(item));
        }
        self.shared.completed.fetch_add(n as u64, Ordering::Release);
        let msg = Msg::Results {
            first_index: work.first_index,
            outcomes,
        };
        self.results.send(msg).is_ok()
    }

    /// Give the items in hand to the workers waiting for work.
    fn publish(&self, first_index: u64, items: Vec<I::Item>) {
        let mut state = self.lock();
        state.published.push_back(Work { first_index, items });
        if state.parked > 0 {
            self.sched.wake.notify_one();
        }
    }

    /// Leave the items in hand where a worker with nothing to do finds them if this
    /// read that may block takes longer than `STEAL_AFTER`.
    fn expose(&self, first_index: u64, items: Vec<I::Item>) {
        let mut slot = self.slot();
        slot.in_hand = Some(Work { first_index, items });
        slot.exposures += 1;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<I::Item>> {
        self.sched.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A round in the reader's role: take permits, read up to the round's target,
    /// and keep the last batch read to compute.
    ///
    /// Before each read, if every item read before the ones in hand is computed
    /// (nobody else has anything to do), the items in hand are published for the
    /// other workers and the reader reads on: they do not wait for a read that may
    /// block (a slow input's items are computed as they come; an input whose next
    /// item waits for an earlier result runs at all), and idle workers get work
    /// without the role changing hands (handing the role over would cost a wake-up
    /// each round).
    /// A worker alone instead stops reading there and computes what it holds, if
    /// the next read may block (the input does not promise more items at once:
    /// `size_hint`, user code too) or the items have waited `IDLE_CUT`.
    fn read(&self) -> Round<I::Item, F::Output> {
        let mut input = self.sched.input.lock().unwrap_or_else(|e| e.into_inner());
        let none = |first_index| Round {
            own: Work {
                first_index,
                items: Vec::new(),
            },
            end: None,
        };
        let read = input.read;
        let Some(mut permits) = self.window.acquire(input.target, false) else {
            return none(read);
        };
        if permits == 0 {
            // Nothing in hand; the others compute published batches meanwhile.
            let Some(one) = self.window.acquire(1, true) else {
                return none(read);
            };
            let more = input.target.saturating_sub(one);
            permits = one + self.window.acquire(more, false).unwrap_or(0);
        }
        let mut first_index = input.read;
        let mut items = Vec::with_capacity(permits);
        let mut taken = 0;
        let mut end = None;
        input.clock.restart();
        while taken < permits && !self.window.is_closed() {
            let input = &mut *input;
            let mut exposed = false;
            if !items.is_empty() {
                let idle = self.shared.completed.load(Ordering::Acquire) >= first_index;
                if idle && self.workers > 1 {
                    let n = items.len();
                    self.publish(first_index, std::mem::take(&mut items));
                    first_index += n as u64;
                } else if idle || self.workers > 1 {
                    match unwind::catch(|| input.iter.size_hint().0 == 0) {
                        // Alone: compute what we hold rather than have it wait.
                        Ok(may_block) if idle && (may_block || input.clock.due()) => break,
                        // Others are busy, and will look here when they are done.
                        Ok(true) if !idle => {
                            self.expose(first_index, std::mem::take(&mut items));
                            exposed = true;
                        }
                        Ok(_) => {}
                        Err(panic) => {
                            end = Some(input_panicked(input, panic));
                            break;
                        }
                    }
                }
            }
            let next = unwind::catch(|| input.iter.next());
            if exposed {
                match self.slot().in_hand.take() {
                    Some(work) => items = work.items,
                    // Taken by a worker that had nothing to do.
                    None => first_index = input.read,
                }
            }
            match next {
                Ok(Some(item)) => {
                    items.push(item);
                    input.read += 1;
                    taken += 1;
                }
                Ok(None) => {
                    end = Some(Msg::InputDone { total: input.read });
                    break;
                }
                Err(panic) => {
                    // Items read before the panic are still computed and handed out.
                    end = Some(input_panicked(input, panic));
                    break;
                }
            }
        }
        if taken > 0 {
            input.target = (input.target * 2).min(input.max_batch);
        }
        drop(input);
        self.window.release(permits - taken);
        Round {
            own: Work { first_index, items },
            end,
        }
    }

    fn call(&self, item: I::Item) -> Result<F::Output, ItemErrorKind> {
        match unwind::catch(|| self.func.run(item)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(ItemErrorKind::Failed { message }),
            Err(Panic { message, location }) => Err(ItemErrorKind::Panicked { message, location }),
        }
    }
}

/// The input panicked (in `next` or `size_hint`): it is over, and the consumer hears
/// why after the items read before it.
fn input_panicked<I, Out>(input: &Input<I>, panic: Panic) -> Msg<Out> {
    Msg::InputPanicked {
        total: input.read,
        message: format!("the input iterator panicked: {}", panic.message),
    }
}

/// The consumer's side of a thread job.
pub(crate) struct ThreadResults<Out> {
    rx: Receiver<Msg<Out>>,
    window: Arc<Window>,
    shared: Arc<Shared>,
    /// Wakes the workers waiting for work when the consumer goes away.
    waker: Arc<dyn WakeAll>,
    /// Puts the batches back in input order (ordered jobs).
    reorder: Reorder<Vec<Result<Out, ItemErrorKind>>>,
    /// The batch being handed out: its first index, its size, and what is left.
    current: Option<Current<Out>>,
    yielded: u64,
    /// How many items the input had, once it ended.
    total: Option<u64>,
    input_error: Option<String>,
    finished: bool,
}

struct Current<Out> {
    first_index: u64,
    len: usize,
    pos: u64,
    outcomes: std::vec::IntoIter<Result<Out, ItemErrorKind>>,
}

impl<Out> ThreadResults<Out> {
    pub(crate) fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(outcome) = cur.outcomes.next() {
                    let index = cur.first_index + cur.pos;
                    cur.pos += 1;
                    self.yielded += 1;
                    return Some((index, outcome.map_err(|kind| ItemError { index, kind })));
                }
                // The batch is all handed out: its permits go back.
                self.window.release(cur.len);
                self.current = None;
            }
            if self.finished {
                return None;
            }
            if let Some((first_index, outcomes)) = self.reorder.ready() {
                self.start_batch(first_index, outcomes);
                continue;
            }
            if self.total == Some(self.yielded) {
                self.finished = true;
                self.window.close();
                return self.input_error.take().map(|reason| {
                    let index = self.yielded;
                    (
                        index,
                        Err(ItemError {
                            index,
                            kind: ItemErrorKind::Aborted { reason },
                        }),
                    )
                });
            }
            match self.rx.recv() {
                Ok(Msg::Results {
                    first_index,
                    outcomes,
                }) => {
                    let len = outcomes.len();
                    if let Some((first_index, outcomes)) =
                        self.reorder.arrive(first_index, len, outcomes)
                    {
                        self.start_batch(first_index, outcomes);
                    }
                }
                Ok(Msg::InputDone { total }) => self.total = Some(total),
                Ok(Msg::InputPanicked { total, message }) => {
                    self.total = Some(total);
                    self.input_error = Some(message);
                }
                Err(_) => {
                    // Every thread is gone before the input ended: cannot happen
                    // unless a thread died outside the function (out of memory).
                    self.finished = true;
                    self.window.close();
                    let index = self.reorder.next_index(self.yielded);
                    return Some((
                        index,
                        Err(ItemError {
                            index,
                            kind: ItemErrorKind::Aborted {
                                reason: "the executor's threads stopped early".into(),
                            },
                        }),
                    ));
                }
            }
        }
    }

    fn start_batch(&mut self, first_index: u64, outcomes: Vec<Result<Out, ItemErrorKind>>) {
        let len = outcomes.len();
        self.current = Some(Current {
            first_index,
            len,
            pos: 0,
            outcomes: outcomes.into_iter(),
        });
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.window.in_use()
    }
}

impl<Out> Drop for ThreadResults<Out> {
    fn drop(&mut self) {
        // The reader stops at its next item or permit, the others before their next
        // item or when woken; published batches are dropped with the job.
        self.shared.cancelled.store(true, Ordering::Relaxed);
        self.window.close();
        self.waker.wake_all();
    }
}
