//! Functions for the test fixtures: programs written the way a first-time user
//! writes them, mistakes included (see `tests/traps.rs`).
#![deny(missing_docs)]

pstream::function! {
    /// Three times the input.
    pub fn triple(x: i64) -> i64 {
        x * 3
    }
}

// The forms the old `function!` refused or got wrong (issue 13, item 3), each as a
// first-time user writes it.

pstream::function! {
    /// Named like a variable of the macro's own expansion.
    pub fn len(s: String) -> usize {
        s.len()
    }

    /// Named like a variable of the macro's own expansion.
    pub fn input(x: i64) -> i64 {
        x + 1
    }

    /// Named like a variable of the macro's own expansion.
    pub fn out(x: i64) -> i64 {
        x + 2
    }

    /// Named like a variable of the macro's own expansion.
    pub fn codec(x: i64) -> i64 {
        x + 3
    }

    /// Named like a variable of the macro's own expansion.
    pub fn batch(x: i64) -> i64 {
        x + 4
    }
}

pstream::function! {
    /// A `mut` argument.
    pub fn countdown(mut n: u32) -> Vec<u32> {
        let mut steps = Vec::new();
        while n > 0 {
            steps.push(n);
            n -= 1;
        }
        steps
    }

    /// Several arguments: a tuple on the wire.
    pub fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    /// A tuple pattern.
    pub fn swap((number, text): (i64, String)) -> (String, i64) {
        (text, number)
    }

    /// No return type.
    pub fn ignore(_x: i64) {}

    /// No argument.
    pub fn answer() -> i64 {
        42
    }
}

pstream::function! {
    /// A result by its full path: an odd number fails.
    pub fn halve(x: i64) -> std::result::Result<i64, String> {
        if x % 2 == 0 {
            Ok(x / 2)
        } else {
            Err(format!("{x} is odd"))
        }
    }

    /// Fails with the text it is given: an error message is the user's, whatever it
    /// says.
    pub fn complain(text: String) -> std::result::Result<(), String> {
        Err(text)
    }

    /// `io::Result`, whose error type is not written.
    pub fn file_size(path: String) -> std::io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    /// `core::result::Result`, with an error type of the standard library.
    pub fn parse(s: String) -> core::result::Result<i64, std::num::ParseIntError> {
        s.trim().parse()
    }

    /// An alias of one argument, as `anyhow::Result<T>` is.
    pub fn positive(x: i64) -> Result<i64> {
        if x > 0 {
            Ok(x)
        } else {
            Err(NotPositive(x))
        }
    }
}

/// A result with the error of this crate, as `anyhow::Result<T>` is one with
/// `anyhow::Error`.
pub type Result<T> = std::result::Result<T, NotPositive>;

/// The error of [`positive`].
#[derive(Debug)]
pub struct NotPositive(pub i64);

impl std::fmt::Display for NotPositive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not positive", self.0)
    }
}
