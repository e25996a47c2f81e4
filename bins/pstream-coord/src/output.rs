//! Where results go: the output (file or stdout), the errors file, and the resume
//! journal, written together so that they always agree.
//!
//! Results are gathered as whole lines and written in large pieces: when a piece
//! is full, and at least every [`FLUSH_INTERVAL`] (the ticker thread flushes while
//! the main thread waits for results). A write never ends inside a line, so an
//! interrupted output ends with a whole line. The journal is updated after the
//! bytes it describes are written.

use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::journal::{Journal, Progress};

/// Output bytes gathered before they are written.
const PIECE: usize = 64 << 10;

/// The longest a finished result waits before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The output, the errors file and the journal of a running job.
#[derive(Debug)]
pub struct Sink {
    /// The output file, or a duplicate of stdout.
    out: File,
    buf: Vec<u8>,
    errors: Option<File>,
    errbuf: Vec<u8>,
    journal: Option<Journal>,
    /// Bytes of the output and errors files, written or gathered.
    out_len: u64,
    err_len: u64,
    /// The journal record for the lines handled so far; written at the next flush.
    handled: Progress,
    last_flush: Instant,
    /// Set after a write failed: nothing more is written.
    broken: Option<io::ErrorKind>,
}

impl Sink {
    /// `handled`: what the journal says the files already hold (when resuming);
    /// they are written from there on.
    pub fn new(
        out: File,
        errors: Option<File>,
        journal: Option<Journal>,
        handled: Progress,
    ) -> Sink {
        Sink {
            out,
            buf: Vec::with_capacity(PIECE + 4096),
            errors,
            errbuf: Vec::new(),
            journal,
            out_len: handled.output_bytes,
            err_len: handled.errors_bytes,
            handled,
            last_flush: Instant::now(),
            broken: None,
        }
    }

    /// Add a result line (the newline is added here).
    pub fn result(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.buf.push(b'\n');
        self.out_len += bytes.len() as u64 + 1;
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(())
    }

    /// Add an error record line (the newline is added here). Without an errors file,
    /// nothing.
    pub fn error_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.errors.is_some() {
            self.errbuf.extend_from_slice(record);
            self.errbuf.push(b'\n');
            self.err_len += record.len() as u64 + 1;
            if self.errbuf.len() >= PIECE {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Every input line before `lines` (counted from the start of the job, resumed
    /// runs included) has its output line or error record added.
    pub fn handled(&mut self, lines: u64) {
        self.handled = Progress {
            lines,
            output_bytes: self.out_len,
            errors_bytes: self.err_len,
        };
    }

    /// Flush if the last flush was long enough ago.
    pub fn flush_if_due(&mut self) -> io::Result<()> {
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Write what is gathered, then the journal.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(kind) = self.broken {
            return Err(kind.into());
        }
        self.last_flush = Instant::now();
        let result = self.write_out();
        if let Err(e) = &result {
            self.broken = Some(e.kind());
        }
        result
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        if let Some(errors) = &mut self.errors {
            if !self.errbuf.is_empty() {
                errors.write_all(&self.errbuf)?;
                self.errbuf.clear();
            }
        }
        if let Some(journal) = &mut self.journal {
            journal.record(self.handled)?;
        }
        Ok(())
    }

    /// The job completed: flush, and remove the journal.
    pub fn complete(&mut self) -> io::Result<()> {
        self.flush()?;
        if let Some(journal) = self.journal.take() {
            journal.remove()?;
        }
        Ok(())
    }

    /// Whether a write failed because the reader of the output went away.
    pub fn is_broken_pipe(&self) -> bool {
        self.broken == Some(io::ErrorKind::BrokenPipe)
    }
}
