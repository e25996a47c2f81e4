//! The command line: subcommands, options, and the parsers for durations and sizes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The launcher's default window, in lines. Larger than the library's 5,000 items:
/// the launcher reads its input on a thread of its own and writes on another, and
/// with 5,000 lines `pstream-coord run --function double --format jsonl` over
/// 5,000,000 lines took about 40 % longer and 35 % more CPU than with 20,000 (see
/// docs/benchmarks.md, stop 13).
pub const DEFAULT_WINDOW: u32 = 20_000;

/// Map a function over the lines of a file (or stdin) in a pool of worker processes.
///
/// Results come back in input order, memory stays flat however long the input is,
/// and an item that crashes or hangs its worker is reported and skipped instead of
/// taking the job down. Without --plugin, the example functions built into this
/// binary are served (see `pstream-coord functions`).
#[derive(Debug, Parser)]
#[command(name = "pstream-coord", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Shown after --help.
const EXIT_CODES: &str = concat!(
    "\
Exit codes:
  0    every item succeeded
  1    some items failed (see stderr and --errors)
  2    usage error (bad option, unknown function, nothing to resume)
  3    the job could not run (input, output, workers)
  130  stopped by SIGINT (Ctrl-C);  143  stopped by SIGTERM

Logs: set RUST_LOG (e.g. RUST_LOG=debug) to see the pool's tracing logs on stderr.
",
    documentation!()
);

/// Where the manual is: docs/cli.md, at the repository named in Cargo.toml (and in
/// the source). A macro, for `concat!`.
macro_rules! documentation {
    () => {
        concat!(
            "Documentation: ",
            env!("CARGO_PKG_REPOSITORY"),
            "/blob/main/docs/cli.md (docs/cli.md in the source)"
        )
    };
}
pub(crate) use documentation;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a function over every line of the input.
    #[command(after_help = EXIT_CODES)]
    Run(Box<RunArgs>),
    /// Run a command per input item, as `xargs`/`parallel CMD {}` do: `exec -- CMD
    /// [ARG...]` ({} is the item; without it the item is the last argument).
    #[command(after_help = crate::shell::cli::EXEC_HELP)]
    Exec(crate::shell::cli::ExecArgs),
    /// Feed blocks of input lines to a command's stdin, as `parallel --pipe` does,
    /// and concatenate its outputs in input order.
    #[command(after_help = crate::shell::cli::PIPE_HELP)]
    Pipe(crate::shell::cli::PipeArgs),
    /// List the functions a plugin serves, with their input and output types.
    Functions(FunctionsArgs),
}

#[derive(Debug, Args)]
pub struct FunctionsArgs {
    /// The plugin binary (default: the example functions built into pstream-coord).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,

    /// How long the plugin may take to start and connect.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The function to run (see `pstream-coord functions`).
    #[arg(long, short = 'f', value_name = "NAME")]
    pub function: String,

    /// The plugin binary serving the function (default: the example functions built
    /// into pstream-coord).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,

    /// How long a worker may take to start and connect; one that exits first is
    /// reported at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Read items from FILE, one per line (`-`: stdin).
    #[arg(long, short = 'i', value_name = "FILE", default_value = "-")]
    pub input: String,

    /// Items are separated by NUL bytes, not newlines (`find -print0`, file
    /// names with newlines in them).
    #[arg(long, short = '0')]
    pub null: bool,

    /// Write results to FILE, one per line (`-`: stdout).
    #[arg(long, short = 'o', value_name = "FILE", default_value = "-")]
    pub output: String,

    /// How lines become items and results become lines.
    #[arg(long, value_enum, default_value_t = Format::Lines)]
    pub format: Format,

    /// Worker processes on this machine (default: the number of CPUs; with
    /// --listen, 0: only workers that join).
    #[arg(long, short = 'j', value_name = "N")]
    pub workers: Option<u32>,

    /// Also take workers that join over TCP at ADDR (HOST:PORT, e.g. 0.0.0.0:7077
    /// or [::]:7077; port 0 = any free port). The address is printed on stderr.
    /// A worker joins with `PLUGIN --connect HOST:PORT --token-file FILE`.
    /// Needs --token-file (except with --ssh or --launcher slurm, where it says
    /// where the agents connect). See docs/cluster.md.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    #[command(flatten)]
    pub launch: LaunchArgs,

