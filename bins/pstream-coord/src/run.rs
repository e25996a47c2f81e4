//! `pstream-coord run`: set up the input, the output and the pool, pump results from
//! the pool to the output, and report.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pstream::{
    Codec, HostLauncher, ItemError, ItemErrorKind, PoolBuilder, PoolError, ProcessPool, StatsProbe,
};
use serde_json::json;

use crate::clash;
use crate::cli::{Format, Launcher, OnError, RunArgs};
use crate::error::CliError;
use crate::fingerprint::{Fingerprint, Hashing, InputChanged};
use crate::input::{self, Answered, Chunk, Consumed, Fingerprinter, Lines, Pending, ReadStats};
use crate::journal::{Journal, Progress};
use crate::notices::Notices;
use crate::output::{Sink, FLUSH_INTERVAL};
use crate::progress::{Counters, Display, Summary};
use crate::signals::{exit_status, Signals, Stop};
use crate::stdio;
use crate::stdio::say;

/// How long workers get to exit when the pool shuts down before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Run the job; the exit code.
pub fn run(args: RunArgs, signals: &Signals) -> Result<u8, CliError> {
    let mode = FunctionMode {
        function: args.function.clone(),
        codec: match args.format {
            Format::Lines => Codec::Lines,
            Format::Jsonl => Codec::Json,
        },
        // What `--on-error placeholder` writes for a failed line.
        placeholder: (args.on_error == OnError::Placeholder).then_some(match args.format {
            Format::Lines => &b""[..],
            Format::Jsonl => &b"null"[..],
        }),
        tag: args.tag,
        answered: None,
    };
    drive(&args, signals, mode)
}

/// What a subcommand puts into the machinery every job shares (input, output,
/// errors, resume, progress, signals, the summary): the worker function, how the
/// lines read become the pool's items, and what a result writes. `run` maps a
/// function over lines; `exec` and `pipe` (crate::shell) run commands.
pub(crate) trait Mode {
    /// One item for the pool, encoded with [`Mode::codec`].
    type Item: AsRef<[u8]> + Send + 'static;
    /// The items made of the input's lines.
    type Items: Iterator<Item = Self::Item> + Send + 'static;

    /// The worker function.
    fn function(&self) -> &str;
    /// How items and results are encoded.
    fn codec(&self) -> Codec;
    /// Settings of the mode's own for the pool (on top of the shared options).
    fn configure(&self, builder: PoolBuilder) -> PoolBuilder {
        builder
    }
    /// Files of the mode's own that the job writes (named for messages): they must
    /// be neither the input nor another output.
    fn written_files(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }
    /// What identifies the job to the resume journal besides the shared fields
    /// (`null`: nothing).
    fn identity(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The items, from the chunks of lines the reader sends (`consumed`: where the
    /// chunks go for the journal's fingerprint); `base` lines were skipped by
    /// `--resume`.
    fn items(
        &mut self,
        chunks: mpsc::Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        consumed: Option<Arc<Consumed>>,
        base: u64,
    ) -> Self::Items;
    /// Write what item `index` gave (its output, its error record and message).
    fn result(
        &mut self,
        index: u64,
        result: Result<&[u8], &ItemError>,
        out: &mut Outcome<'_>,
    ) -> Handled;
}

/// Where a [`Mode`] writes a result.
#[derive(Debug)]
pub(crate) struct Outcome<'a> {
    pub sink: &'a Mutex<Sink>,
    pub display: &'a Mutex<Display>,
    pub notices: &'a mut Notices,
    /// Lines skipped by `--resume`: item line numbers count from there.
    pub base: u64,
}

impl Outcome<'_> {
    /// Report a failed line (or `lines` lines from `line`): its message on stderr
    /// (the first few of a kind), its record in `--errors`.
    pub fn failed(
        &mut self,
        line: u64,
        input: &[u8],
        kind: &str,
        message: &str,
        record: &str,
    ) -> io::Result<()> {
        if let Some(shown) = self.notices.failed(line, input, kind, message) {
            self.display.lock().unwrap().println(&shown);
        }
        self.sink.lock().unwrap().error_record(record.as_bytes())
    }
}

/// What one result amounted to.
#[derive(Debug)]
pub(crate) struct Handled {
    /// Input lines (items) that succeeded and failed in it.
    pub ok: u64,
    pub failed: u64,
    /// In ordered mode: every input line up to this one (counted from the start of
    /// the input) now has its output or error record.
    pub lines: u64,
    /// Whether the writes succeeded.
    pub written: io::Result<()>,
}

/// `run`'s mode: a named function over the lines, a result line per line.
#[derive(Debug)]
struct FunctionMode {
    function: String,
    codec: Codec,
    /// With `--on-error placeholder`: what a failed line gets as its result.
    placeholder: Option<&'static [u8]>,
    tag: bool,
    answered: Option<Answered>,
}

impl Mode for FunctionMode {
    type Item = input::Line;
    type Items = Lines;

    fn function(&self) -> &str {
        &self.function
    }

    fn codec(&self) -> Codec {
        self.codec
    }

    fn items(
        &mut self,
        chunks: mpsc::Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        consumed: Option<Arc<Consumed>>,
        _: u64,
    ) -> Lines {
        let pending = Arc::new(Pending::default());
        self.answered = Some(Answered::new(Arc::clone(&pending)));
        Lines::new(chunks, stop, pending, consumed)
    }

