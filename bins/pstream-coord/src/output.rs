//! Where results go: the output (file or stdout), the errors file, and the resume
//! journal, written together so that they always agree.
//!
//! Results are gathered as whole lines and written in large pieces: when a piece
//! is full, and at least every [`FLUSH_INTERVAL`] (the ticker thread flushes while
//! the main thread waits for results). A piece is written whole or, when a write
//! fails part way (the disk is full, the file size limit is reached), the file is
//! cut back to its last whole line before the error is reported. The journal is
//! updated after the bytes it describes are written, so it vouches only for whole
//! lines. (A SIGKILL can still cut a write short: the kernel stops a write between
//! pages for a fatal signal. Such a torn last line lies past what the journal
//! vouches for, and `--resume` cuts it off.)

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use crate::input::Fingerprinter;
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
    /// The input's fingerprint for the journal.
    fingerprinter: Option<Fingerprinter>,
    /// Input lines handled before this run (skipped on resume).
    base: u64,
    /// When the journal was last recorded: it is recorded at most every
    /// [`FLUSH_INTERVAL`] while pieces are written, and at every explicit flush.
    last_record: Instant,
    /// Bytes of the output and errors files, written or gathered.
    out_len: u64,
    err_len: u64,
    /// The journal record for the lines handled so far; written at the next flush.
    handled: Progress,
    /// `handled` as of the last successful write: its bytes are all written.
    written: Progress,
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
        journal: Option<(Journal, Fingerprinter)>,
        handled: Progress,
    ) -> Sink {
        let (journal, fingerprinter) = journal.unzip();
        Sink {
            out,
            buf: Vec::with_capacity(PIECE + 4096),
            errors,
            errbuf: Vec::new(),
            journal,
            fingerprinter,
            base: handled.lines,
            last_record: Instant::now(),
            out_len: handled.output_bytes,
            err_len: handled.errors_bytes,
            handled,
            written: handled,
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
            self.write_piece()?;
        }
        Ok(())
    }

    /// Add bytes as they are: a command's output (`exec`, `pipe`), whole lines or
    /// not.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.out_len += bytes.len() as u64;
        if self.buf.len() >= PIECE {
            self.write_piece()?;
        }
        Ok(())
    }

    /// Add a result line after its input line and a tab (`--tag`).
    pub fn tagged_result(&mut self, input: &[u8], bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(input);
        self.buf.push(b'\t');
        self.out_len += input.len() as u64 + 1;
        self.result(bytes)
    }

    /// Add an error record line (the newline is added here). Without an errors file,
    /// nothing.
    pub fn error_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.errors.is_some() {
            self.errbuf.extend_from_slice(record);
            self.errbuf.push(b'\n');
            self.err_len += record.len() as u64 + 1;
            if self.errbuf.len() >= PIECE {
                self.write_piece()?;
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
        self.write(true)
    }

    /// A piece is full: write what is gathered, and the journal if it is due.
    fn write_piece(&mut self) -> io::Result<()> {
        let due = self.last_record.elapsed() >= FLUSH_INTERVAL;
        self.write(due)
    }

    fn write(&mut self, record: bool) -> io::Result<()> {
        if let Some(kind) = self.broken {
            return Err(kind.into());
        }
        self.last_flush = Instant::now();
        let result = self.write_out(record);
        if let Err(e) = &result {
            self.broken = Some(e.kind());
        }
        result
    }

    fn write_out(&mut self, record: bool) -> io::Result<()> {
        if let Err(e) = self.write_files() {
            // What was written before is whole lines: let the journal vouch for it
            // (best effort: the disk may be full), so that --resume after making
            // room redoes as little as possible.
            let _ = self.record(self.written);
            return Err(e);
        }
        self.written = self.handled;
        if record {
            self.record(self.handled)
        } else {
            if let Some(fingerprinter) = &self.fingerprinter {
                // The chunks before the handled lines are not needed any more.
                fingerprinter.release(self.handled.lines - self.base);
            }
            Ok(())
        }
    }

    fn write_files(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_whole_lines(&mut self.out, &self.buf)?;
            self.buf.clear();
        }
        if let Some(errors) = &mut self.errors {
            if !self.errbuf.is_empty() {
                write_whole_lines(errors, &self.errbuf)?;
                self.errbuf.clear();
            }
        }
        Ok(())
    }

    /// Record `progress` in the journal (its bytes are written).
    fn record(&mut self, progress: Progress) -> io::Result<()> {
        let (Some(journal), Some(fingerprinter)) = (&mut self.journal, &self.fingerprinter) else {
            return Ok(());
        };
        if journal.records(progress) {
            return Ok(());
        }
        let input = fingerprinter
            .at(progress.lines - self.base)
            .ok_or_else(|| {
                io::Error::other("the input lines handled are not known (a bug of pstream-coord)")
            })?;
        journal.record(progress, input)?;
        self.last_record = Instant::now();
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

/// Write `lines` (whole lines) to `file`. If a write fails part way, a regular file
/// is cut back to the end of the last whole line written, so that it never ends
/// inside a line; the error is returned.
fn write_whole_lines(file: &mut File, lines: &[u8]) -> io::Result<()> {
    let mut done = 0;
    let error = loop {
        if done == lines.len() {
            return Ok(());
        }
        match file.write(&lines[done..]) {
            Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    let whole = lines[..done]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let torn = (done - whole) as u64;
    if torn == 0 || !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(error);
    }
    // Where the write ended (with O_APPEND, the end of the file), less the torn part.
    let cut = file
        .stream_position()
        .and_then(|end| {
            file.set_len(end - torn.min(end))
                .map(|()| end - torn.min(end))
        })
        .and_then(|len| file.seek(SeekFrom::Start(len)));
    match cut {
        Ok(_) => Err(error),
        Err(cut) => Err(io::Error::new(
            error.kind(),
            format!("{error} (and the file could not be cut back to its last whole line: {cut})"),
        )),
    }
}
