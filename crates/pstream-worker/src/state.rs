//! Per-worker state: a value a function builds once per worker process (a word list,
//! a model, a compiled set of patterns, a database handle) and borrows for every item.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use pstream_protocol::unwind;

/// State that functions borrow, built once per worker process: the last argument of
/// a [`crate::function!`] written `name: &T` is a `T: WorkerState`.
///
/// `init` runs in each worker process before the first item of the first function
/// that takes it (and once in a process that calls such a function itself, as a
/// thread executor does), and the value lives until the process ends: until the
/// worker is recycled (`max_items_per_worker`) or the pool is dropped. It reads
/// what it needs from the environment, which the pool sets
/// (`PoolBuilder::env("MODEL", path)`).
///
/// An `init` that fails, or panics, does so once per worker: the worker stays up
/// and answers every item of the functions that need the state with that error,
/// and the coordinator ends the job with `PoolError::WorkerState`, naming the
/// worker and the message. No worker is restarted for it.
///
/// ```
/// use std::collections::HashSet;
///
/// /// The words of a list, one per line, from the file `$WORDS` names.
/// struct Words(HashSet<String>);
///
/// impl pstream_worker::WorkerState for Words {
///     type Error = String;
///     fn init() -> Result<Words, String> {
///         let path = std::env::var("WORDS").map_err(|_| "WORDS is not set".to_string())?;
///         let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
///         Ok(Words(text.lines().map(str::to_owned).collect()))
///     }
/// }
///
/// pstream_worker::function! {
///     /// Whether a word is in the list.
///     fn known(word: String, words: &Words) -> bool {
///         words.0.contains(&word)
///     }
/// }
///
/// // Called in this process, the state is built here, once; its error is kept.
/// std::env::remove_var("WORDS");
/// let error = known.call("cat".into()).unwrap_err();
/// assert!(error.ends_with("failed to initialise: WORDS is not set"), "{error}");
/// assert!(known.call("dog".into()).is_err()); // not tried again
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not per-worker state: it does not implement `WorkerState`",
    label = "the last argument of a pstream function, taken by reference, is state built once per worker",
    note = "implement `pstream::WorkerState` for `{Self}` (its `init` builds it in each \
            worker), or take the argument by value: each item is decoded into it"
)]
pub trait WorkerState: Sized + Send + Sync + 'static {
    /// Why building it failed.
    type Error: fmt::Display;

    /// Build the state: once per worker process.
    fn init() -> Result<Self, Self::Error>;
}

/// Where one state type lives in this process: built at most once, its error too.
#[doc(hidden)]
pub struct StateCell<S> {
    cell: OnceLock<Result<S, String>>,
}

impl<S: WorkerState> StateCell<S> {
    /// The state, built now if it was not yet; or why it could not be.
    pub fn get(&'static self) -> Result<&'static S, &'static str> {
        self.cell
            .get_or_init(|| {
                let name = std::any::type_name::<S>();
                match unwind::catch(S::init) {
                    Ok(Ok(state)) => Ok(state),
                    Ok(Err(e)) => Err(format!("the state `{name}` failed to initialise: {e}")),
                    Err(panic) => {
                        let mut message = format!(
                            "the state `{name}` panicked while initialising: {}",
                            panic.message
                        );
                        if let Some(location) = panic.location {
                            message.push_str(&format!(" at {location}"));
                        }
                        Err(message)
                    }
                }
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

impl<S> fmt::Debug for StateCell<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCell")
            .field("type", &std::any::type_name::<S>())
            .field("built", &self.cell.get().map(|r| r.is_ok()))
            .finish()
    }
}

/// The cell of state type `S` in this process (one per type, whichever functions
/// take it). Looked up once per function: the expansion keeps the reference.
#[doc(hidden)]
pub fn state_cell<S: WorkerState>() -> &'static StateCell<S> {
    static CELLS: OnceLock<Mutex<HashMap<TypeId, &'static (dyn Any + Send + Sync)>>> =
        OnceLock::new();
    let mut cells = CELLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let cell: &'static (dyn Any + Send + Sync) =
        *cells.entry(TypeId::of::<S>()).or_insert_with(|| {
            // Lives as long as the process, as the state must.
            Box::leak(Box::new(StateCell::<S> {
                cell: OnceLock::new(),
            }))
        });
    cell.downcast_ref::<StateCell<S>>()
        .expect("the cell stored under a type's id is of that type")
}

/// Build (or find) the state `S`: the hook a function's batch entry point calls
/// before its first item.
#[doc(hidden)]
pub fn prepare_state<S: WorkerState>() -> Result<(), &'static str> {
    state_cell::<S>().get().map(|_| ())
}
