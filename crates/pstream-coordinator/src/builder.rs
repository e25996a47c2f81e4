//! [`PoolBuilder`]: a pool's settings, their defaults and checks, and `build`, which
//! opens the door, starts the engine and its supervisor, and waits for the workers.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pstream_protocol::{DEFAULT_MAX_FRAME, ENV_SOCKET};

use crate::door::{Beats, Checks, Door, TcpDoor};
use crate::engine::{Config, Engine};
use crate::error::PoolError;
use crate::hosts::{self, HostLauncher};
use crate::hub::Hub;
use crate::launcher::{Launcher, LocalLauncher};
use crate::process::WorkerCommand;
use crate::stats::PoolCounters;
use crate::tuning::{DEFAULT_SPIN, MAX_SPIN};
use crate::vocab::Events;
use pstream_protocol::auth::Token;

use crate::pool::ProcessPool;

/// The default flow-control window, in items (the design card's 5,000).
pub const DEFAULT_WINDOW: usize = 5_000;

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
    spin: Duration,
    silence: Duration,
    wait_workers: Duration,
    min_workers: usize,
    hosts: Option<HostLauncher>,
    interrupt: Option<Arc<AtomicBool>>,
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
            spin: DEFAULT_SPIN,
            silence: DEFAULT_SILENCE,
            wait_workers: DEFAULT_WAIT_WORKERS,
            min_workers: 1,
            hosts: None,
            interrupt: None,
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
    /// calls and wake-ups per item. The workers counted are those present when a
    /// job starts (its own, those that joined, or [`PoolBuilder::min_workers`]).
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

    /// The most items in one batch (default: what the window and the workers
    /// present when a job starts allow: two batches per worker in the window, at
    /// most 4096 items and, in a pool that listens, at least 2,048 while the window
    /// allows).
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

    /// How long whoever waits for the next frame, while frames come back to back,
    /// polls before it sleeps: the thread that reads results, and each worker
    /// between its batches (default [`DEFAULT_SPIN`], 300 µs; at most
    /// [`MAX_SPIN`], 5 ms). A sleep between two batches costs a wake-up, which on a virtual
    /// machine takes tens of microseconds and with a small window sets the pace
    /// of short items. Polling gives the CPU to anything else runnable at each
    /// turn, and happens only after a wait that ended within 1 ms with results
    /// (a batch, for a worker): idle pools, heartbeats, progress reports of long
    /// items do not make anyone poll.
    /// `Duration::ZERO`: sleep at once.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
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

    /// For a pool whose workers join on their own (`workers(0)` with `listen`):
    /// `build` returns once `n` workers have joined (default 1), so that a job
    /// starts on all of them rather than on the first few. It fails with
    /// [`PoolError::NoWorkers`] if fewer than `n` have joined after
    /// [`PoolBuilder::wait_workers`]. A pool that starts workers of its own waits
    /// for those and ignores this.
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = n.max(1);
        self
    }

    /// Start workers on other machines too: a host agent per host, over ssh or
    /// by Slurm's `srun` ([`HostLauncher`]), starts that host's workers, which
    /// join over TCP. The pool listens where [`PoolBuilder::listen`] says, else on
    /// this machine's address on the route to the hosts (port 0), and writes the
    /// job's token (a fresh one, unless [`PoolBuilder::token_file`] names one) to
    /// each agent's stdin. Without [`PoolBuilder::workers`], the pool starts no
    /// worker on this machine. `build` waits for the first worker to join (up to
    /// [`PoolBuilder::wait_workers`]) and fails with [`PoolError::NoHosts`] as
    /// soon as every host has failed. Dropping the pool tells every agent to
    /// stop, and reaps its ssh (or srun).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pstream_coordinator::PoolError> {
    /// use pstream_coordinator::{HostLauncher, ProcessPool}; // pstream::{…} in the pstream crate
    /// let pool = ProcessPool::builder()
    ///     .launcher(HostLauncher::ssh(["node1", "node2:8"])?)
    ///     .build()?;
    /// println!("{:?}", pool.host_stats()); // per host (IP address)
    /// # Ok(())
    /// # }
    /// ```
    pub fn launcher(mut self, hosts: HostLauncher) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// Give up starting once `flag` is set (a launcher's Ctrl-C or SIGTERM): `build`
    /// then stops waiting for its workers (the first to join, up to
    /// [`PoolBuilder::wait_workers`]; host agents still connecting; a plugin slow to
    /// start) and fails with [`PoolError::Interrupted`], having stopped what it
    /// started (its workers, its agents and their ssh or srun). A flag set after
    /// `build` returned changes nothing.
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
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
    pub fn build(mut self) -> Result<ProcessPool, PoolError> {
        if pstream_protocol::started_as_worker() {
            refuse_in_worker();
        }
        // Where the host agents reach this machine (a name lookup per host: once).
        let interrupt = self.interrupt.take();
        let routes = match &self.hosts {
            Some(hosts) => {
                hosts.check()?;
                let routes = hosts.routes();
                if self.listen.is_none() {
                    self.listen = Some(Listen::Addr(hosts::listen_address(&routes)));
                }
                routes
            }
            None => Vec::new(),
        };
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
        if self.listen.is_some() && self.token_file.is_none() && self.hosts.is_none() {
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
        if self.spin > MAX_SPIN {
            return Err(PoolError::Config(format!(
                "the spin ({:?}) must be at most {:?}: polling longer costs more than \
                 the sleep it saves",
                self.spin, MAX_SPIN
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
        if self.max_frame < pstream_protocol::MIN_MAX_FRAME || self.max_frame > u32::MAX as usize {
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
            spin: self.spin,
            shutdown_grace: self.shutdown_grace,
            heartbeat: self.heartbeat,
            silence: self.silence,
            wait_workers: self.wait_workers,
            min_workers: self.min_workers,
            listening: None,
        });
        // Batches are sized at each job's start, for the workers present then
        // (ProcessPool::start_job); one set here holds for every job.
        let max_batch = self.max_batch;

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
            max_frame: self.max_frame,
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
        )
        .map_err(PoolError::Socket)?;
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
            agents: None,
            functions: Vec::new(),
            checks,
            counters,
            next_job: AtomicU64::new(0),
            config,
            max_batch,
        };
        if let (Some(hosts), Some(addr)) = (&self.hosts, pool.listen_addr()) {
            let connect = hosts::connect_addresses(addr, &routes);
            let program = shown_program(&pool.config.command.program);
            hosts.check_program(&program)?;
            tracing::info!("starting {}", hosts.describe());
            pool.agents = Some(hosts.start(&program, &connect, &pool.checks.token)?);
        }
        // Waiting for the first worker: unless every host agent has failed, or the
        // caller gives up (dropping `pool` stops what it started).
        let ready = loop {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Some(failures) = pool.agents.as_ref().and_then(|a| a.all_failed()) {
                        return Err(PoolError::NoHosts { failures });
                    }
                    if interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                        return Err(PoolError::Interrupted);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break Err(()),
                Ok(ready) => break Ok(ready),
            }
        };
        match ready {
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
