//! The coordinator's socket and the handshake: who may become a worker.
//!
//! The socket lives in a private directory (0700, the socket itself 0600) that is
//! removed with the pool. Every connection gets its own short-lived thread for the
//! handshake, so a peer that connects and says nothing delays nobody.
//!
//! The directory's name says whose it is: `pstream-<pid>-<start time>-<random>`, the
//! pid and start time (in clock ticks since boot, from `/proc/<pid>/stat`) of the
//! process that made it. A pool that starts removes the directories of this user
//! whose maker is gone (killed by SIGKILL, say, so nothing ran to remove them).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{getsockopt, shutdown, sockopt::PeerCredentials, Shutdown};
use pstream_protocol::auth::{random_nonce, Role, Token};
use pstream_protocol::{
    read_frame, write_frame, AgentJoin, Frame, Items, Join, Message, PROTOCOL_VERSION,
};

use crate::link::{Link, TcpLink, UnixLink};
use crate::vocab::{DoorState, Event, Events};

/// The largest Hello we read: names of a few thousand functions at most.
const MAX_HELLO: usize = 1 << 20;

/// What a connecting peer must show.
#[derive(Debug)]
pub(crate) struct Checks {
    pub token: Token,
    /// Pids of the workers this pool started and has not yet seen exit.
    pub spawned: Mutex<HashSet<u32>>,
    pub handshake_timeout: Duration,
    /// The job's frame limit: a worker must accept frames this large.
    pub max_frame: usize,
}

