//! The serve loop: connect, introduce ourselves, compute batches until told to stop.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use pstream_protocol::auth::{random_nonce, Role, Token};
use pstream_protocol::unwind;
use pstream_protocol::{
    read_frame, read_frame_into, write_frame, BatchHeader, EncodeError, FailureKind, Frame, Hello,
    Items, Join, Message, DEFAULT_MAX_FRAME, ENV_CAPACITY, ENV_COORDINATOR_PID, ENV_MAX_FRAME,
    ENV_SOCKET, ENV_TOKEN_FD, MIN_MAX_FRAME, PROTOCOL_VERSION, SEND_BUFFER,
};
use pstream_protocol::{ARG_CONNECT, ENV_AGENT, ENV_CONNECT, ENV_READY_FD, ENV_TOKEN_FILE};

use crate::batch::{report_progress, Batch, Outbox, Progress};
use crate::error::{CallError, WorkerError};
use crate::flags::next_flag;
use crate::registry::{functions, registry};
pub use crate::stream::Stream;
use crate::stream::{arm_keepalive, Beats};

/// How many items a worker holds by default: room for a batch in work and one queued.
pub const DEFAULT_CAPACITY: u32 = 8192;

/// Serve the functions of this binary to the coordinator named by the environment
/// (or, for a worker that joins over the network, by `--connect ADDR --token-file
/// FILE` or their variables), until it says `Shutdown` or closes the connection.
pub fn serve_from_env() -> Result<(), WorkerError> {
    let summons = if pstream_protocol::asked_to_connect() {
        Summons::from_args()?
    } else {
        Summons::from_env()?
    };
    serve(&summons)
}

/// Where the coordinator is.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A coordinator on this machine: its private socket, and its process id (the
    /// only acceptable peer of the socket).
    Local {
        /// The socket.
        path: PathBuf,
        /// The coordinator's pid.
        coordinator: u32,
    },
    /// A coordinator across the network, `HOST:PORT` (an IPv6 address in brackets).
    Remote {
        /// The address.
        addr: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local { path, .. } => write!(f, "the socket {}", path.display()),
            Target::Remote { addr } => write!(f, "{addr} (TCP)"),
        }
    }
}

/// How long a worker that joins over the network keeps trying to reach a
/// coordinator that does not listen yet (started before it, by a scheduler).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// What a coordinator tells the worker it starts: where to connect, the secret to
/// prove, whom to expect at the other end, and the limits.
#[doc(hidden)]
#[derive(Debug)]
pub struct Summons {
    /// Where the coordinator is.
    pub target: Target,
    /// The job's secret.
    pub token: Token,
    /// The largest frame this worker accepts.
    pub max_frame: usize,
    /// How many items this worker holds at once.
    pub capacity: u32,
    /// For a worker a host agent started: the agent's id, said in `Hello`.
    pub agent: Option<u64>,
}

impl Summons {
    /// Read the summons from the environment and the token from its pipe (which is
    /// closed then), and take the variables out of the environment so that the
    /// function's own child processes do not see them.
    pub fn from_env() -> Result<Summons, WorkerError> {
        let path = std::env::var_os(ENV_SOCKET).ok_or(WorkerError::NotAWorker)?;
        if let Some(stray) = pstream_protocol::stray_worker_environment() {
            return Err(WorkerError::Stray(stray));
        }
        let token = take_token()?;
        let coordinator = match std::env::var(ENV_COORDINATOR_PID) {
            Ok(v) => v
                .parse::<u32>()
                .ok()
                .filter(|&pid| pid > 0)
                .ok_or_else(|| {
                    WorkerError::Environment(format!(
                        "{ENV_COORDINATOR_PID}={v} is not a process id"
                    ))
                })?,
            Err(_) => {
                return Err(WorkerError::Environment(format!(
                    "{ENV_COORDINATOR_PID} is not set"
                )))
            }
        };
        let max_frame = frame_in_range(env_number(ENV_MAX_FRAME, DEFAULT_MAX_FRAME as u64)?)?;
        let capacity = capacity_in_range(env_number(ENV_CAPACITY, DEFAULT_CAPACITY as u64)?)?;
        // The function's own child processes are not workers of this coordinator.
        for name in [
            ENV_SOCKET,
            ENV_TOKEN_FD,
            ENV_COORDINATOR_PID,
            ENV_MAX_FRAME,
            ENV_CAPACITY,
        ] {
            std::env::remove_var(name);
        }
        Ok(Summons {
            target: Target::Local {
                path: PathBuf::from(path),
                coordinator,
            },
            token,
            max_frame,
            capacity,
            agent: None,
        })
    }