    fn result(
        &mut self,
        index: u64,
        result: Result<&[u8], &ItemError>,
        out: &mut Outcome<'_>,
    ) -> Handled {
        let line = out.base + index + 1;
        let answered = self.answered.as_mut().expect("items before results");
        match result {
            Ok(bytes) => {
                let input = answered.answer(index, self.tag);
                let mut sink = out.sink.lock().unwrap();
                let written = match &input {
                    Some(input) => sink.tagged_result(input, bytes),
                    None => sink.result(bytes),
                };
                Handled {
                    ok: 1,
                    failed: 0,
                    lines: line,
                    written,
                }
            }
            Err(e) => {
                let text = answered.answer(index, true).unwrap_or_default();
                let message = e.kind.to_string();
                let record = error_record(line, &text, e.kind.name(), &message);
                let mut written = out.failed(line, &text, e.kind.name(), &message, &record);
                if let (Some(placeholder), true) = (self.placeholder, written.is_ok()) {
                    let mut sink = out.sink.lock().unwrap();
                    written = if self.tag {
                        sink.tagged_result(&text, placeholder)
                    } else {
                        sink.result(placeholder)
                    };
                }
                Handled {
                    ok: 0,
                    failed: 1,
                    lines: line,
                    written,
                }
            }
        }
    }
}

