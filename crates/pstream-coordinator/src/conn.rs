//! A worker's connection as the engine drives it: a non-blocking socket with a
//! receive buffer cut into frames, and a queue of bytes to send. Whoever leads the
//! engine polls every connection itself, so a batch costs no thread hop on our side
//! and a slow or stuck worker never blocks anyone.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use pstream_protocol::{
    decode_body, decode_body_at, encode_prefix, DecodeError, Frame, Items, Message,
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
    pub stream: UnixStream,
    max_frame: usize,
    /// Received bytes: `rbuf[head..tail]` are not cut into frames yet. Always
    /// initialised to its length, so reads need no zeroing.
    rbuf: Vec<u8>,
    head: usize,
    tail: usize,
    queue: VecDeque<Chunk>,
    /// How much of the queue's first chunk is written.
    written: usize,
    /// Shut our sending side once the queue is empty.
    close_when_sent: bool,
}

/// Reads stop after this much per wake-up, so one busy worker cannot starve the rest.
const READ_BUDGET: usize = 8 << 20;
const READ_CHUNK: usize = 64 << 10;

impl Conn {
    pub fn new(stream: UnixStream, max_frame: usize) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            max_frame,
            rbuf: vec![0; 2 * READ_CHUNK],
            head: 0,
            tail: 0,
            queue: VecDeque::new(),
            written: 0,
            close_when_sent: false,
        })
    }

    /// Queue a frame; the items' bytes are sent from their own buffer.
    pub fn push(&mut self, message: &Message, items: Option<&Arc<Items>>) {
        let empty = Items::new();
        let body = items.map_or(&empty, |i| &**i);
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
    }

    /// Close our sending side once everything queued is sent.
    pub fn close_when_sent(&mut self) {
        self.close_when_sent = true;
    }

    pub fn wants_to_write(&self) -> bool {
        !self.queue.is_empty()
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
            let mut n = match (&self.stream).write_vectored(&slices[..count]) {
                Ok(0) if slices[..count].iter().any(|s| !s.is_empty()) => {
                    return Err(io::ErrorKind::WriteZero.into())
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
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
        if self.close_when_sent {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.close_when_sent = false;
        }
        Ok(())
    }

    /// Read what the socket has and cut it into frames.
    pub fn read(&mut self) -> Incoming {
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
            match (&self.stream).read(&mut self.rbuf[self.tail..room]) {
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
        if self.rbuf.len() - self.tail >= want {
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
        let prefix: [u8; 4] = self.rbuf.get(self.head..self.head + 4)?.try_into().ok()?;
        if self.tail - self.head < 4 {
            return None;
        }
        Some(4 + u32::from_le_bytes(prefix) as usize)
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(total) = self.pending_frame_len() else {
            return Ok(None);
        };
        if total - 4 > self.max_frame {
            return Err(DecodeError::TooLarge {
                len: total - 4,
                max: self.max_frame,
            });
        }
        if self.tail - self.head < total {
            return Ok(None);
        }
        if total > READ_CHUNK && self.head == 0 && self.tail == total {
            // A large frame alone in the buffer: hand the buffer on, no copy.
            let mut buf = std::mem::replace(&mut self.rbuf, vec![0; 2 * READ_CHUNK]);
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
