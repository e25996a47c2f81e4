//! The coordinator's socket and the handshake: who may become a worker.
//!
//! The socket lives in a private directory (0700, the socket itself 0600) that is
//! removed with the pool. Every connection gets its own short-lived thread for the
//! handshake, so a peer that connects and says nothing delays nobody.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use pstream_protocol::{read_frame, write_frame, Frame, Hello, Items, Message, PROTOCOL_VERSION};

use crate::engine::{Event, Events};
use crate::process::constant_time_eq;

/// The largest Hello we read: names of a few thousand functions at most.
const MAX_HELLO: usize = 1 << 20;

/// What a connecting peer must show.
#[derive(Debug)]
pub(crate) struct Checks {
    pub token: String,
    /// Pids of the workers this pool started and has not yet seen exit.
    pub spawned: Mutex<HashSet<u32>>,
    pub handshake_timeout: Duration,
}

/// The listening socket, its directory, and the thread accepting on it.
#[derive(Debug)]
pub(crate) struct Door {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    // Last: removed after the acceptor has stopped.
    _dir: tempfile::TempDir,
}

impl Door {
    pub fn open(checks: Arc<Checks>, events: Events) -> io::Result<Door> {
        let dir = tempfile::Builder::new().prefix("pstream-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("pstream-acceptor".into())
                .spawn(move || accept_loop(listener, checks, events, stop))?
        };
        Ok(Door {
            path,
            stop,
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
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
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
                Ok(hello) => {
                    let _ = events.send(Event::Connected {
                        pid: hello.pid,
                        stream,
                        hello,
                    });
                }
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

/// Why a connection was refused, and whether it came from a worker we started.
struct Refusal {
    ours: Option<u32>,
    reason: String,
}

/// Check a new connection; on success it is a worker of ours.
fn handshake(stream: &UnixStream, checks: &Checks) -> Result<Hello, Refusal> {
    let mut ours = None;
    check_peer(stream, checks, &mut ours).map_err(|reason| Refusal { ours, reason })
}

fn check_peer(
    stream: &UnixStream,
    checks: &Checks,
    ours: &mut Option<u32>,
) -> Result<Hello, String> {
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
    let hello = match read_frame(&mut &*stream, MAX_HELLO) {
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
    if !constant_time_eq(hello.token.as_bytes(), checks.token.as_bytes()) {
        return Err(format!("pid {peer_pid} presented a wrong token"));
    }
    if hello.pid != peer_pid {
        return Err(format!(
            "Hello claims pid {} but the socket's peer is pid {peer_pid}",
            hello.pid
        ));
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("clear the read timeout: {e}"))?;
    Ok(hello)
}
