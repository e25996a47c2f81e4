//! The worker's side of `exec` and `pipe`: two functions, served by the launcher
//! re-executed as its workers, that run the job's command for an item (a block),
//! and the keeper that makes sure a command's process group dies with its worker.
//!
//! Each command runs in a process group of its own, with its stdout and stderr
//! read whole. Its stderr is written to the worker's (the launcher's) stderr in
//! one piece when it ends, so the stderr of commands running at once does not
//! interleave within an item. A non-zero exit or a signal is the item's failure:
//! its message names the exit code or the signal and quotes the last lines of
//! stderr.
//!
//! # The keeper
//!
//! A time limit (or a second Ctrl-C) kills the worker with SIGKILL, and its process
//! group with it; a command in a group of its own would outlive it, and so would
//! whatever the command started. So each worker starts, with its first command, a
//! keeper: the launcher's binary again, in a process group of its own, reading a
//! pipe from the worker. Each command, between fork and exec, writes its pid (its
//! process group's id) to that pipe; the worker writes it again, negated, once it
//! has reaped the command. When the worker dies, however it dies, the pipe's
//! write end closes (it is close-on-exec, so no command holds it), and the keeper
//! kills the process group of every command still registered, then exits.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use pstream_examples::Blob;

use super::spawn;
use super::template::Template;
use super::wire::{
    ExecItem, ExecOutcome, LineFailure, PipeItem, PipeOutcome, Ran, Settings, ENV_SETTINGS,
};

/// Set in the keeper's environment.
const ENV_KEEPER: &str = "PSTREAM_SHELL_KEEPER";

/// How many lines of a failed command's stderr its error message quotes, and at
/// most how many bytes of them.
const TAIL_LINES: usize = 5;
const TAIL_BYTES: usize = 1000;

/// A block's bisection stops once this many failing lines are located in it; the
/// parts still failing are reported whole.
pub const MAX_LOCATED: u64 = 32;

pstream::function! {
    /// Runs the command of `pstream-coord exec` for one item (the command comes in
    /// the worker's environment).
    pub fn shell_exec(item: ExecItem) -> Result<ExecOutcome, String> {
        exec_item(item)
    }
}

pstream::function! {
    /// Runs the command of `pstream-coord pipe` over one block of lines, and finds
    /// the lines it fails on.
    pub fn shell_pipe(item: PipeItem) -> Result<PipeOutcome, String> {
        pipe_item(item)
    }
}

/// The job's settings, read once from the environment.
#[derive(Debug)]
struct Job {
    settings: Settings,
    argv: Vec<OsString>,
    template: Template,
    /// Where the command's program is, looked up in PATH once (see [`resolve`]).
    program: Option<PathBuf>,
}

fn job() -> Result<&'static Job, String> {
    static JOB: OnceLock<Option<Job>> = OnceLock::new();
    JOB.get_or_init(|| {
        let settings = Settings::from_env(&std::env::var(ENV_SETTINGS).ok()?)?;
        let argv = settings.argv();
        if argv.is_empty() {
            return None;
        }
        Some(Job {
            template: Template::new(&argv),
            program: resolve(&argv[0]),
            argv,
            settings,
        })
    })
    .as_ref()
    .ok_or_else(|| {
        "this function runs the commands of `pstream-coord exec` and `pstream-coord pipe`; \
         use those subcommands"
            .to_string()
    })
}

fn exec_item(item: ExecItem) -> Result<ExecOutcome, String> {
    let job = job()?;
    let argv = job.template.expand(&item.item.0, item.line);
    // The program found once serves every item whose program is the template's.
    let program = job.program.as_deref().filter(|_| argv[0] == job.argv[0]);
    let (ran, stdout, stderr) = run(&argv, program, None);
    pass_stderr(&stderr);
    let stdout = if ran.error.is_some() {
        Vec::new()
    } else if job.settings.tag {
        tag(&item.item.0, &stdout)
    } else {
        stdout
    };
    Ok(ExecOutcome {
        ran,
        stdout: Blob(stdout),
    })
}

/// Each line of `output` prefixed with `item` and a tab.
fn tag(item: &[u8], output: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(output.len() + 16 * (item.len() + 1));
    for line in output.split_inclusive(|&b| b == b'\n') {
        tagged.extend_from_slice(item);
        tagged.push(b'\t');
        tagged.extend_from_slice(line);
    }
    tagged
}

