//! [`ThreadExecutor`]: a bounded pool of threads in this process, each pulling
//! batches from the input within the memory bound, with results reassembled in input
//! order.
//!
//! ```text
//!  input (behind a mutex) ◀──pull── pstream-thread-N (× max_workers) ──results──▶ consumer
//!                                      ▲ takes permits                               │
//!                                      └──────── Window (max_memory_items) ◀─────────┘
//! ```
//!
//! There is no feeder thread: each worker takes the input's lock, reads a batch and
//! computes it. An item is then made and dropped on the same thread. With a feeder,
//! every item was allocated on one thread and freed on another, and the allocator's
//! arena lock became the bottleneck (SHA-256 of 1 KiB blobs: 1.3 M/s on 2 threads,
//! slower than a sequential loop).
//!
//! The threads belong to the job: they start with `execute` and end when the input is
//! done or the consumer drops its results.

use pstream_protocol::panic_message as payload_message;
use pstream_protocol::FlushClock;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Executor, Results, Task};
use crate::{ItemError, ItemErrorKind};
use pstream_coordinator::Window;

/// The largest batch a worker thread takes at once. Large enough that a channel
/// operation per batch costs nothing next to the items, small enough that the
/// threads share the work of a short input.
const MAX_BATCH: usize = 1024;

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
        install_panic_hook();
        let workers = self.max_workers;
        let window = Arc::new(Window::new(self.max_memory_items));
        let shared = Arc::new(Shared {
            cancelled: AtomicBool::new(false),
            completed: AtomicU64::new(0),
        });
        let input = Arc::new(Mutex::new(Input {
            iter: data,
            read: 0,
            target: 1,
            max_batch: (self.max_memory_items / (2 * workers)).clamp(1, MAX_BATCH),
            ended: false,
            clock: FlushClock::new(IDLE_CUT),
        }));
        // Unbounded: the window bounds what is in it.
        let (results_tx, results_rx) = crossbeam_channel::unbounded::<Msg<F::Output>>();
        let func = Arc::new(func);

        let mut spawn_failed = None;
        for n in 0..workers {
            let worker = Worker {
                func: Arc::clone(&func),
                input: Arc::clone(&input),
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
            ordered,
            rx: results_rx,
            window,
            shared,
            reorder: BTreeMap::new(),
            current: None,
            next_index: 0,
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
    /// Items computed by the workers. Equal to the items read before a batch, it
    /// means no other worker has anything to do: the batch goes to work with what
    /// it holds rather than wait for a slow input to fill it.
    completed: AtomicU64,
}

/// The job's input, read by whichever worker holds the lock.
struct Input<I> {
    iter: I,
    /// Items read so far: the index of the next one.
    read: u64,
    /// Batches start at one item (a first result at once) and double up to
    /// `max_batch`.
    target: usize,
    max_batch: usize,
    /// The input ended (or panicked, or the job was cancelled): nothing more is read.
    ended: bool,
    /// How long the batch being read has been open, looked at every so many items.
    clock: FlushClock,
}

/// A batch being read goes to work unfilled once it is this old and no other worker
/// has anything to do. Cutting as soon as the others were idle made batches of one
/// item when items are tiny (the others are idle again within a microsecond):
/// `double` ran at 23 M/s instead of 60.
const IDLE_CUT: Duration = Duration::from_micros(100);

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

/// A batch read from the input, and how the input was left.
struct Pulled<In> {
    first_index: u64,
    items: Vec<In>,
    /// Set by the reader that saw the input end: the message for the consumer.
    end: Option<Msg<()>>,
}

/// One thread reading and computing batches.
struct Worker<I: Iterator, F: Task<I::Item>> {
    func: Arc<F>,
    input: Arc<Mutex<Input<I>>>,
    window: Arc<Window>,
    results: Sender<Msg<F::Output>>,
    shared: Arc<Shared>,
}

impl<I: Iterator, F: Task<I::Item>> Worker<I, F> {
    fn run(self) {
        IN_WORKER.with(|w| *w.borrow_mut() = true);
        loop {
            let Some(pulled) = self.pull() else { return };
            let n = pulled.items.len();
            if n > 0 {
                let mut outcomes = Vec::with_capacity(n);
                for item in pulled.items {
                    if self.shared.cancelled.load(Ordering::Relaxed) {
                        return;
                    }
                    outcomes.push(self.call(item));
                }
                self.shared.completed.fetch_add(n as u64, Ordering::Release);
                let msg = Msg::Results {
                    first_index: pulled.first_index,
                    outcomes,
                };
                if self.results.send(msg).is_err() {
                    return;
                }
            }
            match pulled.end {
                Some(Msg::InputDone { total }) => {
                    let _ = self.results.send(Msg::InputDone { total });
                    return;
                }
                Some(Msg::InputPanicked { total, message }) => {
                    let _ = self.results.send(Msg::InputPanicked { total, message });
                    return;
                }
                _ => {}
            }
        }
    }

    /// Take permits and read a batch; `None` when there is nothing more to do (the
    /// input ended in another worker's hands, or the job was cancelled).
    fn pull(&self) -> Option<Pulled<I::Item>> {
        let over = |input: &mut Input<I>| {
            let over = input.ended || self.shared.cancelled.load(Ordering::Relaxed);
            input.ended |= over;
            over
        };
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        if over(&mut input) {
            return None;
        }
        let mut permits = self.window.acquire(input.target, false)?;
        if permits == 0 {
            // Wait for a permit with nothing in hand, not even the lock.
            drop(input);
            permits = self.window.acquire(1, true)?;
            input = self.input.lock().unwrap_or_else(|e| e.into_inner());
            if over(&mut input) {
                drop(input);
                self.window.release(permits);
                return None;
            }
            let more = input.target.saturating_sub(permits);
            permits += self.window.acquire(more, false).unwrap_or(0);
        }
        let first_index = input.read;
        let mut items = Vec::with_capacity(permits);
        let mut end = None;
        input.clock.restart();
        while items.len() < permits && !self.window.is_closed() {
            let input = &mut *input;
            // Every item read before this batch is computed: nobody else has work.
            // Then the batch goes now, before a read that may block (the input does
            // not promise more items at once: `size_hint`, user code too) or once it
            // is getting old, and the next items are for the next reader.
            if !items.is_empty() && self.shared.completed.load(Ordering::Acquire) >= first_index {
                match panic::catch_unwind(AssertUnwindSafe(|| input.iter.size_hint().0 == 0)) {
                    Ok(true) => break,
                    Ok(false) if input.clock.due() => break,
                    Ok(false) => {}
                    Err(payload) => {
                        end = Some(input_panicked(input, &*payload));
                        break;
                    }
                }
            }
            match panic::catch_unwind(AssertUnwindSafe(|| input.iter.next())) {
                Ok(Some(item)) => {
                    items.push(item);
                    input.read += 1;
                }
                Ok(None) => {
                    input.ended = true;
                    end = Some(Msg::InputDone { total: input.read });
                    break;
                }
                Err(payload) => {
                    // Items read before the panic are still computed and handed out.
                    end = Some(input_panicked(input, &*payload));
                    break;
                }
            }
        }
        if !items.is_empty() {
            input.target = (input.target * 2).min(input.max_batch);
        }
        drop(input);
        self.window.release(permits - items.len());
        Some(Pulled {
            first_index,
            items,
            end,
        })
    }

    fn call(&self, item: I::Item) -> Result<F::Output, ItemErrorKind> {
        match panic::catch_unwind(AssertUnwindSafe(|| self.func.run(item))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(ItemErrorKind::Failed { message }),
            Err(payload) => {
                let (message, location) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| (payload_message(&*payload), None));
                Err(ItemErrorKind::Panicked { message, location })
            }
        }
    }
}

