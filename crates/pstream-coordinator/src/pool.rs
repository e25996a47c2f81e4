//! The pool handle and its builder.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pstream_protocol::{
    frame_overhead, Codec, Function, FunctionInfo, DEFAULT_MAX_FRAME, ENV_SOCKET,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::door::{Beats, Checks, Door, TcpDoor};
use crate::engine::{Config, Engine};
use crate::error::PoolError;
use crate::hub::Hub;
use crate::job::{feed, FeedLimits, InlineSource, MapResults, RawResults, Source, Window};
use crate::launcher::{Launcher, LocalLauncher};
use crate::process::WorkerCommand;
use crate::stats::{HostStats, PoolCounters, PoolStats};
use crate::tuning;
use crate::vocab::{Event, Events, JobCounters, JobMsg};
use crossbeam_channel::{Receiver, Sender};
use pstream_protocol::auth::Token;
use pstream_protocol::Items;

/// The default flow-control window, in items.
pub const DEFAULT_WINDOW: usize = 50_000;

/// The default bound on the bytes of encoded items read ahead of the consumer.
pub const DEFAULT_WINDOW_BYTES: u64 = 4 << 20;

/// Configures and starts a [`ProcessPool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: Option<usize>,
    /// Unset: [`DEFAULT_WINDOW`].
    window: Option<usize>,
    window_bytes: u64,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    max_frame: usize,
    handshake_timeout: Duration,
    item_timeout: Option<Duration>,
    retries: u32,
    max_items_per_worker: Option<u64>,
    memory_limit: Option<u64>,
    max_spawn_failures: u32,
    capacity: u32,
    max_batch: Option<usize>,
    shutdown_grace: Duration,
    listen: Option<Listen>,
    token_file: Option<PathBuf>,
    heartbeat: Duration,
    silence: Duration,
    wait_workers: Duration,
}

/// Where a pool listens for workers across the network.
#[derive(Debug, Clone)]
enum Listen {
    /// Bind this address at build.
    Addr(SocketAddr),
    /// Bound by the caller already.
    Bound(Arc<TcpListener>),
}

/// The default heartbeat interval over TCP.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// The default silence after which a worker across the network is lost (and after
/// which such a worker gives its coordinator up).
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(10);
/// How long a pool whose workers join on their own waits while it has none.
pub const DEFAULT_WAIT_WORKERS: Duration = Duration::from_secs(60);

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: None,
            window: None,
            window_bytes: DEFAULT_WINDOW_BYTES,
            program: None,
            args: Vec::new(),
            env: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(30),
            item_timeout: None,
            retries: 1,
            max_items_per_worker: None,
            memory_limit: None,
            max_spawn_failures: 5,
            capacity: 8192,
            max_batch: None,
            shutdown_grace: Duration::from_secs(5),
            listen: None,
            token_file: None,
            heartbeat: DEFAULT_HEARTBEAT,
            silence: DEFAULT_SILENCE,
            wait_workers: DEFAULT_WAIT_WORKERS,
        }
    }
}

impl PoolBuilder {
    /// How many worker processes (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The most items read from the input and not yet handed to the consumer
    /// (default [`DEFAULT_WINDOW`]). With [`PoolBuilder::window_bytes`], this
    /// bounds the coordinator's memory however long the input. Larger windows mean
    /// larger batches (`window / (2 × workers)`, up to 4,096 items) and fewer system
    /// calls and wake-ups per item.
    pub fn window(mut self, items: usize) -> Self {
        self.window = Some(items);
        self
    }

    /// The window, unless one was set: for wrappers with defaults of their own.
    #[doc(hidden)]
    pub fn window_or(mut self, items: usize) -> Self {
        self.window.get_or_insert(items);
        self
    }

