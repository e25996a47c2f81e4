//! [`lookup`]: a function with per-worker state, a word list loaded from a file
//! once per worker process ([`Words`]).

use std::collections::HashSet;
use std::io::Write;

use serde::{Deserialize, Serialize};

/// The variable that names the word list's file, for the workers
/// (`PoolBuilder::env(WORDS_ENV, path)`).
pub const WORDS_ENV: &str = "PSTREAM_EXAMPLES_WORDS";

/// If set, the file to which each loading of the list appends a line with the
/// loading process's pid: how tests count the loads.
pub const LOAD_LOG_ENV: &str = "PSTREAM_EXAMPLES_WORDS_LOG";

/// A word list, one word per line, loaded once per worker process from the file
/// that `$PSTREAM_EXAMPLES_WORDS` names. An empty file is a bug of the caller's
/// (the loader asserts that it is not, to show what a panicking loader does).
#[derive(Debug)]
pub struct Words {
    words: HashSet<String>,
}

impl pstream::WorkerState for Words {
    type Error = String;

    fn init() -> Result<Words, String> {
        if let Some(log) = std::env::var_os(LOAD_LOG_ENV) {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("open the load log {}: {e}", log.to_string_lossy()))?;
            // One write of a whole line: with O_APPEND the kernel keeps it whole, where
            // `writeln!` writes the number and the newline apart and two workers'
            // lines could interleave ("123" "456" "\n" "\n").
            let line = format!("{}\n", std::process::id());
            log.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        }
        let path = std::env::var_os(WORDS_ENV).ok_or_else(|| format!("{WORDS_ENV} is not set"))?;
        let path = std::path::PathBuf::from(path);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("read the word list {}: {e}", path.display()))?;
        let words: HashSet<String> = text.lines().map(|w| w.trim().to_owned()).collect();
        assert!(
            !text.trim().is_empty(),
            "the word list {} is empty",
            path.display()
        );
        Ok(Words { words })
    }
}

/// What [`lookup`] says of a word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// Whether the word is in the list.
    pub known: bool,
    /// The pid of the process that looked it up.
    pub worker: u32,
}

pstream::function! {
    /// Whether `word` is in the word list ([`Words`], loaded once per worker).
    pub fn lookup(word: String, words: &Words) -> Lookup {
        Lookup {
            known: words.words.contains(word.trim()),
            worker: std::process::id(),
        }
    }
}
