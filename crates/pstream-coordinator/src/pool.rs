//! The pool handle and its builder.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use pstream_protocol::{frame_overhead, Codec, Function, FunctionInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::PoolBuilder;
use crate::door::{Checks, Door, TcpDoor};
use crate::engine::Config;
use crate::error::PoolError;
use crate::hub::Hub;
use crate::job::{feed, FeedLimits, InlineSource, MapResults, RawResults, Source, Window};
use crate::stats::{HostStats, PoolCounters, PoolStats};
use crate::tuning;
use crate::vocab::{Event, Events, JobCounters, JobMsg};
use crossbeam_channel::{Receiver, Sender};
use pstream_protocol::Items;

/// A pool of worker processes that maps functions over streams of items.
///
/// Jobs submitted with [`ProcessPool::map`] (and its variants) share the workers;
/// several may run at once. Dropping the pool asks every worker to finish its batch
/// and exit, kills those that do not within the grace period, and reaps them all.
#[derive(Debug)]
pub struct ProcessPool {
    pub(crate) events: Events,
    pub(crate) hub: Arc<Hub>,
    pub(crate) supervisor: Option<JoinHandle<()>>,
    pub(crate) door: Option<Door>,
    pub(crate) tcp_door: Option<TcpDoor>,
    /// Host agents started for the pool (ssh, srun): stopped after the door.
    pub(crate) agents: Option<crate::hosts::Agents>,
    pub(crate) functions: Vec<FunctionInfo>,
    pub(crate) checks: Arc<Checks>,
    pub(crate) counters: Arc<PoolCounters>,
    pub(crate) next_job: AtomicU64,
    pub(crate) config: Arc<Config>,
    /// The most items per batch, if the user set it (else sized per job).
    pub(crate) max_batch: Option<usize>,
}

impl ProcessPool {
    /// A builder with the defaults.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The functions the workers serve.
    pub fn functions(&self) -> &[FunctionInfo] {
        &self.functions
    }

    /// The number of workers the pool keeps.
    pub fn workers(&self) -> usize {
        self.config.workers
    }

    /// The flow-control window, in items.
    pub fn window(&self) -> usize {
        self.config.window
    }

    /// The pids of the worker processes now running.
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .checks
            .spawned
            .lock()
            .unwrap()
            .iter()
            .copied()
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The path of the pool's socket (inside a private 0700 directory that is removed
    /// with the pool), for diagnostics and tests.
    pub fn socket_path(&self) -> &std::path::Path {
        self.door
            .as_ref()
            .expect("the door lives as long as the pool")
            .path()
    }

