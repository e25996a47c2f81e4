//! Functions for the test fixtures: programs written the way a first-time user
//! writes them, mistakes included (see `tests/traps.rs`).
#![deny(missing_docs)]

pstream::function! {
    /// Three times the input.
    pub fn triple(x: i64) -> i64 {
        x * 3
    }
}