    /// The most bytes of encoded items sent and not yet handed to the consumer
    /// (default [`DEFAULT_WINDOW_BYTES`], 4 MiB): large items are read ahead by
    /// bytes, not only by count. The input is not read further while batches
    /// holding this much are in flight; one batch is always let through.
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.window_bytes = bytes;
        self
    }

    /// The worker program: a plugin binary built on `pstream-worker`. Default: the
    /// current executable, re-executed (it must call `pstream::init()` first in
    /// `main`).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// An argument for the worker program.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the workers.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The largest frame either side accepts (default 64 MiB). An item or result
    /// larger than this is an error for that item.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a started worker may take to connect and say Hello (default 30 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// A time limit per item (default: none). A worker that shows no progress for
    /// longer is killed, and the item it was on is isolated like a crash and
    /// reported as timed out.
    pub fn item_timeout(mut self, timeout: Duration) -> Self {
        self.item_timeout = Some(timeout);
        self
    }

    /// How many more times an item that killed its worker (or timed out) alone is
    /// tried before it is reported (default 1).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Replace each worker after it has computed this many items (for leaky code).
    pub fn max_items_per_worker(mut self, items: u64) -> Self {
        self.max_items_per_worker = Some(items);
        self
    }

    /// Limit each worker's address space (RLIMIT_AS), so an allocation bomb fails
    /// in the worker instead of waking the machine's OOM killer.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// How many workers in a row may fail to start before the pool gives up
    /// (default 5).
    pub fn max_spawn_failures(mut self, n: u32) -> Self {
        self.max_spawn_failures = n;
        self
    }

    /// The most items in one batch (default: what the window and worker count
    /// allow, at most 4096).
    pub fn max_batch(mut self, items: usize) -> Self {
        self.max_batch = Some(items);
        self
    }

    /// How long workers get to finish when the pool is dropped before they are
    /// killed (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Also take workers that join across the network, over TCP at `addr` (port 0:
    /// any free port; see [`ProcessPool::listen_addr`]). IPv4 or IPv6. Needs a
    /// [`PoolBuilder::token_file`]: a worker joins with the same file, as
    /// `PLUGIN --connect HOST:PORT --token-file FILE`, and proves that it holds
    /// the token without sending it (docs/cluster.md). With `workers(0)`, the pool
    /// starts no worker of its own: `build` waits for the first to join (up to
    /// [`PoolBuilder::wait_workers`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(Listen::Addr(addr));
        self
    }

    /// As [`PoolBuilder::listen`], on a listener the caller bound (to tell workers
    /// its port before `build` waits for them).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listen = Some(Listen::Bound(Arc::new(listener)));
        self
    }

    /// The file holding the job's token (64 hexadecimal digits; mode 0600, of this
    /// user, or it is refused), for workers across the network.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Over the network: a heartbeat goes each way after `every` with nothing else
    /// sent, and a worker heard nothing from for `silence` is lost: what it held is
    /// sent again elsewhere, uncharged (a lost connection is no evidence against an
    /// item), and whatever it sends later is never read. A worker gives up a
    /// coordinator silent for as long, and exits. Defaults: [`DEFAULT_HEARTBEAT`],
    /// [`DEFAULT_SILENCE`].
    pub fn heartbeat(mut self, every: Duration, silence: Duration) -> Self {
        self.heartbeat = every;
        self.silence = silence;
        self
    }

    /// For a pool whose workers join on their own (`workers(0)` with `listen`):
    /// how long it waits while no worker is connected, for its first at `build`
    /// and for another when all are gone during a job, before it fails with
    /// [`PoolError::NoWorkers`] (default [`DEFAULT_WAIT_WORKERS`]).
    pub fn wait_workers(mut self, wait: Duration) -> Self {
        self.wait_workers = wait;
        self
    }

    /// Start the workers and wait until each has completed the handshake.
    ///
    /// # Errors
    /// Besides configuration and start failures: [`PoolError::NoFunctions`] when
    /// the workers serve no function (none is linked into the program), and
    /// [`PoolError::InitMissing`] when the workers (this program re-executed, or
    /// the plugin) build a pool where they should serve, because their `main`
    /// does not call `pstream::init()` first.
    ///
    /// In a process that was started as a worker, this never returns: it says on
    /// stderr that `pstream::init()` is missing and exits with status 1 (that copy
    /// of the program must not go on with the work of `main`, nor start workers of
    /// its own, which would do the same without end). The coordinator that started
    /// it then fails with [`PoolError::InitMissing`].
    pub fn build(self) -> Result<ProcessPool, PoolError> {
        if pstream_protocol::started_as_worker() {
            refuse_in_worker();
        }
        let workers = self.workers.unwrap_or_else(|| match self.listen {
            // Listening: the workers join; none of its own unless asked.
            Some(_) => 0,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
        if workers == 0 && self.listen.is_none() {
            return Err(PoolError::Config(
                "a pool needs at least one worker (or workers that join: PoolBuilder::listen)"
                    .into(),
            ));
        }
        if self.listen.is_some() && self.token_file.is_none() {
            return Err(PoolError::Config(
                "a pool that listens needs a token file (PoolBuilder::token_file), \
                 for the workers that join to prove that they hold it"
                    .into(),
            ));
        }
        if self.heartbeat.is_zero() || self.silence <= self.heartbeat {
            return Err(PoolError::Config(format!(
                "the heartbeat interval ({:?}) must be positive and shorter than the \
                 silence limit ({:?})",
                self.heartbeat, self.silence
            )));
        }
        let window = self.window.unwrap_or(DEFAULT_WINDOW);
        if window == 0 {
            return Err(PoolError::Config(
                "the window must hold at least one item".into(),
            ));
        }
        if self.window_bytes == 0 {
            return Err(PoolError::Config(
                "the window must hold at least one byte".into(),
            ));
        }
        if self.max_frame < 4096 || self.max_frame > u32::MAX as usize {
            return Err(PoolError::Config(format!(
                "the frame limit must be between 4 KiB and 4 GiB, not {} bytes",
                self.max_frame
            )));
        }
        let program = match self.program {
            Some(p) => p,
            // Re-execute this very binary, even if its file was replaced since.
            None => PathBuf::from("/proc/self/exe"),
        };
        let config = Arc::new(Config {
            workers,
            window,
            window_bytes: self.window_bytes,
            command: WorkerCommand {
                program,
                args: self.args,
                env: self.env,
                memory_limit: self.memory_limit,
                shown: Default::default(),
            },
            max_frame: self.max_frame,
            handshake_timeout: self.handshake_timeout,
            item_timeout: self.item_timeout,
            retries: self.retries,
            max_items_per_worker: self.max_items_per_worker,
            max_spawn_failures: self.max_spawn_failures.max(1),
            capacity: self.capacity,
            flush_interval: Duration::from_millis(2),
            shutdown_grace: self.shutdown_grace,
            heartbeat: self.heartbeat,
            silence: self.silence,
            wait_workers: self.wait_workers,
            listening: None,
        });
        let max_batch = self
            .max_batch
            .unwrap_or_else(|| tuning::max_batch(window, workers.max(1), tuning::POOL_MAX_BATCH))
            .clamp(1, (self.capacity as usize / 2).max(1));

        let token = match &self.token_file {
            Some(path) => {
                pstream_protocol::auth::read_token_file(path).map_err(PoolError::Token)?
            }
            None => Token::random().map_err(PoolError::Socket)?,
        };
        let checks = Arc::new(Checks {
            token,
            spawned: Mutex::new(HashSet::new()),
            handshake_timeout: self.handshake_timeout,
        });
        let (events_tx, events, wake) = Events::new().map_err(PoolError::Socket)?;
        let door = Door::open(Arc::clone(&checks), events_tx.clone()).map_err(PoolError::Socket)?;
        let tcp_door = match self.listen {
            None => None,
            Some(listen) => {
                let listener = match listen {
                    Listen::Addr(addr) => TcpListener::bind(addr),
                    Listen::Bound(listener) => listener.try_clone(),
                }
                .map_err(PoolError::Listen)?;
                let beats = Beats {
                    every: self.heartbeat,
                    silence: self.silence,
                };
                Some(
                    TcpDoor::open(listener, Arc::clone(&checks), events_tx.clone(), beats)
                        .map_err(PoolError::Listen)?,
                )
            }
        };
        let config = Arc::new(Config {
            listening: tcp_door.as_ref().map(TcpDoor::addr),
            ..(*config).clone()
        });
        let counters = Arc::new(PoolCounters::default());
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let launcher: Option<Box<dyn Launcher>> = (workers > 0).then(|| {
            Box::new(LocalLauncher::new(
                config.command.clone(),
                door.path(),
                Arc::clone(&checks),
                config.max_frame,
                config.capacity,
            )) as Box<dyn Launcher>
        });
        let mut engine = Engine::new(
            Arc::clone(&config),
            (events_tx.clone(), events, Arc::clone(&wake)),
            launcher,
            Arc::clone(&counters),
            ready_tx,
        );
        engine.start();
        let (hub, kicked) = Hub::new(engine, wake, events_tx.clone());
        let supervisor = {
            let hub = Arc::clone(&hub);
            std::thread::Builder::new()
                .name("pstream-supervisor".into())
                .spawn(move || hub.supervise(kicked))
                .map_err(PoolError::Socket)?
        };
        hub.kick();
        let mut pool = ProcessPool {
            events: events_tx,
            hub,
            supervisor: Some(supervisor),
            door: Some(door),
            tcp_door,
            functions: Vec::new(),
            checks,
            counters,
            next_job: AtomicU64::new(0),
            config,
            max_batch,
        };
        match ready.recv() {
            // Nothing could ever be mapped: say why at once, and how to fix it.
            Ok(Ok(functions)) if functions.is_empty() => Err(PoolError::NoFunctions {
                program: shown_program(&pool.config.command.program),
            }),
            Ok(Ok(functions)) => {
                pool.functions = functions;
                Ok(pool)
            }
            Ok(Err(e)) => {
                let init_missing = pool
                    .door
                    .as_ref()
                    .and_then(|door| door.path().parent())
                    .is_some_and(|dir| dir.join(INIT_MISSING).exists());
                if init_missing {
                    // This error replaces the one that quoted what the worker wrote:
                    // show that here.
                    if let Some(words) = pool.config.command.shown.unquote() {
                        use std::io::Write;
                        let _ = std::io::stderr().lock().write_all(&words);
                    }
                    Err(PoolError::InitMissing {
                        program: shown_program(&pool.config.command.program),
                    })
                } else {
                    Err(e)
                }
            }
            Err(_) => Err(PoolError::Closed),
        }
    }
}

/// The file a worker that reached [`PoolBuilder::build`] leaves in its
/// coordinator's socket directory, so the coordinator can say why it ended.
const INIT_MISSING: &str = "init-missing";

/// `build` in a process started as a worker: its `main` did not call
/// `pstream::init()`. Leave word for the coordinator, say it, and exit.
fn refuse_in_worker() -> ! {
    if let Some(socket) = std::env::var_os(ENV_SOCKET) {
        // The socket's directory is the coordinator's private one (0700): write
        // there only if it is a directory of this user, not wherever a stray
        // variable points.
        if let Some(dir) = Path::new(&socket).parent() {
            use std::os::unix::fs::MetadataExt;
            let ours = std::fs::symlink_metadata(dir)
                .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::getuid().as_raw());
            if ours {
                let _ = std::fs::write(dir.join(INIT_MISSING), std::process::id().to_string());
            }
        }
    }
    eprintln!(
        "pstream worker {}: this process was started as a pstream worker, but its \
         `main` builds a pool instead of serving: call `pstream::init();` as the first \
         line of `main` (this copy exits rather than start workers of its own)",
        std::process::id()
    );
    std::process::exit(1)
}