    /// The job's token for workers that join over TCP: a file of this user with
    /// mode 0600 holding 64 hexadecimal digits (made with a fresh token if it does
    /// not exist). Workers read the same file; the token never crosses the network.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// With --listen: how long to wait while no worker is connected (before the
    /// first joins, or after all are gone) before failing (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait_workers: Option<Duration>,

    /// With --listen, --ssh or --launcher slurm, and --workers 0: start the job
    /// once N workers have joined (default 1: at the first), so that it is spread
    /// over all of them; fails if fewer have joined after --wait-workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_workers: Option<u32>,

    /// Over TCP: the heartbeat interval each way (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,

    /// Over TCP: a worker heard nothing from for this long is lost and what it
    /// held is run elsewhere, uncharged; a worker whose coordinator is silent as
    /// long exits (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,

    /// How long the coordinator, and each worker between two batches, polls for
    /// the next frame before it sleeps, while frames come back to back: a sleep
    /// costs a wake-up, slow on virtual machines (default 300us, at most 5ms;
    /// 0: sleep at once, e.g. on a machine busy with other work).
    #[arg(long, value_name = "DURATION", value_parser = parse_spin)]
    pub spin: Option<Duration>,

    /// The most lines read ahead of the output (memory is O(window x line size));
    /// lower it for very long lines.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,

    /// Write results as they complete instead of in input order.
    #[arg(long)]
    pub unordered: bool,

    /// Write each output line after its input line and a tab (`INPUT<TAB>RESULT`),
    /// so that results can be tied to their inputs (with --unordered, say).
    #[arg(long)]
    pub tag: bool,

    /// Time limit per item, e.g. 30s, 500ms, 2m (default: none). A worker stuck
    /// longer is killed and the item reported as timed out. Also spelt
    /// --item-timeout, the library's name (PoolBuilder::item_timeout).
    #[arg(long, visible_alias = "item-timeout", value_name = "DURATION",
          value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// How many more times an item that crashed its worker or timed out is tried.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retries: u32,

    /// What a failed item does: `skip` reports it and goes on; `placeholder` reports
    /// it and writes a placeholder line in its place (empty in `lines` format, `null`
    /// in `jsonl`), so that output line N is input line N's; `fail` stops the job
    /// after writing every earlier result.
    #[arg(long, value_enum, default_value_t = OnError::Skip)]
    pub on_error: OnError,

    /// Write a JSON record per failed item to FILE, one per line:
    /// {"line": N, "input": "...", "kind": "...", "error": "..."}. The file is
    /// emptied first (with --resume, it is continued instead).
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

    /// Limit each worker's address space, e.g. 512M, 2G: an allocation bomb then
    /// fails in its worker instead of exhausting the machine.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// The largest message between the launcher and a worker, e.g. 256M: bounds
    /// one line and one result (default 64M; 4K to 4G). Both sides may allocate
    /// this much for one message.
    #[arg(long, value_name = "SIZE", value_parser = parse_frame_size)]
    pub max_frame: Option<u64>,
}

/// Who starts the workers: here, on other hosts (ssh, Slurm), or nobody.
#[derive(Debug, Clone, Default, Args)]
pub struct LaunchArgs {
    /// Who starts the workers: `local` (on this machine: the default), `ssh` (a
    /// host agent per --ssh host), `slurm` (an agent per node of the Slurm
    /// allocation, with srun: inside sbatch or salloc), `none` (nobody: workers
    /// join at --listen). See docs/cluster.md.
    #[arg(long, value_enum, value_name = "KIND")]
    pub launcher: Option<Launcher>,

    /// Start workers on these hosts over ssh: HOST[:N],... (N workers there;
    /// default --workers-per-host, else the host's CPUs), e.g. node1,me@node2:8.
    /// A host agent is started per host with the job's token on its stdin; the
    /// plugin must be at the same path there (or use --transfer). Implies
    /// --launcher ssh.
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub ssh: Vec<String>,

    /// Also the ssh hosts in FILE, one HOST[:N] per line (# comments).
    #[arg(long, value_name = "FILE")]
    pub ssh_hosts: Option<PathBuf>,

    /// The ssh program and its options, split like a shell would (default
    /// "ssh -o BatchMode=yes"), e.g. "ssh -p 2222 -i ~/.ssh/job_key".
    #[arg(long, value_name = "CMD")]
    pub ssh_command: Option<String>,

    /// Copy the plugin to each ssh host first, into a temporary directory that is
    /// removed at the end.
    #[arg(long)]
    pub transfer: bool,

