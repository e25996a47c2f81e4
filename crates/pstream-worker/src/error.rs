//! What can go wrong: a worker's ([`WorkerError`], it stops serving) and one call's
//! ([`CallError`], its item fails). A leaf: it imports none of the crate's modules.

use std::fmt;

use pstream_protocol::{DecodeError, EncodeError, FailureKind, ENV_SOCKET};

/// Why a worker stopped serving. Its message carries its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Started without the environment a coordinator sets.
    #[error(
        "{ENV_SOCKET} is not set: this is a pstream worker, started by a coordinator \
         (for example `pstream-coord run --plugin <this binary> ...`), not by hand"
    )]
    NotAWorker,
    /// `PSTREAM_SOCKET` is set, but this process was not started by a coordinator.
    #[error("{0}")]
    Stray(String),
    /// The environment is set but unusable.
    #[error("invalid worker environment: {0}")]
    Environment(String),
    /// The socket is not the coordinator's: the worker sent nothing secret.
    #[error("refused {at}: {reason}; it is not this worker's coordinator")]
    Untrusted {
        /// The socket path or the address.
        at: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Could not reach the coordinator.
    #[error("connect to the coordinator at {at}: {error}")]
    Connect {
        /// The socket path or the address.
        at: String,
        /// Why.
        error: std::io::Error,
    },
    /// The coordinator refused us.
    #[error("the coordinator rejected this worker: {0}")]
    Rejected(String),
    /// The coordinator sent something we cannot read.
    #[error("read from the coordinator: {0}")]
    Read(DecodeError),
    /// We could not send.
    #[error("write to the coordinator: {0}")]
    Write(EncodeError),
    /// The coordinator broke the protocol.
    #[error("protocol violation by the coordinator: {0}")]
    Protocol(String),
    /// The coordinator across the network said nothing for the silence limit.
    #[error("the coordinator fell silent for {0:?} (its host is gone or cut off): exiting")]
    Silent(std::time::Duration),
}

/// Why one call failed (other than by panicking).
#[derive(Debug)]
pub struct CallError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why, for the user.
    pub message: String,
}

impl CallError {
    pub(crate) fn new(kind: FailureKind, message: impl fmt::Display) -> CallError {
        CallError {
            kind,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerError;
    use pstream_protocol::{DecodeError, EncodeError};
    use std::io;

    /// Each error that wraps another says it in its own message.
    #[test]
    fn every_worker_error_with_a_cause_says_it() {
        let reset = || io::Error::from_raw_os_error(104);
        let cases = [
            WorkerError::Connect {
                at: "/run/x.sock".into(),
                error: io::Error::from_raw_os_error(111),
            },
            WorkerError::Read(DecodeError::Io(reset())),
            WorkerError::Write(EncodeError::Io(reset())),
        ];
        let texts: Vec<String> = cases.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "connect to the coordinator at /run/x.sock: Connection refused (os error 111)",
                "read from the coordinator: read from the connection: Connection reset by \
                 peer (os error 104)",
                "write to the coordinator: write to the connection: Connection reset by \
                 peer (os error 104)",
            ]
        );
    }
}
