//! The host agent: what ssh or `srun` starts on each host of a job. One process
//! per host, `PLUGIN --agent --connect HOST:PORT [--workers N] [--token-file F]`,
//! that joins the coordinator, starts the host's workers as its own children
//! (re-executed, each in its own process group, dying with the agent, under the
//! pool's memory limit), starts a new one whenever one ends, and reports each end
//! (exit code or signal, peak memory) to the coordinator, which judges it as it
//! judges a local worker's. When its connection ends, or the coordinator is silent
//! past the heartbeat limit, it kills its workers and exits.
//!
//! The workers join the coordinator themselves, over TCP, with the token the agent
//! hands them on a pipe (never in argv or the environment) and the agent's id in
//! their `Hello`. Each tells its agent that it was welcomed (a byte on a second
//! pipe), so that the agent can tell a start failure (backed off) from a crash
//! (replaced at once).

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use pstream_protocol::auth::Token;
use pstream_protocol::{
    read_frame, AgentJoin, ExitStatus, Frame, Message, WorkerExit, ARG_AGENT, ARG_CONNECT,
    ENV_AGENT, ENV_CAPACITY, ENV_CONNECT, ENV_MAX_FRAME, ENV_READY_FD, ENV_TOKEN_FD,
    ENV_TOKEN_FILE, MAX_AGENT_WORKERS,
};
use std::sync::mpsc::{channel as unbounded, Receiver, RecvTimeoutError, Sender};

use crate::error::WorkerError;
use crate::flags::next_flag;
use crate::serve::{connect_remote, introduce, send, Target, HANDSHAKE_PATIENCE};
use crate::spawn::HeldOutput;
use crate::stream::{arm_keepalive, Beats, Stream};

/// What the agent was asked to do.
#[derive(Debug)]
struct Args {
    addr: String,
    workers: u32,
    token: Token,
    /// `--until-stdin-ends`: the end of standard input (after the token) means
    /// that the job is over.
    until_stdin_ends: bool,
}

/// How an agent's run ended badly.
#[derive(Debug)]
enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Run(String),
}

const USAGE: &str = "a host agent takes --agent --connect HOST:PORT [--workers N] \
    [--token-file FILE] [--until-stdin-ends]; without --token-file (or PSTREAM_TOKEN_FILE) it reads the token \
    as one line from its standard input";

/// The agent's `main`: never returns. Exit 0 when the coordinator said
/// `Shutdown`, 1 when the connection ended otherwise or could not be made, 2 for
/// bad arguments.
pub(crate) fn run() -> ! {
    let code = match parse_args().and_then(serve) {
        Ok(()) => 0,
        Err(Failure::Usage(why)) => {
            eprintln!("pstream agent: {why}");
            2
        }
        Err(Failure::Run(why)) => {
            eprintln!("{}: {why}", who());
            1
        }
    };
    std::process::exit(code)
}

/// This host's name, as the kernel has it (empty if unreadable).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// How the agent names itself on its stderr: its host and pid, so that a line
/// among many hosts' (as srun or a terminal mixes them) says where it comes from.
fn who() -> String {
    format!(
        "pstream agent on {} (pid {})",
        hostname(),
        std::process::id()
    )
}