    /// Read the summons of a worker that joins over the network: `--connect ADDR`
    /// and `--token-file FILE` on the command line (or [`ENV_CONNECT`] and
    /// [`ENV_TOKEN_FILE`]); the token may also come on an inherited pipe
    /// ([`ENV_TOKEN_FD`], as a host agent passes it). `--capacity N` and
    /// `--max-frame BYTES` (or their variables) are optional. The token never comes
    /// on the command line.
    pub fn from_args() -> Result<Summons, WorkerError> {
        let env_err = WorkerError::Environment;
        let mut addr = std::env::var(ENV_CONNECT).ok().filter(|a| !a.is_empty());
        let mut token_file = std::env::var_os(ENV_TOKEN_FILE).map(PathBuf::from);
        let mut capacity = env_number(ENV_CAPACITY, DEFAULT_CAPACITY as u64)?;
        let mut max_frame = env_number(ENV_MAX_FRAME, DEFAULT_MAX_FRAME as u64)?;
        let mut args = std::env::args().skip(1);
        while let Some((name, mut flag)) = next_flag(&mut args) {
            let mut value = |what: &str| flag.get(&mut args, what).map_err(env_err);
            match name.as_str() {
                ARG_CONNECT => addr = Some(value("an address, HOST:PORT")?),
                "--token-file" => token_file = Some(PathBuf::from(value("a file")?)),
                "--capacity" => {
                    let v = value("a number of items")?;
                    let n = v
                        .parse()
                        .map_err(|_| env_err(format!("--capacity {v} is not a number")))?;
                    capacity = (n, format!("--capacity {v}"));
                }
                "--max-frame" => {
                    let v = value("a number of bytes")?;
                    let n = v
                        .parse()
                        .map_err(|_| env_err(format!("--max-frame {v} is not a number")))?;
                    max_frame = (n, format!("--max-frame {v}"));
                }
                "--token" => {
                    return Err(env_err(
                        "the token is never given on the command line, where `ps` shows \
                         it: put it in a file of mode 0600 and pass --token-file FILE"
                            .into(),
                    ))
                }
                other => {
                    return Err(env_err(format!(
                        "unknown argument `{other}`; a worker that joins over the network \
                         takes --connect HOST:PORT --token-file FILE [--capacity N] \
                         [--max-frame BYTES]"
                    )))
                }
            }
        }
        let addr = addr.ok_or_else(|| env_err(format!("{ARG_CONNECT} needs HOST:PORT")))?;
        if !addr.contains(':') {
            return Err(env_err(format!(
                "{ARG_CONNECT} {addr} is not HOST:PORT (the coordinator prints its \
                 address when it listens)"
            )));
        }
        let capacity = capacity_in_range(capacity)?;
        let max_frame = frame_in_range(max_frame)?;
        let token = match token_file {
            Some(file) => pstream_protocol::auth::read_token_file(&file)
                .map_err(|e| env_err(e.to_string()))?,
            None if pstream_protocol::token_pipe().is_some() => take_token()?,
            None => {
                return Err(env_err(format!(
                    "no token: pass --token-file FILE (or set {ENV_TOKEN_FILE}), a file \
                     of mode 0600 holding the coordinator's token"
                )))
            }
        };
        // Started by a host agent: its id, and the pipe to say "welcomed" on.
        let agent = match std::env::var(ENV_AGENT) {
            Ok(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| env_err(format!("{ENV_AGENT}={v} is not an agent id")))?,
            ),
            Err(_) => None,
        };
        if agent.is_some() {
            crate::group::under_agent(pstream_protocol::inherited_pipe(ENV_READY_FD));
        }
        for name in [
            ENV_CONNECT,
            ENV_TOKEN_FILE,
            ENV_TOKEN_FD,
            ENV_MAX_FRAME,
            ENV_CAPACITY,
            ENV_AGENT,
            ENV_READY_FD,
        ] {
            std::env::remove_var(name);
        }
        Ok(Summons {
            target: Target::Remote { addr },
            token,
            max_frame,
            capacity,
            agent,
        })
    }

    /// Connect to the coordinator. On the local socket, having made sure that it
    /// is the coordinator's: the directory and the socket belong to this user and
    /// are private to it, and the process at the other end is this user's and the
    /// coordinator's pid. Over TCP nothing is known of the peer until it proves
    /// that it holds the token (in the handshake); a coordinator that does not
    /// listen yet is tried again for [`CONNECT_PATIENCE`]. Nothing is sent yet.
    pub fn connect(&self) -> Result<Stream, WorkerError> {
        match &self.target {
            Target::Local { path, coordinator } => {
                connect_local(path, *coordinator).map(Stream::Unix)
            }
            Target::Remote { addr } => connect_remote(addr).map(Stream::Tcp),
        }
    }
}

