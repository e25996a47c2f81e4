//! The worker threads of a thread job: they take turns in the reader's role
//! (reading a round of the input within the window), publish or expose the items
//! they hold for idle workers, and compute batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use crossbeam_utils::CachePadded;
use pstream_coordinator::Window;
use pstream_protocol::unwind::{self, Panic};
use pstream_protocol::FlushClock;

use crate::executor::Task;
use crate::ItemErrorKind;

/// What the threads of one job share.
#[derive(Debug)]
pub(super) struct Shared {
    /// The consumer dropped its results: workers stop before their next item.
    pub(super) cancelled: AtomicBool,
    /// Items computed by the workers. Equal to the items read before the ones the
    /// reader holds, it means no other worker has anything to do: the reader then
    /// publishes what it holds rather than keep it through a read that may be slow.
    pub(super) completed: AtomicU64,
}

/// Who reads the input, and the batches cut for idle workers. One worker at a time
/// holds the reader's role; the others compute, or wait on `wake` for a published
/// batch or the role.
pub(super) struct Sched<I: Iterator> {
    pub(super) state: Mutex<SchedState<I::Item>>,
    pub(super) wake: Condvar,
    /// Where the reader leaves its items during a read that may block. A lock of
    /// its own, on cache lines of its own: the reader takes it twice per such read,
    /// and does not contend for the cache line of `state`, which the other workers
    /// keep taking.
    pub(super) slot: CachePadded<Mutex<Slot<I::Item>>>,
    /// Locked only by the worker in the reader's role: never contended.
    pub(super) input: Mutex<Input<I>>,
}

pub(super) struct SchedState<In> {
    /// Batches the reader cut for workers with nothing to do.
    pub(super) published: VecDeque<Work<In>>,
    /// Workers waiting on `wake` (nobody to wake: no system call).
    pub(super) parked: usize,
    /// A worker holds the reader's role.
    pub(super) reading: bool,
    /// The input is over (ended, panicked, or the job was cancelled).
    pub(super) ended: bool,
}

/// The items the reader holds while it is in a read that may block: a worker with
/// nothing to do takes them, or the reader takes them back after the read.
pub(super) struct Slot<In> {
    pub(super) in_hand: Option<Work<In>>,
    /// Counts the reader's reads with items exposed: the same count a
    /// `STEAL_AFTER` later means the reader is still in the same read.
    pub(super) exposures: u64,
}

/// Consecutive items for a worker.
pub(super) struct Work<In> {
    pub(super) first_index: u64,
    pub(super) items: Vec<In>,
}

/// The job's input, read by the worker in the reader's role.
pub(super) struct Input<I> {
    pub(super) iter: I,
    /// Items read so far: the index of the next one.
    pub(super) read: u64,
    /// A reader's round starts at one item (a first result at once) and doubles up
    /// to `max_batch`.
    pub(super) target: usize,
    pub(super) max_batch: usize,
    /// How long the items in hand have been waiting, looked at every so many items.
    pub(super) clock: FlushClock,
}

/// How long a waiting worker lets the reader sit in one read with items in hand
/// before it takes them (at least this, at most twice).
pub(super) const STEAL_AFTER: Duration = Duration::from_millis(1);

/// Wakes the workers waiting for work (the consumer went away).
pub(super) trait WakeAll: Send + Sync {
    fn wake_all(&self);
}