fn parse_args() -> Result<Args, Failure> {
    let usage = |why: String| Failure::Usage(format!("{why}; {USAGE}"));
    let mut addr = std::env::var(ENV_CONNECT).ok().filter(|a| !a.is_empty());
    let mut token_file = std::env::var_os(ENV_TOKEN_FILE).map(PathBuf::from);
    let mut workers: Option<u32> = None;
    let mut until_stdin_ends = false;
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(ARG_AGENT) {
        return Err(usage(format!("{ARG_AGENT} must come first")));
    }
    while let Some((name, mut flag)) = next_flag(&mut args) {
        let mut value = |what: &str| flag.get(&mut args, what).map_err(usage);
        match name.as_str() {
            ARG_CONNECT => addr = Some(value("an address, HOST:PORT")?),
            "--token-file" => token_file = Some(PathBuf::from(value("a file")?)),
            "--until-stdin-ends" => until_stdin_ends = true,
            "--workers" => {
                let v = value("a number of workers")?;
                let n =
                    v.parse::<u64>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                        usage(format!("--workers {v} is not a number of 1 or more"))
                    })?;
                workers = Some(within_cap(n, &format!("--workers {v}"), &usage)?);
            }
            "--token" => {
                return Err(usage(
                    "the token is never given on the command line, where `ps` shows it: \
                     pass --token-file FILE or write it to the agent's standard input"
                        .into(),
                ))
            }
            other => return Err(usage(format!("unknown argument `{other}`"))),
        }
    }
    let addr = addr.ok_or_else(|| usage(format!("{ARG_CONNECT} HOST:PORT is missing")))?;
    if !addr.contains(':') {
        return Err(usage(format!("{ARG_CONNECT} {addr} is not HOST:PORT")));
    }
    let workers = match workers {
        Some(n) => n,
        None => default_workers()?,
    };
    let token = match token_file {
        Some(file) => pstream_protocol::auth::read_token_file(&file)
            .map_err(|e| Failure::Usage(e.to_string()))?,
        None => token_from_stdin()?,
    };
    for name in [ENV_CONNECT, ENV_TOKEN_FILE] {
        std::env::remove_var(name);
    }
    Ok(Args {
        addr,
        workers,
        token,
        until_stdin_ends,
    })
}

/// Where the end of standard input is told, with `--until-stdin-ends`: the main
/// loop's channel once the agent is welcomed; before that, nowhere (the agent
/// exits at once: it started nothing yet).
static STDIN_ENDS: Mutex<Option<Sender<Heard>>> = Mutex::new(None);

/// Watch standard input (after the token's line) for its end, which the pool
/// that started this agent makes by closing its end of the pipe when the job is
/// over: an agent that has not joined yet (its coordinator's door already
/// closed, it would retry its connection for 30 s) exits 0 at once, quietly; one
/// that has joined takes it as `Shutdown` (which it heard already, as a rule).
fn watch_stdin() {
    let spawned = std::thread::Builder::new()
        .name("pstream-agent-stdin".into())
        .spawn(|| {
            let stdin = std::io::stdin();
            let mut buf = [0u8; 512];
            loop {
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(_) | Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                    Err(_) => break,
                }
            }
            let told = STDIN_ENDS.lock().unwrap_or_else(|e| e.into_inner());
            match told.as_ref() {
                Some(tx) => {
                    let _ = tx.send(Heard::Frame(Message::Shutdown));
                }
                // Under the lock: the main thread cannot start workers meanwhile.
                None => std::process::exit(0),
            }
        });
    if let Err(e) = spawned {
        eprintln!("{}: could not watch standard input: {e}", who());
    }
}

/// `n` workers, if at most [`MAX_AGENT_WORKERS`]; `what` names where it came from.
fn within_cap(n: u64, what: &str, usage: &dyn Fn(String) -> Failure) -> Result<u32, Failure> {
    if n > u64::from(MAX_AGENT_WORKERS) {
        return Err(usage(format!(
            "{what}: an agent runs at most {MAX_AGENT_WORKERS} workers (each is a process, \
             two threads of the agent and a connection to the coordinator); start \
             several agents on a host that needs more"
        )));
    }
    Ok(n as u32)
}

/// Workers by default: the CPUs Slurm gave this job on this node, else every CPU
/// this process may run on (at most [`MAX_AGENT_WORKERS`]).
fn default_workers() -> Result<u32, Failure> {
    if let Ok(v) = std::env::var("SLURM_CPUS_ON_NODE") {
        let n = v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "SLURM_CPUS_ON_NODE={v} is not a number of CPUs; pass --workers N"
                ))
            })?;
        let usage = |why: String| Failure::Usage(format!("{why}; pass --workers N"));
        return within_cap(n, &format!("SLURM_CPUS_ON_NODE={v}"), &usage);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    Ok(cpus.min(u64::from(MAX_AGENT_WORKERS)) as u32)
}

/// How long the agent waits for the token's line on its standard input: ssh
/// without `-n` or a forgotten pipe leaves it open and silent, and an agent
/// waiting on it for good would hang its launcher.
const TOKEN_PATIENCE: Duration = Duration::from_secs(30);

