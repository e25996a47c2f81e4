//! A worker's connection as the engine drives it: a non-blocking socket with a
//! receive buffer cut into frames, and a queue of bytes to send. Whoever leads the
//! engine waits on every connection itself (in one epoll set, `poller.rs`), so a
//! batch costs no thread hop on our side and a slow or stuck worker never blocks
//! anyone.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use crate::link::Link;
use crate::poller::Poller;
use pstream_protocol::{
    decode_body, decode_body_at, encode_prefix, frame_len, DecodeError, Frame, Items, Message,
    FRAME_PREFIX, SEND_BUFFER,
};

/// Bytes waiting to be written.
enum Chunk {
    Bytes(Vec<u8>),
    Items(Arc<Items>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b,
            Chunk::Items(items) => items.data(),
        }
    }
}

/// What reading found.
pub(crate) enum Incoming {
    /// Frames, in order (possibly none).
    Frames(Vec<Frame>),
    /// The peer closed, after these frames.
    Closed(Vec<Frame>),
    /// The peer sent bytes that are not a frame, after these frames.
    Broken(Vec<Frame>, DecodeError),
}

pub(crate) struct Conn {
    link: Box<dyn Link>,
    max_frame: usize,
    /// Received bytes: `rbuf[head..tail]` are not cut into frames yet. Always
    /// initialised to its length, so reads need no zeroing. Between reads it holds
    /// only what is not cut yet (see [`Conn::read_with`]).
    rbuf: Vec<u8>,
    head: usize,
    tail: usize,
    queue: VecDeque<Chunk>,
    /// How much of the queue's first chunk is written.
    written: usize,
    /// Shut our sending side once the queue is empty.
    close_when_sent: bool,
    /// The engine's epoll set, once registered there.
    watch: Option<Watch>,
}

/// A connection's place in the engine's epoll set.
struct Watch {
    poller: Arc<Poller>,
    token: u64,
    /// Whether it asks to hear of writability (its last write was cut short).
    writable: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Out of the set before the socket closes (a copy of the descriptor in
        // another process would otherwise keep it there).
        if let Some(watch) = &self.watch {
            watch.poller.remove(self.link.as_fd());
        }
    }
}

/// Reads stop after this much per wake-up, so one busy worker cannot starve the rest.
const READ_BUDGET: usize = 8 << 20;
const READ_CHUNK: usize = 64 << 10;
/// The receive buffer's size: room for a read chunk behind a partial frame.
const RECV_BUFFER: usize = 2 * READ_CHUNK;

impl Conn {
    pub fn new(link: Box<dyn Link>, max_frame: usize) -> io::Result<Conn> {
        link.set_nonblocking(true)?;
        // Best effort: the kernel caps it, and a smaller buffer only costs speed.
        link.set_send_buffer(SEND_BUFFER);
        Ok(Conn {
            link,
            max_frame,
            rbuf: Vec::new(),
            head: 0,
            tail: 0,
            queue: VecDeque::new(),
            written: 0,
            close_when_sent: false,
            watch: None,
        })
    }

    /// Join the engine's epoll set under `token`: watched for reading from now on,
    /// and listed as pending whenever its send queue fills.
    pub fn register(&mut self, poller: &Arc<Poller>, token: u64) -> io::Result<()> {
        poller.add(self.link.as_fd(), token)?;
        if !self.queue.is_empty() {
            poller.pending(token);
        }
        self.watch = Some(Watch {
            poller: Arc::clone(poller),
            token,
            writable: false,
        });
        Ok(())
    }

