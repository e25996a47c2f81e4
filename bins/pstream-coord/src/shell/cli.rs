//! The command lines of `exec` and `pipe`: the options every job shares (as `run`
//! has them) and their own.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::RunArgs;
use crate::cli::{parse_bytes, parse_duration, parse_frame_size, parse_size, Format, OnError};

/// Shown after `exec --help`.
pub const EXEC_HELP: &str = concat!(
    "\
Placeholders, in any argument: {} the item, {#} its line number, {/} its basename,
{//} its dirname, {.} the item without its extension, {/.} the basename without it.
Without any of them, the item is appended as the last argument. No shell is
involved: write `sh -c '...' _ {}` for one.

Examples:
  find . -type f -print0 | pstream-coord exec -0 -- sha256sum {}
  pstream-coord exec -i urls.txt --timeout 30s --joblog jobs.tsv -- curl -fsS {}
  ls *.png | pstream-coord exec -- convert {} {.}.jpg

",
    crate::cli::documentation!()
);

/// Shown after `pipe --help`.
pub const PIPE_HELP: &str = concat!(
    "\
Each block (--block SIZE of whole lines, or --lines N) is fed to a fresh CMD's
stdin; the outputs are written in input order. When CMD fails on a block, the
halves are run again, down to the lines that make it fail: those go to --errors
with their line numbers, every other line's output to the output. This assumes
that CMD's output for a block is the concatenation of its outputs for the block's
parts, as for line filters (awk, grep, sed, jq -c).

Example:
  seq 1 20000000 | pstream-coord pipe -- awk '{print $1*2}' > doubled.txt

",
    crate::cli::documentation!()
);

/// The options `exec` and `pipe` share with `run`.
#[derive(Debug, Args)]
pub struct JobOptions {
    /// Read items from FILE, one per line (`-`: stdin).
    #[arg(long, short = 'i', value_name = "FILE", default_value = "-")]
    pub input: String,

    /// Items are separated by NUL bytes, not newlines (`find -print0`, file
    /// names with newlines in them).
    #[arg(long, short = '0')]
    pub null: bool,

    /// Write the commands' outputs to FILE (`-`: stdout).
    #[arg(long, short = 'o', value_name = "FILE", default_value = "-")]
    pub output: String,

    /// Commands run at once: worker processes (default: the number of CPUs).
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,

    /// The most items (exec) or blocks (pipe) read ahead of the output; their
    /// outputs are held until written (default: exec 256, pipe 4 per worker).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub window: Option<u32>,

    /// Write outputs as commands finish instead of in input order.
    #[arg(long)]
    pub unordered: bool,

    /// Time limit per command (per block with pipe, bisection included), e.g.
    /// 30s, 500ms, 2m. The command's process group is killed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// How many more times an item whose command timed out (or whose worker
    /// crashed) is tried.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// What a failed item does: `skip` reports it and goes on; `fail` stops the job
    /// after writing every earlier output.
    #[arg(long, value_enum, default_value_t = OnError::Skip)]
    pub on_error: OnError,

    /// Write a JSON record per failed item (line) to FILE:
    /// {"line": N, "input": "...", "kind": "...", "error": "..."}.
    #[arg(long, value_name = "FILE")]
    pub errors: Option<PathBuf>,

    /// Continue an interrupted run whose output (and --errors) file is still there.
    #[arg(long)]
    pub resume: bool,

    /// Show progress on stderr even when it is not a terminal (as plain lines).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Show no progress bar.
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,

    /// Write the final figures (the summary line's) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,

    /// Limit each worker's address space (and so its commands'), e.g. 512M, 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// The largest message between the launcher and a worker (default 64M): it
    /// bounds one item's (block's) output.
    #[arg(long, value_name = "SIZE", value_parser = parse_frame_size)]
    pub max_frame: Option<u64>,

    /// Write GNU parallel's job log to FILE: Seq, Host, Starttime, JobRuntime,
    /// Send, Receive, Exitval, Signal, Command, tab-separated, with a header.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// Print the commands that would run, one per line, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl JobOptions {
    /// The shared options as `run`'s, for the machinery `run` drives; `window`
    /// is the mode's default window.
    pub fn run_args(&self, function: &str, window: u32) -> RunArgs {
        RunArgs {
            function: function.into(),
            plugin: None,
            // The launcher itself is the worker.
            handshake_timeout: Duration::from_secs(30),
            input: self.input.clone(),
            null: self.null,
            output: self.output.clone(),
            format: Format::Lines,
            // exec's --tag is the worker's: it tags each line of the output.
            tag: false,
            workers: self.workers,
            window: self.window.unwrap_or(window),
            unordered: self.unordered,
            timeout: self.timeout,
            retries: self.retries,
            on_error: self.on_error,
            errors: self.errors.clone(),
            resume: self.resume,
            progress: self.progress,
            no_progress: self.no_progress,
            stats_json: self.stats_json.clone(),
            memory_limit: self.memory_limit,
            max_frame: self.max_frame,
            listen: None,
            launch: Default::default(),
            token_file: None,
            wait_workers: None,
            min_workers: None,
            heartbeat: None,
            heartbeat_timeout: None,
            // Each item is a process (a millisecond or more): results come too
            // far apart for polling to find them, and the CPU it spends waiting
            // is taken from the commands (`exec true` went from 1.08× to 0.84×
            // `xargs -P2` with the default spin).
            spin: Some(Duration::ZERO),
        }
    }

    /// The line separator.
    pub fn separator(&self) -> u8 {
        if self.null {
            0
        } else {
            b'\n'
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub job: JobOptions,

    /// Prefix each output line with the item and a tab.
    #[arg(long)]
    pub tag: bool,

    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true,
          allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct PipeArgs {
    #[command(flatten)]
    pub job: JobOptions,

    /// Cut the input into blocks of about SIZE bytes of whole lines (a longer
    /// line is a block of its own), e.g. 1M, 256K.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_block)]
    pub block: u64,

    /// Cut the input into blocks of N lines instead.
    #[arg(long, short = 'L', value_name = "N", conflicts_with = "block",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lines: Option<u64>,

    /// When the command fails on a block, fail the whole block instead of finding
    /// the lines that make it fail.
    #[arg(long)]
    pub no_bisect: bool,

    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true,
          allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// A block size: at least a byte, at most 1 GiB.
fn parse_block(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if !(1..=1 << 30).contains(&bytes) {
        return Err(format!("`{s}` is not a usable block size (1 byte to 1G)"));
    }
    Ok(bytes)
}
