//! `pstream-coord exec` and `pstream-coord pipe`: shell commands as the function,
//! for users of `xargs -P` and GNU parallel.
//!
//! Both run on the machinery `run` drives (input, output, errors, resume,
//! progress, signals, the summary: `run::drive`), with a mode of their own
//! (`exec::ExecMode`, `pipe::PipeMode`). The commands are run by the pool's
//! workers (`worker`), so they are supervised, timed and isolated like any
//! function.

pub mod cli;
mod exec;
mod joblog;
mod pipe;
mod spawn;
mod template;
mod wire;
mod worker;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use crate::error::CliError;
use crate::signals::Signals;
use cli::{ExecArgs, PipeArgs};
use template::{command_line, Template};
use wire::Settings;

pub use worker::serve_if_keeper;

/// `exec`'s default window, in items: their outputs are held until written.
const EXEC_WINDOW: u32 = 256;

/// `pipe`'s default window, in blocks per worker.
const PIPE_WINDOW_PER_WORKER: u32 = 4;

/// `pstream-coord exec`.
pub fn exec(args: ExecArgs, signals: &Signals) -> Result<u8, CliError> {
    let job = &args.job;
    check_command(&args.command, job)?;
    let template = Template::new(&args.command);
    if job.dry_run {
        return dry_run(job, |line, item, out| {
            out.extend_from_slice(&command_line(&template.expand(item, line)));
            true
        });
    }
    let settings = Settings::new(&args.command, args.tag, false, job.separator());
    let run_args = job.run_args("shell_exec", EXEC_WINDOW);
    let mode = exec::ExecMode {
        settings,
        template,
        answered: None,
        joblog: None,
        joblog_path: job.joblog.clone(),
        resume: job.resume,
    };
    crate::run::drive(&run_args, signals, mode)
}

/// `pstream-coord pipe`.
pub fn pipe(args: PipeArgs, signals: &Signals) -> Result<u8, CliError> {
    let job = &args.job;
    check_command(&args.command, job)?;
    let cut = match args.lines {
        Some(n) => pipe::Cut::Lines(n),
        None => pipe::Cut::Bytes(args.block),
    };
    if job.dry_run {
        // A line per block.
        let command = command_line(&args.command);
        let (mut size, mut lines) = (0u64, 0u64);
        let mut out = Vec::new();
        let flush = |out: &mut Vec<u8>| {
            out.extend_from_slice(&command);
            out.push(b'\n');
        };
        let result = for_each_item(job, |_, item| {
            let len = item.len() as u64 + 1;
            let full = match cut {
                pipe::Cut::Bytes(max) => lines > 0 && size + len > max,
                pipe::Cut::Lines(max) => lines == max,
            };
            if full {
                flush(&mut out);
                (size, lines) = (0, 0);
            }
            size += len;
            lines += 1;
            true
        });
        if lines > 0 {
            flush(&mut out);
        }
        result?;
        return write_stdout(&out);
    }
    let settings = Settings::new(&args.command, false, !args.no_bisect, job.separator());
    let workers = job
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let window = job
        .window
        .unwrap_or(PIPE_WINDOW_PER_WORKER.saturating_mul(workers));
    let run_args = job.run_args("shell_pipe", window);
    let mode = pipe::PipeMode {
        settings,
        argv: args.command.clone(),
        cut,
        window,
        in_flight: Arc::new(Mutex::new(BTreeMap::new())),
        joblog: None,
        joblog_path: job.joblog.clone(),
        resume: job.resume,
    };
    crate::run::drive(&run_args, signals, mode)
}

fn check_command(argv: &[std::ffi::OsString], job: &cli::JobOptions) -> Result<(), CliError> {
    if job.on_error == crate::cli::OnError::Placeholder {
        return Err(CliError::Usage(
            "--on-error placeholder is for `run` (a line per input line): a command's output \
             is not one line; use skip or fail"
                .into(),
        ));
    }
    match argv.first() {
        Some(program) if !program.is_empty() => Ok(()),
        _ => Err(CliError::Usage(
            "no command given: write it after `--`, e.g. `pstream-coord exec -- sha256sum {}`"
                .into(),
        )),
    }
}

/// `--dry-run`: `line` gets each item with its number and appends what to print.
fn dry_run(
    job: &cli::JobOptions,
    mut line: impl FnMut(u64, &[u8], &mut Vec<u8>) -> bool,
) -> Result<u8, CliError> {
    let mut out = Vec::new();
    for_each_item(job, |n, item| {
        line(n, item, &mut out);
        out.push(b'\n');
        if out.len() >= 64 << 10 {
            if write_stdout(&out).is_err() {
                return false;
            }
            out.clear();
        }
        true
    })?;
    write_stdout(&out)
}

/// Call `f` with each item of the input and its line number, until it says stop.
fn for_each_item(
    job: &cli::JobOptions,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), CliError> {
    let input: Box<dyn Read> = if job.input == "-" {
        crate::stdio::refuse_closed(0)?;
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(&job.input)
                .map_err(|e| CliError::Run(format!("open the input {}", job.input), e.into()))?,
        )
    };
    let separator = job.separator();
    let mut reader = BufReader::with_capacity(64 << 10, input);
    let mut item = Vec::new();
    let mut n = 0;
    loop {
        item.clear();
        let read = reader
            .read_until(separator, &mut item)
            .map_err(|e| CliError::Run("read the input".into(), e.into()))?;
        if read == 0 {
            return Ok(());
        }
        if item.last() == Some(&separator) {
            item.pop();
        }
        n += 1;
        if !f(n, &item) {
            return Ok(());
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<u8, CliError> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Run("write the output".into(), e.into())),
    }
}
