//! Polling before sleeping, as both ends of a connection do it while frames come
//! back to back (the coordinator's engine for results, a worker for its next
//! batch; `PoolBuilder::spin`). One rule for both, so that they agree on what
//! "back to back" means.

use std::time::{Duration, Instant};

/// Work that came within this long of a wait's start (or within the spin, if
/// longer) came back to back: the next wait polls first. Not the spin itself:
/// over TCP many waits for results last longer than 300 µs, and with the spin as
/// the limit the engine stopped polling there (`double` over TCP ÷ the Unix
/// socket 0.69× against 0.80× in one pair of runs). The cost: a thread whose
/// work comes 0.3–1 ms apart polls in vain before each (CPU, not time).
pub const SPIN_HOT: Duration = Duration::from_millis(1);

/// Whether a wait that took `waited` and ended with work was back to back, for a
/// spin of `spin`: the next wait should poll first.
pub fn back_to_back(waited: Duration, spin: Duration) -> bool {
    waited <= SPIN_HOT.max(spin)
}

/// Call `look` until it returns true or `limit` has passed since `started`,
/// giving the CPU to anything else runnable on this CPU between looks
/// (`sched_yield`); whether it returned true.
pub fn poll_for(started: Instant, limit: Duration, mut look: impl FnMut() -> bool) -> bool {
    loop {
        if look() {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_found_or_the_limit() {
        let mut looks = 0;
        assert!(poll_for(Instant::now(), Duration::from_secs(30), || {
            looks += 1;
            looks == 3
        }));
        assert_eq!(looks, 3);
        // Nothing found: it gives up once the limit has passed, having looked once
        // at least.
        let mut looks = 0;
        assert!(!poll_for(Instant::now(), Duration::ZERO, || {
            looks += 1;
            false
        }));
        assert_eq!(looks, 1);
    }

    #[test]
    fn back_to_back_is_within_a_millisecond_or_the_spin() {
        let us = Duration::from_micros;
        assert!(back_to_back(us(900), us(300)));
        assert!(!back_to_back(us(1100), us(300)));
        assert!(back_to_back(us(4000), us(5000)));
        assert!(!back_to_back(us(5100), us(5000)));
    }
}