fn connect_local(path: &Path, coordinator: u32) -> Result<UnixStream, WorkerError> {
    let untrusted = |reason: String| WorkerError::Untrusted {
        at: format!("the socket {}", path.display()),
        reason,
    };
    let uid = nix::unistd::geteuid().as_raw();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_private(dir, uid, "directory", |t| t.is_dir()).map_err(untrusted)?;
    check_private(path, uid, "socket", |t| t.is_socket()).map_err(untrusted)?;
    let stream = UnixStream::connect(path).map_err(|error| WorkerError::Connect {
        at: path.display().to_string(),
        error,
    })?;
    let creds = getsockopt(&stream, sockopt::PeerCredentials)
        .map_err(|e| untrusted(format!("cannot read its peer's credentials: {e}")))?;
    if creds.uid() != uid {
        return Err(untrusted(format!(
            "the process listening on it runs as uid {}, not as this worker's uid {uid}",
            creds.uid()
        )));
    }
    if creds.pid() as u32 != coordinator {
        return Err(untrusted(format!(
            "the process listening on it is pid {}, not the coordinator (pid {coordinator})",
            creds.pid(),
        )));
    }
    Ok(stream)
}

pub(crate) fn connect_remote(addr: &str) -> Result<std::net::TcpStream, WorkerError> {
    use std::net::ToSocketAddrs;
    let connect_err = |error| WorkerError::Connect {
        at: addr.to_string(),
        error,
    };
    let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        );
        for a in &addrs {
            match std::net::TcpStream::connect_timeout(a, Duration::from_secs(10)) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(connect_err)?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        let retry = matches!(
            last.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
        );
        if !retry || std::time::Instant::now() + pause > deadline {
            return Err(connect_err(last));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Whether the token's pipe was taken already: its descriptor is owned once.
static TOKEN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Read the token from the pipe the coordinator passed (`PSTREAM_TOKEN_FD`), and close
/// the pipe, so that neither the environment nor a descriptor hands it on to the
/// function's children.
fn take_token() -> Result<Token, WorkerError> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let fd = pstream_protocol::token_pipe().ok_or_else(|| {
        WorkerError::Environment(format!("{ENV_TOKEN_FD} names no pipe this process holds"))
    })?;
    if TOKEN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(WorkerError::Environment(
            "the token's pipe was read already".into(),
        ));
    }
    // SAFETY: `token_pipe` saw the descriptor open (a pipe, at least 3, so no
    // standard stream); the coordinator passed it for this one read, nothing else in
    // this process uses it, and `TOKEN_TAKEN` makes this the only owner.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut hex = [0u8; 2 * pstream_protocol::auth::TOKEN_LEN];
    pipe.read_exact(&mut hex).map_err(|e| {
        WorkerError::Environment(format!("read the token from descriptor {fd}: {e}"))
    })?;
    drop(pipe);
    std::str::from_utf8(&hex)
        .ok()
        .and_then(|hex| Token::from_hex(hex).ok())
        .ok_or_else(|| {
            WorkerError::Environment(format!(
                "descriptor {fd} does not carry a token of {} hexadecimal digits",
                hex.len()
            ))
        })
}

