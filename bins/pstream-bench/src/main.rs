//! pstream's benchmark harness.
//!
//! `pstream-bench [--quick] [--only SCENARIO...] [--runs N] [--charts DIR]` prints
//! markdown tables that put pstream next to a sequential loop, a rayon thread pool,
//! a minimal hand-written process pool (the floor a process pool can hope for) and
//! Python's `multiprocessing.Pool.imap`, then a summary against pstream's targets,
//! and writes an SVG chart of each scenario into DIR.
//!
//! The binary is its own worker: it links the example functions and calls
//! `pstream::init()` first, so pools re-execute it. It also re-executes itself with
//! hidden subcommands, as the reference pool's worker (`__ref-worker`) and as the
//! child whose peak memory is measured (`__rss`).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pstream_examples as _; // links the example functions into this binary's workers

mod chart;
mod cli;
mod machine;
mod python;
mod reference;
mod report;
mod scenarios;
mod shell;
mod tcp;
mod transfer;

/// The error type of the harness: anything that stops a measurement.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(
    name = "pstream-bench",
    about = "Benchmark pstream against sequential code, rayon, a reference pool and Python"
)]
struct Cli {
    /// Smaller inputs and no 100M-item memory run: a first look in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (default: all, in order).
    #[arg(long, value_enum, num_args = 1..)]
    only: Vec<Scenario>,
    /// Runs per measurement; the tables show the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Write an SVG chart of each scenario's figures into DIR (`just bench` passes
    /// docs/bench, where docs/benchmarks.md embeds them).
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    charts: std::path::PathBuf,
    /// Write no charts (overrides --charts).
    #[arg(long)]
    no_charts: bool,
    #[command(subcommand)]
    hidden: Option<Hidden>,
}

/// The scenarios, in order of importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `double` over 10M i64: pstream vs sequential, rayon, the reference pool, Python.
    Double,
    /// SHA-256 over 1M 1 KiB items: pstream vs sequential and rayon.
    Sha,
    /// `slow_double` (~20 µs of CPU per item): scaling with the number of cores.
    Scaling,
    /// The coordinator's peak RSS mapping 1M, 10M and 100M items.
    Rss,
    /// Starting a pool, and the first result of a map.
    Latency,
    /// `slow_double` with a worker SIGKILLed every second.
    Fire,
    /// The command-line launcher `pstream-coord` against GNU parallel, xargs, Python
    /// and awk (needs `target/release/pstream-coord`).
    Cli,
    /// Shell commands: `pstream-coord exec` and `pipe` against GNU parallel and
    /// `xargs -P` (needs `target/release/pstream-coord`).
    Shell,
    /// The `Executor` API: `ThreadExecutor` and `ProcessExecutor` on `double` and
    /// SHA-256, next to rayon's `par_bridge` and a sequential loop.
    Executors,
    /// Workers on other hosts (network namespaces) over TCP: `double` against the
    /// Unix socket, SHA-256 through a 1 Gbit/s link, 512 workers on 16 hosts
    /// (needs root, `ip` and `tc`; skipped otherwise).
    Tcp,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::Double,
        Scenario::Sha,
        Scenario::Scaling,
        Scenario::Rss,
        Scenario::Latency,
        Scenario::Fire,
        Scenario::Cli,
        Scenario::Executors,
        Scenario::Shell,
        Scenario::Tcp,
    ];
}

