//! `--joblog FILE`: GNU parallel's job log, column for column, so that scripts
//! written for it read ours: a header line, then a line per command (per block
//! for `pipe`), tab-separated:
//!
//! ```text
//! Seq  Host  Starttime  JobRuntime  Send  Receive  Exitval  Signal  Command
//! ```
//!
//! `Host` is `:` (this machine, as parallel writes it), `Starttime` seconds since
//! the epoch with three decimals, `JobRuntime` seconds with three decimals in ten
//! columns, `Command` the command line as a shell would read it (newlines written
//! as NUL, as parallel does).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::error::CliError;

pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// One line of the log.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub seq: u64,
    pub start: f64,
    pub runtime: f64,
    pub sent: u64,
    pub received: u64,
    pub exit: i32,
    pub signal: i32,
    pub command: Vec<u8>,
}

/// The open log.
#[derive(Debug)]
pub struct Joblog {
    file: File,
}

impl Joblog {
    /// Start the log at `path` (emptied, with its header), or with `resume`
    /// continue it (the header written only if it is empty).
    pub fn open(path: &Path, resume: bool) -> Result<Joblog, CliError> {
        let fail =
            |e: io::Error| CliError::Run(format!("open the job log {}", path.display()), e.into());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular && !resume {
            file.set_len(0).map_err(fail)?;
        }
        let empty = !regular || file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            file.write_all(HEADER.as_bytes()).map_err(fail)?;
        }
        Ok(Joblog { file })
    }

    /// Write `row`, in one write.
    pub fn write(&mut self, row: &Row) -> io::Result<()> {
        let mut line = format!(
            "{}\t:\t{:.3}\t{:10.3}\t{}\t{}\t{}\t{}\t",
            row.seq, row.start, row.runtime, row.sent, row.received, row.exit, row.signal
        )
        .into_bytes();
        line.extend(row.command.iter().map(|&b| if b == b'\n' { 0 } else { b }));
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_as_gnu_parallel_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = Joblog::open(&path, false).unwrap();
        log.write(&Row {
            seq: 2,
            start: 1795998215.159,
            runtime: 0.119,
            sent: 0,
            received: 2,
            exit: 0,
            signal: 0,
            command: b"echo c".to_vec(),
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}2\t:\t1795998215.159\t     0.119\t0\t2\t0\t0\techo c\n")
        );
        // Continued, not restarted, with --resume.
        drop(Joblog::open(&path, true).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        drop(Joblog::open(&path, false).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), HEADER);
    }
}