/// Run a job of `mode` with the shared options of `args`; the exit code.
pub(crate) fn drive<M: Mode>(
    args: &RunArgs,
    signals: &Signals,
    mut mode: M,
) -> Result<u8, CliError> {
    let started = Instant::now();
    let stop = Arc::clone(&signals.stop);
    // Until the job runs, a second signal ends the launcher at once, with the
    // summary of a job that did nothing.
    signals.on_second({
        let (stop, stats_json) = (Arc::clone(&stop), args.stats_json.clone());
        move |signal| {
            let code = stopped_before_start(&stop, started, stats_json.as_deref(), signal);
            std::process::exit(code.into())
        }
    });
    if args.resume && args.output == "-" {
        return Err(CliError::Usage(
            "--resume needs the output in a file (--output FILE): it continues that file".into(),
        ));
    }
    if args.resume && args.unordered {
        return Err(CliError::Usage(
            "--resume works in ordered mode only: an unordered output has no point to \
             continue from; drop --unordered"
                .into(),
        ));
    }

    if args.output == "-" {
        stdio::refuse_closed(1)?;
    }
    let source = match open_input(&args.input, &stop)? {
        Ok(file) => file,
        // A signal while the open waited (a FIFO with no writer yet).
        Err(signal) => {
            let stats_json = args.stats_json.as_deref();
            return Ok(stopped_before_start(&stop, started, stats_json, signal));
        }
    };
    // Before anything is opened for writing: an output that is the input (or
    // another output) would be emptied.
    clash::check(args, &source, &mode.written_files())?;
    let pool = match build_pool(args, &mode, &stop)? {
        Some(pool) => Arc::new(pool),
        // A signal while the workers started (they may wait long: for the first to
        // join, up to --wait-workers): nothing was read or written.
        None => {
            let signal = stop.signal().unwrap_or(Signal::SIGINT);
            say(&format!(
                "pstream-coord: {}: stopped while the workers started; nothing was written",
                signal.as_str()
            ));
            let stats_json = args.stats_json.as_deref();
            return Ok(stopped_before_start(&stop, started, stats_json, signal));
        }
    };
    if !pool.functions().iter().any(|f| f.name == mode.function()) {
        return Err(unknown_function(
            mode.function(),
            &pool,
            args.plugin.as_deref(),
        ));
    }

    // The job, as the journal names it: the input is named by the fingerprint of
    // what was read of it, not by its path, so another spelling of the same file
    // (or the same data on stdin) resumes.
    let mut job = json!({
        "function": mode.function(),
        "plugin": args.plugin.as_ref().map(|p| p.display().to_string()),
        "format": args.format.name(),
        "errors": args.errors.as_deref().map(|p| clash::place(p).display().to_string()),
    });
    let identity = mode.identity();
    if !identity.is_null() {
        job["command"] = identity;
    }
    let ordered = !args.unordered;
    // An ordered run into a regular file keeps a journal (and fingerprints its
    // input for it); an unordered output has no point to resume from.
    // What changes the output's lines: a resumed run must not mix them. (Absent
    // when off, so journals written before these options still match.)
    if args.tag {
        job["tag"] = true.into();
    }
    if args.on_error == OnError::Placeholder {
        job["on_error"] = "placeholder".into();
    }
    let journaled = ordered
        && args.output != "-"
        && std::fs::metadata(&args.output).map_or(true, |m| m.is_file());
    let journal = journaled.then(|| Journal::for_output(Path::new(&args.output), job));
    let loaded = match &journal {
        Some(journal) if args.resume => journal.load()?,
        _ => None,
    };
    if let (Some(journal), None, true) = (&journal, &loaded, args.resume) {
        let path = Path::new(&args.output);
        if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 0 {
            return Err(CliError::Usage(format!(
                "nothing to resume: {} has no journal {} (the run that wrote it \
                 finished, or it was not written by pstream-coord); run without \
                 --resume to start over",
                path.display(),
                journal.path().display()
            )));
        }
    }
    let (resumed, expected) = loaded.unzip();
    let base = resumed.map_or(0, |p| p.lines);

    let separator = if args.null { 0 } else { b'\n' };
    let counters = Arc::new(Counters::default());
    let display = Arc::new(Mutex::new(Display::new(args.progress_choice())));
    if !matches!(*display.lock().unwrap(), Display::None) {
        // Only for the total and the ETA: the job does not wait for it. Only a
        // regular file can be counted without taking lines from the reader: it is
        // read with positional reads (pread) on a duplicate of the descriptor the
        // reader uses, never opened again (a second open of a pipe, a FIFO or
        // /dev/stdin would read the very data the job needs).
        if let Some(counted) = input::Countable::of(&source) {
            let counters = Arc::clone(&counters);
            let _ = std::thread::Builder::new()
                .name("pstream-coord-count".into())
                .spawn(move || {
                    if let Some(n) = counted.count_lines(separator) {
                        counters
                            .total
                            .store(n.saturating_sub(base), Ordering::Relaxed);
                    }
                });
        }
    }

    let read_stats = Arc::new(ReadStats::default());
    let checkpoints = Arc::new(Mutex::new(Vec::new()));
    let consumed = journaled.then(|| Arc::new(Consumed::default()));
    let hashing = journaled.then(|| Hashing::new(Arc::clone(&checkpoints), expected.clone()));
    let reader = input::start_reader(
        Box::new(source),
        base,
        separator,
        Arc::clone(&read_stats),
        hashing,
    )
    .map_err(|e| CliError::Run("start the input thread".into(), e.into()))?;
    // On resume, the skipped lines must be the ones the interrupted run handled:
    // nothing is written before they are read and compared.
    if let Some(signal) = wait_verified(&reader.verified, &stop)? {
        say(&format!(
            "pstream-coord: {}: stopped while reading the lines to skip; nothing was written",
            signal.as_str()
        ));
        return Ok(exit_status(signal));
    }

    // Only now touch the output: a mistyped function name or a changed input must
    // not empty it.
    let (out, errors, regular) = match open_outputs(args, resumed, &stop)? {
        Ok(opened) => opened,
        // A signal while an open waited (a FIFO with no reader yet).
        Err((signal, what)) => {
            say(&format!(
                "pstream-coord: {}: stopped while opening {what} for writing (a FIFO \
                 waits for a reader); nothing was written",
                signal.as_str()
            ));
            let stats_json = args.stats_json.as_deref();
            return Ok(stopped_before_start(&stop, started, stats_json, signal));
        }
    };
    let (journal, consumed) = match (journal, consumed) {
        (Some(mut journal), Some(consumed)) if regular => {
            if resumed.is_none() {
                // From the first moment, a killed run leaves a journal to resume from.
                journal
                    .record(Progress::default(), (Fingerprint::empty(), Vec::new()))
                    .map_err(|e| {
                        CliError::Run(format!("journal the output {}", args.output), e.into())
                    })?;
            }
            let resumed_input = expected.map_or_else(Fingerprint::empty, |e| e.handled);
            let fingerprinter =
                Fingerprinter::new(Arc::clone(&consumed), resumed_input, checkpoints);
            (Some((journal, fingerprinter)), Some(consumed))
        }
        _ => (None, None),
    };
    let sink = Arc::new(Mutex::new(Sink::new(
        out,
        errors,
        journal,
        resumed.unwrap_or_default(),
    )));

    let items = mode.items(reader.chunks, Arc::clone(&stop), consumed, base);
    let mut results = pool
        // The input is a pipe or a file that may grow: results must flow while a
        // read waits, so a thread of its own reads it.
        .input_thread()
        .map_raw(mode.function(), mode.codec(), ordered, items)
        .map_err(|e| pool_error(e, &pool, args.plugin.as_deref()))?;

    let report = Report {
        job: results.probe(),
        sink: Arc::clone(&sink),
        display: Arc::clone(&display),
        counters: Arc::clone(&counters),
        stats_json: args.stats_json.clone(),
        stop: Arc::clone(&stop),
        started,
        base,
    };
    signals.on_second({
        let pool = Arc::downgrade(&pool);
        let report = report.clone();
        move |signal| hard_stop(&pool, &report, signal)
    });
    let (ticker_done, ticker) = start_ticker(
        Arc::clone(&sink),
        Arc::clone(&display),
        (Arc::clone(&counters), results.probe()),
        Arc::clone(&stop),
        started,
    );

    // The pump.
    let mut write_error = None;
    let mut stopped_at_failure = false;
    let mut notices = Notices::default();
    while let Some((index, result)) = results.next_raw() {
        if let Err(e) = &result {
            if matches!(e.kind, ItemErrorKind::Aborted { .. }) {
                break;
            }
        }
        let mut outcome = Outcome {
            sink: &sink,
            display: &display,
            notices: &mut notices,
            base,
        };
        let handled = mode.result(index, result.as_ref().map(|b| *b), &mut outcome);
        counters.ok.fetch_add(handled.ok, Ordering::Relaxed);
        counters.failed.fetch_add(handled.failed, Ordering::Relaxed);
        if handled.failed > 0 && args.on_error == OnError::Fail {
            // This line is not handled: a resumed run tries it again.
            stopped_at_failure = true;
            stop.request();
            break;
        }
        if ordered {
            sink.lock().unwrap().handled(handled.lines);
        }
        let written = handled.written;
        if let Err(e) = written {
            write_error = Some(e);
            stop.request();
            break;
        }
    }

    let stats = results.stats();
    let failure = results.pool_error().map(|e| e.to_string());
    tracing::debug!(?stats, stop = stop.is_requested(), "results ended");
    // Cancels the job if it did not run to its end.
    drop(results);
    let _ = ticker_done.send(());
    let _ = ticker.join();
    tracing::debug!("job dropped, ticker stopped");

    let input_error = if read_stats.done.load(Ordering::Acquire) {
        reader.handle.join().ok().and_then(Result::err)
    } else {
        None // Still blocked in a read: the process exit ends it.
    };
    let signal = stop.signal();
    let completed = signal.is_none()
        && !stopped_at_failure
        && write_error.is_none()
        && failure.is_none()
        && input_error.is_none()
        && !sink.lock().unwrap().is_broken_pipe();
    let flushed = {
        let mut sink = sink.lock().unwrap();
        if completed {
            sink.complete()
        } else {
            sink.flush()
        }
    };
    let write_error = write_error.or(flushed.err());
    let broken_pipe = write_error
        .as_ref()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe);

    let failed = counters.failed.load(Ordering::Relaxed);
    let exit_code = if let Some(signal) = signal {
        exit_status(signal)
    } else if failure.is_some() || input_error.is_some() || (write_error.is_some() && !broken_pipe)
    {
        3
    } else if failed > 0 {
        1
    } else {
        0
    };
    let stopped_by = if let Some(signal) = signal {
        Some(signal.as_str().to_string())
    } else if stopped_at_failure {
        Some("an item failed (--on-error fail)".into())
    } else if broken_pipe {
        Some("the output was closed".into())
    } else {
        failure.clone()
    };
    let summary = Summary {
        ok: counters.ok.load(Ordering::Relaxed),
        failed,
        crashes: stats.crashes,
        timeouts: stats.timeouts,
        respawns: stats.respawns,
        retries: stats.retries,
        peak_in_flight: stats.peak_in_flight,
        resumed_from: base,
        elapsed: started.elapsed(),
        stopped_by,
        exit_code,
        lost: pool.stats().lost,
        hosts: pool.host_stats(),
    };
    display.lock().unwrap().finish();
    let pool_stats = pool.stats();
    if pool_stats.window_short {
        // Logs are off unless RUST_LOG says otherwise: say it here, once.
        eprintln!(
            "pstream-coord: the window ({} items) was too small to keep a worker's link \
             busy (round trip up to {:.1} ms; a worker needed about {} items in flight): \
             raise --window",
            args.window,
            pool_stats.max_rtt_us as f64 / 1000.0,
            pool_stats.max_credit
        );
    }
    // Unless a hard stop printed its summary already (then it exits the process
    // while this waits), or comes now (then it waits for this one, and exits).
    stop.report(|| {
        // A closed output (`| head`) ends the job quietly.
        if !broken_pipe {
            let errors_file = args.errors.as_ref().map(|p| p.display().to_string());
            for line in notices.summary(errors_file.as_deref()) {
                say(&line);
            }
            if let Some(e) = &failure {
                say(&format!("pstream-coord: failed to run the job: {e}"));
            }
            if let Some(e) = &input_error {
                say(&format!("pstream-coord: failed to read the input: {e}"));
            }
            if let Some(e) = &write_error {
                say(&format!("pstream-coord: failed to write the output: {e}"));
            }
            say(&summary.line());
        }
        report.write_stats(&summary);
        exit_code
    });
    drop(pool); // Waits for the workers to exit.
    tracing::debug!(exit_code, "pool shut down");
    Ok(exit_code)
}

