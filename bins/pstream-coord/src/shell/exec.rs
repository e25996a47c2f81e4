//! `exec`'s mode of the shared job machinery: an item per line, a command per item,
//! the command's stdout as the item's output.

use std::ffi::OsString;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use pstream::{Codec, ItemError, ItemErrorKind, PoolBuilder};
use pstream_examples::Blob;

use super::joblog::{self, Joblog, Row};
use super::template::{command_line, Template};
use super::wire::{ExecItem, ExecOutcome, Ran, Settings, ENV_SETTINGS};
use crate::input::{Answered, Chunk, Consumed, Line, Lines, Pending};
use crate::run::{error_record, Handled, Mode, Outcome};
use crate::signals::Stop;

#[derive(Debug)]
pub struct ExecMode {
    pub settings: Settings,
    pub template: Template,
    pub answered: Option<Answered>,
    /// The job log, once the job has started.
    pub joblog: Option<Joblog>,
    pub joblog_path: Option<std::path::PathBuf>,
    pub resume: bool,
}

impl ExecMode {
    fn log(&mut self, line: u64, item: Option<&[u8]>, ran: &Ran) -> std::io::Result<()> {
        let Some(joblog) = &mut self.joblog else {
            return Ok(());
        };
        let argv: Vec<OsString> = match item {
            Some(item) => self.template.expand(item, line),
            None => Vec::new(),
        };
        joblog.write(&Row {
            seq: line,
            start: ran.start,
            runtime: ran.runtime,
            sent: ran.sent,
            received: ran.received,
            exit: ran.exit,
            signal: ran.signal,
            command: command_line(&argv),
        })
    }
}

/// The items: each line with its line number.
#[derive(Debug)]
pub struct ExecItems {
    lines: Lines,
    next_line: u64,
}

impl Iterator for ExecItems {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let line: Line = self.lines.next()?;
        let item = ExecItem {
            line: self.next_line,
            item: Blob(line.as_ref().to_vec()),
        };
        self.next_line += 1;
        let mut bytes = Vec::with_capacity(line.as_ref().len() + 16);
        pstream::protocol::encode_bincode(&item, &mut bytes).expect("an item encodes");
        Some(bytes)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.lines.size_hint().0, None)
    }
}

impl Mode for ExecMode {
    type Item = Vec<u8>;
    type Items = ExecItems;

    fn function(&self) -> &str {
        "shell_exec"
    }

    fn codec(&self) -> Codec {
        Codec::Bincode
    }

    fn configure(&self, builder: PoolBuilder) -> PoolBuilder {
        // An item per batch: commands take long enough that the round trip does
        // not count, and a slow command then holds up nothing queued behind it.
        builder
            .env(ENV_SETTINGS, self.settings.to_env())
            .max_batch(1)
    }

    fn written_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.joblog_path
            .iter()
            .map(|p| (format!("the job log (--joblog {})", p.display()), p.clone()))
            .collect()
    }

    fn identity(&self) -> serde_json::Value {
        serde_json::json!({ "exec": self.settings.to_env() })
    }

    fn items(
        &mut self,
        chunks: Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        consumed: Option<Arc<Consumed>>,
        base: u64,
    ) -> ExecItems {
        let pending = Arc::new(Pending::default());
        self.answered = Some(Answered::new(Arc::clone(&pending)));
        if let Some(path) = &self.joblog_path {
            // Opened only now: the job has passed every check, and its outputs are
            // open. A log that cannot be opened is reported and not written.
            match Joblog::open(path, self.resume) {
                Ok(log) => self.joblog = Some(log),
                Err(e) => crate::stdio::say(&e.report()),
            }
        }
        ExecItems {
            lines: Lines::new(chunks, stop, pending, consumed),
            next_line: base + 1,
        }
    }

    fn result(
        &mut self,
        index: u64,
        result: Result<&[u8], &ItemError>,
        out: &mut Outcome<'_>,
    ) -> Handled {
        let line = out.base + index + 1;
        let answered = self.answered.as_mut().expect("items before results");
        let outcome = result.map(pstream::protocol::decode_bincode::<ExecOutcome>);
        match outcome {
            Ok(Ok((outcome, _))) if outcome.ran.error.is_none() => {
                let item = self.joblog.is_some().then(|| answered.answer(index, true));
                if item.is_none() {
                    answered.answer(index, false);
                }
                let logged = self.log(line, item.flatten().as_deref(), &outcome.ran);
                let written = out.sink.lock().unwrap().raw(&outcome.stdout.0);
                Handled {
                    ok: 1,
                    failed: 0,
                    lines: line,
                    written: written.and(logged),
                }
            }
            Ok(Ok((outcome, _))) => {
                let text = answered.answer(index, true).unwrap_or_default();
                let error = outcome.ran.error.clone().unwrap_or_default();
                let record = error_record(line, &text, "failed", &error);
                let logged = self.log(line, Some(&text), &outcome.ran);
                Handled {
                    ok: 0,
                    failed: 1,
                    lines: line,
                    written: out
                        .failed(line, &text, "failed", &error, &record)
                        .and(logged),
                }
            }
            Ok(Err(e)) => {
                let text = answered.answer(index, true).unwrap_or_default();
                let error = format!("the worker's answer could not be decoded: {e}");
                let record = error_record(line, &text, "decode", &error);
                Handled {
                    ok: 0,
                    failed: 1,
                    lines: line,
                    written: out.failed(line, &text, "decode", &error, &record),
                }
            }
            Err(e) => {
                let text = answered.answer(index, true).unwrap_or_default();
                let error = e.kind.to_string();
                let record = error_record(line, &text, e.kind.name(), &error);
                let ran = pool_failure(&e.kind);
                let logged = self.log(line, Some(&text), &ran);
                Handled {
                    ok: 0,
                    failed: 1,
                    lines: line,
                    written: out
                        .failed(line, &text, e.kind.name(), &error, &record)
                        .and(logged),
                }
            }
        }
    }
}

/// The job log's figures for a command the pool gave up on: a time limit (its
/// worker, and the command's process group, killed with SIGKILL) or a crash.
pub fn pool_failure(kind: &ItemErrorKind) -> Ran {
    let now = joblog::now();
    let runtime = match kind {
        ItemErrorKind::TimedOut { limit, .. } => limit.as_secs_f64(),
        _ => 0.0,
    };
    Ran {
        start: now - runtime,
        runtime,
        exit: -1,
        signal: nix::sys::signal::Signal::SIGKILL as i32,
        ..Ran::default()
    }
}
