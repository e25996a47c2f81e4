//! [`ProcessExecutor`]: the [`Executor`] face of a [`ProcessPool`].

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Executor, Results};
use crate::{Function, PoolBuilder, PoolError, ProcessPool};

/// Runs registered functions in a pool of worker processes.
///
/// A thin face over [`ProcessPool`]: `execute` is [`ProcessPool::map`],
/// `execute_unordered` is [`ProcessPool::map_unordered`], `max_memory_items` is the
/// pool's window. It takes [`Function`] handles made by [`function!`](crate::function),
/// whose names travel to the workers; the workers are this binary re-executed (call
/// [`init`](crate::init) first in `main`) or a plugin ([`ProcessExecutorBuilder::pool`]).
///
/// A failure of the pool as a whole (no worker serves the function, the pool gave up
/// restarting workers) ends the result stream with one
/// [`ItemErrorKind::Aborted`](crate::ItemErrorKind::Aborted) item;
/// [`Results::pool_error`] has the error.
///
/// The results of a job keep the pool alive: an executor dropped while they are
/// read (a temporary, say) stops its workers when the last of them is dropped.
///
/// ```
/// use pstream::{Executor, ProcessExecutor};
///
/// pstream::function! {
///     /// Twice the input.
///     fn twice(x: i64) -> i64 { x * 2 }
/// }
///
/// fn main() -> Result<(), pstream::PoolError> {
///     pstream::init(); // in a worker, serves and never returns
///     let ex = ProcessExecutor::builder().max_workers(2).max_memory_items(1000).build()?;
///     let sum: i64 = ex.execute(twice, 0..100_000i64).map(|r| r.unwrap()).sum();
///     assert_eq!(sum, 99_999 * 100_000);
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct ProcessExecutor {
    /// Shared with the results of its jobs: dropping a pool ends its jobs.
    pool: Arc<ProcessPool>,
}

impl ProcessExecutor {
    /// The default bound on items held in memory: 5 000, what callers of the
    /// executor API expect (the pool's own default window, [`crate::DEFAULT_WINDOW`],
    /// is the same).
    pub const DEFAULT_MAX_MEMORY_ITEMS: usize = 5_000;

    /// An executor re-executing this binary as one worker per CPU, with
    /// [`Self::DEFAULT_MAX_MEMORY_ITEMS`]. Starts the workers.
    pub fn new() -> Result<ProcessExecutor, PoolError> {
        ProcessExecutor::builder().build()
    }

    /// A builder, to set `max_workers`, `max_memory_items` and the pool's other
    /// settings.
    pub fn builder() -> ProcessExecutorBuilder {
        ProcessExecutorBuilder::default()
    }

    /// An executor over a pool already started; `max_memory_items` is its window.
    pub fn from_pool(pool: ProcessPool) -> ProcessExecutor {
        ProcessExecutor {
            pool: Arc::new(pool),
        }
    }

    /// The pool underneath, for its statistics and worker pids.
    pub fn pool(&self) -> &ProcessPool {
        &self.pool
    }

    /// The pool, to use directly; the executor back while results of its jobs are
    /// still alive (they hold the pool).
    pub fn into_pool(self) -> Result<ProcessPool, ProcessExecutor> {
        Arc::try_unwrap(self.pool).map_err(|pool| ProcessExecutor { pool })
    }

    /// How many worker processes run the function.
    pub fn max_workers(&self) -> usize {
        self.pool.workers()
    }

    /// The most items read from the input and not yet handed to the consumer.
    pub fn max_memory_items(&self) -> usize {
        self.pool.window()
    }
}

impl<In, Out> Executor<In, Function<In, Out>> for ProcessExecutor
where
    In: Serialize + 'static,
    Out: DeserializeOwned + Send + 'static,
{
    fn execute<I>(&self, func: Function<In, Out>, data: I) -> Results<Out>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        match self.pool.map(func, data) {
            Ok(results) => Results::processes(results, Arc::clone(&self.pool)),
            Err(e) => Results::failed(Some(e), String::new()),
        }
    }

    fn execute_unordered<I>(&self, func: Function<In, Out>, data: I) -> Results<Out>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        match self.pool.map_unordered(func, data) {
            Ok(results) => Results::processes(results, Arc::clone(&self.pool)),
            Err(e) => Results::failed(Some(e), String::new()),
        }
    }

    fn max_workers(&self) -> usize {
        self.pool.workers()
    }

    fn max_memory_items(&self) -> usize {
        self.pool.window()
    }
}

/// Configures and starts a [`ProcessExecutor`].
#[derive(Debug, Clone, Default)]
pub struct ProcessExecutorBuilder {
    pool: PoolBuilder,
    max_workers: Option<usize>,
    max_memory_items: Option<usize>,
}

impl ProcessExecutorBuilder {
    /// How many worker processes (default: the number of CPUs).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// The most items read from the input and not yet handed to the consumer
    /// (default [`ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS`]): the pool's window.
    pub fn max_memory_items(mut self, n: usize) -> Self {
        self.max_memory_items = Some(n);
        self
    }

    /// The pool's other settings: the worker program (a plugin instead of this
    /// binary), time limits, retries. `max_workers` and `max_memory_items`, when
    /// set, win over the builder's `workers` and `window`.
    pub fn pool(mut self, builder: PoolBuilder) -> Self {
        self.pool = builder;
        self
    }

    /// Start the workers and wait until each has completed the handshake.
    pub fn build(self) -> Result<ProcessExecutor, PoolError> {
        let mut pool = self.pool;
        if let Some(n) = self.max_workers {
            pool = pool.workers(n);
        }
        pool = match self.max_memory_items {
            Some(n) => pool.window(n),
            None => pool.window_or(ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS),
        };
        Ok(ProcessExecutor::from_pool(pool.build()?))
    }
}