/// `{"line": N, "input": "...", "kind": "...", "error": "..."}`, in that order. The
/// input is the line's text as a JSON string (whatever the format), so that
/// `jq -r .input` gives the failed lines back. A line that is not UTF-8 cannot be a
/// JSON string: its `input` has U+FFFD for the bytes that are not, and an
/// `input_base64` field after it carries the exact bytes.
pub(crate) fn error_record(line: u64, input: &[u8], kind: &str, error: &str) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    let input = match std::str::from_utf8(input) {
        Ok(text) => string(text),
        Err(_) => format!(
            "{},\"input_base64\":\"{}\"",
            string(&String::from_utf8_lossy(input)),
            base64(input)
        ),
    };
    format!(
        "{{\"line\":{line},\"input\":{input},\"kind\":{},\"error\":{}}}",
        string(kind),
        string(error)
    )
}

/// Standard base64 (RFC 4648, with padding), as `base64 -d` reads it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Open the input, once: everything else that needs it (the progress count, the
/// checks of the other file arguments) works on this descriptor.
/// A signal while the open waits (a FIFO waits for a writer) ends the wait: then
/// the signal.
fn open_input(input: &str, stop: &Stop) -> Result<Result<File, Signal>, CliError> {
    if input == "-" {
        stdio::refuse_closed(0)?;
        // A file of our own on fd 0: read without the standard library's stdin lock
        // and buffer.
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::Run("read stdin".into(), e.into()))?;
        return Ok(Ok(File::from(fd)));
    }
    let path = PathBuf::from(input);
    let opened = {
        let path = path.clone();
        stop.unless_stopped(move || File::open(path))
    };
    match opened {
        // A directory opens, and fails only at its first read, after the workers
        // started: refused here, by name.
        Ok(Ok(file)) if file.metadata().is_ok_and(|m| m.is_dir()) => Err(CliError::Usage(format!(
            "--input {}: a directory, not a file of items (one per line; - for stdin)",
            path.display()
        ))),
        Ok(Ok(file)) => Ok(Ok(file)),
        Ok(Err(e)) => Err(CliError::Run(
            format!("open the input {}", path.display()),
            e.into(),
        )),
        Err(signal) => Ok(Err(signal)),
    }
}

