//! `__transfer`: what it costs to carry 1 KiB items from one thread to another the
//! way the pool does (copied into a batch, through a Unix socket, out of the receive
//! buffer into an owned `Vec` for the function), and the way a shared-memory path
//! would (copied into a slot both sides can read, a small control message through
//! the socket, copied out of the slot into an owned `Vec`). No hashing, no encoding,
//! no pool: the floor of each data path alone, as CPU per item on each side.
//!
//! Threads stand in for the coordinator and a worker: a mapping shared by two
//! processes costs the same copies as memory shared by two threads, and a socket
//! the same kernel work.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use nix::sys::resource::{getrusage, UsageWho};

use crate::BoxError;

const ITEM: usize = 1024;

/// User and system CPU of the calling thread, in seconds.
fn thread_cpu() -> (f64, f64) {
    getrusage(UsageWho::RUSAGE_THREAD).map_or((0.0, 0.0), |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
        (secs(u.user_time()), secs(u.system_time()))
    })
}

/// CPU per item in ns (user, system) since `start`.
fn per_item(start: (f64, f64), items: u64) -> (f64, f64) {
    let end = thread_cpu();
    let n = items.max(1) as f64;
    ((end.0 - start.0) * 1e9 / n, (end.1 - start.1) * 1e9 / n)
}

/// One data path's figures: (user, system) ns per item for the sender, the receiver.
type Sides = ((f64, f64), (f64, f64));

/// Run both paths `rounds` times, alternating, over `items` items in batches of
/// `batch_kib` KiB with `in_flight` batches outstanding, and print each round.
pub fn run(items: u64, batch_kib: usize, in_flight: usize, rounds: usize) -> Result<(), BoxError> {
    let per_batch = (batch_kib * 1024 / ITEM).max(1);
    let batches = (items as usize).div_ceil(per_batch);
    let items = (batches * per_batch) as u64;
    println!(
        "{items} items of {ITEM} bytes, batches of {per_batch} items, {in_flight} batches in flight; \
         CPU per item in ns (user + system)"
    );
    for round in 1..=rounds {
        for shared in [false, true] {
            let (send, recv) = if shared {
                shared_path(batches, per_batch, in_flight)?
            } else {
                socket_path(batches, per_batch, in_flight)?
            };
            println!(
                "round {round}, {:<32} sender {:>4.0} + {:>4.0}, receiver {:>4.0} + {:>4.0}, both {:>4.0}",
                if shared {
                    "shared slots + control message:"
                } else {
                    "batches through the socket:"
                },
                send.0,
                send.1,
                recv.0,
                recv.1,
                send.0 + send.1 + recv.0 + recv.1
            );
        }
    }
    Ok(())
}

/// The item the sender copies: the same 1 KiB, its first bytes changed each time.
fn item(i: usize, buf: &mut [u8; ITEM]) {
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
}

/// Batches written whole to a socket, read whole into a reused buffer; each item
/// copied out into a `Vec`; an acknowledgement (the results frame) returns the
/// batch's buffer to the sender.
fn socket_path(batches: usize, per_batch: usize, in_flight: usize) -> Result<Sides, BoxError> {
    let (mut tx, mut rx) = UnixStream::pair()?;
    let (mut ack_rx, mut ack_tx) = UnixStream::pair()?;
    let _ = nix::sys::socket::setsockopt(
        &tx,
        nix::sys::socket::sockopt::SndBuf,
        &pstream::protocol::SEND_BUFFER,
    );
    let bytes = per_batch * ITEM;
    let receiver = thread::spawn(move || -> std::io::Result<(f64, f64)> {
        let start = thread_cpu();
        let mut buf = vec![0u8; bytes];
        let mut sink = 0u64;
        for _ in 0..batches {
            rx.read_exact(&mut buf)?;
            for chunk in buf.chunks_exact(ITEM) {
                let owned = chunk.to_vec();
                sink = sink.wrapping_add(owned[0] as u64);
                drop(std::hint::black_box(owned));
            }
            ack_tx.write_all(&[1])?;
        }
        std::hint::black_box(sink);
        Ok(per_item(start, (batches * per_batch) as u64))
    });
    let start = thread_cpu();
    let mut spare: Vec<Vec<u8>> = (0..in_flight).map(|_| Vec::with_capacity(bytes)).collect();
    let mut sent: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut one = [7u8; ITEM];
    for b in 0..batches {
        let mut batch = match spare.pop() {
            Some(batch) => batch,
            None => {
                let mut ack = [0u8];
                ack_rx.read_exact(&mut ack)?;
                sent.pop_front().expect("a batch in flight")
            }
        };
        batch.clear();
        for i in 0..per_batch {
            item(b * per_batch + i, &mut one);
            batch.extend_from_slice(&one);
        }
        tx.write_all(&batch)?;
        sent.push_back(batch);
    }
    let send = per_item(start, (batches * per_batch) as u64);
    let recv = receiver.join().map_err(|_| "the receiver panicked")??;
    Ok((send, recv))
}

/// Batches copied into `in_flight` shared slots; a 16-byte control message (slot,
/// length) through the socket; each item copied out of the slot into a `Vec`; an
/// acknowledgement frees the slot.
fn shared_path(batches: usize, per_batch: usize, in_flight: usize) -> Result<Sides, BoxError> {
    let (mut tx, mut rx) = UnixStream::pair()?;
    let (mut ack_rx, mut ack_tx) = UnixStream::pair()?;
    let bytes = per_batch * ITEM;
    let slots: Arc<Vec<Mutex<Vec<u8>>>> = Arc::new(
        (0..in_flight)
            .map(|_| Mutex::new(vec![0u8; bytes]))
            .collect(),
    );
    let theirs = Arc::clone(&slots);
    let receiver = thread::spawn(move || -> std::io::Result<(f64, f64)> {
        let start = thread_cpu();
        let mut sink = 0u64;
        let mut control = [0u8; 16];
        for _ in 0..batches {
            rx.read_exact(&mut control)?;
            let slot = u64::from_le_bytes(control[..8].try_into().expect("8 bytes")) as usize;
            let len = u64::from_le_bytes(control[8..].try_into().expect("8 bytes")) as usize;
            {
                let data = theirs[slot].lock().expect("slot lock");
                for chunk in data[..len].chunks_exact(ITEM) {
                    let owned = chunk.to_vec();
                    sink = sink.wrapping_add(owned[0] as u64);
                    drop(std::hint::black_box(owned));
                }
            }
            ack_tx.write_all(&[slot as u8])?;
        }
        std::hint::black_box(sink);
        Ok(per_item(start, (batches * per_batch) as u64))
    });
    let start = thread_cpu();
    let mut free: Vec<usize> = (0..in_flight).rev().collect();
    let mut one = [7u8; ITEM];
    for b in 0..batches {
        let slot = match free.pop() {
            Some(slot) => slot,
            None => {
                let mut ack = [0u8];
                ack_rx.read_exact(&mut ack)?;
                ack[0] as usize
            }
        };
        {
            let mut data = slots[slot].lock().expect("slot lock");
            for i in 0..per_batch {
                item(b * per_batch + i, &mut one);
                data[i * ITEM..(i + 1) * ITEM].copy_from_slice(&one);
            }
        }
        let mut control = [0u8; 16];
        control[..8].copy_from_slice(&(slot as u64).to_le_bytes());
        control[8..].copy_from_slice(&(bytes as u64).to_le_bytes());
        tx.write_all(&control)?;
    }
    let send = per_item(start, (batches * per_batch) as u64);
    let recv = receiver.join().map_err(|_| "the receiver panicked")??;
    Ok((send, recv))
}
