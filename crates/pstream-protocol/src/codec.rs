//! Encoding and decoding frames. See the crate docs for the layout.

use std::io::{self, Read, Write};

use bincode::config::{Configuration, Limit, LittleEndian, Varint};

use crate::{Codec, Frame, Items, Message, FRAME_PREFIX, MAX_HEADER, PROTOCOL_VERSION};

type HeaderConfig = Configuration<LittleEndian, Varint, Limit<MAX_HEADER>>;

fn header_config() -> HeaderConfig {
    bincode::config::standard().with_limit::<MAX_HEADER>()
}

/// Why a frame could not be read. Its message carries its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The connection failed.
    #[error("read from the connection: {0}")]
    Io(io::Error),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame should have had.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The length prefix announces more than the reader accepts.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The frame is not laid out as the protocol says.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The header is not a valid message.
    #[error("undecodable frame header: {0}")]
    Header(bincode::error::DecodeError),
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks protocol version {peer}, this build speaks version {ours}: \
         rebuild the plugin against the same pstream version as the coordinator"
    )]
    Version {
        /// The peer's version.
        peer: u32,
        /// Ours.
        ours: u32,
    },
}

impl DecodeError {
    /// Whether the error is the connection's rather than the bytes'.
    pub fn is_io(&self) -> bool {
        matches!(self, DecodeError::Io(_))
    }
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The connection failed.
    #[error("write to the connection: {0}")]
    Io(io::Error),
    /// The frame would exceed the peer's limit.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header could not be encoded.
    #[error("encode a frame header: {0}")]
    Header(bincode::error::EncodeError),
}

fn carries_items(message: &Message) -> bool {
    matches!(message, Message::Batch(_) | Message::Results(_))
}

/// Whether the frame's items travel without their lengths.
fn packed(message: &Message) -> bool {
    matches!(message, Message::Results(header) if header.packed)
}

/// Encode a frame into `out` (appending). Fails if its body would exceed `max`.
pub fn encode_frame(
    message: &Message,
    items: &Items,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    encode_prefix(message, items, max, out)?;
    out.extend_from_slice(items.data());
    debug_assert_eq!(
        out.len() - start - 4,
        u32::from_le_bytes(out[start..start + 4].try_into().unwrap()) as usize
    );
    Ok(())
}

/// Write a frame. The header and offsets are written first, then the items' bytes
/// straight from their buffer (no copy of the payload).
pub fn write_frame(
    w: &mut impl Write,
    message: &Message,
    items: &Items,
    max: usize,
) -> Result<(), EncodeError> {
    let mut prefix = Vec::with_capacity(64 + 4 * items.len());
    encode_prefix(message, items, max, &mut prefix)?;
    w.write_all(&prefix).map_err(EncodeError::Io)?;
    w.write_all(items.data()).map_err(EncodeError::Io)?;
    Ok(())
}

/// Everything of a frame but the items' bytes (which follow it on the wire, as
/// `items.data()`): for writers that send the payload from its own buffer.
pub fn encode_prefix(
    message: &Message,
    items: &Items,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    bincode::serde::encode_into_std_write(message, out, header_config())
        .map_err(EncodeError::Header)?;
    let header_len = out.len() - start - 8;
    if carries_items(message) {
        debug_assert!(
            packed(message) || !items.is_packed(),
            "packed items cannot be sent with lengths"
        );
        out.extend_from_slice(&(items.len() as u32).to_le_bytes());
        if !packed(message) {
            put_lengths(out, items.ends());
        }
    } else {
        debug_assert!(items.is_empty(), "only batches and results carry items");
    }
    let body_len = out.len() - start - 4 + items.data_len();
    if body_len > max || body_len > u32::MAX as usize {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len: body_len, max });
    }
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(header_len as u32).to_le_bytes());
    Ok(())
}

/// The body length a frame's length prefix announces, checked against the reader's
/// maximum `max`: every reader of frames (a blocking one, [`read_frame`]; a
/// non-blocking one that collects the bytes itself) checks it here, before it
/// allocates anything for the body.
#[inline]
pub fn frame_len(prefix: [u8; FRAME_PREFIX], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(len)
}

