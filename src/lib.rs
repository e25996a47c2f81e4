//! # pstream
//!
//! Map a function over a stream of items in a pool of worker **processes**, and get
//! the results back as a stream — in input order by default — with memory that stays
//! flat however long the input is, and with worker crashes contained.
//!
//! ```no_run
//! pstream::function! {
//!     /// Twice the input.
//!     fn twice(x: i64) -> i64 { x * 2 }
//! }
//!
//! fn main() -> Result<(), pstream::PoolError> {
//!     pstream::init(); // in a worker, serves and never returns
//!     let pool = pstream::ProcessPool::builder().workers(4).window(5000).build()?;
//!     for result in pool.map(twice, 0..1_000_000i64)? {
//!         let doubled = result.expect("twice does not fail");
//!         # let _ = doubled;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! ## Features
//! * [`function!`] defines a function and a typed handle to it; only its name travels.
//! * [`ProcessPool`] re-executes the current binary (or a plugin) as workers, talks to
//!   them over a private Unix socket, and maps with [`ProcessPool::map`],
//!   [`ProcessPool::map_unordered`] or, for pre-encoded items, [`ProcessPool::map_raw`].
//!
//! ## Guarantees
//! * Never more than the window of items is read ahead of the consumer.
//! * Every item comes back exactly once: as its value, or as an [`ItemError`] saying
//!   why (a panic, an error, a crash of its worker, a timeout).
//! * Dropping the results cancels the job; dropping the pool stops and reaps every
//!   worker.
//!
//! ## Errors
//! Item failures are values in the stream ([`ItemError`]); failures of the job as a
//! whole are [`PoolError`]s, from [`PoolBuilder::build`], from `map`, or at the end
//! of a stream ([`MapResults::pool_error`]).
//!
//! ## Platform support
//! Linux. Workers are tied to the coordinator with `PR_SET_PDEATHSIG`.
#![deny(missing_docs)]

pub use pstream_coordinator::{
    Codec, ExitCause, FunctionInfo, Indexed, ItemError, ItemErrorKind, JobStats, MapResults,
    PoolBuilder, PoolError, PoolStats, ProcessPool, RawResults, DEFAULT_WINDOW,
    DEFAULT_WINDOW_BYTES,
};
pub use pstream_protocol::{Function, LocalFn};
pub use pstream_worker::{function, init, is_worker, plugin, serve};

mod executor;
pub use executor::{
    Executor, IndexedResults, ProcessExecutor, ProcessExecutorBuilder, Results, Task,
    ThreadExecutor, ThreadExecutorBuilder,
};

/// The wire protocol, for tools that speak it directly.
pub mod protocol {
    pub use pstream_protocol::*;
}
