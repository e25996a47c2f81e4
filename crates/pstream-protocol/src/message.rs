//! The frame headers. `docs/protocol.md` describes each one field by field; a change
//! here is a change there and, if incompatible, a new [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::auth::{Nonce, Proof};
use crate::Items;

/// One decoded frame: its header and, for batches and results, its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame says.
    pub message: Message,
    /// The items of a `Batch` or `Results` frame; empty for the others.
    pub items: Items,
}

impl Frame {
    /// A frame without items.
    pub fn control(message: Message) -> Frame {
        Frame {
            message,
            items: Items::new(),
        }
    }
}

/// A frame header.
///
/// `Hello` must stay the first variant and keep `protocol_version` as its first
/// field: that is what lets two builds of different versions still tell each other
/// which versions they speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Worker → coordinator, first frame on a connection: who it is and its nonce.
    /// It carries no secret: the worker has not yet seen proof that its peer is
    /// the coordinator.
    Hello(Hello),
    /// Coordinator → worker: the worker is accepted.
    Welcome {
        /// The worker's id in this pool (for logs).
        worker_id: u32,
        /// The largest frame the coordinator accepts from this worker.
        max_frame: u32,
        /// How often, at most, the worker should send the results it has while a
        /// batch is in work, in microseconds. The coordinator's item time limit
        /// relies on this progress.
        flush_interval_us: u32,
        /// How often each side sends a [`Message::Heartbeat`] when it has sent
        /// nothing else, in milliseconds; 0: no heartbeats (a local worker, whose
        /// coordinator's death the kernel reports).
        heartbeat_ms: u32,
        /// How long each side may hear nothing from the other before it gives the
        /// connection up (the coordinator: the worker is lost; the worker: it
        /// exits), in milliseconds; 0 with `heartbeat_ms` 0.
        silence_ms: u32,
        /// How long the worker may poll for its next batch, in microseconds,
        /// before it sleeps, while batches come back to back (see
        /// `PoolBuilder::spin`); 0: it sleeps at once.
        spin_us: u32,
    },
    /// Coordinator → worker: the worker is refused; it exits.
    Reject {
        /// Why, for the worker's log.
        reason: String,
    },
    /// Coordinator → worker: items to compute. Followed by the items.
    Batch(BatchHeader),
    /// Worker → coordinator: the outcomes of consecutive items of a batch, from
    /// position `offset` on. A batch's results may come in several frames, in order,
    /// so results flow while a long batch is still in work. Followed by the items:
    /// the encoded value of each item that succeeded, an empty slot for each item
    /// listed in `failures`. A frame with no items and offset 0 answers a batch of a
    /// cancelled job that the worker skipped.
    Results(ResultsHeader),
    /// Worker → coordinator: while a batch is in work, how many of its items are
    /// computed (results may not have been sent yet). Sent every flush interval
    /// while the count moves; it tells the coordinator exactly which item a hung
    /// worker is stuck on.
    Progress {
        /// The job, as in the batch.
        job: u64,
        /// The batch's number, as in the batch.
        seq: u64,
        /// Items of the batch computed so far.
        done: u32,
    },
    /// Coordinator → worker: the job's consumer went away. Batches of it that the
    /// worker reads after this are answered at once with an empty `Results`; results
    /// still computed for it are ignored.
    Cancel {
        /// The job.
        job: u64,
    },
    /// Coordinator → worker: finish the batches sent before this, then exit 0.
    Shutdown,
    /// Coordinator → worker, the answer to an acceptable `Hello`: the coordinator's
    /// nonce and its proof that it holds the job's token
    /// ([`crate::auth::Role::Coordinator`] over the worker's nonce and this one).
    Challenge {
        /// The coordinator's fresh nonce.
        nonce: Nonce,
        /// HMAC-SHA256 of the coordinator's label and both nonces, keyed by the token.
        proof: Proof,
    },
    /// Worker → coordinator, once the coordinator's proof checked out: the worker's
    /// proof and what it offers. The coordinator answers `Welcome` or `Reject`.
    Join(Join),
    /// Either way, on a connection with heartbeats (over TCP): "still here", sent
    /// when a side has sent nothing else for the heartbeat interval. Carries
    /// nothing; any frame counts as a sign of life.
    Heartbeat,
    /// Host agent → coordinator, instead of `Join`, once the coordinator's proof
    /// checked out: the agent's proof and who it is. The coordinator answers
    /// `AgentWelcome` or `Reject`.
    AgentJoin(AgentJoin),
    /// Coordinator → host agent: it is accepted, and how to start its workers.
    AgentWelcome {
        /// The agent's id in this pool: its workers carry it in their `Hello`.
        agent_id: u64,
        /// As in `Welcome`: heartbeats each way after this long with nothing sent.
        heartbeat_ms: u32,
        /// As in `Welcome`: the connection is given up after this long unheard.
        silence_ms: u32,
        /// Items each worker holds at once (its `PSTREAM_CAPACITY`).
        capacity: u32,
        /// The largest frame each worker accepts (its `PSTREAM_MAX_FRAME`).
        max_frame: u32,
        /// `RLIMIT_AS` for each worker, in bytes; 0: none.
        memory_limit: u64,
    },
    /// Coordinator → host agent: kill this worker of yours (its process group)
    /// now; its end is reported as any other (`WorkerExited`).
    Kill {
        /// The worker's process id on the agent's host.
        pid: u32,
    },
    /// Host agent → coordinator: a worker it started has ended and was reaped.
    WorkerExited(WorkerExit),
}