/// Check that `path` is a `what` (by `kind`, not through a symbolic link), owned by
/// `uid`, that no other user may use.
fn check_private(
    path: &Path,
    uid: u32,
    what: &str,
    kind: impl Fn(&std::fs::FileType) -> bool,
) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect its {what} {}: {e}", path.display()))?;
    if !kind(&meta.file_type()) {
        return Err(format!("{} is not a {what}", path.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "its {what} {} belongs to uid {}, not to this worker's uid {uid}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "its {what} {} has mode {:04o}: other users may use it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn env_number(name: &str, default: u64) -> Result<(u64, String), WorkerError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(|n| (n, format!("{name}={v}")))
            .map_err(|_| WorkerError::Environment(format!("{name}={v} is not a number"))),
        Err(_) => Ok((default, String::new())),
    }
}

/// The items a worker holds at once, `said` as it was given: 1 to `u32::MAX`.
fn capacity_in_range((n, said): (u64, String)) -> Result<u32, WorkerError> {
    u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
        WorkerError::Environment(format!("{said}: a worker holds 1 to {} items", u32::MAX))
    })
}

/// A frame limit, `said` as it was given: [`MIN_MAX_FRAME`] to `u32::MAX` bytes, as
/// the coordinator accepts.
fn frame_in_range((n, said): (u64, String)) -> Result<usize, WorkerError> {
    if (MIN_MAX_FRAME as u64..=u64::from(u32::MAX)).contains(&n) {
        Ok(n as usize)
    } else {
        Err(WorkerError::Environment(format!(
            "{said}: a frame limit is {MIN_MAX_FRAME} to {} bytes",
            u32::MAX
        )))
    }
}

/// Send one frame at once.
pub(crate) fn send(writer: &mut BufWriter<Stream>, message: &Message) -> Result<(), WorkerError> {
    write_frame(writer, message, &Items::new(), usize::MAX).map_err(WorkerError::Write)?;
    writer
        .flush()
        .map_err(|e| WorkerError::Write(EncodeError::Io(e)))
}

/// The first half of the handshake, the same for a worker and a host agent: say
/// `Hello` (with `agent`, for a worker an agent started), check the coordinator's
/// proof that it holds the token, and return our own proof, for `Join` or
/// `AgentJoin`.
pub(crate) fn introduce(
    writer: &mut BufWriter<Stream>,
    reader: &mut BufReader<Stream>,
    token: &Token,
    target: &Target,
    max_frame: usize,
    agent: Option<u64>,
) -> Result<pstream_protocol::auth::Proof, WorkerError> {
    // The worker speaks first, but gives nothing away: its pid and a nonce. The
    // coordinator must prove it holds the token before the worker proves it does.
    let nonce = random_nonce().map_err(|e| WorkerError::Environment(e.to_string()))?;
    let hello = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        nonce,
        agent,
    });
    send(writer, &hello)?;
    let theirs = match read_frame(reader, max_frame).map_err(WorkerError::Read)? {
        Some(Frame {
            message:
                Message::Challenge {
                    nonce: theirs,
                    proof,
                },
            ..
        }) => {
            if !token.verify(Role::Coordinator, &nonce, &theirs, &proof) {
                return Err(WorkerError::Untrusted {
                    at: target.to_string(),
                    reason: "the process listening on it could not prove that it holds \
                             the job's token"
                        .into(),
                });
            }
            theirs
        }
        Some(Frame {
            message: Message::Reject { reason },
            ..
        }) => return Err(WorkerError::Rejected(reason)),
        Some(other) => {
            return Err(WorkerError::Protocol(format!(
                "expected Challenge, got {:?}",
                other.message
            )))
        }
        None => {
            return Err(WorkerError::Rejected(
                "connection closed before Challenge".into(),
            ))
        }
    };
    Ok(token.prove(Role::Worker, &nonce, &theirs))
}

