//! A clock for loops over items that must act after an interval, looking at the
//! time only every so many items so that tiny items do not pay for it.

use std::time::{Duration, Instant};

/// When to act (send the results in hand, cut a batch) after `interval`, looking
/// at the clock only every `stride` items, a stride that adapts to the items' pace.
#[derive(Debug)]
pub struct FlushClock {
    interval: Duration,
    last: Instant,
    stride: u32,
    countdown: u32,
}

impl FlushClock {
    /// A clock whose interval starts now.
    pub fn new(interval: Duration) -> FlushClock {
        FlushClock {
            interval,
            last: Instant::now(),
            stride: 1,
            countdown: 1,
        }
    }

    /// Called after each item: whether it is time to flush.
    #[inline]
    pub fn due(&mut self) -> bool {
        self.countdown -= 1;
        if self.countdown > 0 {
            return false;
        }
        let now = Instant::now();
        let elapsed = now - self.last;
        // Aim at looking a few times per interval.
        if elapsed < self.interval / 16 {
            self.stride = (self.stride * 2).min(1024);
        } else if elapsed > self.interval / 4 {
            self.stride = (self.stride / 2).max(1);
        }
        self.countdown = self.stride;
        if elapsed >= self.interval {
            self.last = now;
            true
        } else {
            false
        }
    }

    /// Start the interval afresh now (the thing it times was just done).
    pub fn restart(&mut self) {
        self.last = Instant::now();
    }
}
