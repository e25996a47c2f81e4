//! The pstream worker runtime: the registry of named, typed functions, the serve
//! loop, and the entry point that turns a re-executed binary into a worker.
//!
//! A worker is any binary that links functions defined with [`function!`] and calls
//! [`init`] first in `main` (a program that also runs pools) or [`serve`] (a plugin
//! that only serves). The coordinator starts it with the socket path and a token in
//! its environment; the worker connects, says `Hello` with the functions it serves,
//! and computes batches until told to stop or until the coordinator goes away.
//!
//! # Guarantees
//!
//! * A panic inside a function is caught: that item gets an error with the panic's
//!   message and location, and the worker serves on.
//! * A coordinator that closes the connection ends the worker with status 0; one that
//!   sends bytes that are not a frame ends it with status 1 and a message on stderr.
//!   A worker never waits on a coordinator that is gone.
//! * Nothing a function starts outlives its worker (unless it leaves the worker's
//!   process group): a worker that leads its own process group, as a coordinator
//!   starts it, ends the whole group with SIGKILL, itself included, when its
//!   coordinator dies or its connection ends after the handshake without a
//!   `Shutdown` (then instead of the statuses above).
#![deny(missing_docs)]

mod agent;
mod batch;
mod error;
mod flags;
mod group;
mod line;
mod registry;
mod serve;
#[doc(hidden)]
pub mod spawn;
mod state;
mod stream;

pub use error::{CallError, WorkerError};
pub use pstream_protocol::Function;
#[doc(hidden)]
pub use registry::__call_fallible;
pub use registry::{functions, registry, BatchFn, CallFn, Registration};
pub use serve::{serve_from_env, DEFAULT_CAPACITY};
pub use state::WorkerState;

/// What the expansion of [`function!`] names (through `$crate`, so that it works
/// from any crate, whichever of `pstream` and `pstream-worker` it depends on).
#[doc(hidden)]
pub mod __private {
    pub use crate::batch::Batch;
    pub use crate::registry::{batch, entry, type_names, Entry, Fallible, Registration};
    pub use crate::serve::Summons;
    pub use crate::state::{prepare_state, state_cell, StateCell, WorkerState};
    pub use inventory;
    pub use pstream_macros::function as function_impl;
    pub use pstream_protocol::{Codec, Function, LocalFn};
}

/// Whether this process was started as a worker by a coordinator.
pub fn is_worker() -> bool {
    pstream_protocol::started_as_worker()
}

/// Call first in `main`. In a process started as a worker, serve and exit (this call
/// never returns there); anywhere else return at once.
///
/// `PSTREAM_SOCKET` inherited by a process that no coordinator started (left set in
/// a shell, say) does not make it a worker: it comes without the token's pipe that
/// only a coordinator passes. Such a process gets a warning on stderr and goes on.
pub fn init() {
    if is_worker() {
        exit_after_serving();
    }
    if let Some(stray) = pstream_protocol::stray_worker_environment() {
        eprintln!("pstream: warning: ignoring the worker environment: {stray}");
    }
}

/// The `main` of a plugin binary: serve the functions linked into it, then exit.
/// Started by hand, it says what it is and exits with status 2.
///
/// Only functions that are *linked* into the binary are served: when they are
/// defined in the library of the plugin's package, `main.rs` must name that
/// library, or the linker leaves it out. [`plugin!`] writes such a `main`.
/// A binary that serves no function refuses: started by hand, it says how to link
/// them and exits with status 2; started as a worker, its coordinator's pool fails
/// to build with the same advice.
pub fn serve() -> ! {
    if let Some(stray) = pstream_protocol::stray_worker_environment() {
        eprintln!("{}", WorkerError::Stray(stray));
        eprintln!(
            "this is a pstream worker, started by a coordinator (for example \
             `pstream-coord run --plugin <this binary> ...`), not by hand"
        );
        std::process::exit(2);
    }
    if !is_worker() {
        eprintln!("{}", WorkerError::NotAWorker);
        let functions = functions();
        if functions.is_empty() {
            eprintln!("{NO_FUNCTIONS}");
        } else {
            eprintln!("functions served by this binary:");
            for f in functions {
                eprintln!("  {}: {} -> {}", f.name, f.input_type, f.output_type);
            }
        }
        std::process::exit(2);
    }
    exit_after_serving()
}

/// What a binary that serves no function says when started by hand.
const NO_FUNCTIONS: &str = "this binary serves no function: no `pstream::function!` is \
    linked into it. If the functions are in the library of this package \
    (src/lib.rs), `main.rs` must name that library or the linker leaves it out: write \
    `pstream::plugin!(my_plugin);` as the whole of src/main.rs, with the library's \
    name (the package's name with `-` written `_`), or `use my_plugin as _;` above \
    your own `fn main`";

/// The whole `main.rs` of a plugin whose functions are in its package's library
/// (or in other crates): links each named crate in, and serves.
///
/// ```ignore
/// // src/lib.rs of the package `my-plugin`:
/// pstream::function! {
///     pub fn double(x: i64) -> i64 { x * 2 }
/// }
///
/// // src/main.rs:
/// pstream::plugin!(my_plugin);
/// ```
///
/// A `main.rs` of only `fn main() { pstream::serve() }` links nothing from the
/// library (nothing in `main` names it) and would serve no function. `plugin!`
/// names each crate (`use my_plugin as _;`) and defines
/// `fn main() { pstream::serve() }`; to do more in `main`, write those two
/// yourself.
#[macro_export]
macro_rules! plugin {
    ($($library:ident),+ $(,)?) => {
        $(
            #[allow(unused_imports)]
            use $library as _;
        )+
        fn main() {
            $crate::serve()
        }
    };
}

fn exit_after_serving() -> ! {
    if pstream_protocol::asked_to_be_agent() {
        agent::run();
    }
    group::guard();
    match serve_from_env() {
        Ok(()) => {
            group::end();
            std::process::exit(0)
        }
        Err(e) => {
            let mut message = format!(
                "pstream worker {}: failed to serve: {e}",
                std::process::id()
            );
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{message}");
            group::end();
            std::process::exit(1);
        }
    }
}