fn serve(config: &Summons) -> Result<(), WorkerError> {
    let stream = config.connect()?;
    // Best effort: the kernel caps it, and a smaller buffer only costs speed.
    let _ = setsockopt(&stream, sockopt::SndBuf, &SEND_BUFFER);
    if let Stream::Tcp(tcp) = &stream {
        // A coordinator across the network may never answer: the handshake has a
        // deadline (cleared once it is done).
        let _ = tcp.set_read_timeout(Some(HANDSHAKE_PATIENCE));
    }
    let mut writer =
        BufWriter::with_capacity(1 << 16, stream.try_clone().map_err(connect_err(config))?);
    let mut reader = BufReader::with_capacity(1 << 16, stream);

    let proof = introduce(
        &mut writer,
        &mut reader,
        &config.token,
        &config.target,
        config.max_frame,
        config.agent,
    )?;
    let join = Message::Join(Join {
        proof,
        capacity: config.capacity,
        max_frame: config.max_frame as u32,
        functions: functions(),
    });
    send(&mut writer, &join)?;

    let (peer_max, flush_interval, beats, spin) =
        match read_frame(&mut reader, config.max_frame).map_err(WorkerError::Read)? {
            Some(Frame {
                message:
                    Message::Welcome {
                        max_frame,
                        flush_interval_us,
                        heartbeat_ms,
                        silence_ms,
                        spin_us,
                        ..
                    },
                ..
            }) => (
                max_frame as usize,
                Duration::from_micros(u64::from(flush_interval_us.max(100))),
                Beats::new(heartbeat_ms, silence_ms),
                // A coordinator's word, but bounded here too: a worker polls for
                // 5 ms at most.
                Spin::new(Duration::from_micros(u64::from(spin_us.min(5_000)))),
            ),
            Some(Frame {
                message: Message::Reject { reason },
                ..
            }) => return Err(WorkerError::Rejected(reason)),
            // The job ended while this worker shook hands: nothing to do, and
            // nothing failed (its host agent, if any, tells this exit 0 before a
            // welcome from a start failure).
            Some(Frame {
                message: Message::Shutdown,
                ..
            }) => return Ok(()),
            Some(other) => {
                return Err(WorkerError::Protocol(format!(
                    "expected Welcome, got {:?}",
                    other.message
                )))
            }
            None => {
                return Err(WorkerError::Rejected(
                    "connection closed before Welcome".into(),
                ))
            }
        };

    // A worker a host agent started tells it that it got this far: from now on
    // its end is a worker's, not a start failure.
    crate::group::welcomed();
    if let Stream::Tcp(tcp) = reader.get_ref() {
        let _ = tcp.set_read_timeout(None);
        if let Some(beats) = &beats {
            // While this worker computes, it reads nothing: the kernel watches the
            // coordinator then (keepalive probes, and a limit on unacknowledged
            // data), and the progress thread sees the connection fail.
            arm_keepalive(tcp, beats);
        }
    }
    let outbox = Arc::new(Outbox {
        writer: Mutex::new(writer),
        peer_max,
        last_sent: Mutex::new(std::time::Instant::now()),
    });
    let progress = Arc::new(Progress::default());
    {
        let (outbox, progress) = (Arc::clone(&outbox), Arc::clone(&progress));
        let watched = match (&beats, reader.get_ref()) {
            (Some(_), Stream::Tcp(tcp)) => tcp.try_clone().ok(),
            _ => None,
        };
        let beats = beats.clone();
        std::thread::Builder::new()
            .name("pstream-worker-progress".into())
            .spawn(move || {
                report_progress(&outbox, &progress, flush_interval, beats.as_ref(), watched)
            })
            .expect("spawn the worker's progress thread");
    }
    crate::group::serving();
    // A function's panics become its item's error, not a message on stderr.
    unwind::capture_on_this_thread();
    // Batches are read on this thread: the kernel's socket buffer already holds the
    // next one while this one is computed, and a thread hop per batch costs more
    // than it saves. A Cancel is seen once the batches sent before it are done;
    // batches of the job read after it are answered empty.
    let mut cancelled: HashSet<u64> = HashSet::new();
    // The receive and result buffers live across batches: no fresh allocation (and
    // no fresh pages) per batch.
    let mut spare = Vec::new();
    let mut out = Items::new();
    let mut spin = spin;
    loop {
        if reader.buffer().is_empty() && !wait_readable(reader.get_ref(), beats.as_ref(), &mut spin)
        {
            return Err(WorkerError::Silent(
                beats.map(|b| b.silence).unwrap_or_default(),
            ));
        }
        let frame = match read_frame_into(&mut reader, config.max_frame, std::mem::take(&mut spare))
        {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => return Err(WorkerError::Read(e)),
        };
        match frame.message {
            Message::Batch(header) => {
                if cancelled.contains(&header.job) {
                    // Answer with no items: the coordinator frees the credit.
                    run_batch(
                        &header,
                        &Items::new(),
                        &mut out,
                        flush_interval,
                        &outbox,
                        &progress,
                    )?;
                } else {
                    run_batch(
                        &header,
                        &frame.items,
                        &mut out,
                        flush_interval,
                        &outbox,
                        &progress,
                    )?;
                }
                spare = frame.items.into_buffer();
            }
            Message::Cancel { job } => {
                cancelled.insert(job);
                spin.hot = false;
            }
            // The coordinator is alive; reading it was the point. Only batches
            // coming back to back make the next wait poll.
            Message::Heartbeat => spin.hot = false,
            Message::Shutdown => {
                crate::group::shutdown_received();
                return Ok(());
            }
            other => {
                return Err(WorkerError::Protocol(format!("unexpected frame {other:?}")));
            }
        }
    }
}

