//! The coordinator's errors: job-level [`PoolError`] and item-level [`ItemError`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

/// Why a pool could not start, or a job could not go on. Its message carries its
/// cause (`start worker program /nonexistent: No such file or directory (os error
/// 2)`); only [`PoolError::Spawn`] also has it as its `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The worker program could not be started at all.
    #[error("start worker program {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A worker started but never became usable.
    #[error("start a worker from {program}: {reason}")]
    WorkerStart {
        /// The program.
        program: PathBuf,
        /// What happened (exit status, handshake timeout, rejection).
        reason: String,
    },
    /// Workers keep failing before they can serve; the pool gave up.
    #[error(
        "workers failed to start {failures} times in a row (last: {last}); \
         check that the worker program runs and connects"
    )]
    RespawnsExhausted {
        /// Consecutive failures.
        failures: u32,
        /// The last failure.
        last: String,
    },
    /// The worker program builds a pool where it should serve: its `main` does not
    /// call `pstream::init()` first. (A copy started as a worker reached
    /// [`crate::PoolBuilder::build`] and ended there rather than start workers of
    /// its own.)
    #[error(
        "the workers of {program} do not serve: its `main` builds a pool without \
         calling `pstream::init()` first (a worker reached the pool's `build()` and \
         stopped there); call `pstream::init();` as the first line of `main`"
    )]
    InitMissing {
        /// The program.
        program: PathBuf,
    },
    /// The workers serve no function: none is linked into the worker program.
    #[error(
        "{program} serves no function: no `pstream::function!` is linked into it. \
         If the functions are in the library of the plugin's package, its `main.rs` must \
         name that library or the linker leaves it out: write \
         `pstream::plugin!(my_plugin);` as the whole of src/main.rs, with the library's \
         name (the package's name with `-` written `_`), or `use my_plugin as _;` above \
         your own `fn main`"
    )]
    NoFunctions {
        /// The program.
        program: PathBuf,
    },
    /// The job's token file is unusable.
    #[error("read the job's token: {0}")]
    Token(pstream_protocol::auth::TokenFileError),
    /// The TCP listener for workers across the network could not be set up.
    #[error("listen for workers over TCP: {0}")]
    Listen(std::io::Error),
    /// The pool's socket could not be set up.
    #[error("set up the pool's socket: {0}")]
    Socket(std::io::Error),
    /// No worker serves the function.
    #[error("no function named `{name}` is served by the workers (they serve: {})", available.join(", "))]
    UnknownFunction {
        /// The name asked for.
        name: String,
        /// What the workers serve.
        available: Vec<String>,
    },
    /// A worker could not build the per-worker state of the job's function: its
    /// initialiser failed or panicked. The worker stays up (and serves other
    /// functions); the job cannot go on.
    #[error("worker {pid}: {message}")]
    WorkerState {
        /// The worker's process id.
        pid: u32,
        /// Which state, and the initialiser's error or panic message.
        message: String,
    },
    /// The job's input iterator (or its item encoder) panicked.
    #[error("read the job's input: {0}")]
    Input(String),
    /// A configuration value is unusable.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// No worker was connected for the whole waiting time of a pool whose
    /// workers join on their own.
    #[error(
        "no worker for {waited:?}: waited for {expected}{}; start workers with \
         `PLUGIN --connect ADDR --token-file FILE` (or host agents, `PLUGIN --agent \
         --connect ADDR`), or wait longer (--wait-workers){}{}",
        if *ever > 0 { format!(" ({ever} had joined and are gone)") } else { String::new() },
        match failure { Some(f) => format!("; the last start failure: {f}"), None => String::new() },
        match left { Some(l) => format!("; {l}"), None => String::new() }
    )]
    NoWorkers {
        /// How long the pool waited.
        waited: Duration,
        /// Whom it waited for.
        expected: String,
        /// How many workers had served before.
        ever: u64,
        /// The last failure of a worker a host agent started, if any.
        failure: Option<String>,
        /// The work left for want of a worker, if any: how many items, the first,
        /// and what became of the last one in work on a worker that was lost.
        left: Option<String>,
    },
    /// Every host agent of a [`crate::HostLauncher`] failed (its ssh or srun
    /// ended) before any worker joined.
    #[error("no host could start workers: {}", failures.join("; "))]
    NoHosts {
        /// Each host's failure, naming the host and saying why (what ssh said).
        failures: Vec<String>,
    },
    /// [`crate::PoolBuilder::build`] gave up waiting for its workers: the flag of
    /// [`crate::PoolBuilder::interrupt`] was set.
    #[error("interrupted while the workers started")]
    Interrupted,
    /// The pool has shut down.
    #[error("the pool has shut down")]
    Closed,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// Killed by a signal.
    Signal(i32),
    /// Exited with a status code.
    Code(i32),
    /// Broke the protocol (sent bytes that are not a frame, or results that do not
    /// match its batches) and was killed for it.
    Disconnected,
    /// Across the network: its connection was lost (closed, reset, or silent)
    /// every time it held this item, more often than chance explains.
    Lost,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Signal(sig) => match Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExitCause::Code(code) => write!(f, "exited with status {code}"),
            ExitCause::Disconnected => write!(f, "broke the protocol and was killed"),
            ExitCause::Lost => write!(
                f,
                "lost its connection while computing it, {} times in a row",
                crate::engine::LOSSES_BEFORE_BLAME
            ),
        }
    }
}

