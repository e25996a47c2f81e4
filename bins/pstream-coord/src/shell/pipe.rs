//! `pipe`'s mode of the shared job machinery: the lines cut into blocks, a command
//! per block fed the block on its stdin, its stdout as the block's output; the
//! lines a block fails on located by the worker (see `worker::Bisect`).
//!
//! Memory is bounded by the window of blocks: the blocks in flight (kept here
//! until answered, to quote them if their worker dies or they time out) and the
//! outputs waiting for an earlier one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use pstream::{Codec, ItemError, PoolBuilder};
use pstream_examples::Blob;

use super::exec::pool_failure;
use super::joblog::{Joblog, Row};
use super::template::command_line;
use super::wire::{PipeItem, PipeOutcome, Ran, Settings, ENV_SETTINGS};
use crate::input::{Chunk, Consumed, Line, Lines};
use crate::run::{error_record, Handled, Mode, Outcome};
use crate::signals::Stop;

/// How blocks are cut.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// About this many bytes of whole lines (a longer line alone).
    Bytes(u64),
    /// This many lines.
    Lines(u64),
}

/// A block in flight.
#[derive(Debug)]
pub struct Sent {
    first_line: u64,
    lines: u64,
    /// The block, encoded as it was sent.
    item: Arc<Vec<u8>>,
}

pub type InFlight = Arc<Mutex<BTreeMap<u64, Sent>>>;

#[derive(Debug)]
pub struct PipeMode {
    pub settings: Settings,
    pub argv: Vec<OsString>,
    pub cut: Cut,
    pub window: u32,
    pub in_flight: InFlight,
    pub joblog: Option<Joblog>,
    pub joblog_path: Option<std::path::PathBuf>,
    pub resume: bool,
}

/// Encoded blocks, shared with the list of blocks in flight.
#[derive(Debug, Clone)]
pub struct Block(Arc<Vec<u8>>);

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Cuts lines into blocks (also for `--dry-run`).
#[derive(Debug)]
pub struct Blocks<I> {
    lines: I,
    cut: Cut,
    separator: u8,
    /// A line read that did not fit in the last block.
    carry: Option<Line>,
    next_line: u64,
}

impl<I: Iterator<Item = Line>> Blocks<I> {
    /// The next block: its first line's number, its line count, its bytes.
    fn next_block(&mut self) -> Option<(u64, u64, Vec<u8>)> {
        let mut data = Vec::new();
        let mut n = 0u64;
        while let Some(line) = self.carry.take().or_else(|| self.lines.next()) {
            let len = line.as_ref().len() as u64 + 1;
            if let Cut::Bytes(size) = self.cut {
                if n > 0 && data.len() as u64 + len > size {
                    self.carry = Some(line);
                    break;
                }
            }
            data.extend_from_slice(line.as_ref());
            data.push(self.separator);
            n += 1;
            if matches!(self.cut, Cut::Lines(max) if n == max) {
                break;
            }
        }
        if n == 0 {
            return None;
        }
        let first = self.next_line;
        self.next_line += n;
        Some((first, n, data))
    }
}

impl<I: Iterator<Item = Line>> Blocks<I> {
    pub fn new(lines: I, cut: Cut, separator: u8, first_line: u64) -> Blocks<I> {
        Blocks {
            lines,
            cut,
            separator,
            carry: None,
            next_line: first_line,
        }
    }
}

/// The pool's items: encoded blocks, each registered as in flight.
#[derive(Debug)]
pub struct PipeItems {
    blocks: Blocks<Lines>,
    in_flight: InFlight,
    index: u64,
}

impl Iterator for PipeItems {
    type Item = Block;

    fn next(&mut self) -> Option<Block> {
        let (first_line, lines, data) = self.blocks.next_block()?;
        let item = PipeItem {
            first_line,
            data: Blob(data),
        };
        let mut bytes = Vec::with_capacity(item.data.0.len() + 32);
        pstream::protocol::encode_bincode(&item, &mut bytes).expect("a block encodes");
        let item = Arc::new(bytes);
        self.in_flight.lock().unwrap().insert(
            self.index,
            Sent {
                first_line,
                lines,
                item: Arc::clone(&item),
            },
        );
        self.index += 1;
        Some(Block(item))
    }
}

impl PipeMode {
    fn log(&mut self, seq: u64, ran: &Ran, sent: u64, received: u64) -> std::io::Result<()> {
        let Some(joblog) = &mut self.joblog else {
            return Ok(());
        };
        joblog.write(&Row {
            seq,
            start: ran.start,
            runtime: ran.runtime,
            sent,
            received,
            exit: ran.exit,
            signal: ran.signal,
            command: command_line(&self.argv),
        })
    }

