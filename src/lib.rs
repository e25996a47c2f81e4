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
//! * [`MapIn`]: `iter.map_in(&pool, f)`, the same job written rayon's way round.
//! * [`WorkerState`]: state a function borrows, built once per worker process.
//! * `stream` (cargo feature `async`): results as a `futures::Stream`, input from one.
//!
//! ## Borrowed input
//! The input is read on the consumer's thread, between results, so it may borrow
//! local data; the results carry the input's lifetime, so they cannot outlive it.
//! An input that may block (a pipe, a socket) is better read on a thread of its own,
//! [`ProcessPool::input_thread`]: it must then be `Send + 'static`.
//!
//! ```
//! pstream::function! {
//!     /// The number of characters of a line.
//!     fn chars(line: String) -> usize { line.chars().count() }
//! }
//!
//! fn main() -> Result<(), pstream::PoolError> {
//!     pstream::init();
//!     let pool = pstream::ProcessPool::builder().workers(2).build()?;
//!     let lines: Vec<String> = vec!["α".into(), "βγ".into()];
//!     let counts: Vec<usize> = pool
//!         .map(chars, lines.iter().cloned())? // borrows `lines`
//!         .map(|r| r.expect("chars does not fail"))
//!         .collect();
//!     assert_eq!(counts, [1, 2]);
//!     assert_eq!(lines.len(), 2); // still ours
//!     Ok(())
//! }
//! ```
//!
//! ## Per-worker state
//! A function whose last argument is a reference, `words: &Words`, borrows state
//! built once per worker process by [`WorkerState::init`] (a word list, a model,
//! compiled patterns, a connection), which reads its configuration from the
//! environment the pool gives its workers ([`PoolBuilder::env`]). It lives until
//! the worker ends (recycled by [`PoolBuilder::max_items_per_worker`], or the pool
//! dropped). An `init` that fails or panics ends the job with
//! [`PoolError::WorkerState`], naming the worker and the message; no worker is
//! restarted for it.
//!
//! ```
//! use std::collections::HashSet;
//!
//! /// Words, one per line, from the file `$WORDS` names.
//! struct Words(HashSet<String>);
//!
//! impl pstream::WorkerState for Words {
//!     type Error = std::io::Error;
//!     fn init() -> Result<Words, std::io::Error> {
//!         let text = std::fs::read_to_string(std::env::var_os("WORDS").unwrap_or_default())?;
//!         Ok(Words(text.lines().map(str::to_owned).collect()))
//!     }
//! }
//!
//! pstream::function! {
//!     /// Whether a word is in the list.
//!     fn known(word: String, words: &Words) -> bool { words.0.contains(&word) }
//! }
//!
//! fn main() -> Result<(), pstream::PoolError> {
//!     pstream::init();
//!     let list = std::env::temp_dir().join(format!("words-{}", std::process::id()));
//!     std::fs::write(&list, "cat\ndog\n").unwrap();
//!     let pool = pstream::ProcessPool::builder().workers(2).env("WORDS", &list).build()?;
//!     let found: Vec<bool> = pool
//!         .map(known, ["cat", "cow"].map(String::from))?
//!         .map(|r| r.unwrap())
//!         .collect();
//!     assert_eq!(found, [true, false]);
//!
//!     // A list that cannot be read: the job ends with the worker's error.
//!     let pool = pstream::ProcessPool::builder().workers(1).env("WORDS", "/no/such").build()?;
//!     let mut results = pool.map(known, ["cat".to_string()])?;
//!     assert!(results.next().unwrap().is_err());
//!     let error = results.pool_error().unwrap().to_string();
//!     assert!(error.contains("No such file or directory"), "{error}");
//!     std::fs::remove_file(&list).unwrap();
//!     Ok(())
//! }
//! ```
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
    Codec, ExitCause, FunctionInfo, HostLauncher, HostStats, Indexed, InputThread, ItemError,
    ItemErrorKind, JobStats, MapResults, PoolBuilder, PoolError, PoolStats, ProcessPool,
    RawResults, StatsProbe, DEFAULT_HEARTBEAT, DEFAULT_SILENCE, DEFAULT_SPIN, DEFAULT_SSH_COMMAND,
    DEFAULT_WAIT_WORKERS, DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES, MAX_SPIN,
};
pub use pstream_protocol::{Function, LocalFn};
pub use pstream_worker::{init, is_worker, plugin, serve, WorkerState};

