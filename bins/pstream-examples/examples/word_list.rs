//! Per-worker state: each worker loads a word list from a file once, then looks up
//! every word it is sent in it ([`pstream_examples::lookup`], whose last argument,
//! `words: &Words`, is that state).
//!
//! `cargo run -p pstream-examples --example word_list -- [WORD_LIST [WORD...]]`
//!
//! Without a word list, it writes a small one in a temporary directory. The
//! workers are this binary, re-executed; they get the list's path in their
//! environment (`PoolBuilder::env`), which `Words::init` reads.

use std::collections::BTreeMap;

use pstream_examples::{lookup, LOAD_LOG_ENV, WORDS_ENV};

fn main() {
    pstream::init();
    if let Err(e) = run() {
        eprintln!("word_list: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let dir = std::env::temp_dir().join(format!("pstream-word-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let list = match args.next() {
        Some(path) => path.into(),
        None => {
            let path = dir.join("words.txt");
            std::fs::write(&path, "apple\nbanana\ncherry\n")?;
            path
        }
    };
    let mut words: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    if words.is_empty() {
        words = ["apple", "kiwi", "cherry", "plum"]
            .iter()
            .cycle()
            .take(1000)
            .map(|w| w.to_string())
            .collect();
    }
    let log = dir.join("loads.log");
    let pool = pstream::ProcessPool::builder()
        .workers(2)
        // Recycle each worker after 300 items: a fresh process loads the list again.
        .max_items_per_worker(300)
        .env(WORDS_ENV, &list)
        .env(LOAD_LOG_ENV, &log)
        .build()?;
    let mut known = BTreeMap::<&str, (bool, usize)>::new();
    // The input borrows `words`: it is read on this thread as results are taken.
    let mut results = pool.map(lookup, words.iter().cloned())?;
    for (word, result) in words.iter().zip(&mut results) {
        match result {
            Ok(found) => known.entry(word).or_insert((found.known, 0)).1 += 1,
            // A worker that cannot load the list ends the job: say why, and stop.
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                match results.pool_error() {
                    Some(pool_error) => return Err(pool_error.to_string().into()),
                    None => return Err(error.to_string().into()),
                }
            }
        }
    }
    drop(results);
    for (word, (is_known, count)) in &known {
        let verdict = if *is_known {
            "in the list"
        } else {
            "not in the list"
        };
        println!("{word}: {verdict} ({count} times)");
    }
    let loads = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "{} words looked up; the list was loaded {} times: once by each worker process \
         that computed items ({} were started, recycled after 300 items)",
        words.len(),
        loads.lines().count(),
        pool.stats().spawned,
    );
    drop(pool);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