/// One line from standard input: the token, as ssh or srun passes it. At most
/// 1024 bytes, within [`TOKEN_PATIENCE`].
fn token_from_stdin() -> Result<Token, Failure> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let deadline = Instant::now() + TOKEN_PATIENCE;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the line is taken.
    while line.len() < 1024 && line.last() != Some(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Usage(format!(
                "no token: standard input gave no line in {TOKEN_PATIENCE:?}; pass \
                 --token-file FILE or write the token's 64 hexadecimal digits and a \
                 newline to the agent's standard input"
            )));
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::Usage(format!(
                    "read the token from standard input: {e}"
                )))
            }
        }
        match nix::unistd::read(fd, &mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                return Err(Failure::Usage(format!(
                    "read the token from standard input: {e}"
                )))
            }
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.trim().is_empty() {
        return Err(Failure::Usage(
            "no token: standard input ended before a line with the token; pass \
             --token-file FILE or write the token's 64 hexadecimal digits to the agent's \
             standard input"
                .into(),
        ));
    }
    Token::from_hex(&line).map_err(|_| {
        Failure::Usage(
            "the line read from standard input is not a token (64 hexadecimal digits)".into(),
        )
    })
}

/// What the coordinator told the agent in its welcome.
#[derive(Debug, Clone)]
struct Terms {
    agent_id: u64,
    beats: Beats,
    capacity: u32,
    max_frame: u32,
    memory_limit: Option<u64>,
}

/// What the agent's main loop hears.
#[derive(Debug)]
enum Heard {
    /// A frame from the coordinator.
    Frame(Message),
    /// The connection ended (closed, failed, or silent past the limit).
    Closed(String),
    /// A worker started.
    Started(Arc<Child>),
    /// A worker ended and was reaped (or could not be started: pid 0).
    Exited(WorkerExit),
}

fn serve(args: Args) -> Result<(), Failure> {
    let run = |e: WorkerError| match e {
        WorkerError::Rejected(reason) => Failure::Run(format!(
            "the coordinator at {} rejected this agent: {reason}",
            args.addr
        )),
        e @ WorkerError::Connect { .. } => Failure::Run(e.to_string()),
        WorkerError::Untrusted { at, reason } => Failure::Run(format!(
            "refused {at}: {reason}; it is not this agent's coordinator"
        )),
        // Bytes that are no frame of ours: whatever answered is not a coordinator.
        WorkerError::Read(e)
            if !matches!(
                e,
                pstream_protocol::DecodeError::Io(_)
                    | pstream_protocol::DecodeError::Version { .. }
            ) =>
        {
            Failure::Run(format!(
                "what answered at {} is not a pstream coordinator ({e}): is it the \
                 address the coordinator printed (`listening on ...`)?",
                args.addr
            ))
        }
        other => Failure::Run(format!("{other} (the coordinator at {})", args.addr)),
    };
    let target = Target::Remote {
        addr: args.addr.clone(),
    };
    if args.until_stdin_ends {
        watch_stdin();
    }
    let tcp = connect_remote(&args.addr).map_err(run)?;
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_PATIENCE));
    let _ = tcp.set_write_timeout(Some(HANDSHAKE_PATIENCE));
    let clone = tcp
        .try_clone()
        .map_err(|e| Failure::Run(format!("clone the connection: {e}")))?;
    let mut writer = BufWriter::with_capacity(1 << 12, Stream::Tcp(clone));
    let mut reader = BufReader::with_capacity(1 << 12, Stream::Tcp(tcp));
    let max = 1 << 20;
    let proof =
        introduce(&mut writer, &mut reader, &args.token, &target, max, None).map_err(run)?;
    let hostname = hostname();
    let join = Message::AgentJoin(AgentJoin {
        proof,
        hostname: hostname.clone(),
        pid: std::process::id(),
        workers: args.workers,
    });
    send(&mut writer, &join).map_err(run)?;
    let terms = match read_frame(&mut reader, max).map_err(|e| run(WorkerError::Read(e)))? {
        Some(Frame {
            message:
                Message::AgentWelcome {
                    agent_id,
                    heartbeat_ms,
                    silence_ms,
                    capacity,
                    max_frame,
                    memory_limit,
                },
            ..
        }) => Terms {
            agent_id,
            beats: Beats {
                every: Duration::from_millis(heartbeat_ms.max(1).into()),
                silence: Duration::from_millis(silence_ms.max(1).into()),
            },
            capacity,
            max_frame,
            memory_limit: (memory_limit > 0).then_some(memory_limit),
        },
        Some(Frame {
            message: Message::Reject { reason },
            ..
        }) => return Err(run(WorkerError::Rejected(reason))),
        // Joined as the job ended: nothing to do, and nothing failed.
        Some(Frame {
            message: Message::Shutdown,
            ..
        }) => {
            eprintln!(
                "{}: the job at {} was ending when this agent joined (it takes no more \
                 host agents): nothing to do, exiting",
                who(),
                args.addr
            );
            return Ok(());
        }
        Some(other) => {
            return Err(run(WorkerError::Protocol(format!(
                "expected AgentWelcome, got {:?}",
                other.message
            ))))
        }
        None => {
            return Err(run(WorkerError::Rejected(
                "connection closed before AgentWelcome".into(),
            )))
        }
    };
    if let Stream::Tcp(tcp) = reader.get_ref() {
        let _ = tcp.set_read_timeout(None);
        // Writes wait at most the silence limit: a coordinator that takes nothing
        // for that long is gone.
        let _ = tcp.set_write_timeout(Some(terms.beats.silence));
        arm_keepalive(tcp, &terms.beats);
    }
    let (tx, rx) = unbounded();
    if args.until_stdin_ends {
        *STDIN_ENDS.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
    }
    let reading = Arc::new(AtomicBool::new(true));
    {
        let tx = tx.clone();
        let silence = terms.beats.silence;
        let reading = Arc::clone(&reading);
        std::thread::Builder::new()
            .name("pstream-agent-reader".into())
            .spawn(move || read_coordinator(reader, silence, tx, &reading))
            .map_err(|e| Failure::Run(format!("start the reader thread: {e}")))?;
    }
    let agent = Agent {
        args,
        terms,
        token_hex: String::new(),
        writer,
        last_sent: Instant::now(),
        tx,
        children: HashMap::new(),
        starting: 0,
        start_failures: 0,
        respawn_at: None,
        stopping: None,
        reading,
        untold: Vec::new(),
    };
    agent.run(rx)
}