/// Define functions that workers serve, and a typed handle to call each with.
///
/// ```
/// pstream::function! {
///     /// Twice the input.
///     pub fn twice(x: i64) -> i64 { x * 2 }
/// }
///
/// pstream::function! {
///     /// A result: `Err` fails the item, with the error's text.
///     fn parse(s: String) -> Result<u32, std::num::ParseIntError> { s.parse() }
///
///     /// Any `Result` is one, by whatever path it is named.
///     fn size(path: String) -> std::io::Result<u64> {
///         Ok(std::fs::metadata(path)?.len())
///     }
///
///     /// Several arguments travel as a tuple: the input is `(i64, i64)`.
///     fn add(a: i64, b: i64) -> i64 { a + b }
///
///     /// Any pattern an argument can have; no return type means `()`.
///     fn report(mut text: String) {
///         text.push('\n');
///         eprint!("{text}");
///     }
/// }
///
/// assert_eq!(twice.name(), "twice");
/// assert_eq!(twice.call(21), Ok(42)); // the body, called in this process
/// assert!(parse.call("x".into()).is_err());
/// assert!(size.call("/no/such/file".into()).is_err());
/// assert_eq!(add.call((2, 3)), Ok(5));
/// ```
///
/// Each function becomes a constant named like it, of type
/// [`Function<In, Out>`](Function) (only its name travels to the workers), and its
/// body is registered under that name at link time, so a re-executed copy of the
/// binary (or a plugin that links the same code) serves exactly the same functions.
///
/// * **Input**: the argument's type; a tuple of the arguments' types for several
///   (`add` above takes `(i64, i64)`: a JSON array `[2, 3]` on the command line);
///   `()` for none. Arguments are owned values (`String`, not `&str`) that
///   implement `serde::Deserialize`; any pattern works (`mut x`, `(a, b): (i64, i64)`).
/// * **Output**: the return type (`Serialize`), `()` if there is none. A return
///   type whose path ends in `Result` (`Result<T, E>`, `std::result::Result`,
///   `io::Result<T>`, an alias such as `anyhow::Result<T>`) is a result: the output
///   is `T`, and an `Err` fails that item with the error's text (`E: Display`).
/// * **Per-worker state**: a last argument taken by reference, `words: &Words`, is
///   not part of the input: it is a [`WorkerState`], built once in each worker
///   process (by its `init`) and lent to every item there (see "Per-worker state"
///   in the crate's documentation).
/// * Refused, with a message saying why: generic, `async`, `const` or `unsafe`
///   functions, `self`, other arguments taken by reference, `&mut` state.
///
/// The handle is a constant, so no argument or local variable in the same module
/// can share a function's name (a pattern would take it for the constant); the
/// macro says so when an argument is named like its own function.
///
/// The handle also carries the body as a plain function pointer
/// ([`Function::call`]), so a thread executor runs the very same handle without a
/// worker process.
#[macro_export]
macro_rules! function {
    ($($function:tt)*) => {
        $crate::__private::function_impl! { ($crate) $($function)* }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use pstream_worker::__private::*;
}

mod executor;
pub use executor::{
    Executor, IndexedResults, ProcessExecutor, ProcessExecutorBuilder, Results, Task,
    ThreadExecutor, ThreadExecutorBuilder,
};

mod ext;
pub use ext::MapIn;

#[cfg(feature = "async")]
pub mod stream;

/// The wire protocol, for tools that speak it directly.
pub mod protocol {
    pub use pstream_protocol::*;
}
