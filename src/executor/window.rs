//! The memory bound of a thread executor's job: permits for items read from the input
//! and not yet handed to the consumer.

use std::sync::{Condvar, Mutex};

/// At most `size` items may be out at once. The feeder takes permits before it reads
/// an item; the consumer gives them back once it has handed the items out. Closing
/// the window (the consumer went away) wakes and stops the feeder.
#[derive(Debug)]
pub(crate) struct Window {
    size: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Permits nobody holds.
    available: usize,
    /// Set when the consumer is gone: no permit is ever handed out again.
    closed: bool,
}

impl Window {
    pub fn new(size: usize) -> Window {
        Window {
            size,
            state: Mutex::new(State {
                available: size,
                closed: false,
            }),
            freed: Condvar::new(),
        }
    }

    /// Up to `want` permits; if `wait`, at least one (waiting for the consumer to
    /// free some). `None` once the window is closed.
    pub fn acquire(&self, want: usize, wait: bool) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.closed {
                return None;
            }
            if state.available > 0 || !wait {
                let got = state.available.min(want);
                state.available -= got;
                return Some(got);
            }
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Give `n` permits back.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.available += n;
        debug_assert!(state.available <= self.size, "more permits back than out");
        drop(state);
        self.freed.notify_one();
    }

    /// No more permits, ever; wakes a waiting feeder.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.freed.notify_all();
    }

    /// Permits held now: items read and not yet handed out.
    pub fn in_use(&self) -> usize {
        self.size
            - self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_at_most_its_size_and_stops_when_closed() {
        let w = Window::new(3);
        assert_eq!(w.acquire(2, true), Some(2));
        assert_eq!(w.acquire(5, false), Some(1));
        assert_eq!(w.acquire(5, false), Some(0));
        assert_eq!(w.in_use(), 3);
        w.release(2);
        assert_eq!(w.in_use(), 1);
        assert_eq!(w.acquire(5, true), Some(2));
        w.close();
        assert_eq!(w.acquire(1, true), None);
    }
}
