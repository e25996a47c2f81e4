//! Map `sha256_bytes` over N blobs of 1 KiB through a pool of this very binary: a
//! minimal driver for profiling the runtime on byte-heavy items.
//!
//! `cargo run --release -p pstream-examples --example map_sha -- 1000000 [window [window_bytes]]`

use std::time::Instant;

use pstream_examples::{sha256_bytes, Blob};

fn main() -> Result<(), pstream::PoolError> {
    pstream::init();
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let window: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(pstream::DEFAULT_WINDOW);
    let window_bytes: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(pstream::DEFAULT_WINDOW_BYTES);
    let pool = pstream::ProcessPool::builder()
        .workers(2)
        .window(window)
        .window_bytes(window_bytes)
        .build()?;
    let blob = |i: u64| {
        let mut v = vec![(i % 251) as u8; 1024];
        v[..8].copy_from_slice(&i.to_le_bytes());
        Blob(v)
    };
    let start = Instant::now();
    let mut check = 0u64;
    for r in pool.map(sha256_bytes, (0..n).map(blob))? {
        check = check.wrapping_add(u64::from(r.expect("sha256")[0]));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} items in {secs:.3} s: {:.2} M items/s (check {check})",
        n as f64 / secs / 1e6
    );
    Ok(())
}