    /// Workers per host for --ssh hosts without :N and for --launcher slurm
    /// (default: each host's own: SLURM_CPUS_ON_NODE there, else its CPU count);
    /// at most 4096, what one host agent runs.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(pstream::protocol::MAX_AGENT_WORKERS)))]
    pub workers_per_host: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Launcher {
    /// Workers on this machine.
    Local,
    /// A host agent per --ssh host.
    Ssh,
    /// An agent per node of the Slurm allocation, started with srun.
    Slurm,
    /// No workers but those that join at --listen.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Each line is a string item; a string result is written as a raw line, any
    /// other result as JSON.
    Lines,
    /// Each line is a JSON value; each result is one JSON value on one line.
    Jsonl,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Lines => "lines",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Report the item (stderr, --errors), write no output line for it, go on; exit 1
    /// at the end.
    Skip,
    /// Report the item (stderr, --errors), write a placeholder line for it (an empty
    /// line in `lines` format, `null` in `jsonl`; after the input and a tab with
    /// --tag), go on; exit 1 at the end. Output line N is then input line N's.
    Placeholder,
    /// Stop at the first failed item, after writing every earlier result; exit 1.
    Fail,
}

/// Whether progress is wanted: `Some(true)` forced on, `Some(false)` off, `None`
/// when stderr is a terminal.
impl RunArgs {
    pub fn progress_choice(&self) -> Option<bool> {
        if self.progress {
            Some(true)
        } else if self.no_progress {
            Some(false)
        } else {
            None
        }
    }
}

/// `--spin`: a duration of at most `pstream::MAX_SPIN`, or zero in any spelling
/// (`0`, `0us`, `0.0ms`).
pub fn parse_spin(s: &str) -> Result<Duration, String> {
    let seconds = duration_seconds(s)?;
    let spin = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|&spin| spin <= pstream::MAX_SPIN)
        .ok_or_else(|| {
            format!(
                "`{s}` is too long a spin (at most {:?}: polling longer costs more than the \
                 sleep it saves)",
                pstream::MAX_SPIN
            )
        })?;
    Ok(spin)
}

/// `250ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let seconds = duration_seconds(s)?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(format!("`{}` is not a usable time limit", s.trim()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration's number (digits and a point: never negative) times its unit, in
/// seconds; infinite if the number is too long for an `f64`.
fn duration_seconds(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 500ms, 2m)"))?;
    Ok(match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use us, ms, s, m or h)"
            ))
        }
    })
}

/// A worker's memory limit: a size of at least 1 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "`{s}` is too small for a worker process to start (at least 1M)"
        ));
    }
    Ok(bytes)
}

/// A frame limit: a size from 4 KiB to 4 GiB (what the pool accepts).
pub fn parse_frame_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if !(pstream::protocol::MIN_MAX_FRAME as u64..=u32::MAX as u64).contains(&bytes) {
        return Err(format!(
            "`{s}` is not a usable frame limit (from 4K to 4G, less one byte)"
        ));
    }
    Ok(bytes)
}

/// `1048576`, `512K`, `512M`, `2G`, `1GiB`, `64MB` (powers of 1024 in every case).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 512M or 2G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use K, M, G or T)"
            ))
        }
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn spins() {
        // Zero in any spelling of a duration: no polling.
        for zero in [
            "0", "0ms", "0s", " 0 ", "0us", "0µs", "0.0", "0.0ms", "0 ms", "00",
        ] {
            assert_eq!(parse_spin(zero), Ok(Duration::ZERO), "{zero:?}");
        }
        assert_eq!(parse_spin("300us"), Ok(Duration::from_micros(300)));
        assert_eq!(parse_spin("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_spin("5000us"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_spin("0.25ms"), Ok(Duration::from_micros(250)));
        // A zero followed by garbage is garbage, not zero.
        for bad in [
            "0banana", "0x", "0 weeks", "-1", "", "fast", "1e3us", ".", "0..0",
        ] {
            let err = parse_spin(bad).unwrap_err();
            assert!(
                err.contains("not a duration") || err.contains("unknown unit"),
                "{bad:?}: {err}"
            );
        }
        for long in ["5.0001ms", "1s", "6000us", &"9".repeat(400)] {
            let err = parse_spin(long).unwrap_err();
            assert!(err.contains("too long a spin"), "{long:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("12").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_frame_size("4K"), Ok(4096));
        assert_eq!(parse_frame_size("256M"), Ok(256 << 20));
        assert!(parse_frame_size("4095").is_err());
        assert!(parse_frame_size("4G").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
