//! Map `double` over N items through a pool of this very binary (re-executed):
//! a minimal driver for profiling the runtime's overhead on tiny items.
//!
//! `cargo run --release -p pstream-examples --example map_double -- 10000000 [window [max_batch]]`

use std::time::Instant;

use pstream_examples::double;

fn main() -> Result<(), pstream::PoolError> {
    pstream::init();
    let mut args = std::env::args().skip(1);
    let n: i64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let window: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(pstream::DEFAULT_WINDOW);
    let pool = pstream::ProcessPool::builder()
        .workers(2)
        .window(window)
        .build()?;
    let start = Instant::now();
    let mut sum = 0i64;
    for r in pool.map(double, 0..n)? {
        sum = sum.wrapping_add(r.expect("double"));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} items in {secs:.3} s: {:.2} M items/s (sum {sum})",
        n as f64 / secs / 1e6
    );
    Ok(())
}
