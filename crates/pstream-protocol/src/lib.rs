//! The pstream wire protocol: frames, their codec, the handshake and the limits.
//!
//! This crate is pure: it knows nothing of processes, sockets or policy. Both the
//! worker runtime and the coordinator speak through it, so a frame is defined in
//! exactly one place, and so are its limits ([`frame_len`], [`frame_overhead`]).
//! It also holds what both sides (and the thread executor) do with a panic in user
//! code: [`unwind`].
//!
//! # Frames
//!
//! Every frame on the wire is
//!
//! ```text
//! u32 LE body_len | u32 LE header_len | header (bincode 2, standard config) | item section
//! ```
//!
//! The header is a [`Message`]. Frames that carry items ([`Message::Batch`] and
//! [`Message::Results`]) append an item section: `u32 LE count`, `count` item lengths
//! (LEB128 varints, one byte for an item under 128 bytes) and the items' bytes, back
//! to back. Items are opaque blobs encoded by the job's [`Codec`]; the protocol
//! never looks inside them. A packed `Results` frame ([`ResultsHeader::packed`])
//! leaves the lengths out: its bincode items are split by decoding them, by whoever
//! knows their type.
//!
//! # Guarantees
//!
//! * The length prefix is checked against the reader's maximum *before* anything is
//!   allocated ([`read_frame`]).
//! * Decoding never panics, whatever the bytes: it returns a frame or a precise
//!   [`DecodeError`]. Item lengths are validated on decode, so [`Items::get`] cannot
//!   go out of bounds afterwards.
//! * A clean end of stream at a frame boundary is `Ok(None)`; an end in the middle of
//!   a frame is [`DecodeError::Truncated`].
#![deny(missing_docs)]

pub mod auth;
mod bincode_de;
mod bincode_ser;
mod clock;
mod codec;
mod function;
mod items;
mod message;
pub mod spin;
pub mod unwind;

pub use bincode_de::{decode_bincode, BincodeError};
pub use clock::FlushClock;
pub use codec::{
    decode_body, decode_body_at, encode_frame, encode_prefix, frame_len, read_frame,
    read_frame_into, write_frame, DecodeError, EncodeError,
};
pub use function::{Function, LocalFn};
pub use items::Items;
pub use message::{
    AgentJoin, BatchHeader, Codec, ExitStatus, FailureKind, Frame, FunctionInfo, Hello,
    ItemFailure, Join, Message, ResultsHeader, WorkerExit,
};
pub use unwind::panic_message;

/// Append `value`, bincode-encoded with the standard configuration (the items of
/// [`Codec::Bincode`]), to `out`: the same bytes as `bincode::serde::encode_into_writer`,
/// written by pstream's own serializer straight into `out` (on tiny items the
/// encoding is a good part of the cost of an item; see `bincode_ser`). On error,
/// `out` may hold part of the value: callers truncate.
#[inline]
pub fn encode_bincode<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), bincode::error::EncodeError> {
    bincode_ser::encode(value, out)
}

/// The protocol version spoken by this build. Bumped on any incompatible change to a
/// frame; the handshake refuses a peer that speaks another version.
pub const PROTOCOL_VERSION: u32 = 8;

/// The default maximum size of one frame body, in bytes, on both sides.
///
/// A batch is cut before it would exceed this, and a single item larger than it is
/// an error for that item.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The smallest frame limit either side accepts (the largest is `u32::MAX`, what a
/// frame's length prefix can say).
pub const MIN_MAX_FRAME: usize = 4 << 10;

/// The most bytes a frame header may take. Headers are small (names, ids, error
/// messages); this bounds what a lying length inside a header can make us allocate.
pub const MAX_HEADER: usize = 16 << 20;

/// The kernel send buffer each side asks for on its connection (`SO_SNDBUF`; Linux
/// grants at most twice `net.core.wmem_max`, 416 KiB with the stock 208 KiB).
///
/// With it, and batches of at most [`MAX_BATCH_BYTES`], one or two batches are
/// queued whole in the socket while the worker computes: the coordinator does not
/// push a batch in pieces, each a wake-up, while the worker, done with its previous
/// batch, waits for the rest.
pub const SEND_BUFFER: usize = 1 << 20;

