//! Map `sha256_bytes` over N blobs of 1 KiB with an `Executor`: threads (the
//! default) or processes. A minimal driver for profiling the `Executor` API.
//!
//! `cargo run --release -p pstream-examples --example execute_sha -- 500000 [threads|processes]`

use std::time::Instant;

use pstream::{Executor, ProcessExecutor, ThreadExecutor};
use pstream_examples::{sha256_bytes, Blob};

fn blob(i: u64) -> Blob {
    let mut v = vec![(i % 251) as u8; 1024];
    v[..8].copy_from_slice(&i.to_le_bytes());
    Blob(v)
}

fn run<E: Executor<Blob, pstream::Function<Blob, [u8; 32]>>>(ex: &E, n: u64) -> u64 {
    let mut check = 0u64;
    for r in ex.execute(sha256_bytes, (0..n).map(blob)) {
        check = check.wrapping_add(u64::from(r.expect("sha256")[0]));
    }
    check
}

fn main() {
    pstream::init();
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let kind = args.next().unwrap_or_else(|| "threads".into());
    let start = Instant::now();
    let check = match kind.as_str() {
        "processes" => run(
            &ProcessExecutor::builder()
                .max_workers(2)
                .build()
                .expect("a pool"),
            n,
        ),
        _ => run(&ThreadExecutor::builder().max_workers(2).build(), n),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{kind}: {n} items in {secs:.3} s: {:.2} M items/s (check {check})",
        n as f64 / secs / 1e6
    );
}