fn pipe_item(item: PipeItem) -> Result<PipeOutcome, String> {
    let job = job()?;
    let data = &item.data.0;
    let separator = job.settings.separator;
    // Where each line starts; every line ends with the separator.
    let mut starts = vec![0];
    starts.extend(
        data.iter()
            .enumerate()
            .filter(|&(i, &b)| b == separator && i + 1 < data.len())
            .map(|(i, _)| i + 1),
    );
    let (ran, stdout, stderr) = run(&job.argv, job.program.as_deref(), Some(data));
    let mut bisect = Bisect {
        argv: &job.argv,
        program: job.program.as_deref(),
        data,
        starts: &starts,
        first_line: item.first_line,
        runs: 1,
        located: 0,
        output: Vec::new(),
        failures: Vec::new(),
    };
    match &ran.error {
        None => {
            pass_stderr(&stderr);
            bisect.output = stdout;
        }
        Some(error) if job.settings.bisect => bisect.split(0, starts.len(), error.clone()),
        Some(error) => bisect.fail(0, starts.len(), error.clone()),
    }
    Ok(PipeOutcome {
        ran,
        runs: bisect.runs,
        lines: starts.len() as u64,
        output: Blob(bisect.output),
        failures: bisect.failures,
    })
}

/// The search for the lines of a block that its command fails on.
struct Bisect<'a> {
    argv: &'a [OsString],
    program: Option<&'a Path>,
    data: &'a [u8],
    starts: &'a [usize],
    first_line: u64,
    runs: u64,
    /// Single failing lines found.
    located: u64,
    output: Vec<u8>,
    failures: Vec<LineFailure>,
}

impl Bisect<'_> {
    /// Lines `a..b` of the block (each with its separator).
    fn lines(&self, a: usize, b: usize) -> &[u8] {
        let end = self.starts.get(b).copied().unwrap_or(self.data.len());
        &self.data[self.starts[a]..end]
    }

    fn fail(&mut self, a: usize, b: usize, error: String) {
        self.failures.push(LineFailure {
            line: self.first_line + a as u64,
            lines: (b - a) as u64,
            input: Blob(self.lines(a, b).to_vec()),
            error,
        });
    }

    /// Lines `a..b` failed together with `error`: run their halves, keep the
    /// output of those that succeed, and go on into those that fail.
    fn split(&mut self, a: usize, b: usize, error: String) {
        if b - a == 1 {
            self.located += 1;
            return self.fail(a, b, error);
        }
        if self.located >= MAX_LOCATED {
            let error = format!(
                "{error} (lines {} to {} failed together; bisection stops after \
                 {MAX_LOCATED} failing lines in one block: give a smaller --block or \
                 --lines, or check what the command's exit status means)",
                self.first_line + a as u64,
                self.first_line + b as u64 - 1
            );
            return self.fail(a, b, error);
        }
        let mid = a + (b - a) / 2;
        for (x, y) in [(a, mid), (mid, b)] {
            let (ran, stdout, stderr) = run(self.argv, self.program, Some(self.lines(x, y)));
            self.runs += 1;
            match ran.error {
                None => {
                    pass_stderr(&stderr);
                    self.output.extend_from_slice(&stdout);
                }
                Some(error) => self.split(x, y, error),
            }
        }
    }
}

/// Write a command's stderr to ours, in one piece.
fn pass_stderr(stderr: &[u8]) {
    if !stderr.is_empty() {
        let _ = io::stderr().lock().write_all(stderr);
    }
}

/// Run `argv` (its program at `program` if it was looked up) with `stdin`
/// (nothing: /dev/null) in a process group of its own, registered with the
/// keeper; how it ran, its stdout and its stderr.
fn run(argv: &[OsString], program: Option<&Path>, stdin: Option<&[u8]>) -> (Ran, Vec<u8>, Vec<u8>) {
    let clock = Instant::now();
    let mut ran = Ran {
        start: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        sent: stdin.map_or(0, |s| s.len() as u64),
        ..Ran::default()
    };
    let keeper = keeper();
    let spawned = spawn::spawn(
        argv,
        program,
        ENV_SETTINGS,
        stdin.is_some(),
        keeper.map(AsRawFd::as_raw_fd),
    );
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            ran.exit = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            ran.error = Some(format!(
                "could not run {}: {e}",
                String::from_utf8_lossy(argv[0].as_bytes())
            ));
            ran.runtime = clock.elapsed().as_secs_f64();
            return (ran, Vec::new(), Vec::new());
        }
    };
    let pid = child.pid;
    let output = std::thread::scope(|scope| {
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that stops reading early gets the rest no more: EPIPE.
            scope.spawn(move || {
                let _ = pipe.write_all(data);
            });
        }
        let (read, status) = spawn::read_and_reap(&mut child.stdout, &mut child.stderr, pid);
        Ok::<_, io::Error>((status?, read?))
    });
    if let Some(keeper) = keeper {
        let _ = nix::unistd::write(keeper, &(-pid).to_le_bytes());
    }
    ran.runtime = clock.elapsed().as_secs_f64();
    let (status, (stdout, stderr)) = match output {
        Ok(output) => output,
        Err(e) => {
            ran.exit = -1;
            ran.error = Some(format!("could not wait for the command: {e}"));
            return (ran, Vec::new(), Vec::new());
        }
    };
    ran.received = stdout.len() as u64;
    if let Some(signal) = status.signal() {
        // As GNU parallel logs it: the exit value 0, the signal.
        ran.exit = 0;
        ran.signal = signal;
        let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
        ran.error = Some(with_tail(
            format!("killed by signal {signal} ({name})"),
            &stderr,
        ));
    } else {
        ran.exit = status.code().unwrap_or(-1);
        if ran.exit != 0 {
            ran.error = Some(with_tail(format!("exit code {}", ran.exit), &stderr));
        }
    }
    (ran, stdout, stderr)
}