    /// Ask the epoll set for writability, or no longer, if that changes.
    fn want_writable(&mut self, on: bool) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        if watch.writable == on {
            return;
        }
        match watch
            .poller
            .want_writable(self.link.as_fd(), watch.token, on)
        {
            Ok(()) => watch.writable = on,
            Err(e) => tracing::error!("could not change what the epoll set watches: {e}"),
        }
    }

    /// Queue a frame; the items' bytes are sent from their own buffer.
    pub fn push(&mut self, message: &Message, items: Option<&Arc<Items>>) {
        let empty = Items::new();
        let body = items.map_or(&empty, |i| &**i);
        let was_empty = self.queue.is_empty();
        let mut prefix = Vec::with_capacity(64 + 4 * body.len());
        // Our own frames are within the limit by construction (the feeder cuts
        // batches by size); a failure here is a bug, and the worker would only see EOF.
        if encode_prefix(message, body, usize::MAX, &mut prefix).is_err() {
            tracing::error!("could not encode a frame for a worker");
            return;
        }
        self.queue.push_back(Chunk::Bytes(prefix));
        if let Some(items) = items {
            if items.data_len() > 0 {
                self.queue.push_back(Chunk::Items(Arc::clone(items)));
            }
        }
        if was_empty {
            if let Some(watch) = &self.watch {
                watch.poller.pending(watch.token);
            }
        }
    }

    /// Close our sending side once everything queued is sent.
    pub fn close_when_sent(&mut self) {
        self.close_when_sent = true;
    }

    /// Whether bytes are queued (for tests: the engine hears it from the poller).
    #[cfg(test)]
    pub fn wants_to_write(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Its socket, for a test's `poll`.
    #[cfg(test)]
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.link.as_fd()
    }

    /// Write what the socket takes now, every queued chunk in one system call (a
    /// frame's prefix and its items go out together: one wake-up of the worker, not
    /// two). An error means the connection is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            for (i, chunk) in self.queue.iter().take(slices.len()).enumerate() {
                let skip = if i == 0 { self.written } else { 0 };
                slices[count] = IoSlice::new(&chunk.bytes()[skip..]);
                count += 1;
            }
            let mut n = match self.link.write_vectored(&slices[..count]) {
                Ok(0) if slices[..count].iter().any(|s| !s.is_empty()) => {
                    return Err(io::ErrorKind::WriteZero.into())
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full: the epoll set says when it takes more.
                    self.want_writable(true);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Drop the chunks written whole; remember how far into the next we got.
            while let Some(chunk) = self.queue.front() {
                let left = chunk.bytes().len() - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.queue.pop_front();
                self.written = 0;
            }
        }
        self.want_writable(false);
        if self.close_when_sent {
            let _ = self.link.shutdown_write();
            self.close_when_sent = false;
        }
        Ok(())
    }

    /// Read what the socket has and cut it into frames, in `scratch` (the engine's
    /// one receive buffer, lent to each connection in turn): a connection keeps only
    /// the bytes of a frame not yet whole, so an idle one costs no buffer, and a
    /// thousand of them no 128 KiB each. A large frame under way keeps the buffer it
    /// is read into until it is whole.
    pub fn read_with(&mut self, scratch: &mut Vec<u8>) -> Incoming {
        if self.rbuf.len() < RECV_BUFFER {
            let mut buf = std::mem::take(scratch);
            if buf.len() < RECV_BUFFER {
                buf.resize(RECV_BUFFER, 0);
            }
            let carried = self.tail - self.head;
            buf[..carried].copy_from_slice(&self.rbuf[self.head..self.tail]);
            self.rbuf = buf;
            self.head = 0;
            self.tail = carried;
        }
        let incoming = self.read_frames();
        let carried = self.tail - self.head;
        if self.rbuf.len() <= RECV_BUFFER || carried == 0 {
            let carry = self.rbuf[self.head..self.tail].to_vec();
            let buf = std::mem::replace(&mut self.rbuf, carry);
            self.head = 0;
            self.tail = carried;
            if buf.len() == RECV_BUFFER {
                *scratch = buf;
            }
        }
        incoming
    }

    /// [`Conn::read_with`] a buffer of its own (for tests).
    #[cfg(test)]
    pub fn read(&mut self) -> Incoming {
        self.read_with(&mut Vec::new())
    }

    fn read_frames(&mut self) -> Incoming {
        let mut frames = Vec::new();
        let mut budget = READ_BUDGET;
        loop {
            // Cut every whole frame out first.
            loop {
                match self.take_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return Incoming::Broken(frames, e),
                }
            }
            if budget == 0 {
                return Incoming::Frames(frames);
            }
            // A large frame is read alone, to exactly its end, so it is handed on
            // without a copy; small ones share the buffer and are copied out.
            let want = match self.pending_frame_len() {
                Some(total) if total > READ_CHUNK => total - (self.tail - self.head),
                _ => READ_CHUNK,
            };
            self.make_room(want);
            let room = if want > READ_CHUNK {
                self.tail + want
            } else {
                self.rbuf.len()
            };
            match self.link.read(&mut self.rbuf[self.tail..room]) {
                Ok(0) => {
                    if self.tail > self.head {
                        let got = self.tail - self.head;
                        let expected = self.pending_frame_len().unwrap_or(4);
                        return Incoming::Broken(frames, DecodeError::Truncated { expected, got });
                    }
                    return Incoming::Closed(frames);
                }
                Ok(n) => {
                    self.tail += n;
                    budget = budget.saturating_sub(n);
                    // Less than asked for: the socket is drained for now. Cut what
                    // came and stop, rather than pay a system call to hear "again".
                    if n < room - (self.tail - n) {
                        budget = 0;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Incoming::Frames(frames),
                    io::ErrorKind::Interrupted => {}
                    // A reset connection is a crash, not a protocol violation.
                    _ => return Incoming::Closed(frames),
                },
            }
        }
    }

    /// Make `want` bytes free after `tail`: move what is buffered to the front, and
    /// grow the buffer (for a large frame) only if that is not enough.
    fn make_room(&mut self, want: usize) {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
        // A large frame is moved to the front (it has at most one read chunk in so
        // far), so that it ends up alone in the buffer and is handed on whole.
        let large = want > READ_CHUNK;
        if self.rbuf.len() - self.tail >= want && !(large && self.head > 0) {
            return;
        }
        if self.head > 0 {
            self.rbuf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.rbuf.len() - self.tail < want {
            self.rbuf.resize(self.tail + want, 0);
        }
    }

    /// The whole length (prefix included) of the frame at the buffer's start, once
    /// its prefix is in.
    fn pending_frame_len(&self) -> Option<usize> {
        if self.tail - self.head < 4 {
            return None;
        }
        let prefix: [u8; 4] = self.rbuf[self.head..self.head + 4].try_into().ok()?;
        Some(4 + u32::from_le_bytes(prefix) as usize)
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.tail - self.head < FRAME_PREFIX {
            return Ok(None);
        }
        let prefix: [u8; FRAME_PREFIX] = self.rbuf[self.head..self.head + FRAME_PREFIX]
            .try_into()
            .expect("FRAME_PREFIX bytes");
        // The one length check of the protocol, before anything is allocated.
        let total = FRAME_PREFIX + frame_len(prefix, self.max_frame)?;
        if self.tail - self.head < total {
            return Ok(None);
        }
        if total > READ_CHUNK && self.head == 0 && self.tail == total {
            // A large frame alone in the buffer: hand the buffer on, no copy.
            let mut buf = std::mem::replace(&mut self.rbuf, vec![0; RECV_BUFFER]);
            buf.truncate(total);
            self.head = 0;
            self.tail = 0;
            return decode_body_at(buf, 4).map(Some);
        }
        let body = self.rbuf[self.head + 4..self.head + total].to_vec();
        self.head += total;
        decode_body(body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::thread;
    use std::time::Duration;

    use crate::link::UnixLink;
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use pstream_protocol::{
        read_frame, write_frame, BatchHeader, Codec, FailureKind, ItemFailure, ResultsHeader,
        DEFAULT_MAX_FRAME,
    };
    use std::os::unix::net::UnixStream;

    const MAX: usize = DEFAULT_MAX_FRAME;

    /// How long a test waits for the socket before it declares the Conn stuck. Only a
    /// guard against hanging: the tests wait on events, never on time.
    fn guard() -> PollTimeout {
        PollTimeout::from(60_000u16)
    }

    /// Pseudo-random bytes, different for every seed.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A batch (even `seq`) or results (odd `seq`) frame with items of these sizes.
    fn frame(seq: u64, sizes: &[usize]) -> Frame {
        let mut items = Items::new();
        for (i, &len) in sizes.iter().enumerate() {
            items.push(&bytes(seq * 1_000_003 + i as u64, len));
        }
        // Some results travel packed: without their items' lengths.
        let packed = seq % 5 == 0;
        let message = if seq % 2 == 0 {
            Message::Batch(BatchHeader {
                job: 7,
                seq,
                function: format!("f{seq}"),
                codec: Codec::Bincode,
                first_index: seq * 10,
                packed_results: packed,
            })
        } else {
            Message::Results(ResultsHeader {
                job: 7,
                seq,
                offset: seq as u32,
                failures: if seq % 3 == 0 && !sizes.is_empty() {
                    vec![ItemFailure {
                        slot: 0,
                        kind: FailureKind::Failed,
                        message: format!("no {seq}"),
                        location: None,
                    }]
                } else {
                    Vec::new()
                },
                packed,
            })
        };
        Frame { message, items }
    }

    /// The frame's bytes on the wire, length prefix included.
    fn wire(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, &frame.message, &frame.items, MAX).unwrap();
        out
    }

    /// Numbers frames, so every frame differs from every other.
    struct Gen(u64);

    impl Gen {
        fn sized(&mut self, sizes: &[usize]) -> Frame {
            self.0 += 1;
            frame(self.0, sizes)
        }

        /// A frame of exactly `total` bytes on the wire, length prefix included.
        fn total(&mut self, total: usize) -> Frame {
            self.0 += 1;
            let mut last = total - 64;
            for _ in 0..8 {
                let f = frame(self.0, &[3, 0, last]);
                let len = wire(&f).len();
                if len == total {
                    return f;
                }
                last = (last as isize + total as isize - len as isize) as usize;
            }
            panic!("no frame of {total} bytes");
        }
    }

    /// Frames of every interesting size. `big` adds frames of several MiB, one of them
    /// above the read budget.
    fn sample_frames(big: bool) -> Vec<Frame> {
        let mut g = Gen(0);
        let mut v = vec![
            g.sized(&[]),
            g.sized(&[]),
            g.sized(&[1]),
            g.sized(&[0]),
            g.sized(&[0, 0, 0]),
            g.sized(&[5, 1, 200]),
        ];
        // Around the read chunk, whole frame sizes; each after a tiny frame, so it does
        // not start at the front of the receive buffer.
        for total in READ_CHUNK - 6..=READ_CHUNK + 6 {
            v.push(g.total(total));
            v.push(g.sized(&[2]));
        }
        // Around the read chunk, item bytes; back to back.
        for data in [READ_CHUNK - 4, READ_CHUNK, READ_CHUNK + 1] {
            v.push(g.sized(&[data]));
        }
        // Around the receive buffer's size.
        for total in [2 * READ_CHUNK - 1, 2 * READ_CHUNK, 2 * READ_CHUNK + 1] {
            v.push(g.total(total));
        }
        v.push(g.sized(&(0..3000).map(|i| i % 23).collect::<Vec<_>>()));
        if big {
            v.push(g.sized(&[3 << 20]));
            v.push(g.sized(&[1]));
            v.push(g.sized(&[READ_BUDGET + 12_345, 7, 1 << 20]));
            v.push(g.sized(&[READ_CHUNK * 5]));
        }
        v.push(g.sized(&[9]));
        v
    }

    fn assert_frames_eq(got: &[Frame], want: &[Frame], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.message, w.message, "{what}: message of frame {i}");
            let packed = match &w.message {
                Message::Results(h) => h.packed,
                _ => false,
            };
            assert!(
                if packed {
                    g.items.is_packed() && g.items.len() == w.items.len()
                } else {
                    g.items.ends() == w.items.ends()
                },
                "{what}: item lengths of frame {i} differ ({} items of {} bytes, want {} of {})",
                g.items.len(),
                g.items.data_len(),
                w.items.len(),
                w.items.data_len()
            );
            if g.items.data() != w.items.data() {
                let at = g
                    .items
                    .data()
                    .iter()
                    .zip(w.items.data())
                    .position(|(a, b)| a != b);
                panic!("{what}: item bytes of frame {i} differ, first at {at:?}");
            }
        }
        assert_eq!(got.len(), want.len(), "{what}: number of frames");
    }

    /// A writer that hands its bytes to the socket in writes of the given sizes, in
    /// turn (a frame's prefix and items are separate `write`s of `write_frame`, so a
    /// size can be cut once more there).
    struct Chunked<'a> {
        out: &'a UnixStream,
        sizes: &'a [usize],
        next: usize,
        left: usize,
    }

    impl Write for Chunked<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                self.left = self.sizes[self.next % self.sizes.len()];
                self.next += 1;
            }
            let n = buf.len().min(self.left);
            self.out.write_all(&buf[..n])?;
            self.left -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Write `frames` with `write_frame` in writes of `sizes`, then `tail` (a piece of a
    /// frame, say), then close.
    fn spawn_writer(
        peer: UnixStream,
        frames: Arc<Vec<Frame>>,
        sizes: &'static [usize],
        tail: Vec<u8>,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut w = Chunked {
                out: &peer,
                sizes,
                next: 0,
                left: 0,
            };
            for f in frames.iter() {
                write_frame(&mut w, &f.message, &f.items, MAX).unwrap();
            }
            w.write_all(&tail).unwrap();
            // Dropping `peer` closes the connection.
        })
    }

    fn wait_for(conn: &Conn, flags: PollFlags, timeout: PollTimeout) -> bool {
        loop {
            let mut fds = [PollFd::new(conn.fd(), flags)];
            match poll(&mut fds, timeout) {
                Ok(n) => return n > 0,
                Err(Errno::EINTR) => continue,
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    /// Run a test on its own thread, and fail it if it has not finished in two
    /// minutes: a Conn call that never returns fails the test instead of hanging
    /// it. (A guard only: nothing waits on time to synchronise.)
    fn watchdog(test: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let runner = thread::spawn(move || {
            test();
            drop(done);
        });
        // Ends with a disconnection when the test returns or panics.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(120))
        {
            panic!("the test did not finish in two minutes: a Conn call never returned");
        }
        if let Err(panic) = runner.join() {
            std::panic::resume_unwind(panic);
        }
    }

    enum End {
        Closed,
        Broken(DecodeError),
    }

    /// Read until the Conn reports the end of the stream, waiting for readability
    /// (at most `timeout`) in between.
    fn read_to_end(conn: &mut Conn, timeout: PollTimeout) -> (Vec<Frame>, End) {
        let mut frames = Vec::new();
        loop {
            match conn.read() {
                Incoming::Frames(f) => frames.extend(f),
                Incoming::Closed(f) => {
                    frames.extend(f);
                    return (frames, End::Closed);
                }
                Incoming::Broken(f, e) => {
                    frames.extend(f);
                    return (frames, End::Broken(e));
                }
            }
            assert!(
                wait_for(conn, PollFlags::POLLIN, timeout),
                "the connection has nothing more to read, after {} frames and no end",
                frames.len()
            );
        }
    }

    /// Read until the end of what `writer` sends; then let the writer finish (with
    /// the Conn gone it fails, rather than blocks, should the Conn have stopped
    /// early). Whether the writer wrote everything comes last, so that a test
    /// asserts what the Conn read first.
    fn receive(mut conn: Conn, writer: thread::JoinHandle<()>) -> (Vec<Frame>, End, bool) {
        let (frames, end) = read_to_end(&mut conn, guard());
        drop(conn);
        let wrote_all = writer.join().is_ok();
        (frames, end, wrote_all)
    }

    /// A peer writes `frames` in writes of `sizes` and closes: every frame comes out
    /// of the Conn whole and in order, then a clean close.
    fn assert_all_arrive(frames: &Arc<Vec<Frame>>, sizes: &'static [usize], what: &str) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
        let writer = spawn_writer(peer, Arc::clone(frames), sizes, Vec::new());
        let (got, end, wrote_all) = receive(conn, writer);
        assert_frames_eq(&got, frames, what);
        match end {
            End::Closed => {}
            End::Broken(e) => panic!("{what}: broken: {e}"),
        }
        assert!(wrote_all, "{what}: the writer failed");
    }

    /// Read what the socket holds now.
    fn read_available(conn: &mut Conn, frames: &mut Vec<Frame>) {
        while wait_for(conn, PollFlags::POLLIN, PollTimeout::ZERO) {
            match conn.read() {
                Incoming::Frames(f) => frames.extend(f),
                Incoming::Closed(_) => panic!("closed early"),
                Incoming::Broken(_, e) => panic!("broken: {e}"),
            }
        }
    }

    const SPLITS: &[&[usize]] = &[
        &[1, 3, 7, 4096, 100_000],
        &[100_000],
        &[READ_CHUNK],
        &[4096],
        &[7, READ_CHUNK - 3, 2 * READ_CHUNK + 5],
    ];

    #[test]
    fn frames_of_every_size_come_out_whole_and_in_order() {
        watchdog(|| {
            let frames = Arc::new(sample_frames(true));
            for &sizes in SPLITS {
                assert_all_arrive(&frames, sizes, &format!("writes of {sizes:?}"));
            }
        });
    }

    /// Connections read through one shared buffer: between reads each keeps only
    /// the bytes of a frame not yet whole (none when idle), whatever came before.
    #[test]
    fn connections_share_one_receive_buffer_and_keep_only_partial_frames() {
        watchdog(|| {
            let mut g = Gen(300);
            let mut scratch = Vec::new();
            let mut pairs: Vec<(Conn, UnixStream)> = (0..3)
                .map(|_| {
                    let (ours, peer) = UnixStream::pair().unwrap();
                    let conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
                    (conn, peer)
                })
                .collect();
            for (round, (conn, peer)) in pairs.iter_mut().enumerate() {
                let whole = g.sized(&[100, 5000, 20_000]);
                let next = g.total(READ_CHUNK / 2 + round);
                let next_wire = wire(&next);
                let cut = 1000 + round;
                let mut bytes = wire(&whole);
                bytes.extend_from_slice(&next_wire[..cut]);
                peer.write_all(&bytes).unwrap();
                assert!(wait_for(conn, PollFlags::POLLIN, guard()));
                let got = match conn.read_with(&mut scratch) {
                    Incoming::Frames(f) => f,
                    _ => panic!("the connection ended"),
                };
                assert_frames_eq(&got, std::slice::from_ref(&whole), "the whole frame");
                assert_eq!(conn.rbuf.capacity(), cut, "it keeps the partial frame only");
                assert_eq!(scratch.len(), RECV_BUFFER, "the buffer is handed back");
                peer.write_all(&next_wire[cut..]).unwrap();
                assert!(wait_for(conn, PollFlags::POLLIN, guard()));
                let got = match conn.read_with(&mut scratch) {
                    Incoming::Frames(f) => f,
                    _ => panic!("the connection ended"),
                };
                assert_frames_eq(&got, std::slice::from_ref(&next), "the rest of the frame");
                assert_eq!(
                    conn.rbuf.capacity(),
                    0,
                    "an idle connection keeps no buffer"
                );
            }
        });
    }

    #[test]
    fn frames_written_a_few_bytes_at_a_time_come_out_whole() {
        watchdog(|| {
            let frames = Arc::new(sample_frames(false));
            assert_all_arrive(&frames, &[1, 3, 7], "writes of 1, 3, 7");
        });
    }

    /// Each write is read before the next is made, so the reads see exactly the
    /// writes' boundaries, wherever they fall in the frames.
    #[test]
    fn frames_cut_anywhere_in_lockstep_come_out_whole() {
        watchdog(|| {
            let frames = sample_frames(true);
            let stream: Vec<u8> = frames.iter().flat_map(wire).collect();
            for &sizes in SPLITS {
                let (ours, peer) = UnixStream::pair().unwrap();
                peer.set_nonblocking(true).unwrap();
                let mut conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
                let mut got = Vec::new();
                let mut at = 0;
                for &size in sizes.iter().cycle() {
                    if at == stream.len() {
                        break;
                    }
                    let end = (at + size).min(stream.len());
                    while at < end {
                        match (&peer).write(&stream[at..end]) {
                            Ok(n) => at += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => panic!("write: {e}"),
                        }
                        read_available(&mut conn, &mut got);
                    }
                }
                drop(peer);
                let (rest, end) = read_to_end(&mut conn, guard());
                got.extend(rest);
                let what = format!("lockstep writes of {sizes:?}");
                assert_frames_eq(&got, &frames, &what);
                assert!(matches!(end, End::Closed), "{what}: not a clean close");
            }
        });
    }

    #[test]
    fn a_peer_closing_between_frames_is_a_clean_close() {
        watchdog(|| {
            let mut g = Gen(100);
            let lasts = [
                None,
                Some(g.sized(&[])),
                Some(g.sized(&[1, 2, 3])),
                Some(g.total(READ_CHUNK)),
                Some(g.total(READ_CHUNK + 1)),
                Some(g.total(3 * READ_CHUNK + 17)),
            ];
            for (n, last) in lasts.into_iter().enumerate() {
                for before in [Vec::new(), vec![g.sized(&[4]), g.total(READ_CHUNK + 9)]] {
                    let mut frames = before;
                    frames.extend(last.clone());
                    let frames = Arc::new(frames);
                    let what = format!("case {n}, {} frames", frames.len());
                    assert_all_arrive(&frames, &[4096], &what);
                }
            }
        });
    }

    #[test]
    fn a_peer_closing_inside_a_frame_is_a_truncation() {
        watchdog(|| {
            let mut g = Gen(200);
            let before = Arc::new(vec![
                g.sized(&[4]),
                g.total(READ_CHUNK + 100),
                g.sized(&[1, 2]),
            ]);
            let small = wire(&g.sized(&[10, 20]));
            let large = wire(&g.total(3 * READ_CHUNK + 17));
            let mut cases = Vec::new();
            for cut in [1, 3, 4, 5, 8, small.len() - 1] {
                cases.push((&small, cut));
            }
            for cut in [
                2,
                4,
                9,
                READ_CHUNK - 1,
                READ_CHUNK,
                READ_CHUNK + 1,
                2 * READ_CHUNK,
                large.len() - 1,
            ] {
                cases.push((&large, cut));
            }
            for (bytes, cut) in cases {
                for preceded in [false, true] {
                    let frames = if preceded {
                        Arc::clone(&before)
                    } else {
                        Arc::new(Vec::new())
                    };
                    let (ours, peer) = UnixStream::pair().unwrap();
                    let conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
                    let tail = bytes[..cut].to_vec();
                    let writer = spawn_writer(peer, Arc::clone(&frames), &[4096, 100_000], tail);
                    let (got, end, wrote_all) = receive(conn, writer);
                    let what = format!(
                        "{cut} of {} bytes after {} frames",
                        bytes.len(),
                        frames.len()
                    );
                    assert_frames_eq(&got, &frames, &what);
                    let (want_expected, want_got) = if cut < 4 {
                        (4, cut)
                    } else {
                        (bytes.len(), cut)
                    };
                    match end {
                        End::Broken(DecodeError::Truncated { expected, got }) => {
                            assert_eq!((expected, got), (want_expected, want_got), "{what}")
                        }
                        End::Broken(e) => panic!("{what}: {e}"),
                        End::Closed => panic!("{what}: a clean close"),
                    }
                    assert!(wrote_all, "{what}: the writer failed");
                }
            }
        });
    }

    #[test]
    fn a_length_above_max_frame_is_refused() {
        watchdog(|| {
            let mut g = Gen(300);
            let max = 1000;
            let fits = g.total(max + 4);
            let over = wire(&g.total(max + 5));
            let lying = u32::MAX.to_le_bytes().to_vec();
            let mut big_prefix = ((4 * READ_CHUNK + 1) as u32).to_le_bytes().to_vec();
            big_prefix.extend_from_slice(&[0; 100]);
            // (the Conn's limit, what follows a frame that fits, the announced length)
            let cases = [
                (max, over, max + 1),
                (max, lying.clone(), u32::MAX as usize),
                (MAX, lying, u32::MAX as usize),
                (4 * READ_CHUNK, big_prefix, 4 * READ_CHUNK + 1),
            ];
            for (limit, bad, len) in cases {
                let (ours, mut peer) = UnixStream::pair().unwrap();
                let mut conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), limit).unwrap();
                write_frame(&mut peer, &fits.message, &fits.items, MAX).unwrap();
                peer.write_all(&bad).unwrap();
                // Everything is in the socket and the peer stays open: the Conn must see
                // the problem in what it has.
                let (got, end) = read_to_end(&mut conn, PollTimeout::ZERO);
                let what = format!("{len} bytes announced, limit {limit}");
                assert_frames_eq(&got, std::slice::from_ref(&fits), &what);
                match end {
                    End::Broken(DecodeError::TooLarge { len: l, max: m }) => {
                        assert_eq!((l, m), (len, limit), "{what}")
                    }
                    End::Broken(e) => panic!("{what}: {e}"),
                    End::Closed => panic!("{what}: a clean close"),
                }
                drop(peer);
            }
        });
    }

    /// What `push` takes: the message and, for batches and results, the items.
    fn pushable(frames: &[Frame]) -> Vec<(Message, Option<Arc<Items>>)> {
        frames
            .iter()
            .map(|f| match f.message {
                Message::Batch(_) | Message::Results(_) => {
                    (f.message.clone(), Some(Arc::new(f.items.clone())))
                }
                _ => (f.message.clone(), None),
            })
            .collect()
    }

    #[test]
    fn pushed_frames_reach_the_peer_even_through_a_full_socket() {
        watchdog(|| {
            let mut g = Gen(400);
            let mut frames = vec![
                Frame::control(Message::Progress {
                    job: 1,
                    seq: 2,
                    done: 3,
                }),
                g.sized(&[]),
                g.sized(&[0, 0]),
                g.sized(&[1]),
            ];
            // Many small frames: far more than the 16 chunks one writev takes.
            for i in 0..200 {
                frames.push(g.sized(&[i % 7, 30]));
            }
            for total in [READ_CHUNK - 1, READ_CHUNK, READ_CHUNK + 1] {
                frames.push(g.total(total));
            }
            frames.push(g.sized(&[1 << 20]));
            frames.push(Frame::control(Message::Cancel { job: 9 }));
            frames.push(g.sized(&[3 << 20, 5]));
            for _ in 0..40 {
                frames.push(g.sized(&[100_000, 1]));
            }
            frames.push(g.sized(&[2]));
            let total: usize = frames.iter().map(|f| wire(f).len()).sum();
            assert!(total > 8 << 20);
            let frames = Arc::new(frames);

            let (ours, peer) = UnixStream::pair().unwrap();
            // A guard against hanging should the Conn never close its side.
            peer.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let mut conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
            for (message, items) in pushable(&frames) {
                conn.push(&message, items.as_ref());
            }
            assert!(conn.wants_to_write());
            // Nobody reads yet: the socket fills, and flush leaves the rest queued.
            conn.flush().unwrap();
            assert!(conn.wants_to_write(), "8 MiB fit in the socket?");

            let reader = thread::spawn(move || {
                let mut peer = peer;
                let mut got = Vec::new();
                while let Some(frame) = read_frame(&mut peer, MAX).unwrap() {
                    got.push(frame);
                }
                got
            });
            conn.close_when_sent();
            let mut flushes = 0;
            loop {
                conn.flush().unwrap();
                flushes += 1;
                if !conn.wants_to_write() {
                    break;
                }
                assert!(
                    wait_for(&conn, PollFlags::POLLOUT, guard()),
                    "the socket never drained"
                );
            }
            // The reader ends at the end of stream our side's shutdown gives, while the
            // Conn is still alive.
            let got = reader.join().unwrap();
            assert_frames_eq(&got, &frames, &format!("after {flushes} flushes"));
            drop(conn);
        });
    }

    #[test]
    fn a_flush_on_a_socket_with_room_sends_everything_at_once() {
        watchdog(|| {
            let mut g = Gen(500);
            let frames: Vec<Frame> = (0..100).map(|i| g.sized(&[i % 5, 3])).collect();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            let mut conn = Conn::new(Box::new(UnixLink::new(ours).unwrap()), MAX).unwrap();
            for (message, items) in pushable(&frames) {
                conn.push(&message, items.as_ref());
            }
            conn.flush().unwrap();
            assert!(!conn.wants_to_write());
            // Nothing was held back: the peer reads every frame, then (not blocking) finds
            // the socket empty.
            let mut got = Vec::new();
            for _ in 0..frames.len() {
                got.push(read_frame(&mut peer, MAX).unwrap().unwrap());
            }
            assert_frames_eq(&got, &frames, "one flush");
            peer.set_nonblocking(true).unwrap();
            let err = peer.read(&mut [0; 1]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        });
    }
}