    /// Report lines that failed: a message (the first few of a kind) and the
    /// record.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        out: &mut Outcome<'_>,
        line: u64,
        lines: u64,
        input: &[u8],
        kind: &str,
        error: &str,
        record: &str,
    ) -> std::io::Result<()> {
        let input = input
            .strip_suffix(&[self.settings.separator])
            .unwrap_or(input);
        if lines == 1 {
            out.failed(line, input, kind, error, record)
        } else {
            let error = format!("{error} (lines {line}-{})", line + lines - 1);
            out.failed(line, input, kind, &error, record)
        }
    }

    /// The record of lines that failed together: the text of the lines without
    /// the last separator (so `jq -r .input` gives them back), and with `lines`
    /// when there are more than one.
    fn record(&self, line: u64, lines: u64, input: &[u8], kind: &str, error: &str) -> String {
        let input = input
            .strip_suffix(&[self.settings.separator])
            .unwrap_or(input);
        let record = error_record(line, input, kind, error);
        if lines == 1 {
            record
        } else {
            let head = format!("{{\"line\":{line},");
            format!("{head}\"lines\":{lines},{}", &record[head.len()..])
        }
    }
}

impl Mode for PipeMode {
    type Item = Block;
    type Items = PipeItems;

    fn function(&self) -> &str {
        "shell_pipe"
    }

    fn codec(&self) -> Codec {
        Codec::Bincode
    }

    fn configure(&self, builder: PoolBuilder) -> PoolBuilder {
        let bytes = match self.cut {
            // The window of blocks, not a byte count, bounds what is read ahead.
            Cut::Bytes(size) => u64::from(self.window) * (size + 4096),
            Cut::Lines(_) => u64::MAX / 4,
        };
        builder
            .env(ENV_SETTINGS, self.settings.to_env())
            .max_batch(1)
            .window_bytes(bytes)
    }

    fn written_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.joblog_path
            .iter()
            .map(|p| (format!("the job log (--joblog {})", p.display()), p.clone()))
            .collect()
    }

    fn identity(&self) -> serde_json::Value {
        let cut = match self.cut {
            Cut::Bytes(n) => format!("block {n}"),
            Cut::Lines(n) => format!("lines {n}"),
        };
        serde_json::json!({ "pipe": self.settings.to_env(), "cut": cut })
    }

    fn items(
        &mut self,
        chunks: Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        consumed: Option<Arc<Consumed>>,
        base: u64,
    ) -> PipeItems {
        if let Some(path) = &self.joblog_path {
            match Joblog::open(path, self.resume) {
                Ok(log) => self.joblog = Some(log),
                Err(e) => crate::stdio::say(&e.report()),
            }
        }
        PipeItems {
            blocks: Blocks::new(
                Lines::unquoted(chunks, stop, consumed),
                self.cut,
                self.settings.separator,
                base + 1,
            ),
            in_flight: Arc::clone(&self.in_flight),
            index: 0,
        }
    }

    fn result(
        &mut self,
        index: u64,
        result: Result<&[u8], &ItemError>,
        out: &mut Outcome<'_>,
    ) -> Handled {
        let sent = self
            .in_flight
            .lock()
            .unwrap()
            .remove(&index)
            .expect("every answered block was sent");
        let last_line = sent.first_line + sent.lines - 1;
        let decoded = result.map(pstream::protocol::decode_bincode::<PipeOutcome>);
        let (outcome, failure) = match decoded {
            Ok(Ok((outcome, _))) => (Some(outcome), None),
            Ok(Err(e)) => (
                None,
                Some((
                    "decode",
                    format!("the worker's answer could not be decoded: {e}"),
                    Ran::default(),
                )),
            ),
            Err(e) => (
                None,
                Some((e.kind.name(), e.kind.to_string(), pool_failure(&e.kind))),
            ),
        };
        if let Some((kind, error, ran)) = failure {
            // The whole block: quoted from what was sent.
            let block = pstream::protocol::decode_bincode::<PipeItem>(&sent.item)
                .map(|(b, _)| b.data.0)
                .unwrap_or_default();
            let record = self.record(sent.first_line, sent.lines, &block, kind, &error);
            let written = self.report(
                out,
                sent.first_line,
                sent.lines,
                &block,
                kind,
                &error,
                &record,
            );
            let logged = self.log(index + 1, &ran, block.len() as u64, 0);
            return Handled {
                ok: 0,
                failed: sent.lines,
                lines: last_line,
                written: written.and(logged),
            };
        }
        let outcome = outcome.expect("decoded");
        let mut failed = 0;
        let mut written = Ok(());
        for f in &outcome.failures {
            failed += f.lines;
            let record = self.record(f.line, f.lines, &f.input.0, "failed", &f.error);
            let reported = self.report(
                out, f.line, f.lines, &f.input.0, "failed", &f.error, &record,
            );
            written = written.and(reported);
        }
        let written = written.and(out.sink.lock().unwrap().raw(&outcome.output.0));
        let sent_bytes = outcome.ran.sent;
        let logged = self.log(
            index + 1,
            &outcome.ran,
            sent_bytes,
            outcome.output.0.len() as u64,
        );
        Handled {
            ok: sent.lines.saturating_sub(failed),
            failed,
            lines: last_line,
            written: written.and(logged),
        }
    }
}