/// Where `execvp` would find `program` (named without a slash) in PATH, looked up
/// once for the job instead of by every command: execvp tries each directory of
/// PATH in turn, an execve that fails per directory before the program's. `None`
/// (each command searches as usual) for a path, for a PATH with a relative
/// directory before the program's, and when it is not found (each command then
/// fails as it would have).
fn resolve(program: &OsStr) -> Option<PathBuf> {
    if program.is_empty() || program.as_bytes().contains(&b'/') {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        if !dir.is_absolute() {
            return None;
        }
        let candidate = dir.join(program);
        let runnable = std::fs::metadata(&candidate).is_ok_and(|m| m.is_file())
            && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok();
        if runnable {
            return Some(candidate);
        }
    }
    None
}

/// `what`, and the last lines of `stderr` if it has any.
fn with_tail(what: String, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return what;
    }
    let mut tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ");
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("…{}", &tail[cut..]);
    }
    format!("{what}; stderr: {tail}")
}

/// The write end of this worker's keeper's pipe; `None` if it could not start
/// (said once on stderr: the commands still run, without that guarantee).
fn keeper() -> Option<&'static OwnedFd> {
    static KEEPER: OnceLock<Option<OwnedFd>> = OnceLock::new();
    KEEPER
        .get_or_init(|| match start_keeper() {
            Ok(fd) => Some(fd),
            Err(e) => {
                eprintln!(
                    "pstream-coord worker {}: could not start the keeper of its commands' \
                     process groups ({e}): a command may outlive a killed worker",
                    std::process::id()
                );
                None
            }
        })
        .as_ref()
}

fn start_keeper() -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // This very binary: its main serves as the keeper before anything else.
    let mut cmd = Command::new("/proc/self/exe");
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    cmd.env(ENV_KEEPER, "1")
        .env_remove(ENV_SETTINGS)
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .process_group(0);
    // Not waited for: it exits after this worker has died (init reaps it).
    cmd.spawn()?;
    Ok(write)
}

/// In a process started as a keeper: keep the list of live commands' process
/// groups from stdin until it closes, kill those groups, and exit. Anywhere else,
/// return at once.
pub fn serve_if_keeper() {
    if std::env::var_os(ENV_KEEPER).is_none() {
        return;
    }
    let mut groups: Vec<i32> = Vec::new();
    let mut stdin = io::stdin().lock();
    let mut message = [0u8; 4];
    while stdin.read_exact(&mut message).is_ok() {
        let pid = i32::from_le_bytes(message);
        if pid > 0 {
            groups.push(pid);
        } else {
            groups.retain(|&g| g != -pid);
        }
    }
    for group in groups {
        let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_prefix_every_line() {
        assert_eq!(tag(b"f", b"a\nb\n"), b"f\ta\nf\tb\n");
        assert_eq!(tag(b"f", b"a\nb"), b"f\ta\nf\tb");
        assert_eq!(tag(b"f", b""), b"");
    }

    #[test]
    fn the_tail_of_stderr_is_quoted() {
        assert_eq!(with_tail("exit code 3".into(), b""), "exit code 3");
        assert_eq!(
            with_tail("exit code 3".into(), b"1\n2\n3\n4\n5\n6\n\n"),
            "exit code 3; stderr: 2 | 3 | 4 | 5 | 6"
        );
        let long = "x".repeat(5000);
        assert!(with_tail("e".into(), long.as_bytes()).len() < TAIL_BYTES + 40);
    }
}