    /// The address workers across the network join at, if the pool listens (with
    /// the port the system chose for port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.tcp_door.as_ref().map(TcpDoor::addr)
    }

    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        self.counters.snapshot()
    }

    /// What the workers of each host did so far: this machine's workers under
    /// `"local"`, workers across the network under their IP address.
    pub fn host_stats(&self) -> std::collections::BTreeMap<String, HostStats> {
        self.counters.hosts()
    }

    /// Map `function` over `input`; results come back in input order.
    ///
    /// The input is read on this thread (the consumer's) between results, never
    /// more than the window ahead of the consumer, so it may borrow local data: the
    /// results carry the input's lifetime and cannot outlive it. For an input that
    /// may block (a pipe, a socket), read it on a thread of its own with
    /// [`ProcessPool::input_thread`]. Fails at once if no worker serves the function.
    ///
    /// (An example is in the `pstream` crate's documentation, under "Borrowed input".)
    pub fn map<'input, In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
    ) -> Result<MapResults<'input, Out>, PoolError>
    where
        In: Serialize + 'input,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'input,
    {
        self.map_typed(function, input, true)
    }

    /// Like [`ProcessPool::map`], but results come as they are ready.
    pub fn map_unordered<'input, In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
    ) -> Result<MapResults<'input, Out>, PoolError>
    where
        In: Serialize + 'input,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'input,
    {
        self.map_typed(function, input, false)
    }

    /// Map the function named `function` over items that are already encoded with
    /// `codec` (for the command-line launcher: JSON values or lines of text). The
    /// results are encoded the same way. The input is read on this thread, as with
    /// [`ProcessPool::map`].
    pub fn map_raw<'input, I>(
        &self,
        function: &str,
        codec: Codec,
        ordered: bool,
        input: I,
    ) -> Result<RawResults<'input>, PoolError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]> + 'input,
        I::IntoIter: Send + 'input,
    {
        self.submit(
            function,
            codec,
            false,
            ordered,
            input.into_iter(),
            raw_encoder,
        )
    }

    /// Jobs whose input is read on a thread of its own, for inputs that may block:
    /// `pool.input_thread().map(f, lines_of_a_pipe)`.
    ///
    /// By default ([`ProcessPool::map`]) the thread that takes the results also
    /// reads the input, between results, as the window allows: that costs no
    /// thread hop, which matters for small items, and lets the input borrow local
    /// data. But while the input iterator blocks (a pipe, a socket, a slow
    /// producer), results that are ready wait. Through this, results flow while it
    /// waits; the input must then be `Send + 'static`, since another thread reads it.
    pub fn input_thread(&self) -> InputThread<'_> {
        InputThread { pool: self }
    }

    fn map_typed<'input, In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
        ordered: bool,
    ) -> Result<MapResults<'input, Out>, PoolError>
    where
        In: Serialize + 'input,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'input,
    {
        let raw = self.submit(
            function.name(),
            Codec::Bincode,
            self.packed::<Out>(function.name()),
            ordered,
            input.into_iter(),
            typed_encoder::<In>,
        )?;
        Ok(MapResults::new(raw))
    }

    /// Whether results travel packed: only if the workers' function has exactly
    /// this output type (a stale plugin may not), since packed values of another
    /// type would decode wrong, where values with lengths fail to decode.
    fn packed<Out>(&self, function: &str) -> bool {
        self.functions
            .iter()
            .any(|f| f.name == function && f.output_type_name == std::any::type_name::<Out>())
    }

    /// Start a job whose input this thread reads, between results. With `packed`,
    /// the results travel without their lengths: only for bincode jobs whose
    /// results are decoded as a known type.
    fn submit<'input, I, E>(
        &self,
        function: &str,
        codec: Codec,
        packed: bool,
        ordered: bool,
        input: I,
        encode: E,
    ) -> Result<RawResults<'input>, PoolError>
    where
        I: Iterator + Send + 'input,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String> + Send + 'input,
    {
        let job = self.start_job(function, codec, packed)?;
        let source = InlineSource::new(
            job.limits,
            input,
            encode,
            Arc::clone(&job.window),
            Arc::clone(&job.counters),
            job.recycled.clone(),
        );
        Ok(self.results(job, ordered, Some(Box::new(source))))
    }

    /// Start a job whose input a thread of its own reads.
    fn submit_threaded<I, E>(
        &self,
        function: &str,
        codec: Codec,
        packed: bool,
        ordered: bool,
        input: I,
        encode: E,
    ) -> Result<RawResults<'static>, PoolError>
    where
        I: Iterator + Send + 'static,
        E: FnMut(I::Item, &mut Vec<u8>) -> Result<(), String> + Send + 'static,
    {
        let job = self.start_job(function, codec, packed)?;
        let events = self.events.clone();
        let (limits, recycled) = (job.limits, job.recycled.clone());
        let (window, counters) = (Arc::clone(&job.window), Arc::clone(&job.counters));
        let spawned = std::thread::Builder::new()
            .name("pstream-reader".into())
            .spawn(move || feed(limits, input, encode, window, counters, events, recycled));
        // The job is known to the engine: dropping its results cancels it.
        let results = self.results(job, ordered, None);
        spawned.map_err(PoolError::Socket)?;
        Ok(results)
    }

    /// Tell the engine about a new job, and set up what its feeder and consumer share.
    fn start_job(&self, function: &str, codec: Codec, packed: bool) -> Result<NewJob, PoolError> {
        if !self.functions.iter().any(|f| f.name == function) {
            return Err(PoolError::UnknownFunction {
                name: function.to_string(),
                available: self.functions.iter().map(|f| f.name.clone()).collect(),
            });
        }
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (results_tx, results) = crossbeam_channel::unbounded();
        let nudge = results_tx.clone();
        // Spare batch buffers, handed back by the engine as batches are answered.
        // Room for as many as may be in flight (the window bounds that), so a
        // byte-heavy job fills old buffers instead of faulting in fresh pages; it
        // never holds more than were in flight at once.
        let (recycle_tx, recycled) = crossbeam_channel::bounded(64);
        let counters = Arc::new(JobCounters::default());
        let window = Arc::new(Window::with_bytes(
            self.config.window,
            self.config.window_bytes,
        ));
        self.events
            .send(Event::NewJob {
                job,
                function: Arc::from(function),
                codec,
                packed,
                results: results_tx,
                counters: Arc::clone(&counters),
                recycle: recycle_tx,
            })
            .map_err(|_| PoolError::Closed)?;
        // The function's name travels in every batch's header.
        let frame_room = self.config.max_frame.saturating_sub(function.len());
        // Sized for the workers present now: those of its own that it keeps, those
        // that joined, or as many as it waited for, whichever is most.
        let listening = self.config.listening.is_some();
        let workers = (self.counters.serving.load(Ordering::Relaxed) as usize)
            .max(self.config.workers)
            .max(if listening {
                self.config.min_workers
            } else {
                1
            });
        // Over the network a batch costs more: a floor (see tuning::MIN_LINK_BATCH).
        let (floor, floor_bytes) = if listening {
            (tuning::MIN_LINK_BATCH, tuning::MIN_LINK_BATCH_BYTES)
        } else {
            (1, 1)
        };
        let max_batch = self
            .max_batch
            .unwrap_or_else(|| {
                tuning::max_batch(self.config.window, workers, tuning::POOL_MAX_BATCH, floor)
            })
            .clamp(1, (self.config.capacity as usize / 2).max(1));
        let limits = FeedLimits {
            job,
            max_batch,
            // Two batches in flight per worker fit in the byte window, as with items,
            // and a batch fits whole in the socket's send buffer.
            max_batch_bytes: tuning::max_batch_bytes(
                self.config.window_bytes,
                workers,
                (self.config.max_frame / 4).min(pstream_protocol::MAX_BATCH_BYTES),
                floor_bytes,
            ),
            // A batch of one item: the header, the function's name and one length.
            max_item: frame_room.saturating_sub(frame_overhead(1, 0)).max(1),
            frame_room,
        };
        Ok(NewJob {
            limits,
            window,
            counters,
            recycled,
            results,
            nudge,
        })
    }

    fn results<'input>(
        &self,
        job: NewJob,
        ordered: bool,
        source: Option<Box<dyn Source + 'input>>,
    ) -> RawResults<'input> {
        RawResults::new(
            job.limits.job,
            ordered,
            job.results,
            Arc::clone(&self.hub),
            self.events.clone(),
            job.window,
            job.counters,
            Arc::clone(&self.counters),
            job.nudge,
            source,
        )
    }

    /// Kill every worker at once (SIGKILL, no grace period), for a second Ctrl-C.
    /// Running jobs end with [`PoolError::Closed`]; the pool serves no more jobs.
    pub fn kill_workers(&self) {
        let _ = self.events.send(Event::KillAll);
    }

    /// Shut the pool down now, waiting for the workers to exit (as dropping does).
    pub fn shutdown(self) {}
}

