//! A program that maps with a pool of its own copies but forgets to call
//! `pstream::init()` first in `main`: each copy started as a worker reaches
//! `build()` again.
//!
//! For the test that runs it: each start appends a line to the file named by
//! `PSTREAM_FIXTURE_STARTS`, and a chain of copies deeper than a few refuses to go
//! on (exit 99), so that a regression is a failed test, not a fork bomb.

use pstream_fixtures::triple;

const STARTS: &str = "PSTREAM_FIXTURE_STARTS";
const DEPTH: &str = "PSTREAM_FIXTURE_DEPTH";

fn main() {
    if let Some(path) = std::env::var_os(STARTS) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the starts log");
        writeln!(log, "{}", std::process::id()).expect("write the starts log");
    }
    let depth: u32 = std::env::var(DEPTH)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if depth >= 3 {
        eprintln!("forgot_init: a copy of a copy of a copy: stopping the chain here");
        std::process::exit(99);
    }
    // Inherited by the copies this one starts.
    std::env::set_var(DEPTH, (depth + 1).to_string());

    // The mistake: no `pstream::init();` here.
    let pool = match pstream::ProcessPool::builder().workers(1).build() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("forgot_init: {e}");
            std::process::exit(1);
        }
    };
    let sum: i64 = pool
        .map(triple, 1..=3i64)
        .expect("map")
        .map(|r| r.expect("triple"))
        .sum();
    println!("{sum}");
}
