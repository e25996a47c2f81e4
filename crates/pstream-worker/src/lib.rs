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
#![deny(missing_docs)]

mod registry;
mod serve;

pub use pstream_protocol::Function;
#[doc(hidden)]
pub use registry::{__call_fallible, __call_plain};
pub use registry::{functions, registry, BatchFn, CallError, CallFn, Registration};
pub use serve::{serve_from_env, WorkerError, DEFAULT_CAPACITY};

#[doc(hidden)]
pub mod __private {
    pub use crate::serve::Batch;
    pub use inventory;
    pub use pstream_protocol::Codec;
}

/// Whether this process was started as a worker by a coordinator.
pub fn is_worker() -> bool {
    pstream_protocol::started_as_worker()
}

/// Call first in `main`. In a process started as a worker, serve and exit (this call
/// never returns there); anywhere else return at once.
pub fn init() {
    if is_worker() {
        exit_after_serving();
    }
}

/// The `main` of a plugin binary: serve the functions linked into it, then exit.
/// Started by hand, it says what it is and exits with status 2.
pub fn serve() -> ! {
    if !is_worker() {
        eprintln!("{}", WorkerError::NotAWorker);
        eprintln!("functions served by this binary:");
        for f in functions() {
            eprintln!("  {}: {} -> {}", f.name, f.input_type, f.output_type);
        }
        std::process::exit(2);
    }
    exit_after_serving()
}

fn exit_after_serving() -> ! {
    match serve_from_env() {
        Ok(()) => std::process::exit(0),
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
            std::process::exit(1);
        }
    }
}
