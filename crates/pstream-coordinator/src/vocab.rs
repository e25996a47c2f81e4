//! The vocabulary the coordinator's rooms trade: what the engine hears
//! ([`Event`], through [`Events`] and its [`Wake`]), the batches it dispatches
//! ([`Batch`]), and what it sends a job's consumer ([`JobMsg`], [`ResultBatch`],
//! [`JobCounters`]). A leaf: it imports none of the rooms (engine, door, hub, job,
//! pool) that use it.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, SendError, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};
use pstream_protocol::{AgentJoin, Codec, FunctionInfo, Items, Join};

use crate::error::{ExitCause, ItemErrorKind, PoolError};
use crate::link::Link;

/// A run of a job's input, to be computed together.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub job: u64,
    pub first_index: u64,
    pub items: Arc<Items>,
    /// How many times this batch, as a single item, was tried and killed its worker
    /// or timed out. Batches of several items are split instead of retried.
    pub attempts: u32,
    /// How many times in a row a worker holding it was lost across the network
    /// (uncharged; past a limit, see `blame`, it is judged like a crash).
    pub losses: u32,
}

/// The supervisor's inbox: a channel, and an eventfd that wakes it from `poll`.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    tx: Sender<Event>,
    wake: Arc<Wake>,
    /// Whether the engine takes new connections (see [`Events::join`]).
    door: Arc<Mutex<DoorState>>,
}

/// Whether the engine takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DoorState {
    /// The job runs.
    Open,
    /// The job is ending: connections are still handed on (and told so by the
    /// engine), and one that fails its handshake is no news (its host agent,
    /// told to stop, cut it).
    Ending,
    /// The engine has stopped: nobody would answer a connection handed on.
    Closed,
}

impl Events {
    pub fn new() -> std::io::Result<(Events, Receiver<Event>, Arc<Wake>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let wake = Arc::new(Wake(fd));
        Ok((
            Events {
                tx,
                wake: Arc::clone(&wake),
                door: Arc::new(Mutex::new(DoorState::Open)),
            },
            rx,
            wake,
        ))
    }

    pub fn send(&self, event: Event) -> Result<(), SendError<Event>> {
        self.tx.send(event)?;
        self.wake.ring();
        Ok(())
    }

    /// Hand the engine a connection that passed the handshake
    /// ([`Event::Connected`], [`Event::AgentConnected`]); given back if the engine
    /// has stopped taking them ([`Events::close_door`]): then nobody would ever
    /// answer it, and the caller tells its peer that the job is over.
    pub fn join(&self, event: Event) -> Result<(), Event> {
        let door = self.door.lock().unwrap_or_else(|e| e.into_inner());
        if *door == DoorState::Closed {
            return Err(event);
        }
        self.send(event).map_err(|e| e.0)
    }

    /// Whether the engine takes new connections.
    pub fn door(&self) -> DoorState {
        *self.door.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job is ending ([`DoorState::Ending`]), or the engine has stopped
    /// ([`DoorState::Closed`]: no connection is handed on from now, and every one
    /// handed on before is in the channel already).
    pub fn set_door(&self, state: DoorState) {
        *self.door.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Send several events, waking the supervisor once.
    pub fn send_all(&self, events: impl Iterator<Item = Event>) -> Result<(), SendError<Event>> {
        for event in events {
            self.tx.send(event)?;
        }
        self.wake.ring();
        Ok(())
    }
}

/// An eventfd: rung by whoever sends the supervisor an event.
#[derive(Debug)]
pub(crate) struct Wake(EventFd);

impl Wake {
    pub fn ring(&self) {
        let _ = self.0.write(1);
    }

    pub fn drain(&self) {
        let _ = self.0.read();
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// What the supervisor hears.
pub(crate) enum Event {
    /// A worker passed the handshake; `agent`: the host agent that started it,
    /// and its pid on that host.
    Connected {
        link: Box<dyn Link>,
        join: Join,
        agent: Option<(u64, u32)>,
    },
    /// A host agent passed the handshake.
    AgentConnected {
        link: Box<dyn Link>,
        agent: AgentJoin,
    },
    /// Kill worker `pid` of host agent `agent` (a worker's handle asks it).
    AgentKill { agent: u64, pid: u32 },
    /// One of our workers failed the handshake.
    Rejected { pid: u32, reason: String },
    /// A connection over TCP was refused at the handshake (a wrong token, a
    /// frame limit too small, not a pstream worker): `reason` names its address.
    Refused { reason: String },
    /// A worker process ended and was reaped.
    Exited { wid: u64, cause: ExitCause },
    /// A job starts.
    NewJob {
        job: u64,
        function: Arc<str>,
        codec: Codec,
        /// Its results travel packed (typed bincode jobs).
        packed: bool,
        results: Sender<JobMsg>,
        counters: Arc<JobCounters>,
        recycle: Sender<Items>,
    },
    /// A job's feeder cut a batch.
    Submit(Batch),
    /// An item failed before it could be sent (encoding, size).
    LocalFailure {
        job: u64,
        index: u64,
        kind: ItemErrorKind,
    },
    /// A job's input ended after `total` items.
    InputDone { job: u64, total: u64 },
    /// A job's input failed after `total` items; those are computed, then the job
    /// ends with this error.
    InputFailed { job: u64, total: u64, error: String },
    /// A job's consumer went away.
    Cancel { job: u64 },
    /// The pool is dropped.
    Shutdown,
    /// Kill every worker now (a second Ctrl-C); the pool shuts down.
    KillAll,
}

/// Startup reporting: who waits for the pool to be ready.
pub(crate) type Ready = Sender<Result<Vec<FunctionInfo>, PoolError>>;

/// Counters of one job, shared by the engine, the feeder and the consumer.
#[derive(Debug, Default)]
pub(crate) struct JobCounters {
    pub crashes: AtomicU64,
    pub timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// Items whose results reached the consumer's side: with what the feeder sent,
    /// tells it whether anything is in flight.
    pub delivered: AtomicU64,
}

/// What the engine sends a job's consumer.
pub(crate) enum JobMsg {
    Results(ResultBatch),
    InputDone {
        total: u64,
    },
    /// The input failed after `total` items: their results, then the error.
    InputFailed {
        total: u64,
        error: String,
    },
    Failed(Arc<PoolError>),
    /// The lead is free: try to take it (see [`crate::hub`]).
    Lead,
}

impl std::fmt::Debug for JobMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobMsg::Results(b) => {
                write!(f, "Results({} items from {})", b.items.len(), b.first_index)
            }
            JobMsg::InputDone { total } => write!(f, "InputDone({total})"),
            JobMsg::InputFailed { total, error } => write!(f, "InputFailed({total}, {error})"),
            JobMsg::Failed(e) => write!(f, "Failed({e})"),
            JobMsg::Lead => write!(f, "Lead"),
        }
    }
}

/// Outcomes of consecutive items of a job.
#[derive(Debug)]
pub(crate) struct ResultBatch {
    pub first_index: u64,
    /// One slot per item: the encoded value, or empty for a failed item.
    pub items: Items,
    /// Failed items by slot, ascending.
    pub failures: Vec<(u32, ItemErrorKind)>,
    /// The worker could not build the function's state: its pid and why. Its
    /// failed items say only that.
    pub state_failure: Option<(u32, String)>,
}

impl ResultBatch {
    pub fn single_failure(index: u64, kind: ItemErrorKind) -> ResultBatch {
        let mut items = Items::new();
        items.push_empty();
        ResultBatch {
            first_index: index,
            items,
            failures: vec![(0, kind)],
            state_failure: None,
        }
    }
}
