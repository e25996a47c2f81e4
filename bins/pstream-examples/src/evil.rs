//! A worker that breaks the protocol on purpose, once, for the tests of the
//! coordinator's defences. Enabled by `PSTREAM_EXAMPLES_EVIL=<mode>:<marker file>`:
//! the first worker that manages to create the marker file misbehaves, every other
//! one serves normally.
//!
//! Modes:
//! * `garbage`: answers its first batch with bytes that are not a frame;
//! * `oversized`: answers with a length prefix of 4 GiB;
//! * `wrong-batch`: answers with results for a batch it never received;
//! * `unasked`: sends results before it was given any batch;
//! * `unpacked`: answers a batch that asks for packed results with results that
//!   carry lengths (or the other way round);
//! * `other-version`: says Hello in a protocol version one above ours;
//! * `lying-length`: answers the first item of its first batch with a string that
//!   claims to be 2^50 bytes long, then exits;
//! * `lying-then-valid` (for `upper` over short ASCII words): answers batches of one
//!   item as `upper` would, then its first batch of two or more with the same lie for
//!   the first item and a valid string (`"X"`) for the second, in one packed frame,
//!   then exits;
//! * `silent`: connects and never says a word (it connects 300 ms after it starts, so
//!   that the pool's handshake deadline, counted from the spawn, is what ends it);
//! * `other-pid`: says Hello with a pid that is not its own, then goes on with the
//!   handshake as a worker would;
//! * `wrong-proof`: answers the coordinator's Challenge with a proof made with
//!   another token than the one it was given.

use std::io::Write;

use pstream::protocol::auth::{random_nonce, Role, Token};
use pstream::protocol::{
    read_frame, write_frame, Frame, Hello, Items, Join, Message, ResultsHeader, DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
};
use pstream_worker::__private::Summons;

/// If this process is to misbehave, do so and exit; otherwise return.
pub fn maybe_misbehave() {
    let Ok(setting) = std::env::var("PSTREAM_EXAMPLES_EVIL") else {
        return;
    };
    let Some((mode, marker)) = setting.split_once(':') else {
        return;
    };
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_err()
    {
        return; // Somebody else misbehaved already.
    }
    let mode = mode.to_string();
    if let Err(e) = misbehave(&mode) {
        eprintln!("evil worker ({mode}): {e}");
    }
    std::process::exit(0);
}