/// Internal entry points: the bench re-executing itself.
#[derive(Debug, Subcommand)]
enum Hidden {
    /// Serve as a worker of the reference pool, connected to the socket at PATH.
    #[command(name = "__ref-worker", hide = true)]
    RefWorker { path: std::path::PathBuf },
    /// Map `double` over N items with W workers and print this process's peak RSS.
    #[command(name = "__rss", hide = true)]
    Rss { items: u64, workers: usize },
    /// Run the reference pool alone over N items with W workers (for profiling).
    #[command(name = "__ref", hide = true)]
    Ref { items: u64, workers: usize },
    /// Map `double` over N items with W workers, a window of WINDOW items and
    /// batches of at most MAX_BATCH (the pool's defaults if not given) and print the
    /// time (for profiling).
    #[command(name = "__double", hide = true)]
    Double {
        items: u64,
        workers: usize,
        window: Option<usize>,
        max_batch: Option<usize>,
    },
    /// Map SHA-256 over N items of 1 KiB with W workers and print the time (for
    /// profiling), optionally with a window of BYTES bytes; the CPU per item of
    /// each process goes to stderr.
    #[command(name = "__sha", hide = true)]
    Sha {
        items: u64,
        workers: usize,
        window_bytes: Option<u64>,
    },
    /// Carry N items of 1 KiB from one thread to another through a Unix socket (in
    /// batches of KIB KiB, IN_FLIGHT batches outstanding) and through shared slots
    /// with a control message, ROUNDS times alternating: CPU per item on each side.
    #[command(name = "__transfer", hide = true)]
    Transfer {
        items: u64,
        #[arg(default_value_t = 256)]
        kib: usize,
        #[arg(default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
        in_flight: u8,
        #[arg(default_value_t = 3)]
        rounds: usize,
    },
}

/// How big the inputs are, and how often each measurement is repeated.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Runs per measurement.
    pub runs: usize,
    /// Worker processes (and rayon threads): the number of cores.
    pub workers: usize,
    /// Whether `--quick` was given.
    pub quick: bool,
}

impl Settings {
    /// Runs for a measurement whose ratio against a target sits within this
    /// machine's round-to-round noise (`double` against the reference pool, over TCP
    /// against the Unix socket: ±30 % between rounds of the same binary, see
    /// docs/benchmarks.md): at least [`RATIO_RUNS`], so that one slow round moves
    /// the median less. Not in `--quick`.
    pub fn ratio_runs(&self) -> usize {
        if self.quick {
            self.runs
        } else {
            self.runs.max(RATIO_RUNS)
        }
    }
}

/// The fewest runs of a measurement behind a ratio that sits in the noise.
pub const RATIO_RUNS: usize = 7;

fn main() -> ExitCode {
    pstream::init(); // a pool's worker serves here and never returns
    let cli = Cli::parse();
    let result = match cli.hidden {
        Some(Hidden::RefWorker { path }) => reference::serve(&path),
        Some(Hidden::Rss { items, workers }) => scenarios::rss_child(items, workers),
        Some(Hidden::Ref { items, workers }) => reference::run_alone(items, workers),
        Some(Hidden::Double {
            items,
            workers,
            window,
            max_batch,
        }) => scenarios::double_alone(items, workers, window, max_batch),
        Some(Hidden::Sha {
            items,
            workers,
            window_bytes,
        }) => scenarios::sha_alone(items, workers, window_bytes),
        Some(Hidden::Transfer {
            items,
            kib,
            in_flight,
            rounds,
        }) => transfer::run(items, kib, in_flight as usize, rounds),
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("pstream-bench: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), BoxError> {
    let settings = Settings {
        runs: cli.runs as usize,
        workers: machine::cores(),
        quick: cli.quick,
    };
    machine::print_header(&settings);
    let mut summary = report::Summary::default();
    for scenario in Scenario::ALL {
        if !cli.only.is_empty() && !cli.only.contains(&scenario) {
            continue;
        }
        scenarios::run(scenario, &settings, &mut summary)?;
        for chart in summary.take_charts() {
            if !cli.no_charts {
                let path = chart.write(&cli.charts)?;
                println!("- chart: {}", path.display());
                println!();
            }
        }
    }
    summary.print();
    println!(
        "- effective parallelism at the end: {:.2} of {}",
        machine::effective_parallelism(settings.workers),
        settings.workers
    );
    Ok(())
}