/// The program as the user knows it (not the link a pool re-executes itself by).
fn shown_program(program: &Path) -> PathBuf {
    if program == Path::new("/proc/self/exe") {
        if let Ok(exe) = std::env::current_exe() {
            return exe;
        }
    }
    program.to_path_buf()
}

/// A pool of worker processes that maps functions over streams of items.
///
/// Jobs submitted with [`ProcessPool::map`] (and its variants) share the workers;
/// several may run at once. Dropping the pool asks every worker to finish its batch
/// and exit, kills those that do not within the grace period, and reaps them all.
#[derive(Debug)]
pub struct ProcessPool {
    events: Events,
    hub: Arc<Hub>,
    supervisor: Option<JoinHandle<()>>,
    door: Option<Door>,
    tcp_door: Option<TcpDoor>,
    functions: Vec<FunctionInfo>,
    checks: Arc<Checks>,
    counters: Arc<PoolCounters>,
    next_job: AtomicU64,
    config: Arc<Config>,
    max_batch: usize,
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
        let limits = FeedLimits {
            job,
            max_batch: self.max_batch,
            // Two batches in flight per worker fit in the byte window, as with items,
            // and a batch fits whole in the socket's send buffer.
            max_batch_bytes: (self.config.max_frame / 4)
                .min(pstream_protocol::MAX_BATCH_BYTES)
                .min(
                    (self.config.window_bytes / (2 * self.config.workers.max(1) as u64)).max(1)
                        as usize,
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
        let _ = self.events.send(Event::Shutdown);
        self.hub.kick();
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        // After the engine has shut down: no worker is left to connect.
        self.tcp_door.take();
        self.door.take();
    }
}
