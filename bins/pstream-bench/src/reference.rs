//! The floor: the least a process pool can do to double integers in order.
//!
//! Batches of [`BATCH`] `u64`s, bincode-encoded behind a 4-byte length, go over Unix
//! sockets to worker processes (this binary re-executed as `__ref-worker`), round
//! robin, with at most [`WINDOW`] items in flight; results are read back in batch
//! order, which is input order because each worker answers its batches in turn. No
//! handshake, no credits, no crash handling, no per-item errors: whatever pstream
//! costs above this is the price of those.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::BoxError;

/// Items per batch.
pub const BATCH: u64 = 1000;
/// Items in flight at most.
pub const WINDOW: u64 = 5000;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Write `items` as one frame, reusing `buf`.
fn send(stream: &mut UnixStream, items: &[u64], buf: &mut Vec<u8>) -> Result<(), BoxError> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    bincode::encode_into_std_write(items, buf, config())?;
    let len = u32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    stream.write_all(buf)?;
    Ok(())
}

/// Read one frame into `buf`; `Ok(false)` on a clean end of stream.
fn recv(stream: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    stream.read_exact(buf)?;
    Ok(true)
}

/// The reference pool: worker processes and a connection to each.
#[derive(Debug)]
pub struct RefPool {
    streams: Vec<UnixStream>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RefPool {
    /// Start `workers` workers and wait until each has connected.
    pub fn start(workers: usize) -> Result<RefPool, BoxError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ref.sock");
        let listener = UnixListener::bind(&path)?;
        let exe = std::env::current_exe()?;
        let mut pool = RefPool {
            streams: Vec::with_capacity(workers),
            children: Vec::with_capacity(workers),
            _dir: dir,
        };
        for _ in 0..workers {
            let child = Command::new(&exe)
                .arg("__ref-worker")
                .arg(&path)
                .stdin(Stdio::null())
                .spawn()?;
            pool.children.push(child);
        }
        for _ in 0..workers {
            let (stream, _) = listener.accept()?;
            pool.streams.push(stream);
        }
        Ok(pool)
    }

    /// Double `0..n` in order; returns the wrapping sum of the results.
    pub fn map_double(&mut self, n: u64) -> Result<u64, BoxError> {
        let workers = self.streams.len();
        let batches = n.div_ceil(BATCH);
        let in_flight = (WINDOW / BATCH).max(1);
        let (mut sent, mut received) = (0u64, 0u64);
        let mut items: Vec<u64> = Vec::with_capacity(BATCH as usize);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut sum = 0u64;
        while received < batches {
            while sent < batches && sent - received < in_flight {
                items.clear();
                items.extend(sent * BATCH..((sent + 1) * BATCH).min(n));
                send(
                    &mut self.streams[(sent % workers as u64) as usize],
                    &items,
                    &mut out,
                )?;
                sent += 1;
            }
            let stream = &mut self.streams[(received % workers as u64) as usize];
            if !recv(stream, &mut buf)? {
                return Err("a reference worker went away".into());
            }
            let (results, _): (Vec<u64>, usize) = bincode::decode_from_slice(&buf, config())?;
            for r in results {
                sum = sum.wrapping_add(r);
            }
            received += 1;
        }
        Ok(sum)
    }
}

impl Drop for RefPool {
    fn drop(&mut self) {
        // Closing the sockets ends the workers' loops; then reap them.
        self.streams.clear();
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// Double `0..items` once through a fresh reference pool and print the rate.
pub fn run_alone(items: u64, workers: usize) -> Result<(), BoxError> {
    let mut pool = RefPool::start(workers)?;
    let start = std::time::Instant::now();
    let sum = pool.map_double(items)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "reference pool: {items} items in {secs:.3} s: {:.2} M items/s (sum {sum})",
        items as f64 / secs / 1e6
    );
    Ok(())
}

/// The worker: connect, then double every batch until the socket closes.
pub fn serve(path: &Path) -> Result<(), BoxError> {
    let mut stream = UnixStream::connect(path)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while recv(&mut stream, &mut buf)? {
        let (mut items, _): (Vec<u64>, usize) = bincode::decode_from_slice(&buf, config())?;
        for x in &mut items {
            *x = x.wrapping_mul(2);
        }
        send(&mut stream, &items, &mut out)?;
    }
    Ok(())
}
