//! The tuning constants of batching, each in one place: the process pool's feeder
//! and the thread executor both read them here.

use std::time::Duration;

/// How long items read may wait while no worker has anything to do. The pool's
/// feeder sends a batch this old, full or not, while the workers are idle; the
/// thread executor's lone reader stops reading and computes the items it holds. A
/// slow input's items do not wait for a full batch, and a fast input's batches are
/// not cut to a few items each (a batch costs system calls and wake-ups).
pub const IDLE_CUT: Duration = Duration::from_micros(100);

/// The largest batch a process pool cuts unless told otherwise
/// (`PoolBuilder::max_batch`).
pub const POOL_MAX_BATCH: usize = 4096;

/// The largest batch a thread of the thread executor takes at once: large enough
/// that a channel operation per batch costs nothing next to the items, small
/// enough that the threads share the work of a short input.
pub const THREAD_MAX_BATCH: usize = 1024;

/// The size batches grow to (from one item, doubling): two batches in flight per
/// worker fit in a window of `window` items, and no batch has more than `most`
/// items or fewer than one.
pub fn max_batch(window: usize, workers: usize, most: usize) -> usize {
    (window / (2 * workers.max(1))).clamp(1, most.max(1))
}
