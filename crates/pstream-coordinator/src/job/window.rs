//! The flow-control window: what bounds the items (and bytes) a job has read from
//! its input and not yet handed to its consumer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// The flow-control window: how many items, and how many of their bytes, may be read
/// from the input and not yet handed to the consumer. The feeder takes permits
/// before reading and registers each batch it sends with its bytes; the consumer
/// gives them back as it takes results; closing it (the consumer went away) wakes
/// and stops the feeder. Shared by the process pool and the thread executor (which
/// counts items only).
#[derive(Debug)]
pub struct Window {
    size: usize,
    /// Set with `state.closed`, read without the lock before every item.
    cancelled: AtomicBool,
    state: Mutex<WindowState>,
    freed: Condvar,
}

#[derive(Debug)]
struct WindowState {
    available: usize,
    closed: bool,
    /// Threads waiting for permits: with none, giving permits back makes no
    /// system call (a condition variable's notify always does).
    waiting: usize,
    /// Bytes of the batches sent and not yet wholly handed out, and the most there
    /// may be before the feeder waits (it never waits with nothing in flight).
    bytes: u64,
    max_bytes: u64,
    /// The batches sent and not yet wholly handed out: first index → (items, items
    /// not yet handed out, bytes).
    batches: BTreeMap<u64, (u64, u64, u64)>,
}

impl Window {
    /// A window of `size` permits, all free, and no bound on bytes.
    pub fn new(size: usize) -> Window {
        Window::with_bytes(size, u64::MAX)
    }

    /// A window of `size` items and `max_bytes` bytes of encoded items.
    pub fn with_bytes(size: usize, max_bytes: u64) -> Window {
        Window {
            size,
            cancelled: AtomicBool::new(false),
            state: Mutex::new(WindowState {
                available: size,
                closed: false,
                waiting: 0,
                bytes: 0,
                max_bytes,
                batches: BTreeMap::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// Take up to `want` permits, waiting for at least one if `block`. `None` once
    /// the window is closed (the job was cancelled). None is free while the bytes in
    /// flight are at their bound.
    pub fn acquire(&self, want: usize, block: bool) -> Option<usize> {
        let mut state = self.state.lock().unwrap();
        loop {
            if state.closed {
                return None;
            }
            let full = state.bytes >= state.max_bytes && !state.batches.is_empty();
            if !full && state.available > 0 || !block {
                let got = if full { 0 } else { state.available.min(want) };
                state.available -= got;
                return Some(got);
            }
            state.waiting += 1;
            state = self.freed.wait(state).unwrap();
            state.waiting -= 1;
        }
    }

    /// Give `n` permits back.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.available += n;
        debug_assert!(state.available <= self.size);
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// A batch of `items` items from index `first`, `bytes` bytes in all, was sent.
    /// Whether the bytes in flight are now at their bound (the feeder then gives
    /// back the permits it holds, and reads on once batches are out).
    pub fn sent(&self, first: u64, items: u64, bytes: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.max_bytes == u64::MAX {
            return false;
        }
        state.bytes += bytes;
        state.batches.insert(first, (items, items, bytes));
        state.bytes >= state.max_bytes
    }

    /// The `n` results from index `first` on were handed out: give their permits
    /// back, and the bytes of each batch whose results are now all out.
    pub fn release_results(&self, first: u64, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.available += n;
        debug_assert!(state.available <= self.size);
        // The batch that holds them, if they came from one (an item that failed
        // before it was sent did not).
        let holder = state
            .batches
            .range_mut(..=first)
            .next_back()
            .filter(|(start, (items, _, _))| first < *start + *items)
            .map(|(start, entry)| {
                entry.1 = entry.1.saturating_sub(n as u64);
                (*start, entry.1, entry.2)
            });
        if let Some((start, 0, bytes)) = holder {
            state.batches.remove(&start);
            state.bytes -= bytes;
        }
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// No more permits, ever; wakes a waiting feeder.
    pub fn close(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.state.lock().unwrap().closed = true;
        self.freed.notify_all();
    }

    /// Whether it was closed (cheap: no lock).
    pub fn is_closed(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Permits held now: items read and not yet handed out.
    pub fn in_use(&self) -> usize {
        self.size - self.state.lock().unwrap().available
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

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
        assert!(!w.is_closed());
        w.close();
        assert!(w.is_closed());
        assert_eq!(w.acquire(1, true), None);
    }

    #[test]
    fn bytes_in_flight_hold_the_feeder_until_whole_batches_are_out() {
        let w = Window::with_bytes(100, 10);
        assert_eq!(w.acquire(10, false), Some(10));
        w.sent(0, 5, 8);
        // Under the bound: permits still come.
        assert_eq!(w.acquire(5, false), Some(5));
        w.sent(5, 5, 8);
        assert_eq!(w.acquire(5, false), Some(0), "16 bytes of 10 in flight");
        // Part of the first batch out: its bytes stay in flight.
        w.release_results(0, 3);
        assert_eq!(w.acquire(5, false), Some(0));
        // All of it: 8 bytes left, under the bound.
        w.release_results(3, 2);
        assert_eq!(w.acquire(5, false), Some(5));
        // A result that came from no batch (an item that failed before it was
        // sent) gives back its permit only.
        w.release_results(50, 1);
        w.sent(10, 5, 8);
        assert_eq!(w.acquire(1, false), Some(0));
        // A batch larger than the bound holds the feeder until it is out.
        w.release_results(5, 5);
        w.release_results(10, 5);
        w.sent(15, 1, 1000);
        assert_eq!(w.acquire(1, false), Some(0));
        w.release_results(15, 1);
        assert_eq!(w.acquire(1, false), Some(1), "nothing in flight");
    }

    #[test]
    fn a_feeder_waiting_for_bytes_wakes_when_a_batch_is_out() {
        let w = std::sync::Arc::new(Window::with_bytes(100, 10));
        assert_eq!(w.acquire(4, false), Some(4));
        w.sent(0, 4, 20);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let w = std::sync::Arc::clone(&w);
            std::thread::spawn(move || tx.send(w.acquire(3, true)).unwrap())
        };
        // It cannot have its permits while the batch is in flight: it waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while w.state.lock().unwrap().waiting == 0 {
            if let Ok(got) = rx.try_recv() {
                panic!("got {got:?} while the batch was in flight");
            }
            assert!(std::time::Instant::now() < deadline, "never waited");
            std::thread::yield_now();
        }
        assert!(rx.try_recv().is_err());
        w.release_results(0, 4);
        assert_eq!(rx.recv().unwrap(), Some(3));
        waiter.join().unwrap();
    }
}
