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

//!
//! The parts: this file (the executor, its builder, and `start`, which sets a job
//! up), `worker.rs` (the threads: the reader's role and the computing) and
//! `results.rs` (the consumer's side).

mod results;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_utils::CachePadded;
use pstream_coordinator::tuning::{self, IDLE_CUT, THREAD_MAX_BATCH};
use pstream_coordinator::{Reorder, Window};
use pstream_protocol::FlushClock;

pub(crate) use results::ThreadResults;
use worker::{Input, Msg, Sched, SchedState, Shared, Slot, Worker};

use super::{Executor, Results, Task};

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
                max_batch: tuning::max_batch(self.max_memory_items, workers, THREAD_MAX_BATCH, 1),
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