/// An item that has no result, and why. Item failures are values in the result
/// stream; the stream goes on after them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item {index}: {kind}")]
pub struct ItemError {
    /// The item's index in the input, from 0.
    pub index: u64,
    /// What happened.
    pub kind: ItemErrorKind,
}

/// What happened to an item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ItemErrorKind {
    /// The function panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// Where, as `file:line:column`.
        location: Option<String>,
    },
    /// The function returned an error.
    Failed {
        /// The error, as displayed.
        message: String,
    },
    /// A worker died while computing this item, every time it was tried.
    Crashed {
        /// How the last worker ended.
        cause: ExitCause,
        /// How many times the item was tried alone.
        attempts: u32,
    },
    /// The item took longer than the item time limit, every time it was tried.
    TimedOut {
        /// The limit.
        limit: Duration,
        /// How many times the item was tried alone.
        attempts: u32,
    },
    /// The item could not be decoded as the function's input (or its result as the
    /// caller's output type).
    Decode {
        /// The decoder's complaint.
        message: String,
    },
    /// The item (or its result) could not be encoded.
    Encode {
        /// The encoder's complaint.
        message: String,
    },
    /// The item or its result is larger than a frame may carry.
    TooLarge {
        /// Sizes and limit.
        message: String,
    },
    /// The worker does not serve the function.
    UnknownFunction {
        /// The worker's complaint.
        message: String,
    },
    /// The job stopped with a pool error before this item was computed; the stream
    /// ends after it. [`crate::MapResults::pool_error`] has the whole error.
    Aborted {
        /// The pool error, as displayed.
        reason: String,
    },
}

impl fmt::Display for ItemErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemErrorKind::Panicked { message, location } => {
                write!(f, "panicked: {message}")?;
                if let Some(l) = location {
                    write!(f, " at {l}")?;
                }
                Ok(())
            }
            ItemErrorKind::Failed { message } => write!(f, "failed: {message}"),
            ItemErrorKind::Crashed { cause, attempts } => {
                write!(
                    f,
                    "crashed its worker: {cause} (tried {attempts} times alone)"
                )
            }
            ItemErrorKind::TimedOut { limit, attempts } => write!(
                f,
                "timed out after {limit:?} (tried {attempts} times alone)"
            ),
            ItemErrorKind::Decode { message } => write!(f, "could not be decoded: {message}"),
            ItemErrorKind::Encode { message } => write!(f, "could not be encoded: {message}"),
            ItemErrorKind::TooLarge { message } => write!(f, "too large: {message}"),
            ItemErrorKind::UnknownFunction { message } => write!(f, "{message}"),
            ItemErrorKind::Aborted { reason } => {
                write!(f, "not computed, the job stopped: {reason}")
            }
        }
    }
}

impl ItemErrorKind {
    /// A short, stable name for the kind: `panicked`, `failed`, `crashed`,
    /// `timed_out`, `decode`, `encode`, `too_large`, `unknown_function`, `aborted`.
    pub fn name(&self) -> &'static str {
        match self {
            ItemErrorKind::Panicked { .. } => "panicked",
            ItemErrorKind::Failed { .. } => "failed",
            ItemErrorKind::Crashed { .. } => "crashed",
            ItemErrorKind::TimedOut { .. } => "timed_out",
            ItemErrorKind::Decode { .. } => "decode",
            ItemErrorKind::Encode { .. } => "encode",
            ItemErrorKind::TooLarge { .. } => "too_large",
            ItemErrorKind::UnknownFunction { .. } => "unknown_function",
            ItemErrorKind::Aborted { .. } => "aborted",
        }
    }
}

impl ItemError {
    /// Whether a worker died computing this item.
    pub fn is_crash(&self) -> bool {
        matches!(self.kind, ItemErrorKind::Crashed { .. })
    }

    /// Whether this item ran over its time limit.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ItemErrorKind::TimedOut { .. })
    }

    /// Whether the function panicked on this item.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, ItemErrorKind::Panicked { .. })
    }

    /// The signal that killed the worker, for a crash by signal.
    pub fn signal(&self) -> Option<i32> {
        match self.kind {
            ItemErrorKind::Crashed {
                cause: ExitCause::Signal(sig),
                ..
            } => Some(sig),
            _ => None,
        }
    }

    /// The worker's exit code, for a crash by exit.
    pub fn exit_code(&self) -> Option<i32> {
        match self.kind {
            ItemErrorKind::Crashed {
                cause: ExitCause::Code(code),
                ..
            } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PoolError;
    use std::io;

    /// Each error that wraps another says it in its own message.
    #[test]
    fn every_pool_error_with_a_cause_says_it() {
        let gone = || io::Error::from_raw_os_error(2);
        let cases = [
            PoolError::Spawn {
                program: "/nonexistent".into(),
                source: gone(),
            },
            PoolError::Socket(gone()),
            PoolError::Listen(io::Error::from_raw_os_error(98)),
            PoolError::Token(pstream_protocol::auth::TokenFileError::Io {
                path: "/tmp/t".into(),
                error: gone(),
            }),
        ];
        let texts: Vec<String> = cases.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "start worker program /nonexistent: No such file or directory (os error 2)",
                "set up the pool's socket: No such file or directory (os error 2)",
                "listen for workers over TCP: Address already in use (os error 98)",
                "read the job's token: the token file /tmp/t: No such file or directory \
                 (os error 2)",
            ]
        );
    }
}