impl<I: Iterator + Send> WakeAll for Sched<I>
where
    I::Item: Send,
{
    fn wake_all(&self) {
        // Under the lock: a worker checks for cancellation under it before waiting.
        let _state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// What the consumer hears.
pub(super) enum Msg<Out> {
    /// Outcomes of consecutive items.
    Results {
        first_index: u64,
        outcomes: Vec<Result<Out, ItemErrorKind>>,
    },
    /// The input ended after `total` items.
    InputDone { total: u64 },
    /// The input iterator panicked after `total` items.
    InputPanicked { total: u64, message: String },
}

/// What a worker does next.
pub(super) enum Next<In> {
    Compute(Work<In>),
    Read,
}

/// What a reader's round leaves it: its own batch, and the message saying how the
/// input ended, if it did.
pub(super) struct Round<In, Out> {
    pub(super) own: Work<In>,
    pub(super) end: Option<Msg<Out>>,
}

/// One thread computing batches, and reading the input when nobody else does.
pub(super) struct Worker<I: Iterator, F: Task<I::Item>> {
    pub(super) func: Arc<F>,
    pub(super) sched: Arc<Sched<I>>,
    /// How many workers the job has (one alone never publishes).
    pub(super) workers: usize,
    pub(super) window: Arc<Window>,
    pub(super) results: Sender<Msg<F::Output>>,
    pub(super) shared: Arc<Shared>,
}

impl<I: Iterator, F: Task<I::Item>> Worker<I, F> {
    pub(super) fn run(self) {
        // Panics of the function become item errors, not messages on stderr.
        unwind::capture_on_this_thread();
        while let Some(next) = self.next() {
            let more = match next {
                Next::Compute(work) => self.compute(work),
                Next::Read => {
                    let round = self.read();
                    let ended = round.end.is_some() || self.window.is_closed();
                    {
                        let mut state = self.lock();
                        state.reading = false;
                        state.ended |= ended;
                        if ended {
                            self.sched.wake.notify_all();
                        } else if state.parked > 0 {
                            self.sched.wake.notify_one();
                        }
                    }
                    let more = self.compute(round.own);
                    if let Some(end) = round.end {
                        let _ = self.results.send(end);
                    }
                    more
                }
            };
            if !more {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SchedState<I::Item>> {
        self.sched.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A published batch, else the reader's role; `None` when the job is over.
    fn next(&self) -> Option<Next<I::Item>> {
        let mut state = self.lock();
        let mut seen = None;
        loop {
            if self.shared.cancelled.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(work) = state.published.pop_front() {
                return Some(Next::Compute(work));
            }
            if state.ended {
                return None;
            }
            if !state.reading {
                state.reading = true;
                return Some(Next::Read);
            }
            // The reader is at work: wait for a published batch or the role, and look
            // again after a while in case the reader is stuck in a read with items in
            // hand (it does not wake anyone for that: it happens before every read
            // that may block).
            {
                let mut slot = self.slot();
                if slot.in_hand.is_some() && seen == Some(slot.exposures) {
                    // The reader has been in the same read for a while: take its items.
                    let work = slot.in_hand.take().expect("checked");
                    return Some(Next::Compute(work));
                }
                seen = slot.in_hand.is_some().then_some(slot.exposures);
            }
            state.parked += 1;
            state = self
                .sched
                .wake
                .wait_timeout(state, STEAL_AFTER)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.parked -= 1;
        }
    }

    /// Compute a batch and send its outcomes; false if the job is over.
    fn compute(&self, work: Work<I::Item>) -> bool {
        let n = work.items.len();
        if n == 0 {
            return true;
        }
        let mut outcomes = Vec::with_capacity(n);
        for item in work.items {
            if self.shared.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            outcomes.push(self.call(item));
        }
        self.shared.completed.fetch_add(n as u64, Ordering::Release);
        let msg = Msg::Results {
            first_index: work.first_index,
            outcomes,
        };
        self.results.send(msg).is_ok()
    }

    /// Give the items in hand to the workers waiting for work.
    fn publish(&self, first_index: u64, items: Vec<I::Item>) {
        let mut state = self.lock();
        state.published.push_back(Work { first_index, items });
        if state.parked > 0 {
            self.sched.wake.notify_one();
        }
    }

    /// Leave the items in hand where a worker with nothing to do finds them if this
    /// read that may block takes longer than `STEAL_AFTER`.
    fn expose(&self, first_index: u64, items: Vec<I::Item>) {
        let mut slot = self.slot();
        slot.in_hand = Some(Work { first_index, items });
        slot.exposures += 1;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<I::Item>> {
        self.sched.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A round in the reader's role: take permits, read up to the round's target,
    /// and keep the last batch read to compute.
    ///
    /// Before each read, if every item read before the ones in hand is computed
    /// (nobody else has anything to do), the items in hand are published for the
    /// other workers and the reader reads on: they do not wait for a read that may
    /// block (a slow input's items are computed as they come; an input whose next
    /// item waits for an earlier result runs at all), and idle workers get work
    /// without the role changing hands (handing the role over would cost a wake-up
    /// each round).
    /// A worker alone instead stops reading there and computes what it holds, if
    /// the next read may block (the input does not promise more items at once:
    /// `size_hint`, user code too) or the items have waited `IDLE_CUT`.
    fn read(&self) -> Round<I::Item, F::Output> {
        let mut input = self.sched.input.lock().unwrap_or_else(|e| e.into_inner());
        let none = |first_index| Round {
            own: Work {
                first_index,
                items: Vec::new(),
            },
            end: None,
        };
        let read = input.read;
        let Some(mut permits) = self.window.acquire(input.target, false) else {
            return none(read);
        };
        if permits == 0 {
            // Nothing in hand; the others compute published batches meanwhile.
            let Some(one) = self.window.acquire(1, true) else {
                return none(read);
            };
            let more = input.target.saturating_sub(one);
            permits = one + self.window.acquire(more, false).unwrap_or(0);
        }
        let mut first_index = input.read;
        let mut items = Vec::with_capacity(permits);
        let mut taken = 0;
        let mut end = None;
        input.clock.restart();
        while taken < permits && !self.window.is_closed() {
            let input = &mut *input;
            let mut exposed = false;
            if !items.is_empty() {
                let idle = self.shared.completed.load(Ordering::Acquire) >= first_index;
                if idle && self.workers > 1 {
                    let n = items.len();
                    self.publish(first_index, std::mem::take(&mut items));
                    first_index += n as u64;
                } else if idle || self.workers > 1 {
                    match unwind::catch(|| input.iter.size_hint().0 == 0) {
                        // Alone: compute what we hold rather than have it wait.
                        Ok(may_block) if idle && (may_block || input.clock.due()) => break,
                        // Others are busy, and will look here when they are done.
                        Ok(true) if !idle => {
                            self.expose(first_index, std::mem::take(&mut items));
                            exposed = true;
                        }
                        Ok(_) => {}
                        Err(panic) => {
                            end = Some(input_panicked(input, panic));
                            break;
                        }
                    }
                }
            }
            let next = unwind::catch(|| input.iter.next());
            if exposed {
                match self.slot().in_hand.take() {
                    Some(work) => items = work.items,
                    // Taken by a worker that had nothing to do.
                    None => first_index = input.read,
                }
            }
            match next {
                Ok(Some(item)) => {
                    items.push(item);
                    input.read += 1;
                    taken += 1;
                }
                Ok(None) => {
                    end = Some(Msg::InputDone { total: input.read });
                    break;
                }
                Err(panic) => {
                    // Items read before the panic are still computed and handed out.
                    end = Some(input_panicked(input, panic));
                    break;
                }
            }
        }
        if taken > 0 {
            input.target = (input.target * 2).min(input.max_batch);
        }
        drop(input);
        self.window.release(permits - taken);
        Round {
            own: Work { first_index, items },
            end,
        }
    }

    fn call(&self, item: I::Item) -> Result<F::Output, ItemErrorKind> {
        match unwind::catch(|| self.func.run(item)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(ItemErrorKind::Failed { message }),
            Err(Panic { message, location }) => Err(ItemErrorKind::Panicked { message, location }),
        }
    }
}

/// The input panicked (in `next` or `size_hint`): it is over, and the consumer hears
/// why after the items read before it.
pub(super) fn input_panicked<I, Out>(input: &Input<I>, panic: Panic) -> Msg<Out> {
    Msg::InputPanicked {
        total: input.read,
        message: format!("the input iterator panicked: {}", panic.message),
    }
}