/// A host agent's introduction, after the coordinator proved that it holds the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentJoin {
    /// HMAC-SHA256 of the worker's label and both nonces, keyed by the token
    /// ([`crate::auth::Role::Worker`]), as in `Join`.
    pub proof: Proof,
    /// The agent's host name, for messages.
    pub hostname: String,
    /// The agent's process id on its host, for messages.
    pub pid: u32,
    /// How many workers it keeps running.
    pub workers: u32,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// A host agent's report of one of its workers' end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExit {
    /// The worker's process id on the agent's host (as in its `Hello`).
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Its peak resident set, in KiB (`ru_maxrss`).
    pub max_rss_kb: u64,
    /// Whether it was welcomed by the coordinator (it says so to its agent once it
    /// has read its `Welcome`). A worker that never was is a start failure.
    pub served: bool,
    /// The last lines it wrote (stdout and stderr, at most 4 KiB), for the report
    /// of a worker that failed to start; empty otherwise.
    pub last_words: String,
}

/// The worker's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the worker's build. Must stay the first field.
    pub protocol_version: u32,
    /// The worker's process id, checked against the socket's peer credentials.
    pub pid: u32,
    /// The worker's fresh nonce, which the coordinator's proof must cover.
    pub nonce: Nonce,
    /// For a worker a host agent started: the agent's id (from its
    /// `AgentWelcome`). The agent reports this worker's end, by `pid`.
    pub agent: Option<u64>,
}

/// The worker's proof that it holds the job's token, and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// HMAC-SHA256 of the worker's label and both nonces, keyed by the token
    /// ([`crate::auth::Role::Worker`]).
    pub proof: Proof,
    /// How many items the worker will hold at once (in work and queued); the
    /// coordinator never sends more than this.
    pub capacity: u32,
    /// The largest frame the worker accepts.
    pub max_frame: u32,
    /// The functions this worker serves.
    pub functions: Vec<FunctionInfo>,
}

/// A function a worker serves, as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The name calls use.
    pub name: String,
    /// The input type, as written in the source (for humans).
    pub input_type: String,
    /// The output type, as written in the source (for humans).
    pub output_type: String,
    /// The input type's full name (`std::any::type_name`).
    pub input_type_name: String,
    /// The output type's full name (`std::any::type_name`). A typed job asks for
    /// packed results only if its output type has exactly this name: packed values
    /// of another type would not fail to decode, they would decode wrong.
    pub output_type_name: String,
}

/// How a job's items are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// bincode 2 with serde, standard configuration: typed library use.
    Bincode,
    /// One JSON value per item: the command-line launcher's `jsonl` format.
    Json,
    /// One line of text per item, given to the function as a string; a string
    /// result comes back as its raw text (if it holds no newline), any other result
    /// as JSON. The command-line launcher's `lines` format.
    Lines,
}

/// The header of a batch of items to compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// The job the batch belongs to.
    pub job: u64,
    /// The batch's number within the job, echoed in its results.
    pub seq: u64,
    /// The function to apply.
    pub function: String,
    /// How the items and their results are encoded.
    pub codec: Codec,
    /// The index, in the job's input, of the batch's first item (for logs).
    pub first_index: u64,
    /// Answer with packed results (see [`ResultsHeader::packed`]). Only with
    /// [`Codec::Bincode`]. The batch's own items always carry their lengths, so a
    /// worker can tell each input from the next even when one does not decode.
    pub packed_results: bool,
}

/// The header of the results of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsHeader {
    /// The job, as in the batch.
    pub job: u64,
    /// The batch's number, as in the batch.
    pub seq: u64,
    /// The position in the batch of this frame's first item.
    pub offset: u32,
    /// The items that failed, by their position in this frame, ascending.
    pub failures: Vec<ItemFailure>,
    /// The items travel packed, as the batch asked: their bytes back to back with no
    /// lengths (a failed item has none), split by decoding them, which bincode
    /// values allow. Saves the coordinator, whose one thread reads every result, a
    /// pass over the lengths, and a byte or more per item.
    pub packed: bool,
}

/// Why one item of a batch has no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    /// The item's position in its frame.
    pub slot: u32,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The panic message or the function's error, cut to [`crate::MAX_MESSAGE`].
    pub message: String,
    /// Where a panic happened (`file:line:column`), when known.
    pub location: Option<String>,
}

/// The kinds of failure a worker reports for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// The function panicked.
    Panicked,
    /// The function returned an error.
    Failed,
    /// The item's bytes did not decode as the function's input type.
    Decode,
    /// The function's output could not be encoded.
    Encode,
    /// The worker does not serve the named function.
    UnknownFunction,
    /// The encoded output is larger than a frame may carry.
    TooLarge,
    /// The function's per-worker state could not be built in the worker with this
    /// pid (the message says why): no item of that function can be computed
    /// there, and the coordinator ends the job with an error naming the worker.
    State {
        /// The worker's process id.
        pid: u32,
    },
}