/// What a job's feeder and consumer share, made by `ProcessPool::start_job`.
struct NewJob {
    limits: FeedLimits,
    window: Arc<Window>,
    counters: Arc<JobCounters>,
    recycled: Receiver<Items>,
    results: Receiver<JobMsg>,
    nudge: Sender<JobMsg>,
}

/// How a typed job's items are encoded.
fn typed_encoder<In: Serialize>(item: In, buf: &mut Vec<u8>) -> Result<(), String> {
    pstream_protocol::encode_bincode(&item, buf).map_err(|e| e.to_string())
}

/// How a raw job's items (already encoded) are copied into a batch.
fn raw_encoder<T: AsRef<[u8]>>(item: T, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.extend_from_slice(item.as_ref());
    Ok(())
}

/// Jobs of a [`ProcessPool`] whose input is read on a thread of its own:
/// [`ProcessPool::input_thread`]. The input must be `Send + 'static`.
#[derive(Debug, Clone, Copy)]
pub struct InputThread<'pool> {
    pool: &'pool ProcessPool,
}

impl InputThread<'_> {
    /// [`ProcessPool::map`], with the input read on a thread of its own.
    pub fn map<In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
    ) -> Result<MapResults<'static, Out>, PoolError>
    where
        In: Serialize + 'static,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        self.map_typed(function, input, true)
    }

    /// [`ProcessPool::map_unordered`], with the input read on a thread of its own.
    pub fn map_unordered<In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
    ) -> Result<MapResults<'static, Out>, PoolError>
    where
        In: Serialize + 'static,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        self.map_typed(function, input, false)
    }

    /// [`ProcessPool::map_raw`], with the input read on a thread of its own.
    pub fn map_raw<I>(
        &self,
        function: &str,
        codec: Codec,
        ordered: bool,
        input: I,
    ) -> Result<RawResults<'static>, PoolError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]> + 'static,
        I::IntoIter: Send + 'static,
    {
        self.pool.submit_threaded(
            function,
            codec,
            false,
            ordered,
            input.into_iter(),
            raw_encoder,
        )
    }

    fn map_typed<In, Out, I>(
        &self,
        function: Function<In, Out>,
        input: I,
        ordered: bool,
    ) -> Result<MapResults<'static, Out>, PoolError>
    where
        In: Serialize + 'static,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        let raw = self.pool.submit_threaded(
            function.name(),
            Codec::Bincode,
            self.pool.packed::<Out>(function.name()),
            ordered,
            input.into_iter(),
            typed_encoder::<In>,
        )?;
        Ok(MapResults::new(raw))
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        if let Some(agents) = &self.agents {
            agents.ending();
        }
        let _ = self.events.send(Event::Shutdown);
        self.hub.kick();
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        // After the engine has shut down: no worker is left to connect.
        self.tcp_door.take();
        // Told to stop, given time, their ssh (or srun) reaped.
        self.agents.take();
        self.door.take();
    }
}