/// Read one frame. `Ok(None)` is a clean end of stream before a frame started.
///
/// The length prefix is checked against `max` before any allocation, and the body's
/// buffer grows only as bytes actually arrive.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Frame>, DecodeError> {
    read_frame_into(r, max, Vec::new())
}

/// [`read_frame`] into a buffer the caller had (from [`Items::into_buffer`], say),
/// so a reader of many frames does not allocate one per frame.
pub fn read_frame_into(
    r: &mut impl Read,
    max: usize,
    mut body: Vec<u8>,
) -> Result<Option<Frame>, DecodeError> {
    let mut len_bytes = [0u8; FRAME_PREFIX];
    let mut got = 0;
    while got < FRAME_PREFIX {
        match r.read(&mut len_bytes[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(DecodeError::Truncated {
                    expected: FRAME_PREFIX,
                    got,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecodeError::Io(e)),
        }
    }
    let len = frame_len(len_bytes, max)?;
    // The part of the buffer that is initialised already is read into directly:
    // in reads as large as what is left, which a `BufReader` passes straight to
    // the socket once its own buffer is drained (`read_to_end` starts with small
    // reads, which it serves from, and copies through, its buffer).
    let reuse = body.len().min(len);
    body.truncate(reuse);
    let mut got = 0;
    while got < reuse {
        match r.read(&mut body[got..]) {
            Ok(0) => {
                return Err(DecodeError::Truncated {
                    expected: len + FRAME_PREFIX,
                    got: got + FRAME_PREFIX,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecodeError::Io(e)),
        }
    }
    // Beyond it, grow only as bytes arrive.
    if reuse < len {
        body.reserve((len - reuse).min(1 << 20));
        r.take((len - reuse) as u64)
            .read_to_end(&mut body)
            .map_err(DecodeError::Io)?;
    }
    if body.len() < len {
        return Err(DecodeError::Truncated {
            expected: len + FRAME_PREFIX,
            got: body.len() + FRAME_PREFIX,
        });
    }
    decode_body(body).map(Some)
}

/// Append the items' lengths (from their cumulative ends) as LEB128: seven bits a
/// byte, low first, high bit set on all but the last; one byte for an item under
/// 128 bytes.
fn put_lengths(out: &mut Vec<u8>, ends: &[u32]) {
    // Through a chunk on the stack, appended 64 lengths at a time: a `push` per
    // byte checked the capacity every time, and room made in `out` beforehand had
    // to be zeroed first. Eight lengths at a time: when all are under 128 (small
    // items), their eight bytes are written at once, with one test for the eight
    // (a loop per length cost about 15 instructions an item).
    const RUN: usize = 8;
    const ROOM: usize = 64 * crate::MAX_VARINT;
    let mut chunk = [0u8; ROOM];
    let (mut at, mut last) = (0usize, 0u32);
    let mut runs = ends.chunks_exact(RUN);
    for run in &mut runs {
        if at > ROOM - RUN * crate::MAX_VARINT {
            out.extend_from_slice(&chunk[..at]);
            at = 0;
        }
        let mut bytes = [0u8; RUN];
        let (mut prev, mut wide) = (last, 0u32);
        for (byte, &end) in bytes.iter_mut().zip(run) {
            // Ends never decrease; a wrapped difference is wide and goes the long way.
            let len = end.wrapping_sub(prev);
            wide |= len;
            *byte = len as u8;
            prev = end;
        }
        if wide < 0x80 {
            chunk[at..at + RUN].copy_from_slice(&bytes);
            at += RUN;
            last = prev;
        } else {
            for &end in run {
                at = put_length(&mut chunk, at, end - last);
                last = end;
            }
        }
    }
    if at > ROOM - RUN * crate::MAX_VARINT {
        out.extend_from_slice(&chunk[..at]);
        at = 0;
    }
    for &end in runs.remainder() {
        at = put_length(&mut chunk, at, end - last);
        last = end;
    }
    out.extend_from_slice(&chunk[..at]);
}

/// Write `v` as LEB128 into `chunk` at `at` (room for [`crate::MAX_VARINT`] bytes
/// there); where the next byte goes.
#[inline(always)]
fn put_length(chunk: &mut [u8], mut at: usize, mut v: u32) -> usize {
    while v >= 0x80 {
        chunk[at] = v as u8 | 0x80;
        at += 1;
        v >>= 7;
    }
    chunk[at] = v as u8;
    at + 1
}

/// Read a LEB128 `u32` at `*at`, moving past it. `None` if it runs past the end,
/// takes more than five bytes or does not fit.
#[inline]
fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    // Most items are shorter than 128 bytes: one byte.
    if let Some(&b) = bytes.get(*at) {
        if b < 0x80 {
            *at += 1;
            return Some(u32::from(b));
        }
    }
    let mut v = 0u64;
    for i in 0..5 {
        let b = *bytes.get(*at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *at += i + 1;
            return u32::try_from(v).ok();
        }
    }
    None
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Decode a frame body (everything after the length prefix). Never panics.
pub fn decode_body(body: Vec<u8>) -> Result<Frame, DecodeError> {
    decode_body_at(body, 0)
}

/// Decode the frame body that fills `buf` from `start` on (a receive buffer that
/// still holds the length prefix, say): the items keep pointing into `buf`, so
/// nothing is copied. Never panics.
pub fn decode_body_at(buf: Vec<u8>, start: usize) -> Result<Frame, DecodeError> {
    let body = buf
        .get(start..)
        .ok_or(DecodeError::Malformed("start past the end"))?;
    let header_len = read_u32(body, 0).ok_or(DecodeError::Malformed("no header length"))? as usize;
    if header_len > MAX_HEADER {
        return Err(DecodeError::Malformed(
            "header longer than the header limit",
        ));
    }
    let header_end = 4usize
        .checked_add(header_len)
        .filter(|&e| e <= body.len())
        .ok_or(DecodeError::Malformed(
            "header length past the end of the frame",
        ))?;
    let header = &body[4..header_end];
    // A Hello names its version first: check it before the rest, so a build of
    // another version is named as such, whatever else its Hello holds.
    if let Ok(((0u32, peer), _)) =
        bincode::serde::decode_from_slice::<(u32, u32), _>(header, header_config())
    {
        if peer != PROTOCOL_VERSION {
            return Err(DecodeError::Version {
                peer,
                ours: PROTOCOL_VERSION,
            });
        }
    }
    let message = match bincode::serde::decode_from_slice::<Message, _>(header, header_config()) {
        Ok((message, used)) if used == header_len => message,
        Ok(_) => return Err(DecodeError::Malformed("trailing bytes after the header")),
        Err(e) => return Err(DecodeError::Header(e)),
    };
    if !carries_items(&message) {
        if header_end != body.len() {
            return Err(DecodeError::Malformed(
                "items after a frame that carries none",
            ));
        }
        return Ok(Frame::control(message));
    }
    let count = read_u32(body, header_end).ok_or(DecodeError::Malformed("no item count"))? as usize;
    let mut at = header_end + 4;
    if let Message::Batch(header) = &message {
        if header.packed_results && header.codec != Codec::Bincode {
            return Err(DecodeError::Malformed(
                "only bincode results can travel packed",
            ));
        }
    }
    if packed(&message) {
        // No lengths: the count is checked by whoever decodes the items (a
        // zero-sized value takes no byte, so the bytes do not bound it).
        return Ok(Frame {
            message,
            items: Items::packed_from_parts(buf, start + at, count),
        });
    }
    // Every length takes a byte at least: a count the frame cannot hold allocates
    // nothing.
    if count > body.len() - at {
        return Err(DecodeError::Malformed(
            "item count past the end of the frame",
        ));
    }
    let mut ends = Vec::with_capacity(count);
    let mut end = 0u64;
    let mut left = count;
    // Eight lengths at a time while all eight are one byte (items under 128 bytes,
    // the common case of tiny items): no varint decoding, no per-byte branch. Eight
    // of at most 127 keep `end` far below the 4 GiB check.
    while left >= 8 {
        let Some(chunk) = body.get(at..at + 8) else {
            break;
        };
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if word & 0x8080_8080_8080_8080 != 0 {
            break;
        }
        // The eight ends made on the stack and appended at once: one look at the
        // room for the eight, where a `push` each looked eight times (about 14
        // instructions an item in a worker, with the loop's own; `extend` over
        // the chunk was a call per chunk that cost as much).
        let mut eight = [0u32; 8];
        for (e, &len) in eight.iter_mut().zip(chunk) {
            end += u64::from(len);
            *e = end as u32;
        }
        ends.extend_from_slice(&eight);
        if end > u64::from(u32::MAX) {
            return Err(DecodeError::Malformed("item lengths exceed 4 GiB"));
        }
        at += 8;
        left -= 8;
    }
    for _ in 0..left {
        // (Not `ok_or`: that builds and drops an error for every item.)
        let Some(len) = get_varint(body, &mut at) else {
            return Err(DecodeError::Malformed(
                "an item length is not a varint of at most 32 bits",
            ));
        };
        end += u64::from(len);
        if end > u64::from(u32::MAX) {
            return Err(DecodeError::Malformed("item lengths exceed 4 GiB"));
        }
        ends.push(end as u32);
    }
    let data_start = at;
    if end != (body.len() - data_start) as u64 {
        return Err(DecodeError::Malformed(
            "item lengths do not match the item bytes",
        ));
    }
    Ok(Frame {
        message,
        items: Items::from_parts(buf, start + data_start, ends),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: 42,
            nonce: [0x5a; 32],
            agent: Some(7),
        })
    }

    fn join() -> Message {
        Message::Join(Join {
            proof: [0xa5; 32],
            capacity: 10,
            max_frame: 1 << 20,
            functions: vec![FunctionInfo {
                name: "double".into(),
                input_type: "i64".into(),
                output_type: "i64".into(),
                input_type_name: "i64".into(),
                output_type_name: "i64".into(),
            }],
        })
    }

    fn sample_items() -> Items {
        let mut items = Items::new();
        items.push(b"one");
        items.push_empty();
        items.push(&[0, 1, 2, 255]);
        items
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::control(hello()),
            Frame::control(Message::Welcome {
                worker_id: 3,
                max_frame: 99,
                flush_interval_us: 2000,
                heartbeat_ms: 1000,
                silence_ms: 10_000,
                spin_us: 100,
            }),
            Frame::control(Message::Reject {
                reason: "bad token".into(),
            }),
            Frame {
                message: Message::Batch(BatchHeader {
                    job: 1,
                    seq: 7,
                    function: "double".into(),
                    codec: Codec::Json,
                    first_index: 1000,
                    packed_results: false,
                }),
                items: sample_items(),
            },
            Frame {
                message: Message::Results(ResultsHeader {
                    job: 1,
                    seq: 7,
                    offset: 4,
                    failures: vec![ItemFailure {
                        slot: 1,
                        kind: FailureKind::Panicked,
                        message: "boom".into(),
                        location: Some("src/lib.rs:1:1".into()),
                    }],
                    packed: false,
                }),
                items: sample_items(),
            },
            Frame {
                message: Message::Batch(BatchHeader {
                    job: 0,
                    seq: 0,
                    function: String::new(),
                    codec: Codec::Bincode,
                    first_index: 0,
                    packed_results: false,
                }),
                items: Items::new(),
            },
            Frame::control(Message::Progress {
                job: 1,
                seq: 2,
                done: 3,
            }),
            Frame::control(Message::Cancel { job: u64::MAX }),
            Frame::control(Message::Shutdown),
            Frame::control(Message::Challenge {
                nonce: [1; 32],
                proof: [2; 32],
            }),
            Frame::control(join()),
            Frame::control(Message::Heartbeat),
            Frame::control(Message::AgentJoin(AgentJoin {
                proof: [3; 32],
                hostname: "node-1".into(),
                pid: 77,
                workers: 8,
            })),
            Frame::control(Message::AgentWelcome {
                agent_id: 1,
                heartbeat_ms: 1000,
                silence_ms: 10_000,
                capacity: 8192,
                max_frame: 1 << 20,
                memory_limit: 0,
            }),
            Frame::control(Message::Kill { pid: 123 }),
            Frame::control(Message::WorkerExited(WorkerExit {
                pid: 123,
                status: ExitStatus::Signal(11),
                max_rss_kb: 4096,
                served: true,
                last_words: "segfault".into(),
            })),
        ]
    }

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&frame.message, &frame.items, DEFAULT_MAX_FRAME, &mut out).unwrap();
        out
    }

    #[test]
    fn lengths_are_the_same_leb128_bytes_eight_at_a_time_or_one_by_one() {
        // Runs of small lengths (written eight at once), runs with one wide length
        // anywhere in them, empty items, and every remainder length (0..8).
        fn leb128(ends: &[u32]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut last = 0;
            for &end in ends {
                let mut v = end - last;
                last = end;
                while v >= 0x80 {
                    out.push(v as u8 | 0x80);
                    v >>= 7;
                }
                out.push(v as u8);
            }
            out
        }
        for count in [
            0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 300, 1_000, 1_003,
        ] {
            for wide_every in [0usize, 1, 5, 8, 13, 64] {
                let mut ends = Vec::with_capacity(count);
                let mut end = 0u32;
                for i in 0..count {
                    end += match i % 11 {
                        _ if wide_every > 0 && i % wide_every == wide_every - 1 => {
                            [128, 16_383, 16_384, 70_000, 2_100_000][i % 5]
                        }
                        0 => 0,
                        1 => 127,
                        _ => (i % 9) as u32,
                    };
                    ends.push(end);
                }
                let mut out = vec![7u8];
                put_lengths(&mut out, &ends);
                assert_eq!(out[0], 7, "{count} items, wide every {wide_every}");
                assert_eq!(
                    out[1..],
                    leb128(&ends)[..],
                    "{count} items, wide every {wide_every}"
                );
            }
        }
    }

    #[test]
    fn many_items_of_one_to_three_byte_lengths_round_trip() {
        // More items than the lengths' stack chunk holds (64 five-byte lengths, or
        // 316 one-byte ones), with lengths of one, two and three bytes around the
        // chunk's edges.
        let sizes: Vec<usize> = (0..1_000)
            .map(|i| match i % 97 {
                0 => 70_000,
                1 => 128,
                2 => 127,
                _ => (i * 37) % 300,
            })
            .collect();
        let mut batch = Items::new();
        for (i, &n) in sizes.iter().enumerate() {
            batch.push(&vec![i as u8; n]);
        }
        let frame = Frame {
            message: Message::Batch(BatchHeader {
                job: 1,
                seq: 2,
                function: "f".into(),
                codec: Codec::Bincode,
                first_index: 3,
                packed_results: false,
            }),
            items: batch,
        };
        let back = read_frame(&mut &encode(&frame)[..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in all_frames() {
            let bytes = encode(&frame);
            let mut reader = &bytes[..];
            let back = read_frame(&mut reader, DEFAULT_MAX_FRAME).unwrap().unwrap();
            assert_eq!(back, frame);
            assert!(reader.is_empty());
            // write_frame produces the same bytes.
            let mut written = Vec::new();
            write_frame(
                &mut written,
                &frame.message,
                &frame.items,
                DEFAULT_MAX_FRAME,
            )
            .unwrap();
            assert_eq!(written, bytes);
        }
    }

    fn packed_results(values: &[u64]) -> (Frame, Vec<u8>) {
        let mut items = Items::new();
        for v in values {
            items
                .push_with(|buf| {
                    bincode::serde::encode_into_std_write(v, buf, bincode::config::standard())
                        .map(drop)
                })
                .unwrap();
        }
        let frame = Frame {
            message: Message::Results(ResultsHeader {
                job: 1,
                seq: 2,
                offset: 0,
                failures: vec![],
                packed: true,
            }),
            items,
        };
        let bytes = encode(&frame);
        (frame, bytes)
    }

    #[test]
    fn packed_items_travel_without_lengths_and_split_by_decoding() {
        let values = [0u64, 1, 250, 251, 70_000, u64::MAX];
        let (frame, bytes) = packed_results(&values);
        let mut unpacked = frame.clone();
        if let Message::Results(h) = &mut unpacked.message {
            h.packed = false;
        }
        // One length byte per item saved, nothing else changes but the flag.
        assert_eq!(encode(&unpacked).len(), bytes.len() + values.len());
        let back = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back.message, frame.message);
        assert!(back.items.is_packed());
        assert_eq!(back.items.len(), values.len());
        assert_eq!(back.items.get(0), None);
        assert_eq!(back.items.data(), frame.items.data());
        let mut rest = back.items.data();
        for &v in &values {
            let (got, used): (u64, usize) =
                bincode::serde::decode_from_slice(rest, bincode::config::standard()).unwrap();
            assert_eq!(got, v);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        // In place too.
        let back = decode_body_at(bytes, 4).unwrap();
        assert!(back.items.is_packed());
        assert_eq!(back.items.data(), frame.items.data());
    }

    /// Job 0, seq 0, function "f", JSON, first index 0.
    fn json_batch(packed_results: bool) -> Message {
        Message::Batch(BatchHeader {
            job: 0,
            seq: 0,
            function: "f".into(),
            codec: Codec::Json,
            first_index: 0,
            packed_results,
        })
    }

    /// The two frame examples of docs/protocol.md, byte for byte.
    #[test]
    fn the_documented_frames() {
        let mut items = Items::new();
        items.push(b"1");
        items.push(b"2");
        let mut out = Vec::new();
        encode_frame(&json_batch(false), &items, DEFAULT_MAX_FRAME, &mut out).unwrap();
        assert_eq!(
            out,
            [0x14, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 1, 0x66, 1, 0, 0, 2, 0, 0, 0, 1, 1, 0x31, 0x32]
        );
        let (_, out) = packed_results(&[1, 300]);
        assert_eq!(
            out,
            [0x12, 0, 0, 0, 6, 0, 0, 0, 4, 1, 2, 0, 0, 1, 2, 0, 0, 0, 1, 0xfb, 0x2c, 1]
        );
    }

    #[test]
    fn only_bincode_results_travel_packed() {
        let mut bytes = Vec::new();
        encode_frame(
            &json_batch(true),
            &Items::new(),
            DEFAULT_MAX_FRAME,
            &mut bytes,
        )
        .unwrap();
        assert!(matches!(
            read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME),
            Err(DecodeError::Malformed(m)) if m.contains("packed")
        ));
    }

    #[test]
    fn decoding_in_place_keeps_the_buffer() {
        for frame in all_frames() {
            let bytes = encode(&frame);
            assert_eq!(decode_body_at(bytes, 4).unwrap(), frame);
        }
        assert!(decode_body_at(vec![1, 2], 5).is_err());
    }

    #[test]
    fn clean_eof_and_truncation() {
        assert!(read_frame(&mut &[][..], 100).unwrap().is_none());
        let bytes = encode(&all_frames()[3]);
        for cut in 1..bytes.len() {
            let err = read_frame(&mut &bytes[..cut], DEFAULT_MAX_FRAME).unwrap_err();
            assert!(matches!(err, DecodeError::Truncated { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn a_reused_buffer_of_any_length_reads_every_frame_and_every_truncation() {
        let frames = all_frames();
        // Buffers of stale bytes shorter and longer than the frames, as a reader of
        // many frames hands back the last one's.
        for stale in [0usize, 1, 7, 40, 5000] {
            for frame in &frames {
                let bytes = encode(frame);
                // Through a BufReader smaller than some frames, as the worker reads.
                let mut reader = std::io::BufReader::with_capacity(16, &bytes[..]);
                let back = read_frame_into(&mut reader, DEFAULT_MAX_FRAME, vec![0xAB; stale])
                    .unwrap()
                    .unwrap();
                assert_eq!(&back, frame, "stale {stale}");
                for cut in 1..bytes.len() {
                    let err =
                        read_frame_into(&mut &bytes[..cut], DEFAULT_MAX_FRAME, vec![1; stale])
                            .unwrap_err();
                    assert!(
                        matches!(err, DecodeError::Truncated { .. }),
                        "stale {stale}, cut {cut}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn length_is_checked_before_allocating() {
        // 4 GiB announced, nothing behind it: rejected at once.
        let bytes = u32::MAX.to_le_bytes();
        let err = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn the_length_check_takes_the_maximum_and_no_more() {
        assert_eq!(frame_len(100u32.to_le_bytes(), 100).unwrap(), 100);
        let err = frame_len(101u32.to_le_bytes(), 100).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { len: 101, max: 100 }));
    }

    #[test]
    fn oversized_frames_are_refused_on_write() {
        let mut items = Items::new();
        items.push(&[7; 1000]);
        let frame = &all_frames()[3];
        let err = encode_frame(&frame.message, &items, 500, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, EncodeError::TooLarge { max: 500, .. }));
    }

    #[test]
    fn malformed_literals() {
        // header length past the end
        let body = [200, 0, 0, 0, 1, 2];
        assert!(matches!(
            decode_body(body.to_vec()),
            Err(DecodeError::Malformed(_))
        ));
        // unknown message variant
        let body = [1, 0, 0, 0, 99];
        assert!(matches!(
            decode_body(body.to_vec()),
            Err(DecodeError::Header(_))
        ));
        // Shutdown (variant 7) with stray item bytes
        let body = [1, 0, 0, 0, 7, 1];
        assert!(matches!(
            decode_body(body.to_vec()),
            Err(DecodeError::Malformed(_))
        ));
        // Cancel with a huge item count would be malformed, not an allocation
        let mut bytes = encode(&all_frames()[3]);
        let header_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        bytes[8 + header_len..12 + header_len].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_body(bytes[4..].to_vec()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn other_versions_are_named() {
        let mut h = match hello() {
            Message::Hello(h) => h,
            _ => unreachable!(),
        };
        h.protocol_version = PROTOCOL_VERSION + 1;
        // A future Hello with an extra field we do not know.
        let future = (
            0u32,
            h.protocol_version,
            1u32,
            [9u8; 32],
            2u32,
            3u32,
            4u32,
            5u64,
        );
        let header = bincode::serde::encode_to_vec(future, header_config()).unwrap();
        let mut body = (header.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&header);
        match decode_body(body) {
            Err(DecodeError::Version { peer, ours }) => {
                assert_eq!((peer, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION))
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_frame(&mut &bytes[..], 1 << 16);
            let _ = decode_body(bytes);
        }

        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..11,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&all_frames()[which]);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(Some(frame)) = read_frame(&mut &bytes[..], 1 << 16) {
                // Whatever decoded is internally consistent.
                if !frame.items.is_packed() {
                    for i in 0..frame.items.len() {
                        prop_assert!(frame.items.get(i).is_some());
                    }
                }
            }
        }

        #[test]
        fn items_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..140), 0..64), job: u64, seq: u64) {
            let mut batch = Items::new();
            for item in &items {
                batch.push(item);
            }
            let frame = Frame {
                message: Message::Batch(BatchHeader { job, seq, function: "f".into(), codec: Codec::Bincode, first_index: job, packed_results: false }),
                items: batch,
            };
            let bytes = encode(&frame);
            let back = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME).unwrap().unwrap();
            let got: Vec<Vec<u8>> = back.items.iter().map(|i| i.to_vec()).collect();
            prop_assert_eq!(got, items);
            prop_assert_eq!(back.message, frame.message);
        }
    }
}