/// The pool, or `None` if a signal stopped its start.
fn build_pool(
    args: &RunArgs,
    mode: &impl Mode,
    stop: &Stop,
) -> Result<Option<ProcessPool>, CliError> {
    let mut builder = ProcessPool::builder()
        .interrupt(Arc::clone(&stop.requested))
        .window(args.window as usize)
        .retries(args.retries)
        // The pool is shut down only once every result the launcher wants is in (or
        // the job was abandoned): an idle worker exits at once, and one still busy
        // (a hung item, say) works for nothing, so it gets half a second, not 5 s.
        .shutdown_grace(SHUTDOWN_GRACE);
    let launcher = launcher_kind(args)?;
    let hosts = host_launcher(args, launcher)?;
    match (args.workers, launcher) {
        (Some(n), Launcher::None) if n > 0 => {
            return Err(CliError::Usage(format!(
                "--launcher none starts no worker, and --workers {n} asks for {n} here: \
                 drop one of them"
            )))
        }
        (Some(0), Launcher::Local) if args.listen.is_none() => {
            return Err(CliError::Usage(
                "--workers 0 starts no worker: give at least 1, or --listen ADDR for \
                 workers that join over the network, or --ssh HOSTS"
                    .into(),
            ))
        }
        (Some(n), _) => builder = builder.workers(n as usize),
        // Asked for by name: this machine's workers, also when listening.
        (None, Launcher::Local) if args.launch.launcher.is_some() => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            builder = builder.workers(cpus);
        }
        (None, _) => {}
    }
    if let Some(hosts) = hosts {
        builder = builder.launcher(hosts);
        if let Some(listen) = &args.listen {
            builder = builder.listen(listen_address(listen)?);
        }
        if let Some(token_file) = &args.token_file {
            ensure_token_file(token_file)?;
            builder = builder.token_file(token_file);
        }
        builder = network_settings(builder, args)?;
    } else if let Some(listen) = &args.listen {
        builder = listen_for_workers(builder, args, listen)?;
    } else if launcher == Launcher::None {
        return Err(CliError::Usage(
            "--launcher none starts no worker: give --listen ADDR and --token-file FILE \
             for the workers that join there"
                .into(),
        ));
    } else if let Some(n) = args.min_workers {
        return Err(CliError::Usage(format!(
            "--min-workers {n} waits for workers that join: give --listen ADDR (and \
             --token-file FILE), --ssh HOSTS or --launcher slurm"
        )));
    }
    if let Some(plugin) = &args.plugin {
        builder = builder.program(plugin);
    }
    if let Some(timeout) = args.timeout {
        builder = builder.item_timeout(timeout);
    }
    if let Some(limit) = args.memory_limit {
        builder = builder.memory_limit(limit);
    }
    if let Some(spin) = args.spin {
        builder = builder.spin(spin);
    }
    if let Some(bytes) = args.max_frame {
        // At most u32::MAX (checked by the parser): fits a usize on Linux.
        builder = builder.max_frame(bytes as usize);
    }
    match mode
        .configure(builder)
        .handshake_timeout(args.handshake_timeout)
        .build()
    {
        Ok(pool) => Ok(Some(pool)),
        Err(PoolError::Interrupted) => Ok(None),
        Err(e) => Err(start_error("start the workers", e)),
    }
}

/// A pool that did not start: a worker that did not connect in time gets a hint.
pub(crate) fn start_error(what: &str, e: PoolError) -> CliError {
    let slow = matches!(&e, PoolError::WorkerStart { reason, .. }
        if reason.starts_with("did not complete the handshake"));
    if slow {
        let message = format!(
            "{e}\n(is it a pstream plugin? one that takes longer to start needs a longer \
             --handshake-timeout)"
        );
        return CliError::Run(what.into(), message.into());
    }
    CliError::Run(what.into(), e.into())
}

/// Who starts the workers, from `--launcher`, `--ssh` and `--ssh-hosts`.
fn launcher_kind(args: &RunArgs) -> Result<Launcher, CliError> {
    let launch = &args.launch;
    let ssh_hosts = !launch.ssh.is_empty() || launch.ssh_hosts.is_some();
    let kind = match (launch.launcher, ssh_hosts) {
        (None, true) | (Some(Launcher::Ssh), true) => Launcher::Ssh,
        (Some(Launcher::Ssh), false) => {
            return Err(CliError::Usage(
                "--launcher ssh needs hosts: --ssh HOST[:N],... or --ssh-hosts FILE".into(),
            ))
        }
        (Some(other), true) => {
            return Err(CliError::Usage(format!(
                "--ssh and --ssh-hosts start workers over ssh, but --launcher {} was \
                 asked for: drop one of them",
                launcher_name(other)
            )))
        }
        (Some(kind), false) => kind,
        (None, false) => Launcher::Local,
    };
    let ssh_only = [
        (launch.ssh_command.is_some(), "--ssh-command"),
        (launch.transfer, "--transfer"),
    ];
    for (given, option) in ssh_only {
        if given && kind != Launcher::Ssh {
            return Err(CliError::Usage(format!(
                "{option} is for workers started over ssh: give --ssh HOSTS"
            )));
        }
    }
    if launch.workers_per_host.is_some() && !matches!(kind, Launcher::Ssh | Launcher::Slurm) {
        return Err(CliError::Usage(
            "--workers-per-host is for workers on other hosts: give --ssh HOSTS or \
             --launcher slurm"
                .into(),
        ));
    }
    Ok(kind)
}

fn launcher_name(kind: Launcher) -> &'static str {
    match kind {
        Launcher::Local => "local",
        Launcher::Ssh => "ssh",
        Launcher::Slurm => "slurm",
        Launcher::None => "none",
    }
}

