//! Map `double` over N integers, or `sha256_bytes` over N blobs of 1 KiB, with an
//! `Executor`: threads or processes. A minimal driver for profiling the `Executor` API.
//!
//! `cargo run --release -p pstream-examples --example execute -- [double|double-filtered|sha] [n] [threads|processes]`

use std::time::Instant;

use pstream::{Executor, Function, ProcessExecutor, ThreadExecutor};
use pstream_examples::{double, sha256_bytes, Blob};

/// Map `f` over `input` with threads or processes; a checksum of the results.
fn run<In, Out>(
    kind: &str,
    f: Function<In, Out>,
    input: impl Iterator<Item = In> + Send + 'static,
    fold: impl Fn(Out) -> u64,
) -> u64
where
    In: serde::Serialize + Send + 'static,
    Out: serde::de::DeserializeOwned + Send + 'static,
{
    let results = match kind {
        "processes" => ProcessExecutor::builder()
            .max_workers(2)
            .build()
            .expect("a pool")
            .execute(f, input),
        _ => ThreadExecutor::builder()
            .max_workers(2)
            .build()
            .execute(f, input),
    };
    results
        .map(|r| fold(r.expect("the function does not fail")))
        .fold(0, u64::wrapping_add)
}

fn main() {
    pstream::init();
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "double".into());
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let kind = args.next().unwrap_or_else(|| "threads".into());
    let start = Instant::now();
    let check = if what == "sha" {
        let blob = |i: u64| {
            let mut v = vec![(i % 251) as u8; 1024];
            v[..8].copy_from_slice(&i.to_le_bytes());
            Blob(v)
        };
        run(&kind, sha256_bytes, (0..n).map(blob), |d| u64::from(d[0]))
    } else if what == "double-filtered" {
        // An input that promises nothing (`size_hint` 0), as filters, channels and
        // `from_fn` do.
        let input = (0..n as i64).filter(|x| x % 7 != 3);
        run(&kind, double, input, |x| x as u64)
    } else {
        run(&kind, double, 0..n as i64, |x| x as u64)
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what} on {kind}: {n} items in {secs:.3} s: {:.2} M items/s (check {check})",
        n as f64 / secs / 1e6
    );
}
