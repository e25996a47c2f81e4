//! The engine's wait: one epoll set that holds every worker's connection and the
//! eventfd events ring, so that a step costs the engine the sockets that are ready,
//! not one look at every worker.
//!
//! A connection is added once, when it is made, for reading (level-triggered), and
//! removed when it is dropped. It asks to hear of writability only while the socket
//! cannot take what it has queued (a write was cut short), and stops asking once its
//! queue is empty again: with room in the socket buffer, a queue is written where
//! it filled, in the next `prepare`, from the list of connections whose queue went
//! from empty to non-empty ([`Poller::pending`]), with no look at the others.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// The token of the eventfd that wakes the engine (worker ids count up from 0).
pub(crate) const WAKE: u64 = u64::MAX;

/// Ready sockets taken from the kernel per wait; more are reported by the next.
const EVENTS: usize = 256;

pub(crate) struct Poller {
    epoll: Epoll,
    /// Connections whose send queue went from empty to non-empty since the engine
    /// last took the list (a connection may be listed twice: its second flush finds
    /// nothing to write).
    pending: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

/// What a wait found: a connection (by its token) or the eventfd, and how it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
}

impl Poller {
    /// An epoll set holding `wake` (readable when rung).
    pub fn new(wake: BorrowedFd<'_>) -> io::Result<Poller> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        Ok(Poller {
            epoll,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Watch a connection for reading.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        Ok(())
    }

    /// Watch it for writability too (`on`), or no longer.
    pub fn want_writable(&self, fd: BorrowedFd<'_>, token: u64, on: bool) -> io::Result<()> {
        let mut flags = EpollFlags::EPOLLIN;
        if on {
            flags |= EpollFlags::EPOLLOUT;
        }
        self.epoll.modify(fd, &mut EpollEvent::new(flags, token))?;
        Ok(())
    }

    /// Stop watching a connection (before its socket is closed).
    pub fn remove(&self, fd: BorrowedFd<'_>) {
        if let Err(e) = self.epoll.delete(fd) {
            tracing::warn!("could not take a connection out of the epoll set: {e}");
        }
    }

    /// A connection has bytes queued: the next `prepare` writes them.
    pub fn pending(&self, token: u64) {
        self.pending.lock().unwrap().push(token);
    }

    /// Move the connections with bytes queued into `into`.
    pub fn take_pending(&self, into: &mut Vec<u64>) {
        into.append(&mut self.pending.lock().unwrap());
    }

    /// As [`Poller::wait`], but first look without sleeping for up to `spin`,
    /// giving the CPU to anything else runnable between looks: a frame that comes
    /// within `spin` costs no sleep and no wake-up. The looks are part of the
    /// wait: it still ends by `timeout` (a deadline is not put off by the spin).
    pub fn wait_spinning(&self, timeout: EpollTimeout, spin: Duration, into: &mut Vec<Ready>) {
        let mut timeout = timeout;
        if !spin.is_zero() && timeout != EpollTimeout::ZERO {
            let started = Instant::now();
            let limit = finite(timeout);
            let spin = limit.map_or(spin, |t| spin.min(t));
            if pstream_protocol::spin::poll_for(started, spin, || {
                self.wait(EpollTimeout::ZERO, into);
                !into.is_empty()
            }) {
                return;
            }
            if let Some(t) = limit {
                timeout = timeout_for(t.saturating_sub(started.elapsed()));
            }
        }
        self.wait(timeout, into);
    }

    /// Wait for a connection or the eventfd, at most `timeout`; `into` gets what is
    /// ready (nothing on a signal: the caller goes round again).
    pub fn wait(&self, timeout: EpollTimeout, into: &mut Vec<Ready>) {
        into.clear();
        let mut events = [EpollEvent::empty(); EVENTS];
        let n = match self.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!("epoll_wait failed: {e}");
                0
            }
        };
        into.extend(events[..n].iter().map(|e| {
            let flags = e.events();
            Ready {
                token: e.data(),
                readable: flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR),
                writable: flags.intersects(EpollFlags::EPOLLOUT),
            }
        }));
    }
}

/// A timeout as a duration; `None` for no timeout. (Not nix's `duration()`, which
/// panics on `NONE`.)
/// An epoll timeout for what is `left` until a deadline, rounded up to whole
/// milliseconds: a wait never ends just before its deadline.
pub fn timeout_for(left: Duration) -> EpollTimeout {
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
}

fn finite(timeout: EpollTimeout) -> Option<Duration> {
    u128::try_from(timeout)
        .ok()
        .map(|ms| Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;

    #[test]
    fn a_spin_is_part_of_the_wait_not_added_to_it() {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
        let poller = Poller::new(wake.as_fd()).unwrap();
        let mut ready = Vec::new();
        // Nothing comes: a wait of 1 s that spins as long must end after 1 s,
        // not spin 1 s and then sleep 1 s more (as it did: 2.0 s). The engine's
        // spins are at most 5 ms; this one is long so that load, which only
        // lengthens waits, cannot blur the difference.
        let started = Instant::now();
        poller.wait_spinning(
            EpollTimeout::try_from(1000).unwrap(),
            Duration::from_secs(1),
            &mut ready,
        );
        let waited = started.elapsed();
        assert!(ready.is_empty());
        assert!(waited >= Duration::from_secs(1), "ended early: {waited:?}");
        assert!(
            waited < Duration::from_millis(1700),
            "a wait of 1 s that spun 1 s took {waited:?}"
        );
    }
}
