//! The [`Executor`] trait and its two executors: [`ThreadExecutor`] (threads in this
//! process) and [`ProcessExecutor`] (a pool of worker processes).
//!
//! * `mod.rs` (this file): the trait, what it runs ([`Task`]) and what it returns
//!   ([`Results`]).
//! * `threads/`: the thread executor — worker threads that read the input in
//!   turns, reassembly.
//! * `processes.rs`: the process executor, a face over [`ProcessPool`](crate::ProcessPool).
//! * the memory bound is the coordinator's [`pstream_coordinator::Window`], shared with the pool.

mod processes;
mod threads;

pub use processes::{ProcessExecutor, ProcessExecutorBuilder};
pub use threads::{ThreadExecutor, ThreadExecutorBuilder};

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Function, ItemError, ItemErrorKind, MapResults, PoolError, ProcessPool};

/// Something an executor can call on each item: a closure, or a registered
/// [`Function`] handle.
///
/// A closure's return value is the item's result as it is (a closure returning
/// `Result<T, E>` yields `Ok(Ok(t))`/`Ok(Err(e))`). A [`Function`] written to return
/// `Result<T, E>` has output `T`, and its `Err` becomes an item error
/// ([`ItemErrorKind::Failed`]) — the same on threads as on processes.
pub trait Task<In> {
    /// What one call gives.
    type Output;

    /// Call on one item: the value, or the function's error as displayed.
    fn run(&self, input: In) -> Result<Self::Output, String>;
}

impl<In, Out> Task<In> for Function<In, Out> {
    type Output = Out;

    fn run(&self, input: In) -> Result<Out, String> {
        self.call(input)
    }
}

impl<F, In, Out> Task<In> for F
where
    F: Fn(In) -> Out,
{
    type Output = Out;

    fn run(&self, input: In) -> Result<Out, String> {
        Ok(self(input))
    }
}

/// Maps a function over a stream of items in parallel, with results as a stream.
///
/// Two implementations, interchangeable at the call site:
///
/// | | [`ThreadExecutor`] | [`ProcessExecutor`] |
/// |---|---|---|
/// | runs on | threads in this process | worker processes |
/// | `func` | a closure or a [`Function`] handle | a [`Function`] handle |
/// | `max_memory_items` default | 10 000 | 5 000 |
/// | a panic | an item error | an item error |
/// | a crash (segfault, abort) | ends the program | an item error; the pool goes on |
///
/// # The contract
///
/// * `execute(func, data)` returns at once; `data` is read as the results are taken,
///   never more than `max_memory_items` items ahead of the consumer, so an input of
///   any length — a generator, an infinite iterator — runs in bounded memory. A
///   [`ThreadExecutor`] reads it on its worker threads; a [`ProcessExecutor`] on the
///   thread that takes the results, between results ([`ProcessPool::map`]), so an
///   input that blocks holds up results that are ready: give such an input to
///   [`ProcessPool::input_thread`] (through [`ProcessExecutor::pool`]) instead.
/// * The results are `Result<Out, ItemError>`, exactly one per input item, in input
///   order: `execute(f, data)` collects to what `data.map(f)` would give.
///   `execute_unordered` yields them as they are ready instead (each [`ItemError`]
///   still names its item's index, and [`Results::indexed`] gives every index).
/// * A failing item (an error returned, a panic) is an [`ItemError`] in the stream;
///   the stream goes on.
/// * Dropping the results (a `break` out of the loop) cancels the job: no more input
///   is read, queued work is dropped, the workers stop after their current item
///   (threads) or batch (processes). The executor can run the next job.
/// * Work is cut into batches that grow from one item (the first result comes at
///   once) and are queued ahead of the workers within the memory bound, so no worker
///   waits for the next batch while there is input to read.
///
/// # Switching executors
///
/// A function defined with [`function!`](crate::function) runs on both, so the switch
/// is the line that makes the executor:
///
/// ```
/// use pstream::{Executor, ThreadExecutor};
///
/// pstream::function! {
///     /// Twice the input; an error if that overflows.
///     fn double(x: i64) -> Result<i64, String> {
///         x.checked_mul(2).ok_or_else(|| format!("{x} * 2 overflows"))
///     }
/// }
///
/// let ex = ThreadExecutor::new();
/// // let ex = pstream::ProcessExecutor::new()?;    // the one-line switch
/// let mut sum = 0;
/// for result in ex.execute(double, 0..100_000i64) {
///     sum += result.expect("no overflow");
/// }
/// assert_eq!(sum, 99_999 * 100_000);
///
/// // A failing item is a value; the stream goes on.
/// let results: Vec<_> = ex.execute(double, vec![1, i64::MAX, 3]).collect();
/// assert_eq!(results[0], Ok(2));
/// assert_eq!(results[1].as_ref().unwrap_err().index, 1);
/// assert_eq!(results[2], Ok(6));
///
/// // An infinite generator, abandoned with break: the job stops.
/// for (i, result) in ex.execute(double, 0..).enumerate() {
///     if i == 10 {
///         break;
///     }
///     assert_eq!(result, Ok(2 * i as i64));
/// }
/// ```
///
/// The same over processes. The workers are this binary re-executed, so `main`
/// calls [`init`](crate::init) first (in a worker it serves and never returns):
///
/// ```
/// use pstream::{Executor, ProcessExecutor};
///
/// pstream::function! {
///     /// Twice the input; an error if that overflows.
///     fn double(x: i64) -> Result<i64, String> {
///         x.checked_mul(2).ok_or_else(|| format!("{x} * 2 overflows"))
///     }
/// }
///
/// fn main() -> Result<(), pstream::PoolError> {
///     pstream::init();
///     let ex = ProcessExecutor::builder().max_workers(2).max_memory_items(5_000).build()?;
///     let mut sum = 0;
///     for result in ex.execute(double, 0..100_000i64) {
///         sum += result.expect("no overflow");
///     }
///     assert_eq!(sum, 99_999 * 100_000);
///     Ok(())
/// }
/// ```
///
/// Closures run on threads only (a closure cannot travel to another process); give
/// their argument a type, `|x: u64| x * x`, since the executor only knows it as a
/// [`Task`].
pub trait Executor<In, F: Task<In>> {
    /// Map `func` over `data`; results in input order.
    fn execute<I>(&self, func: F, data: I) -> Results<F::Output>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static;

