//! A batch in work: [`Batch`], which a registered function's batch entry point
//! computes, and where its results and progress go ([`Outbox`], [`Progress`]).
//! Imports the errors, the connection and the heartbeat settings: the registry
//! and the serve loop both use it.

use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pstream_protocol::unwind::{self, Panic};
use pstream_protocol::{
    frame_overhead, truncate_message, write_frame, BatchHeader, Codec, EncodeError, FailureKind,
    FlushClock, ItemFailure, Items, Message, ResultsHeader, PROGRESS_HEARTBEAT,
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{CallError, WorkerError};
use crate::stream::{Beats, Stream};

/// The connection's sending side, shared by the compute loop and the progress
/// reporter.
pub(crate) struct Outbox {
    pub writer: Mutex<BufWriter<Stream>>,
    /// The most bytes a frame to the coordinator may take.
    pub peer_max: usize,
    /// When the last frame went out (for heartbeats).
    pub last_sent: Mutex<std::time::Instant>,
}

impl Outbox {
    pub fn send(&self, message: &Message, items: &Items) -> Result<(), WorkerError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *writer, message, items, self.peer_max).map_err(WorkerError::Write)?;
        writer
            .flush()
            .map_err(|e| WorkerError::Write(EncodeError::Io(e)))?;
        *self.last_sent.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        Ok(())
    }

    /// A heartbeat, if nothing went out for `every`.
    fn beat(&self, every: Duration) -> Result<(), WorkerError> {
        if self.since_sent() >= every {
            self.send(&Message::Heartbeat, &Items::new())?;
        }
        Ok(())
    }

    /// How long ago the last frame went out.
    fn since_sent(&self) -> Duration {
        self.last_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Which batch is in work and how far along it is.
#[derive(Default)]
pub(crate) struct Progress {
    /// The batch in work: (job, seq).
    pub batch: Mutex<Option<(u64, u64)>>,
    /// Items of it computed.
    pub done: AtomicU32,
    /// Rung when a batch starts and the reporter sleeps on it (`parked`).
    pub started: Condvar,
    /// The reporter sleeps on `started`; written and read under `batch`'s lock.
    pub parked: AtomicBool,
}

/// How many intervals in a row the reporter finds no batch in work before it
/// sleeps until one starts. A busy worker goes between batches all the time, and
/// waking its reporter at every batch (a system call, and a context switch on the
/// worker's core) cost `double` at a window of 5,000 about 4,000 context switches
/// per 10M items; an idle one stops looking after these few intervals.
const IDLE_INTERVALS_BEFORE_PARKING: u32 = 8;

/// The least a parked reporter sleeps before its heartbeat is due: no spinning
/// on a heartbeat whose send is late.
const HEARTBEAT_SLACK: Duration = Duration::from_millis(1);

impl Progress {
    /// A batch is in work now (`Some`), or none is.
    pub fn set(&self, batch: Option<(u64, u64)>) {
        if batch.is_some() {
            self.done.store(0, Ordering::Relaxed);
        }
        let mut current = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        *current = batch;
        let wake = batch.is_some() && self.parked.load(Ordering::Relaxed);
        drop(current);
        if wake {
            self.started.notify_one();
        }
    }

    /// Sleep while no batch is in work: until one starts, or `limit` has passed.
    /// Whether a batch is in work.
    fn wait_for_work(&self, limit: Option<Duration>) -> bool {
        let idle = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: `set` reads it under the lock too, so a batch that starts
        // after this either sees it, or is seen by the wait's first look.
        self.parked.store(true, Ordering::Relaxed);
        let busy = match limit {
            Some(limit) => {
                self.started
                    .wait_timeout_while(idle, limit, |b| b.is_none())
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self
                .started
                .wait_while(idle, |b| b.is_none())
                .unwrap_or_else(|e| e.into_inner()),
        };
        self.parked.store(false, Ordering::Relaxed);
        busy.is_some()
    }
}

/// Every interval, tell the coordinator how far the batch in work has come, if it
/// moved, from the second interval the batch is in work on; if it did not move, say
/// so again every [`PROGRESS_HEARTBEAT`] intervals. A hung
/// item is then known exactly, without bisection: the repeated report shows this
/// process alive and still on that item. A process frozen whole (SIGSTOP, a stopped
/// terminal job) repeats nothing, and the coordinator bisects instead.
///
/// Over the network it also sends a heartbeat when nothing else went out for the
/// heartbeat interval, and ends this process when the connection failed while the
/// compute loop was busy (the kernel gave the coordinator up: see
/// [`arm_keepalive`]): a worker never outlives a coordinator that fell silent.
pub(crate) fn report_progress(
    outbox: &Outbox,
    progress: &Progress,
    interval: Duration,
    beats: Option<&Beats>,
    watched: Option<std::net::TcpStream>,
) {
    let mut looks = Looks::default();
    let interval = match beats {
        // Often enough for a heartbeat in time, seldom enough to cost nothing.
        Some(b) => interval.min(b.every / 4),
        None => interval,
    };
    // Idle, it sleeps until a batch starts: a worker with nothing to do costs no
    // wake-up every interval (512 idle workers on one machine did: 256,000 a
    // second). Over the network it wakes when the next heartbeat is due, and only
    // then: once per heartbeat interval. (It woke every quarter interval, and
    // slept an interval more each time: 512 idle workers cost 0.2 CPU-seconds
    // a second.) The compute loop, idle, watches the connection itself.
    let mut idle = 0u32;
    loop {
        // Parked, it stays parked (over the network, waking for the heartbeat)
        // until it finds a batch in work.
        let parked_idle = idle >= IDLE_INTERVALS_BEFORE_PARKING
            && !progress.wait_for_work(beats.map(|b| {
                b.every
                    .saturating_sub(outbox.since_sent())
                    .max(HEARTBEAT_SLACK)
            }));
        if !parked_idle {
            std::thread::sleep(interval);
        }
        if let Some(beats) = beats {
            if outbox.beat(beats.every).is_err() {
                return;
            }
        }
        if let Some(tcp) = &watched {
            if connection_failed(tcp) {
                eprintln!(
                    "pstream worker {}: {}",
                    std::process::id(),
                    WorkerError::Silent(beats.map(|b| b.silence).unwrap_or_default())
                );
                // Whatever its functions started goes too.
                crate::group::end();
                std::process::exit(1);
            }
        }
        let batch = *progress.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.is_none() {
            idle = idle.saturating_add(1);
        } else {
            idle = 0;
        }
        let done = progress.done.load(Ordering::Relaxed);
        if let Some(report) = looks.look(batch, done) {
            if outbox.send(&report, &Items::new()).is_err() {
                return;
            }
        }
    }
}

/// What the progress reporter has seen: which `Progress` a look at the batch in
/// work calls for.
#[derive(Debug, Default)]
struct Looks {
    /// The batch in work at the last look.
    seen: Option<(u64, u64)>,
    /// The last report: (seq, done).
    last: Option<(u64, u32)>,
    /// Looks in a row that found the last report's count unchanged.
    quiet: u32,
}

impl Looks {
    /// A look at the batch in work (if any) and its count of items computed.
    fn look(&mut self, batch: Option<(u64, u64)>, done: u32) -> Option<Message> {
        // A batch that started since the last look is reported from the next look
        // on, if it is still in work then: batches that follow each other closely
        // (a busy worker's) answer for themselves with their results, and a report
        // of each cost a frame, the writer's lock taken from under the compute
        // loop, and a wake-up of the coordinator. A hung item is still reported
        // and named, at most one interval later.
        if batch.is_none() {
            self.seen = None;
        }
        let (job, seq) = batch?;
        if std::mem::replace(&mut self.seen, batch) != batch {
            return None;
        }
        if self.last == Some((seq, done)) {
            self.quiet += 1;
            if self.quiet < PROGRESS_HEARTBEAT {
                return None;
            }
        }
        self.quiet = 0;
        self.last = Some((seq, done));
        Some(Message::Progress { job, seq, done })
    }
}

/// Whether the kernel gave the connection up (a reset, or no answer to keepalive
/// probes or to data within the silence limit): poll for no event at all reports
/// only an error or a hang-up, not data waiting or the coordinator's clean end.
fn connection_failed(tcp: &std::net::TcpStream) -> bool {
    let mut fds = [PollFd::new(tcp.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// A batch in work, as a registered function's batch entry point
/// ([`crate::Registration::batch`]) gets it.
#[doc(hidden)]
pub struct Batch<'a> {
    header: &'a BatchHeader,
    items: &'a Items,
    out: &'a mut Items,
    flush_interval: Duration,
    outbox: &'a Outbox,
    progress: &'a Progress,
    peer_max: usize,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("job", &self.header.job)
            .field("seq", &self.header.seq)
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Batch<'a> {
    /// A batch to compute: its header and items, where its results go (`out`, then
    /// `outbox`), and the progress it reports.
    pub(crate) fn new(
        header: &'a BatchHeader,
        items: &'a Items,
        out: &'a mut Items,
        flush_interval: Duration,
        outbox: &'a Outbox,
        progress: &'a Progress,
    ) -> Batch<'a> {
        Batch {
            header,
            items,
            out,
            flush_interval,
            outbox,
            progress,
            peer_max: outbox.peer_max,
        }
    }

    /// How the batch's items are encoded.
    pub fn codec(&self) -> Codec {
        self.header.codec
    }

    /// Compute every item with `call`, sending the results in one or more frames.
    /// `call` gets the codec, the item's bytes followed by the rest of the batch's
    /// (a decoder of self-delimiting values reads faster with room to spare), the
    /// item's length, and where to append the encoded result. Generic, so that each
    /// function's loop is compiled with its decoding, body and encoding inlined.
    #[inline(always)]
    pub fn run<F>(&mut self, mut call: F) -> Result<(), WorkerError>
    where
        F: FnMut(Codec, &[u8], usize, &mut Vec<u8>) -> Result<(), CallError>,
    {
        let Batch {
            header,
            items,
            ref mut out,
            flush_interval,
            outbox,
            progress,
            peer_max,
        } = *self;
        let mut failures = Vec::new();
        let mut offset = 0usize;
        let mut clock = FlushClock::new(flush_interval);
        let budget = |items: usize, failures: usize| {
            peer_max.saturating_sub(frame_overhead(items, failures))
        };
        let send = |out: &mut Items,
                    failures: &mut Vec<ItemFailure>,
                    offset: &mut usize|
         -> Result<(), WorkerError> {
            let results = ResultsHeader {
                job: header.job,
                seq: header.seq,
                offset: *offset as u32,
                failures: std::mem::take(failures),
                packed: header.packed_results,
            };
            outbox.send(&Message::Results(results), out)?;
            *offset += out.len();
            out.clear();
            Ok(())
        };
        let data = items.data();
        let ends = items.ends();
        let codec = header.codec;
        // Results up to this many bytes fit the frame whatever their count (at most
        // the batch's) and the failures so far: the exact check, and whatever else a
        // result that does not fit or an item that failed needs, is left to the cold
        // path, so that an item that succeeds costs a compare here.
        let mut fits = budget(items.len(), failures.len());
        // The next item to compute, and where its bytes start.
        // The next item to compute: every item computed has a slot, sent or in `out`.
        let mut next = 0usize;
        while next < ends.len() {
            // Items one after another, until one fails or panics, a result may not
            // fit, or the clock says to send: a panic is caught once for the whole
            // run, not per item (the landing pad kept every item's state in memory).
            let caught = unwind::catch(|| {
                compute_run(
                    &mut call,
                    codec,
                    data,
                    ends,
                    next,
                    out,
                    &progress.done,
                    fits,
                    &mut clock,
                )
            });
            let outcome = match caught {
                Ok(Stop::End) => break,
                Ok(Stop::Due) => {
                    if !out.is_empty() {
                        send(out, &mut failures, &mut offset)?;
                    }
                    next = offset + out.len();
                    continue;
                }
                Ok(Stop::Failed(failed)) => Err(failed),
                Ok(Stop::Full) => Ok(()),
                Err(Panic { message, location }) => {
                    // The item after the last slot panicked: drop what it wrote
                    // (`settle` gives it its failed slot).
                    out.truncate_partial();
                    Err(Box::new((FailureKind::Panicked, message, location)))
                }
            };
            settle(
                outcome,
                out,
                &mut failures,
                peer_max,
                &budget,
                |out, failures| send(out, failures, &mut offset),
            )?;
            fits = budget(items.len(), failures.len());
            next = offset + out.len();
            progress.done.store(next as u32, Ordering::Relaxed);
            // The run stopped before looking at the clock for this item.
            if clock.due() && !out.is_empty() {
                send(out, &mut failures, &mut offset)?;
            }
        }
        if !out.is_empty() || offset == 0 {
            send(out, &mut failures, &mut offset)?;
        }
        Ok(())
    }
}

/// Compute the batch's items from `first` on (their ends `ends`, their bytes
/// `data`) into `out`, until one fails, a result may take `out` past `fits`
/// bytes, the clock says to send, or the batch is done; `done` counts the items
/// computed. A function of its own, never inlined: its `&mut` parameters are then
/// known to be apart from every byte it writes, so `out`'s lengths stay in
/// registers instead of being read back after each result's bytes.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn compute_run<F>(
    call: &mut F,
    codec: Codec,
    data: &[u8],
    ends: &[u32],
    first: usize,
    out: &mut Items,
    done: &AtomicU32,
    fits: usize,
    clock: &mut FlushClock,
) -> Stop
where
    F: FnMut(Codec, &[u8], usize, &mut Vec<u8>) -> Result<(), CallError>,
{
    let mut start = match first {
        0 => 0,
        _ => ends[first - 1] as usize,
    };
    for (i, &end) in ends.iter().enumerate().skip(first) {
        let (item_start, len) = (start, end as usize - start);
        start = end as usize;
        let outcome = out.push_with(|buf| call(codec, &data[item_start..], len, buf));
        // Items computed, the failed ones included: the reporter's count.
        done.store((i + 1) as u32, Ordering::Relaxed);
        if let Err(e) = outcome {
            // A failure travels boxed: the common `Ok` stays small.
            return Stop::Failed(Box::new((e.kind, e.message, None)));
        }
        if out.data_len() > fits {
            return Stop::Full;
        }
        if clock.due() {
            return Stop::Due;
        }
    }
    Stop::End
}

/// Why a run of items in [`Batch::run`] stopped.
enum Stop {
    /// The batch is computed.
    End,
    /// The item failed.
    Failed(Failed),
    /// Its result may not fit the frame.
    Full,
    /// Time to send the results in hand.
    Due,
}

/// An item's failure: its kind, message and where a panic happened.
type Failed = Box<(FailureKind, String, Option<String>)>;

/// The cold path of [`Batch::run`], after an item that failed or whose result may
/// not fit the frame: a result too large for any frame fails its item; one that
/// only does not fit with the results before it goes out after them (`send`); a
/// failure takes an empty slot and is listed.
#[cold]
#[inline(never)]
fn settle(
    outcome: Result<(), Failed>,
    out: &mut Items,
    failures: &mut Vec<ItemFailure>,
    peer_max: usize,
    budget: &impl Fn(usize, usize) -> usize,
    mut send: impl FnMut(&mut Items, &mut Vec<ItemFailure>) -> Result<(), WorkerError>,
) -> Result<(), WorkerError> {
    let outcome = match outcome {
        Ok(()) if out.data_len() > budget(out.len(), failures.len()) => {
            let last = out.get(out.len() - 1).unwrap_or_default().to_vec();
            out.pop();
            if last.len() > budget(1, 1) {
                Err(Box::new((
                    FailureKind::TooLarge,
                    format!(
                        "the result is {} bytes, more than a frame of at most {peer_max} \
                         bytes can carry; raise the frame limit (PoolBuilder::max_frame, \
                         pstream-coord run --max-frame)",
                        last.len()
                    ),
                    None,
                )))
            } else {
                // It fits alone: send what came before, then start afresh with it.
                send(out, failures)?;
                out.push(&last);
                Ok(())
            }
        }
        other => other,
    };
    if let Err(failed) = outcome {
        let (kind, message, location) = *failed;
        out.push_empty();
        failures.push(ItemFailure {
            slot: (out.len() - 1) as u32,
            kind,
            message: truncate_message(message),
            location,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `call` over `inputs` as one batch and reads back what went out: each
    /// item's result, or its failure's kind and message.
    fn run_over(
        inputs: &[&[u8]],
        peer_max: usize,
        call: impl FnMut(Codec, &[u8], usize, &mut Vec<u8>) -> Result<(), CallError>,
    ) -> Vec<Result<Vec<u8>, (FailureKind, String)>> {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let outbox = Outbox {
            writer: Mutex::new(BufWriter::new(Stream::Unix(ours))),
            peer_max,
            last_sent: Mutex::new(std::time::Instant::now()),
        };
        let progress = Progress::default();
        let header = BatchHeader {
            job: 1,
            seq: 7,
            function: "f".into(),
            codec: Codec::Bincode,
            first_index: 0,
            packed_results: false,
        };
        let mut items = Items::new();
        for input in inputs {
            items.push(input);
        }
        let mut out = Items::new();
        let mut batch = Batch::new(
            &header,
            &items,
            &mut out,
            Duration::from_secs(3600),
            &outbox,
            &progress,
        );
        batch.run(call).unwrap();
        assert_eq!(progress.done.load(Ordering::Relaxed) as usize, inputs.len());
        drop(outbox);
        let mut got = Vec::new();
        while let Some(frame) = pstream_protocol::read_frame(&mut theirs, usize::MAX).unwrap() {
            let Message::Results(results) = frame.message else {
                panic!("not results: {:?}", frame.message)
            };
            assert_eq!(results.offset as usize, got.len());
            for (slot, item) in frame.items.iter().enumerate() {
                match results.failures.iter().find(|f| f.slot as usize == slot) {
                    Some(f) => {
                        assert!(item.is_empty());
                        got.push(Err((f.kind, f.message.clone())));
                    }
                    None => got.push(Ok(item.to_vec())),
                }
            }
        }
        got
    }

    #[test]
    fn each_failure_and_panic_in_a_batch_is_its_own_items_and_the_rest_are_computed() {
        // First, middle (twice in a row), last: a panic after part of a result was
        // written leaves none of it behind.
        let inputs: Vec<&[u8]> = vec![b"p", b"a", b"e", b"p", b"b", b"p", b"e", b"c", b"p"];
        // On a thread of its own, which reports panics as a worker's does (the test
        // thread's own assertions must still be printed).
        let got = std::thread::spawn(move || {
            unwind::capture_on_this_thread();
            run_over(&inputs, usize::MAX, |_, input, len, out| {
                let item = &input[..len];
                let mark = out.len();
                out.extend_from_slice(b"partial");
                match item {
                    b"p" => panic!("panicked on {}", item[0] as char),
                    b"e" => Err(CallError::new(FailureKind::Failed, "failed")),
                    _ => {
                        out.truncate(mark);
                        out.push(item[0].to_ascii_uppercase());
                        Ok(())
                    }
                }
            })
        })
        .join()
        .unwrap();
        let panicked = || Err((FailureKind::Panicked, "panicked on p".to_string()));
        let failed = || Err((FailureKind::Failed, "failed".to_string()));
        assert_eq!(
            got,
            vec![
                panicked(),
                Ok(b"A".to_vec()),
                failed(),
                panicked(),
                Ok(b"B".to_vec()),
                panicked(),
                failed(),
                Ok(b"C".to_vec()),
                panicked(),
            ]
        );
    }

    #[test]
    fn results_that_do_not_fit_one_frame_go_in_several_and_one_too_large_fails() {
        let inputs: Vec<&[u8]> = vec![b"1"; 40];
        let big = 400;
        let peer_max = frame_overhead(40, 1) + 10 * big;
        let got = run_over(&inputs, peer_max, |_, _, _, out| {
            out.resize(out.len() + big, 7);
            Ok(())
        });
        assert_eq!(got, vec![Ok(vec![7u8; big]); 40]);
        let got = run_over(
            &inputs[..1],
            frame_overhead(1, 0) + big - 1,
            |_, _, _, out| {
                out.resize(out.len() + big, 7);
                Ok(())
            },
        );
        assert!(
            matches!(&got[..], [Err((FailureKind::TooLarge, _))]),
            "{got:?}"
        );
    }

    #[test]
    fn a_batch_is_reported_from_its_second_look_on_and_batches_seen_once_not_at_all() {
        let mut looks = Looks::default();
        let progress = |seq, done| Some(Message::Progress { job: 1, seq, done });
        // Busy: a different batch at every look, nothing to report.
        for seq in 1..100 {
            assert_eq!(looks.look(Some((1, seq)), 500), None, "batch {seq}");
        }
        // One still in work at the next look is reported, and again while it moves.
        assert_eq!(looks.look(Some((1, 100)), 3), None);
        assert_eq!(looks.look(Some((1, 100)), 3), progress(100, 3));
        assert_eq!(looks.look(Some((1, 100)), 4), progress(100, 4));
        // Stuck on one item: the same count again every PROGRESS_HEARTBEAT looks.
        for _ in 1..PROGRESS_HEARTBEAT {
            assert_eq!(looks.look(Some((1, 100)), 4), None);
        }
        assert_eq!(looks.look(Some((1, 100)), 4), progress(100, 4));
        // Idle between, then the same batch number of another job: new again.
        assert_eq!(looks.look(None, 0), None);
        assert_eq!(looks.look(Some((2, 100)), 0), None);
        assert_eq!(
            looks.look(Some((2, 100)), 0),
            Some(Message::Progress {
                job: 2,
                seq: 100,
                done: 0
            })
        );
    }

    #[test]
    fn a_parked_reporter_wakes_when_a_batch_starts_and_a_busy_worker_rings_nobody() {
        let progress = std::sync::Arc::new(Progress::default());
        // Not parked: starting a batch leaves the flag alone (no wake-up to ring).
        progress.set(Some((1, 1)));
        progress.set(None);
        assert!(!progress.parked.load(Ordering::Relaxed));
        let (tx, rx) = std::sync::mpsc::channel();
        let parked = {
            let progress = std::sync::Arc::clone(&progress);
            std::thread::spawn(move || {
                progress.wait_for_work(None);
                tx.send(()).unwrap();
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !progress.parked.load(Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "never parked");
            std::thread::yield_now();
        }
        assert!(rx.try_recv().is_err(), "woke with no batch in work");
        progress.set(Some((1, 2)));
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the parked reporter woke for the batch");
        parked.join().unwrap();
        assert!(!progress.parked.load(Ordering::Relaxed));
    }
}
