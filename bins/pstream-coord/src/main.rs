//! `pstream-coord`: the command-line launcher. A thin binary over the `pstream`
//! library: arguments (`cli`), input (`input`), output and the resume journal
//! (`output`, `journal`), signals (`signals`), progress and the summary
//! (`progress`); `run` puts them together. Without `--plugin`, it re-executes
//! itself as the worker and serves the example functions linked into it.

mod clash;
mod cli;
mod error;
mod fingerprint;
mod input;
mod journal;
mod notices;
mod output;
mod progress;
mod run;
mod shell;
mod signals;
mod stdio;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pstream::ProcessPool;
use pstream_examples as _; // links the example functions in

use crate::cli::{Cli, Command, FunctionsArgs};
use crate::error::CliError;

fn main() -> ExitCode {
    // In a keeper of an exec/pipe worker's commands, this keeps them and exits.
    shell::serve_if_keeper();
    // In a re-executed worker, this serves the functions and never returns.
    pstream::init();
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Functions(args) => functions(&args),
        Command::Run(args) => with_signals(|signals| run::run(*args, signals)),
        Command::Exec(args) => with_signals(|signals| shell::exec(args, signals)),
        Command::Pipe(args) => with_signals(|signals| shell::pipe(args, signals)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::stdio::say(&e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

fn with_signals(
    job: impl FnOnce(&signals::Signals) -> Result<u8, CliError>,
) -> Result<u8, CliError> {
    match signals::Signals::install() {
        Ok(signals) => job(&signals),
        Err(e) => Err(CliError::Run("set up signal handling".into(), e.into())),
    }
}

/// Logs on stderr: nothing unless RUST_LOG asks (e.g. `RUST_LOG=debug`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `pstream-coord functions`: start one worker and print what it serves.
fn functions(args: &FunctionsArgs) -> Result<u8, CliError> {
    stdio::refuse_closed(1)?;
    let mut builder = ProcessPool::builder()
        .workers(1)
        .handshake_timeout(args.handshake_timeout);
    if let Some(plugin) = &args.plugin {
        builder = builder.program(plugin);
    }
    let pool = builder
        .build()
        .map_err(|e| run::start_error("start the plugin", e))?;
    let mut functions = pool.functions().to_vec();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let name_width = functions.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let input_width = functions
        .iter()
        .map(|f| f.input_type.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for f in &functions {
        text.push_str(&format!(
            "{:name_width$}  {:input_width$}  -> {}\n",
            f.name, f.input_type, f.output_type
        ));
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(0)
}
