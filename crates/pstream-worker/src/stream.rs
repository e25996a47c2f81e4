//! A connection to the coordinator, whichever kind: the local socket or TCP, and
//! the heartbeats it keeps across the network. A leaf.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// A connection to the coordinator: the local socket or TCP.
#[doc(hidden)]
#[derive(Debug)]
pub enum Stream {
    /// The local socket.
    Unix(UnixStream),
    /// Over the network.
    Tcp(std::net::TcpStream),
}

impl Stream {
    /// A second handle on the same connection.
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

/// The heartbeats of a connection across the network, as the coordinator set them
/// in its Welcome.
#[derive(Debug, Clone)]
pub(crate) struct Beats {
    /// Send a heartbeat after this long with nothing sent.
    pub every: Duration,
    /// Give the coordinator up after this long with nothing heard.
    pub silence: Duration,
}

impl Beats {
    pub(crate) fn new(heartbeat_ms: u32, silence_ms: u32) -> Option<Beats> {
        (heartbeat_ms > 0 && silence_ms > 0).then(|| Beats {
            every: Duration::from_millis(heartbeat_ms.into()),
            silence: Duration::from_millis(silence_ms.into()),
        })
    }
}

/// Let the kernel watch a TCP connection while this side reads nothing: keepalive
/// probes after a heartbeat interval of quiet, and the connection given up after
/// the silence limit without an answer to a probe, or with data unacknowledged
/// (`TCP_USER_TIMEOUT`). Best effort.
pub(crate) fn arm_keepalive(tcp: &std::net::TcpStream, beats: &Beats) {
    let every = beats.every.as_secs().max(1) as u32;
    let count = (beats.silence.as_secs() as u32 / every).max(1);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &every);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &every);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &count);
    let _ = setsockopt(
        tcp,
        sockopt::TcpUserTimeout,
        &(beats.silence.as_millis().min(u32::MAX as u128) as u32),
    );
}