    /// Map `func` over `data`; results as they are ready.
    fn execute_unordered<I>(&self, func: F, data: I) -> Results<F::Output>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static;

    /// How many workers (threads or processes) run the function.
    fn max_workers(&self) -> usize;

    /// The most items read from the input and not yet handed to the consumer.
    fn max_memory_items(&self) -> usize;
}

/// The results of [`Executor::execute`]: an iterator of `Result<Out, ItemError>`, one
/// per input item. Dropping it cancels the job.
pub struct Results<Out> {
    inner: Inner<Out>,
}

enum Inner<Out> {
    Threads(threads::ThreadResults<Out>),
    Processes(Box<dyn ProcessStream<Out>>),
    /// The job could not start: one error item, then the end.
    Failed {
        error: Option<PoolError>,
        reason: String,
        yielded: bool,
    },
}

/// [`MapResults`] without its `DeserializeOwned` bound in the type, so [`Results`]
/// needs none for thread jobs.
trait ProcessStream<Out>: Send {
    fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)>;
    fn in_flight(&self) -> usize;
    fn pool_error(&self) -> Option<&PoolError>;
}

/// A process job's results with the pool they come from: dropping a pool ends its
/// jobs, so the results keep it alive. Fields drop in order: the job is cancelled
/// before the pool (if this was its last holder) shuts down.
struct Held<Out> {
    results: MapResults<'static, Out>,
    _pool: Arc<ProcessPool>,
}

impl<Out: DeserializeOwned> ProcessStream<Out> for Held<Out> {
    fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        self.results.next_indexed()
    }

    fn in_flight(&self) -> usize {
        self.results.in_flight()
    }

    fn pool_error(&self) -> Option<&PoolError> {
        self.results.pool_error()
    }
}

impl<Out> Results<Out> {
    fn threads(results: threads::ThreadResults<Out>) -> Self {
        Results {
            inner: Inner::Threads(results),
        }
    }

    fn processes(results: MapResults<'static, Out>, pool: Arc<ProcessPool>) -> Self
    where
        Out: DeserializeOwned + 'static,
    {
        Results {
            inner: Inner::Processes(Box::new(Held {
                results,
                _pool: pool,
            })),
        }
    }

    fn failed(error: Option<PoolError>, reason: String) -> Self {
        let reason = match &error {
            Some(e) => e.to_string(),
            None => reason,
        };
        Results {
            inner: Inner::Failed {
                error,
                reason,
                yielded: false,
            },
        }
    }

    /// The next result with its input index (useful when unordered).
    pub fn next_indexed(&mut self) -> Option<(u64, Result<Out, ItemError>)> {
        match &mut self.inner {
            Inner::Threads(r) => r.next_indexed(),
            Inner::Processes(r) => r.next_indexed(),
            Inner::Failed {
                reason, yielded, ..
            } => {
                if std::mem::replace(yielded, true) {
                    return None;
                }
                let reason = reason.clone();
                Some((
                    0,
                    Err(ItemError {
                        index: 0,
                        kind: ItemErrorKind::Aborted { reason },
                    }),
                ))
            }
        }
    }

    /// Yield `(index, result)` pairs instead of results.
    pub fn indexed(self) -> IndexedResults<Out> {
        IndexedResults(self)
    }

    /// Items read from the input and not yet handed out (those of the batch being
    /// handed out count until it is done): never more than `max_memory_items`.
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Threads(r) => r.in_flight(),
            Inner::Processes(r) => r.in_flight(),
            Inner::Failed { .. } => 0,
        }
    }

    /// The pool error that stopped a process job, if one did (the stream ended with
    /// an [`ItemErrorKind::Aborted`] item). Always `None` on threads.
    pub fn pool_error(&self) -> Option<&PoolError> {
        match &self.inner {
            Inner::Threads(_) => None,
            Inner::Processes(r) => r.pool_error(),
            Inner::Failed { error, .. } => error.as_ref(),
        }
    }
}

impl<Out> Iterator for Results<Out> {
    type Item = Result<Out, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|(_, r)| r)
    }
}

impl<Out> std::fmt::Debug for Results<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Threads(_) => "threads",
            Inner::Processes(_) => "processes",
            Inner::Failed { .. } => "failed",
        };
        f.debug_struct("Results")
            .field("executor", &kind)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// [`Results`] yielding `(index, result)` pairs.
#[derive(Debug)]
pub struct IndexedResults<Out>(Results<Out>);

impl<Out> Iterator for IndexedResults<Out> {
    type Item = (u64, Result<Out, ItemError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_indexed()
    }
}

impl<Out> IndexedResults<Out> {
    /// Back to the results.
    pub fn into_inner(self) -> Results<Out> {
        self.0
    }
}