/// Frames from the coordinator, to the main loop, until the connection ends or
/// falls silent. `reading` is false only while it waits for the socket with every
/// frame read so far handed on: then what the coordinator sent and the main loop
/// has not heard is still in the socket.
fn read_coordinator(
    mut reader: BufReader<Stream>,
    silence: Duration,
    tx: Sender<Heard>,
    reading: &AtomicBool,
) {
    let timeout = PollTimeout::try_from(silence.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        if reader.buffer().is_empty() {
            reading.store(false, Ordering::SeqCst);
            let mut fds = [PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    let why = format!(
                        "the coordinator fell silent for {silence:?} (its host is gone or \
                         cut off)"
                    );
                    let _ = tx.send(Heard::Closed(why));
                    return;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                _ => {}
            }
            // Before a byte leaves the socket.
            reading.store(true, Ordering::SeqCst);
        }
        match read_frame(&mut reader, 1 << 20) {
            Ok(Some(frame)) => {
                if tx.send(Heard::Frame(frame.message)).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Heard::Closed(
                    "the coordinator closed the connection".into(),
                ));
                return;
            }
            Err(e) => {
                let _ = tx.send(Heard::Closed(format!("read from the coordinator: {e}")));
                return;
            }
        }
    }
}

struct Agent {
    args: Args,
    terms: Terms,
    /// The token as its workers read it from their pipe (made once).
    token_hex: String,
    writer: BufWriter<Stream>,
    last_sent: Instant,
    tx: Sender<Heard>,
    /// Running workers, by pid.
    children: HashMap<u32, Arc<Child>>,
    /// Workers asked for and not yet reported started.
    starting: usize,
    /// Workers in a row that ended before the coordinator welcomed them.
    start_failures: u32,
    respawn_at: Option<Instant>,
    /// Since the coordinator said `Shutdown`: until when the workers may take to end.
    stopping: Option<Instant>,
    /// The reader thread holds bytes from the coordinator not yet handed on.
    reading: Arc<AtomicBool>,
    /// Start failures not yet said on stderr: said once all the coordinator sent
    /// before them was heard, unless that was `Shutdown` (see [`Agent::tell`]).
    untold: Vec<String>,
}

