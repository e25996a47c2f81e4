//! [`ThreadExecutor`]: a bounded pool of threads in this process, fed in batches
//! within the memory bound, with results reassembled in input order.
//!
//! One job is three kinds of thread joined by crossbeam channels:
//!
//! ```text
//!  input ──▶ pstream-feeder ──work──▶ pstream-thread-N (× max_workers) ──results──▶ consumer
//!               ▲ takes permits                                                        │
//!               └──────────────────── Window (max_memory_items) ◀── gives them back ───┘
//! ```
//!
//! The threads belong to the job: they start with `execute` and end when the input is
//! done or the consumer drops its results.

use pstream_protocol::panic_message as payload_message;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};

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
        // Both channels are unbounded: the window bounds what is in them.
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Work<In>>();
        let (results_tx, results_rx) = crossbeam_channel::unbounded::<Msg<F::Output>>();
        let func = Arc::new(func);
        let max_batch = (self.max_memory_items / (2 * workers)).clamp(1, MAX_BATCH);

        let mut spawn_failed = None;
        for n in 0..workers {
            let worker = Worker {
                func: Arc::clone(&func),
                work: work_rx.clone(),
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
        drop(work_rx);
        let feeder = Feeder {
            window: Arc::clone(&window),
            shared: Arc::clone(&shared),
            work: work_tx,
            results: results_tx,
            max_batch,
        };
        let spawned = match spawn_failed {
            Some(e) => Err(e),
            None => std::thread::Builder::new()
                .name("pstream-feeder".into())
                .spawn(move || feeder.run(data)),
        };
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
        match spawned {
            Ok(_) => Results::threads(results),
            Err(e) => {
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
    /// Items computed by the workers. Equal to what the feeder has sent, it means
    /// every worker is idle: the feeder sends what it holds instead of filling a batch.
    completed: AtomicU64,
}

/// Consecutive items for a worker.
struct Work<In> {
    first_index: u64,
    items: Vec<In>,
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

/// Reads the input on its own thread, within the window, into batches.
struct Feeder<In, Out> {
    window: Arc<Window>,
    shared: Arc<Shared>,
    work: Sender<Work<In>>,
    results: Sender<Msg<Out>>,
    max_batch: usize,
}

impl<In, Out> Feeder<In, Out> {
    fn run(self, input: impl Iterator<Item = In>) {
        let mut batch = Batcher {
            work: &self.work,
            shared: &self.shared,
            items: Vec::new(),
            first_index: 0,
            target: 1,
            max_batch: self.max_batch,
            sent: 0,
        };
        let mut read = 0u64;
        let run = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut input = input;
            let mut permits = 0usize;
            loop {
                if permits == 0 {
                    let want = batch.target.saturating_sub(batch.items.len()).max(1);
                    permits = match self.window.acquire(want, false) {
                        None => return false,
                        Some(0) => {
                            // Out of permits: send what we hold before waiting, or the
                            // consumer would wait for items we sit on.
                            if !batch.flush() {
                                return false;
                            }
                            match self.window.acquire(batch.target, true) {
                                None => return false,
                                Some(n) => n,
                            }
                        }
                        Some(n) => n,
                    };
                }
                let Some(item) = input.next() else { break };
                permits -= 1;
                read += 1;
                batch.items.push(item);
                // Send a full batch, or whatever we hold when every worker is idle:
                // reading the next item might take a while.
                if (batch.items.len() >= batch.target || batch.idle()) && !batch.flush() {
                    return false;
                }
            }
            self.window.release(permits);
            batch.flush()
        }));
        let end = match run {
            Ok(true) => Msg::InputDone { total: read },
            Ok(false) => return, // cancelled
            Err(payload) => {
                // Items read before the panic are still computed and handed out.
                let _ = batch.flush();
                Msg::InputPanicked {
                    total: read,
                    message: format!(
                        "the input iterator panicked: {}",
                        payload_message(&*payload)
                    ),
                }
            }
        };
        let _ = self.results.send(end);
    }
}

/// The batch being filled, and how big the next one may be.
struct Batcher<'a, In> {
    work: &'a Sender<Work<In>>,
    shared: &'a Shared,
    items: Vec<In>,
    first_index: u64,
    /// Batches start at one item (a first result at once) and double up to `max_batch`.
    target: usize,
    max_batch: usize,
    /// Items sent to the workers so far.
    sent: u64,
}

impl<In> Batcher<'_, In> {
    /// Whether every item sent has been computed: no worker has anything to do.
    fn idle(&self) -> bool {
        self.shared.completed.load(Ordering::Acquire) >= self.sent
    }

    /// Send the batch; false if the job is over (every worker gone).
    fn flush(&mut self) -> bool {
        if self.items.is_empty() {
            return true;
        }
        self.target = (self.target * 2).min(self.max_batch);
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(self.target));
        let n = items.len() as u64;
        let work = Work {
            first_index: self.first_index,
            items,
        };
        self.first_index += n;
        self.sent += n;
        self.work.send(work).is_ok() && !self.shared.cancelled.load(Ordering::Relaxed)
    }
}

/// One thread computing batches.
struct Worker<In, F: Task<In>> {
    func: Arc<F>,
    work: Receiver<Work<In>>,
    results: Sender<Msg<F::Output>>,
    shared: Arc<Shared>,
}

impl<In, F: Task<In>> Worker<In, F> {
    fn run(self) {
        IN_WORKER.with(|w| *w.borrow_mut() = true);
        while let Ok(work) = self.work.recv() {
            let mut outcomes = Vec::with_capacity(work.items.len());
            for item in work.items {
                if self.shared.cancelled.load(Ordering::Relaxed) {
                    return;
                }
                outcomes.push(self.call(item));
            }
            self.shared
                .completed
                .fetch_add(outcomes.len() as u64, Ordering::Release);
            let msg = Msg::Results {
                first_index: work.first_index,
                outcomes,
            };
            if self.results.send(msg).is_err() {
                return;
            }
        }
    }

    fn call(&self, item: In) -> Result<F::Output, ItemErrorKind> {
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