/// The host agents of `--ssh` and `--launcher slurm`.
fn host_launcher(args: &RunArgs, kind: Launcher) -> Result<Option<HostLauncher>, CliError> {
    let launch = &args.launch;
    let usage = |e: PoolError| CliError::Usage(e.to_string());
    let mut hosts = match kind {
        Launcher::Ssh => {
            let mut hosts = HostLauncher::ssh(&launch.ssh).map_err(usage)?;
            if let Some(file) = &launch.ssh_hosts {
                hosts = hosts.ssh_hosts_file(file).map_err(usage)?;
            }
            if let Some(command) = &launch.ssh_command {
                hosts = hosts
                    .ssh_command(command)
                    .map_err(|e| CliError::Usage(format!("--ssh-command: {e}")))?;
            }
            let hosts = hosts.transfer(launch.transfer);
            eprintln!(
                "pstream-coord: starting a host agent over ssh on {} (the job's token on \
                 its stdin)",
                describe_hosts(launch)
            );
            hosts
        }
        Launcher::Slurm => {
            if std::env::var_os("SLURM_JOB_ID").is_none() {
                return Err(CliError::Usage(
                    "--launcher slurm runs inside a Slurm allocation, and SLURM_JOB_ID is \
                     not set here: submit a script that runs pstream-coord with `sbatch`, \
                     or run it under `salloc -N NODES` (see docs/cluster.md)"
                        .into(),
                ));
            }
            HostLauncher::slurm()
        }
        Launcher::Local | Launcher::None => return Ok(None),
    };
    if let Some(n) = launch.workers_per_host {
        hosts = hosts.workers_per_host(n as usize);
    }
    Ok(Some(hosts))
}

/// The ssh hosts, for the message that starts them.
fn describe_hosts(launch: &crate::cli::LaunchArgs) -> String {
    let mut named = launch.ssh.join(", ");
    if let Some(file) = &launch.ssh_hosts {
        if !named.is_empty() {
            named.push_str(" and ");
        }
        named.push_str(&format!("the hosts in {}", file.display()));
    }
    named
}

/// `--listen ADDR` as a socket address (the first it resolves to).
fn listen_address(listen: &str) -> Result<std::net::SocketAddr, CliError> {
    use std::net::ToSocketAddrs;
    listen
        .to_socket_addrs()
        .map_err(|e| CliError::Usage(format!("--listen {listen}: {e} (give HOST:PORT)")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("--listen {listen}: no address (give HOST:PORT)")))
}

/// Make the token file with a fresh token if it is missing; check it.
fn ensure_token_file(token_file: &Path) -> Result<(), CliError> {
    if let Err(e) = std::fs::symlink_metadata(token_file) {
        if e.kind() == io::ErrorKind::NotFound {
            pstream::protocol::auth::create_token_file(token_file)
                .map_err(|e| CliError::Run("make the token file".into(), e.into()))?;
            say(&format!(
                "pstream-coord: made the token file {} (mode 0600) with a fresh token; \
                 workers need a copy of it",
                token_file.display()
            ));
        }
    }
    // Checked now, so a bad file is a clear error before anything listens.
    pstream::protocol::auth::read_token_file(token_file)
        .map_err(|e| CliError::Usage(format!("--token-file: {e}")))?;
    Ok(())
}

/// `--min-workers`, `--wait-workers`, `--heartbeat`, `--heartbeat-timeout`.
fn network_settings(
    mut builder: pstream::PoolBuilder,
    args: &RunArgs,
) -> Result<pstream::PoolBuilder, CliError> {
    if let Some(n) = args.min_workers {
        builder = builder.min_workers(n as usize);
    }
    if let Some(wait) = args.wait_workers {
        builder = builder.wait_workers(wait);
    }
    let every = args.heartbeat.unwrap_or(pstream::DEFAULT_HEARTBEAT);
    let silence = args.heartbeat_timeout.unwrap_or(pstream::DEFAULT_SILENCE);
    if silence <= every {
        return Err(CliError::Usage(format!(
            "--heartbeat-timeout ({silence:?}) must be longer than --heartbeat ({every:?})"
        )));
    }
    Ok(builder.heartbeat(every, silence))
}

/// `--listen`: bind now, so the address is printed before the pool waits for the
/// workers that join there; read (or make) the token file.
fn listen_for_workers(
    mut builder: pstream::PoolBuilder,
    args: &RunArgs,
    listen: &str,
) -> Result<pstream::PoolBuilder, CliError> {
    let token_file = args.token_file.as_ref().ok_or_else(|| {
        CliError::Usage(
            "--listen needs --token-file FILE: the token the workers that join prove \
             they hold (made if it does not exist)"
                .into(),
        )
    })?;
    ensure_token_file(token_file)?;
    let addr = listen_address(listen)?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| CliError::Run(format!("listen on {listen}"), e.into()))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Run(format!("listen on {listen}"), e.into()))?;
    let plugin = args
        .plugin
        .as_ref()
        .map_or_else(|| "pstream-coord".to_string(), |p| p.display().to_string());
    say(&format!(
        "pstream-coord: listening on {bound}; workers join with: {plugin} --connect \
         HOST:{} --token-file {}",
        bound.port(),
        token_file.display()
    ));
    builder = builder.listener(listener).token_file(token_file);
    network_settings(builder, args)
}

fn served_by(plugin: Option<&Path>) -> String {
    match plugin {
        Some(p) => format!("the plugin {} serves", p.display()),
        None => "the built-in examples are".into(),
    }
}