/// How often the agent looks again whether the coordinator's words have all been
/// heard, while start failures wait to be said.
const TELL_AGAIN: Duration = Duration::from_millis(10);

/// A backoff before starting a worker again after `failures` start failures in a
/// row: 100 ms, doubled each time, at most 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.saturating_sub(1).min(7)).min(Duration::from_secs(10))
}

impl Agent {
    fn run(mut self, rx: Receiver<Heard>) -> Result<(), Failure> {
        self.token_hex = self.args.token.to_hex();
        self.top_up();
        loop {
            let now = Instant::now();
            let mut wake = self.last_sent + self.terms.beats.every;
            if let Some(at) = self.respawn_at {
                wake = wake.min(at);
            }
            if let Some(at) = self.stopping {
                wake = wake.min(at);
            }
            if !self.untold.is_empty() {
                wake = wake.min(now + TELL_AGAIN);
            }
            let heard = match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(heard) => Some(heard),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return self.end(Err("the agent's threads are gone".into()))
                }
            };
            match heard {
                None => {}
                Some(Heard::Frame(Message::Heartbeat)) => {}
                Some(Heard::Frame(Message::Kill { pid })) => {
                    if let Some(child) = self.children.get(&pid) {
                        child.kill();
                    }
                }
                Some(Heard::Frame(Message::Shutdown)) => {
                    // The job is over: no new workers; those running end on their
                    // own (the coordinator tells them), reported as they do.
                    self.stopping = Some(Instant::now() + self.terms.beats.silence);
                    self.respawn_at = None;
                }
                Some(Heard::Frame(other)) => {
                    let why = format!(
                        "protocol violation by the coordinator: unexpected frame {other:?}"
                    );
                    return self.end(Err(why));
                }
                Some(Heard::Closed(why)) => {
                    let outcome = if self.stopping.is_some() {
                        Ok(())
                    } else {
                        Err(why)
                    };
                    return self.end(outcome);
                }
                Some(Heard::Started(child)) => {
                    self.starting -= 1;
                    if self.stopping.is_some() {
                        child.kill();
                    }
                    self.children.insert(child.pid, child);
                }
                Some(Heard::Exited(exit)) => {
                    if exit.pid == 0 {
                        self.starting -= 1;
                    } else {
                        self.children.remove(&exit.pid);
                    }
                    self.on_exit(&exit);
                    if let Err(e) = self.send(&Message::WorkerExited(exit)) {
                        let outcome = self.send_failed(&rx, e);
                        return self.end(outcome);
                    }
                }
            }
            self.tell();
            let now = Instant::now();
            if self.stopping.is_some() && self.children.is_empty() && self.starting == 0 {
                return self.end(Ok(()));
            }
            if self.stopping.is_some_and(|at| now >= at) {
                return self.end(Ok(()));
            }
            if self.respawn_at.is_some_and(|at| now >= at) {
                self.respawn_at = None;
                self.top_up();
            }
            if now >= self.last_sent + self.terms.beats.every {
                if let Err(e) = self.send(&Message::Heartbeat) {
                    let outcome = self.send_failed(&rx, e);
                    return self.end(outcome);
                }
            }
        }
    }

    /// A worker ended: start another, at once if it had served (a crash, a
    /// recycled or finished worker), after a backoff if it never had.
    fn on_exit(&mut self, exit: &WorkerExit) {
        if self.stopping.is_some() {
            return;
        }
        if exit.served {
            self.start_failures = 0;
        } else if exit.pid != 0 && exit.status == ExitStatus::Code(0) {
            // Told `Shutdown` in place of its welcome: the job is ending (this
            // agent hears it soon). Not a start failure; started again (if the
            // job goes on after all) after the first backoff, not in a loop.
            let at = Instant::now() + backoff(1);
            self.respawn_at = Some(self.respawn_at.map_or(at, |t| t.max(at)));
            return;
        } else {
            self.start_failures += 1;
            // The coordinator reports it with the worker's last lines; here, the
            // first, second, fourth… in a row: clear, but not a flood.
            if self.start_failures.is_power_of_two() {
                self.untold.push(format!(
                    "{}: a worker failed to start ({}, {} in a row){}",
                    who(),
                    describe(exit.status),
                    self.start_failures,
                    if exit.last_words.is_empty() {
                        String::new()
                    } else {
                        format!("; its last output:\n{}", exit.last_words)
                    }
                ));
            }
            let at = Instant::now() + backoff(self.start_failures);
            self.respawn_at = Some(self.respawn_at.map_or(at, |t| t.max(at)));
            return;
        }
        if self.respawn_at.is_none() {
            self.top_up();
        }
    }

    /// Start workers until there are as many as asked for.
    fn top_up(&mut self) {
        let want = self.args.workers as usize;
        while self.children.len() + self.starting < want {
            self.starting += 1;
            let spec = Spec {
                addr: self.args.addr.clone(),
                token_hex: self.token_hex.clone(),
                terms: self.terms.clone(),
            };
            let tx = self.tx.clone();
            let started = std::thread::Builder::new()
                .name("pstream-agent-waiter".into())
                .spawn(move || waiter(spec, tx));
            if let Err(e) = started {
                self.starting -= 1;
                eprintln!("{}: could not start a waiter thread: {e}", who());
                self.respawn_at = Some(Instant::now() + backoff(1));
                return;
            }
        }
    }

    fn send(&mut self, message: &Message) -> Result<(), String> {
        self.last_sent = Instant::now();
        send(&mut self.writer, message).map_err(|e| e.to_string())
    }

    /// A write to the coordinator failed: the end of the job if the coordinator
    /// said `Shutdown` (it closes the connection once the job is over, and a report
    /// or a heartbeat may cross that close), a failure otherwise. A `Shutdown` not
    /// yet taken from the reader is still looked for: the reader hands on every
    /// frame before it says the connection closed.
    fn send_failed(&mut self, rx: &Receiver<Heard>, why: String) -> Result<(), String> {
        let deadline = Instant::now() + self.terms.beats.silence;
        while self.stopping.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Heard::Frame(Message::Shutdown)) => {
                    self.stopping = Some(Instant::now());
                }
                Ok(Heard::Closed(_)) | Err(_) => break,
                Ok(Heard::Started(child)) => {
                    self.starting -= 1;
                    self.children.insert(child.pid, child);
                }
                Ok(_) => {}
            }
        }
        if self.stopping.is_some() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Say the start failures waiting to be said, once everything the coordinator
    /// sent before them was heard, unless it said `Shutdown`: a worker whose
    /// handshake the end of the job cut (the coordinator stopped, its door closed)
    /// did not fail. The coordinator tells this agent `Shutdown` before it cuts
    /// any handshake, but the two connections race, and on a loaded host the
    /// worker's end can come first by hundreds of milliseconds.
    fn tell(&mut self) {
        if self.untold.is_empty() {
            return;
        }
        if self.stopping.is_some() {
            self.untold.clear();
            return;
        }
        if self.reading.load(Ordering::SeqCst) || self.coordinator_has_said_more() {
            return; // Heard on a later turn.
        }
        for line in self.untold.drain(..) {
            eprintln!("{line}");
        }
    }

    /// Whether the coordinator's socket holds bytes (or its end) not yet read.
    fn coordinator_has_said_more(&self) -> bool {
        let mut fds = [PollFd::new(
            self.writer.get_ref().as_fd(),
            PollFlags::POLLIN,
        )];
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Kill every worker (its whole process group) and say how the agent ends.
    fn end(self, outcome: Result<(), String>) -> Result<(), Failure> {
        for child in self.children.values() {
            child.kill();
        }
        if outcome.is_err() {
            // Not the end of the job: its start failures are news.
            for line in &self.untold {
                eprintln!("{line}");
            }
        }
        outcome.map_err(|why| Failure::Run(format!("{why}: killed its workers, exiting")))
    }
}