/// A worker reports how far its batch has come every flush interval while the count
/// moves, and repeats an unchanged count every this many intervals: a repeat shows
/// the process alive and still on the same item.
pub const PROGRESS_HEARTBEAT: u32 = 8;

/// The most bytes of items the coordinator puts in one batch (less when the frame
/// limit or the window's bytes are smaller): a batch fits whole in a stock socket
/// buffer, so a worker finds its next batch complete when it finishes one.
pub const MAX_BATCH_BYTES: usize = 256 << 10;

/// Failure messages are cut to this many bytes before they travel.
pub const MAX_MESSAGE: usize = 4096;

/// Bytes of a frame's length prefix (`u32 LE body_len`), which [`frame_len`] reads.
pub const FRAME_PREFIX: usize = 4;

/// Bytes a frame body keeps for its header's fixed parts (ids, counts, flags, the
/// header's and the item section's lengths), besides the strings it carries.
pub const HEADER_ALLOWANCE: usize = 4096;

/// The most bytes one item's length takes in an item section: a `u32` as a LEB128
/// varint.
pub const MAX_VARINT: usize = 5;

/// The most bytes a failure record of a `Results` header takes besides its message
/// (at most [`MAX_MESSAGE`]): its slot, kind and location.
const FAILURE_ALLOWANCE: usize = 64;

/// An upper bound on the bytes of a frame body other than its items' data and the
/// names in its header: the header with `failures` failure records, and the item
/// section's lengths for `items` items. A frame fits a limit of `max` when its
/// items' data and names take at most `max - frame_overhead(items, failures)`.
/// What the coordinator cuts batches by and the worker cuts results frames by.
#[inline]
pub fn frame_overhead(items: usize, failures: usize) -> usize {
    HEADER_ALLOWANCE + MAX_VARINT * items + failures * (MAX_MESSAGE + FAILURE_ALLOWANCE)
}

/// Environment variable naming the coordinator's socket, set for every worker.
pub const ENV_SOCKET: &str = "PSTREAM_SOCKET";
/// Whether this process was started as a worker by a coordinator: the environment
/// names a coordinator's socket, and the process holds the pipe its coordinator
/// passed the token on ([`token_pipe`]). The worker runtime serves in such a process;
/// a pool must never be built in one, or every worker would start workers of its own.
///
/// The variables alone do not make a worker: inherited by a process that the
/// coordinator did not start (a launcher run from a shell where they were left
/// set), they come without the pipe, which only the coordinator's spawn passes on
/// and the worker closes once it has read it.
///
/// A process asked to join a coordinator over the network ([`asked_to_connect`])
/// is a worker too.
pub fn started_as_worker() -> bool {
    (std::env::var_os(ENV_SOCKET).is_some() && token_pipe().is_some())
        || asked_to_connect()
        || asked_to_be_agent()
}

/// The argument that makes any worker binary join a coordinator over TCP:
/// `--connect HOST:PORT` (first on its command line), with the token from
/// `--token-file FILE`.
pub const ARG_CONNECT: &str = "--connect";
/// Environment variable: the coordinator's TCP address (`HOST:PORT`) for a worker
/// to join, as `--connect` gives it.
pub const ENV_CONNECT: &str = "PSTREAM_CONNECT";
/// Environment variable: the file holding the job's token (mode 0600), as
/// `--token-file` gives it.
pub const ENV_TOKEN_FILE: &str = "PSTREAM_TOKEN_FILE";

/// The argument that makes any worker binary a host agent: `--agent --connect
/// HOST:PORT [--workers N] [--token-file F]` (first on its command line). The
/// agent starts the host's workers and reports their ends.
pub const ARG_AGENT: &str = "--agent";
/// Environment variable, set by a host agent for the workers it starts: its id in
/// the coordinator's pool, which the worker says in its `Hello`.
pub const ENV_AGENT: &str = "PSTREAM_AGENT";
/// Environment variable, set by a host agent for the workers it starts: an
/// inherited pipe on which the worker writes one byte once the coordinator has
/// welcomed it (so that its agent can tell a start failure from a crash).
pub const ENV_READY_FD: &str = "PSTREAM_READY_FD";
/// The exit code of a worker started by a host agent whose connection to the
/// coordinator ended without a `Shutdown` (closed, reset, or silent): its agent
/// reports it, and the coordinator counts the worker lost, not crashed.
pub const EXIT_LOST: i32 = 75;