fn unknown_function(name: &str, pool: &ProcessPool, plugin: Option<&Path>) -> CliError {
    let available: Vec<&str> = pool.functions().iter().map(|f| f.name.as_str()).collect();
    CliError::Usage(format!(
        "no function named `{name}`: {} {} (see `pstream-coord functions`)",
        served_by(plugin),
        available.join(", ")
    ))
}

fn pool_error(e: PoolError, pool: &ProcessPool, plugin: Option<&Path>) -> CliError {
    match e {
        PoolError::UnknownFunction { name, .. } => unknown_function(&name, pool, plugin),
        e => CliError::Run("start the job".into(), e.into()),
    }
}

/// Open (or continue, after `resumed`) the output and the errors file; and
/// whether the output is a regular file. Both files are opened before either is
/// emptied or cut back: an errors file that cannot be opened (a directory, say)
/// leaves the output as it was. A signal while an open waits (a FIFO waits for a
/// reader) ends the wait: then the signal and the file it was for.
#[allow(clippy::type_complexity)]
fn open_outputs(
    args: &RunArgs,
    resumed: Option<Progress>,
    stop: &Stop,
) -> Result<Result<(File, Option<File>, bool), (Signal, String)>, CliError> {
    let errors = match &args.errors {
        Some(path) => match open_errors(path, stop)? {
            Ok(file) => Some(file),
            Err(signal) => return Ok(Err((signal, format!("the errors file {}", path.display())))),
        },
        None => None,
    };
    if args.output == "-" {
        let fd = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::Run("write stdout".into(), e.into()))?;
        let errors = match (errors, &args.errors) {
            (Some(file), Some(path)) => Some(start_file(file, path, None)?),
            _ => None,
        };
        return Ok(Ok((File::from(fd), errors, false)));
    }
    let path = PathBuf::from(&args.output);
    let what = format!("the output {}", path.display());
    let opened = {
        let path = path.clone();
        stop.unless_stopped(move || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        })
    };
    let out = match opened {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => return Err(CliError::Run(format!("open {what}"), e.into())),
        Err(signal) => return Ok(Err((signal, what))),
    };
    // Only now is anything emptied or cut back.
    let regular = out.metadata().map(|m| m.is_file()).unwrap_or(false);
    let out = start_file(out, &path, resumed.map(|p| p.output_bytes))?;
    let errors = match (errors, &args.errors) {
        (Some(file), Some(errors)) => {
            Some(start_file(file, errors, resumed.map(|p| p.errors_bytes))?)
        }
        _ => None,
    };
    Ok(Ok((out, errors, regular)))
}

/// Wait until the reader has read the lines to skip and compared them with what
/// the journal recorded. `Some(signal)` if a signal came first; an error if the
/// input changed. (A read error ends the wait too: it is reported as the job's.)
fn wait_verified(
    verified: &mpsc::Receiver<Result<(), InputChanged>>,
    stop: &Stop,
) -> Result<Option<Signal>, CliError> {
    loop {
        match verified.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(())) | Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Ok(Err(changed)) => {
                return Err(CliError::Usage(format!(
                    "resume: the input is not the one the interrupted run read: {changed}; \
                     give that input again, or run without --resume to start over"
                )))
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(signal) = stop.signal() {
                    return Ok(Some(signal));
                }
            }
        }
    }
}

/// Open the errors file for writing, changing nothing in it yet; or the signal
/// that came while the open waited (a FIFO waits for a reader).
fn open_errors(path: &Path, stop: &Stop) -> Result<Result<File, Signal>, CliError> {
    let opened = {
        let path = path.to_path_buf();
        stop.unless_stopped(move || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        })
    };
    match opened {
        Ok(Ok(file)) => Ok(Ok(file)),
        Ok(Err(e)) => Err(CliError::Run(
            format!("open the errors file {}", path.display()),
            e.into(),
        )),
        Err(signal) => Ok(Err(signal)),
    }
}

/// Make an opened output or errors file ready to be written: a regular file is
/// emptied, or with `resume` cut back to that many bytes (what the journal vouches
/// for) and written from its end. Anything else (`/dev/null`, a terminal, a pipe)
/// is written as it is.
fn start_file(mut file: File, path: &Path, resume: Option<u64>) -> Result<File, CliError> {
    let regular = file
        .metadata()
        .map_err(|e| CliError::Run(format!("inspect {}", path.display()), e.into()))?
        .is_file();
    if !regular {
        return Ok(file);
    }
    match resume {
        Some(len) => cut_back(&mut file, path, len)?,
        None => file
            .set_len(0)
            .map_err(|e| CliError::Run(format!("empty {}", path.display()), e.into()))?,
    }
    Ok(file)
}

/// Cut `file` back to `len` bytes (what the journal vouches for) and go to its end.
fn cut_back(file: &mut File, path: &Path, len: u64) -> Result<(), CliError> {
    let actual = file
        .metadata()
        .map_err(|e| CliError::Run(format!("inspect {}", path.display()), e.into()))?
        .len();
    if actual < len {
        return Err(CliError::Run(
            format!("resume {}", path.display()),
            format!(
                "it holds {actual} bytes, fewer than the {len} its journal recorded: it was \
                 changed since; run without --resume to start over"
            )
            .into(),
        ));
    }
    file.set_len(len)
        .and_then(|()| file.seek(SeekFrom::End(0)).map(drop))
        .map_err(|e| CliError::Run(format!("cut back {}", path.display()), e.into()))
}

