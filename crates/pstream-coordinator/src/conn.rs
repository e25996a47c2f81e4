//! A worker's connection as the engine drives it: a non-blocking socket with a
//! receive buffer cut into frames, and a queue of bytes to send. Whoever leads the
//! engine polls every connection itself, so a batch costs no thread hop on our side
//! and a slow or stuck worker never blocks anyone.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
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
    rbuf: Vec<u8>,
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
            rbuf: Vec::with_capacity(READ_CHUNK),
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

    /// Write what the socket takes now. An error means the connection is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(chunk) = self.queue.front() {
            let bytes = &chunk.bytes()[self.written..];
            if bytes.is_empty() {
                self.queue.pop_front();
                self.written = 0;
                continue;
            }
            match (&self.stream).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
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
            // Read at most the rest of a frame in progress, so a large frame ends
            // up alone in the buffer and is decoded without a copy.
            let want = match self.pending_frame_len() {
                Some(total) if total > self.rbuf.len() => total - self.rbuf.len(),
                _ => READ_CHUNK,
            };
            let start = self.rbuf.len();
            self.rbuf.resize(start + want, 0);
            match (&self.stream).read(&mut self.rbuf[start..]) {
                Ok(0) => {
                    self.rbuf.truncate(start);
                    if !self.rbuf.is_empty() {
                        let got = self.rbuf.len();
                        let expected = self.pending_frame_len().unwrap_or(4);
                        return Incoming::Broken(frames, DecodeError::Truncated { expected, got });
                    }
                    return Incoming::Closed(frames);
                }
                Ok(n) => {
                    self.rbuf.truncate(start + n);
                    budget = budget.saturating_sub(n);
                }
                Err(e) => {
                    self.rbuf.truncate(start);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Incoming::Frames(frames),
                        io::ErrorKind::Interrupted => {}
                        // A reset connection is a crash, not a protocol violation.
                        _ => return Incoming::Closed(frames),
                    }
                }
            }
        }
    }

    /// The whole length (prefix included) of the frame at the buffer's start, once
    /// its prefix is in.
    fn pending_frame_len(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.rbuf.get(..4)?.try_into().ok()?;
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
        if self.rbuf.len() < total {
            return Ok(None);
        }
        if self.rbuf.len() == total {
            let buf = std::mem::replace(&mut self.rbuf, Vec::with_capacity(READ_CHUNK));
            return decode_body_at(buf, 4).map(Some);
        }
        let body = self.rbuf[4..total].to_vec();
        self.rbuf.drain(..total);
        decode_body(body).map(Some)
    }
}