/// The most workers one host agent runs (`--workers`, `host:N`,
/// `--workers-per-host`, `SLURM_CPUS_ON_NODE`): each is a process, two threads of
/// the agent and a connection to the coordinator, and a typo of a few zeros must
/// get an error, not a host brought down by a storm of processes. Eight times the
/// CPU threads of the largest two-socket servers sold today.
pub const MAX_AGENT_WORKERS: u32 = 4096;

/// Whether this process was asked to be a host agent: its first argument is
/// [`ARG_AGENT`].
pub fn asked_to_be_agent() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|a| a.to_str() == Some(ARG_AGENT))
}

/// Whether this process was asked to join a coordinator over TCP: its first
/// argument is `--connect` (or `--connect=ADDR`), or [`ENV_CONNECT`] is set.
pub fn asked_to_connect() -> bool {
    let first = std::env::args_os().nth(1);
    let by_arg = first
        .as_ref()
        .and_then(|a| a.to_str())
        .is_some_and(|a| a == ARG_CONNECT || a.starts_with("--connect="));
    by_arg || std::env::var_os(ENV_CONNECT).is_some_and(|v| !v.is_empty())
}

/// If [`ENV_SOCKET`] is set in a process that was not started as a worker: why it
/// does not count, for a warning.
pub fn stray_worker_environment() -> Option<String> {
    let socket = std::env::var_os(ENV_SOCKET)?;
    if token_pipe().is_some() {
        return None;
    }
    let why = match std::env::var(ENV_TOKEN_FD) {
        Err(_) => format!("{ENV_TOKEN_FD} is not set"),
        Ok(fd) => format!("{ENV_TOKEN_FD}={fd} names no pipe this process holds"),
    };
    Some(format!(
        "{ENV_SOCKET}={} is set, but this process was not started by a pstream \
         coordinator ({why}); the variable was probably inherited by mistake",
        socket.to_string_lossy()
    ))
}

/// The descriptor on which the coordinator passed this worker its token: the number
/// in [`ENV_TOKEN_FD`], if it names an open pipe (at least 3: never a standard
/// stream).
pub fn token_pipe() -> Option<i32> {
    inherited_pipe(ENV_TOKEN_FD)
}

/// The descriptor that the environment variable `name` names, if it is a pipe
/// this process holds, numbered 3 or more (never a standard stream).
pub fn inherited_pipe(name: &str) -> Option<i32> {
    use std::os::unix::fs::FileTypeExt;
    let fd: i32 = std::env::var(name).ok()?.parse().ok()?;
    if fd < 3 {
        return None;
    }
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    meta.file_type().is_fifo().then_some(fd)
}

/// Environment variable naming the descriptor (a pipe, inherited) on which the
/// coordinator writes the worker's token: 64 hexadecimal digits. The worker reads it
/// once and closes it; the token is never in the environment, where
/// `/proc/<pid>/environ` would show it to the worker's children.
pub const ENV_TOKEN_FD: &str = "PSTREAM_TOKEN_FD";
/// Environment variable carrying the coordinator's process id: the only process
/// the worker accepts as the peer of its socket.
pub const ENV_COORDINATOR_PID: &str = "PSTREAM_COORDINATOR_PID";
/// Environment variable carrying the worker's maximum frame size.
pub const ENV_MAX_FRAME: &str = "PSTREAM_MAX_FRAME";
/// Environment variable carrying how many items the worker may hold at once.
pub const ENV_CAPACITY: &str = "PSTREAM_CAPACITY";

/// Cut a message to at most [`MAX_MESSAGE`] bytes, on a character boundary.
pub fn truncate_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}