/// Wait in `poll` until the coordinator has sent something (or closed). A thread
/// asleep in `read` on a Unix socket is also woken each time the coordinator takes
/// bytes this worker sent (the socket's "room to write" wake-up reaches readers
/// too): a wasted wake-up per results frame, paid by the coordinator. `poll` for
/// reading is woken only for reading. Errors are left to the read that follows.
/// With heartbeats, false if the coordinator said nothing (not even a heartbeat)
/// for the silence limit. While batches come back to back, it first polls for
/// `spin`'s time without sleeping (see [`Spin`]).
fn wait_readable(stream: &Stream, beats: Option<&Beats>, spin: &mut Spin) -> bool {
    let timeout = match beats {
        Some(b) => PollTimeout::try_from(b.silence.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    let started = Instant::now();
    if spin.hot
        && !spin.limit.is_zero()
        && pstream_protocol::spin::poll_for(
            started,
            spin.limit,
            || matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0),
        )
    {
        return true;
    }
    let readable = loop {
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(0) => break beats.is_none(),
            _ => break true,
        }
    };
    // Batches back to back (as the coordinator's engine counts them): poll next
    // time.
    spin.hot = pstream_protocol::spin::back_to_back(started.elapsed(), spin.limit);
    readable
}

/// How a worker waits for its next batch: a sleep between two batches costs a
/// wake-up that, on a virtual machine, takes tens of microseconds, so while
/// batches come back to back it polls for up to `limit` first (the coordinator's
/// `PoolBuilder::spin`, told in the Welcome). After a wait that did not end
/// within [`pstream_protocol::spin::SPIN_HOT`] (an idle pool, a slow input), or ended with anything but a
/// batch (a heartbeat), it sleeps at once until batches come quickly again: an
/// idle worker does not poll.
#[derive(Debug, Clone, Copy)]
struct Spin {
    limit: Duration,
    hot: bool,
}

impl Spin {
    fn new(limit: Duration) -> Spin {
        Spin { limit, hot: false }
    }
}

/// How long a worker waits for each step of the handshake over the network.
pub(crate) const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(30);

fn connect_err(config: &Summons) -> impl Fn(std::io::Error) -> WorkerError + '_ {
    move |error| WorkerError::Connect {
        at: config.target.to_string(),
        error,
    }
}

/// Compute a batch, sending its results in one or more frames.
fn run_batch(
    header: &BatchHeader,
    items: &Items,
    out: &mut Items,
    flush_interval: Duration,
    outbox: &Outbox,
    progress: &Progress,
) -> Result<(), WorkerError> {
    progress.set(Some((header.job, header.seq)));
    out.clear();
    let mut batch = Batch::new(header, items, out, flush_interval, outbox, progress);
    let result = match registry().get(header.function.as_str()) {
        Some(reg) => (reg.batch)(&mut batch),
        None => {
            let message = format!(
                "this worker does not serve a function named `{}`",
                header.function
            );
            batch.run(|_, _, _, _| {
                Err(CallError {
                    kind: FailureKind::UnknownFunction,
                    message: message.clone(),
                })
            })
        }
    };
    progress.set(None);
    result
}