/// The listening socket, its directory, and the thread accepting on it.
#[derive(Debug)]
pub(crate) struct Door {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket (a duplicate of the acceptor's descriptor): shut down to
    /// wake the acceptor, whatever became of the path.
    listener: UnixListener,
    acceptor: Option<JoinHandle<()>>,
    // Last: removed after the acceptor has stopped.
    _dir: tempfile::TempDir,
}

impl Door {
    pub fn open(checks: Arc<Checks>, events: Events) -> io::Result<Door> {
        let tmp = std::env::temp_dir();
        check_temp_dir(&tmp)?;
        sweep_stale(&tmp);
        let prefix = match owner_tag(std::process::id()) {
            Some(tag) => format!("pstream-{tag}-"),
            // No /proc: a directory no later pool can prove stale.
            None => "pstream-".into(),
        };
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(&tmp)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let listener = listener.try_clone()?;
            std::thread::Builder::new()
                .name("pstream-acceptor".into())
                .spawn(move || accept_loop(listener, checks, events, stop))?
        };
        Ok(Door {
            path,
            stop,
            listener,
            acceptor: Some(acceptor),
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept through the socket itself, not its path (which
        // may be gone: somebody cleaning $TMPDIR): on Linux, shutting down a listening
        // Unix socket makes a blocked `accept` fail with EINVAL, and every later one
        // fail at once, so the acceptor sees `stop` whether it was in `accept` or
        // about to enter it.
        if let Err(e) = shutdown(self.listener.as_raw_fd(), Shutdown::Both) {
            tracing::warn!("shut down the pool's socket: {e}");
            // Then by its path, if it is still there.
            let _ = UnixStream::connect(&self.path);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Refuse to make the pool's directory where another user could move it aside and
/// put a socket of theirs in its place: in a directory (or below one) that is
/// writable by everybody without the sticky bit, or that belongs to somebody other
/// than this user or root.
fn check_temp_dir(dir: &Path) -> io::Result<()> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing the temporary directory {} (TMPDIR): {why}; another user could \
                 replace the pool's socket there. Set TMPDIR to a directory of your own, \
                 or give this one the sticky bit (chmod +t) as /tmp has",
                dir.display()
            ),
        )
    };
    let canonical = dir.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the temporary directory {} (TMPDIR): {e}", dir.display()),
        )
    })?;
    let me = nix::unistd::geteuid().as_raw();
    for ancestor in canonical.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|e| {
            io::Error::new(e.kind(), format!("inspect {}: {e}", ancestor.display()))
        })?;
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refuse(format!(
                "{} belongs to uid {}, neither this user (uid {me}) nor root",
                ancestor.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(refuse(format!(
                "{} is writable by every user (mode {:04o}) without the sticky bit",
                ancestor.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

fn accept_loop(listener: UnixListener, checks: Arc<Checks>, events: Events, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept on the pool's socket failed: {e}");
                continue;
            }
        };
        let checks = Arc::clone(&checks);
        let events = events.clone();
        let spawned = std::thread::Builder::new()
            .name("pstream-handshake".into())
            .spawn(move || match handshake(&stream, &checks) {
                Ok((_pid, join)) => match UnixLink::new(stream) {
                    Ok(link) => {
                        let link = Box::new(link);
                        let joined = Event::Connected {
                            link,
                            join,
                            agent: None,
                        };
                        if let Err(late) = events.join(joined) {
                            job_over(late);
                        }
                    }
                    Err(e) => tracing::warn!("lost a worker's connection after its handshake: {e}"),
                },
                Err(Refusal { ours, reason }) => {
                    tracing::warn!("refused a connection to the pool's socket: {reason}");
                    if let Some(pid) = ours {
                        // One of our workers failed the handshake: the pool says why.
                        let _ = events.send(Event::Rejected {
                            pid,
                            reason: reason.clone(),
                        });
                    }
                    let reject = Message::Reject { reason };
                    let _ = write_frame(&mut &stream, &reject, &Items::new(), MAX_HELLO);
                    let _ = (&stream).flush();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("could not start a handshake thread: {e}");
        }
    }
}

/// Tell a peer that passed the handshake after the engine stopped taking
/// connections that the job is over (`Shutdown` in place of its welcome): it exits
/// 0, and its host agent does not take it for a start failure.
pub(crate) fn job_over(event: Event) {
    if let Event::Connected { mut link, .. } | Event::AgentConnected { mut link, .. } = event {
        turn_away(&mut link, MAX_HELLO);
    }
}

/// `Shutdown` in place of a welcome, to a peer that passed the handshake as the job
/// ends (best effort: the link is dropped next).
pub(crate) fn turn_away(link: &mut Box<dyn Link>, max_frame: usize) {
    let _ = write_frame(link, &Message::Shutdown, &Items::new(), max_frame);
    let _ = link.flush();
}

/// Why a connection was refused, and whether it came from a worker we started.
struct Refusal {
    ours: Option<u32>,
    reason: String,
}

/// Check a new connection; on success it is a worker of ours, with this pid.
fn handshake(stream: &UnixStream, checks: &Checks) -> Result<(u32, Join), Refusal> {
    let mut ours = None;
    check_peer(stream, checks, &mut ours).map_err(|reason| Refusal { ours, reason })
}

/// The coordinator's half of the handshake (docs/protocol.md): the peer must be a
/// process this pool started, say `Hello` with its own pid, and, after the
/// coordinator proved that it holds the token, prove that it holds it too.
fn check_peer(
    stream: &UnixStream,
    checks: &Checks,
    ours: &mut Option<u32>,
) -> Result<(u32, Join), String> {
    stream
        .set_read_timeout(Some(checks.handshake_timeout))
        .map_err(|e| format!("set a read timeout: {e}"))?;
    let creds =
        getsockopt(stream, PeerCredentials).map_err(|e| format!("read peer credentials: {e}"))?;
    if creds.uid() != nix::unistd::getuid().as_raw() {
        return Err(format!(
            "peer runs as uid {}, not as this user",
            creds.uid()
        ));
    }
    let peer_pid = creds.pid() as u32;
    if !checks.spawned.lock().unwrap().contains(&peer_pid) {
        return Err(format!(
            "peer pid {peer_pid} is not a worker this pool started"
        ));
    }
    *ours = Some(peer_pid);
    let join = match exchange(stream, checks, Some(peer_pid))? {
        Joined::Worker { join, .. } => join,
        Joined::Agent(_) => {
            return Err("a host agent joins over TCP, not on the local socket".into())
        }
    };
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("clear the read timeout: {e}"))?;
    Ok((peer_pid, join))
}

/// Who passed the handshake.
#[derive(Debug)]
enum Joined {
    /// A worker; `agent`: the host agent that started it and its pid there.
    Worker {
        join: Join,
        agent: Option<(u64, u32)>,
    },
    /// A host agent.
    Agent(AgentJoin),
}

/// The handshake proper (docs/protocol.md), the same on every kind of connection:
/// the peer says `Hello` (with `pid`, where the connection knows it, as its pid);
/// the coordinator proves that it holds the token; the peer proves it too and
/// says what it offers (`Join`), or that it is a host agent (`AgentJoin`).
fn exchange(
    mut stream: impl Read + Write,
    checks: &Checks,
    pid: Option<u32>,
) -> Result<Joined, String> {
    let hello = match read_frame(&mut stream, MAX_HELLO) {
        Ok(Some(Frame {
            message: Message::Hello(hello),
            ..
        })) => hello,
        Ok(Some(other)) => return Err(format!("expected Hello, got {:?}", other.message)),
        Ok(None) => return Err("closed before Hello".into()),
        Err(e @ pstream_protocol::DecodeError::Version { .. }) => return Err(e.to_string()),
        Err(e) => return Err(format!("no valid Hello: {e}")),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "the worker speaks protocol version {}, this coordinator speaks version {}: \
             rebuild the plugin against the same pstream version as the coordinator",
            hello.protocol_version, PROTOCOL_VERSION
        ));
    }
    if let Some(peer_pid) = pid {
        if hello.pid != peer_pid {
            return Err(format!(
                "Hello claims pid {} but the socket's peer is pid {peer_pid}",
                hello.pid
            ));
        }
    }
    let nonce = random_nonce().map_err(|e| e.to_string())?;
    let challenge = Message::Challenge {
        nonce,
        proof: checks.token.prove(Role::Coordinator, &hello.nonce, &nonce),
    };
    write_frame(&mut stream, &challenge, &Items::new(), MAX_HELLO)
        .map_err(|e| format!("send the challenge: {e}"))?;
    let (joined, proof) = match read_frame(&mut stream, MAX_HELLO) {
        Ok(Some(Frame {
            message: Message::Join(join),
            ..
        })) => {
            let proof = join.proof;
            let agent = hello.agent.map(|id| (id, hello.pid));
            (Joined::Worker { join, agent }, proof)
        }
        Ok(Some(Frame {
            message: Message::AgentJoin(agent),
            ..
        })) => {
            let proof = agent.proof;
            (Joined::Agent(agent), proof)
        }
        Ok(Some(other)) => return Err(format!("expected Join, got {:?}", other.message)),
        Ok(None) => {
            // A worker closes here when this coordinator's proof did not check out
            // for it: most likely it was given another job's token file.
            return Err(
                "closed before proving that it holds the token: it did not take \
                 this coordinator's proof, so it most likely holds another token (another \
                 --token-file)"
                    .into(),
            );
        }
        Err(e) => return Err(format!("no valid Join: {e}")),
    };
    if !checks
        .token
        .verify(Role::Worker, &hello.nonce, &nonce, &proof)
    {
        return Err(format!(
            "pid {} failed to prove that it holds the job's token (a wrong token)",
            hello.pid
        ));
    }
    // A worker that reads smaller frames than the job sends would exit on the
    // first large item, and look lost: refuse it now, saying what to give it.
    if let Joined::Worker { join, .. } = &joined {
        if (join.max_frame as usize) < checks.max_frame {
            return Err(format!(
                "the worker accepts frames of at most {} bytes, and this job sends up \
                 to {} (its --max-frame): start the worker with --max-frame {}",
                join.max_frame, checks.max_frame, checks.max_frame
            ));
        }
    }
    Ok(joined)
}

/// At most this many handshakes over TCP at once: a flood of connections that say
/// nothing costs a bounded number of threads (each waits at most the handshake
/// timeout). Those beyond wait in the listen backlog until one ends: they were
/// closed at once, and a fan-out of hundreds of workers joining together lost
/// dozens of them that way.
const MAX_TCP_HANDSHAKES: usize = 64;

/// The handshakes under way over TCP, at most [`MAX_TCP_HANDSHAKES`].
#[derive(Debug, Default)]
struct Slots {
    busy: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    /// Wait for a free slot and take it; `false` if `stop` was set meanwhile.
    fn take(&self, stop: &AtomicBool) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= MAX_TCP_HANDSHAKES {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            // A bounded wait: the door's drop sets `stop` without a notification.
            busy = self
                .freed
                .wait_timeout(busy, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += 1;
        true
    }

    fn give(&self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.freed.notify_one();
    }
}

/// Heartbeat settings the TCP door arms each accepted connection's keepalive with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beats {
    pub every: Duration,
    pub silence: Duration,
}

/// The door for workers across the network: a TCP listener and the thread accepting
/// on it. The same handshake as on the local socket, without what only the local
/// kernel can vouch for (the peer's uid and pid): the token proves everything.
#[derive(Debug)]
pub(crate) struct TcpDoor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpDoor {
    /// Accept workers on `listener` (bound already).
    pub fn open(
        listener: TcpListener,
        checks: Arc<Checks>,
        events: Events,
        beats: Beats,
    ) -> io::Result<TcpDoor> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let listener = listener.try_clone()?;
            std::thread::Builder::new()
                .name("pstream-tcp-acceptor".into())
                .spawn(move || accept_tcp(listener, checks, events, stop, beats))?
        };
        Ok(TcpDoor {
            addr,
            stop,
            listener,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on (with the port the system chose, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpDoor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening TCP socket wakes a blocked `accept`
        // (EINVAL), as for the local socket.
        if let Err(e) = shutdown(self.listener.as_raw_fd(), Shutdown::Both) {
            tracing::warn!("shut down the pool's TCP listener: {e}");
            let _ = TcpStream::connect(self.addr);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_tcp(
    listener: TcpListener,
    checks: Arc<Checks>,
    events: Events,
    stop: Arc<AtomicBool>,
    beats: Beats,
) {
    let slots = Arc::new(Slots::default());
    loop {
        // Accept only with a handshake slot free: the others wait in the backlog.
        if !slots.take(&stop) {
            return;
        }
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, from) = match accepted {
            Ok(s) => s,
            Err(e) => {
                slots.give();
                tracing::warn!("accept on the pool's TCP listener failed: {e}");
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let checks = Arc::clone(&checks);
        let events = events.clone();
        let slot = Arc::clone(&slots);
        let spawned = std::thread::Builder::new()
            .name("pstream-tcp-handshake".into())
            .spawn(move || {
                let outcome = stream
                    .set_read_timeout(Some(checks.handshake_timeout))
                    .and_then(|()| stream.set_write_timeout(Some(checks.handshake_timeout)))
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(|e| format!("set up the connection: {e}"))
                    .and_then(|()| exchange(&stream, &checks, None))
                    .and_then(|joined| {
                        stream
                            .set_read_timeout(None)
                            .and_then(|()| stream.set_write_timeout(None))
                            .map_err(|e| format!("clear the timeouts: {e}"))?;
                        Ok(joined)
                    });
                match outcome {
                    Ok(joined) => match TcpLink::new(stream) {
                        Ok(link) => {
                            link.arm_keepalive(beats.every, beats.silence);
                            tracing::debug!("{from} passed the handshake");
                            let link = Box::new(link);
                            let joined = match joined {
                                Joined::Worker { join, agent } => {
                                    Event::Connected { link, join, agent }
                                }
                                Joined::Agent(agent) => Event::AgentConnected { link, agent },
                            };
                            if let Err(late) = events.join(joined) {
                                job_over(late);
                            }
                        }
                        Err(e) => tracing::warn!("lost {from} after its handshake: {e}"),
                    },
                    Err(reason) => {
                        if events.door() == DoorState::Open {
                            tracing::warn!("refused a connection from {from}: {reason}");
                            let _ = events.send(Event::Refused {
                                reason: format!("a connection from {from} was refused: {reason}"),
                            });
                        } else {
                            // The job is ending: a worker whose handshake its
                            // agent, told to stop, cut, most likely; no news.
                            tracing::debug!("refused a connection from {from}: {reason}");
                        }
                        let reject = Message::Reject { reason };
                        let _ = write_frame(&mut &stream, &reject, &Items::new(), MAX_HELLO);
                        let _ = (&stream).flush();
                    }
                }
                slot.give();
            });
        if let Err(e) = spawned {
            slots.give();
            tracing::warn!("could not start a handshake thread: {e}");
        }
    }
}

/// `<pid>-<start time>` of process `pid`: names it uniquely while this system runs
/// (a pid is reused only by a process that starts later).
fn owner_tag(pid: u32) -> Option<String> {
    Some(format!("{pid}-{}", start_time(pid)?))
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`); `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold anything: count from its end.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Remove the socket directories in `tmp` that this user's pools left behind when
/// they were killed: named `pstream-<pid>-<start time>-…`, owned by this uid, whose
/// maker no longer runs, and with no socket listening in them. Best effort: what
/// cannot be removed stays, and nothing else is touched (another user's directory,
/// a live pool's, an older pstream's `pstream-XXXXXX`, anything not a directory).
fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    let mut listening: Option<Option<Vec<String>>> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((pid, start)) = parse_owner(name) else {
            continue;
        };
        // Not followed: a symbolic link is not a directory of ours.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || start_time(pid) == Some(start) {
            continue;
        }
        // Its maker is gone from this pid namespace. A pool in another one (a
        // container sharing this directory) would still listen: keep those.
        let socket = format!("/{name}/socket");
        match listening.get_or_insert_with(listening_sockets) {
            Some(lines) if !lines.iter().any(|line| line.ends_with(&socket)) => {}
            // Listening, or no way to tell.
            _ => continue,
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::debug!("removed the stale socket directory {name}"),
            Err(e) => tracing::debug!("could not remove the stale socket directory {name}: {e}"),
        }
    }
}

/// The pid and start time in a socket directory's name `pstream-<pid>-<start>-<random>`.
fn parse_owner(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix("pstream-")?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?; // the random part
    Some((pid, start))
}

/// The lines of `/proc/net/unix` that show a listening socket (flag
/// `__SO_ACCEPTCON`, 0x10000), each ending with the socket's path; `None` if the
/// table cannot be read.
fn listening_sockets() -> Option<Vec<String>> {
    const ACCEPTCON: u32 = 0x10000;
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    Some(
        table
            .lines()
            .skip(1)
            .filter(|line| {
                // Num RefCount Protocol Flags Type St Inode Path
                line.split_whitespace()
                    .nth(3)
                    .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                    .is_some_and(|flags| flags & ACCEPTCON != 0)
            })
            .map(str::to_string)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn checks() -> Arc<Checks> {
        Arc::new(Checks {
            token: Token::random().unwrap(),
            spawned: Mutex::new(HashSet::new()),
            handshake_timeout: Duration::from_secs(5),
            max_frame: pstream_protocol::DEFAULT_MAX_FRAME,
        })
    }

    /// Run `f` on a thread; fail the test if it takes longer than a generous deadline
    /// (the thread is left behind, the test process ends).
    fn within_deadline(what: &str, f: impl FnOnce() + Send + 'static) {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(30)).is_ok(),
            "{what} did not finish"
        );
    }

    #[test]
    fn a_door_whose_directory_was_deleted_still_closes() {
        let (events, _rx, _wake) = Events::new().unwrap();
        let door = Door::open(checks(), events).unwrap();
        let dir = door.path().parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap();
        within_deadline("dropping the door", move || drop(door));
    }

    #[test]
    fn a_closed_door_removes_its_directory() {
        let (events, _rx, _wake) = Events::new().unwrap();
        let door = Door::open(checks(), events).unwrap();
        let dir = door.path().parent().unwrap().to_path_buf();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            parse_owner(&name).map(|(pid, _)| pid),
            Some(std::process::id()),
            "{name} does not name its maker"
        );
        assert!(door.path().exists());
        within_deadline("dropping the door", move || drop(door));
        assert!(!dir.exists());
    }

    #[test]
    fn the_sweep_removes_only_stale_directories_of_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let make = |name: &str| {
            let path = tmp.path().join(name);
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("socket"), b"").unwrap();
            path
        };
        // Our pid with another start time: a process that had this pid before us.
        let stale = make(&format!("pstream-{me}-{}-aaaaaa", start + 1));
        let live = make(&format!("pstream-{me}-{start}-bbbbbb"));
        let old_format = make("pstream-cccccc");
        let not_ours = make("other-1-2-dddddd");
        // A stale name, but a socket listens in it (a pool of another pid namespace).
        let listened = tmp
            .path()
            .join(format!("pstream-{me}-{}-eeeeee", start + 1));
        std::fs::create_dir(&listened).unwrap();
        let _listener = UnixListener::bind(listened.join("socket")).unwrap();
        // Not directories.
        let file = tmp
            .path()
            .join(format!("pstream-{me}-{}-ffffff", start + 1));
        std::fs::write(&file, b"").unwrap();
        let link = tmp
            .path()
            .join(format!("pstream-{me}-{}-gggggg", start + 1));
        std::os::unix::fs::symlink(&live, &link).unwrap();

        sweep_stale(tmp.path());

        assert!(!stale.exists(), "the stale directory was kept");
        for kept in [&live, &old_format, &not_ours, &listened, &file] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(
            link.symlink_metadata().is_ok(),
            "the symbolic link was removed"
        );
        assert!(live.join("socket").exists());
    }
}