fn misbehave(mode: &str) -> std::io::Result<()> {
    let summons = Summons::from_env().map_err(std::io::Error::other)?;
    if mode == "silent" {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut stream = summons.connect().map_err(std::io::Error::other)?;
    let mut reader = stream.try_clone()?;
    if mode == "silent" {
        // Wait to be killed (or for the coordinator to hang up).
        while let Ok(Some(_)) = read_frame(&mut reader, DEFAULT_MAX_FRAME) {}
        return Ok(());
    }
    let version = if mode == "other-version" {
        PROTOCOL_VERSION + 1
    } else {
        PROTOCOL_VERSION
    };
    let nonce = random_nonce()?;
    let pid = if mode == "other-pid" {
        std::process::id() + 1
    } else {
        std::process::id()
    };
    let hello = Message::Hello(Hello {
        protocol_version: version,
        pid,
        nonce,
        agent: None,
    });
    write_frame(&mut stream, &hello, &Items::new(), usize::MAX).map_err(std::io::Error::other)?;
    if mode == "other-version" {
        // The coordinator answers with Reject; nothing more to do.
        read_frame(&mut reader, DEFAULT_MAX_FRAME).map_err(std::io::Error::other)?;
        return Ok(());
    }
    let theirs = match read_frame(&mut reader, DEFAULT_MAX_FRAME).map_err(std::io::Error::other)? {
        Some(Frame {
            message: Message::Challenge { nonce, .. },
            ..
        }) => nonce,
        other => return Err(std::io::Error::other(format!("no Challenge: {other:?}"))),
    };
    let token = if mode == "wrong-proof" {
        Token::random()?
    } else {
        summons.token.clone()
    };
    let join = Message::Join(Join {
        proof: token.prove(Role::Worker, &nonce, &theirs),
        capacity: 8192,
        max_frame: DEFAULT_MAX_FRAME as u32,
        functions: pstream_worker::functions(),
    });
    write_frame(&mut stream, &join, &Items::new(), usize::MAX).map_err(std::io::Error::other)?;
    // Welcome.
    read_frame(&mut reader, DEFAULT_MAX_FRAME).map_err(std::io::Error::other)?;
    if matches!(mode, "other-pid" | "wrong-proof") {
        // Welcomed although it should not have been: serve nothing, wait to be told.
        while let Ok(Some(_)) = read_frame(&mut reader, DEFAULT_MAX_FRAME) {}
        return Ok(());
    }
    let results = |job, seq, packed| {
        let mut items = Items::new();
        items.push(b"1");
        (
            Message::Results(ResultsHeader {
                job,
                seq,
                offset: 0,
                failures: vec![],
                packed,
            }),
            items,
        )
    };
    if mode == "unasked" {
        let (message, items) = results(0, 0, false);
        write_frame(&mut stream, &message, &items, usize::MAX).map_err(std::io::Error::other)?;
    } else {
        let batch = loop {
            match read_frame(&mut reader, DEFAULT_MAX_FRAME).map_err(std::io::Error::other)? {
                Some(Frame {
                    message: Message::Batch(b),
                    items,
                }) if mode == "lying-then-valid" && items.len() < 2 => {
                    // `upper` of a short ASCII word: its length byte, then the bytes
                    // in upper case.
                    let mut answer = Items::new();
                    for i in 0..items.len() {
                        let mut word = items.get(i).unwrap_or_default().to_vec();
                        if let Some(bytes) = word.get_mut(1..) {
                            bytes.make_ascii_uppercase();
                        }
                        answer.push(&word);
                    }
                    let message = Message::Results(ResultsHeader {
                        job: b.job,
                        seq: b.seq,
                        offset: 0,
                        failures: vec![],
                        packed: b.packed_results,
                    });
                    write_frame(&mut stream, &message, &answer, usize::MAX)
                        .map_err(std::io::Error::other)?;
                    stream.flush()?;
                }
                Some(Frame {
                    message: Message::Batch(b),
                    ..
                }) => break b,
                Some(_) => continue,
                None => return Ok(()),
            }
        };
        match mode {
            "garbage" => stream.write_all(&[
                9, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff,
            ])?,
            "oversized" => stream.write_all(&u32::MAX.to_le_bytes())?,
            "wrong-batch" => {
                let (message, items) = results(batch.job, batch.seq + 1000, batch.packed_results);
                write_frame(&mut stream, &message, &items, usize::MAX)
                    .map_err(std::io::Error::other)?;
            }
            "lying-length" | "lying-then-valid" => {
                // A string (bincode: a u64 length, marker 253, then the bytes) that
                // claims 2^50 bytes and has none.
                let mut items = Items::new();
                let mut lie = vec![253u8];
                lie.extend_from_slice(&(1u64 << 50).to_le_bytes());
                items.push(&lie);
                if mode == "lying-then-valid" {
                    // "X": a length of 1, then the byte.
                    items.push(&[1, b'X']);
                }
                let message = Message::Results(ResultsHeader {
                    job: batch.job,
                    seq: batch.seq,
                    offset: 0,
                    failures: vec![],
                    packed: batch.packed_results,
                });
                write_frame(&mut stream, &message, &items, usize::MAX)
                    .map_err(std::io::Error::other)?;
                stream.flush()?;
                return Ok(());
            }
            "unpacked" => {
                let (message, items) = results(batch.job, batch.seq, !batch.packed_results);
                write_frame(&mut stream, &message, &items, usize::MAX)
                    .map_err(std::io::Error::other)?;
            }
            other => return Err(std::io::Error::other(format!("unknown mode {other}"))),
        }
    }
    stream.flush()?;
    // Wait to be killed (or for the coordinator to hang up).
    while let Ok(Some(_)) = read_frame(&mut reader, DEFAULT_MAX_FRAME) {}
    Ok(())
}
