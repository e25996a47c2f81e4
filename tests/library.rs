//! The library as a Rust program uses it (issue 18): borrowed input, per-worker
//! state, the async face, one vocabulary.

mod support;

use std::time::Duration;

use pstream::Codec;
use pstream_examples::upper;
use support::*;

/// A local `Vec<String>`, borrowed (not moved, not `'static`) by the job that reads
/// it: ordered, unordered and raw, and the data is used again afterwards.
#[test]
fn a_job_reads_a_borrowed_local_vec() {
    let _watchdog = watchdog("a_job_reads_a_borrowed_local_vec", Duration::from_secs(240));
    let pool = builder().workers(2).window(7).build().unwrap();
    let words: Vec<String> = (0..500).map(|i| format!("word{i}-ü")).collect();
    let expected: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();

    let got: Vec<String> = pool
        .map(upper, words.iter().cloned())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, expected);

    let mut unordered: Vec<(u64, String)> = pool
        .map_unordered(upper, words.iter().cloned())
        .unwrap()
        .indexed()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort();
    let unordered: Vec<String> = unordered.into_iter().map(|(_, s)| s).collect();
    assert_eq!(unordered, expected);

    // Raw items borrowed as `&str`: lines of text, results as text.
    let mut raw = pool
        .map_raw(
            "upper",
            Codec::Lines,
            true,
            words.iter().map(String::as_str),
        )
        .unwrap();
    let mut n = 0;
    while let Some((index, result)) = raw.next_raw() {
        assert_eq!(result.unwrap(), expected[index as usize].as_bytes());
        n += 1;
    }
    assert_eq!(n, words.len());
    drop(raw);
    // Still ours.
    assert_eq!(words.len(), 500);
}
