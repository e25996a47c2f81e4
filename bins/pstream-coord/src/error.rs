//! The launcher's errors, and the exit codes they map to.

use crate::journal::JournalError;

/// Why `pstream-coord` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Something the job needs failed (exit code 3): what, and why.
    #[error("{0}")]
    Run(
        String,
        #[source] Box<dyn std::error::Error + Send + Sync + 'static>,
    ),
    /// The resume journal is unusable.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl CliError {
    /// The process exit code: 2 for usage errors, 3 when the job could not run.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Journal(JournalError::OtherJob { .. }) => 2,
            CliError::Run(..) | CliError::Journal(_) => 3,
        }
    }

    /// The message for stderr, with the whole chain of causes.
    pub fn report(&self) -> String {
        let mut message = match self {
            CliError::Usage(m) => return format!("pstream-coord: {m}"),
            e => format!("pstream-coord: failed to {e}"),
        };
        let mut source = std::error::Error::source(self);
        // `Journal` is transparent: its own message is already in.
        if let CliError::Journal(_) = self {
            source = source.and_then(std::error::Error::source);
        }
        while let Some(cause) = source {
            // Errors whose message carries their cause (`start worker program x:
            // No such file ...`) may also give it as their source: say it once.
            let text = cause.to_string();
            if !message.ends_with(&text) {
                message.push_str(&format!(": {text}"));
            }
            source = cause.source();
        }
        message
    }
}
