//! A link: one worker's connection, as the engine needs it. A byte stream that can
//! be made non-blocking, polled (its fd), read and written, with its sending side
//! shut on request, and the identity of the peer at its other end. [`Conn`] cuts
//! frames out of a link and queues frames onto it; it never sees what kind of
//! connection is underneath.
//!
//! The local Unix socket is the first kind; a socketpair is the same type, which
//! lets the engine be tested without processes. TCP is the second ([`TcpLink`]),
//! for workers on other machines.
//!
//! [`Conn`]: crate::conn::Conn

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Who is at the other end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A process on this machine, as the kernel vouches for it (`SO_PEERCRED`).
    Local { pid: u32, uid: u32 },
    /// A process across the network, known by its address only (the token it
    /// proved is all that vouches for it).
    Remote { addr: SocketAddr },
}

impl Peer {
    /// The peer's process id, where the link knows it.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            Peer::Local { pid, .. } => Some(pid),
            Peer::Remote { .. } => None,
        }
    }

    /// The host it runs on, for per-host figures: `"local"`, or its IP address.
    pub fn host(&self) -> String {
        match self {
            Peer::Local { .. } => "local".into(),
            Peer::Remote { addr } => addr.ip().to_string(),
        }
    }

    /// Whether it is across the network: its connection may be lost without the
    /// process having died, so a lost connection says nothing about its work.
    pub fn is_remote(&self) -> bool {
        matches!(self, Peer::Remote { .. })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Local { pid, uid } => write!(f, "pid {pid} (uid {uid})"),
            Peer::Remote { addr } => write!(f, "{addr}"),
        }
    }
}

/// What the engine needs of a connection to one worker.
pub(crate) trait Link: Read + Write + AsFd + Send + fmt::Debug {
    /// Reads and writes return `WouldBlock` instead of waiting (or wait again).
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// No more bytes from us: the peer reads the end of the stream.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Ask the kernel for a send buffer of `bytes` (best effort).
    fn set_send_buffer(&self, bytes: usize);
    /// Who is at the other end.
    fn peer(&self) -> Peer;
}

/// A local Unix-domain socket, with the peer's credentials read when it connected.
#[derive(Debug)]
pub(crate) struct UnixLink {
    stream: UnixStream,
    peer: Peer,
}

impl UnixLink {
    /// The link over `stream`, with the peer's credentials from the kernel.
    pub fn new(stream: UnixStream) -> io::Result<UnixLink> {
        let creds =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(io::Error::from)?;
        Ok(UnixLink {
            stream,
            peer: Peer::Local {
                pid: creds.pid() as u32,
                uid: creds.uid(),
            },
        })
    }
}

/// Read, Write, AsFd and Link for a link that is a std socket (`stream`) and the
/// peer it was made with: Unix and TCP links differ only in how they are made.
macro_rules! socket_link {
    ($link:ty) => {
        impl Read for $link {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.stream.read(buf)
            }
        }

        impl Write for $link {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.stream.write(buf)
            }

            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                self.stream.write_vectored(bufs)
            }

            fn flush(&mut self) -> io::Result<()> {
                self.stream.flush()
            }
        }

        impl AsFd for $link {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.stream.as_fd()
            }
        }

        impl Link for $link {
            fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
                self.stream.set_nonblocking(nonblocking)
            }

            fn shutdown_write(&self) -> io::Result<()> {
                self.stream.shutdown(std::net::Shutdown::Write)
            }

            fn set_send_buffer(&self, bytes: usize) {
                let _ = nix::sys::socket::setsockopt(
                    &self.stream,
                    nix::sys::socket::sockopt::SndBuf,
                    &bytes,
                );
            }

            fn peer(&self) -> Peer {
                self.peer
            }
        }
    };
}

socket_link!(UnixLink);

/// A TCP connection to a worker on another machine (or this one, over loopback).
/// Frames go out at once (`TCP_NODELAY`): a batch or a credit must not wait for
/// Nagle's algorithm.
#[derive(Debug)]
pub(crate) struct TcpLink {
    stream: TcpStream,
    peer: Peer,
}

impl TcpLink {
    /// The link over `stream`, with `TCP_NODELAY` set.
    pub fn new(stream: TcpStream) -> io::Result<TcpLink> {
        stream.set_nodelay(true)?;
        let addr = stream.peer_addr()?;
        Ok(TcpLink {
            stream,
            peer: Peer::Remote { addr },
        })
    }

    /// Let the kernel watch the connection too: keepalive probes after `every` of
    /// quiet, and the connection failed after `silence` without an answer to a
    /// probe or with data unacknowledged (`TCP_USER_TIMEOUT`). Best effort: the
    /// engine's own heartbeats decide.
    pub fn arm_keepalive(&self, every: Duration, silence: Duration) {
        use nix::sys::socket::{setsockopt, sockopt};
        let every_s = every.as_secs().max(1) as u32;
        let count = (silence.as_secs() as u32 / every_s).max(1);
        let _ = setsockopt(&self.stream, sockopt::KeepAlive, &true);
        let _ = setsockopt(&self.stream, sockopt::TcpKeepIdle, &every_s);
        let _ = setsockopt(&self.stream, sockopt::TcpKeepInterval, &every_s);
        let _ = setsockopt(&self.stream, sockopt::TcpKeepCount, &count);
        let user_timeout = silence.as_millis().min(u32::MAX as u128) as u32;
        let _ = setsockopt(&self.stream, sockopt::TcpUserTimeout, &user_timeout);
    }
}

socket_link!(TcpLink);