/// How a status reads in a message.
fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("exit status {code}"),
        ExitStatus::Signal(sig) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
    }
}

/// What a waiter needs to start a worker.
struct Spec {
    addr: String,
    token_hex: String,
    terms: Terms,
}

/// A worker the agent started. Signals go through [`Child::kill`], never after it
/// was reaped (so never to a recycled pid).
#[derive(Debug)]
struct Child {
    pid: u32,
    /// Set, under the lock, between seeing the exit and reaping.
    reaped: Mutex<bool>,
}

impl Child {
    /// Kill the worker and everything in its process group.
    fn kill(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Start one worker and wait for its end, on this thread: a worker dies with the
/// thread that started it (`PR_SET_PDEATHSIG`), and this one lives as long as the
/// worker does.
fn waiter(spec: Spec, tx: Sender<Heard>) {
    let (child, output, ready) = match start(&spec) {
        Ok(started) => started,
        Err(e) => {
            let _ = tx.send(Heard::Exited(WorkerExit {
                pid: 0,
                status: ExitStatus::Code(127),
                max_rss_kb: 0,
                served: false,
                last_words: format!("could not start the worker: {e}"),
            }));
            return;
        }
    };
    let _ = tx.send(Heard::Started(Arc::clone(&child)));
    let pid = Pid::from_raw(child.pid as i32);
    // Wait without reaping, so the pid stays ours while `kill` may run.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    let (status, max_rss_kb) = {
        let mut reaped = child.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // A zombie still: its group's id is nobody else's. What is left in the
        // group was started by its functions: it ends with the worker.
        let _ = killpg(pid, Signal::SIGKILL);
        *reaped = true;
        reap(pid)
    };
    // One byte on the pipe: the coordinator welcomed it (the output thread may
    // have read it already).
    if said_welcomed(&ready) == Some(true) {
        output.welcome();
    }
    let served = output.welcomed();
    let last_words = if served {
        String::new()
    } else {
        output.last_words(Duration::from_millis(500))
    };
    let _ = tx.send(Heard::Exited(WorkerExit {
        pid: child.pid,
        status,
        max_rss_kb,
        served,
        last_words,
    }));
}

/// Reap `pid`: how it ended, and its peak resident set in KiB.
fn reap(pid: Pid) -> (ExitStatus, u64) {
    use nix::libc;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed `rusage` is a valid value of the C struct; wait4 writes
        // the status and the usage into the two locals, which outlive the call.
        let (got, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let got = libc::wait4(pid.as_raw(), &mut status, 0, &mut usage);
            (got, usage)
        };
        if got == pid.as_raw() {
            let rss = usage.ru_maxrss.max(0) as u64;
            if libc::WIFSIGNALED(status) {
                return (ExitStatus::Signal(libc::WTERMSIG(status)), rss);
            }
            if libc::WIFEXITED(status) {
                return (ExitStatus::Code(libc::WEXITSTATUS(status)), rss);
            }
            continue;
        }
        if got < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        // Reaped by someone else: nothing to say of it.
        return (ExitStatus::Code(-1), 0);
    }
}