/// The input panicked (in `next` or `size_hint`): it is over, and the consumer hears
/// why after the items read before it.
fn input_panicked<I>(input: &mut Input<I>, payload: &(dyn std::any::Any + Send)) -> Msg<()> {
    // The panic hook took it for a function's: forget it.
    LAST_PANIC.with(|p| p.borrow_mut().take());
    input.ended = true;
    Msg::InputPanicked {
        total: input.read,
        message: format!("the input iterator panicked: {}", payload_message(payload)),
    }
}

thread_local! {
    /// Set on the executor's worker threads: their panics become item errors.
    static IN_WORKER: RefCell<bool> = const { RefCell::new(false) };
    /// The message and location of the last panic on this worker thread.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// Record the message and location of panics on worker threads (they are reported as
/// item errors, not printed); leave every other thread's panics to the hook that was
/// there before.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_WORKER.with(|w| *w.borrow()) {
                let message = payload_message(info.payload());
                let location = info.location().map(|l| l.to_string());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
            } else {
                previous(info);
            }
        }));
    });
}

/// The consumer's side of a thread job.
pub(crate) struct ThreadResults<Out> {
    ordered: bool,
    rx: Receiver<Msg<Out>>,
    window: Arc<Window>,
    shared: Arc<Shared>,
    /// Batches that came before their turn (ordered jobs only).
    reorder: BTreeMap<u64, Vec<Result<Out, ItemErrorKind>>>,
    /// The batch being handed out: its first index, its size, and what is left.
    current: Option<Current<Out>>,
    /// The index the next batch handed out starts at (ordered jobs).
    next_index: u64,
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
            if self.ordered {
                if let Some(entry) = self.reorder.first_entry() {
                    if *entry.key() == self.next_index {
                        let outcomes = entry.remove();
                        self.start_batch(self.next_index, outcomes);
                        continue;
                    }
                }
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
                    if self.ordered {
                        self.reorder.insert(first_index, outcomes);
                    } else {
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
                    let index = if self.ordered {
                        self.next_index
                    } else {
                        self.yielded
                    };
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
        if self.ordered {
            self.next_index = first_index + len as u64;
        }
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
        // The feeder stops at its next permit, the workers before their next item;
        // queued batches are dropped with the channel.
        self.shared.cancelled.store(true, Ordering::Relaxed);
        self.window.close();
    }
}
