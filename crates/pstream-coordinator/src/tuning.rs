//! The tuning constants of batching, each in one place: the process pool's feeder
//! and the thread executor both read them here.

use std::time::Duration;

/// How long items read may wait while no worker has anything to do. The pool's
/// feeder sends a batch this old, full or not, while the workers are idle; the
/// thread executor's lone reader stops reading and computes the items it holds. A
/// slow input's items do not wait for a full batch, and a fast input's batches are
/// not cut to a few items each (a batch costs system calls and wake-ups).
pub const IDLE_CUT: Duration = Duration::from_micros(100);

/// How long, by default, whoever waits for the next frame while frames come back
/// to back (the engine for results, a worker for its next batch) polls before it
/// sleeps (`PoolBuilder::spin`). A process that sleeps between two batches is
/// woken by the next one, and on a virtual machine that wake-up of an idle CPU
/// costs tens of microseconds (`perf bench sched pipe`: 70 µs a round trip on the
/// machine of docs/benchmarks.md): with the default window it, not the items,
/// set the pace of trivial items. A wait polls only after one that ended within
/// [`SPIN_HOT`] (or the spin, if longer) with work (results; a batch, for a
/// worker), and gives the CPU to anything else runnable at each turn
/// (`sched_yield`).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(300);

/// The longest spin a pool accepts: beyond a few milliseconds polling costs more
/// than the sleep it saves.
pub const MAX_SPIN: Duration = Duration::from_millis(5);

/// Results within this long of a wait's start (or the spin, if longer) came back
/// to back (shared with the workers: `pstream_protocol::spin`).
pub use pstream_protocol::spin::SPIN_HOT;

/// The largest batch a process pool cuts unless told otherwise
/// (`PoolBuilder::max_batch`).
pub const POOL_MAX_BATCH: usize = 4096;

/// The largest batch a thread of the thread executor takes at once: large enough
/// that a channel operation per batch costs nothing next to the items, small
/// enough that the threads share the work of a short input.
pub const THREAD_MAX_BATCH: usize = 1024;

/// A round trip at least this long is a link's (a network between the
/// coordinator and a worker), not a wake-up's: the window is checked against it.
pub const LINK_RTT: Duration = Duration::from_millis(1);

/// The fewest items a batch grows to, whatever the worker count, in a pool whose
/// workers join over the network (unless the window holds fewer than two such
/// batches: then half the window). There, each batch costs a frame over TCP and
/// wakes a process that has slept since its last one: with 512 workers on 2
/// cores, batches of 512 items (ten in flight, each to another worker) moved
/// `double` at 0.35× the rate of 2 workers, batches of 2,500 (two in flight) at
/// about 0.5×. A window too small for a batch of this size per worker leaves
/// workers idle: raise it. Pools of workers on this machine only split the window
/// among them with no floor (their batches are cheap).
pub const MIN_LINK_BATCH: usize = 2048;

/// The fewest bytes after which a batch is cut in such a pool (unless the byte
/// window holds fewer than two such batches).
pub const MIN_LINK_BATCH_BYTES: u64 = 256 << 10;

/// The size batches grow to (from one item, doubling): two batches in flight per
/// worker fit in a window of `window` items, and no batch has more than `most`
/// items, fewer than `floor` (half the window at most), or fewer than one.
pub fn max_batch(window: usize, workers: usize, most: usize, floor: usize) -> usize {
    let floor = floor.min(window / 2);
    (window / (2 * workers.max(1)))
        .max(floor)
        .clamp(1, most.max(1))
}

/// The bytes after which a batch is cut: two batches in flight per worker fit in
/// a byte window of `window_bytes`, and none is cut before `floor` (half the byte
/// window at most) or after `most`.
pub fn max_batch_bytes(window_bytes: u64, workers: usize, most: usize, floor: u64) -> usize {
    let floor = floor.min(window_bytes / 2);
    (window_bytes / (2 * workers.max(1) as u64))
        .max(floor)
        .clamp(1, most.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sized_for_the_workers_present_down_to_a_floor() {
        let most = POOL_MAX_BATCH;
        // Two workers: two batches each in the default window.
        assert_eq!(max_batch(5_000, 2, most, 1), 1_250);
        // One worker: half the window, up to the most.
        assert_eq!(max_batch(5_000, 1, most, 1), 2_500);
        assert_eq!(max_batch(50_000, 1, most, 1), most);
        // 512 workers on this machine: what the window allows.
        assert_eq!(max_batch(5_000, 512, most, 1), 4);
        // 512 across the network: not 4 items per batch, the floor.
        assert_eq!(max_batch(5_000, 512, most, MIN_LINK_BATCH), MIN_LINK_BATCH);
        assert_eq!(max_batch(500_000, 64, most, MIN_LINK_BATCH), 3_906);
        // A small window: half of it, never more.
        assert_eq!(max_batch(100, 512, most, MIN_LINK_BATCH), 50);
        assert_eq!(max_batch(1, 512, most, MIN_LINK_BATCH), 1);
        assert_eq!(max_batch(5_000, 2, 1, MIN_LINK_BATCH), 1);
        // Bytes, likewise.
        assert_eq!(max_batch_bytes(4 << 20, 2, usize::MAX, 1), 1 << 20);
        assert_eq!(max_batch_bytes(4 << 20, 512, usize::MAX, 1), 4 << 10);
        let floor = MIN_LINK_BATCH_BYTES;
        assert_eq!(max_batch_bytes(4 << 20, 512, usize::MAX, floor), 256 << 10);
        assert_eq!(max_batch_bytes(4 << 20, 512, 1 << 10, floor), 1 << 10);
        assert_eq!(max_batch_bytes(1_000, 512, usize::MAX, floor), 500);
    }
}