/// A worker's stdout and stderr, read by a thread of the agent. As a coordinator
/// does with its own workers: until the worker is welcomed what it writes is held
/// ([`HeldOutput`]), then passed on to the agent's stderr (which ssh or
/// srun carries back) as it comes. A worker that is never welcomed is reported
/// with its last lines instead (the coordinator shows them).
struct Output {
    held: Mutex<HeldOutput>,
    done: Mutex<Option<Receiver<()>>>,
}

impl Output {
    fn take(&self, bytes: &[u8]) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes);
    }

    /// The coordinator welcomed the worker: what it wrote so far goes out now.
    fn welcome(&self) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pass_through();
    }

    fn welcomed(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .passing()
    }

    /// The last lines the worker wrote, waiting at most `patience` for the pipe to
    /// end (a process that left the worker's group may hold it open).
    fn last_words(&self, patience: Duration) -> String {
        if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = done.recv_timeout(patience);
        }
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (start, last) = held.last_lines();
        let text = String::from_utf8_lossy(last);
        let mut quoted = String::new();
        if start > 0 {
            quoted.push_str("...\n");
        }
        quoted.push_str(&text.lines().collect::<Vec<_>>().join("\n"));
        quoted
    }
}

/// Whether the worker said, on its pipe, that it was welcomed (one byte).
fn said_welcomed(ready: &OwnedFd) -> Option<bool> {
    let mut byte = [0u8; 1];
    match nix::unistd::read(ready, &mut byte) {
        Ok(1) => Some(true),
        // Closed without a word: it will not say it any more.
        Ok(_) => Some(false),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => None,
        Err(_) => Some(false),
    }
}