/// The ticker: flushes results that wait (the pump may be blocked waiting for the
/// next result) and redraws the progress, about ten times a second, with the
/// job's in-flight count and crashes read from its probe. A failed
/// write (a closed stdout) stops the job. It also tells the user that a first
/// signal was taken.
fn start_ticker(
    sink: Arc<Mutex<Sink>>,
    display: Arc<Mutex<Display>>,
    (counters, job): (Arc<Counters>, StatsProbe),
    stop: Arc<Stop>,
    started: Instant,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (done_tx, done) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("pstream-coord-ticker".into())
        .spawn(move || {
            let mut noticed = false;
            loop {
                match done.recv_timeout(FLUSH_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if sink.lock().unwrap().flush_if_due().is_err() {
                    stop.request();
                }
                let display = &mut *display.lock().unwrap();
                if let (Some(signal), false) = (stop.signal(), noticed) {
                    noticed = true;
                    display.println(&format!(
                        "pstream-coord: {}: stopping after the items in flight \
                         (again to stop at once)",
                        signal.as_str()
                    ));
                }
                // What is in flight and the crashes, from the job itself: the
                // pump may wait long for the next result (a hang, a crash storm).
                counters
                    .in_flight
                    .store(job.in_flight() as u64, Ordering::Relaxed);
                counters
                    .crashes
                    .store(job.stats().crashes, Ordering::Relaxed);
                display.update(&counters, started.elapsed());
            }
        })
        .expect("start the ticker thread");
    (done_tx, handle)
}

/// What both the normal end and a hard stop need to report.
#[derive(Debug, Clone)]
struct Report {
    /// The job's figures, readable while the pump waits for a result.
    job: StatsProbe,
    sink: Arc<Mutex<Sink>>,
    display: Arc<Mutex<Display>>,
    counters: Arc<Counters>,
    stats_json: Option<PathBuf>,
    stop: Arc<Stop>,
    started: Instant,
    base: u64,
}

impl Report {
    fn write_stats(&self, summary: &Summary) {
        write_stats(self.stats_json.as_deref(), summary);
    }
}

fn write_stats(path: Option<&Path>, summary: &Summary) {
    if let Some(path) = path {
        let text = format!("{:#}\n", summary.json());
        if let Err(e) = std::fs::write(path, text) {
            say(&format!(
                "pstream-coord: failed to write the statistics to {}: {e}",
                path.display()
            ));
        }
    }
}

/// The end of a job stopped by `signal` before it ran (nothing was read or
/// written): the summary, once; the exit code.
fn stopped_before_start(
    stop: &Stop,
    started: Instant,
    stats_json: Option<&Path>,
    signal: Signal,
) -> u8 {
    let first = stop.signal().unwrap_or(signal);
    let code = exit_status(first);
    stop.report(|| {
        let summary = Summary {
            ok: 0,
            failed: 0,
            crashes: 0,
            timeouts: 0,
            respawns: 0,
            retries: 0,
            peak_in_flight: 0,
            resumed_from: 0,
            elapsed: started.elapsed(),
            stopped_by: Some(first.as_str().to_string()),
            exit_code: code,
            lost: 0,
            hosts: Default::default(),
        };
        say(&summary.line());
        write_stats(stats_json, &summary);
        code
    })
}

/// A second Ctrl-C (or SIGTERM): kill the workers, write what is done, exit.
fn hard_stop(pool: &Weak<ProcessPool>, report: &Report, signal: Signal) {
    // The pool's figures for the summary: what its hosts did, the workers lost.
    let mut pool_figures = (0, Default::default());
    if let Some(pool) = pool.upgrade() {
        pool_figures = (pool.stats().lost, pool.host_stats());
        // SIGKILL to every worker's process group, and no respawns.
        pool.kill_workers();
        // The process exits without dropping the pool: remove its socket
        // directory here (the acceptor listens on to no purpose until the exit).
        if let Some(dir) = pool.socket_path().parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let first = report.stop.signal().unwrap_or(signal);
    let code = exit_status(first);
    // The pump may hold the output while it writes; wait a little, not forever.
    for _ in 0..100 {
        if let Ok(mut sink) = report.sink.try_lock() {
            let _ = sink.flush();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(display) = report.display.try_lock() {
        display.finish();
    }
    let c = &report.counters;
    let job = report.job.stats();
    // The process exits while it holds the report: the normal end, should it get
    // there now, prints nothing. If it printed already, its exit code stands.
    let code = report.stop.report(|| {
        let summary = Summary {
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            crashes: job.crashes,
            timeouts: job.timeouts,
            respawns: job.respawns,
            retries: job.retries,
            peak_in_flight: job.peak_in_flight,
            resumed_from: report.base,
            elapsed: report.started.elapsed(),
            stopped_by: Some(format!("{} twice: workers killed", first.as_str())),
            exit_code: code,
            lost: pool_figures.0,
            hosts: pool_figures.1,
        };
        say(&summary.line());
        report.write_stats(&summary);
        std::process::exit(code.into())
    });
    std::process::exit(code.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc_4648_gives_it() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"\xff\xfe\xfd", "//79"),
        ];
        for (bytes, text) in cases {
            assert_eq!(base64(bytes), text);
        }
    }

    #[test]
    fn error_records_are_json_with_the_fields_in_order() {
        let record = error_record(7, b"x\"y", "decode", "bad");
        assert_eq!(
            record,
            r#"{"line":7,"input":"x\"y","kind":"decode","error":"bad"}"#
        );
        let record: serde_json::Value =
            serde_json::from_str(&error_record(8, b"a\xffb", "failed", "e")).unwrap();
        assert_eq!(record["input"], "a\u{fffd}b");
        assert_eq!(record["input_base64"], "Yf9i");
    }
}
