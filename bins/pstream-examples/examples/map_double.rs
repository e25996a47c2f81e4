//! Map `double` over N items through a pool of this very binary (re-executed):
//! a minimal driver for profiling the runtime's overhead on tiny items.
//!
//! `cargo run --release -p pstream-examples --example map_double -- 10000000 [window] [--map-in]`
//!
//! With `--map-in`, the job is started as `(0..n).map_in(&pool, double)` (the
//! extension trait `pstream::MapIn`) instead of `pool.map(double, 0..n)`: the two
//! should cost the same.

use std::time::Instant;

use pstream_examples::double;

fn main() -> Result<(), pstream::PoolError> {
    pstream::init();
    let map_in = std::env::args().any(|a| a == "--map-in");
    let mut args = std::env::args().skip(1).filter(|a| a != "--map-in");
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
    let results = if map_in {
        use pstream::MapIn;
        (0..n).map_in(&pool, double)?
    } else {
        pool.map(double, 0..n)?
    };
    for r in results {
        sum = sum.wrapping_add(r.expect("double"));
    }
    let secs = start.elapsed().as_secs_f64();
    // The consumer's thread is the coordinator's critical path: its CPU time per
    // item is a steadier figure than the throughput on a shared machine.
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .expect("getrusage");
    let ns = |t: nix::sys::time::TimeVal| {
        (t.tv_sec() as f64 * 1e9 + t.tv_usec() as f64 * 1e3) / n as f64
    };
    println!(
        "{n} items in {secs:.3} s: {:.2} M items/s (sum {sum}); consumer thread: \
         {:.1} ns user + {:.1} ns system per item",
        n as f64 / secs / 1e6,
        ns(usage.user_time()),
        ns(usage.system_time()),
    );
    Ok(())
}
