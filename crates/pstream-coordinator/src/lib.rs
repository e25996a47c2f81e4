//! The pstream coordinator: a pool of worker processes that maps registered
//! functions over streams of items.
//!
//! The parts:
//! * `pool`: [`ProcessPool`], the public face; `builder`: its [`PoolBuilder`];
//! * `engine`: the state of the workers and the jobs: it dispatches batches
//!   against credit and recovers from crashes and hangs;
//! * `hub`: who steps the engine: a consumer waiting for results, or the
//!   supervisor thread when no consumer does;
//! * `link`: one worker's byte stream and who is at its other end (a Unix socket
//!   today), the seam a network transport plugs into;
//! * `conn`: a worker's connection as the engine polls it: frames over a link;
//! * `poller`: the engine's epoll set, every connection and the wake-up eventfd;
//! * `job`: the feeder that reads a job's input within the window (on the
//!   consumer's thread, or its own), and the result iterators that reassemble the
//!   order;
//! * `door`: the private socket and the handshake checks;
//! * `hosts`: host agents on other machines, started over ssh or by srun, whose
//!   workers join over TCP;
//! * `launcher`: what starts workers and reports how they ended (local re-exec
//!   today); a pool may have none, when workers join on their own;
//! * `process`: starting, signalling and reaping worker processes;
//! * `vocab`: the events, batches and job messages the rooms above trade (a leaf);
//! * `tuning`: the batching constants, shared with the thread executor (a leaf);
//! * `error`, `stats`: what users get back.
#![deny(missing_docs)]

mod builder;
mod conn;
mod door;
mod engine;
mod error;
mod hosts;
mod hub;
mod job;
mod launcher;
mod link;
mod poller;
mod pool;
mod process;
mod stats;
#[doc(hidden)]
pub mod tuning;
mod vocab;

pub use builder::{
    PoolBuilder, DEFAULT_HEARTBEAT, DEFAULT_SILENCE, DEFAULT_WAIT_WORKERS, DEFAULT_WINDOW,
    DEFAULT_WINDOW_BYTES,
};
pub use error::{ExitCause, ItemError, ItemErrorKind, PoolError};
pub use hosts::{HostLauncher, DEFAULT_SSH_COMMAND};
#[doc(hidden)]
pub use job::Reorder;
pub use job::{Indexed, MapResults, RawResults, StatsProbe, Window};
pub use pool::{InputThread, ProcessPool};
pub use pstream_protocol::{Codec, Function, FunctionInfo};
pub use stats::{HostStats, JobStats, PoolStats};
pub use tuning::{DEFAULT_SPIN, MAX_SPIN};