/// Read the worker's output until its pipe ends, and its "welcomed" pipe until it
/// speaks or closes.
fn pump(pipe: OwnedFd, ready: Arc<OwnedFd>, output: Arc<Output>, done: Sender<()>) {
    let mut buf = [0u8; 16 << 10];
    let mut listening = true;
    loop {
        let mut fds = vec![PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        if listening {
            fds.push(PollFd::new(ready.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready_event = listening && fds[1].revents().is_some_and(|r| !r.is_empty());
        let out_event = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if ready_event {
            match said_welcomed(&ready) {
                Some(true) => {
                    output.welcome();
                    listening = false;
                }
                Some(false) => listening = false,
                None => {}
            }
        }
        if out_event {
            match nix::unistd::read(&pipe, &mut buf) {
                Ok(0) => break,
                Ok(n) => output.take(&buf[..n]),
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => break,
            }
        }
    }
    let _ = done.send(());
}

/// Start a worker: this very program, re-executed, joining the coordinator with
/// the token on a pipe and the agent's id in its environment.
fn start(spec: &Spec) -> std::io::Result<(Arc<Child>, Arc<Output>, Arc<OwnedFd>)> {
    let mut cmd = crate::spawn::worker_command("/proc/self/exe");
    let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&ready_read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let ready_read = Arc::new(ready_read);
    let token = Arc::new(token_pipe(&spec.token_hex)?);
    let ready_write = Arc::new(at_least_3(ready_write)?);
    let terms = &spec.terms;
    cmd.arg(ARG_CONNECT)
        .arg(&spec.addr)
        .env_remove(ENV_CONNECT)
        .env_remove(ENV_TOKEN_FILE)
        .env(ENV_TOKEN_FD, token.as_raw_fd().to_string())
        .env(ENV_READY_FD, ready_write.as_raw_fd().to_string())
        .env(ENV_AGENT, terms.agent_id.to_string())
        .env(ENV_CAPACITY, terms.capacity.to_string())
        .env(ENV_MAX_FRAME, terms.max_frame.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_write.try_clone()?))
        .stderr(Stdio::from(out_write));
    // Its own group, a clean slate of signals (whatever the agent inherited from
    // ssh or srun), the token and ready pipes, death with the agent, the job's
    // memory limit: the coordinator's rules for its own workers.
    let inherited = vec![Arc::clone(&token), Arc::clone(&ready_write)];
    crate::spawn::worker_rules(&mut cmd, inherited, terms.memory_limit);
    let spawned = cmd.spawn()?;
    // Our copies of the write ends go with the command: the output pipe ends when
    // the worker and its group are done with it.
    drop(cmd);
    drop(ready_write);
    drop(token);
    let (done_tx, done_rx) = unbounded();
    let output = Arc::new(Output {
        held: Mutex::new(HeldOutput::default()),
        done: Mutex::new(Some(done_rx)),
    });
    {
        let (output, ready) = (Arc::clone(&output), Arc::clone(&ready_read));
        std::thread::Builder::new()
            .name("pstream-agent-output".into())
            .spawn(move || pump(out_read, ready, output, done_tx))?;
    }
    let child = Arc::new(Child {
        pid: spawned.id(),
        reaped: Mutex::new(false),
    });
    // The std handle is dropped without waiting: the waiter reaps.
    Ok((child, output, ready_read))
}

/// A pipe holding the token as 64 hex digits, its write end closed: the read end,
/// close-on-exec, numbered 3 or more.
fn token_pipe(hex: &str) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    std::fs::File::from(write).write_all(hex.as_bytes())?;
    at_least_3(read)
}

/// The descriptor, numbered 3 or more (never a standard stream, which the child's
/// stdio setup would replace).
fn at_least_3(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() < 3 {
        // `try_clone` duplicates to the lowest free descriptor from 3, close-on-exec.
        return fd.try_clone();
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_back_off_up_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(
            backoff(8),
            Duration::from_millis(12_800).min(Duration::from_secs(10))
        );
        assert_eq!(backoff(100), Duration::from_secs(10));
    }
}
